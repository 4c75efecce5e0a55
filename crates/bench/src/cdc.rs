//! `walflow bench cdc`: rows/s from the WAL to Kafka beside pg_recvlogical, and the
//! commit-to-acknowledgement latency at a steady rate.

use std::process::{Command, ExitCode};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use clap::Args;
use serde::Serialize;

use crate::support::*;
use crate::Services;

#[derive(Debug, Args)]
pub struct CdcBenchArgs {
    /// Rows in the backlog
    #[arg(long, default_value_t = 1_000_000)]
    rows: u64,

    /// Rows per transaction
    #[arg(long, default_value_t = 1000)]
    rows_per_transaction: u64,

    /// Instead of a backlog: commit single-row transactions at this steady rate while cdc
    /// streams, and report commit-to-acknowledgement latency percentiles
    #[arg(long, value_name = "ROWS_PER_SECOND")]
    steady_rate: Option<u64>,

    /// How long the steady run lasts
    #[arg(long, default_value_t = 10, value_name = "SECONDS")]
    steady_seconds: u64,

    /// Print one JSON object
    #[arg(long)]
    json: bool,
}

#[derive(Debug, Serialize)]
struct CdcBenchReport {
    rows: u64,
    rows_per_transaction: u64,
    walflow_rows_per_second: f64,
    pg_recvlogical_rows_per_second: f64,
    ratio_to_pg_recvlogical: f64,
    walflow_seconds: f64,
    pg_recvlogical_seconds: f64,
    walflow_events: u64,
    /// Key and value bytes per event in Kafka.
    json_bytes_per_event: f64,
    /// The same backlog as Avro (with a schema registry configured).
    avro: Option<AvroCdcFigures>,
    peak_rss_mb: f64,
}

#[derive(Debug, Serialize)]
struct AvroCdcFigures {
    rows_per_second: f64,
    seconds: f64,
    bytes_per_event: f64,
    ratio_to_json: f64,
}

pub(crate) async fn bench_cdc(args: CdcBenchArgs, config: &Services) -> anyhow::Result<ExitCode> {
    which_psql()?;
    let admin = connect(config.postgres_url.as_str()).await?;
    let database = create_scratch_database(&admin, "walflow_bench_cdc").await?;
    if let Some(rate) = args.steady_rate {
        let outcome = bench_cdc_latency(rate, args.steady_seconds, config, &database).await;
        drop_scratch_database(&admin, &database).await?;
        let report = outcome?;
        if args.json {
            println!("{}", serde_json::to_string(&report)?);
        } else {
            println!(
                "bench cdc latency: {} rows/s for {} s ({} transactions acknowledged)\n  commit to Kafka acknowledgement: p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms\n  goal (p99 < 20 ms): {}",
                report.rate, report.seconds, report.samples, report.p50_ms, report.p99_ms, report.max_ms,
                if report.p99_ms < 20.0 { "met" } else { "MISSED" },
            );
        }
        return Ok(ExitCode::SUCCESS);
    }
    let outcome = bench_cdc_in_database(&args, config, &database).await;
    drop_scratch_database(&admin, &database).await?;
    let report = outcome?;
    if args.json {
        println!("{}", serde_json::to_string(&report)?);
    } else {
        println!(
            "bench cdc: {} rows in transactions of {}\n  walflow cdc -> Kafka: {:>9.0} rows/s ({:.2} s, {} events)\n  pg_recvlogical:       {:>9.0} rows/s ({:.2} s)\n  ratio:                {:>9.2}\n  peak RSS:             {:>9.1} MB\n  goals (>= 0.8 of pg_recvlogical, >= 50,000 rows/s, < 64 MB): {}",
            report.rows,
            report.rows_per_transaction,
            report.walflow_rows_per_second,
            report.walflow_seconds,
            report.walflow_events,
            report.pg_recvlogical_rows_per_second,
            report.pg_recvlogical_seconds,
            report.ratio_to_pg_recvlogical,
            report.peak_rss_mb,
            if report.ratio_to_pg_recvlogical >= 0.8 && report.walflow_rows_per_second >= 50_000.0 && report.peak_rss_mb < 64.0 {
                "met"
            } else {
                "MISSED"
            },
        );
        match &report.avro {
            Some(avro) => println!(
                "  JSON: {:.0} bytes per event\n  Avro (--format avro): {:>9.0} rows/s ({:.2} s, {:.2} of JSON's speed), {:.0} bytes per event ({:.2} of JSON's size)",
                report.json_bytes_per_event,
                avro.rows_per_second,
                avro.seconds,
                avro.ratio_to_json,
                avro.bytes_per_event,
                avro.bytes_per_event / report.json_bytes_per_event.max(1.0),
            ),
            None => println!(
                "  JSON: {:.0} bytes per event (no schema registry configured: Avro not measured)",
                report.json_bytes_per_event
            ),
        }
    }
    Ok(ExitCode::SUCCESS)
}

