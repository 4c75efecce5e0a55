//! `walflow migrate`: applies sql/schema/*.sql in order, each once, each in its own
//! transaction, and records it with a checksum so a file edited after it was applied is
//! caught instead of silently skipped.

use std::process::ExitCode;

use anyhow::Context;
use clap::Args;
use sha2::{Digest, Sha256};
use tokio_postgres::NoTls;

use crate::config::{Config, GlobalArgs};
use crate::exit::Failure;

/// The schema, compiled into the binary so that `walflow migrate` works wherever the binary
/// is (a container, Airflow's worker) without the source tree beside it. A unit test keeps
/// this list equal to the files in sql/schema/.
pub const MIGRATIONS: &[Migration] = &[Migration {
    file: "0001_users.sql",
    sql: include_str!("../../sql/schema/0001_users.sql"),
}];

/// Serialises concurrent `walflow migrate` runs (an arbitrary but fixed key).
const MIGRATION_LOCK_KEY: i64 = 0x0077_616c_666c_6f77; // "walflow" in ASCII

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

#[derive(Debug, Args)]
pub struct MigrateArgs {}

pub async fn run(_args: MigrateArgs, global: &GlobalArgs) -> Result<ExitCode, Failure> {
    let config = Config::load(global)?;
    let (mut client, connection) = tokio_postgres::connect(config.postgres_url.expose(), NoTls)
        .await
        .with_context(|| format!("cannot connect to Postgres at {}", config.postgres_url))?;
    let connection = tokio::spawn(connection);

    client
        .batch_execute(
            "CREATE TABLE IF NOT EXISTS walflow_schema_migrations (
                 file       text PRIMARY KEY,
                 checksum   text NOT NULL,
                 applied_at timestamptz NOT NULL DEFAULT now()
             )",
        )
        .await
        .context("cannot create walflow_schema_migrations")?;

    let mut applied_count = 0;
    for migration in MIGRATIONS {
        let transaction = client
            .transaction()
            .await
            .context("cannot begin a transaction")?;
        transaction
            .execute("SELECT pg_advisory_xact_lock($1)", &[&MIGRATION_LOCK_KEY])
            .await
            .context("cannot take the migration lock")?;
        let recorded = transaction
            .query_opt(
                "SELECT checksum FROM walflow_schema_migrations WHERE file = $1",
                &[&migration.file],
            )
            .await
            .context("cannot read walflow_schema_migrations")?;
        let checksum = migration.checksum();
        match recorded {
            Some(row) => {
                let recorded_checksum: String = row.get(0);
                if recorded_checksum != checksum {
                    return Err(Failure::Runtime(anyhow::anyhow!(
                        "sql/schema/{} was changed after it was applied to this database \
                         (recorded checksum {recorded_checksum}, file has {checksum}); put the \
                         change in a new file instead",
                        migration.file
                    )));
                }
                tracing::debug!(file = migration.file, "already applied");
            }
            None => {
                transaction
                    .batch_execute(migration.sql)
                    .await
                    .with_context(|| format!("sql/schema/{} failed", migration.file))?;
                transaction
                    .execute(
                        "INSERT INTO walflow_schema_migrations (file, checksum) VALUES ($1, $2)",
                        &[&migration.file, &checksum],
                    )
                    .await
                    .context("cannot record the migration")?;
                tracing::info!(file = migration.file, "applied");
                applied_count += 1;
            }
        }
        transaction
            .commit()
            .await
            .with_context(|| format!("cannot commit sql/schema/{}", migration.file))?;
    }
    drop(client);
    let _ = connection.await;
    println!(
        "migrate: {applied_count} applied, {} already there ({} in all)",
        MIGRATIONS.len() - applied_count,
        MIGRATIONS.len()
    );
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_schema_file_is_compiled_in_and_in_order() {
        let directory = concat!(env!("CARGO_MANIFEST_DIR"), "/sql/schema");
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
