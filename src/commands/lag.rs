//! `walflow lag`: how far behind each hop is, read from Postgres, Kafka and the checkpoints.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, SystemTime};

use clap::Args;
use walflow_observe::lag::{self, CheckpointAge, ConsumerGroup, HopError, LagReport, Thresholds};
use walflow_stream::definition::PipelineDefinition;

use crate::config::{Config, GlobalArgs};
use crate::exit::{Failure, EXIT_UNHEALTHY};

#[derive(Debug, Args)]
#[command(
    long_about = "Shows how far behind each hop of the pipeline is, read from the systems \
        themselves, so it answers while walflow's own processes are down.\n\n\
        postgres slot: bytes between the current WAL position and the slot's confirmed \
        position (what cdc has not yet had acknowledged by Kafka), the WAL the slot keeps on \
        disk, wal_status and safe_wal_size, and whether cdc is attached.\n\
        kafka: per partition of each pipeline's topics, events between the log end and the \
        offset its consumer group (walflow-process-<pipeline>) committed at its last checkpoint.\n\
        cdc: commit -> Kafka, as Postgres measures it (pg_stat_replication.flush_lag; zero when \
        caught up).\n\
        processing: age of each pipeline's last checkpoint.\n\
        end to end: now minus the commit time of the newest change in Cassandra as of the \
        pipeline's checkpoint; zero when nothing waits anywhere.\n\n\
        A slot that is inactive yet retains WAL is warned about on stderr: it grows until \
        Postgres's disk is full. With thresholds, exits 3 when one is exceeded (or the hop \
        cannot be read), naming the hop, so cron and Airflow can alert.",
    after_help = "Examples:\n  walflow lag\n  walflow lag --json\n  walflow lag --watch 2\n  walflow lag --max-lag-bytes 64MB --max-lag-events 100000 --max-lag-seconds 60"
)]
pub struct LagArgs {
    #[command(flatten)]
    sources: LagSources,

    /// Print one JSON object (docs/operations.md describes its fields)
    #[arg(long)]
    json: bool,

    /// Refresh every SECONDS until interrupted
    #[arg(long, value_name = "SECONDS")]
    watch: Option<u64>,

    /// Exit 3 when the slot is further behind than this (bytes; kB, MB, GB accepted)
    #[arg(long, value_name = "SIZE", value_parser = parse_size)]
    max_lag_bytes: Option<u64>,

    /// Exit 3 when cdc (commit -> Kafka) or a pipeline end to end (commit -> Cassandra) is
    /// further behind than this many seconds, or cdc is not attached to the slot
    #[arg(long = "max-lag-seconds", value_name = "SECONDS", value_parser = parse_seconds_as_ms)]
    max_lag_ms: Option<u64>,

    /// Exit 3 when a consumer group is more events behind than this on a partition
    #[arg(long, value_name = "EVENTS")]
    max_lag_events: Option<u64>,

    /// Exit 3 when a pipeline's last checkpoint is older than this many seconds
    #[arg(long = "max-checkpoint-age", value_name = "SECONDS", value_parser = parse_seconds_as_ms)]
    max_checkpoint_age_ms: Option<u64>,
}

/// Where `walflow lag` and `walflow dashboard` read from besides Postgres and Kafka: the
/// slot, the pipeline files (their topics and consumer groups) and the checkpoints.
#[derive(Debug, Args)]
pub struct LagSources {
    /// Replication slot cdc reads
    #[arg(long, env = "WALFLOW_SLOT", default_value = "walflow")]
    pub slot: String,

    /// Pipeline files whose consumer groups to report [default: every .sql file of
    /// --pipelines-dir]
    #[arg(value_name = "FILE")]
    pub pipelines: Vec<PathBuf>,

    /// Where the pipeline files are when none are named
    #[arg(
        long,
        env = "WALFLOW_PIPELINES_DIR",
        default_value = "sql/pipelines",
        value_name = "DIR"
    )]
    pub pipelines_dir: PathBuf,

    /// Where walflow process keeps its checkpoints
    #[arg(
        long,
        env = "WALFLOW_CHECKPOINT_DIR",
        default_value = ".walflow/checkpoints",
        value_name = "DIR"
    )]
    pub checkpoint_dir: PathBuf,
}

impl LagSources {
    /// Each pipeline's name with its consumer group and topics; a broken file is a usage
    /// error naming it.
    pub fn consumer_groups(&self) -> Result<Vec<(String, ConsumerGroup)>, Failure> {
        let files = if self.pipelines.is_empty() {
            super::process::default_pipelines(&self.pipelines_dir).map_err(Failure::Usage)?
        } else {
            self.pipelines.clone()
        };
        let mut groups = Vec::new();
        for file in &files {
            let definition =
                PipelineDefinition::load(file).map_err(|error| Failure::Usage(error.into()))?;
            groups.push((
                definition.name.clone(),
                ConsumerGroup {
                    group: definition.consumer_group(),
                    topics: definition.topics(),
                },
            ));
        }
        Ok(groups)
    }
}

/// `1048576`, `512kB`, `64MB`, `2GB` (powers of 1024).
fn parse_size(text: &str) -> Result<u64, String> {
    let text = text.trim();
    let split = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let number: u64 = number
        .parse()
        .map_err(|_| format!("{text:?} is not a size like 1048576, 512kB or 64MB"))?;
    let factor = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" | "kb" => 1 << 10,
        "m" | "mb" => 1 << 20,
        "g" | "gb" => 1 << 30,
        other => return Err(format!("unknown unit {other:?} (use B, kB, MB or GB)")),
    };
    number.checked_mul(factor).ok_or_else(|| {
        format!(
            "{text:?} is too large: at most {} bytes can be counted",
            u64::MAX
        )
    })
}

