//! What cdc counts while it runs, shared between the replication loop, the Kafka delivery
//! thread and whoever reports it (logs now, a metrics endpoint and `walflow lag` later).
//! Plain atomics for the totals; the per-topic counts take one uncontended lock per event,
//! and the latency histogram one per transaction.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

use prometheus_client::metrics::histogram::Histogram;

/// Commit -> Kafka acknowledgement, in seconds: 1 ms to 30 s.
pub const LATENCY_BUCKETS: [f64; 14] = [
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
];

#[derive(Debug)]
pub struct CdcMetrics {
    /// Events handed to the sink (tombstones included).
    events: AtomicU64,
    /// Key and value bytes of those events.
    bytes: AtomicU64,
    /// Transactions whose every event is acknowledged.
    acked_transactions: AtomicU64,
    /// End LSN of the newest transaction acknowledged along with every earlier one.
    acked_lsn: AtomicU64,
    /// Commit time (Unix microseconds) of that transaction; 0 before the first.
    acked_commit_time_us: AtomicU64,
    /// Times Kafka refused events past the message timeout and the session restarted.
    delivery_failures: AtomicU64,
    /// Times the connection to Postgres was lost and made again.
    reconnects: AtomicU64,
    /// Events too large for Kafka, replaced by a record on the dead-letter topic.
    dead_letters: AtomicU64,
    /// Times a replication session ended on an error (connection lost, server restarting).
    postgres_sessions_lost: AtomicU64,
    /// Newest WAL end position the server reported (keepalives and changes).
    server_wal_end: AtomicU64,
    /// Position last confirmed to the slot.
    confirmed_lsn: AtomicU64,
    /// Events and their bytes, per topic (one topic per table).
    per_topic: Mutex<HashMap<String, TopicCount>>,
    /// Commit -> acknowledged by Kafka, per transaction.
    commit_to_ack_seconds: Histogram,
}

impl Default for CdcMetrics {
    fn default() -> CdcMetrics {
        CdcMetrics {
            events: AtomicU64::new(0),
            bytes: AtomicU64::new(0),
            acked_transactions: AtomicU64::new(0),
            acked_lsn: AtomicU64::new(0),
            acked_commit_time_us: AtomicU64::new(0),
            delivery_failures: AtomicU64::new(0),
            reconnects: AtomicU64::new(0),
            dead_letters: AtomicU64::new(0),
            postgres_sessions_lost: AtomicU64::new(0),
            server_wal_end: AtomicU64::new(0),
            confirmed_lsn: AtomicU64::new(0),
            per_topic: Mutex::new(HashMap::new()),
            commit_to_ack_seconds: Histogram::new(LATENCY_BUCKETS),
        }
    }
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct TopicCount {
    pub events: u64,
    pub bytes: u64,
}

/// A consistent-enough copy of the counters at one moment.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct CdcMetricsSnapshot {
    pub events: u64,
    pub bytes: u64,
    pub acked_transactions: u64,
    pub acked_lsn: u64,
    pub acked_commit_time_us: u64,
    pub delivery_failures: u64,
    pub reconnects: u64,
    pub dead_letters: u64,
    pub postgres_sessions_lost: u64,
    pub server_wal_end: u64,
    pub confirmed_lsn: u64,
}

impl CdcMetricsSnapshot {
    /// WAL the server has written that the slot has not confirmed, as cdc last heard.
    pub fn slot_lag_bytes(&self) -> u64 {
        self.server_wal_end.saturating_sub(self.confirmed_lsn)
    }
}

impl CdcMetrics {
    pub fn record_event(&self, topic: &str, bytes: usize) {
        self.events.fetch_add(1, Ordering::Relaxed);
        self.bytes.fetch_add(bytes as u64, Ordering::Relaxed);
        let mut per_topic = self
            .per_topic
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let count = match per_topic.get_mut(topic) {
            Some(count) => count,
            None => per_topic.entry(topic.to_owned()).or_default(),
        };
        count.events += 1;
        count.bytes += bytes as u64;
    }

