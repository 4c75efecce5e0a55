//! What a running pipeline counts, read by the status line, the metrics endpoint and the
//! benchmarks.

use std::sync::atomic::AtomicU64;

use prometheus_client::metrics::histogram::Histogram;

/// Latency buckets in seconds, 1 ms to 30 s.
pub const LATENCY_BUCKETS: [f64; 14] = [
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
];

/// What a running pipeline counts; read by the status line and the metrics endpoint.
#[derive(Debug)]
pub struct ProcessMetrics {
    pub events: AtomicU64,
    pub dead_letters: AtomicU64,
    pub batches: AtomicU64,
    pub rows_written: AtomicU64,
    pub cassandra_errors: AtomicU64,
    /// Offset commits to the consumer group that failed (the checkpoint is unaffected).
    pub offset_commit_errors: AtomicU64,
    pub checkpoints: AtomicU64,
    pub last_checkpoint_unix_ms: AtomicU64,
    pub last_checkpoint_bytes: AtomicU64,
    /// Commit time (Unix ms) of the newest change whose results are in Cassandra.
    pub written_commit_time_ms: AtomicU64,
    /// Events left in Kafka after the last batch (end offsets minus positions).
    pub consumer_lag: AtomicU64,
    /// Events too late for their window, sent to the late-events topic.
    pub late_events: AtomicU64,
    /// The lowest watermark of the pipeline's sources (Unix ms); 0 without one.
    pub watermark_ms: AtomicU64,
    /// Commit-to-Cassandra times of recent events (ms), bounded.
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
            events: AtomicU64::new(0),
            dead_letters: AtomicU64::new(0),
            batches: AtomicU64::new(0),
            rows_written: AtomicU64::new(0),
            cassandra_errors: AtomicU64::new(0),
            offset_commit_errors: AtomicU64::new(0),
            checkpoints: AtomicU64::new(0),
            last_checkpoint_unix_ms: AtomicU64::new(0),
            last_checkpoint_bytes: AtomicU64::new(0),
            written_commit_time_ms: AtomicU64::new(0),
            consumer_lag: AtomicU64::new(0),
            late_events: AtomicU64::new(0),
            watermark_ms: AtomicU64::new(0),
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

/// Now, in Unix milliseconds (0 if the clock is before 1970).
pub(crate) fn unix_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|elapsed| elapsed.as_millis() as u64)
        .unwrap_or_default()
}
