//! What cdc counts while it runs, shared between the replication loop, the Kafka delivery
//! thread and whoever reports it (logs now, a metrics endpoint and `walflow lag` later).
//! Plain atomics: recording costs no lock on the per-event path.

use std::sync::atomic::{AtomicU64, Ordering};

#[derive(Debug, Default)]
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
}

impl CdcMetrics {
    pub fn record_event(&self, bytes: usize) {
        self.events.fetch_add(1, Ordering::Relaxed);
        self.bytes.fetch_add(bytes as u64, Ordering::Relaxed);
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
        metrics.record_event(10);
        metrics.record_event(5);
        let snapshot = metrics.snapshot();
        assert_eq!(snapshot.acked_lsn, 200);
        assert_eq!(snapshot.acked_commit_time_us, 2_000);
        assert_eq!(snapshot.acked_transactions, 2);
        assert_eq!((snapshot.events, snapshot.bytes), (2, 15));
    }
}
