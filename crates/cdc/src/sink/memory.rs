//! A destination in memory, for tests of cdc's loop without Kafka: each event waits,
//! unacknowledged, until the test acknowledges or fails it, in any order; or every event is
//! acknowledged as it comes. Acknowledgements go through the same ledger as Kafka's, so the
//! rule of what may be confirmed to Postgres is the one the Kafka sink lives by.

use std::sync::{Arc, Mutex, MutexGuard};

use walflow_pgoutput::Lsn;

use super::ledger::{Acks, Deliveries};
use super::{DeliveryFailure, EventSink, SinkError};
use crate::envelope::ChangeEvent;
use crate::metrics::CdcMetrics;

pub struct MemorySink {
    acks: Acks,
    kafka: MemoryKafka,
}

/// The test's side of a [`MemorySink`]: what is waiting, what was acknowledged, and the
/// switches that make the destination misbehave.
#[derive(Clone)]
pub struct MemoryKafka {
    state: Arc<Mutex<MemoryState>>,
}

struct MemoryState {
    deliveries: Deliveries,
    pending: Vec<Pending>,
    acknowledged: Vec<ChangeEvent>,
    acknowledged_count: u64,
    keep_events: bool,
    acknowledge_at_once: bool,
    refuse_sends: Option<String>,
    backlog_at: Option<usize>,
}

struct Pending {
    transaction: u64,
    bytes: u64,
    event: ChangeEvent,
}

impl MemoryState {
    /// Reports one event delivered, counts it, and keeps it if asked to.
    fn deliver(&mut self, pending: Pending) {
        self.deliveries
            .delivered(pending.transaction, pending.bytes);
        self.acknowledged_count += 1;
        if self.keep_events {
            self.acknowledged.push(pending.event);
        }
    }
}

impl MemorySink {
    /// A sink whose events wait for the test to acknowledge them.
    pub fn new() -> (MemorySink, MemoryKafka) {
        let acks = Acks::new(Arc::<CdcMetrics>::default());
        let kafka = MemoryKafka {
            state: Arc::new(Mutex::new(MemoryState {
                deliveries: acks.deliveries(),
                pending: Vec::new(),
                acknowledged: Vec::new(),
                acknowledged_count: 0,
                keep_events: true,
                acknowledge_at_once: false,
                refuse_sends: None,
                backlog_at: None,
            })),
        };
        (
            MemorySink {
                acks,
                kafka: kafka.clone(),
            },
            kafka,
        )
    }
}

impl MemoryKafka {
    fn state(&self) -> MutexGuard<'_, MemoryState> {
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Events sent and neither acknowledged nor failed yet, in the order they were sent.
    pub fn pending(&self) -> Vec<ChangeEvent> {
        self.state()
            .pending
            .iter()
            .map(|pending| pending.event.clone())
            .collect()
    }

    /// Acknowledges the `index`th of the pending events.
    pub fn acknowledge(&self, index: usize) {
        let mut state = self.state();
        let pending = state.pending.remove(index);
        state.deliver(pending);
    }

    /// Acknowledges every pending event, the newest first.
    pub fn acknowledge_newest_first(&self) {
        while let Some(last) = self.state().pending.len().checked_sub(1) {
            self.acknowledge(last);
        }
    }

    /// Fails the `index`th of the pending events, as a delivery Kafka gave up on.
    pub fn fail(&self, index: usize, reason: &str) {
        let mut state = self.state();
        let pending = state.pending.remove(index);
        state
            .deliveries
            .failed(pending.transaction, pending.bytes, reason);
    }

    /// Acknowledged events, in the order they were acknowledged (none kept after
    /// [`MemoryKafka::keep_events`]`(false)`).
    pub fn acknowledged(&self) -> Vec<ChangeEvent> {
        self.state().acknowledged.clone()
    }

    pub fn acknowledged_count(&self) -> u64 {
        self.state().acknowledged_count
    }

    /// Whether acknowledged events are kept (for [`MemoryKafka::acknowledged`]) or only
    /// counted.
    pub fn keep_events(&self, keep: bool) {
        self.state().keep_events = keep;
    }

    /// From now on every event is acknowledged as it is sent.
    pub fn acknowledge_at_once(&self) {
        self.acknowledge_newest_first();
        self.state().acknowledge_at_once = true;
    }

    /// Sends fail with this reason, as a producer that refuses events.
    pub fn refuse_sends(&self, reason: &str) {
        self.state().refuse_sends = Some(reason.to_owned());
    }

    /// The sink reports a backlog while this many events or more are pending.
    pub fn backlog_at(&self, events: Option<usize>) {
        self.state().backlog_at = events;
    }
}

impl EventSink for MemorySink {
    async fn send(&mut self, event: &ChangeEvent) -> Result<(), SinkError> {
        let bytes = (event.key.as_ref().map_or(0, Vec::len)
            + event.value.as_ref().map_or(0, Vec::len)) as u64;
        let mut state = self.kafka.state();
        if let Some(reason) = &state.refuse_sends {
            return Err(SinkError::SendRefused(reason.clone()));
        }
        self.acks
            .metrics()
            .record_event(&event.topic, bytes as usize);
        let transaction = self.acks.sending(bytes);
        let pending = Pending {
            transaction,
            bytes,
            event: event.clone(),
        };
        if state.acknowledge_at_once {
            state.deliver(pending);
        } else {
            state.pending.push(pending);
        }
        Ok(())
    }

    async fn commit(&mut self, end_lsn: Lsn, commit_time_us: Option<i64>) -> Result<(), SinkError> {
        self.acks.commit(end_lsn, commit_time_us);
        Ok(())
    }

    fn abandon_open_transaction(&mut self) {
        self.acks.abandon_open_transaction();
    }

    /// As a new producer: what was pending is gone.
    fn reset(&mut self) -> Result<(), SinkError> {
        self.acks.reset();
        let mut state = self.kafka.state();
        state.deliveries = self.acks.deliveries();
        state.pending.clear();
        Ok(())
    }

    fn failure(&self) -> Option<DeliveryFailure> {
        self.acks.failure()
    }

    fn backlogged(&self) -> bool {
        let state = self.kafka.state();
        state
            .backlog_at
            .is_some_and(|limit| state.pending.len() >= limit)
    }

    fn metrics(&self) -> &Arc<CdcMetrics> {
        self.acks.metrics()
    }

    fn latencies_us(&self) -> Vec<u64> {
        self.acks.latencies_us()
    }
}