    /// Events and bytes per topic, sorted by topic.
    pub fn per_topic(&self) -> Vec<(String, TopicCount)> {
        let per_topic = self
            .per_topic
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let mut counts: Vec<(String, TopicCount)> = per_topic
            .iter()
            .map(|(topic, count)| (topic.clone(), *count))
            .collect();
        counts.sort_by(|a, b| a.0.cmp(&b.0));
        counts
    }

    pub fn record_commit_to_ack(&self, seconds: f64) {
        self.commit_to_ack_seconds.observe(seconds);
    }

    /// The histogram itself (it shares its counts with every clone).
    pub fn commit_to_ack_seconds(&self) -> Histogram {
        self.commit_to_ack_seconds.clone()
    }

    pub fn record_server_wal_end(&self, lsn: u64) {
        self.server_wal_end.fetch_max(lsn, Ordering::Relaxed);
    }

    pub fn record_confirmed(&self, lsn: u64) {
        self.confirmed_lsn.fetch_max(lsn, Ordering::Relaxed);
    }

    pub fn record_session_lost(&self) {
        self.postgres_sessions_lost.fetch_add(1, Ordering::Relaxed);
    }

    /// A transaction is acknowledged with everything before it: the position only moves on.
    pub fn record_acked(&self, end_lsn: u64, commit_time_us: Option<i64>) {
        self.acked_lsn.fetch_max(end_lsn, Ordering::SeqCst);
        self.acked_transactions.fetch_add(1, Ordering::Relaxed);
        if let Some(commit_time_us) = commit_time_us {
            self.acked_commit_time_us
                .fetch_max(commit_time_us.max(0) as u64, Ordering::Relaxed);
        }
    }

    pub fn record_delivery_failure(&self) {
        self.delivery_failures.fetch_add(1, Ordering::Relaxed);
    }

    pub fn record_dead_letter(&self) {
        self.dead_letters.fetch_add(1, Ordering::Relaxed);
    }

    pub fn record_reconnect(&self) {
        self.reconnects.fetch_add(1, Ordering::Relaxed);
    }

    pub fn acked_lsn(&self) -> u64 {
        self.acked_lsn.load(Ordering::SeqCst)
    }

    pub fn snapshot(&self) -> CdcMetricsSnapshot {
        CdcMetricsSnapshot {
            events: self.events.load(Ordering::Relaxed),
            bytes: self.bytes.load(Ordering::Relaxed),
            acked_transactions: self.acked_transactions.load(Ordering::Relaxed),
            acked_lsn: self.acked_lsn.load(Ordering::SeqCst),
            acked_commit_time_us: self.acked_commit_time_us.load(Ordering::Relaxed),
            delivery_failures: self.delivery_failures.load(Ordering::Relaxed),
            reconnects: self.reconnects.load(Ordering::Relaxed),
            dead_letters: self.dead_letters.load(Ordering::Relaxed),
            postgres_sessions_lost: self.postgres_sessions_lost.load(Ordering::Relaxed),
            server_wal_end: self.server_wal_end.load(Ordering::Relaxed),
            confirmed_lsn: self.confirmed_lsn.load(Ordering::Relaxed),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn acknowledged_position_and_commit_time_never_move_back() {
        let metrics = CdcMetrics::default();
        metrics.record_acked(200, Some(2_000));
        metrics.record_acked(100, Some(1_000));
        metrics.record_event("a", 10);
        metrics.record_event("b", 5);
        metrics.record_event("a", 1);
        let snapshot = metrics.snapshot();
        assert_eq!(snapshot.acked_lsn, 200);
        assert_eq!(snapshot.acked_commit_time_us, 2_000);
        assert_eq!(snapshot.acked_transactions, 2);
        assert_eq!((snapshot.events, snapshot.bytes), (3, 16));
        let per_topic = metrics.per_topic();
        assert_eq!(per_topic[0].0, "a");
        assert_eq!(
            per_topic[0].1,
            TopicCount {
                events: 2,
                bytes: 11
            }
        );
        assert_eq!(
            per_topic[1].1,
            TopicCount {
                events: 1,
                bytes: 5
            }
        );
    }
}
