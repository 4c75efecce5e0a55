//! `walflow cdc`: Postgres's committed changes to Kafka, through a pgoutput slot.

use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use clap::{Args, Subcommand, ValueEnum};
use walflow_cdc::pipeline::{self, CdcOptions, SnapshotMode, SnapshotProgressHook};
use walflow_cdc::publication;
use walflow_cdc::sink::{EventSink, KafkaSettings, KafkaSink, StdoutSink};

use crate::config::{Config, GlobalArgs};
use crate::exit::Failure;

#[derive(Debug, Args)]
#[command(
    long_about = "Reads every committed change from Postgres's write-ahead log through a logical \
        replication slot (the built-in pgoutput plugin) and publishes it to Kafka as a \
        Debezium-compatible event: topic <prefix>.<schema>.<table>, key = the primary key, value = \
        {before, after, source, op, ts_ms}; a tombstone follows each delete (docs/events.md). \
        JSON by default; with --format avro, Avro in the Confluent wire format, each table's \
        schemas registered in the schema registry (checked against its compatibility rule \
        first: a breaking change stops cdc before the event, naming the column).\n\n\
        The publication and the slot are created when missing and reused when present; the slot's \
        position is confirmed to Postgres only up to the newest transaction Kafka has fully \
        acknowledged, so a crash never loses a committed change (some may be sent twice after a \
        restart). Ctrl-C or SIGTERM stops after draining what was sent.\n\n\
        When the slot is created, the rows that already exist are copied first through the \
        snapshot the slot exports (op \"r\" events), then the stream starts where the snapshot \
        ends: no gap, no overlap. A snapshot cut short by a crash is taken again at the next \
        start (progress is kept in the table walflow_cdc_snapshot of the source database).",
    after_help = "Examples:\n  walflow cdc --tables public.users,public.countries\n  walflow cdc --sink stdout\n  walflow cdc --format avro --schema-registry-url http://127.0.0.1:8081/apis/ccompat/v7\n  walflow cdc drop"
)]
pub struct CdcArgs {
    #[command(subcommand)]
    action: Option<CdcAction>,

    /// Replication slot to read (created when missing)
    #[arg(long, env = "WALFLOW_SLOT", default_value = "walflow", global = true)]
    slot: String,

    /// Publication naming the captured tables (created when missing)
    #[arg(long, default_value = "walflow", global = true)]
    publication: String,

    /// Tables of a new publication, comma-separated schema.table; all tables when empty.
    /// An existing publication must already publish them
    #[arg(long, value_delimiter = ',', value_name = "LIST")]
    tables: Vec<String>,

    /// Serve Prometheus metrics on this address (for example 127.0.0.1:9187) at /metrics
    #[arg(long, value_name = "ADDR")]
    metrics_listen: Option<std::net::SocketAddr>,

    /// Topic prefix, and the `source.name` of events
    #[arg(long, default_value = "walflow")]
    topic_prefix: String,

    /// Where events go
    #[arg(long, value_enum, default_value_t = SinkKind::Kafka)]
    sink: SinkKind,

    /// No tombstone after deletes
    #[arg(long)]
    no_tombstones: bool,

    /// Event encoding: Debezium JSON, or Avro in the Confluent wire format with schemas in the
    /// schema registry (WALFLOW_SCHEMA_REGISTRY_URL / --schema-registry-url)
    #[arg(long, value_enum, default_value_t = FormatArg::Json)]
    format: FormatArg,

    /// With --format avro: register a schema the registry's compatibility rule refuses
    /// (the subject's rule is set to NONE) instead of stopping
    #[arg(long)]
    allow_incompatible_schemas: bool,

    /// When to copy the existing rows first (op "r" events): when the slot is created
    /// (initial), never, or at every start (always)
    #[arg(long, value_enum, default_value_t = SnapshotArg::Initial)]
    snapshot: SnapshotArg,

    /// How often the acknowledged position is confirmed to Postgres, in milliseconds
    #[arg(long, default_value_t = 1000, value_name = "MS")]
    status_interval_ms: u64,

