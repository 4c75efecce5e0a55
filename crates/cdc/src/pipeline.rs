//! `walflow cdc`'s loop: read the slot, turn each committed change into an event, hand it to
//! the sink, and confirm to Postgres only what the sink has acknowledged.

use std::future::Future;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tokio::sync::watch;
use tokio_postgres::NoTls;
use walflow_pgoutput::{
    LogicalDecoder, LogicalMessage, Lsn, PgTimestamp, Relation, ReplicationMessage,
    StandbyStatusUpdate, TupleData,
};
use walflow_retry::RetryPolicy;

use crate::avro_events::{AvroEventError, AvroEvents};
use crate::encoder::EventEncoder;
use crate::envelope::{self, Change, EventPosition, Operation, RelationCache, Source};
use crate::keys;
use crate::publication::{self, SetupError};
use crate::replication::{
    ChangeStream, ReplicationConfig, ReplicationConnection, ReplicationError,
    DEFAULT_CONNECT_TIMEOUT,
};
use crate::sink::{DeliveryFailure, EventSink, SinkError};
use crate::snapshot::{self, SnapshotProgress};
use walflow_wire::topic::{self as topics, TopicError, TopicNames};

/// pgoutput protocol 1: every change arrives after its transaction committed.
const PROTOCOL_VERSION: u32 = 1;

/// When to copy the rows that exist before streaming starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SnapshotMode {
    /// When the slot is created, and again when an earlier snapshot was cut short.
    Initial,
    /// Never: changes from the slot's creation on only.
    Never,
    /// At every start: the slot's changes up to a new snapshot, the snapshot (a full copy),
    /// then the stream; the slot is kept.
    Always,
}

#[derive(Debug, Clone)]
pub struct CdcOptions {
    pub postgres_url: String,
    pub slot: String,
    pub publication: String,
    /// Tables for a new publication (`schema.table`); empty: all tables.
    pub tables: Vec<String>,
    pub topic_prefix: String,
    pub tombstones: bool,
    pub status_interval: Duration,
    /// Silence from Postgres after which the replication link is taken for dead and a new
    /// session resumes from the slot (as a standby's `wal_receiver_timeout`); a status update
    /// asking for a reply goes out at half of it.
    pub receive_timeout: Duration,
    pub snapshot: SnapshotMode,
    /// Stop once every transaction up to this position is acknowledged (benchmarks drain a
    /// backlog this way); `None` runs until stopped.
    pub stop_at: Option<Lsn>,
    /// Called as the initial snapshot copies each table (a progress bar on a terminal).
    pub snapshot_progress: Option<SnapshotProgressHook>,
    /// Avro events through a schema registry instead of JSON.
    pub avro: Option<AvroOptions>,
}

#[derive(Debug, Clone)]
pub struct AvroOptions {
    /// The registry's Confluent-compatible API.
    pub registry_url: String,
    /// Register a schema the subject's rule refuses (setting the subject's rule to NONE).
    pub allow_incompatible: bool,
}

/// A [`snapshot::SnapshotProgressFn`] that can sit in the options.
#[derive(Clone)]
pub struct SnapshotProgressHook(pub std::sync::Arc<snapshot::SnapshotProgressFn>);

impl std::fmt::Debug for SnapshotProgressHook {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SnapshotProgressHook")
    }
}

