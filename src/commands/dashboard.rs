//! `walflow dashboard`: a live page of the pipeline, hop by hop, served by walflow itself.
//! A sampler reads every hop as `walflow lag` does, every few seconds, and keeps the last
//! minutes of readings; the page (one HTML file with its script inline, nothing to build)
//! polls /api/lag and /api/history and draws the hops and the charts.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::process::ExitCode;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use anyhow::Context;
use axum::http::header::{CACHE_CONTROL, CONTENT_TYPE};
use axum::response::IntoResponse;
use axum::routing::get;
use clap::Args;
use serde::Serialize;
use walflow_observe::lag::{ConsumerGroup, LagReport};

use super::lag::{measure, LagSources};
use crate::config::{Config, GlobalArgs};
use crate::exit::Failure;

/// The page: HTML, CSS and script in one file, embedded in the binary.
const PAGE: &str = include_str!("dashboard.html");

#[derive(Debug, Args)]
#[command(
    long_about = "Serves a live page of the pipeline: Postgres -> cdc -> Kafka -> process -> \
        Cassandra drawn hop by hop with each hop's current lag, and charts of lag and \
        throughput over the last minutes. It reads the same numbers as `walflow lag` (from \
        Postgres, Kafka and the checkpoints, so it keeps working while cdc or process is down), \
        every --interval seconds, and keeps --history-minutes of them.\n\n\
        Listens on loopback by default; give --listen 0.0.0.0:9464 to reach it from other \
        machines (it has no authentication). The page's data is JSON at /api/lag (the shape of \
        `walflow lag --json`) and /api/history.",
    after_help = "Examples:\n  walflow dashboard                       # then open http://127.0.0.1:9464/\n  walflow dashboard --listen 0.0.0.0:9464 --interval 5"
)]
pub struct DashboardArgs {
    /// Address to serve the page on (port 0 picks a free one; the URL is logged)
    #[arg(long, default_value = "127.0.0.1:9464", value_name = "ADDR")]
    listen: SocketAddr,

    /// Seconds between readings of the hops
    #[arg(long, default_value_t = 2, value_name = "SECONDS")]
    interval: u64,

    /// Minutes of readings kept for the charts
    #[arg(long, default_value_t = 10, value_name = "MINUTES")]
    history_minutes: u64,

    #[command(flatten)]
    sources: LagSources,
}

/// One reading, reduced to what the charts draw.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Sample {
    /// Unix milliseconds of the reading.
    pub at_ms: i64,
    pub slot_lag_bytes: Option<i64>,
    pub cdc_lag_ms: Option<f64>,
    /// Sum of the log-end offsets of every partition the pipelines read (each partition
    /// once): its growth per second is what cdc writes into Kafka.
    pub kafka_end_offsets: i64,
    pub pipelines: Vec<PipelineSample>,
}

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct PipelineSample {
    pub pipeline: String,
    /// Events in Kafka the pipeline has not processed (all its partitions).
    pub lag_events: u64,
    /// Sum of its committed offsets: its growth per second is the processing rate, as of
    /// checkpoints.
    pub committed_offsets: i64,
    pub end_to_end_ms: Option<u64>,
}

impl Sample {
    pub fn of(report: &LagReport, groups: &[(String, ConsumerGroup)], at_ms: i64) -> Sample {
        let mut seen = std::collections::HashSet::new();
        let kafka_end_offsets = report
            .kafka
            .iter()
            .filter(|partition| seen.insert((partition.topic.as_str(), partition.partition)))
            .map(|partition| partition.end_offset)
            .sum();
        let pipelines = groups
            .iter()
            .map(|(pipeline, group)| {
                let partitions = report
                    .kafka
                    .iter()
                    .filter(|partition| partition.group == group.group);
                PipelineSample {
                    pipeline: pipeline.clone(),
                    lag_events: partitions.clone().map(|partition| partition.lag).sum(),
                    committed_offsets: partitions
                        .filter_map(|partition| partition.committed_offset)
                        .sum(),
                    end_to_end_ms: report
                        .checkpoints
                        .iter()
                        .find(|checkpoint| &checkpoint.pipeline == pipeline)
                        .and_then(|checkpoint| checkpoint.end_to_end_ms),
                }
            })
            .collect();
        Sample {
            at_ms,
            slot_lag_bytes: report.slot.as_ref().and_then(|slot| slot.lag_bytes),
            cdc_lag_ms: report.slot.as_ref().and_then(|slot| slot.cdc_lag_ms),
            kafka_end_offsets,
            pipelines,
        }
    }
}

/// The newest full report and the readings of the last minutes.
struct Readings {
    latest: Option<serde_json::Value>,
    history: VecDeque<Sample>,
    capacity: usize,
}

