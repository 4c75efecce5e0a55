//! What a running pipeline counts, as Prometheus metrics registered once
//! ([`ProcessMetrics::register`]) and updated where each thing happens (the writer, the
//! checkpoint writer, the consumer's commit callback, the loop). The status line and the
//! benchmarks read the same values.

use std::sync::atomic::AtomicU64;

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::{Registry, Unit};

/// Latency buckets in seconds, 1 ms to 30 s.
pub const LATENCY_BUCKETS: [f64; 14] = [
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
];

/// A time as Unix seconds, the unit Prometheus wants timestamps in.
type Timestamp = Gauge<f64, AtomicU64>;

/// Errors a pipeline recovers from, by kind.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RecoveredError {
    /// A batch's write to Cassandra failed and is retried; the position holds.
    CassandraWrite,
    /// Sending a batch's undecodable events to the dead-letter topic failed; retried.
    DeadLetterSend,
    /// Sending a batch's late events to the late-events topic failed; retried.
    LateEventSend,
    /// Committing the checkpoint's offsets to the consumer group failed.
    OffsetCommit,
}

impl RecoveredError {
    pub const ALL: [RecoveredError; 4] = [
        RecoveredError::CassandraWrite,
        RecoveredError::DeadLetterSend,
        RecoveredError::LateEventSend,
        RecoveredError::OffsetCommit,
    ];

    /// The `kind` label.
    pub fn label(self) -> &'static str {
        match self {
            RecoveredError::CassandraWrite => "cassandra_write",
            RecoveredError::DeadLetterSend => "dead_letter_send",
            RecoveredError::LateEventSend => "late_event_send",
            RecoveredError::OffsetCommit => "offset_commit",
        }
    }
}

type ErrorsByKind = Family<Vec<(String, String)>, Counter>;

/// What a running pipeline counts.
#[derive(Debug)]
pub struct ProcessMetrics {
    pub events: Counter,
    pub dead_letters: Counter,
    pub batches: Counter,
    pub rows_written: Counter,
    errors: ErrorsByKind,
    pub checkpoints: Counter,
    pub last_checkpoint: Timestamp,
    pub last_checkpoint_bytes: Gauge,
    /// Commit time of the newest change whose results are in Cassandra.
    pub written_commit_time: Timestamp,
    /// Events left in Kafka after the last batch (end offsets minus positions).
    pub consumer_lag: Gauge,
    /// Events too late for their window, sent to the late-events topic.
    pub late_events: Counter,
    /// The lowest watermark of the pipeline's sources; 0 without one.
    pub watermark: Timestamp,
    /// Commit-to-Cassandra times of recent events (ms), bounded; for the benchmarks.
    latencies_ms: std::sync::Mutex<std::collections::VecDeque<u64>>,
    /// Postgres commit -> results in Cassandra, per event.
    pub commit_to_write_seconds: Histogram,
    /// Applying a batch to the state and evaluating the queries over it.
    pub batch_evaluate_seconds: Histogram,
    /// Writing a batch's results to Cassandra, retries included.
    pub batch_write_seconds: Histogram,
    /// Writing a checkpoint file.
    pub checkpoint_seconds: Histogram,
}

impl Default for ProcessMetrics {
    fn default() -> ProcessMetrics {
        ProcessMetrics {
            events: Counter::default(),
            dead_letters: Counter::default(),
            batches: Counter::default(),
            rows_written: Counter::default(),
            errors: ErrorsByKind::default(),
            checkpoints: Counter::default(),
            last_checkpoint: Timestamp::default(),
            last_checkpoint_bytes: Gauge::default(),
            written_commit_time: Timestamp::default(),
            consumer_lag: Gauge::default(),
            late_events: Counter::default(),
            watermark: Timestamp::default(),
            latencies_ms: Default::default(),
            commit_to_write_seconds: Histogram::new(LATENCY_BUCKETS),
            batch_evaluate_seconds: Histogram::new(LATENCY_BUCKETS),
            batch_write_seconds: Histogram::new(LATENCY_BUCKETS),
            checkpoint_seconds: Histogram::new(LATENCY_BUCKETS),
        }
    }
}

/// Enough recent samples for percentiles, bounded so memory stays flat.
const LATENCY_SAMPLES: usize = 100_000;