/// Whole seconds, returned as milliseconds (what the thresholds compare with).
fn parse_seconds_as_ms(text: &str) -> Result<u64, String> {
    let seconds: u64 = text
        .trim()
        .parse()
        .map_err(|_| format!("{text:?} is not a whole number of seconds"))?;
    seconds.checked_mul(1000).ok_or_else(|| {
        format!(
            "{seconds} seconds is too large: at most {} seconds can be counted in milliseconds",
            u64::MAX / 1000
        )
    })
}

pub async fn run(args: LagArgs, global: &GlobalArgs) -> Result<ExitCode, Failure> {
    let config = Config::load(global)?;
    let groups = args.sources.consumer_groups()?;
    let thresholds = Thresholds {
        max_lag_bytes: args.max_lag_bytes,
        max_lag_ms: args.max_lag_ms,
        max_lag_events: args.max_lag_events,
        max_checkpoint_age_ms: args.max_checkpoint_age_ms,
    };
    loop {
        let report = measure(&config, &args.sources, &groups).await;
        for warning in report.warnings() {
            eprintln!("WARNING: {warning}");
        }
        let breaches = report.breaches(&thresholds);
        if args.json {
            let json = serde_json::json!({ "report": report, "breaches": breaches });
            println!("{json}");
        } else {
            if args.watch.is_some() {
                // Clear the screen and go home, as `watch` does.
                print!("\x1b[2J\x1b[H");
            }
            print!("{}", report.render_table());
        }
        for breach in &breaches {
            eprintln!("LAG {}: {}", breach.hop, breach.message);
        }
        match args.watch {
            Some(seconds) => tokio::time::sleep(Duration::from_secs(seconds.max(1))).await,
            None if breaches.is_empty() => return Ok(ExitCode::SUCCESS),
            None => return Ok(ExitCode::from(EXIT_UNHEALTHY)),
        }
    }
}

/// One reading of every hop; what cannot be read is reported in `errors`, never fatal.
pub async fn measure(
    config: &Config,
    sources: &LagSources,
    groups: &[(String, ConsumerGroup)],
) -> LagReport {
    let mut report = LagReport {
        slot: None,
        slot_name: sources.slot.clone(),
        kafka: Vec::new(),
        checkpoints: Vec::new(),
        errors: Vec::new(),
    };
    let timeout = Duration::from_secs(5);

    let postgres = async {
        let client = walflow_tls::postgres::connect(config.postgres_url.expose(), "lag").await?;
        lag::postgres::slot_lag(&client, &sources.slot)
            .await
            .map_err(anyhow::Error::from)
    };
    match tokio::time::timeout(timeout, postgres).await {
        Ok(Ok(slot)) => report.slot = slot,
        Ok(Err(error)) => report.errors.push(HopError {
            hop: "postgres slot",
            message: format!(
                "cannot read the slot from {}: {error}",
                config.postgres_url.redacted()
            ),
        }),
        Err(_) => report.errors.push(HopError {
            hop: "postgres slot",
            message: format!("Postgres did not answer within {timeout:?}"),
        }),
    }

    let kafka = config.kafka.clone();
    let consumer_groups: Vec<ConsumerGroup> =
        groups.iter().map(|(_, group)| group.clone()).collect();
    match tokio::task::spawn_blocking(move || {
        lag::kafka::consumer_lag(&kafka, &consumer_groups, timeout)
    })
    .await
    {
        Ok(Ok(partitions)) => report.kafka = partitions,
        Ok(Err(error)) => report.errors.push(HopError {
            hop: "kafka",
            message: format!("cannot read offsets from {}: {error}", config.kafka.shown()),
        }),
        Err(error) => report.errors.push(HopError {
            hop: "kafka",
            message: error.to_string(),
        }),
    }

    let now_ms = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap_or_default()
        .as_millis() as i64;
    for (pipeline, _) in groups {
        let path = walflow_stream::checkpoint::path_for(&sources.checkpoint_dir, pipeline);
        let (age_ms, newest_commit_ms, watermark_ms) =
            match walflow_stream::checkpoint::load_head(&path) {
                Ok(Some(checkpoint)) => (
                    Some((now_ms - checkpoint.written_at_ms).max(0) as u64),
                    (checkpoint.newest_commit_ms > 0).then_some(checkpoint.newest_commit_ms),
                    checkpoint
                        .watermarks
                        .values()
                        .filter(|watermark| watermark.is_set())
                        .map(|watermark| watermark.current() / 1000)
                        .min(),
                ),
                Ok(None) => (None, None, None),
                Err(error) => {
                    // Reported as the hop's error, not as a missing checkpoint.
                    report.errors.push(HopError {
                        hop: "processing",
                        message: error.to_string(),
                    });
                    continue;
                }
            };
        report.checkpoints.push(CheckpointAge {
            pipeline: pipeline.clone(),
            age_ms,
            newest_commit_ms,
            end_to_end_ms: None,
            watermark_ms,
            watermark_lag_ms: watermark_ms.map(|watermark| (now_ms - watermark).max(0) as u64),
        });
    }
    report.settle_end_to_end(now_ms);
    report
}

#[cfg(test)]
mod tests {
    use super::parse_size;

    #[test]
    fn sizes_read_with_or_without_a_unit() {
        assert_eq!(parse_size("1048576"), Ok(1 << 20));
        assert_eq!(parse_size("512kB"), Ok(512 << 10));
        assert_eq!(parse_size("64MB"), Ok(64 << 20));
        assert_eq!(parse_size("2 GB"), Ok(2 << 30));
        assert!(parse_size("12 parsecs")
            .unwrap_err()
            .contains("unknown unit"));
    }
}
