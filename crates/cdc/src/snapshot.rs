//! The initial snapshot: the rows that existed when the slot was created, read through the
//! snapshot the slot exported (so they are exactly the state at the slot's consistent
//! point), sent as `op: r` events before the stream starts at that point: no gap, no
//! overlap. Its progress is recorded in a small table of the source database, so a snapshot
//! cut short by a crash is started over instead of being taken for done.

use bytes::Bytes;
use bytestring::ByteString;
use tokio_postgres::{Client, SimpleQueryMessage};
use walflow_pgoutput::{
    encode, Column, Lsn, PgTimestamp, Relation, RelationColumn, ReplicaIdentity,
};

use crate::encoder::EventEncoder;
use crate::envelope::{Change, Operation, Source};
use crate::publication::SetupError;
use crate::replication::quote_identifier;
use crate::sink::{EventSink, SinkError};

/// walflow's own bookkeeping table; its changes are never turned into events (neither by
/// the snapshot nor by the stream, under a `FOR ALL TABLES` publication).
pub const STATE_TABLE: &str = "walflow_cdc_snapshot";

/// Whether `relation` is walflow's bookkeeping table.
pub fn is_bookkeeping(relation: &Relation) -> bool {
    &*relation.namespace == "public" && &*relation.name == STATE_TABLE
}
/// Rows per FETCH: memory stays bounded whatever the table's size.
const FETCH_ROWS: usize = 5000;

fn failed(context: impl Into<String>) -> impl FnOnce(tokio_postgres::Error) -> SetupError {
    let context = context.into();
    move |source| SetupError::Postgres { context, source }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SnapshotProgress {
    Never,
    Started,
    Completed,
}

async fn ensure_state_table(client: &Client) -> Result<(), SetupError> {
    client
        .batch_execute(&format!(
            "CREATE TABLE IF NOT EXISTS public.{STATE_TABLE} (
                 slot_name text PRIMARY KEY,
                 consistent_point pg_lsn NOT NULL,
                 started_at timestamptz NOT NULL DEFAULT now(),
                 completed_at timestamptz)"
        ))
        .await
        .map_err(failed(format!("cannot create {STATE_TABLE}")))
}

pub async fn progress(client: &Client, slot: &str) -> Result<SnapshotProgress, SetupError> {
    ensure_state_table(client).await?;
    let row = client
        .query_opt(
            &format!(
                "SELECT completed_at IS NOT NULL FROM public.{STATE_TABLE} WHERE slot_name = $1"
            ),
            &[&slot],
        )
        .await
        .map_err(failed(format!("cannot read {STATE_TABLE}")))?;
    Ok(match row.map(|row| row.get::<_, bool>(0)) {
        None => SnapshotProgress::Never,
        Some(false) => SnapshotProgress::Started,
        Some(true) => SnapshotProgress::Completed,
    })
}

/// Records that a snapshot for `slot` is under way, before its slot is created: a crash at
/// any point until [`record_completed`] then leaves `Started` behind, and the next start
/// takes the snapshot again instead of streaming without it.
pub async fn record_started(client: &Client, slot: &str) -> Result<(), SetupError> {
    ensure_state_table(client).await?;
    client
        .execute(
            &format!(
                "INSERT INTO public.{STATE_TABLE} (slot_name, consistent_point) VALUES ($1, '0/0')
                 ON CONFLICT (slot_name) DO UPDATE
                 SET consistent_point = '0/0', started_at = now(), completed_at = NULL"
            ),
            &[&slot],
        )
        .await
        .map_err(failed(format!(
            "cannot record the snapshot in {STATE_TABLE}"
        )))?;
    Ok(())
}

/// Records where the snapshot's slot starts (for operators reading the table).
pub async fn record_consistent_point(
    client: &Client,
    slot: &str,
    consistent_point: Lsn,
) -> Result<(), SetupError> {
    client
        .execute(
            &format!(
                "UPDATE public.{STATE_TABLE} SET consistent_point = $2::text::pg_lsn WHERE slot_name = $1"
            ),
            &[&slot, &consistent_point.to_string()],
        )
        .await
        .map_err(failed(format!("cannot record the snapshot in {STATE_TABLE}")))?;
    Ok(())
}

pub async fn record_completed(client: &Client, slot: &str) -> Result<(), SetupError> {
    client
        .execute(
            &format!("UPDATE public.{STATE_TABLE} SET completed_at = now() WHERE slot_name = $1"),
            &[&slot],
        )
        .await
        .map_err(failed(format!(
            "cannot record the snapshot in {STATE_TABLE}"
        )))?;
    Ok(())
}

/// Forgets the snapshot state of `slot` (when its slot is dropped), so a new slot of that
/// name gets its own snapshot.
pub async fn forget(client: &Client, slot: &str) -> Result<(), SetupError> {
    let exists: bool = client
        .query_one(
            &format!("SELECT to_regclass('public.{STATE_TABLE}') IS NOT NULL"),
            &[],
        )
        .await
        .map_err(failed(format!("cannot look for {STATE_TABLE}")))?
        .get(0);
    if !exists {
        return Ok(());
    }
    client
        .execute(
            &format!("DELETE FROM public.{STATE_TABLE} WHERE slot_name = $1"),
            &[&slot],
        )
        .await
        .map_err(failed(format!("cannot update {STATE_TABLE}")))?;
    Ok(())
}

