//! The acknowledgement bookkeeping the Kafka and memory sinks share: what is still
//! unacknowledged, per transaction in commit order, and the rule that only leading
//! transactions that are committed and fully delivered are acknowledged.

use std::collections::{BTreeMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard};

use walflow_pgoutput::Lsn;

use super::DeliveryFailure;
use crate::metrics::CdcMetrics;

/// A count per transaction, not a handle per message, so memory stays the same whatever a
/// transaction's size.
#[derive(Default)]
pub(crate) struct AckLedger {
    open: BTreeMap<u64, OpenTransaction>,
    /// Events handed over and not yet acknowledged or failed, and their bytes.
    queued_events: u64,
    queued_bytes: u64,
    failure: Option<DeliveryFailure>,
    /// Commit-to-acknowledgement times of the most recent transactions, in microseconds.
    latencies_us: VecDeque<u64>,
}

/// Enough recent samples for percentiles, bounded so memory stays flat.
const LATENCY_SAMPLES: usize = 100_000;

#[derive(Default)]
struct OpenTransaction {
    outstanding: u64,
    /// Set at commit: until then more events may come.
    end_lsn: Option<Lsn>,
    /// The transaction's commit time in Postgres, Unix microseconds.
    commit_time_us: Option<i64>,
}

/// Lsn(0) marks an abandoned transaction: released in order, it acknowledges nothing.
const ABANDONED: Lsn = Lsn(0);

impl AckLedger {
    /// Acknowledges every leading transaction that is committed and fully delivered.
    fn release(&mut self, metrics: &CdcMetrics) {
        while let Some((&index, open)) = self.open.first_key_value() {
            match open.end_lsn {
                Some(end_lsn) if open.outstanding == 0 => {
                    if end_lsn != ABANDONED {
                        metrics.record_acked(end_lsn.0, open.commit_time_us);
                    }
                    if let Some(commit_time_us) = open.commit_time_us {
                        let latency_us = (unix_micros() - commit_time_us).max(0) as u64;
                        metrics.record_commit_to_ack(latency_us as f64 / 1e6);
                        if self.latencies_us.len() == LATENCY_SAMPLES {
                            self.latencies_us.pop_front();
                        }
                        self.latencies_us.push_back(latency_us);
                    }
                    self.open.remove(&index);
                }
                _ => break,
            }
        }
    }
}

fn unix_micros() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|elapsed| elapsed.as_micros() as i64)
        .unwrap_or_default()
}

fn lock(ledger: &Mutex<AckLedger>) -> MutexGuard<'_, AckLedger> {
    // A panic while holding the lock leaves counts that are still valid.
    ledger
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// The sending side of a ledger: which transaction is open, and the counts that the
/// delivery side ([`Deliveries`], on the destination's own thread) brings down.
pub(crate) struct Acks {
    ledger: Arc<Mutex<AckLedger>>,
    metrics: Arc<CdcMetrics>,
    transaction: u64,
}

impl Acks {
    pub(crate) fn new(metrics: Arc<CdcMetrics>) -> Acks {
        Acks {
            ledger: Arc::default(),
            metrics,
            transaction: 0,
        }
    }

    /// Where deliveries of events sent from now on are reported.
    pub(crate) fn deliveries(&self) -> Deliveries {
        Deliveries {
            ledger: self.ledger.clone(),
            metrics: self.metrics.clone(),
        }
    }

    /// Starts a fresh ledger: what the old one still counted is forgotten (its late
    /// deliveries land in it, and nobody reads it any more). The acknowledged position, in
    /// the metrics, is kept.
    pub(crate) fn reset(&mut self) {
        self.ledger = Arc::default();
        self.transaction = 0;
    }

    pub(crate) fn metrics(&self) -> &Arc<CdcMetrics> {
        &self.metrics
    }

    /// Counts an event of the open transaction about to be handed over (before it is, so a
    /// fast acknowledgement never finds it missing); returns the transaction's index, which
    /// its delivery report must carry.
    pub(crate) fn sending(&self, bytes: u64) -> u64 {
        let mut ledger = lock(&self.ledger);
        ledger.open.entry(self.transaction).or_default().outstanding += 1;
        ledger.queued_events += 1;
        ledger.queued_bytes += bytes;
        self.transaction
    }

