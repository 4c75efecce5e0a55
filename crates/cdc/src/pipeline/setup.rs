//! What `walflow cdc` asks of Postgres over a plain connection: the exported snapshot's
//! rows, the relations and domains behind them, the slot moved forward, the connection itself.

use std::time::Duration;

use tokio::sync::watch;
use walflow_pgoutput::{Lsn, Relation};

use crate::encoder::EventEncoder;
use crate::keys;
use crate::publication::SetupError;
use crate::replication::{ReplicationError, DEFAULT_CONNECT_TIMEOUT};
use crate::sink::EventSink;
use crate::snapshot::{self};

use super::session::RelationCatalog;
use super::{now_ms, CdcError, CdcOptions};
use walflow_tls::postgres::PostgresTarget;

/// Reads the exported snapshot on a connection of its own (the replication connection that
/// exported it must stay idle until it is imported).
pub(super) async fn copy_snapshot(
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
pub(super) fn temporary_slot_name(slot: &str) -> String {
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
pub(super) async fn advance_slot(
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
pub(super) async fn connect_client(url: &str) -> Result<tokio_postgres::Client, CdcError> {
    let mut target = PostgresTarget::parse(url)?;
    let timeout = target
        .config()
        .get_connect_timeout()
        .copied()
        .unwrap_or(DEFAULT_CONNECT_TIMEOUT);
    target
        .config_mut()
        .connect_timeout(timeout)
        .keepalives(true)
        .keepalives_idle(Duration::from_secs(30))
        .keepalives_interval(Duration::from_secs(10))
        .keepalives_retries(3);
    tokio::time::timeout(timeout, target.connect_spawned("cdc"))
        .await
        .map_err(|_| CdcError::ConnectTimedOut { waited: timeout })?
        .map_err(CdcError::Connect)
}
