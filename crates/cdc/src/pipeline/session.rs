//! One replication session of `walflow cdc`: the loop that reads the slot, turns each
//! committed change into an event, hands it to the sink and confirms to Postgres only what
//! the sink acknowledged; and the state it keeps across sessions.

use std::future::Future;
use std::time::Duration;

use tokio::sync::watch;
use walflow_pgoutput::{
    LogicalDecoder, LogicalMessage, Lsn, PgTimestamp, Relation, ReplicationMessage,
    StandbyStatusUpdate, TupleData,
};

use crate::encoder::EventEncoder;
use crate::envelope::{self, Change, EventPosition, Operation, RelationCache, Source};
use crate::replication::{ChangeStream, ReplicationConnection, ReplicationError};
use crate::sink::EventSink;
use crate::snapshot::{self};
use walflow_wire::topic::TopicNames;

use super::{now_ms, CdcError, CdcOptions, CdcSummary, PROTOCOL_VERSION};

pub(super) struct Transaction {
    xid: u32,
    commit_time: PgTimestamp,
    /// The LSN of its commit record (Begin's final LSN).
    commit_lsn: Lsn,
    /// Events of the transaction sent so far, in all and per table.
    events: u64,
    events_per_table: std::collections::HashMap<u32, u64>,
}

impl Transaction {
    /// The position of the transaction's next event of table `relation_oid`.
    fn next_position(&mut self, relation_oid: u32) -> EventPosition {
        self.events += 1;
        let of_table = self.events_per_table.entry(relation_oid).or_default();
        *of_table += 1;
        EventPosition {
            commit_lsn: self.commit_lsn,
            total_order: self.events,
            data_collection_order: *of_table,
        }
    }
}

/// One replication session: stream until stopped (then drain the sink and confirm what it
/// acknowledged) or until an error.
/// What a Relation message leaves to the catalog: the base types of domain columns and the
/// key of a table whose replica identity is FULL or NOTHING. Postgres answers it; tests of
/// the loop take pgoutput's flags as they are.
pub trait RelationCatalog: Sync {
    fn complete(
        &self,
        relation: &mut Relation,
    ) -> impl Future<Output = Result<(), CdcError>> + Send;
}

pub(super) async fn stream_session(
    replication: ReplicationConnection,
    client: &tokio_postgres::Client,
    options: &CdcOptions,
    sink: &mut impl EventSink,
    stop: &mut watch::Receiver<bool>,
    state: &mut StreamState,
) -> Result<(), CdcError> {
    let mut stream = replication
        .start_replication(
            &options.slot,
            Lsn(0),
            &[options.publication.as_str()],
            PROTOCOL_VERSION,
        )
        .await?;
    tracing::info!(slot = %options.slot, publication = %options.publication, "streaming changes");
    stream_changes(&mut stream, client, options, sink, stop, state).await
}