impl ProcessMetrics {
    /// Registers every metric under `registry` (prefix `process`), labelled with the
    /// pipeline; the registry shares them, so what is counted later is what it shows.
    /// `windowed`: whether the pipeline has a watermark to show.
    pub fn register(&self, registry: &mut Registry, pipeline: &str, windowed: bool) {
        let registry = registry
            .sub_registry_with_prefix("process")
            .sub_registry_with_label(("pipeline".into(), pipeline.to_owned().into()));
        let counters = [
            (
                "events",
                "Change events read and applied, with their results in Cassandra",
                &self.events,
            ),
            (
                "dead_letters",
                "Events that could not be decoded, sent to the dead-letter topic",
                &self.dead_letters,
            ),
            ("batches", "Micro-batches written", &self.batches),
            (
                "rows_written",
                "Cassandra writes (upserts and deletes)",
                &self.rows_written,
            ),
            ("checkpoints", "Checkpoints written", &self.checkpoints),
            (
                "late_events",
                "Events too late for their window, sent to the late-events topic",
                &self.late_events,
            ),
        ];
        for (name, help, counter) in counters {
            registry.register(name, help, counter.clone());
        }
        for kind in RecoveredError::ALL {
            self.error(kind);
        }
        registry.register(
            "errors",
            "Errors the pipeline recovered from, by kind: cassandra_write (a batch write failed \
             and was retried; the position holds until it succeeds), dead_letter_send and \
             late_event_send (handing a batch's dead letters or late events to their topic \
             failed and was retried, likewise), offset_commit (committing the checkpoint's \
             offsets to the consumer group failed; the group's lag stays behind until a commit \
             succeeds). Undecodable events are counted as dead letters",
            self.errors.clone(),
        );
        registry.register_with_unit(
            "last_checkpoint_timestamp",
            "When the last checkpoint was written, Unix time",
            Unit::Seconds,
            self.last_checkpoint.clone(),
        );
        registry.register_with_unit(
            "last_checkpoint_size",
            "Size of the last checkpoint",
            Unit::Bytes,
            self.last_checkpoint_bytes.clone(),
        );
        registry.register_with_unit(
            "written_commit_timestamp",
            "Postgres commit time of the newest change whose results are in Cassandra, Unix time",
            Unit::Seconds,
            self.written_commit_time.clone(),
        );
        registry.register(
            "consumer_lag_events",
            "Events in Kafka after the last checkpoint's offsets",
            self.consumer_lag.clone(),
        );
        if windowed {
            registry.register_with_unit(
                "watermark_timestamp",
                "The lowest watermark of the pipeline's windowed sources (event time up to which \
                 windows are complete), Unix time",
                Unit::Seconds,
                self.watermark.clone(),
            );
        }
        let histograms = [
            (
                "commit_to_write",
                "Postgres commit -> the event's results written to Cassandra",
                &self.commit_to_write_seconds,
            ),
            (
                "batch_evaluate",
                "Applying a micro-batch to the state and evaluating the queries over it",
                &self.batch_evaluate_seconds,
            ),
            (
                "batch_write",
                "Writing a micro-batch's results to Cassandra, retries included",
                &self.batch_write_seconds,
            ),
            (
                "checkpoint",
                "Writing a checkpoint (state and offsets) to disk",
                &self.checkpoint_seconds,
            ),
        ];
        for (name, help, histogram) in histograms {
            registry.register_with_unit(name, help, Unit::Seconds, histogram.clone());
        }
    }

    /// The counter of one kind of recovered error.
    pub fn error(&self, kind: RecoveredError) -> Counter {
        self.errors
            .get_or_create(&vec![("kind".to_owned(), kind.label().to_owned())])
            .clone()
    }

    pub(crate) fn record_latencies(&self, commit_times_ms: &[u64]) {
        if commit_times_ms.is_empty() {
            return;
        }
        let now = unix_ms();
        let mut samples = self
            .latencies_ms
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        for &commit in commit_times_ms {
            if samples.len() == LATENCY_SAMPLES {
                samples.pop_front();
            }
            let latency_ms = now.saturating_sub(commit);
            samples.push_back(latency_ms);
            self.commit_to_write_seconds
                .observe(latency_ms as f64 / 1e3);
        }
    }

    /// Commit-to-Cassandra latencies of recent events, in milliseconds.
    pub fn latencies_ms(&self) -> Vec<u64> {
        self.latencies_ms
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .iter()
            .copied()
            .collect()
    }
}

/// A Unix time in milliseconds as a timestamp gauge's seconds.
pub fn set_unix_ms(timestamp: &Timestamp, unix_ms: u64) {
    timestamp.set(unix_ms as f64 / 1e3);
}

/// Moves a timestamp gauge forward to `unix_ms`, never back.
pub fn advance_unix_ms(timestamp: &Timestamp, unix_ms: u64) {
    if unix_ms > unix_ms_of(timestamp) {
        set_unix_ms(timestamp, unix_ms);
    }
}

/// A timestamp gauge's value in Unix milliseconds (0 when never set).
pub fn unix_ms_of(timestamp: &Timestamp) -> u64 {
    (timestamp.get() * 1e3).round().max(0.0) as u64
}

/// Now, in Unix milliseconds (0 if the clock is before 1970).
pub(crate) fn unix_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|elapsed| elapsed.as_millis() as u64)
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What the registry shows is what was counted after registering, every kind of error
    /// under its own name.
    #[test]
    fn registered_metrics_follow_what_is_counted() {
        let metrics = ProcessMetrics::default();
        let mut registry = Registry::with_prefix("walflow");
        metrics.register(&mut registry, "items", false);
        metrics.events.inc_by(6);
        metrics.error(RecoveredError::DeadLetterSend).inc();
        set_unix_ms(&metrics.written_commit_time, 1_767_315_845_500);
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &registry).unwrap();
        assert!(
            text.contains("walflow_process_events_total{pipeline=\"items\"} 6"),
            "{text}"
        );
        assert!(
            text.contains(
                "walflow_process_errors_total{pipeline=\"items\",kind=\"dead_letter_send\"} 1"
            ),
            "{text}"
        );
        assert!(
            text.contains(
                "walflow_process_errors_total{pipeline=\"items\",kind=\"cassandra_write\"} 0"
            ),
            "{text}"
        );
        assert!(!text.contains("watermark"), "{text}");
        assert_eq!(unix_ms_of(&metrics.written_commit_time), 1_767_315_845_500);
    }
}