#[derive(Debug, thiserror::Error)]
pub enum CdcError {
    #[error(transparent)]
    Setup(#[from] SetupError),
    #[error(transparent)]
    Replication(#[from] ReplicationError),
    #[error(transparent)]
    Sink(#[from] SinkError),
    #[error("cannot connect to Postgres: {0}")]
    Connect(tokio_postgres::Error),
    #[error(
        "Postgres did not answer within {} s (connect_timeout in the URL sets the limit)",
        waited.as_secs()
    )]
    ConnectTimedOut { waited: Duration },
    #[error("a change for relation {0} arrived before its Relation message")]
    UnknownRelation(u32),
    #[error(transparent)]
    Delivery(DeliveryFailure),
    #[error("the snapshot failed: {0}")]
    Snapshot(#[from] snapshot::SnapshotError),
    #[error(transparent)]
    Avro(#[from] AvroEventError),
    #[error(transparent)]
    Topic(#[from] TopicError),
    #[error(
        "Kafka did not acknowledge the snapshot's rows within {} s; the snapshot is not recorded \
         as complete and is taken again at the next start",
        waited.as_secs()
    )]
    SnapshotUnacknowledged { waited: Duration },
}

#[derive(Debug, Clone, Default)]
pub struct CdcSummary {
    pub transactions: u64,
    pub events: u64,
    pub confirmed_lsn: Lsn,
    /// Commit-to-acknowledgement latencies of recent transactions, in microseconds.
    pub latencies_us: Vec<u64>,
}

struct Transaction {
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

/// Runs until `stop` turns true (then drains the sink and confirms what it acknowledged) or
/// an error ends it (then nothing unacknowledged is confirmed: a restart resumes there).
pub async fn run<S: EventSink>(
    options: &CdcOptions,
    mut sink: S,
    mut stop: watch::Receiver<bool>,
) -> Result<CdcSummary, CdcError> {
    let client = connect_client(&options.postgres_url).await?;
    publication::check_wal_level(&client).await?;
    if publication::ensure_publication(&client, &options.publication, &options.tables).await? {
        tracing::info!(publication = %options.publication, "publication created");
    }
    publication::check_replica_identities(&client, &options.publication).await?;
    topics::check_prefix(&options.topic_prefix)?;
    let mut topic_names = TopicNames::default();
    let mut topics = Vec::new();
    for (schema, table) in publication::published_tables(&client, &options.publication).await? {
        if schema == "public" && table == snapshot::STATE_TABLE {
            continue;
        }
        let (_, topic) = topic_names.claim(&options.topic_prefix, &schema, &table)?;
        topics.push(topic);
    }
    if let Some(dead_letters) = sink.dead_letter_topic() {
        topics.push(dead_letters.to_owned());
    }
    sink.create_topics(&topics).await?;

    let encoder = match &options.avro {
        Some(avro) => EventEncoder::Avro(
            AvroEvents::new(&avro.registry_url, avro.allow_incompatible)
                .map_err(AvroEventError::from)?,
        ),
        None => EventEncoder::Json,
    };
    let config = ReplicationConfig::from_url(&options.postgres_url)?;
    let mut replication = ReplicationConnection::connect(&config).await?;
    let identity = replication.identify_system().await?;
    let database = identity
        .database
        .clone()
        .unwrap_or_else(|| config.database.clone());
    let slot_exists = publication::slot_state(&client, &options.slot)
        .await?
        .is_some();
    let take_snapshot = match options.snapshot {
        SnapshotMode::Never => false,
        SnapshotMode::Always => true,
        SnapshotMode::Initial => {
            !slot_exists
                || snapshot::progress(&client, &options.slot).await? == SnapshotProgress::Started
        }
    };
    let mut state = StreamState::new(database.clone(), encoder, topic_names);
    let mut replication = Some(replication);
    if take_snapshot {
        let existing = match slot_exists {
            true => publication::slot_state(&client, &options.slot).await?,
            false => None,
        };
        snapshot::record_started(&client, &options.slot).await?;
        let mut snapshot_connection = replication.take().ok_or_else(|| {
            ReplicationError::Protocol("no replication connection for the snapshot".into())
        })?;
        let (created, kept_slot) = match existing {
            Some(existing) if existing.wal_status.as_deref() != Some("lost") => {
                // A snapshot taken again (`--snapshot always`, or one cut short) keeps the
                // slot: the changes it holds up to the new snapshot's consistent point are
                // streamed first, deletes included, so no row deleted meanwhile lives on
                // downstream; then the snapshot; then the slot goes on from that point.
                publication::check_slot_is_ours(&options.slot, &existing, &database)?;
                let temporary = temporary_slot_name(&options.slot);
                let created = snapshot_connection
                    .create_temporary_logical_slot(&temporary)
                    .await?;
                tracing::info!(slot = %options.slot, consistent_point = %created.consistent_point, "taking the snapshot again: first the slot's changes up to its consistent point");
                snapshot::record_consistent_point(&client, &options.slot, created.consistent_point)
                    .await?;
                state.catch_up_to = Some(created.consistent_point);
                let catch_up = ReplicationConnection::connect(&config).await?;
                stream_session(catch_up, &client, options, &mut sink, &mut stop, &mut state)
                    .await?;
                if !state.caught_up {
                    // Stopped (SIGTERM) before the snapshot: it is taken at the next start.
                    return Ok(state.summary);
                }
                state.catch_up_to = None;
                state.caught_up = false;
                state.start_new_session();
                (created, true)
            }
            existing => {
                if existing.is_some() {
                    tracing::warn!(slot = %options.slot, "the slot was invalidated (wal_status lost): recreating it to take the snapshot again");
                    publication::drop_slot(&client, &options.slot, &database).await?;
                }
                let created = snapshot_connection
                    .create_logical_slot(&options.slot, true)
                    .await?;
                tracing::info!(slot = %options.slot, consistent_point = %created.consistent_point, "slot created; snapshot starting");
                snapshot::record_consistent_point(&client, &options.slot, created.consistent_point)
                    .await?;
                (created, false)
            }
        };
        let consistent_point = created.consistent_point;
        // The connection that exported the snapshot stays idle until it is imported.
        let rows = copy_snapshot(
            options,
            &mut sink,
            &database,
            &created,
            &mut state.encoder,
            &stop,
        )
        .await;
        if !kept_slot {
            replication = Some(snapshot_connection);
        }
        let rows = match rows {
            Err(CdcError::Snapshot(snapshot::SnapshotError::Stopped)) => {
                tracing::info!("stopped during the snapshot; it is taken again at the next start");
                return Ok(state.summary);
            }
            rows => rows?,
        };
        sink.commit(consistent_point, None).await?;
        let acknowledged = sink.drain(consistent_point, sink.delivery_deadline()).await;
        if let Some(failure) = sink.failure() {
            return Err(CdcError::Delivery(failure));
        }
        if !acknowledged {
            // Recorded as complete only once Kafka holds every row: otherwise the rows
            // still queued would be lost, as the slot already starts after them.
            return Err(CdcError::SnapshotUnacknowledged {
                waited: sink.delivery_deadline(),
            });
        }
        if kept_slot {
            // The kept slot goes on from the new snapshot's consistent point (the temporary
            // slot went with its connection).
            advance_slot(&client, &options.slot, consistent_point).await?;
        }
        snapshot::record_completed(&client, &options.slot).await?;
        tracing::info!(rows, "snapshot complete");
    } else if let Some(connection) = replication.as_mut() {
        if publication::ensure_slot(&client, connection, &options.slot, &database).await? {
            tracing::info!(slot = %options.slot, "replication slot created");
        }
    }
    // Sessions: a lost connection to Postgres (a restart, a network cut) is followed by a new
    // one that resumes from the slot's confirmed position, after a growing pause.
    let mut client = client;
    let mut backoff = RECONNECT.backoff();
    let mut resuming = false;
    loop {
        let transactions_before = state.summary.transactions;
        let session = match replication.take() {
            Some(connection) => {
                stream_session(
                    connection, &client, options, &mut sink, &mut stop, &mut state,
                )
                .await
            }
            None => match reconnect(options, &config).await {
                Ok((new_client, connection)) => {
                    client = new_client;
                    sink.metrics().record_reconnect();
                    tracing::info!(slot = %options.slot, "reconnected to Postgres; resuming from the slot");
                    stream_session(
                        connection, &client, options, &mut sink, &mut stop, &mut state,
                    )
                    .await
                }
                Err(error) => Err(error),
            },
        };
        let resumed = std::mem::replace(&mut resuming, true);
        if state.summary.transactions > transactions_before {
            // The last session got somewhere: the next failure starts with a short pause.
            backoff.reset();
        }
        match session {
            Ok(()) => break,
            Err(error) if is_undelivered(&error) => {
                // Kafka stayed unreachable past the message timeout: nothing after the
                // acknowledged position was confirmed, so a new producer and a new session
                // from the slot send it again, after a growing pause, for as long as it takes.
                let wait = backoff.next_delay();
                tracing::warn!(%error, retry_in_ms = wait.as_millis() as u64, "Kafka did not take the events; will resend from the slot");
                sink.reset()?;
                state.start_new_session();
                tokio::select! {
                    _ = tokio::time::sleep(wait) => {}
                    _ = stop.changed() => break,
                }
            }
            Err(error) if is_transient(&error) || (resumed && is_slot_in_use(&error)) => {
                let wait = backoff.next_delay();
                if is_slot_in_use(&error) {
                    // The link was lost without Postgres noticing: its side of the old
                    // session holds the slot until its wal_sender_timeout ends it.
                    tracing::warn!(%error, retry_in_ms = wait.as_millis() as u64, "the slot is still held by the lost session until Postgres's wal_sender_timeout ends it; will retry");
                } else {
                    sink.metrics().record_session_lost();
                    tracing::warn!(%error, retry_in_ms = wait.as_millis() as u64, "lost Postgres; will resume from the slot");
                }
                sink.abandon_open_transaction();
                state.start_new_session();
                tokio::select! {
                    _ = tokio::time::sleep(wait) => {}
                    _ = stop.changed() => break,
                }
            }
            Err(error) => return Err(error),
        }
    }
    state.summary.latencies_us = sink.latencies_us();
    tracing::info!(
        transactions = state.summary.transactions,
        events = state.summary.events,
        confirmed_lsn = %state.summary.confirmed_lsn,
        "stopped"
    );
    Ok(state.summary)
}

/// The default of [`CdcOptions::receive_timeout`], Postgres's `wal_receiver_timeout`.
pub const RECEIVE_TIMEOUT: Duration = Duration::from_secs(60);
/// New sessions after a lost one, and resends after Kafka refused, for as long as it takes.
const RECONNECT: RetryPolicy =
    RetryPolicy::forever(Duration::from_millis(500), Duration::from_secs(30));

async fn reconnect(
    options: &CdcOptions,
    config: &ReplicationConfig,
) -> Result<(tokio_postgres::Client, ReplicationConnection), CdcError> {
    let client = connect_client(&options.postgres_url).await?;
    let replication = ReplicationConnection::connect(config).await?;
    Ok((client, replication))
}

/// Kafka did not acknowledge an event in time (it is down or unreachable).
fn is_undelivered(error: &CdcError) -> bool {
    matches!(
        error,
        CdcError::Delivery(_)
            | CdcError::Sink(SinkError::Undelivered(_) | SinkError::SendRefused(_))
    )
}

/// Another session holds the slot (SQLSTATE 55006, object in use).
fn is_slot_in_use(error: &CdcError) -> bool {
    matches!(error, CdcError::Replication(replication) if replication.code() == Some("55006"))
}

/// Errors after which a new connection may well succeed: the server went away, restarts, or
/// refuses connections for now.
fn is_transient(error: &CdcError) -> bool {
    match error {
        CdcError::Connect(_) | CdcError::ConnectTimedOut { .. } => true,
        // A message out of place is what a session cut short looks like; a new session
        // starts clean from the slot.
        CdcError::Replication(
            ReplicationError::Io(_)
            | ReplicationError::Connect { .. }
            | ReplicationError::Protocol(_)
            | ReplicationError::InvalidLsn(_),
        ) => true,
        CdcError::Replication(replication) => replication
            .code()
            .is_some_and(|code| code.starts_with("57P") || code.starts_with("08")),
        CdcError::Setup(SetupError::Postgres { source, .. }) => source.is_closed(),
        _ => false,
    }
}

/// One replication session: stream until stopped (then drain the sink and confirm what it
/// acknowledged) or until an error.
async fn stream_session(
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
async fn stream_changes(
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

struct StreamState {
    decoder: LogicalDecoder,
    relations: RelationCache,
    transaction: Option<Transaction>,
    last_commit_end: Lsn,
    confirmed: Lsn,
    summary: CdcSummary,
    database: String,
    /// The WAL position of the change being handled: each event's `source.lsn`.
    change_lsn: Lsn,
    /// JSON or Avro, chosen at start.
    encoder: EventEncoder,
    /// The topic of every table met so far, so that two never share one.
    topics: TopicNames,
    /// Set while a kept slot streams up to a new snapshot's consistent point: the session
    /// ends before the first transaction that commits at or after it.
    catch_up_to: Option<Lsn>,
    /// The catch-up reached its point.
    caught_up: bool,
}

impl StreamState {
    fn new(database: String, encoder: EventEncoder, topics: TopicNames) -> StreamState {
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
    fn start_new_session(&mut self) {
        self.decoder = LogicalDecoder::new();
        self.relations = RelationCache::default();
        self.transaction = None;
    }

    async fn handle(
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
    fn source<'a>(&'a self, position: Option<EventPosition>, name: &'a str) -> Source<'a> {
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

    async fn emit(
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

    async fn confirm(
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

/// Reads the exported snapshot on a connection of its own (the replication connection that
/// exported it must stay idle until it is imported).
async fn copy_snapshot(
    options: &CdcOptions,
    sink: &mut impl EventSink,
    database: &str,
    created: &crate::replication::CreatedSlot,
    encoder: &mut EventEncoder,
    stop: &watch::Receiver<bool>,
) -> Result<u64, CdcError> {
    let snapshot_name = created.snapshot_name.as_deref().ok_or_else(|| {
        ReplicationError::Protocol("CREATE_REPLICATION_SLOT exported no snapshot".into())
    })?;
    let client = connect_client(&options.postgres_url).await?;
    let setup_failed = |source| SetupError::Postgres {
        context: "cannot open the exported snapshot".into(),
        source,
    };
    client
        .batch_execute(&format!(
            "BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY; SET TRANSACTION SNAPSHOT '{}'; \
             SET LOCAL DateStyle = ISO; SET LOCAL IntervalStyle = postgres; \
             SET LOCAL bytea_output = hex",
            snapshot_name.replace('\'', "''")
        ))
        .await
        .map_err(setup_failed)?;
    let relations = snapshot::published_relations(&client, &options.publication).await?;
    for table in &relations {
        encoder
            .prepare(&table.relation, &options.topic_prefix)
            .await?;
    }
    let rows = snapshot::copy_tables(
        &client,
        &relations,
        sink,
        snapshot::SnapshotOrigin {
            topic_prefix: &options.topic_prefix,
            database,
            consistent_point: created.consistent_point,
        },
        now_ms,
        snapshot::SnapshotWatch {
            progress: options.snapshot_progress.as_ref().map(|hook| &*hook.0),
            stop,
        },
        encoder,
    )
    .await?;
    client.batch_execute("COMMIT").await.map_err(setup_failed)?;
    Ok(rows)
}

/// What a Relation message leaves to the catalog: the base types of domain columns and the
/// key of a table whose replica identity is FULL or NOTHING. Postgres answers it; tests of
/// the loop take pgoutput's flags as they are.
pub trait RelationCatalog: Sync {
    fn complete(
        &self,
        relation: &mut Relation,
    ) -> impl Future<Output = Result<(), CdcError>> + Send;
}

impl RelationCatalog for tokio_postgres::Client {
    async fn complete(&self, relation: &mut Relation) -> Result<(), CdcError> {
        resolve_domains(self, relation).await?;
        keys::resolve_key_columns(self, relation).await?;
        Ok(())
    }
}

/// pgoutput names a domain column's own type; its values are those of the base type, which
/// is what decides their JSON form. User-defined types only (OIDs from 16384) are looked up.
async fn resolve_domains(
    client: &tokio_postgres::Client,
    relation: &mut Relation,
) -> Result<(), CdcError> {
    const FIRST_USER_OID: u32 = 16384;
    for column in relation
        .columns
        .iter_mut()
        .filter(|column| column.type_oid >= FIRST_USER_OID)
    {
        let row = client
            .query_opt(
                "WITH RECURSIVE base(oid, basetype) AS (
                     SELECT oid, typbasetype FROM pg_type WHERE oid = $1 AND typtype = 'd'
                     UNION ALL
                     SELECT t.oid, t.typbasetype FROM pg_type t JOIN base ON t.oid = base.basetype WHERE t.typtype = 'd')
                 SELECT basetype FROM base ORDER BY oid = $1 LIMIT 1",
                &[&column.type_oid],
            )
            .await
            .map_err(|source| SetupError::Postgres { context: format!("cannot resolve the type of column {}", column.name), source })?;
        if let Some(row) = row {
            column.type_oid = row.get(0);
        }
    }
    Ok(())
}

/// The temporary slot of a snapshot taken again: unique per process, within Postgres's
/// 63 characters.
fn temporary_slot_name(slot: &str) -> String {
    let suffix = format!("_resnapshot_{}", std::process::id());
    let keep = slot.len().min(63 - suffix.len());
    let mut end = keep;
    while !slot.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}{suffix}", &slot[..end])
}

/// Moves the kept slot to the new snapshot's consistent point, once its catch-up session
/// has let go of it (the walsender may take a moment to exit).
async fn advance_slot(
    client: &tokio_postgres::Client,
    slot: &str,
    point: Lsn,
) -> Result<(), CdcError> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let advanced = client
            .execute(
                "SELECT pg_replication_slot_advance($1, $2::text::pg_lsn)",
                &[&slot, &point.to_string()],
            )
            .await;
        match advanced {
            Ok(_) => return Ok(()),
            Err(error)
                if error.code() == Some(&tokio_postgres::error::SqlState::OBJECT_IN_USE)
                    && tokio::time::Instant::now() < deadline =>
            {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(source) => {
                return Err(SetupError::Postgres {
                    context: format!(
                        "cannot move slot {slot} to the snapshot's consistent point {point}"
                    ),
                    source,
                }
                .into())
            }
        }
    }
}

/// A regular connection, bounded as the replication one is: the URL's `connect_timeout`
/// (30 s when it sets none) over the whole handshake, and TCP keepalives.
async fn connect_client(url: &str) -> Result<tokio_postgres::Client, CdcError> {
    let mut config: tokio_postgres::Config = url.parse().map_err(CdcError::Connect)?;
    let timeout = config
        .get_connect_timeout()
        .copied()
        .unwrap_or(DEFAULT_CONNECT_TIMEOUT);
    config
        .connect_timeout(timeout)
        .keepalives(true)
        .keepalives_idle(Duration::from_secs(30))
        .keepalives_interval(Duration::from_secs(10))
        .keepalives_retries(3);
    let (client, connection) = tokio::time::timeout(timeout, config.connect(NoTls))
        .await
        .map_err(|_| CdcError::ConnectTimedOut { waited: timeout })?
        .map_err(CdcError::Connect)?;
    tokio::spawn(connection);
    Ok(client)
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|elapsed| elapsed.as_millis() as i64)
        .unwrap_or_default()
}

#[cfg(test)]
#[path = "pipeline_tests.rs"]
mod tests;