    /// Silence from Postgres, in seconds, after which the replication link is taken for dead
    /// (a half-open connection behind a NAT or firewall) and a new session resumes from the
    /// slot; a status update asking for a reply goes out at half of it. As a standby's
    /// wal_receiver_timeout
    #[arg(long, default_value_t = 60, value_name = "SECS", value_parser = clap::value_parser!(u64).range(2..=86_400))]
    replication_timeout: u64,

    /// How long Kafka may refuse an event before cdc starts a new producer and resends from
    /// the slot's confirmed position (it keeps doing so, with growing pauses, while Kafka is
    /// down), in seconds
    #[arg(long, default_value_t = 300, value_name = "SECS")]
    kafka_message_timeout: u64,

    /// Largest event (key and value) sent to Kafka, in bytes. A larger one never stops cdc:
    /// a record naming its table, key, position and size goes to the dead-letter topic in
    /// its place. Raise it together with the topics' max.message.bytes
    #[arg(long, default_value_t = 1_000_000, value_name = "BYTES", value_parser = clap::value_parser!(u64).range(1024..=1_000_000_000))]
    kafka_max_message_bytes: u64,

    /// Where records of events too large for Kafka go [default: <topic-prefix>.dead_letters]
    #[arg(long, value_name = "TOPIC")]
    dead_letter_topic: Option<String>,
}