/// A published table as the snapshot copies it: exactly what the stream publishes.
#[derive(Debug, Clone)]
pub struct PublishedTable {
    /// Described as a Relation message would describe it: the published columns only
    /// (a PG15+ column list; stored generated columns left out as pgoutput leaves them out),
    /// keyed by the primary key or the replica-identity index.
    pub relation: Relation,
    /// The publication's row filter for this table (PG15+), a SQL expression.
    pub row_filter: Option<String>,
    /// A partitioned table (published through its root): read with its partitions. Any
    /// other table is read without the rows of its inheritance children, which are
    /// published (and copied) as tables of their own.
    pub partitioned: bool,
}

/// The published tables, each with what the publication publishes of it.
pub async fn published_relations(
    client: &Client,
    publication: &str,
) -> Result<Vec<PublishedTable>, SetupError> {
    let server_version: i32 = client
        .query_one("SELECT current_setting('server_version_num')::int", &[])
        .await
        .map_err(failed("cannot read the server version"))?
        .get(0);
    // Column lists and row filters exist from PostgreSQL 15 on.
    let (attnames, rowfilter) = if server_version >= 150000 {
        ("t.attnames::text[]", "t.rowfilter::text")
    } else {
        ("NULL::text[]", "NULL::text")
    };
    let tables = client
        .query(
            &format!(
                "SELECT c.oid, n.nspname::text, c.relname::text, c.relreplident::text,
                        {attnames}, {rowfilter}, c.relkind::text
                   FROM pg_publication_tables t
                   JOIN pg_namespace n ON n.nspname = t.schemaname
                   JOIN pg_class c ON c.relnamespace = n.oid AND c.relname = t.tablename
                  WHERE t.pubname = $1 AND NOT (n.nspname = 'public' AND c.relname = $2)
                  ORDER BY 2, 3"
            ),
            &[&publication, &STATE_TABLE],
        )
        .await
        .map_err(failed("cannot list the published tables"))?;
    let mut relations = Vec::with_capacity(tables.len());
    for table in tables {
        let oid: u32 = table.get(0);
        let identity: String = table.get(3);
        let published_columns: Option<Vec<String>> = table.get(4);
        let columns = client
            .query(
                "SELECT a.attname::text,
                        CASE WHEN t.typtype = 'd' THEN t.typbasetype ELSE a.atttypid END,
                        a.atttypmod,
                        EXISTS (SELECT 1 FROM pg_index i
                                 WHERE i.indrelid = a.attrelid AND a.attnum = ANY (i.indkey)
                                   AND CASE WHEN $2 = 'i' THEN i.indisreplident ELSE i.indisprimary END),
                        a.attgenerated <> ''
                   FROM pg_attribute a JOIN pg_type t ON t.oid = a.atttypid
                  WHERE a.attrelid = $1 AND a.attnum > 0 AND NOT a.attisdropped
                  ORDER BY a.attnum",
                &[&oid, &identity],
            )
            .await
            .map_err(failed("cannot read the columns of a published table"))?;
        // PG15+ names the published columns. Before PG18 pgoutput never sends stored
        // generated columns, though attnames lists them; from PG18 on attnames follows the
        // publication's publish_generated_columns.
        let generated_published = server_version >= 180000;
        let is_published = |name: &str, generated: bool| {
            (generated_published || !generated)
                && published_columns
                    .as_ref()
                    .is_none_or(|names| names.iter().any(|published| published == name))
        };
        relations.push(PublishedTable {
            relation: Relation {
                xid: None,
                oid,
                namespace: ByteString::from(table.get::<_, String>(1)),
                name: ByteString::from(table.get::<_, String>(2)),
                replica_identity: match identity.as_str() {
                    "f" => ReplicaIdentity::Full,
                    "n" => ReplicaIdentity::Nothing,
                    "i" => ReplicaIdentity::Index,
                    _ => ReplicaIdentity::Default,
                },
                columns: columns
                    .iter()
                    .filter(|column| is_published(column.get::<_, &str>(0), column.get(4)))
                    .map(|column| RelationColumn {
                        is_key: column.get(3),
                        name: ByteString::from(column.get::<_, String>(0)),
                        type_oid: column.get(1),
                        type_modifier: column.get(2),
                    })
                    .collect(),
            },
            row_filter: table.get(5),
            partitioned: table.get::<_, String>(6) == "p",
        });
    }
    Ok(relations)
}

/// Told, table by table, how far the snapshot got: the table, rows copied so far, the
/// planner's estimate of its rows (0 when unknown), and whether the table is done. The CLI
/// draws a progress bar per table with it.
pub type SnapshotProgressFn = dyn Fn(&str, u64, u64, bool) + Send + Sync;

