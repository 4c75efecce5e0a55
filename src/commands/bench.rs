//! `walflow bench`: speed measured as a ratio to a baseline run in the same process, on the
//! same machine, so the figure means something anywhere.

use std::process::{Command, ExitCode};
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use clap::{Args, Subcommand};
use serde::Serialize;
use tokio_postgres::{Client, NoTls};
use walflow_ingest::fake_api::{self, Faults};
use walflow_ingest::retry::RetryPolicy;
use walflow_ingest::run::{self as ingest_run, IngestOptions};
use walflow_ingest::schema;

use crate::config::{Config, GlobalArgs};
use crate::exit::Failure;

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
    Ingest(IngestBenchArgs),
    /// Rows/s draining a WAL backlog from Postgres to Kafka, beside pg_recvlogical
    #[command(long_about = "Writes a backlog of --rows rows (in transactions of \
        --rows-per-transaction) into a scratch database with two pgoutput slots, then drains it \
        twice: with pg_recvlogical into /dev/null (Postgres's own client, the decoding ceiling) \
        and with walflow cdc into Kafka up to the last acknowledgement. Reports rows/s of each, \
        their ratio, and walflow's peak RSS.\n\n\
        Goals: at least 0.8 of pg_recvlogical and at least 50,000 rows/s; peak RSS under 64 MB.")]
    Cdc(CdcBenchArgs),
    /// Events/s of the shipped pipelines draining a backlog, beside consume+decode and direct
    /// Cassandra writes
    #[command(
        long_about = "Produces a backlog of --events change events (inserts, updates,         deletes with tombstones, in the envelope walflow cdc writes) about --users users into a         scratch topic, then for each shipped pipeline (sql/pipelines/users.sql and         users_by_country.sql) measures, in the same run: consuming and decoding the topic with no         processing (the ceiling), the pipeline draining it into a scratch keyspace, and writing as         many rows as the pipeline wrote to Cassandra with the driver directly. With         --steady-rate: single-row transactions through cdc and the users pipeline, and the         Postgres-commit-to-Cassandra latency.\n\n        Goals: aggregate pipelines at least 0.7 of consume+decode and at least 100,000 events/s;         the mirror at least 0.8 of direct Cassandra writes; p99 under 100 ms at 1,000 changes/s."
    )]
    Process(super::bench_process::ProcessBenchArgs),
}

#[derive(Debug, Args)]
struct CdcBenchArgs {
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

#[derive(Debug, Args)]
struct IngestBenchArgs {
    /// Users per round
    #[arg(long, default_value_t = 200_000)]
    users: u64,

    /// Rounds of each; medians are reported
    #[arg(long, default_value_t = 3)]
    rounds: u32,

    /// Users per request and per transaction
    #[arg(long, default_value_t = 5000)]
    batch_size: u32,

