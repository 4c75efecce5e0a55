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
    #[error("Kafka refused to create topic {topic}: {reason}; create it by hand, or give walflow the right to create topics")]
    TopicRefused { topic: String, reason: String },
}

/// What is still unacknowledged, per transaction in commit order: a count, not a handle per
/// message, so memory stays the same whatever a transaction's size.
#[derive(Default)]
struct AckLedger {
    open: BTreeMap<u64, OpenTransaction>,
    /// Events handed to librdkafka and not yet acknowledged or failed, and their bytes.
    queued_events: u64,
    queued_bytes: u64,
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
        let message = match result {
            Ok(message) | Err((_, message)) => message,
        };
        let bytes = message.payload_len() + message.key_len();
        ledger.queued_events = ledger.queued_events.saturating_sub(1);
        ledger.queued_bytes = ledger.queued_bytes.saturating_sub(bytes as u64);
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
    /// librdkafka's `message.max.bytes`: a larger event is replaced by a dead-letter record.
    pub max_message_bytes: usize,
    /// Where the records of events too large for Kafka go.
    pub dead_letter_topic: String,
}

impl KafkaSettings {
    pub fn new(brokers: &str) -> KafkaSettings {
        KafkaSettings {
            brokers: brokers.to_owned(),
            message_timeout: Duration::from_secs(300),
            max_message_bytes: 1_000_000,
            dead_letter_topic: "walflow.dead_letters".to_owned(),
        }
    }
}

