//! The Kafka sink: an idempotent producer (acks=all) whose delivery reports, on
//! librdkafka's own thread, bring the shared ledger's counts down.

use std::sync::Arc;
use std::time::Duration;

use rdkafka::client::ClientContext;
use rdkafka::config::RDKafkaLogLevel;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::producer::{BaseRecord, DeliveryResult, Producer, ProducerContext, ThreadedProducer};
use walflow_pgoutput::Lsn;
use walflow_tls::kafka::{KafkaConnection, RecordingContext, SecurityFailures};

use super::ledger::{Acks, Deliveries};
use super::{DeliveryFailure, EventSink, SinkError};
use crate::envelope::ChangeEvent;
use crate::metrics::CdcMetrics;

/// librdkafka calls `delivery` for every message, from its own thread.
struct AckContext {
    deliveries: Deliveries,
    /// What librdkafka said of a refused login or a failed TLS handshake (the producer
    /// polls, so its error callback runs).
    recording: RecordingContext,
}

impl ClientContext for AckContext {
    fn log(&self, level: RDKafkaLogLevel, fac: &str, log_message: &str) {
        self.recording.log(level, fac, log_message);
    }

    fn error(&self, error: KafkaError, reason: &str) {
        self.recording.error(error, reason);
    }
}

impl ProducerContext for AckContext {
    /// The index of the transaction the message belongs to.
    type DeliveryOpaque = usize;

    fn delivery(&self, result: &DeliveryResult<'_>, transaction: usize) {
        let message = match result {
            Ok(message) | Err((_, message)) => message,
        };
        let bytes = (message.payload_len() + message.key_len()) as u64;
        match result {
            Ok(_) => self.deliveries.delivered(transaction as u64, bytes),
            Err((error, _)) => self
                .deliveries
                .failed(transaction as u64, bytes, error.clone()),
        }
    }
}

/// How the Kafka producer is set up.
#[derive(Debug, Clone)]
pub struct KafkaSettings {
    /// The brokers and the librdkafka properties every client gets (TLS, SASL).
    pub connection: KafkaConnection,
    /// How long librdkafka keeps retrying one event before giving up on it; then cdc starts a
    /// new producer and a new replication session from the slot's confirmed position.
    pub message_timeout: Duration,
    /// librdkafka's `message.max.bytes`: a larger event is replaced by a dead-letter record.
    pub max_message_bytes: usize,
    /// Where the records of events too large for Kafka go.
    pub dead_letter_topic: String,
}

impl KafkaSettings {
    pub fn new(connection: &KafkaConnection) -> KafkaSettings {
        KafkaSettings {
            connection: connection.clone(),
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
    deliveries: Deliveries,
    failures: &SecurityFailures,
) -> Result<ThreadedProducer<AckContext>, SinkError> {
    let context = AckContext {
        deliveries,
        recording: RecordingContext {
            failures: failures.clone(),
        },
    };
    let producer: ThreadedProducer<AckContext> = settings
        .connection
        .client_config()
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
    Ok(producer)
}

pub struct KafkaSink {
    producer: ThreadedProducer<AckContext>,
    settings: KafkaSettings,
    acks: Acks,
    failures: SecurityFailures,
}

impl KafkaSink {
    pub fn new(connection: &KafkaConnection) -> Result<KafkaSink, SinkError> {
        KafkaSink::with(KafkaSettings::new(connection))
    }

    pub fn with(settings: KafkaSettings) -> Result<KafkaSink, SinkError> {
        let acks = Acks::new(Arc::<CdcMetrics>::default());
        let failures = SecurityFailures::default();
        let producer = create_producer(&settings, acks.deliveries(), &failures)?;
        Ok(KafkaSink {
            producer,
            settings,
            acks,
            failures,
        })
    }

    /// Hands one event to librdkafka; an event too large for Kafka is not sent, and the
    /// record to send in its place is returned.
    async fn produce(&mut self, event: &ChangeEvent) -> Result<Option<ChangeEvent>, SinkError> {
        let key = event.key.as_ref();
        let value = event.value.as_ref();
        let size = key.map_or(0, Vec::len) + value.map_or(0, Vec::len);
        self.acks.metrics().record_event(&event.topic, size);
        let transaction = self.acks.sending(size as u64);
        loop {
            let mut record: BaseRecord<'_, [u8], [u8], usize> =
                BaseRecord::with_opaque_to(&event.topic, transaction as usize);
            if let Some(key) = key {
                record = record.key(key.as_slice());
            }
            if let Some(value) = value {
                record = record.payload(value.as_slice());
            }
            match self.producer.send(record) {
                Ok(()) => return Ok(None),
                // One event too large for Kafka must not stop the stream: a record of it
                // goes to the dead-letter topic in its place, in order, and is acknowledged
                // like any other event.
                Err((KafkaError::MessageProduction(RDKafkaErrorCode::MessageSizeTooLarge), _))
                    if event.topic != self.settings.dead_letter_topic =>
                {
                    self.acks.not_sent(size as u64);
                    let dead_letter = too_large_record(
                        event,
                        size,
                        self.settings.max_message_bytes,
                        &self.settings.dead_letter_topic,
                    );
                    tracing::error!(
                        topic = %event.topic,
                        bytes = size,
                        limit = self.settings.max_message_bytes,
                        dead_letter_topic = %self.settings.dead_letter_topic,
                        "an event is larger than --kafka-max-message-bytes; a record of it goes to the dead-letter topic instead"
                    );
                    self.acks.metrics().record_dead_letter();
                    return Ok(Some(dead_letter));
                }
                // librdkafka's queue is full: wait for deliveries to drain it.
                Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), _)) => {
                    // A failed delivery empties the queue too: no point sending more.
                    if let Some(failure) = self.acks.failure() {
                        return Err(SinkError::Undelivered(failure));
                    }
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
                Err((error, _)) => {
                    self.acks.not_sent(size as u64);
                    return Err(error.into());
                }
            }
        }
    }
}

