//! Where change events go, behind one trait: Kafka (idempotent producer, acks=all), stdout
//! for debugging, and memory for tests of the replication loop. Each sink tells,
//! transaction by transaction, up to which commit everything is acknowledged: only that
//! position is ever confirmed to Postgres.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use rdkafka::error::KafkaError;
use walflow_pgoutput::Lsn;

use crate::envelope::ChangeEvent;
use crate::metrics::CdcMetrics;

mod kafka;
mod ledger;
mod memory;
mod stdout;

pub use kafka::{delete_topics, KafkaSettings, KafkaSink};
pub use memory::{MemoryKafka, MemorySink};
pub use stdout::StdoutSink;

#[derive(Debug, thiserror::Error)]
pub enum SinkError {
    #[error("Kafka: {0}")]
    Kafka(#[from] KafkaError),
    #[error("cannot write to stdout: {0}")]
    Stdout(#[from] std::io::Error),
    #[error(transparent)]
    Undelivered(DeliveryFailure),
    /// The memory sink, told to refuse every send (a Kafka that takes nothing).
    #[error("{0}")]
    SendRefused(String),
    #[error(
        "Kafka at {brokers} refused walflow: {reason}; check security.protocol, sasl.mechanism, \
         sasl.username, sasl.password and ssl.ca.location (walflow.toml's [kafka.properties] or \
         WALFLOW_KAFKA_PROPERTY_* variables)"
    )]
    Refused { brokers: String, reason: String },
    #[error("Kafka refused to create topic {topic}: {code}; create it by hand, or give walflow the right to create topics")]
    TopicRefused {
        topic: String,
        code: rdkafka::types::RDKafkaErrorCode,
    },
}

/// Kafka gave up on an event: from its transaction on, nothing is confirmed to Postgres.
#[derive(Debug, Clone, thiserror::Error)]
#[error(
    "Kafka did not acknowledge an event of transaction #{transaction}: {source}; nothing from \
     it on is confirmed to Postgres"
)]
pub struct DeliveryFailure {
    pub transaction: u64,
    /// Why, as the producer's delivery report (or a test double) said.
    #[source]
    pub source: Arc<dyn std::error::Error + Send + Sync>,
}

/// What cdc's loop needs of a destination. Events are sent transaction by transaction and
/// each transaction is closed by [`commit`](EventSink::commit); the sink then reports, in
/// [`acked_lsn`](EventSink::acked_lsn), the end of the newest transaction that is
/// acknowledged along with every earlier one. Nothing else moves the slot.
pub trait EventSink: Send {
    /// Hands one event of the open transaction over; it counts once acknowledged.
    fn send(&mut self, event: &ChangeEvent) -> impl Future<Output = Result<(), SinkError>> + Send;

    /// Closes the open transaction: its events count as acknowledged once the destination
    /// has them all, and every earlier transaction too. `commit_time_us` (Unix microseconds)
    /// feeds the latency figures.
    fn commit(
        &mut self,
        end_lsn: Lsn,
        commit_time_us: Option<i64>,
    ) -> impl Future<Output = Result<(), SinkError>> + Send;

    /// Gives up on the open transaction when the connection to Postgres was lost in its
    /// middle: its events count for nothing (no position moves past them), and the server
    /// sends the whole transaction again on the next connection.
    fn abandon_open_transaction(&mut self);

    /// Starts over after a delivery failure: everything not yet acknowledged is dropped (the
    /// replication session that sent it is restarted from the slot, so Postgres sends it
    /// again). The acknowledged position is kept.
    fn reset(&mut self) -> Result<(), SinkError>;

    /// Set when an acknowledgement failed: the loop must stop without confirming more.
    fn failure(&self) -> Option<DeliveryFailure>;

    /// The destination is behind: the loop stops reading changes (but goes on sending status
    /// updates, so Postgres does not take the silence for a dead link) until it catches up.
    fn backlogged(&self) -> bool;

    /// The counters this sink and the pipeline feeding it keep.
    fn metrics(&self) -> &Arc<CdcMetrics>;

    /// Commit-to-acknowledgement latencies of recent transactions, in microseconds.
    fn latencies_us(&self) -> Vec<u64>;

    /// The end LSN of the newest transaction acknowledged along with all earlier ones.
    fn acked_lsn(&self) -> Lsn {
        Lsn(self.metrics().acked_lsn())
    }

    /// Makes sure the topics exist before their first event.
    fn create_topics(
        &self,
        _topics: &[String],
    ) -> impl Future<Output = Result<(), SinkError>> + Send {
        async { Ok(()) }
    }

    /// Where the records of events too large for the destination go, if anywhere; it must
    /// exist like the tables' topics.
    fn dead_letter_topic(&self) -> Option<&str> {
        None
    }

    /// How long an event can take before it is acknowledged or given up on.
    fn delivery_deadline(&self) -> Duration {
        Duration::from_secs(30)
    }

    /// Asks the destination to send what it holds now rather than after lingering.
    fn send_now(&self) {}

    /// Waits until every transaction up to `target` is acknowledged, a delivery has failed,
    /// or `timeout` has passed; true only in the first case. The wait does not block the
    /// runtime.
    fn drain(&mut self, target: Lsn, timeout: Duration) -> impl Future<Output = bool> + Send {
        async move {
            self.send_now();
            let deadline = tokio::time::Instant::now() + timeout;
            while self.acked_lsn() < target
                && tokio::time::Instant::now() < deadline
                && self.failure().is_none()
            {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            self.acked_lsn() >= target && self.failure().is_none()
        }
    }
}
