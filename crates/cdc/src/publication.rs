//! The publication and the slot: created when missing, reused when present, dropped on
//! request; and the checks that turn a silent misconfiguration into an error saying what
//! to run.

use tokio_postgres::Client;

use crate::replication::{quote_identifier, ReplicationConnection, ReplicationError};

#[derive(Debug, thiserror::Error)]
pub enum SetupError {
    #[error("{context}: {source}")]
    Postgres {
        context: String,
        #[source]
        source: tokio_postgres::Error,
    },
    #[error(transparent)]
    Replication(#[from] ReplicationError),
    #[error("{0}")]
    Unfit(String),
}

fn failed(context: impl Into<String>) -> impl FnOnce(tokio_postgres::Error) -> SetupError {
    let context = context.into();
    move |source| SetupError::Postgres { context, source }
}

/// A table name as given on the command line: `schema.table` or `table` (public).
pub fn qualified_table(name: &str) -> String {
    match name.split_once('.') {
        Some((schema, table)) => {
            format!("{}.{}", quote_identifier(schema), quote_identifier(table))
        }
        None => format!("{}.{}", quote_identifier("public"), quote_identifier(name)),
    }
}

pub async fn check_wal_level(client: &Client) -> Result<(), SetupError> {
    let wal_level: String = client
        .query_one("SHOW wal_level", &[])
        .await
        .map_err(failed("cannot read wal_level"))?
        .get(0);
    if wal_level != "logical" {
        return Err(SetupError::Unfit(format!(
            "wal_level is {wal_level}: set wal_level = logical (ALTER SYSTEM SET wal_level = logical) and restart Postgres"
        )));
    }
    Ok(())
}

async fn publication_exists(client: &Client, publication: &str) -> Result<bool, SetupError> {
    Ok(client
        .query_opt(
            "SELECT 1 FROM pg_publication WHERE pubname = $1",
            &[&publication],
        )
        .await
        .map_err(failed("cannot read pg_publication"))?
        .is_some())
}

/// Creates the publication when it does not exist: for `tables`, or for all tables when
/// the list is empty. An existing publication is used as it is, but one that lacks a table
/// of `tables` is refused: streaming less than was asked for, silently, is the one thing cdc
/// must not do.
pub async fn ensure_publication(
    client: &Client,
    publication: &str,
    tables: &[String],
) -> Result<bool, SetupError> {
    if publication_exists(client, publication).await? {
        let missing = missing_tables(client, publication, tables).await?;
        if !missing.is_empty() {
            let list = missing.join(", ");
            return Err(SetupError::Unfit(format!(
                "publication {publication} exists but does not publish {list}, which --tables \
                 asks for: run `walflow cdc drop` and start cdc again to recreate publication and \
                 slot (a new snapshot is taken), or ALTER PUBLICATION {publication} ADD TABLE \
                 {list} to stream their changes from now on without a snapshot"
            )));
        }
        return Ok(false);
    }
    let target = if tables.is_empty() {
        "ALL TABLES".to_owned()
    } else {
        format!(
            "TABLE {}",
            tables
                .iter()
                .map(|table| qualified_table(table))
                .collect::<Vec<_>>()
                .join(", ")
        )
    };
    client
        .batch_execute(&format!(
            "CREATE PUBLICATION {} FOR {target}",
            quote_identifier(publication)
        ))
        .await
        .map_err(failed(format!("cannot create publication {publication}")))?;
    Ok(true)
}

/// The tables the publication publishes, as (schema, table).
pub async fn published_tables(
    client: &Client,
    publication: &str,
) -> Result<Vec<(String, String)>, SetupError> {
    Ok(client
        .query(
            "SELECT schemaname::text, tablename::text FROM pg_publication_tables
              WHERE pubname = $1 ORDER BY 1, 2",
            &[&publication],
        )
        .await
        .map_err(failed("cannot read pg_publication_tables"))?
        .iter()
        .map(|row| (row.get(0), row.get(1)))
        .collect())
}

/// Tables of `tables` the publication does not publish.
async fn missing_tables(
    client: &Client,
    publication: &str,
    tables: &[String],
) -> Result<Vec<String>, SetupError> {
    let mut missing = Vec::new();
    for table in tables {
        let (schema, name) = table.split_once('.').unwrap_or(("public", table));
        let published = client
            .query_opt(
                "SELECT 1 FROM pg_publication_tables
                  WHERE pubname = $1 AND schemaname = $2 AND tablename = $3",
                &[&publication, &schema, &name],
            )
            .await
            .map_err(failed("cannot read pg_publication_tables"))?
            .is_some();
        if !published {
            missing.push(format!("{schema}.{name}"));
        }
    }
    Ok(missing)
}

/// Published tables whose updates and deletes Postgres would refuse to decode: no primary
/// key and REPLICA IDENTITY DEFAULT, or REPLICA IDENTITY NOTHING.
pub async fn check_replica_identities(
    client: &Client,
    publication: &str,
) -> Result<(), SetupError> {
    let rows = client
        .query(
            "SELECT format('%I.%I', t.schemaname, t.tablename), c.relreplident::text
               FROM pg_publication_tables t
               JOIN pg_namespace n ON n.nspname = t.schemaname
               JOIN pg_class c ON c.relnamespace = n.oid AND c.relname = t.tablename
              WHERE t.pubname = $1
                AND (c.relreplident = 'n'
                     OR (c.relreplident = 'd' AND NOT EXISTS (
                         SELECT 1 FROM pg_index i WHERE i.indrelid = c.oid AND i.indisprimary)))",
            &[&publication],
        )
        .await
        .map_err(failed("cannot read the published tables"))?;
    if let Some(row) = rows.first() {
        let table: String = row.get(0);
        return Err(SetupError::Unfit(format!(
            "table {table} has no primary key to identify its rows, so its updates and deletes cannot be \
             captured: add a primary key, or run ALTER TABLE {table} REPLICA IDENTITY FULL"
        )));
    }
    Ok(())
}

/// The slot as Postgres reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SlotState {
    pub active_pid: Option<i32>,
    pub plugin: Option<String>,
    pub database: Option<String>,
    /// `reserved`, `extended`, `unreserved` or `lost`.
    pub wal_status: Option<String>,
}

