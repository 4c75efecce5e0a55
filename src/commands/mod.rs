//! One module per subcommand.

mod bench;
mod cdc;
mod dashboard;
mod doctor;
mod fake_api;
mod ingest;
mod lag;
mod metrics_endpoint;
mod migrate;
mod process;
mod sql;

use std::process::ExitCode;

use clap::Subcommand;

use crate::config::GlobalArgs;
use crate::exit::Failure;

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Check that Postgres, Kafka and Cassandra are reachable and fit for walflow
    Doctor(doctor::DoctorArgs),
    /// Apply the Postgres schema in sql/schema/ (ordered, recorded, safe to re-run)
    Migrate(migrate::MigrateArgs),
    /// Fetch users from a randomuser-compatible API into Postgres
    Ingest(ingest::IngestArgs),
    /// Serve a randomuser-compatible API locally, with faults to inject
    FakeApi(fake_api::FakeApiArgs),
    /// Stream every committed change from Postgres to Kafka (Debezium-compatible events)
    Cdc(cdc::CdcArgs),
    /// Run streaming SQL pipelines (sql/pipelines/*.sql) from Kafka into Cassandra
    Process(process::ProcessArgs),
    /// Check, explain and test pipeline SQL files without Kafka or Cassandra
    Sql(sql::SqlArgs),
    /// Show how far behind each hop is (slot, Kafka, processing); exit 3 past a threshold
    Lag(lag::LagArgs),
    /// Serve a live page of the pipeline: every hop's lag and throughput (loopback by default)
    Dashboard(dashboard::DashboardArgs),
    /// Measure speed against a baseline in the same run (see docs/benchmarks.md)
    Bench(walflow_bench::BenchArgs),
}

impl Command {
    /// The log filter when neither `--log-level` nor `RUST_LOG` says otherwise. doctor
    /// reports every failure in its table, so the drivers' own retries would only be noise.
    pub fn default_log_filter(&self) -> &'static str {
        match self {
            Command::Doctor(_) | Command::Lag(_) => "error,scylla=off,rdkafka=off",
            Command::Sql(_) => "warn",
            // Its readings report what cannot be read; the drivers' retries are noise.
            Command::Dashboard(_) => "info,scylla=off,rdkafka=off",
            _ => "info",
        }
    }
}

/// A receiver that turns true at the first Ctrl-C or SIGTERM, after logging `message`: the
/// long-running commands stop cleanly on it.
pub(crate) fn stop_on_signal(message: &'static str) -> tokio::sync::watch::Receiver<bool> {
    let (stop_sender, stop) = tokio::sync::watch::channel(false);
    tokio::spawn(async move {
        let Ok(mut terminate) =
            tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        else {
            return;
        };
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = terminate.recv() => {}
        }
        tracing::info!("{message}");
        let _ = stop_sender.send(true);
    });
    stop
}

pub async fn run(command: Command, global: &GlobalArgs) -> Result<ExitCode, Failure> {
    match command {
        Command::Doctor(args) => doctor::run(args, global).await,
        Command::Migrate(args) => migrate::run(args, global).await,
        Command::Ingest(args) => ingest::run(args, global).await,
        Command::FakeApi(args) => fake_api::run(args).await,
        Command::Bench(args) => bench::run(args, global).await,
        Command::Cdc(args) => cdc::run(args, global).await,
        Command::Process(args) => process::run(args, global).await,
        Command::Lag(args) => lag::run(args, global).await,
        Command::Sql(args) => sql::run(args).await,
        Command::Dashboard(args) => dashboard::run(args, global).await,
    }
}