/// The loop of one session, over any [`ChangeStream`] and [`EventSink`]: read, decode and
/// send changes; confirm to the server only what the sink acknowledged; stop reading while
/// the sink is backlogged; take long silence for a dead link.
pub(super) async fn stream_changes(
    stream: &mut impl ChangeStream,
    catalog: &impl RelationCatalog,
    options: &CdcOptions,
    sink: &mut impl EventSink,
    stop: &mut watch::Receiver<bool>,
    state: &mut StreamState,
) -> Result<(), CdcError> {
    let mut ticker = tokio::time::interval(options.status_interval);
    // Postgres's walreceiver does the same (wal_receiver_timeout): silence from the server
    // is answered with a status update asking for a reply, and longer silence ends the
    // session as a dead link; a new one resumes from the slot.
    let mut last_heard = tokio::time::Instant::now();
    loop {
        if sink.backlogged() {
            // Not reading now, so the server's silence says nothing.
            last_heard = tokio::time::Instant::now();
            // Kafka pushes back: read no more changes until it catches up, but keep the
            // status updates going (and notice a failed delivery).
            tokio::select! {
                _ = ticker.tick() => {
                    if let Some(failure) = sink.failure() {
                        return Err(CdcError::Delivery(failure));
                    }
                    let position = sink.acked_lsn().max(state.confirmed);
                    state.confirm(stream, position, sink.metrics(), false).await?;
                }
                _ = tokio::time::sleep(Duration::from_millis(5)) => {}
                _ = stop.changed() => break,
            }
            continue;
        }
        tokio::select! {
            message = stream.next() => {
                // The server ends the stream when it shuts down: a new session will follow.
                last_heard = tokio::time::Instant::now();
                let Some(message) = message? else {
                    return Err(ReplicationError::Io(std::io::Error::new(
                        std::io::ErrorKind::ConnectionAborted,
                        "Postgres ended the replication stream",
                    ))
                    .into());
                };
                match message {
                    ReplicationMessage::XLogData(data) => {
                        sink.metrics().record_server_wal_end(data.wal_end.0);
                        state.change_lsn = data.wal_start;
                        let message = state.decoder.decode(data.data).map_err(ReplicationError::from)?;
                        state.handle(message, catalog, options, sink).await?;
                    }
                    ReplicationMessage::PrimaryKeepalive(keepalive) => {
                        sink.metrics().record_server_wal_end(keepalive.wal_end.0);
                        // Idle and fully acknowledged: all WAL the server has sent so far is
                        // done with, published tables or not (the heartbeat that keeps an
                        // idle slot from holding WAL back).
                        if state.catch_up_to.is_some_and(|point| keepalive.wal_end >= point) && state.transaction.is_none() {
                            // Every transaction committed before the point has been sent.
                            state.caught_up = true;
                        }
                        // (Not in a catch-up: the kept slot must not be confirmed past the
                        // new snapshot's consistent point.)
                        let idle = state.catch_up_to.is_none() && state.transaction.is_none() && sink.acked_lsn() >= state.last_commit_end;
                        let position = if idle { keepalive.wal_end.max(sink.acked_lsn()) } else { sink.acked_lsn() };
                        // Never backwards: an idle keepalive may have confirmed past the
                        // acknowledged position already.
                        let position = position.max(state.confirmed);
                        if keepalive.reply_requested || position > state.confirmed {
                            state.confirm(stream, position, sink.metrics(), false).await?;
                        }
                    }
                }
            }
            _ = ticker.tick() => {
                if let Some(failure) = sink.failure() {
                    return Err(CdcError::Delivery(failure));
                }
                // A status update every tick, moved on or not, as a standby sends them:
                // Postgres learns from two updates in a row that confirm everything it sent
                // that cdc is caught up (pg_stat_replication's lag times then read NULL, which
                // walflow lag shows as zero).
                let silent_for = last_heard.elapsed();
                if silent_for > options.receive_timeout {
                    return Err(ReplicationError::Io(std::io::Error::new(
                        std::io::ErrorKind::TimedOut,
                        format!("no message from Postgres for {} s: the link is taken for dead", silent_for.as_secs()),
                    ))
                    .into());
                }
                let position = sink.acked_lsn().max(state.confirmed);
                // A catch-up asks for replies, whose WAL position tells when it is done.
                let ask = silent_for > options.receive_timeout / 2 || state.catch_up_to.is_some();
                state.confirm(stream, position, sink.metrics(), ask).await?;
            }
            _ = stop.changed() => break,
        }
        if state.caught_up {
            break;
        }
        if let Some(stop_at) = options.stop_at {
            if state.last_commit_end >= stop_at {
                break;
            }
        }
    }
    sink.drain(state.last_commit_end, Duration::from_secs(30))
        .await;
    if let Some(failure) = sink.failure() {
        return Err(CdcError::Delivery(failure));
    }
    let acked = sink.acked_lsn();
    if acked > state.confirmed {
        state.confirm(stream, acked, sink.metrics(), false).await?;
    }
    Ok(())
}

