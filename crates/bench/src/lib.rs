//! `walflow bench`: speed measured as a ratio to a baseline run in the same process, on the
//! same machine, so the figure means something anywhere. The harness is a crate of its own:
//! the product's crates know nothing of it, and the percentiles it reports are computed here
//! (hdrhistogram) from samples the benchmark keeps.
//!
//! - [`ingest`]: users/s from the fake API into Postgres beside a psql COPY;
//! - [`cdc`]: rows/s from Postgres's WAL to Kafka beside pg_recvlogical, and latency;
//! - [`process`]: events/s of the shipped pipelines beside consume+decode and direct
//!   Cassandra writes, and commit-to-Cassandra latency.

pub mod cdc;
pub mod ingest;
pub mod process;
mod support;

use std::process::ExitCode;

use clap::{Args, Subcommand};

/// The services a benchmark reaches, as walflow's configuration names them.
#[derive(Debug, Clone)]
pub struct Services {
    pub postgres_url: String,
    /// Kafka's brokers and the librdkafka properties every client gets.
    pub kafka: walflow_tls::kafka::KafkaConnection,
    pub cassandra_nodes: Vec<String>,
    pub schema_registry_url: Option<String>,
}

impl Services {
    /// The Postgres URL pointed at `database` (a benchmark's scratch database).
    pub(crate) fn database_url(&self, database: &str) -> anyhow::Result<url::Url> {
        use anyhow::Context;
        let mut url = url::Url::parse(&self.postgres_url)
            .context("the Postgres URL must be a URL for bench")?;
        url.set_path(&format!("/{database}"));
        Ok(url)
    }
}

#[derive(Debug, Args)]
pub struct BenchArgs {
    #[command(subcommand)]
    target: BenchTarget,
}

#[derive(Debug, Subcommand)]
enum BenchTarget {
    /// Users/s from the fake API into Postgres, beside a plain psql COPY of the same rows
    #[command(
        long_about = "Runs `walflow ingest` from an in-process fake API into a scratch \
        database (created and dropped on the configured Postgres), then loads the very same \
        rows with psql's \\copy from a CSV file into the empty table: the baseline. Reports the \
        median users/s of each over --rounds rounds and their ratio.\n\n\
        Goals: at least 20,000 users/s and at least 0.5 of the COPY baseline."
    )]
    Ingest(ingest::IngestBenchArgs),
    /// Rows/s draining a WAL backlog from Postgres to Kafka, beside pg_recvlogical
    #[command(long_about = "Writes a backlog of --rows rows (in transactions of \
        --rows-per-transaction) into a scratch database with two pgoutput slots, then drains it \
        twice: with pg_recvlogical into /dev/null (Postgres's own client, the decoding ceiling) \
        and with walflow cdc into Kafka up to the last acknowledgement. Reports rows/s of each, \
        their ratio, and walflow's peak RSS.\n\n\
        Goals: at least 0.8 of pg_recvlogical and at least 50,000 rows/s; peak RSS under 64 MB.")]
    Cdc(cdc::CdcBenchArgs),
    /// Events/s of the shipped pipelines draining a backlog, beside consume+decode and direct
    /// Cassandra writes
    #[command(
        long_about = "Produces a backlog of --events change events (inserts, updates, \
        deletes with tombstones, in the envelope walflow cdc writes) about --users users into a \
        scratch topic, then for each shipped pipeline of sql/pipelines/ (users, \
        users_by_country, users_by_region and the three windowed ones, or those --pipelines \
        names) measures, in the same run: consuming and decoding the topic with no processing (the ceiling), the \
        pipeline draining it into a scratch keyspace, and writing as many rows as the pipeline \
        wrote to Cassandra with the driver directly. With --steady-rate: single-row \
        transactions through cdc and the users pipeline, and the Postgres-commit-to-Cassandra \
        latency.\n\n\
        Goals: aggregate pipelines at least 0.7 of consume+decode and at least 100,000 \
        events/s; the mirror at least 0.8 of direct Cassandra writes; p99 under 100 ms at \
        1,000 changes/s."
    )]
    Process(process::ProcessBenchArgs),
}

/// Runs the benchmark `args` names against `services`.
pub async fn run(args: BenchArgs, services: &Services) -> anyhow::Result<ExitCode> {
    match args.target {
        BenchTarget::Ingest(args) => ingest::bench_ingest(args, services).await,
        BenchTarget::Cdc(args) => cdc::bench_cdc(args, services).await,
        BenchTarget::Process(args) => process::bench_process(args, services).await,
    }
}
