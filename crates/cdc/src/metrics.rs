//! What cdc counts while it runs, shared between the replication loop, the Kafka delivery
//! thread and whoever reports it (the status line, the metrics endpoint). The counters are
//! Prometheus metrics, registered once ([`CdcMetrics::register`]) and updated where each
//! thing happens; the per-topic counters are found with one uncontended lock per event, and
//! the latency histogram takes one per transaction.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::{Registry, Unit};

/// Commit -> Kafka acknowledgement, in seconds: 1 ms to 30 s.
pub const LATENCY_BUCKETS: [f64; 14] = [
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
];

type Labelled = Family<Vec<(String, String)>, Counter>;

/// Errors cdc recovers from, by kind (the `kind` label).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RecoveredError {
    /// Kafka refused events past the message timeout; resent from the slot.
    KafkaUndelivered,
    /// The replication session ended; resumed from the slot.
    PostgresSessionLost,
    /// An event over the size limit, replaced by a record on the dead-letter topic.
    EventTooLarge,
}

impl RecoveredError {
    pub const ALL: [RecoveredError; 3] = [
        RecoveredError::KafkaUndelivered,
        RecoveredError::PostgresSessionLost,
        RecoveredError::EventTooLarge,
    ];

    pub fn label(self) -> &'static str {
        match self {
            RecoveredError::KafkaUndelivered => "kafka_undelivered",
            RecoveredError::PostgresSessionLost => "postgres_session_lost",
            RecoveredError::EventTooLarge => "event_too_large",
        }
    }
}

/// One topic's counters, taken from the per-topic families once.
#[derive(Debug, Clone)]
struct TopicCounters {
    events: Counter,
    bytes: Counter,
}

#[derive(Debug)]
pub struct CdcMetrics {
    /// Events handed to the sink (tombstones included).
    events: Counter,
    /// Key and value bytes of those events.
    bytes: Counter,
    /// Transactions whose every event is acknowledged.
    acked_transactions: Counter,
    /// End LSN of the newest transaction acknowledged along with every earlier one.
    acked_lsn: Gauge,
    /// Commit time (Unix microseconds) of that transaction; 0 before the first.
    acked_commit_time_us: AtomicU64,
    /// The same as Unix seconds, as Prometheus shows it.
    acked_commit_time: Gauge<f64, AtomicU64>,
    /// Times the connection to Postgres was lost and made again.
    reconnects: Counter,
    errors: Labelled,
    /// Newest WAL end position the server reported (keepalives and changes).
    server_wal_end: AtomicU64,
    /// Position last confirmed to the slot.
    confirmed_lsn: AtomicU64,
    /// WAL the server reported that the slot has not confirmed.
    slot_lag_bytes: Gauge,
    topic_events: Labelled,
    topic_bytes: Labelled,
    /// Each topic's counters (one topic per table), by topic.
    per_topic: Mutex<HashMap<String, TopicCounters>>,
    /// Commit -> acknowledged by Kafka, per transaction.
    commit_to_ack_seconds: Histogram,
}