/// librdkafka's queue bounds (bytes in KiB, and events).
const QUEUE_MAX_KBYTES: u64 = 16384;
const QUEUE_MAX_EVENTS: u64 = 100_000;

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
        .set("queue.buffering.max.kbytes", QUEUE_MAX_KBYTES.to_string())
        .set("queue.buffering.max.messages", QUEUE_MAX_EVENTS.to_string())
        .set("message.max.bytes", settings.max_message_bytes.to_string())
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
    /// exists before its first event. A topic the brokers refuse to create, and that does
    /// not exist either, is an error naming the topic and Kafka's reason: its events could
    /// never be delivered. Kafka out of reach is only logged; the producer waits for it.
    pub async fn create_topics(&self, topics: &[String]) -> Result<(), SinkError> {
        let Sink::Kafka(kafka) = self else {
            return Ok(());
        };
        if topics.is_empty() {
            return Ok(());
        }
        match create_missing_topics(&kafka.settings.brokers, topics).await {
            Err(SinkError::Kafka(error)) => {
                tracing::warn!(%error, ?topics, "could not create the topics; relying on the brokers to create them on first write");
                Ok(())
            }
            other => other,
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
                {
                    let mut ledger = lock(&kafka.ledger);
                    ledger
                        .open
                        .entry(kafka.transaction)
                        .or_default()
                        .outstanding += 1;
                    ledger.queued_events += 1;
                    ledger.queued_bytes +=
                        (key.map_or(0, Vec::len) + value.map_or(0, Vec::len)) as u64;
                }
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
                        // One event too large for Kafka must not stop the stream: a record
                        // of it goes to the dead-letter topic in its place, in order, and is
                        // acknowledged like any other event.
                        Err((
                            KafkaError::MessageProduction(RDKafkaErrorCode::MessageSizeTooLarge),
                            _,
                        )) if event.topic != kafka.settings.dead_letter_topic => {
                            let size = key.map_or(0, Vec::len) + value.map_or(0, Vec::len);
                            {
                                let mut ledger = lock(&kafka.ledger);
                                if let Some(open) = ledger.open.get_mut(&kafka.transaction) {
                                    open.outstanding = open.outstanding.saturating_sub(1);
                                }
                                ledger.queued_events = ledger.queued_events.saturating_sub(1);
                                ledger.queued_bytes =
                                    ledger.queued_bytes.saturating_sub(size as u64);
                            }
                            let dead_letter = too_large_record(
                                event,
                                size,
                                kafka.settings.max_message_bytes,
                                &kafka.settings.dead_letter_topic,
                            );
                            tracing::error!(
                                topic = %event.topic,
                                bytes = size,
                                limit = kafka.settings.max_message_bytes,
                                dead_letter_topic = %kafka.settings.dead_letter_topic,
                                "an event is larger than --kafka-max-message-bytes; a record of it goes to the dead-letter topic instead"
                            );
                            kafka.metrics.record_dead_letter();
                            return Box::pin(self.send(&dead_letter)).await;
                        }
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

    /// Waits until Kafka has acknowledged every transaction up to `target`, a delivery has
    /// failed, or `timeout` has passed; true only in the first case. The wait does not block
    /// the runtime: acknowledgements arrive on the producer's own thread.
    pub async fn drain(&mut self, target: Lsn, timeout: Duration) -> bool {
        if let Sink::Kafka(kafka) = self {
            // A zero timeout only asks librdkafka to send what it holds without lingering.
            let _ = kafka.producer.flush(Duration::ZERO);
        }
        let deadline = tokio::time::Instant::now() + timeout;
        while self.acked_lsn() < target
            && tokio::time::Instant::now() < deadline
            && self.failure().is_none()
        {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        self.acked_lsn() >= target && self.failure().is_none()
    }

    /// Kafka is behind: librdkafka's queue is three quarters full. The replication loop then
    /// stops reading changes but goes on sending status updates, so Postgres does not take
    /// the silence for a dead link (wal_sender_timeout) while Kafka catches up.
    pub fn backlogged(&self) -> bool {
        match self {
            Sink::Kafka(kafka) => {
                let ledger = lock(&kafka.ledger);
                ledger.queued_bytes > QUEUE_MAX_KBYTES * 1024 * 3 / 4
                    || ledger.queued_events > QUEUE_MAX_EVENTS * 3 / 4
            }
            Sink::Stdout { .. } => false,
        }
    }

    /// The dead-letter topic (Kafka sink only), which must exist like the tables' topics.
    pub fn dead_letter_topic(&self) -> Option<&str> {
        match self {
            Sink::Kafka(kafka) => Some(&kafka.settings.dead_letter_topic),
            Sink::Stdout { .. } => None,
        }
    }

    /// How long an event can take before Kafka acknowledges it or librdkafka gives up on it
    /// (the message timeout, plus a margin for the callback).
    pub fn delivery_deadline(&self) -> Duration {
        match self {
            Sink::Kafka(kafka) => kafka.settings.message_timeout + Duration::from_secs(30),
            _ => Duration::from_secs(30),
        }
    }
}

/// What the dead-letter topic holds in place of an event too large for Kafka: its topic,
/// key and size, so the row can be found (its key is the record's key too).
fn too_large_record(event: &ChangeEvent, size: usize, limit: usize, topic: &str) -> ChangeEvent {
    use base64::Engine;
    let key = event
        .key
        .as_deref()
        .map(|key| match std::str::from_utf8(key) {
            Ok(text) => serde_json::json!({"text": text}),
            Err(_) => {
                serde_json::json!({"base64": base64::engine::general_purpose::STANDARD.encode(key)})
            }
        });
    let record = serde_json::json!({
        "reason": format!("the event is {size} bytes, over the {limit}-byte limit (--kafka-max-message-bytes)"),
        "topic": event.topic,
        "key": key,
        "bytes": size,
    });
    ChangeEvent {
        topic: topic.to_owned(),
        key: event.key.clone(),
        value: Some(record.to_string().into_bytes()),
    }
}

/// Creates the topics that do not exist yet; see [`Sink::create_topics`].
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
    // Bounded, so that cdc starts (and waits for Kafka in its producer) when Kafka is away.
    let options = AdminOptions::new()
        .operation_timeout(Some(Duration::from_secs(30)))
        .request_timeout(Some(Duration::from_secs(30)));
    for result in admin.create_topics(&new_topics, &options).await? {
        match result {
            Ok(topic) => tracing::info!(%topic, "topic created"),
            Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
            Err((topic, code)) => {
                // Refused to this client (no CREATE right, say) but made by an operator
                // beforehand is fine; refused and absent is not.
                let metadata = admin
                    .inner()
                    .fetch_metadata(Some(&topic), Duration::from_secs(10))?;
                let exists = metadata
                    .topics()
                    .iter()
                    .any(|known| known.name() == topic && known.error().is_none());
                if !exists {
                    return Err(SinkError::TopicRefused {
                        topic,
                        reason: code.to_string(),
                    });
                }
                tracing::warn!(%topic, error = %code, "could not create the topic, but it exists");
            }
        }
    }
    Ok(())
}

/// Deletes topics (benchmarks clean up after themselves).
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

    /// An event Kafka has not acknowledged when the wait ends is reported as such, so the
    /// snapshot is not recorded as complete with rows still queued.
    #[tokio::test]
    async fn a_drain_that_ends_before_kafka_acknowledged_says_so() {
        let mut settings = KafkaSettings::new("127.0.0.1:9");
        settings.message_timeout = Duration::from_secs(3600);
        let mut sink = Sink::kafka_with(settings).unwrap();
        sink.send(&ChangeEvent {
            topic: "walflow.public.nowhere".into(),
            key: None,
            value: Some(b"{}".to_vec()),
        })
        .await
        .unwrap();
        sink.commit(Lsn(100), None).await.unwrap();
        assert!(!sink.drain(Lsn(100), Duration::from_millis(300)).await);
        assert!(sink.acked_lsn() < Lsn(100));
        assert!(sink.failure().is_none());
    }

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