pub async fn run(args: DashboardArgs, global: &GlobalArgs) -> Result<ExitCode, Failure> {
    let config = Config::load(global)?;
    let groups = args.sources.consumer_groups()?;
    let interval = Duration::from_secs(args.interval.max(1));
    let capacity = ((args.history_minutes.max(1) * 60) / interval.as_secs()).max(2) as usize;
    let readings = Arc::new(Mutex::new(Readings {
        latest: None,
        history: VecDeque::with_capacity(capacity),
        capacity,
    }));

    let address = serve(args.listen, readings.clone())
        .await
        .map_err(Failure::Runtime)?;
    tracing::info!(url = %format!("http://{address}/"), "serving the dashboard");

    let mut stop = super::stop_on_signal("stopping the dashboard");
    let mut ticker = tokio::time::interval(interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = ticker.tick() => {}
            _ = stop.changed() => return Ok(ExitCode::SUCCESS),
        }
        let report = measure(&config, &args.sources, &groups).await;
        let at_ms = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .unwrap_or_default()
            .as_millis() as i64;
        let sample = Sample::of(&report, &groups, at_ms);
        let latest = serde_json::json!({
            "report": report,
            "warnings": report.warnings(),
            "at_ms": at_ms,
        });
        let mut readings = readings
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        readings.latest = Some(latest);
        if readings.history.len() == readings.capacity {
            readings.history.pop_front();
        }
        readings.history.push_back(sample);
    }
}

async fn serve(listen: SocketAddr, readings: Arc<Mutex<Readings>>) -> anyhow::Result<SocketAddr> {
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .with_context(|| format!("cannot listen on {listen} for the dashboard (--listen)"))?;
    let address = listener.local_addr()?;
    let latest = readings.clone();
    let app = axum::Router::new()
        .route(
            "/",
            get(|| async {
                (
                    [
                        (CONTENT_TYPE, "text/html; charset=utf-8"),
                        (CACHE_CONTROL, "no-cache"),
                    ],
                    PAGE,
                )
            }),
        )
        .route(
            "/api/lag",
            get(move || {
                let latest = latest.clone();
                async move {
                    let latest = latest
                        .lock()
                        .unwrap_or_else(|poisoned| poisoned.into_inner())
                        .latest
                        .clone();
                    match latest {
                        Some(latest) => json_response(&latest),
                        // The first reading is under way.
                        None => (
                            axum::http::StatusCode::SERVICE_UNAVAILABLE,
                            [(CONTENT_TYPE, "application/json")],
                            r#"{"error":"the first reading is under way"}"#.to_owned(),
                        )
                            .into_response(),
                    }
                }
            }),
        )
        .route(
            "/api/history",
            get(move || {
                let readings = readings.clone();
                async move {
                    let history: Vec<Sample> = readings
                        .lock()
                        .unwrap_or_else(|poisoned| poisoned.into_inner())
                        .history
                        .iter()
                        .cloned()
                        .collect();
                    json_response(&history)
                }
            }),
        );
    tokio::spawn(async move {
        if let Err(error) =
            walflow_serve::serve(listener, app, walflow_serve::Limits::default()).await
        {
            tracing::warn!(%error, "the dashboard's server stopped");
        }
    });
    Ok(address)
}

fn json_response(value: &impl Serialize) -> axum::response::Response {
    match serde_json::to_string(value) {
        Ok(body) => (
            [
                (CONTENT_TYPE, "application/json"),
                (CACHE_CONTROL, "no-cache"),
            ],
            body,
        )
            .into_response(),
        Err(error) => (
            axum::http::StatusCode::INTERNAL_SERVER_ERROR,
            error.to_string(),
        )
            .into_response(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use walflow_observe::lag::{CheckpointAge, PartitionLag};

    fn partition(group: &str, topic: &str, end: i64, committed: Option<i64>) -> PartitionLag {
        PartitionLag {
            group: group.into(),
            topic: topic.into(),
            partition: 0,
            end_offset: end,
            committed_offset: committed,
            lag: (end - committed.unwrap_or(0)) as u64,
        }
    }

    #[test]
    fn a_sample_counts_each_partition_once_and_sums_per_pipeline() {
        let groups = vec![
            (
                "a".to_owned(),
                ConsumerGroup {
                    group: "walflow-process-a".into(),
                    topics: vec!["users".into()],
                },
            ),
            (
                "b".to_owned(),
                ConsumerGroup {
                    group: "walflow-process-b".into(),
                    topics: vec!["users".into(), "countries".into()],
                },
            ),
        ];
        let report = LagReport {
            slot: None,
            slot_name: "walflow".into(),
            kafka: vec![
                partition("walflow-process-a", "users", 100, Some(90)),
                partition("walflow-process-b", "users", 100, None),
                partition("walflow-process-b", "countries", 21, Some(21)),
            ],
            checkpoints: vec![CheckpointAge {
                pipeline: "a".into(),
                age_ms: Some(1000),
                newest_commit_ms: Some(5),
                end_to_end_ms: Some(1500),
                watermark_ms: None,
                watermark_lag_ms: None,
            }],
            errors: vec![],
        };
        let sample = Sample::of(&report, &groups, 7);
        assert_eq!(sample.kafka_end_offsets, 121, "users counted once");
        assert_eq!(sample.pipelines[0].lag_events, 10);
        assert_eq!(sample.pipelines[0].committed_offsets, 90);
        assert_eq!(sample.pipelines[0].end_to_end_ms, Some(1500));
        assert_eq!(sample.pipelines[1].lag_events, 100);
        assert_eq!(sample.pipelines[1].committed_offsets, 21);
        assert_eq!(sample.pipelines[1].end_to_end_ms, None);
    }
}