pub(super) struct StreamState {
    pub(super) decoder: LogicalDecoder,
    pub(super) relations: RelationCache,
    pub(super) transaction: Option<Transaction>,
    pub(super) last_commit_end: Lsn,
    pub(super) confirmed: Lsn,
    pub(super) summary: CdcSummary,
    pub(super) database: String,
    /// The WAL position of the change being handled: each event's `source.lsn`.
    pub(super) change_lsn: Lsn,
    /// JSON or Avro, chosen at start.
    pub(super) encoder: EventEncoder,
    /// The topic of every table met so far, so that two never share one.
    pub(super) topics: TopicNames,
    /// Set while a kept slot streams up to a new snapshot's consistent point: the session
    /// ends before the first transaction that commits at or after it.
    pub(super) catch_up_to: Option<Lsn>,
    /// The catch-up reached its point.
    pub(super) caught_up: bool,
}

impl StreamState {
    pub(super) fn new(database: String, encoder: EventEncoder, topics: TopicNames) -> StreamState {
        StreamState {
            decoder: LogicalDecoder::new(),
            relations: RelationCache::default(),
            transaction: None,
            last_commit_end: Lsn(0),
            confirmed: Lsn(0),
            summary: CdcSummary::default(),
            database,
            change_lsn: Lsn(0),
            encoder,
            topics,
            catch_up_to: None,
            caught_up: false,
        }
    }

    /// A new session resends Relation messages and starts outside any transaction; a
    /// transaction cut off by the lost connection will come again whole.
    pub(super) fn start_new_session(&mut self) {
        self.decoder = LogicalDecoder::new();
        self.relations = RelationCache::default();
        self.transaction = None;
    }

    pub(super) async fn handle(
        &mut self,
        message: LogicalMessage,
        catalog: &impl RelationCatalog,
        options: &CdcOptions,
        sink: &mut impl EventSink,
    ) -> Result<(), CdcError> {
        match message {
            LogicalMessage::Begin(begin)
                if self
                    .catch_up_to
                    .is_some_and(|point| begin.final_lsn >= point) =>
            {
                // Committed after the new snapshot's consistent point: the snapshot does not
                // hold it, the stream after the snapshot will.
                self.caught_up = true;
            }
            LogicalMessage::Begin(begin) => {
                self.transaction = Some(Transaction {
                    xid: begin.xid,
                    commit_time: begin.commit_time,
                    commit_lsn: begin.final_lsn,
                    events: 0,
                    events_per_table: std::collections::HashMap::new(),
                });
            }
            LogicalMessage::Relation(relation) if snapshot::is_bookkeeping(&relation) => {
                // Known, so its changes are recognised, but never turned into events.
                self.relations.update(relation)
            }
            LogicalMessage::Relation(mut relation) => {
                catalog.complete(&mut relation).await?;
                let (new_table, topic) = self.topics.claim(
                    &options.topic_prefix,
                    &relation.namespace,
                    &relation.name,
                )?;
                if new_table {
                    // A table published after cdc started: its topic exists before its
                    // first event, as for the others.
                    sink.create_topics(&[topic]).await?;
                }
                // Registered (and checked) before the table's first event of this shape.
                self.encoder
                    .prepare(&relation, &options.topic_prefix)
                    .await?;
                self.relations.update(relation)
            }
            LogicalMessage::Insert(insert) => {
                self.emit(
                    insert.relation_oid,
                    Operation::Create,
                    None,
                    Some(&insert.new),
                    options,
                    sink,
                )
                .await?
            }
            LogicalMessage::Update(update) => {
                let before = update.old.as_ref().map(envelope::old_tuple);
                self.emit(
                    update.relation_oid,
                    Operation::Update,
                    before,
                    Some(&update.new),
                    options,
                    sink,
                )
                .await?
            }
            LogicalMessage::Delete(delete) => {
                let before = envelope::old_tuple(&delete.old);
                self.emit(
                    delete.relation_oid,
                    Operation::Delete,
                    Some(before),
                    None,
                    options,
                    sink,
                )
                .await?
            }
            LogicalMessage::Truncate(truncate) => {
                for oid in &truncate.relation_oids {
                    let relation = self
                        .relations
                        .get(*oid)
                        .ok_or(CdcError::UnknownRelation(*oid))?;
                    if snapshot::is_bookkeeping(relation) {
                        continue;
                    }
                    let position = self
                        .transaction
                        .as_mut()
                        .map(|transaction| transaction.next_position(*oid));
                    let relation = self
                        .relations
                        .get(*oid)
                        .ok_or(CdcError::UnknownRelation(*oid))?;
                    let event = self.encoder.encode(&Change {
                        relation,
                        operation: Operation::Truncate,
                        before: None,
                        after: None,
                        source: self.source(position, &options.topic_prefix),
                        topic_prefix: &options.topic_prefix,
                        ts_ms: now_ms(),
                    })?;
                    sink.send(&event).await?;
                    self.summary.events += 1;
                }
            }
            LogicalMessage::Commit(commit) => {
                sink.commit(commit.end_lsn, Some(commit.commit_time.unix_micros()))
                    .await?;
                self.last_commit_end = commit.end_lsn;
                self.transaction = None;
                self.summary.transactions += 1;
            }
            // Origins, types, logical messages and the streaming and two-phase messages
            // (not requested under protocol 1) carry no row change.
            _ => {}
        }
        Ok(())
    }

