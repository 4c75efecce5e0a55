//! The Postgres schema in sql/schema/, applied in order, each file once and in its own
//! transaction, and recorded with a checksum so a file edited after it was applied is
//! caught instead of silently skipped.

use sha2::{Digest, Sha256};
use tokio_postgres::Client;

/// Compiled into the binary so that `walflow migrate` works wherever the binary is (a
/// container, Airflow's worker) without the source tree beside it. A unit test keeps this
/// list equal to the files in sql/schema/.
pub const MIGRATIONS: &[Migration] = &[
    Migration {
        file: "0001_users.sql",
        sql: include_str!("../../../sql/schema/0001_users.sql"),
    },
    Migration {
        file: "0002_countries.sql",
        sql: include_str!("../../../sql/schema/0002_countries.sql"),
    },
];

/// Serialises concurrent migrations (the bytes of "walflow").
const MIGRATION_LOCK_KEY: i64 = 0x0077_616c_666c_6f77;

#[derive(Debug, Clone, Copy)]
pub struct Migration {
    pub file: &'static str,
    pub sql: &'static str,
}

impl Migration {
    fn checksum(&self) -> String {
        Sha256::digest(self.sql.as_bytes())
            .iter()
            .map(|byte| format!("{byte:02x}"))
            .collect()
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MigrationReport {
    pub applied: usize,
    pub already_applied: usize,
}

#[derive(Debug, thiserror::Error)]
pub enum MigrateError {
    #[error("{context}: {source}")]
    Postgres {
        context: String,
        #[source]
        source: tokio_postgres::Error,
    },
    #[error(
        "sql/schema/{file} was changed after it was applied to this database (recorded checksum \
         {recorded}, the file has {current}); put the change in a new file instead"
    )]
    Edited {
        file: &'static str,
        recorded: String,
        current: String,
    },
}

fn failed(context: impl Into<String>) -> impl FnOnce(tokio_postgres::Error) -> MigrateError {
    let context = context.into();
    move |source| MigrateError::Postgres { context, source }
}

/// Applies what is not applied yet. Holds a session-level advisory lock throughout, taken
/// before the bookkeeping table exists: two concurrent `CREATE TABLE IF NOT EXISTS` can
/// still collide. The lock is released at the end.
pub async fn migrate(client: &mut Client) -> Result<MigrationReport, MigrateError> {
    client
        .execute("SELECT pg_advisory_lock($1)", &[&MIGRATION_LOCK_KEY])
        .await
        .map_err(failed("cannot take the migration lock"))?;
    let outcome = apply_all(client).await;
    client
        .execute("SELECT pg_advisory_unlock($1)", &[&MIGRATION_LOCK_KEY])
        .await
        .map_err(failed("cannot release the migration lock"))?;
    outcome
}

async fn apply_all(client: &mut Client) -> Result<MigrationReport, MigrateError> {
    client
        .batch_execute(
            "CREATE TABLE IF NOT EXISTS walflow_schema_migrations (
                 file       text PRIMARY KEY,
                 checksum   text NOT NULL,
                 applied_at timestamptz NOT NULL DEFAULT now()
             )",
        )
        .await
        .map_err(failed("cannot create walflow_schema_migrations"))?;
    let mut report = MigrationReport {
        applied: 0,
        already_applied: 0,
    };
    for migration in MIGRATIONS {
        let transaction = client
            .transaction()
            .await
            .map_err(failed("cannot begin a transaction"))?;
        let recorded = transaction
            .query_opt(
                "SELECT checksum FROM walflow_schema_migrations WHERE file = $1",
                &[&migration.file],
            )
            .await
            .map_err(failed("cannot read walflow_schema_migrations"))?;
        let current = migration.checksum();
        match recorded {
            Some(row) => {
                let recorded: String = row.get(0);
                if recorded != current {
                    return Err(MigrateError::Edited {
                        file: migration.file,
                        recorded,
                        current,
                    });
                }
                report.already_applied += 1;
            }
            None => {
                transaction
                    .batch_execute(migration.sql)
                    .await
                    .map_err(failed(format!("sql/schema/{} failed", migration.file)))?;
                transaction
                    .execute(
                        "INSERT INTO walflow_schema_migrations (file, checksum) VALUES ($1, $2)",
                        &[&migration.file, &current],
                    )
                    .await
                    .map_err(failed("cannot record the migration"))?;
                tracing::info!(file = migration.file, "applied");
                report.applied += 1;
            }
        }
        transaction.commit().await.map_err(failed(format!(
            "cannot commit sql/schema/{}",
            migration.file
        )))?;
    }
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_schema_file_is_compiled_in_and_in_order() {
        let directory = concat!(env!("CARGO_MANIFEST_DIR"), "/../../sql/schema");
        let mut files: Vec<String> = std::fs::read_dir(directory)
            .unwrap()
            .map(|entry| entry.unwrap().file_name().into_string().unwrap())
            .filter(|name| name.ends_with(".sql"))
            .collect();
        files.sort();
        let compiled: Vec<&str> = MIGRATIONS.iter().map(|migration| migration.file).collect();
        assert_eq!(
            files, compiled,
            "MIGRATIONS must list sql/schema/*.sql in order"
        );
    }
}
