//! Dead letters: events a source could not decode, and rows too late for their window, sent
//! to a topic of their own with the reason, so the pipeline keeps going and nothing is
//! silently dropped.

use std::time::Duration;

use rdkafka::error::KafkaError;
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord};

use crate::definition::PipelineDefinition;
use crate::operators::window::LateEvent;

/// A record for the dead-letter or late-events topic: what was read (or the late row), and
/// why it could not be used, which travels in the `walflow.error` header.
#[derive(Debug, Clone, PartialEq)]
pub struct DeadLetter {
    /// The source topic it was read from.
    pub topic: String,
    /// Its partition and offset there; -1 for a late row (not one record).
    pub partition: i32,
    pub offset: i64,
    pub key: Option<Vec<u8>>,
    pub payload: Option<Vec<u8>>,
    pub reason: String,
}

/// A late event as a record of the late-events topic: the row as JSON, and why it is late
/// in the `walflow.error` header.
pub fn late_letter(definition: &PipelineDefinition, sink: &str, event: &LateEvent) -> DeadLetter {
    let time = |micros: i64| crate::value::Value::Timestamp(micros).to_string();
    let row: serde_json::Map<String, serde_json::Value> = event
        .column_names
        .iter()
        .zip(&event.row)
        .map(|(name, value)| (name.clone(), crate::value::value_to_json(value)))
        .collect();
    let payload = serde_json::json!({
        "sink": sink,
        "row": row,
        "window_start": time(event.window_start_us),
        "window_end": time(event.window_end_us),
        "watermark": time(event.watermark_us),
    });
    DeadLetter {
        topic: definition
            .source(&event.source)
            .map(|source| source.topic.clone())
            .unwrap_or_default(),
        partition: -1,
        offset: -1,
        key: None,
        payload: Some(payload.to_string().into_bytes()),
        reason: format!(
            "late for window [{}, {}) of sink {sink}: the watermark was already {}",
            time(event.window_start_us),
            time(event.window_end_us),
            time(event.watermark_us)
        ),
    }
}

/// Sends the letters to `topic`, with headers naming the pipeline and where each was read,
/// and waits for Kafka to acknowledge them all.
pub async fn send_dead_letters(
    producer: &FutureProducer,
    topic: &str,
    pipeline: &str,
    letters: &[DeadLetter],
) -> Result<(), KafkaError> {
    let mut deliveries = Vec::new();
    for letter in letters {
        let partition = letter.partition.to_string();
        let offset = letter.offset.to_string();
        let headers = OwnedHeaders::new()
            .insert(Header {
                key: "walflow.error",
                value: Some(letter.reason.as_str()),
            })
            .insert(Header {
                key: "walflow.pipeline",
                value: Some(pipeline),
            })
            .insert(Header {
                key: "walflow.source.topic",
                value: Some(letter.topic.as_str()),
            })
            .insert(Header {
                key: "walflow.source.partition",
                value: Some(partition.as_str()),
            })
            .insert(Header {
                key: "walflow.source.offset",
                value: Some(offset.as_str()),
            });
        let mut record: FutureRecord<'_, [u8], [u8]> = FutureRecord::to(topic).headers(headers);
        if let Some(key) = &letter.key {
            record = record.key(key.as_slice());
        }
        if let Some(payload) = &letter.payload {
            record = record.payload(payload.as_slice());
        }
        deliveries.push(producer.send(record, Duration::from_secs(30)));
    }
    for delivery in futures_util::future::join_all(deliveries).await {
        delivery.map_err(|(error, _)| error)?;
    }
    Ok(())
}