impl Default for CdcMetrics {
    fn default() -> CdcMetrics {
        CdcMetrics {
            events: Counter::default(),
            bytes: Counter::default(),
            acked_transactions: Counter::default(),
            acked_lsn: Gauge::default(),
            acked_commit_time_us: AtomicU64::new(0),
            acked_commit_time: Gauge::default(),
            reconnects: Counter::default(),
            errors: Labelled::default(),
            server_wal_end: AtomicU64::new(0),
            confirmed_lsn: AtomicU64::new(0),
            slot_lag_bytes: Gauge::default(),
            topic_events: Labelled::default(),
            topic_bytes: Labelled::default(),
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
    /// Registers every metric under `registry` (prefix `cdc`), labelled with the slot; the
    /// registry shares them, so what is counted later is what it shows.
    pub fn register(&self, registry: &mut Registry, slot: &str) {
        let registry = registry
            .sub_registry_with_prefix("cdc")
            .sub_registry_with_label(("slot".into(), slot.to_owned().into()));
        registry.register(
            "events",
            "Change events handed to Kafka, tombstones included",
            self.events.clone(),
        );
        registry.register_with_unit(
            "event",
            "Key and value bytes of those events",
            Unit::Bytes,
            self.bytes.clone(),
        );
        registry.register(
            "topic_events",
            "Change events per topic (one topic per table)",
            self.topic_events.clone(),
        );
        registry.register_with_unit(
            "topic_event",
            "Key and value bytes of the events, per topic",
            Unit::Bytes,
            self.topic_bytes.clone(),
        );
        for kind in RecoveredError::ALL {
            self.error(kind);
        }
        registry.register(
            "errors",
            "Errors cdc recovered from, by kind: kafka_undelivered (Kafka refused events past the \
             message timeout; resent from the slot), postgres_session_lost (the replication \
             session ended; resumed from the slot), event_too_large (an event over \
             --kafka-max-message-bytes, replaced by a record on the dead-letter topic)",
            self.errors.clone(),
        );
        registry.register(
            "acknowledged_transactions",
            "Transactions whose every event Kafka acknowledged",
            self.acked_transactions.clone(),
        );
        registry.register(
            "acknowledged_lsn",
            "End LSN of the newest transaction acknowledged with all before it (what the slot may confirm)",
            self.acked_lsn.clone(),
        );
        registry.register_with_unit(
            "acknowledged_commit_timestamp",
            "Postgres commit time of that transaction, Unix time",
            Unit::Seconds,
            self.acked_commit_time.clone(),
        );
        registry.register_with_unit(
            "slot_lag",
            "WAL the server reported written that the slot has not confirmed, as cdc last heard",
            Unit::Bytes,
            self.slot_lag_bytes.clone(),
        );
        registry.register_with_unit(
            "commit_to_ack",
            "Postgres commit -> every event of the transaction acknowledged by Kafka",
            Unit::Seconds,
            self.commit_to_ack_seconds.clone(),
        );
        registry.register(
            "reconnects",
            "Times the connection to Postgres was lost and made again",
            self.reconnects.clone(),
        );
    }

    fn error(&self, kind: RecoveredError) -> Counter {
        self.errors
            .get_or_create(&vec![("kind".to_owned(), kind.label().to_owned())])
            .clone()
    }

    pub fn record_event(&self, topic: &str, bytes: usize) {
        self.events.inc();
        self.bytes.inc_by(bytes as u64);
        let mut per_topic = self
            .per_topic
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let counters = match per_topic.get(topic) {
            Some(counters) => counters,
            None => {
                let labels = vec![("topic".to_owned(), topic.to_owned())];
                let counters = TopicCounters {
                    events: self.topic_events.get_or_create(&labels).clone(),
                    bytes: self.topic_bytes.get_or_create(&labels).clone(),
                };
                per_topic.entry(topic.to_owned()).or_insert(counters)
            }
        };
        counters.events.inc();
        counters.bytes.inc_by(bytes as u64);
    }

    /// Events and bytes per topic, sorted by topic.
    pub fn per_topic(&self) -> Vec<(String, TopicCount)> {
        let per_topic = self
            .per_topic
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let mut counts: Vec<(String, TopicCount)> = per_topic
            .iter()
            .map(|(topic, counters)| {
                (
                    topic.clone(),
                    TopicCount {
                        events: counters.events.get(),
                        bytes: counters.bytes.get(),
                    },
                )
            })
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
        self.update_slot_lag();
    }

    pub fn record_confirmed(&self, lsn: u64) {
        self.confirmed_lsn.fetch_max(lsn, Ordering::Relaxed);
        self.update_slot_lag();
    }

    fn update_slot_lag(&self) {
        let lag = self
            .server_wal_end
            .load(Ordering::Relaxed)
            .saturating_sub(self.confirmed_lsn.load(Ordering::Relaxed));
        self.slot_lag_bytes.set(lag as i64);
    }

    pub fn record_session_lost(&self) {
        self.error(RecoveredError::PostgresSessionLost).inc();
    }

    /// A transaction is acknowledged with everything before it: the position only moves on.
    pub fn record_acked(&self, end_lsn: u64, commit_time_us: Option<i64>) {
        self.acked_lsn
            .inner()
            .fetch_max(end_lsn as i64, Ordering::SeqCst);
        self.acked_transactions.inc();
        if let Some(commit_time_us) = commit_time_us {
            let commit_time_us = commit_time_us.max(0) as u64;
            let before = self
                .acked_commit_time_us
                .fetch_max(commit_time_us, Ordering::Relaxed);
            if commit_time_us > before {
                self.acked_commit_time.set(commit_time_us as f64 / 1e6);
            }
        }
    }

    pub fn record_delivery_failure(&self) {
        self.error(RecoveredError::KafkaUndelivered).inc();
    }

    pub fn record_dead_letter(&self) {
        self.error(RecoveredError::EventTooLarge).inc();
    }

    pub fn record_reconnect(&self) {
        self.reconnects.inc();
    }

    pub fn acked_lsn(&self) -> u64 {
        self.acked_lsn.inner().load(Ordering::SeqCst).max(0) as u64
    }

    pub fn snapshot(&self) -> CdcMetricsSnapshot {
        CdcMetricsSnapshot {
            events: self.events.get(),
            bytes: self.bytes.get(),
            acked_transactions: self.acked_transactions.get(),
            acked_lsn: self.acked_lsn(),
            acked_commit_time_us: self.acked_commit_time_us.load(Ordering::Relaxed),
            delivery_failures: self.error(RecoveredError::KafkaUndelivered).get(),
            reconnects: self.reconnects.get(),
            dead_letters: self.error(RecoveredError::EventTooLarge).get(),
            postgres_sessions_lost: self.error(RecoveredError::PostgresSessionLost).get(),
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
        let mut registry = Registry::with_prefix("walflow");
        metrics.register(&mut registry, "s");
        metrics.record_dead_letter();
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &registry).unwrap();
        for expected in [
            "walflow_cdc_events_total{slot=\"s\"} 3",
            "walflow_cdc_topic_events_total{slot=\"s\",topic=\"a\"} 2",
            "walflow_cdc_errors_total{slot=\"s\",kind=\"event_too_large\"} 1",
            "walflow_cdc_errors_total{slot=\"s\",kind=\"kafka_undelivered\"} 0",
            "walflow_cdc_acknowledged_lsn{slot=\"s\"} 200",
        ] {
            assert!(text.contains(expected), "{expected} not in {text}");
        }
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