async fn bench_cdc_in_database(
    args: &CdcBenchArgs,
    config: &Services,
    database: &str,
) -> anyhow::Result<CdcBenchReport> {
    use walflow_cdc::pipeline::{self, CdcOptions, SnapshotMode};
    use walflow_cdc::sink::{self, EventSink, KafkaSink};

    let url = config.database_url(database)?;
    let client = connect(url.as_str()).await?;
    let walflow_slot = format!("{database}_walflow");
    let baseline_slot = format!("{database}_recvlogical");
    let avro_slot = format!("{database}_avro");
    client
        .batch_execute(
            "CREATE TABLE bench_rows (id bigint PRIMARY KEY, payload text NOT NULL, amount numeric NOT NULL, \
             created_at timestamptz NOT NULL DEFAULT now()); CREATE PUBLICATION walflow_bench FOR TABLE bench_rows",
        )
        .await?;
    for slot in [&walflow_slot, &baseline_slot, &avro_slot] {
        client
            .execute(
                "SELECT pg_create_logical_replication_slot($1, 'pgoutput')",
                &[slot],
            )
            .await?;
    }
    let per_transaction = args.rows_per_transaction.max(1);
    let transactions = args.rows.div_ceil(per_transaction);
    let started = Instant::now();
    // Separate statements: a DO block may COMMIT only outside a multi-statement batch.
    client.batch_execute("SET synchronous_commit = off").await?;
    client
        .batch_execute(&format!(
            "DO $$ BEGIN FOR t IN 0..{last} LOOP
                 INSERT INTO bench_rows SELECT g, md5(g::text), g / 100.0
                   FROM generate_series(t::bigint * {per_transaction} + 1, least((t::bigint + 1) * {per_transaction}, {rows})) g;
                 COMMIT;
             END LOOP; END $$;",
            last = transactions - 1,
            rows = args.rows,
        ))
        .await?;
    // The insert position: with asynchronous commit the write position can lag behind it.
    let end: String = client
        .query_one("SELECT pg_current_wal_insert_lsn()::text", &[])
        .await?
        .get(0);
    tracing::info!(rows = args.rows, seconds = started.elapsed().as_secs_f64(), end_lsn = %end, "backlog written");

    // walflow first: it reads the WAL cold and the baseline finds it cached, so the ratio errs
    // against walflow.
    let topic_prefix = database.to_owned();
    let options = CdcOptions {
        avro: None,
        postgres_url: url.to_string(),
        slot: walflow_slot,
        publication: "walflow_bench".to_owned(),
        tables: Vec::new(),
        topic_prefix: topic_prefix.clone(),
        tombstones: true,
        status_interval: Duration::from_secs(1),
        receive_timeout: pipeline::RECEIVE_TIMEOUT,
        snapshot: SnapshotMode::Never,
        stop_at: Some(end.parse().map_err(|error| anyhow::anyhow!("{error}"))?),
        snapshot_progress: None,
    };
    let sink = KafkaSink::new(&config.kafka)?;
    let json_metrics = sink.metrics().clone();
    let (_stop_sender, stop) = tokio::sync::watch::channel(false);
    let started = Instant::now();
    let summary = pipeline::run(&options, sink, stop).await?;
    let walflow_seconds = started.elapsed().as_secs_f64();
    let json_bytes_per_event =
        json_metrics.snapshot().bytes as f64 / json_metrics.snapshot().events.max(1) as f64;

    // The same backlog again, as Avro through the schema registry, on a slot of its own.
    let avro = match &config.schema_registry_url {
        Some(registry) => {
            let avro_options = CdcOptions {
                avro: Some(pipeline::AvroOptions {
                    registry_url: registry.as_str().to_owned(),
                    allow_incompatible: false,
                }),
                slot: avro_slot.clone(),
                topic_prefix: format!("{topic_prefix}_avro"),
                ..options.clone()
            };
            let sink = KafkaSink::new(&config.kafka)?;
            let metrics = sink.metrics().clone();
            let (_stop_sender, stop) = tokio::sync::watch::channel(false);
            let started = Instant::now();
            let avro_summary = pipeline::run(&avro_options, sink, stop).await?;
            let seconds = started.elapsed().as_secs_f64();
            if avro_summary.events != args.rows {
                bail!(
                    "walflow cdc --format avro sent {} events for {} rows",
                    avro_summary.events,
                    args.rows
                );
            }
            let bytes_per_event =
                metrics.snapshot().bytes as f64 / metrics.snapshot().events.max(1) as f64;
            let topic = walflow_wire::topic::topic_name(
                &format!("{topic_prefix}_avro"),
                "public",
                "bench_rows",
            );
            if let Err(error) = sink::delete_topics(&config.kafka, &[&topic]).await {
                tracing::warn!(%topic, %error, "could not delete the benchmark topic");
            }
            Some(AvroCdcFigures {
                rows_per_second: args.rows as f64 / seconds,
                seconds,
                bytes_per_event,
                ratio_to_json: walflow_seconds / seconds,
            })
        }
        None => {
            client
                .execute("SELECT pg_drop_replication_slot($1)", &[&avro_slot])
                .await?;
            None
        }
    };
    if summary.events != args.rows {
        bail!(
            "walflow cdc sent {} events for {} rows",
            summary.events,
            args.rows
        );
    }
    if summary.confirmed_lsn < end.parse().map_err(|error| anyhow::anyhow!("{error}"))? {
        bail!(
            "walflow cdc stopped with {} acknowledged, short of {end}",
            summary.confirmed_lsn
        );
    }
    // The ceiling: Postgres's own client decoding the same WAL into /dev/null.
    let mut baseline_url = url.clone();
    let password = baseline_url.password().map(str::to_owned);
    let _ = baseline_url.set_password(None);
    let mut recvlogical = Command::new("pg_recvlogical");
    recvlogical
        .args([
            "-d",
            baseline_url.as_str(),
            "--slot",
            &baseline_slot,
            "--start",
            "--no-loop",
            "-f",
            "/dev/null",
        ])
        .args([
            "-o",
            "proto_version=1",
            "-o",
            "publication_names=walflow_bench",
            "-E",
            &end,
        ]);
    if let Some(password) = &password {
        recvlogical.env("PGPASSWORD", password);
    }
    let started = Instant::now();
    let output = tokio::task::spawn_blocking(move || recvlogical.output())
        .await?
        .context("cannot run pg_recvlogical (postgresql-client)")?;
    let pg_recvlogical_seconds = started.elapsed().as_secs_f64();
    if !output.status.success() {
        bail!(
            "pg_recvlogical failed: {}",
            String::from_utf8_lossy(&output.stderr).trim()
        );
    }

    let topic = walflow_wire::topic::topic_name(&topic_prefix, "public", "bench_rows");
    if let Err(error) = sink::delete_topics(&config.kafka, &[&topic]).await {
        tracing::warn!(%topic, %error, "could not delete the benchmark topic");
    }
    let rows = args.rows as f64;
    Ok(CdcBenchReport {
        rows: args.rows,
        rows_per_transaction: per_transaction,
        walflow_rows_per_second: rows / walflow_seconds,
        pg_recvlogical_rows_per_second: rows / pg_recvlogical_seconds,
        ratio_to_pg_recvlogical: pg_recvlogical_seconds / walflow_seconds,
        walflow_seconds,
        pg_recvlogical_seconds,
        walflow_events: summary.events,
        json_bytes_per_event,
        avro,
        peak_rss_mb: peak_rss_mb(),
    })
}

