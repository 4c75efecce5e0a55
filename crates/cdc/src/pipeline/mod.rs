//! `walflow cdc`'s loop: read the slot, turn each committed change into an event, hand it to
//! the sink, and confirm to Postgres only what the sink has acknowledged.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tokio::sync::watch;
use walflow_pgoutput::Lsn;
use walflow_retry::RetryPolicy;
use walflow_tls::postgres::ConnectError;

use crate::avro_events::{AvroEventError, AvroEvents};
use crate::encoder::EventEncoder;
use crate::publication::{self, SetupError};
use crate::replication::{ReplicationConfig, ReplicationConnection, ReplicationError};
use crate::sink::{DeliveryFailure, EventSink, SinkError};
use crate::snapshot::{self, SnapshotProgress};
use walflow_wire::topic::{self as topics, TopicError, TopicNames};

mod session;
mod setup;

use session::{stream_session, StreamState};
use setup::{advance_slot, connect_client, copy_snapshot, temporary_slot_name};

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
    Connect(#[source] ConnectError),
    #[error(transparent)]
    PostgresTls(#[from] walflow_tls::postgres::PostgresTlsError),
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
        // A certificate that does not verify, or a server refusing TLS, stays so.
        CdcError::Connect(
            ConnectError::Verify { .. }
            | ConnectError::TlsRefused { .. }
            | ConnectError::Settings(_),
        ) => false,
        CdcError::Connect(_) | CdcError::ConnectTimedOut { .. } => true,
        // A message out of place is what a session cut short looks like; a new session
        // starts clean from the slot.
        CdcError::Replication(
            ReplicationError::Io(_)
            | ReplicationError::Connect { .. }
            | ReplicationError::Protocol(_)
            | ReplicationError::InvalidLsn(_)
            | ReplicationError::Tls(ConnectError::Io { .. } | ConnectError::Handshake { .. }),
        ) => true,
        CdcError::Replication(replication) => replication
            .code()
            .is_some_and(|code| code.starts_with("57P") || code.starts_with("08")),
        CdcError::Setup(SetupError::Postgres { source, .. }) => source.is_closed(),
        _ => false,
    }
}

pub(super) fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|elapsed| elapsed.as_millis() as i64)
        .unwrap_or_default()
}

#[cfg(test)]
mod tests;
