//! `walflow process`: runs pipeline files (sql/pipelines/*.sql) from Kafka into Cassandra.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use clap::Args;
use walflow_stream::runner::{self, Pipeline, ProcessMetrics, ProcessOptions};

use crate::config::{Config, GlobalArgs};
use crate::exit::Failure;

#[derive(Debug, Args)]
#[command(
    long_about = "Run streaming SQL pipelines over walflow cdc's change topics, keeping Cassandra \
        tables equal to their queries.\n\n\
        Each pipeline file declares Kafka sources (CREATE TABLE ... WITH (connector = 'kafka', \
        topic = ...)), Cassandra sinks (CREATE TABLE ... WITH (connector = 'cassandra', keyspace \
        = ...)) and INSERT INTO sink SELECT ... queries (docs/sql.md). A source is an updating \
        table: inserts add rows, deletes remove them, updates do both, and every result is kept \
        exact (GROUP BY included). Sink keyspaces and tables are created when missing.\n\n\
        Kafka offsets and operator state are checkpointed together (--checkpoint-dir); after a \
        crash the pipeline resumes from its checkpoint and the tables converge with nothing \
        counted twice. Events that cannot be decoded go to <dead-letter-prefix>.<pipeline> with \
        the reason in the walflow.error header. Ctrl-C or SIGTERM finishes the batch, writes a \
        checkpoint and stops.",
    after_help = "Examples:\n  walflow process\n  walflow process sql/pipelines/users_by_country.sql\n  walflow process --rebuild sql/pipelines/users.sql"
)]
pub struct ProcessArgs {
    /// Pipeline files to run [default: every .sql file of --pipelines-dir]
    #[arg(value_name = "FILE")]
    files: Vec<PathBuf>,

    /// Where the pipeline files are when none are named
    #[arg(
        long,
        env = "WALFLOW_PIPELINES_DIR",
        default_value = "sql/pipelines",
        value_name = "DIR"
    )]
    pipelines_dir: PathBuf,

    /// Where checkpoints are kept, one file per pipeline
    #[arg(
        long,
        env = "WALFLOW_CHECKPOINT_DIR",
        default_value = ".walflow/checkpoints",
        value_name = "DIR"
    )]
    checkpoint_dir: PathBuf,

    /// How often offsets and state are checkpointed, in milliseconds
    #[arg(long, default_value_t = 5000, value_name = "MS")]
    checkpoint_interval_ms: u64,

    /// Most events per micro-batch
    #[arg(long, default_value_t = 10_000, value_name = "N")]
    batch_max_events: usize,

    /// Longest a micro-batch waits for events, in milliseconds (latency under light load)
    #[arg(long, default_value_t = 50, value_name = "MS")]
    batch_max_wait_ms: u64,

    /// Dead-letter topics are <PREFIX>.<pipeline>
    #[arg(long, default_value = walflow_wire::topic::PROCESS_DEAD_LETTER_PREFIX, value_name = "PREFIX")]
    dead_letter_prefix: String,

    /// Events too late for their window (windowed queries) go to <PREFIX>.<pipeline>
    #[arg(long, default_value = walflow_wire::topic::PROCESS_LATE_PREFIX, value_name = "PREFIX")]
    late_events_prefix: String,

    /// Forget the checkpoint, empty the sink tables and rebuild them from the start of the
    /// topics (needed after changing a pipeline file). Refused when retention has deleted
    /// the first records of a topic (docs/operations.md)
    #[arg(long)]
    rebuild: bool,

    /// Rebuild only when the checkpoint does not fit (the file changed since it was taken, or
    /// it is from another walflow version); otherwise resume. For the demo and containers
    /// that should come back up on their own after an upgrade
    #[arg(long, conflicts_with = "rebuild")]
    rebuild_if_changed: bool,

    /// The replication of the sink keyspaces process creates, as CQL's replication map (an
    /// existing keyspace is left as it is). The default keeps one copy: on a cluster, give
    /// for example "{'class': 'NetworkTopologyStrategy', 'dc1': 3}", or create the keyspace
    /// yourself
    #[arg(
        long,
        default_value = walflow_stream::sink::DEFAULT_KEYSPACE_REPLICATION,
        value_name = "MAP",
        value_parser = parse_replication
    )]
    cassandra_replication: String,

    /// Serve Prometheus metrics on this address (for example 127.0.0.1:9188) at /metrics
    #[arg(long, value_name = "ADDR")]
    metrics_listen: Option<std::net::SocketAddr>,

    /// Stop once every partition is read up to where it ended at start
    #[arg(long)]
    until_caught_up: bool,
}