impl EventSink for KafkaSink {
    /// Creates the topics that do not exist yet (broker defaults for partitions and
    /// replication), so cdc works where the brokers do not auto-create topics, and a topic
    /// exists before its first event. A topic the brokers refuse to create, and that does
    /// not exist either, is an error naming the topic and Kafka's reason: its events could
    /// never be delivered. Kafka out of reach is only logged; the producer waits for it.
    async fn create_topics(&self, topics: &[String]) -> Result<(), SinkError> {
        if topics.is_empty() {
            return Ok(());
        }
        match create_missing_topics(&self.settings.connection, topics, &self.failures).await {
            Err(SinkError::Kafka(error)) => {
                tracing::warn!(%error, ?topics, "could not create the topics; relying on the brokers to create them on first write");
                Ok(())
            }
            other => other,
        }
    }

    fn reset(&mut self) -> Result<(), SinkError> {
        self.acks.reset();
        self.producer = create_producer(&self.settings, self.acks.deliveries(), &self.failures)?;
        // The old producer purges its queue when dropped; its callbacks land in the old
        // ledger, which nobody reads any more.
        self.acks.metrics().record_delivery_failure();
        Ok(())
    }

    fn metrics(&self) -> &Arc<CdcMetrics> {
        self.acks.metrics()
    }

    fn failure(&self) -> Option<DeliveryFailure> {
        self.acks.failure()
    }

    async fn send(&mut self, event: &ChangeEvent) -> Result<(), SinkError> {
        if let Some(dead_letter) = self.produce(event).await? {
            // The dead-letter topic's own records are never replaced: this sends or fails.
            self.produce(&dead_letter).await?;
        }
        Ok(())
    }

    fn latencies_us(&self) -> Vec<u64> {
        self.acks.latencies_us()
    }

    async fn commit(&mut self, end_lsn: Lsn, commit_time_us: Option<i64>) -> Result<(), SinkError> {
        self.acks.commit(end_lsn, commit_time_us);
        Ok(())
    }

    fn abandon_open_transaction(&mut self) {
        self.acks.abandon_open_transaction();
    }

    fn send_now(&self) {
        // A zero timeout only asks librdkafka to send what it holds without lingering.
        let _ = self.producer.flush(Duration::ZERO);
    }

    /// librdkafka's queue is three quarters full.
    fn backlogged(&self) -> bool {
        let (events, bytes) = self.acks.queued();
        bytes > QUEUE_MAX_KBYTES * 1024 * 3 / 4 || events > QUEUE_MAX_EVENTS * 3 / 4
    }

    fn dead_letter_topic(&self) -> Option<&str> {
        Some(&self.settings.dead_letter_topic)
    }

    /// The message timeout, plus a margin for the callback.
    fn delivery_deadline(&self) -> Duration {
        self.settings.message_timeout + Duration::from_secs(30)
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

/// Creates the topics that do not exist yet; see [`KafkaSink::create_topics`].
async fn create_missing_topics(
    connection: &KafkaConnection,
    topics: &[String],
    failures: &SecurityFailures,
) -> Result<(), SinkError> {
    use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
    let context = RecordingContext {
        failures: failures.clone(),
    };
    let admin: AdminClient<RecordingContext> =
        connection.client_config().create_with_context(context)?;
    let refused = |failures: &SecurityFailures| {
        failures.first().map(|reason| SinkError::Refused {
            brokers: connection.brokers.clone(),
            reason,
        })
    };
    // -1: the brokers' num.partitions and default.replication.factor.
    let new_topics: Vec<NewTopic<'_>> = topics
        .iter()
        .map(|topic| NewTopic::new(topic, -1, TopicReplication::Fixed(-1)))
        .collect();
    // Bounded, so that cdc starts (and waits for Kafka in its producer) when Kafka is away.
    let options = AdminOptions::new()
        .operation_timeout(Some(Duration::from_secs(30)))
        .request_timeout(Some(Duration::from_secs(30)));
    // A refused login or an untrusted certificate is no reason to wait for Kafka: stop as
    // soon as librdkafka says so.
    let creating = admin.create_topics(&new_topics, &options);
    tokio::pin!(creating);
    let results = loop {
        tokio::select! {
            result = &mut creating => match result {
                Ok(results) => break results,
                Err(error) => return Err(refused(failures).unwrap_or(SinkError::Kafka(error))),
            },
            () = tokio::time::sleep(Duration::from_millis(100)) => {
                if let Some(error) = refused(failures) {
                    return Err(error);
                }
            }
        }
    };
    if let Some(error) = refused(failures) {
        return Err(error);
    }
    for result in results {
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
                    return Err(SinkError::TopicRefused { topic, code });
                }
                tracing::warn!(%topic, error = %code, "could not create the topic, but it exists");
            }
        }
    }
    Ok(())
}

/// Deletes topics (benchmarks clean up after themselves).
pub async fn delete_topics(connection: &KafkaConnection, topics: &[&str]) -> Result<(), SinkError> {
    let admin: rdkafka::admin::AdminClient<rdkafka::client::DefaultClientContext> =
        connection.client_config().create()?;
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
        let mut settings = KafkaSettings::new(&KafkaConnection::new("127.0.0.1:9"));
        settings.message_timeout = Duration::from_secs(3600);
        let mut sink = KafkaSink::with(settings).unwrap();
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
}
