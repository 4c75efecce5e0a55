//! Where change events go: Kafka (idempotent producer, acks=all) or stdout for debugging.
//! Each sink tells, transaction by transaction, up to which commit everything is
//! acknowledged: only that position is ever confirmed to Postgres.

use std::collections::BTreeMap;
use std::io::Write;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use rdkafka::client::ClientContext;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::producer::{BaseRecord, DeliveryResult, Producer, ProducerContext, ThreadedProducer};
use rdkafka::ClientConfig;
use walflow_pgoutput::Lsn;

use crate::envelope::ChangeEvent;
use crate::metrics::CdcMetrics;

#[derive(Debug, thiserror::Error)]
pub enum SinkError {
    #[error("Kafka: {0}")]
    Kafka(#[from] KafkaError),
    #[error("cannot write to stdout: {0}")]
    Stdout(#[from] std::io::Error),
    #[error("{0}")]
    Undelivered(String),
}

/// What is still unacknowledged, per transaction in commit order: a count, not a handle per
/// message, so memory stays the same whatever a transaction's size.
#[derive(Default)]
struct AckLedger {
    open: BTreeMap<u64, OpenTransaction>,
    failure: Option<String>,
    /// Commit-to-acknowledgement times of the most recent transactions, in microseconds.
    latencies_us: std::collections::VecDeque<u64>,
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

impl AckLedger {
    /// Acknowledges every leading transaction that is committed and fully delivered.
    fn release(&mut self, metrics: &CdcMetrics) {
        while let Some((&index, open)) = self.open.first_key_value() {
            match open.end_lsn {
                Some(end_lsn) if open.outstanding == 0 => {
                    // Lsn(0) marks an abandoned transaction: released in order, acknowledges nothing.
                    if end_lsn.0 != 0 {
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

/// librdkafka calls `delivery` for every message, from its own thread.
struct AckContext {
    ledger: Arc<Mutex<AckLedger>>,
    metrics: Arc<CdcMetrics>,
}

fn lock(ledger: &Mutex<AckLedger>) -> MutexGuard<'_, AckLedger> {
    // A panic while holding the lock leaves counts that are still valid.
    ledger
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

impl ClientContext for AckContext {}

impl ProducerContext for AckContext {
    /// The index of the transaction the message belongs to.
    type DeliveryOpaque = usize;

    fn delivery(&self, result: &DeliveryResult<'_>, transaction: usize) {
        let mut ledger = lock(&self.ledger);
        match result {
            Ok(_) => {
                if let Some(open) = ledger.open.get_mut(&(transaction as u64)) {
                    open.outstanding = open.outstanding.saturating_sub(1);
                }
                ledger.release(&self.metrics);
            }
            Err((error, _)) => {
                if ledger.failure.is_none() {
                    let message = format!(
                        "Kafka did not acknowledge an event of transaction #{transaction}: {error}; \
                         nothing from it on is confirmed to Postgres"
                    );
                    tracing::warn!(%message, "delivery failed");
                    ledger.failure = Some(message);
                }
            }
        }
    }
}

/// How the Kafka producer is set up.
#[derive(Debug, Clone)]
pub struct KafkaSettings {
    pub brokers: String,
    /// How long librdkafka keeps retrying one event before giving up on it; then cdc starts a
    /// new producer and a new replication session from the slot's confirmed position.
    pub message_timeout: Duration,
}

impl KafkaSettings {
    pub fn new(brokers: &str) -> KafkaSettings {
        KafkaSettings {
            brokers: brokers.to_owned(),
            message_timeout: Duration::from_secs(300),
        }
    }
}

fn create_producer(
    settings: &KafkaSettings,
    metrics: Arc<CdcMetrics>,
) -> Result<(ThreadedProducer<AckContext>, Arc<Mutex<AckLedger>>), SinkError> {
    let ledger = Arc::new(Mutex::new(AckLedger::default()));
    let context = AckContext {
        ledger: ledger.clone(),
        metrics,
    };
    let producer: ThreadedProducer<AckContext> = ClientConfig::new()
        .set("bootstrap.servers", &settings.brokers)
        .set("enable.idempotence", "true")
        .set("acks", "all")
        .set("compression.type", "lz4")
        .set("linger.ms", "1")
        .set(
            "message.timeout.ms",
            settings.message_timeout.as_millis().max(1).to_string(),
        )
        // Bounds the events waiting in librdkafka: memory stays flat whatever the backlog,
        // and reading the WAL waits when Kafka falls behind.
        .set("queue.buffering.max.kbytes", "16384")
        .create_with_context(context)?;
    Ok((producer, ledger))
}

pub enum Sink {
    Kafka(KafkaSink),
    Stdout { metrics: Arc<CdcMetrics> },
}

pub struct KafkaSink {
    producer: ThreadedProducer<AckContext>,
    settings: KafkaSettings,
    ledger: Arc<Mutex<AckLedger>>,
    metrics: Arc<CdcMetrics>,
    transaction: u64,
}

impl Sink {
    pub fn stdout() -> Sink {
        Sink::Stdout {
            metrics: Arc::default(),
        }
    }

    /// Creates the topics that do not exist yet (broker defaults for partitions and
    /// replication), so cdc works where the brokers do not auto-create topics, and a topic
    /// exists before its first event. A topic that cannot be created is logged and left to
    /// the producer; the sink's delivery errors then say what is wrong.
    pub async fn create_topics(&self, topics: &[String]) {
        let Sink::Kafka(kafka) = self else {
            return;
        };
        if topics.is_empty() {
            return;
        }
        if let Err(error) = create_missing_topics(&kafka.settings.brokers, topics).await {
            tracing::warn!(%error, ?topics, "could not create the topics; relying on the brokers to create them on first write");
        }
    }

    pub fn kafka(brokers: &str) -> Result<Sink, SinkError> {
        Sink::kafka_with(KafkaSettings::new(brokers))
    }

    pub fn kafka_with(settings: KafkaSettings) -> Result<Sink, SinkError> {
        let metrics = Arc::<CdcMetrics>::default();
        let (producer, ledger) = create_producer(&settings, metrics.clone())?;
        Ok(Sink::Kafka(KafkaSink {
            producer,
            settings,
            ledger,
            metrics,
            transaction: 0,
        }))
    }

    /// Starts over with a new producer after a delivery failure: everything not yet
    /// acknowledged is dropped (the replication session that sent it is restarted from the
    /// slot, so Postgres sends it again). The acknowledged position is kept.
    pub fn reset(&mut self) -> Result<(), SinkError> {
        if let Sink::Kafka(kafka) = self {
            let (producer, ledger) = create_producer(&kafka.settings, kafka.metrics.clone())?;
            kafka.metrics.record_delivery_failure();
            // The old producer purges its queue when dropped; its callbacks land in the old
            // ledger, which nobody reads any more.
            kafka.producer = producer;
            kafka.ledger = ledger;
            kafka.transaction = 0;
        }
        Ok(())
    }

    /// The end LSN of the newest transaction acknowledged along with all earlier ones.
    pub fn acked_lsn(&self) -> Lsn {
        Lsn(self.metrics().acked_lsn())
    }

    /// The counters this sink and the pipeline feeding it keep.
    pub fn metrics(&self) -> &Arc<CdcMetrics> {
        match self {
            Sink::Kafka(kafka) => &kafka.metrics,
            Sink::Stdout { metrics } => metrics,
        }
    }

    /// Set when an acknowledgement failed: the process must stop without confirming more.
    pub fn failure(&self) -> Option<String> {
        match self {
            Sink::Kafka(kafka) => lock(&kafka.ledger).failure.clone(),
            Sink::Stdout { .. } => None,
        }
    }

    pub async fn send(&mut self, event: &ChangeEvent) -> Result<(), SinkError> {
        let key = event.key.as_ref();
        let value = event.value.as_ref();
        self.metrics().record_event(
            &event.topic,
            key.map_or(0, Vec::len) + value.map_or(0, Vec::len),
        );
        match self {
            Sink::Stdout { .. } => {
                let mut stdout = std::io::stdout().lock();
                writeln!(
                    stdout,
                    "{{\"topic\":{},\"key\":{},\"value\":{}}}",
                    serde_json::Value::String(event.topic.clone()),
                    key.map_or("null".into(), |key| String::from_utf8_lossy(key)),
                    value.map_or("null".into(), |value| String::from_utf8_lossy(value)),
                )?;
            }
            Sink::Kafka(kafka) => {
                // Counted before sending, so a fast acknowledgement never finds it missing.
                lock(&kafka.ledger)
                    .open
                    .entry(kafka.transaction)
                    .or_default()
                    .outstanding += 1;
                loop {
                    let mut record: BaseRecord<'_, [u8], [u8], usize> =
                        BaseRecord::with_opaque_to(&event.topic, kafka.transaction as usize);
                    if let Some(key) = key {
                        record = record.key(key.as_slice());
                    }
                    if let Some(value) = value {
                        record = record.payload(value.as_slice());
                    }
                    match kafka.producer.send(record) {
                        Ok(()) => break,
                        // librdkafka's queue is full: wait for deliveries to drain it.
                        Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), _)) => {
                            // A failed delivery empties the queue too: no point sending more.
                            if let Some(failure) = lock(&kafka.ledger).failure.clone() {
                                return Err(SinkError::Undelivered(failure));
                            }
                            tokio::time::sleep(Duration::from_millis(5)).await;
                        }
                        Err((error, _)) => return Err(error.into()),
                    }
                }
            }
        }
        Ok(())
    }

    /// Commit-to-acknowledgement latencies of recent transactions, in microseconds (Kafka
    /// sink only; `commit_time_us` as given to `commit`).
    pub fn latencies_us(&self) -> Vec<u64> {
        match self {
            Sink::Kafka(kafka) => lock(&kafka.ledger).latencies_us.iter().copied().collect(),
            Sink::Stdout { .. } => Vec::new(),
        }
    }

    /// Closes the current transaction: its events count as acknowledged once Kafka has
    /// them all, and every earlier transaction too. `commit_time_us` (Unix microseconds)
    /// feeds the latency figures.
    pub async fn commit(
        &mut self,
        end_lsn: Lsn,
        commit_time_us: Option<i64>,
    ) -> Result<(), SinkError> {
        match self {
            Sink::Stdout { metrics } => {
                std::io::stdout().flush()?;
                metrics.record_acked(end_lsn.0, commit_time_us);
            }
            Sink::Kafka(kafka) => {
                let mut ledger = lock(&kafka.ledger);
                let open = ledger.open.entry(kafka.transaction).or_default();
                open.end_lsn = Some(end_lsn);
                open.commit_time_us = commit_time_us;
                ledger.release(&kafka.metrics);
                kafka.transaction += 1;
            }
        }
        Ok(())
    }

    /// Gives up on the transaction being sent when the connection to Postgres was lost in its
    /// middle: its events still count for nothing (no position moves past them), and the
    /// server sends the whole transaction again on the next connection.
    pub fn abandon_open_transaction(&mut self) {
        if let Sink::Kafka(kafka) = self {
            let mut ledger = lock(&kafka.ledger);
            if let Some(open) = ledger.open.get_mut(&kafka.transaction) {
                if open.end_lsn.is_none() {
                    // Lsn(0) releases the entry in order without acknowledging anything.
                    open.end_lsn = Some(Lsn(0));
                    ledger.release(&kafka.metrics);
                    kafka.transaction += 1;
                }
            }
        }
    }

    /// Waits (up to `timeout`) until everything sent so far is acknowledged.
    pub async fn drain(&mut self, target: Lsn, timeout: Duration) {
        if let Sink::Kafka(kafka) = self {
            let _ = kafka.producer.flush(timeout);
        }
        let deadline = tokio::time::Instant::now() + timeout;
        while self.acked_lsn() < target
            && tokio::time::Instant::now() < deadline
            && self.failure().is_none()
        {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}

/// Deletes topics (benchmarks clean up after themselves).
async fn create_missing_topics(brokers: &str, topics: &[String]) -> Result<(), SinkError> {
    use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
    let admin: AdminClient<rdkafka::client::DefaultClientContext> = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .create()?;
    // -1: the brokers' num.partitions and default.replication.factor.
    let new_topics: Vec<NewTopic<'_>> = topics
        .iter()
        .map(|topic| NewTopic::new(topic, -1, TopicReplication::Fixed(-1)))
        .collect();
    let options = AdminOptions::new().operation_timeout(Some(Duration::from_secs(30)));
    for result in admin.create_topics(&new_topics, &options).await? {
        match result {
            Ok(topic) => tracing::info!(%topic, "topic created"),
            Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
            Err((topic, code)) => {
                tracing::warn!(%topic, error = %code, "could not create the topic");
            }
        }
    }
    Ok(())
}

pub async fn delete_topics(brokers: &str, topics: &[&str]) -> Result<(), SinkError> {
    let admin: rdkafka::admin::AdminClient<rdkafka::client::DefaultClientContext> =
        ClientConfig::new()
            .set("bootstrap.servers", brokers)
            .create()?;
    admin
        .delete_topics(topics, &rdkafka::admin::AdminOptions::new())
        .await?;
    Ok(())
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
