//! `walflow migrate`: applies sql/schema/ (see `walflow_ingest::schema`).

use std::process::ExitCode;

use clap::Args;
use walflow_ingest::schema;

use crate::config::{Config, GlobalArgs};
use crate::exit::Failure;

#[derive(Debug, Args)]
#[command(
    long_about = "Applies the Postgres schema of sql/schema/ (compiled into the binary) in order. \
        Each file is applied once, in its own transaction, and recorded in \
        walflow_schema_migrations with a checksum: re-running is safe, and a file changed after \
        it was applied is refused. Concurrent runs wait for each other."
)]
pub struct MigrateArgs {}

pub async fn run(_args: MigrateArgs, global: &GlobalArgs) -> Result<ExitCode, Failure> {
    let config = Config::load(global)?;
    let target = walflow_tls::postgres::PostgresTarget::parse(config.postgres_url.expose())
        .map_err(anyhow::Error::from)?;
    let (mut client, connection) = target.connect().await.map_err(anyhow::Error::from)?;
    let connection = tokio::spawn(connection);
    let report = schema::migrate(&mut client)
        .await
        .map_err(anyhow::Error::new)?;
    drop(client);
    let _ = connection.await;
    println!(
        "migrate: {} applied, {} already there ({} in all)",
        report.applied,
        report.already_applied,
        schema::MIGRATIONS.len()
    );
    Ok(ExitCode::SUCCESS)
}
