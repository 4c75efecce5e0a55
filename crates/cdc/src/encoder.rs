//! How a change becomes a Kafka event, chosen once per run: JSON (the Debezium envelope) or
//! Avro (schemas in the registry, the Confluent wire format). The stream, the snapshot and
//! the benchmarks all hand it one [`Change`].

use walflow_pgoutput::Relation;

use crate::avro_events::{AvroEventError, AvroEvents};
use crate::envelope::{self, Change, ChangeEvent};

pub enum EventEncoder {
    Json,
    Avro(AvroEvents),
}

impl EventEncoder {
    /// Makes the table ready for events of its current shape: for Avro, its schemas are
    /// registered (and checked against the subject's rule); JSON needs nothing.
    pub async fn prepare(
        &mut self,
        relation: &Relation,
        topic_prefix: &str,
    ) -> Result<(), AvroEventError> {
        match self {
            EventEncoder::Json => Ok(()),
            EventEncoder::Avro(avro) => avro.prepare(relation, topic_prefix).await,
        }
    }

    pub fn encode(&self, change: &Change<'_>) -> Result<ChangeEvent, AvroEventError> {
        match self {
            EventEncoder::Json => Ok(envelope::row_event(change)),
            EventEncoder::Avro(avro) => avro.row_event(change),
        }
    }
}