#[derive(Debug, thiserror::Error)]
pub enum SnapshotError {
    #[error(transparent)]
    Setup(#[from] SetupError),
    #[error(transparent)]
    Sink(#[from] SinkError),
    #[error(transparent)]
    Avro(#[from] crate::avro_events::AvroEventError),
    #[error("stopped during the snapshot; it is taken again at the next start")]
    Stopped,
}

/// Where the snapshot's `r` events say they come from.
#[derive(Debug, Clone, Copy)]
pub struct SnapshotOrigin<'a> {
    pub topic_prefix: &'a str,
    pub database: &'a str,
    /// The slot's consistent point: every `r` event's `source.lsn`.
    pub consistent_point: Lsn,
}

/// Who follows the snapshot as it runs: a progress callback, and the stop signal
/// (checked between batches).
#[derive(Clone, Copy)]
pub struct SnapshotWatch<'a> {
    pub progress: Option<&'a SnapshotProgressFn>,
    pub stop: &'a tokio::sync::watch::Receiver<bool>,
}

/// Copies every published table inside the transaction `client` has open on the exported
/// snapshot, as `r` events. Returns the number of rows.
pub async fn copy_tables(
    client: &Client,
    tables: &[PublishedTable],
    sink: &mut impl EventSink,
    origin: SnapshotOrigin<'_>,
    now_ms: impl Fn() -> i64,
    watch: SnapshotWatch<'_>,
    encoder: &EventEncoder,
) -> Result<u64, SnapshotError> {
    let SnapshotWatch { progress, stop } = watch;
    let SnapshotOrigin {
        topic_prefix,
        database,
        consistent_point,
    } = origin;
    let mut total = 0;
    for published in tables {
        let relation = &published.relation;
        let estimated_rows: i64 = client
            .query_one(
                "SELECT greatest(reltuples, 0)::bigint FROM pg_class WHERE oid = $1",
                &[&relation.oid],
            )
            .await
            .map_err(failed("cannot read the table's size estimate"))?
            .get(0);
        let estimated_rows = estimated_rows.max(0) as u64;
        let table = format!(
            "{}.{}",
            quote_identifier(&relation.namespace),
            quote_identifier(&relation.name)
        );
        let columns: Vec<String> = relation
            .columns
            .iter()
            .map(|column| quote_identifier(&column.name))
            .collect();
        let only = if published.partitioned { "" } else { "ONLY " };
        let filter = published
            .row_filter
            .as_deref()
            .map(|filter| format!(" WHERE ({filter})"))
            .unwrap_or_default();
        client
            .batch_execute(&format!(
                "DECLARE walflow_snapshot NO SCROLL CURSOR FOR SELECT {} FROM {only}{table}{filter}",
                columns.join(", ")
            ))
            .await
            .map_err(failed(format!("cannot read {table}")))?;
        let source = Source {
            name: topic_prefix,
            database,
            commit_time: PgTimestamp::from_unix_micros(now_ms() * 1000),
            xid: 0,
            lsn: consistent_point,
            snapshot: true,
            position: None,
        };
        let mut rows_of_table = 0u64;
        loop {
            let messages = client
                .simple_query(&format!("FETCH {FETCH_ROWS} FROM walflow_snapshot"))
                .await
                .map_err(failed(format!("cannot read {table}")))?;
            let mut fetched = 0;
            for message in messages {
                let SimpleQueryMessage::Row(row) = message else {
                    continue;
                };
                let values: Vec<Column> = (0..row.len())
                    .map(|index| match row.get(index) {
                        Some(text) => Column::Text(Bytes::copy_from_slice(text.as_bytes())),
                        None => Column::Null,
                    })
                    .collect();
                let tuple = encode::tuple(&values);
                let event = encoder.encode(&Change {
                    relation,
                    operation: Operation::Read,
                    before: None,
                    after: Some(&tuple),
                    source: source.clone(),
                    topic_prefix,
                    ts_ms: now_ms(),
                })?;
                sink.send(&event).await?;
                fetched += 1;
            }
            rows_of_table += fetched;
            if let Some(progress) = progress {
                progress(&table, rows_of_table, estimated_rows, false);
            }
            if fetched > 0 && rows_of_table % 100_000 < FETCH_ROWS as u64 {
                tracing::info!(%table, rows = rows_of_table, "snapshot in progress");
            }
            if fetched < FETCH_ROWS as u64 {
                break;
            }
            // SIGTERM is honoured between batches: a long snapshot stops in moments, and
            // its progress stays "started", so the next start takes it again.
            if *stop.borrow() {
                return Err(SnapshotError::Stopped);
            }
        }
        client
            .batch_execute("CLOSE walflow_snapshot")
            .await
            .map_err(failed("cannot close the snapshot cursor"))?;
        if let Some(progress) = progress {
            progress(&table, rows_of_table, estimated_rows, true);
        }
        tracing::info!(%table, rows = rows_of_table, "table copied");
        total += rows_of_table;
    }
    Ok(total)
}