    /// Print one JSON object
    #[arg(long)]
    json: bool,
}

#[derive(Debug, Serialize)]
struct IngestBenchReport {
    users: u64,
    rounds: u32,
    ingest_users_per_second: f64,
    copy_users_per_second: f64,
    ratio_to_copy: f64,
    ingest_seconds: Vec<f64>,
    copy_seconds: Vec<f64>,
    goal_users_per_second: f64,
    goal_ratio: f64,
    goals_met: bool,
}

const GOAL_USERS_PER_SECOND: f64 = 20_000.0;
const GOAL_RATIO: f64 = 0.5;

pub async fn run(args: BenchArgs, global: &GlobalArgs) -> Result<ExitCode, Failure> {
    let config = Config::load(global)?;
    match args.target {
        BenchTarget::Ingest(args) => bench_ingest(args, &config).await.map_err(Failure::Runtime),
        BenchTarget::Cdc(args) => bench_cdc(args, &config).await.map_err(Failure::Runtime),
        BenchTarget::Process(args) => super::bench_process::bench_process(args, &config)
            .await
            .map_err(Failure::Runtime),
    }
}

async fn bench_ingest(args: IngestBenchArgs, config: &Config) -> anyhow::Result<ExitCode> {
    which_psql()?;
    let admin = connect(config.postgres_url.expose()).await?;
    let database = create_scratch_database(&admin, "walflow_bench").await?;
    let outcome = bench_in_database(&args, config, &database).await;
    drop_scratch_database(&admin, &database).await?;
    let report = outcome?;
    if args.json {
        println!("{}", serde_json::to_string(&report)?);
    } else {
        println!(
            "bench ingest: {} users x {} rounds (median)\n  walflow ingest: {:>9.0} users/s\n  psql COPY:      {:>9.0} users/s\n  ratio:          {:>9.2}\n  goals (>= {:.0} users/s, >= {:.1} of COPY): {}",
            report.users,
            report.rounds,
            report.ingest_users_per_second,
            report.copy_users_per_second,
            report.ratio_to_copy,
            GOAL_USERS_PER_SECOND,
            GOAL_RATIO,
            if report.goals_met { "met" } else { "MISSED" },
        );
    }
    Ok(ExitCode::SUCCESS)
}

async fn bench_in_database(
    args: &IngestBenchArgs,
    config: &Config,
    database: &str,
) -> anyhow::Result<IngestBenchReport> {
    let mut url = url::Url::parse(config.postgres_url.expose())
        .context("the Postgres URL must be a URL for bench")?;
    url.set_path(&format!("/{database}"));
    let mut client = connect(url.as_str()).await?;
    schema::migrate(&mut client).await?;

    let (api_address, server) =
        fake_api::bind("127.0.0.1:0".parse()?, Faults::default(), 1).await?;
    let server = tokio::spawn(server);
    let options = IngestOptions {
        postgres_url: url.to_string(),
        source: format!("http://{api_address}/api/"),
        count: args.users,
        seed: Some("bench".to_owned()),
        nat: None,
        batch_size: args.batch_size,
        churn: 0.0,
        retry: RetryPolicy::default(),
        request_timeout: Duration::from_secs(60),
        max_requests_per_second: None,
    };
    let csv = tempfile_path("walflow-bench-users.csv");
    let columns =
        "id, gender, title, first_name, last_name, street_number, street_name, city, state, \
                   country, postcode, latitude, longitude, timezone_offset, timezone_name, email, \
                   username, dob, registered_at, phone, cell, picture_large, picture_medium, \
                   picture_thumbnail, nat";
    let mut ingest_seconds = Vec::new();
    let mut copy_seconds = Vec::new();
    for round in 1..=args.rounds.max(1) {
        client.batch_execute("TRUNCATE users").await?;
        let summary = ingest_run::run(&options, Arc::new(AtomicBool::new(false)), &|_| {})
            .await
            .map_err(|failure| anyhow::anyhow!("{}", failure.error))?;
        if summary.inserted != args.users {
            bail!(
                "round {round}: ingest inserted {} of {} users",
                summary.inserted,
                args.users
            );
        }
        ingest_seconds.push(summary.seconds);
        if round == 1 {
            psql(
                url.as_str(),
                &format!(
                    "\\copy (SELECT {columns} FROM users) TO '{}' CSV",
                    csv.display()
                ),
            )?;
        }
        client.batch_execute("TRUNCATE users").await?;
        let started = Instant::now();
        psql(
            url.as_str(),
            &format!("\\copy users ({columns}) FROM '{}' CSV", csv.display()),
        )?;
        copy_seconds.push(started.elapsed().as_secs_f64());
        tracing::info!(
            round,
            ingest_s = summary.seconds,
            copy_s = copy_seconds[copy_seconds.len() - 1],
            "round done"
        );
    }
    server.abort();
    let _ = std::fs::remove_file(&csv);
    let ingest_users_per_second = args.users as f64 / median(&ingest_seconds);
    let copy_users_per_second = args.users as f64 / median(&copy_seconds);
    let ratio_to_copy = ingest_users_per_second / copy_users_per_second;
    Ok(IngestBenchReport {
        users: args.users,
        rounds: args.rounds.max(1),
        ingest_users_per_second,
        copy_users_per_second,
        ratio_to_copy,
        ingest_seconds,
        copy_seconds,
        goal_users_per_second: GOAL_USERS_PER_SECOND,
        goal_ratio: GOAL_RATIO,
        goals_met: ingest_users_per_second >= GOAL_USERS_PER_SECOND && ratio_to_copy >= GOAL_RATIO,
    })
}

async fn bench_cdc(args: CdcBenchArgs, config: &Config) -> anyhow::Result<ExitCode> {
    which_psql()?;
    let admin = connect(config.postgres_url.expose()).await?;
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
    config: &Config,
    database: &str,
) -> anyhow::Result<CdcBenchReport> {
    use walflow_cdc::pipeline::{self, CdcOptions, SnapshotMode};
    use walflow_cdc::sink::{self, EventSink, KafkaSink};

    let mut url = url::Url::parse(config.postgres_url.expose())
        .context("the Postgres URL must be a URL for bench")?;
    url.set_path(&format!("/{database}"));
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
    let sink = KafkaSink::new(&config.kafka_brokers)?;
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
                    registry_url: registry.expose().to_owned(),
                    allow_incompatible: false,
                }),
                slot: avro_slot.clone(),
                topic_prefix: format!("{topic_prefix}_avro"),
                ..options.clone()
            };
            let sink = KafkaSink::new(&config.kafka_brokers)?;
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
            if let Err(error) = sink::delete_topics(&config.kafka_brokers, &[&topic]).await {
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
    if let Err(error) = sink::delete_topics(&config.kafka_brokers, &[&topic]).await {
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
    config: &Config,
    database: &str,
) -> anyhow::Result<LatencyReport> {
    use walflow_cdc::pipeline::{self, CdcOptions, SnapshotMode};
    use walflow_cdc::sink::{self, KafkaSink};

    let mut url = url::Url::parse(config.postgres_url.expose())
        .context("the Postgres URL must be a URL for bench")?;
    url.set_path(&format!("/{database}"));
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
    let sink = KafkaSink::new(&config.kafka_brokers)?;
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
        &config.kafka_brokers,
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
    let mut latencies = summary.latencies_us;
    latencies.sort_unstable();
    let percentile = |share: f64| percentile(&latencies, share) as f64 / 1000.0;
    Ok(LatencyReport {
        rate,
        seconds,
        samples: latencies.len(),
        p50_ms: percentile(0.50),
        p99_ms: percentile(0.99),
        max_ms: latencies.last().copied().unwrap_or(0) as f64 / 1000.0,
        peak_rss_mb: peak_rss_mb(),
    })
}

/// The value below which `share` of the sorted `samples` lie (0 when there are none).
pub(super) fn percentile(sorted_samples: &[u64], share: f64) -> u64 {
    let index = ((sorted_samples.len() as f64 * share) as usize)
        .min(sorted_samples.len().saturating_sub(1));
    sorted_samples.get(index).copied().unwrap_or(0)
}

/// The process's peak resident set (VmHWM), in MB.
pub(super) fn peak_rss_mb() -> f64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|status| {
            status
                .lines()
                .find(|line| line.starts_with("VmHWM:"))
                .and_then(|line| line.split_whitespace().nth(1))
                .and_then(|kilobytes| kilobytes.parse::<f64>().ok())
        })
        .map(|kilobytes| kilobytes / 1024.0)
        .unwrap_or(f64::NAN)
}

