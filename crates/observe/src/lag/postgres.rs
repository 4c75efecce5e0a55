//! The first hop's lag, from `pg_replication_slots`: how far the slot's confirmed position
//! is behind the current WAL position, and how much WAL it makes Postgres keep.

use serde::Serialize;
use tokio_postgres::Client;

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct SlotLag {
    pub slot_name: String,
    pub active: bool,
    pub active_pid: Option<i32>,
    /// Seconds since the WAL sender reading the slot started (the session of cdc).
    pub active_seconds: Option<f64>,
    /// `reserved`, `extended`, `unreserved` or `lost` (Postgres 13+).
    pub wal_status: Option<String>,
    /// Bytes that can still be written before the slot loses WAL (under
    /// `max_slot_wal_keep_size`; NULL when unlimited).
    pub safe_wal_size: Option<i64>,
    /// `pg_current_wal_lsn() - confirmed_flush_lsn`.
    pub lag_bytes: Option<i64>,
    /// `pg_current_wal_lsn() - restart_lsn`: WAL kept on disk for the slot.
    pub retained_bytes: Option<i64>,
    pub confirmed_flush_lsn: Option<String>,
    /// cdc's time lag as Postgres measures it (`pg_stat_replication.flush_lag`): how long
    /// ago the WAL that cdc has just confirmed was written. cdc confirms only what Kafka
    /// acknowledged, so this is commit -> Kafka. Postgres reports NULL once the client is
    /// caught up and idle: read as zero. `None` when cdc is not attached.
    pub cdc_lag_ms: Option<f64>,
}

/// The slot's lag, or `None` when there is no such slot.
pub async fn slot_lag(
    client: &Client,
    slot: &str,
) -> Result<Option<SlotLag>, tokio_postgres::Error> {
    let row = client
        .query_opt(
            "SELECT s.slot_name::text, s.active, s.active_pid, s.wal_status::text,
                    s.safe_wal_size::bigint,
                    (pg_current_wal_lsn() - s.confirmed_flush_lsn)::bigint,
                    (pg_current_wal_lsn() - s.restart_lsn)::bigint,
                    s.confirmed_flush_lsn::text,
                    extract(epoch FROM now() - r.backend_start)::float8,
                    r.pid IS NOT NULL,
                    coalesce(extract(epoch FROM r.flush_lag) * 1000, 0)::float8
               FROM pg_replication_slots s
               LEFT JOIN pg_stat_replication r ON r.pid = s.active_pid
              WHERE s.slot_name = $1",
            &[&slot],
        )
        .await?;
    Ok(row.map(|row| SlotLag {
        slot_name: row.get(0),
        active: row.get(1),
        active_pid: row.get(2),
        wal_status: row.get(3),
        safe_wal_size: row.get(4),
        lag_bytes: row.get(5),
        retained_bytes: row.get(6),
        confirmed_flush_lsn: row.get(7),
        active_seconds: row.get(8),
        cdc_lag_ms: row.get::<_, bool>(9).then(|| row.get(10)),
    }))
}