    /// Takes back an event counted by [`Acks::sending`] that was never handed over.
    pub(crate) fn not_sent(&self, bytes: u64) {
        let mut ledger = lock(&self.ledger);
        if let Some(open) = ledger.open.get_mut(&self.transaction) {
            open.outstanding = open.outstanding.saturating_sub(1);
        }
        ledger.queued_events = ledger.queued_events.saturating_sub(1);
        ledger.queued_bytes = ledger.queued_bytes.saturating_sub(bytes);
    }

    pub(crate) fn commit(&mut self, end_lsn: Lsn, commit_time_us: Option<i64>) {
        let mut ledger = lock(&self.ledger);
        let open = ledger.open.entry(self.transaction).or_default();
        open.end_lsn = Some(end_lsn);
        open.commit_time_us = commit_time_us;
        ledger.release(&self.metrics);
        self.transaction += 1;
    }

    pub(crate) fn abandon_open_transaction(&mut self) {
        let mut ledger = lock(&self.ledger);
        if let Some(open) = ledger.open.get_mut(&self.transaction) {
            if open.end_lsn.is_none() {
                open.end_lsn = Some(ABANDONED);
                ledger.release(&self.metrics);
                self.transaction += 1;
            }
        }
    }

    pub(crate) fn failure(&self) -> Option<DeliveryFailure> {
        lock(&self.ledger).failure.clone()
    }

    pub(crate) fn latencies_us(&self) -> Vec<u64> {
        lock(&self.ledger).latencies_us.iter().copied().collect()
    }

    /// Events and bytes handed over and not yet acknowledged or failed.
    pub(crate) fn queued(&self) -> (u64, u64) {
        let ledger = lock(&self.ledger);
        (ledger.queued_events, ledger.queued_bytes)
    }
}

/// The delivery side of a ledger: each event handed over is reported once, delivered or
/// failed, with the transaction index [`Acks::sending`] gave it.
#[derive(Clone)]
pub(crate) struct Deliveries {
    ledger: Arc<Mutex<AckLedger>>,
    metrics: Arc<CdcMetrics>,
}

impl Deliveries {
    pub(crate) fn delivered(&self, transaction: u64, bytes: u64) {
        let mut ledger = lock(&self.ledger);
        ledger.queued_events = ledger.queued_events.saturating_sub(1);
        ledger.queued_bytes = ledger.queued_bytes.saturating_sub(bytes);
        if let Some(open) = ledger.open.get_mut(&transaction) {
            open.outstanding = open.outstanding.saturating_sub(1);
        }
        ledger.release(&self.metrics);
    }

    /// The first failure is kept: from it on nothing is confirmed to Postgres.
    pub(crate) fn failed(
        &self,
        transaction: u64,
        bytes: u64,
        error: impl Into<Box<dyn std::error::Error + Send + Sync>>,
    ) {
        let mut ledger = lock(&self.ledger);
        ledger.queued_events = ledger.queued_events.saturating_sub(1);
        ledger.queued_bytes = ledger.queued_bytes.saturating_sub(bytes);
        if ledger.failure.is_none() {
            let failure = DeliveryFailure {
                transaction,
                source: Arc::from(error.into()),
            };
            tracing::warn!(message = %failure, "delivery failed");
            ledger.failure = Some(failure);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_leading_committed_and_delivered_transactions_are_acknowledged() {
        let metrics = CdcMetrics::default();
        let mut ledger = AckLedger::default();
        let open = |outstanding, end_lsn| OpenTransaction {
            outstanding,
            end_lsn,
            commit_time_us: Some(0),
        };
        ledger.open.insert(0, open(1, Some(Lsn(100))));
        ledger.open.insert(1, open(0, Some(Lsn(200))));
        ledger.open.insert(2, open(0, None));
        ledger.release(&metrics);
        assert_eq!(
            metrics.acked_lsn(),
            0,
            "transaction 0 still waits for a delivery"
        );
        ledger.open.get_mut(&0).unwrap().outstanding = 0;
        ledger.release(&metrics);
        assert_eq!(
            metrics.acked_lsn(),
            200,
            "0 and 1 are done; 2 is not committed yet"
        );
        assert_eq!(ledger.open.len(), 1);
        assert_eq!(
            ledger.latencies_us.len(),
            2,
            "one latency per released transaction"
        );
    }
}