#[derive(Debug, Serialize)]
struct LatencyReport {
    rate: u64,
    seconds: u64,
    samples: usize,
    p50_ms: f64,
    p99_ms: f64,
    max_ms: f64,
    peak_rss_mb: f64,
}

/// Single-row transactions at a steady rate while cdc streams them to Kafka; the latency of
/// each is from its commit time in Postgres to the moment Kafka acknowledged it.
async fn bench_cdc_latency(
    rate: u64,
    seconds: u64,
    config: &Services,
    database: &str,
) -> anyhow::Result<LatencyReport> {
    use walflow_cdc::pipeline::{self, CdcOptions, SnapshotMode};
    use walflow_cdc::sink::{self, KafkaSink};

    let url = config.database_url(database)?;
    let client = connect(url.as_str()).await?;
    client
        .batch_execute(
            "CREATE TABLE bench_rows (id bigint PRIMARY KEY, payload text NOT NULL); \
             CREATE PUBLICATION walflow_bench FOR TABLE bench_rows",
        )
        .await?;
    let options = CdcOptions {
        avro: None,
        postgres_url: url.to_string(),
        slot: format!("{database}_walflow"),
        publication: "walflow_bench".to_owned(),
        tables: Vec::new(),
        topic_prefix: database.to_owned(),
        tombstones: true,
        status_interval: Duration::from_millis(100),
        receive_timeout: pipeline::RECEIVE_TIMEOUT,
        snapshot: SnapshotMode::Never,
        stop_at: None,
        snapshot_progress: None,
    };
    let (stop_sender, stop) = tokio::sync::watch::channel(false);
    let sink = KafkaSink::new(&config.kafka)?;
    let cdc = tokio::spawn(async move { pipeline::run(&options, sink, stop).await });
    // Give cdc time to create its slot: rows committed before it are not streamed.
    let slot = format!("{database}_walflow");
    for _ in 0..200 {
        let active: Option<bool> = client
            .query_opt(
                "SELECT active FROM pg_replication_slots WHERE slot_name = $1",
                &[&slot],
            )
            .await?
            .map(|row| row.get(0));
        if active == Some(true) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let insert = client
        .prepare("INSERT INTO bench_rows VALUES ($1, md5($1::bigint::text))")
        .await?;
    let mut ticker = tokio::time::interval(Duration::from_secs_f64(1.0 / rate.max(1) as f64));
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let total = rate * seconds;
    for id in 0..total as i64 {
        ticker.tick().await;
        client.execute(&insert, &[&id]).await?;
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let _ = stop_sender.send(true);
    let summary = cdc.await??;
    if let Err(error) = sink::delete_topics(
        &config.kafka,
        &[&walflow_wire::topic::topic_name(
            database,
            "public",
            "bench_rows",
        )],
    )
    .await
    {
        tracing::warn!(%error, "could not delete the benchmark topic");
    }
    let latencies = Latencies::of(summary.latencies_us);
    let percentile = |share: f64| latencies.percentile(share) as f64 / 1000.0;
    Ok(LatencyReport {
        rate,
        seconds,
        samples: latencies.len(),
        p50_ms: percentile(0.50),
        p99_ms: percentile(0.99),
        max_ms: latencies.max() as f64 / 1000.0,
        peak_rss_mb: peak_rss_mb(),
    })
}
