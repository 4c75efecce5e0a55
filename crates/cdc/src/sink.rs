//! Where change events go: Kafka (idempotent producer, acks=all) or stdout for debugging.
//! Each sink tells, transaction by transaction, up to which commit everything is
//! acknowledged: only that position is ever confirmed to Postgres.

use std::io::Write;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::producer::{DeliveryFuture, FutureProducer, FutureRecord, Producer};
use rdkafka::ClientConfig;
use tokio::sync::{mpsc, watch};
use walflow_pgoutput::Lsn;

use crate::envelope::ChangeEvent;

#[derive(Debug, thiserror::Error)]
pub enum SinkError {
    #[error("Kafka: {0}")]
    Kafka(#[from] KafkaError),
    #[error("Kafka did not acknowledge an event of the transaction ending at {lsn}: {error}")]
    Delivery { lsn: Lsn, error: KafkaError },
    #[error("cannot write to stdout: {0}")]
    Stdout(#[from] std::io::Error),
}

/// Transactions waiting for their acknowledgements, in commit order.
struct PendingTransaction {
    end_lsn: Lsn,
    deliveries: Vec<DeliveryFuture>,
}

pub enum Sink {
    Kafka(KafkaSink),
    Stdout { acked: Arc<AtomicU64> },
}

pub struct KafkaSink {
    producer: FutureProducer,
    deliveries: Vec<DeliveryFuture>,
    pending: mpsc::Sender<PendingTransaction>,
    acked: Arc<AtomicU64>,
    failure: watch::Receiver<Option<String>>,
}

impl Sink {
    pub fn stdout() -> Sink {
        Sink::Stdout {
            acked: Arc::new(AtomicU64::new(0)),
        }
    }

    pub fn kafka(brokers: &str) -> Result<Sink, SinkError> {
        let producer: FutureProducer = ClientConfig::new()
            .set("bootstrap.servers", brokers)
            .set("enable.idempotence", "true")
            .set("acks", "all")
            .set("compression.type", "lz4")
            .set("linger.ms", "5")
            .set("message.timeout.ms", "300000")
            // Bounds the events waiting in librdkafka: memory stays flat whatever the backlog.
            .set("queue.buffering.max.kbytes", "16384")
            .create()?;
        let acked = Arc::new(AtomicU64::new(0));
        // A bounded queue of transactions: when Kafka falls behind, reading the WAL waits.
        let (pending, receiver) = mpsc::channel(1024);
        let (failure_sender, failure) = watch::channel(None);
        tokio::spawn(acknowledge_in_order(
            receiver,
            acked.clone(),
            failure_sender,
        ));
        Ok(Sink::Kafka(KafkaSink {
            producer,
            deliveries: Vec::new(),
            pending,
            acked,
            failure,
        }))
    }

    /// The end LSN of the newest transaction acknowledged along with all earlier ones.
    pub fn acked_lsn(&self) -> Lsn {
        let acked = match self {
            Sink::Kafka(kafka) => &kafka.acked,
            Sink::Stdout { acked } => acked,
        };
        Lsn(acked.load(Ordering::SeqCst))
    }

    /// Set when an acknowledgement failed: the process must stop without confirming more.
    pub fn failure(&self) -> Option<String> {
        match self {
            Sink::Kafka(kafka) => kafka.failure.borrow().clone(),
            Sink::Stdout { .. } => None,
        }
    }

    pub async fn send(&mut self, event: &ChangeEvent) -> Result<(), SinkError> {
        let key = event.key.as_ref();
        let value = event.value.as_ref();
        match self {
            Sink::Stdout { .. } => {
                let mut stdout = std::io::stdout().lock();
                writeln!(
                    stdout,
                    "{{\"topic\":{},\"key\":{},\"value\":{}}}",
                    serde_json::Value::String(event.topic.clone()),
                    key.map_or("null", String::as_str),
                    value.map_or("null", String::as_str),
                )?;
            }
            Sink::Kafka(kafka) => loop {
                let mut record: FutureRecord<'_, String, String> = FutureRecord::to(&event.topic);
                if let Some(key) = key {
                    record = record.key(key);
                }
                if let Some(value) = value {
                    record = record.payload(value);
                }
                match kafka.producer.send_result(record) {
                    Ok(delivery) => {
                        kafka.deliveries.push(delivery);
                        break;
                    }
                    // librdkafka's queue is full: wait for deliveries to drain it.
                    Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), _)) => {
                        tokio::time::sleep(Duration::from_millis(10)).await;
                    }
                    Err((error, _)) => return Err(error.into()),
                }
            },
        }
        Ok(())
    }

    /// Closes the current transaction: its events count as acknowledged once Kafka has
    /// them all, and every earlier transaction too.
    pub async fn commit(&mut self, end_lsn: Lsn) -> Result<(), SinkError> {
        match self {
            Sink::Stdout { acked } => {
                std::io::stdout().flush()?;
                acked.store(end_lsn.0, Ordering::SeqCst);
            }
            Sink::Kafka(kafka) => {
                let deliveries = std::mem::take(&mut kafka.deliveries);
                let transaction = PendingTransaction {
                    end_lsn,
                    deliveries,
                };
                if kafka.pending.send(transaction).await.is_err() {
                    return Err(SinkError::Kafka(KafkaError::Canceled));
                }
            }
        }
        Ok(())
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

async fn acknowledge_in_order(
    mut pending: mpsc::Receiver<PendingTransaction>,
    acked: Arc<AtomicU64>,
    failure: watch::Sender<Option<String>>,
) {
    while let Some(transaction) = pending.recv().await {
        for delivery in transaction.deliveries {
            let outcome = match delivery.await {
                Ok(Ok(_)) => Ok(()),
                Ok(Err((error, _))) => Err(error),
                Err(_) => Err(KafkaError::Canceled),
            };
            if let Err(error) = outcome {
                let message = SinkError::Delivery {
                    lsn: transaction.end_lsn,
                    error,
                }
                .to_string();
                tracing::error!(%message, "stopping: nothing after this transaction will be confirmed");
                let _ = failure.send(Some(message));
                return;
            }
        }
        acked.fetch_max(transaction.end_lsn.0, Ordering::SeqCst);
    }
}