pub async fn slot_state(client: &Client, slot: &str) -> Result<Option<SlotState>, SetupError> {
    let row = client
        .query_opt(
            "SELECT active_pid, plugin::text, database::text, wal_status FROM pg_replication_slots WHERE slot_name = $1",
            &[&slot],
        )
        .await
        .map_err(failed("cannot read pg_replication_slots"))?;
    Ok(row.map(|row| SlotState {
        active_pid: row.get(0),
        plugin: row.get(1),
        database: row.get(2),
        wal_status: row.get(3),
    }))
}

/// Creates the slot when missing (returns true), or checks that the existing one is a free
/// pgoutput slot of this database.
pub async fn ensure_slot(
    client: &Client,
    connection: &mut ReplicationConnection,
    slot: &str,
    database: &str,
) -> Result<bool, SetupError> {
    match slot_state(client, slot).await? {
        None => {
            connection.create_logical_slot(slot, false).await?;
            Ok(true)
        }
        Some(state) => {
            check_slot_is_ours(slot, &state, database)?;
            if state.wal_status.as_deref() == Some("lost") {
                return Err(SetupError::Unfit(format!(
                    "slot {slot} was invalidated by Postgres (wal_status lost): it fell further behind \
                     than max_slot_wal_keep_size allows and the WAL it still needed is gone, so the \
                     changes since cdc last confirmed cannot be streamed. Run `walflow cdc drop --slot \
                     {slot}` and start cdc again: a new slot is created and the current rows are sent \
                     as a snapshot (op r)"
                )));
            }
            Ok(false)
        }
    }
}

/// A slot walflow may use, or drop and recreate: idle, pgoutput, of this database. Slot
/// names are cluster-wide, so a standby's physical slot or another database's cdc slot can
/// carry the same name; those are never touched.
pub fn check_slot_is_ours(slot: &str, state: &SlotState, database: &str) -> Result<(), SetupError> {
    if let Some(pid) = state.active_pid {
        return Err(SetupError::Unfit(format!(
            "slot {slot} is in use by another connection (pid {pid}): is another walflow cdc running? \
             Stop it, or give this one its own --slot"
        )));
    }
    if state.plugin.as_deref() != Some("pgoutput") {
        return Err(SetupError::Unfit(format!(
            "slot {slot} uses the {} plugin, not pgoutput: it is not walflow's, so it is left alone; choose another --slot",
            state.plugin.clone().unwrap_or_else(|| "physical".into())
        )));
    }
    if state.database.as_deref() != Some(database) {
        return Err(SetupError::Unfit(format!(
            "slot {slot} belongs to database {}, not {database}: it is left alone; choose another --slot",
            state.database.clone().unwrap_or_default()
        )));
    }
    Ok(())
}

/// Drops the slot, after checking it is an idle pgoutput slot of `database`.
pub async fn drop_slot(client: &Client, slot: &str, database: &str) -> Result<(), SetupError> {
    if let Some(state) = slot_state(client, slot).await? {
        check_slot_is_ours(slot, &state, database)?;
    }
    client
        .execute("SELECT pg_drop_replication_slot($1)", &[&slot])
        .await
        .map_err(failed(format!("cannot drop slot {slot}")))?;
    Ok(())
}

/// Drops the slot and the publication (what `walflow cdc drop` does).
pub async fn drop_slot_and_publication(
    client: &Client,
    slot: &str,
    publication: &str,
) -> Result<(bool, bool), SetupError> {
    let database: String = client
        .query_one("SELECT current_database()::text", &[])
        .await
        .map_err(failed("cannot read the current database"))?
        .get(0);
    let slot_dropped = match slot_state(client, slot).await? {
        Some(_) => {
            drop_slot(client, slot, &database).await?;
            true
        }
        None => false,
    };
    crate::snapshot::forget(client, slot).await?;
    let publication_dropped = publication_exists(client, publication).await?;
    if publication_dropped {
        client
            .batch_execute(&format!(
                "DROP PUBLICATION {}",
                quote_identifier(publication)
            ))
            .await
            .map_err(failed(format!("cannot drop publication {publication}")))?;
    }
    Ok((slot_dropped, publication_dropped))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_names_are_quoted_with_their_schema() {
        assert_eq!(qualified_table("users"), "\"public\".\"users\"");
        assert_eq!(qualified_table("sales.Orders"), "\"sales\".\"Orders\"");
    }
}