pub async fn run(args: ProcessArgs, global: &GlobalArgs) -> Result<ExitCode, Failure> {
    let config = Config::load(global)?;
    let files = if args.files.is_empty() {
        default_pipelines(&args.pipelines_dir).map_err(Failure::Usage)?
    } else {
        args.files.clone()
    };
    let mut pipelines = Vec::new();
    for file in &files {
        // A broken file is a usage error (exit 2) naming file:line:col.
        let pipeline = Pipeline::load(file)
            .await
            .map_err(|error| Failure::Usage(error.into()))?;
        // A pipeline is named after its file: two files of one name would share a
        // checkpoint, a consumer group and a dead-letter topic.
        if let Some(earlier) = pipelines
            .iter()
            .position(|other: &Pipeline| other.definition.name == pipeline.definition.name)
        {
            return Err(Failure::Usage(anyhow::anyhow!(
                "{} and {} are both pipeline {}: pipelines are named after their files and \
                 keep their checkpoints, consumer groups and dead letters by that name; \
                 rename one of the files",
                files[earlier].display(),
                file.display(),
                pipeline.definition.name
            )));
        }
        pipelines.push(pipeline);
    }
    let signal = super::stop_on_signal("stopping: finishing the batch and writing checkpoints");
    // One stop for every pipeline, raised by a signal or by the first pipeline that fails: a
    // dead pipeline must not leave the process up with its tables silently frozen.
    let (stop_sender, stop) = tokio::sync::watch::channel(false);
    let stop_sender = Arc::new(stop_sender);
    {
        let stop_sender = stop_sender.clone();
        let mut signal = signal;
        tokio::spawn(async move {
            if signal.wait_for(|stopping| *stopping).await.is_ok() {
                let _ = stop_sender.send(true);
            }
        });
    }

    let mut tasks = tokio::task::JoinSet::new();
    let mut registry = super::metrics_endpoint::registry();
    for pipeline in pipelines {
        let mut options = ProcessOptions::new(config.kafka.clone(), config.cassandra_nodes.clone());
        options.checkpoint_dir = args.checkpoint_dir.clone();
        options.checkpoint_interval = Duration::from_millis(args.checkpoint_interval_ms.max(10));
        options.batch_max_events = args.batch_max_events.max(1);
        options.cassandra_replication = args.cassandra_replication.clone();
        options.batch_max_wait = Duration::from_millis(args.batch_max_wait_ms.max(1));
        options.dead_letter_topic = Some(walflow_wire::topic::pipeline_topic(
            &args.dead_letter_prefix,
            &pipeline.definition.name,
        ));
        options.late_topic = Some(walflow_wire::topic::pipeline_topic(
            &args.late_events_prefix,
            &pipeline.definition.name,
        ));
        options.schema_registry_url = config
            .schema_registry_url
            .as_ref()
            .map(|url| url.expose().to_owned());
        options.rebuild = args.rebuild;
        options.rebuild_if_changed = args.rebuild_if_changed;
        options.stop_when_caught_up = args.until_caught_up;
        let metrics = Arc::new(ProcessMetrics::default());
        let windowed = pipeline
            .definition
            .sources
            .iter()
            .any(|source| source.watermark.is_some());
        metrics.register(&mut registry, &pipeline.definition.name, windowed);
        let reporter = tokio::spawn(report_progress(
            pipeline.definition.name.clone(),
            metrics.clone(),
        ));
        let stop = stop.clone();
        let name = pipeline.definition.name.clone();
        tasks.spawn(async move {
            let result = runner::run(&pipeline, &options, metrics, stop).await;
            reporter.abort();
            result.map_err(|error| match error {
                // Already names its pipeline.
                runner::ProcessError::Pipeline { .. } => anyhow::Error::new(error),
                other => anyhow::Error::new(other).context(format!("pipeline {name}")),
            })
        });
    }
    if let Some(listen) = args.metrics_listen {
        super::metrics_endpoint::serve(listen, registry)
            .await
            .map_err(Failure::Runtime)?;
    }
    let mut failure = None;
    while let Some(joined) = tasks.join_next().await {
        match joined {
            Ok(Ok(_)) => {}
            Ok(Err(error)) => {
                tracing::error!(
                    error = format!("{error:#}"),
                    "a pipeline failed: stopping the others (they write their checkpoints)"
                );
                let _ = stop_sender.send(true);
                failure.get_or_insert(error);
            }
            Err(error) => {
                tracing::error!(%error, "a pipeline task failed: stopping the others");
                let _ = stop_sender.send(true);
                failure.get_or_insert(anyhow::anyhow!("a pipeline task failed: {error}"));
            }
        }
    }
    match failure {
        Some(error) => Err(Failure::Runtime(error)),
        None => Ok(ExitCode::SUCCESS),
    }
}