/// A database of its own for one benchmark run, named after `prefix` and this process.
pub(super) async fn create_scratch_database(
    admin: &Client,
    prefix: &str,
) -> anyhow::Result<String> {
    let database = format!("{prefix}_{}", std::process::id());
    admin
        .batch_execute(&format!("CREATE DATABASE {database}"))
        .await
        .with_context(|| {
            format!("cannot create the scratch database {database} (walflow's role needs CREATEDB)")
        })?;
    Ok(database)
}

/// Drops a scratch database, and first its replication slots, which would keep it (ending
/// the connections that still hold them).
pub(super) async fn drop_scratch_database(admin: &Client, database: &str) -> anyhow::Result<()> {
    for _ in 0..100 {
        let active: i64 = admin
            .query_one(
                "SELECT count(pg_terminate_backend(active_pid)) FROM pg_replication_slots WHERE database = $1 AND active",
                &[&database],
            )
            .await?
            .get(0);
        if active == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    admin
        .execute(
            "SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots WHERE database = $1 AND NOT active",
            &[&database],
        )
        .await
        .with_context(|| format!("cannot drop the slots of {database}"))?;
    admin
        .batch_execute(&format!("DROP DATABASE IF EXISTS {database} WITH (FORCE)"))
        .await
        .with_context(|| format!("cannot drop the scratch database {database}"))?;
    Ok(())
}

pub(super) async fn connect(url: &str) -> anyhow::Result<Client> {
    let (client, connection) = tokio_postgres::connect(url, NoTls).await.with_context(|| {
        format!(
            "cannot connect to Postgres at {}",
            walflow_redact::postgres(url)
        )
    })?;
    tokio::spawn(connection);
    Ok(client)
}

fn which_psql() -> anyhow::Result<()> {
    match Command::new("psql").arg("--version").output() {
        Ok(output) if output.status.success() => Ok(()),
        _ => bail!("psql is needed for the COPY baseline: install postgresql-client"),
    }
}

/// Runs one psql meta-command. The password goes through PGPASSWORD, not the command line.
fn psql(url: &str, command: &str) -> anyhow::Result<()> {
    let mut parsed = url::Url::parse(url)?;
    let password = parsed.password().map(str::to_owned);
    let _ = parsed.set_password(None);
    let mut psql = Command::new("psql");
    psql.args([
        "-v",
        "ON_ERROR_STOP=1",
        "-q",
        "-X",
        "-d",
        parsed.as_str(),
        "-c",
        command,
    ]);
    if let Some(password) = password {
        psql.env("PGPASSWORD", password);
    }
    let output = psql.output().context("cannot run psql")?;
    if !output.status.success() {
        bail!(
            "psql {command:?} failed: {}",
            String::from_utf8_lossy(&output.stderr).trim()
        );
    }
    Ok(())
}

fn tempfile_path(name: &str) -> std::path::PathBuf {
    std::env::temp_dir().join(format!("{}-{name}", std::process::id()))
}

fn median(values: &[f64]) -> f64 {
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    sorted[sorted.len() / 2]
}
