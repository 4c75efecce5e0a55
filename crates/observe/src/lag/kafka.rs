//! The Kafka hop's lag: per partition of a processing pipeline's topics, the log-end offset
//! minus the offset its consumer group committed (walflow process commits the offsets of
//! each checkpoint). A group that never committed is behind by everything in the log.

use std::time::Duration;

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::{Offset, TopicPartitionList};
use serde::Serialize;

/// A consumer group and the topics it reads.
#[derive(Debug, Clone)]
pub struct ConsumerGroup {
    pub group: String,
    pub topics: Vec<String>,
}

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct PartitionLag {
    pub group: String,
    pub topic: String,
    pub partition: i32,
    pub end_offset: i64,
    /// The group's committed offset (the next to read); `None` when it has none.
    pub committed_offset: Option<i64>,
    /// Events in the log the group has not processed.
    pub lag: u64,
}

/// Reads committed and end offsets for every partition of every group's topics. Blocking
/// (librdkafka's calls are): run it on a blocking thread.
pub fn consumer_lag(
    kafka: &walflow_tls::kafka::KafkaConnection,
    groups: &[ConsumerGroup],
    timeout: Duration,
) -> Result<Vec<PartitionLag>, rdkafka::error::KafkaError> {
    let mut lags = Vec::new();
    for group in groups {
        let consumer: BaseConsumer = kafka
            .client_config()
            .set("group.id", &group.group)
            .set("enable.auto.commit", "false")
            .create()?;
        let mut partitions = TopicPartitionList::new();
        for topic in &group.topics {
            let metadata = consumer.fetch_metadata(Some(topic), timeout)?;
            for found in metadata.topics() {
                if found.name() != topic || found.error().is_some() {
                    continue;
                }
                for partition in found.partitions() {
                    partitions.add_partition(topic, partition.id());
                }
            }
        }
        if partitions.count() == 0 {
            continue;
        }
        let committed = consumer.committed_offsets(partitions, timeout)?;
        for element in committed.elements() {
            let (low, high) =
                consumer.fetch_watermarks(element.topic(), element.partition(), timeout)?;
            let committed_offset = match element.offset() {
                Offset::Offset(offset) => Some(offset),
                _ => None,
            };
            let from = committed_offset.unwrap_or(low).max(low);
            lags.push(PartitionLag {
                group: group.group.clone(),
                topic: element.topic().to_owned(),
                partition: element.partition(),
                end_offset: high,
                committed_offset,
                lag: (high - from).max(0) as u64,
            });
        }
    }
    Ok(lags)
}