pub(crate) fn default_pipelines(directory: &std::path::Path) -> anyhow::Result<Vec<PathBuf>> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(directory)
        .map_err(|error| {
            anyhow::anyhow!(
                "cannot list {}: {error}; name the pipeline files to run, or their directory with --pipelines-dir (WALFLOW_PIPELINES_DIR)",
                directory.display()
            )
        })?
        .filter_map(|entry| entry.ok().map(|entry| entry.path()))
        .filter(|path| path.extension().is_some_and(|extension| extension == "sql"))
        .collect();
    files.sort();
    if files.is_empty() {
        anyhow::bail!("{} holds no .sql pipeline files", directory.display());
    }
    Ok(files)
}

/// Progress per pipeline: on a terminal a status line refreshed every second (events/s,
/// commit-to-Cassandra lag, consumer lag, checkpoint age); otherwise a log line every 10 s.
async fn report_progress(pipeline: String, metrics: Arc<ProcessMetrics>) {
    use std::io::IsTerminal;
    let terminal = std::io::stderr().is_terminal();
    let period = if terminal { 1 } else { 10 };
    let status = terminal.then(|| {
        let bar = indicatif::ProgressBar::new_spinner();
        bar.set_style(
            indicatif::ProgressStyle::with_template("{spinner} {prefix}: {msg}")
                .unwrap_or_else(|_| indicatif::ProgressStyle::default_spinner()),
        );
        bar.set_prefix(pipeline.clone());
        bar
    });
    let mut ticker = tokio::time::interval(Duration::from_secs(period));
    ticker.tick().await;
    let mut previous_events = 0;
    loop {
        ticker.tick().await;
        let now_ms = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|elapsed| elapsed.as_millis() as u64)
            .unwrap_or_default();
        let events = metrics.events.get();
        let events_per_s = (events - previous_events) / period;
        previous_events = events;
        let written_commit = walflow_stream::metrics::unix_ms_of(&metrics.written_commit_time);
        let lag_ms = (written_commit > 0).then(|| now_ms.saturating_sub(written_commit));
        let checkpoint = walflow_stream::metrics::unix_ms_of(&metrics.last_checkpoint);
        let checkpoint_age_ms = (checkpoint > 0).then(|| now_ms.saturating_sub(checkpoint));
        let rows_written = metrics.rows_written.get();
        let dead_letters = metrics.dead_letters.get();
        let consumer_lag = metrics.consumer_lag.get();
        match &status {
            Some(bar) => {
                let millis =
                    |value: Option<u64>| value.map_or("-".to_owned(), |ms| format!("{ms} ms"));
                bar.set_message(format!(
                    "{events} events ({events_per_s}/s), {rows_written} rows written, {dead_letters} dead letters, lag {}, {consumer_lag} events behind, {}",
                    millis(lag_ms),
                    checkpoint_age_ms.map_or("no checkpoint yet".to_owned(), |ms| format!("checkpoint {ms} ms ago"))
                ));
                bar.tick();
            }
            None => tracing::info!(
                %pipeline,
                events,
                events_per_s,
                rows_written,
                dead_letters,
                consumer_lag,
                commit_to_cassandra_lag_ms = lag_ms,
                checkpoint_age_ms,
                "progress"
            ),
        }
    }
}

/// A CQL replication map: `{...}` naming its class (Cassandra checks the rest).
fn parse_replication(text: &str) -> Result<String, String> {
    let trimmed = text.trim();
    if trimmed.starts_with('{') && trimmed.ends_with('}') && trimmed.contains("'class'") {
        Ok(trimmed.to_owned())
    } else {
        Err(format!(
            "'{text}' is not a CQL replication map; for example \
             \"{{'class': 'NetworkTopologyStrategy', 'dc1': 3}}\""
        ))
    }
}
