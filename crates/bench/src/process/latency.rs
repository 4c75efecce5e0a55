//! `--steady-rate`: Postgres-commit-to-Cassandra latency through cdc and a pipeline.

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use serde::Serialize;
use walflow_stream::definition::PipelineDefinition;
use walflow_stream::runner::{self, Pipeline, ProcessMetrics, ProcessOptions};

use super::*;
use crate::support::{connect, create_scratch_database, drop_scratch_database, Latencies};
use crate::Services;

#[derive(Debug, Serialize)]
pub(super) struct SteadyReport {
    pub(super) rate: u64,
    pub(super) seconds: u64,
    pub(super) samples: usize,
    p50_ms: f64,
    p99_ms: f64,
    pub(super) max_ms: f64,
    /// The first hop alone in the same run: Postgres commit -> Kafka acknowledgement.
    cdc_p99_ms: f64,
}

/// Single-row inserts into a scratch users table at a steady rate, through cdc and the users
/// pipeline (both in this process); each latency runs from the Postgres commit time in the
/// event to the moment Cassandra accepted the batch holding it.
pub(super) async fn steady(
    rate: u64,
    seconds: u64,
    as_json: bool,
    config: &Services,
) -> anyhow::Result<std::process::ExitCode> {
    use walflow_cdc::pipeline::{self as cdc, CdcOptions, SnapshotMode};
    use walflow_cdc::sink::KafkaSink;

    let admin = connect(config.postgres_url.as_str()).await?;
    let database = create_scratch_database(&admin, "walflow_bench_process").await?;
    let keyspace = database.clone();
    let result: anyhow::Result<SteadyReport> = async {
        let url = config.database_url(&database)?;
        let mut client = connect(url.as_str()).await?;
        walflow_ingest::schema::migrate(&mut client).await?;
        let options = CdcOptions {
        avro: None,
            postgres_url: url.to_string(),
            slot: format!("{database}_walflow"),
            publication: format!("{database}_pub"),
            tables: vec!["public.users".to_owned()],
            topic_prefix: database.clone(),
            tombstones: true,
            status_interval: Duration::from_millis(100),
            receive_timeout: walflow_cdc::pipeline::RECEIVE_TIMEOUT,
            snapshot: SnapshotMode::Never,
            stop_at: None,
            snapshot_progress: None,
        };
        let (stop_sender, stop) = tokio::sync::watch::channel(false);
        let sink = KafkaSink::new(&config.kafka)?;
        let cdc_task = tokio::spawn(async move { cdc::run(&options, sink, stop.clone()).await });
        let slot = format!("{database}_walflow");
        for _ in 0..200 {
            let active: Option<bool> = client
                .query_opt("SELECT active FROM pg_replication_slots WHERE slot_name = $1", &[&slot])
                .await?
                .map(|row| row.get(0));
            if active == Some(true) {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        // One row first so the topic exists when the pipeline starts.
        let insert = client
            .prepare(
                "INSERT INTO users (id, first_name, last_name, email, username, country, dob, registered_at) \
                 VALUES (gen_random_uuid(), 'Ada', 'Lovelace', 'ada@example.com', 'ada', 'France', \
                 '1990-01-01', '2020-01-01')",
            )
            .await?;
        client.execute(&insert, &[]).await?;

        let path = Path::new("sql/pipelines/users.sql");
        let text = std::fs::read_to_string(path)
            .context("cannot read sql/pipelines/users.sql (run bench from the repository)")?
            .replace("'walflow.public.users'", &format!("'{database}.public.users'"))
            .replace("keyspace = 'walflow'", &format!("keyspace = '{keyspace}'"));
        let definition = PipelineDefinition::parse(path, &text)?;
        let queries = walflow_stream::plan::compile(&definition).await?;
        let pipeline = Pipeline { definition, queries };
        let mut process_options = ProcessOptions::new(config.kafka.clone(), config.cassandra_nodes.clone());
        process_options.checkpoint_dir = std::env::temp_dir().join(format!("{database}_checkpoints"));
        process_options.batch_max_wait = Duration::from_millis(5);
        let metrics = Arc::new(ProcessMetrics::default());
        let process_metrics = metrics.clone();
        let (process_stop_sender, process_stop) = tokio::sync::watch::channel(false);
        let process_task = tokio::spawn(async move {
            runner::run(&pipeline, &process_options, process_metrics, process_stop).await
        });
        // Let the pipeline connect and catch up with the first row before measuring.
        let deadline = Instant::now() + Duration::from_secs(60);
        while metrics.latencies_ms().is_empty() && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let warmup = metrics.latencies_ms().len();
        let mut ticker = tokio::time::interval(Duration::from_secs_f64(1.0 / rate.max(1) as f64));
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        for _ in 0..rate * seconds {
            ticker.tick().await;
            client.execute(&insert, &[]).await?;
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
        let _ = process_stop_sender.send(true);
        let _ = stop_sender.send(true);
        process_task.await??;
        let cdc_summary = cdc_task.await??;
        let cdc_p99_ms = Latencies::of(cdc_summary.latencies_us).percentile(0.99) as f64 / 1000.0;
        let _ = std::fs::remove_dir_all(std::env::temp_dir().join(format!("{database}_checkpoints")));
        let latencies = Latencies::of(metrics.latencies_ms().into_iter().skip(warmup));
        Ok(SteadyReport {
            rate,
            seconds,
            samples: latencies.len(),
            p50_ms: latencies.percentile(0.50) as f64,
            p99_ms: latencies.percentile(0.99) as f64,
            max_ms: latencies.max() as f64,
            cdc_p99_ms,
        })
    }
    .await;
    cleanup(
        config,
        &[walflow_wire::topic::topic_name(&database, "public", "users").as_str()],
        &[keyspace.as_str()],
    )
    .await;
    drop_scratch_database(&admin, &database).await?;
    let report = result?;
    if as_json {
        println!("{}", serde_json::to_string(&report)?);
    } else {
        println!(
            "bench process --steady-rate {}: {} changes over {} s, Postgres commit -> Cassandra: p50 {:.0} ms, p99 {:.0} ms, max {:.0} ms (of which cdc, commit -> Kafka ack: p99 {:.1} ms)",
            report.rate, report.samples, report.seconds, report.p50_ms, report.p99_ms, report.max_ms, report.cdc_p99_ms
        );
    }
    Ok(std::process::ExitCode::SUCCESS)
}