    /// The `source` block of the change being handled; `name` is the topic prefix.
    pub(super) fn source<'a>(
        &'a self,
        position: Option<EventPosition>,
        name: &'a str,
    ) -> Source<'a> {
        let (xid, commit_time) = match &self.transaction {
            Some(transaction) => (transaction.xid, transaction.commit_time),
            None => (0, PgTimestamp(0)),
        };
        Source {
            name,
            database: &self.database,
            commit_time,
            xid,
            lsn: self.change_lsn,
            snapshot: false,
            position,
        }
    }

    pub(super) async fn emit(
        &mut self,
        relation_oid: u32,
        operation: Operation,
        before: Option<&TupleData>,
        after: Option<&TupleData>,
        options: &CdcOptions,
        sink: &mut impl EventSink,
    ) -> Result<(), CdcError> {
        let relation = self
            .relations
            .get(relation_oid)
            .ok_or(CdcError::UnknownRelation(relation_oid))?;
        if snapshot::is_bookkeeping(relation) {
            return Ok(());
        }
        let position = self
            .transaction
            .as_mut()
            .map(|transaction| transaction.next_position(relation_oid));
        let relation = self
            .relations
            .get(relation_oid)
            .ok_or(CdcError::UnknownRelation(relation_oid))?;
        let event = self.encoder.encode(&Change {
            relation,
            operation,
            before,
            after,
            source: self.source(position, &options.topic_prefix),
            topic_prefix: &options.topic_prefix,
            ts_ms: now_ms(),
        })?;
        sink.send(&event).await?;
        self.summary.events += 1;
        if operation == Operation::Delete && options.tombstones {
            if let Some(tombstone) = envelope::tombstone(&event) {
                sink.send(&tombstone).await?;
                self.summary.events += 1;
            }
        }
        Ok(())
    }

    pub(super) async fn confirm(
        &mut self,
        stream: &mut impl ChangeStream,
        position: Lsn,
        metrics: &crate::metrics::CdcMetrics,
        reply_requested: bool,
    ) -> Result<(), CdcError> {
        stream
            .send_status(StandbyStatusUpdate {
                written: position,
                flushed: position,
                applied: position,
                client_time: PgTimestamp::from_unix_micros(now_ms() * 1000),
                reply_requested,
            })
            .await?;
        tracing::debug!(%position, "confirmed to Postgres");
        metrics.record_confirmed(position.0);
        self.confirmed = position;
        self.summary.confirmed_lsn = position;
        Ok(())
    }
}