#[derive(Debug, Subcommand)]
enum CdcAction {
    /// Drop the slot and the publication (Postgres stops retaining WAL for walflow)
    Drop,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum SnapshotArg {
    /// When the slot is created, and again when an earlier snapshot was cut short
    Initial,
    /// Never: changes from the slot's creation on only
    Never,
    /// At every start: the slot first streams its changes up to a new snapshot (deletes
    /// included), then the full copy, then the stream
    Always,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum FormatArg {
    Json,
    Avro,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum SinkKind {
    Kafka,
    /// One JSON object per event on stdout, for debugging
    Stdout,
}

pub async fn run(args: CdcArgs, global: &GlobalArgs) -> Result<ExitCode, Failure> {
    let config = Config::load(global)?;
    if let Some(CdcAction::Drop) = args.action {
        return drop_slot(&args, &config).await;
    }
    let avro = match args.format {
        FormatArg::Json => None,
        FormatArg::Avro => {
            if args.sink == SinkKind::Stdout {
                return Err(Failure::Usage(anyhow::anyhow!(
                    "--format avro writes binary events for Kafka; use --sink kafka, or --format json to look at events on stdout"
                )));
            }
            let url = config.schema_registry_url.as_ref().ok_or_else(|| {
                Failure::Usage(anyhow::anyhow!(
                    "--format avro needs a schema registry: set WALFLOW_SCHEMA_REGISTRY_URL or \
                     --schema-registry-url (scripts/services env prints the local one)"
                ))
            })?;
            Some(pipeline::AvroOptions {
                registry_url: url.expose().to_owned(),
                allow_incompatible: args.allow_incompatible_schemas,
            })
        }
    };
    let options = CdcOptions {
        avro,
        postgres_url: config.postgres_url.expose().to_owned(),
        slot: args.slot.clone(),
        publication: args.publication.clone(),
        tables: args.tables.clone(),
        topic_prefix: args.topic_prefix.clone(),
        tombstones: !args.no_tombstones,
        status_interval: Duration::from_millis(args.status_interval_ms.max(10)),
        receive_timeout: Duration::from_secs(args.replication_timeout),
        snapshot: match args.snapshot {
            SnapshotArg::Initial => SnapshotMode::Initial,
            SnapshotArg::Never => SnapshotMode::Never,
            SnapshotArg::Always => SnapshotMode::Always,
        },
        stop_at: None,
        snapshot_progress: snapshot_progress_bars(),
    };
    match args.sink {
        SinkKind::Kafka => {
            let mut settings = KafkaSettings::new(&config.kafka);
            settings.message_timeout = Duration::from_secs(args.kafka_message_timeout.max(1));
            settings.max_message_bytes = args.kafka_max_message_bytes as usize;
            settings.dead_letter_topic = dead_letter_topic(&args);
            let sink = KafkaSink::with(settings).context("cannot create the Kafka producer")?;
            stream_to(sink, &options, &args).await
        }
        SinkKind::Stdout => stream_to(StdoutSink::new(), &options, &args).await,
    }
}

/// Runs cdc into `sink`, with the metrics endpoint and progress lines.
async fn stream_to(
    sink: impl EventSink,
    options: &CdcOptions,
    args: &CdcArgs,
) -> Result<ExitCode, Failure> {
    let stop = super::stop_on_signal("stopping: draining what was sent");
    let metrics = sink.metrics().clone();
    if let Some(listen) = args.metrics_listen {
        let mut registry = super::metrics_endpoint::registry();
        metrics.register(&mut registry, &args.slot);
        super::metrics_endpoint::serve(listen, registry)
            .await
            .map_err(Failure::Runtime)?;
    }
    let reporter = tokio::spawn(report_progress(metrics));
    let result = pipeline::run(options, sink, stop).await;
    reporter.abort();
    result.map_err(|error| Failure::Runtime(error.into()))?;
    Ok(ExitCode::SUCCESS)
}

/// A log line every 10 seconds: what was sent, what Kafka acknowledged, how far behind
/// Postgres's commits the acknowledgements are.
async fn report_progress(metrics: Arc<walflow_cdc::metrics::CdcMetrics>) {
    let mut ticker = tokio::time::interval(Duration::from_secs(10));
    ticker.tick().await;
    let mut previous = metrics.snapshot();
    loop {
        ticker.tick().await;
        let now = metrics.snapshot();
        if now == previous {
            continue;
        }
        let now_us = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|elapsed| elapsed.as_micros() as u64)
            .unwrap_or_default();
        let acked_lag_ms = (now.acked_commit_time_us > 0)
            .then(|| now_us.saturating_sub(now.acked_commit_time_us) / 1000);
        tracing::info!(
            events = now.events,
            events_per_s = (now.events - previous.events) / 10,
            bytes = now.bytes,
            acked_transactions = now.acked_transactions,
            acked_lsn = %walflow_pgoutput::Lsn(now.acked_lsn),
            acked_lag_ms,
            delivery_failures = now.delivery_failures,
            dead_letters = now.dead_letters,
            reconnects = now.reconnects,
            "progress"
        );
        previous = now;
    }
}

/// One progress bar per table while the initial snapshot copies it, on a terminal only.
fn snapshot_progress_bars() -> Option<SnapshotProgressHook> {
    use std::io::IsTerminal;
    if !std::io::stderr().is_terminal() {
        return None;
    }
    let bars = indicatif::MultiProgress::new();
    let open: std::sync::Mutex<std::collections::HashMap<String, indicatif::ProgressBar>> =
        Default::default();
    let style = indicatif::ProgressStyle::with_template(
        "{prefix} [{elapsed_precise}] {wide_bar} {pos}/~{len} rows ({per_sec})",
    )
    .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar());
    let hook = move |table: &str, rows: u64, estimated_rows: u64, done: bool| {
        let mut open = open.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        let bar = open.entry(table.to_owned()).or_insert_with(|| {
            let bar = bars.add(indicatif::ProgressBar::new(estimated_rows.max(1)));
            bar.set_style(style.clone());
            bar.set_prefix(format!("snapshot {table}"));
            bar
        });
        bar.set_length(estimated_rows.max(rows).max(1));
        bar.set_position(rows);
        if done {
            bar.finish();
        }
    };
    Some(SnapshotProgressHook(Arc::new(hook)))
}

async fn drop_slot(args: &CdcArgs, config: &Config) -> Result<ExitCode, Failure> {
    let client = walflow_tls::postgres::connect(config.postgres_url.expose(), "cdc drop")
        .await
        .map_err(anyhow::Error::from)?;
    let (slot, publication) =
        publication::drop_slot_and_publication(&client, &args.slot, &args.publication)
            .await
            .map_err(|error| Failure::Runtime(error.into()))?;
    let said = |dropped: bool| if dropped { "dropped" } else { "not there" };
    println!(
        "cdc drop: slot {} {}, publication {} {}",
        args.slot,
        said(slot),
        args.publication,
        said(publication)
    );
    Ok(ExitCode::SUCCESS)
}

/// `--dead-letter-topic`, or `<topic-prefix>.dead_letters`.
fn dead_letter_topic(args: &CdcArgs) -> String {
    args.dead_letter_topic
        .clone()
        .unwrap_or_else(|| walflow_wire::topic::cdc_dead_letters(&args.topic_prefix))
}
