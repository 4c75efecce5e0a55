//! The Kafka source: a pipeline's consumer, assigned every partition of its topics at the
//! checkpoint's offsets, read in micro-batches bounded by events and by time, each record
//! decoded by every source reading its topic (JSON, or Avro with writer schemas from the
//! registry).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use rdkafka::consumer::{CommitMode, Consumer};
use rdkafka::error::KafkaError;
use rdkafka::message::Message;
use rdkafka::types::RDKafkaErrorCode;
use rdkafka::{ClientConfig, Offset, TopicPartitionList};
use tokio::sync::watch;
use walflow_tls::kafka::KafkaConnection;

use super::{sleep_or_stop, BatchRead, ChangeSource, PartitionKey, ReadBatch, Record, RETRY};
use crate::avro::SchemaFetchError;
use crate::consumer::{commit_offsets, PipelineConsumer, PipelineConsumerContext};
use crate::decode::{decode, DecodeError};
use crate::definition::{SourceFormat, SourceTable};
use crate::metrics::ProcessMetrics;
use crate::pipeline::Pipeline;
use crate::runner::{ProcessError, ProcessOptions};

/// The consumer every pipeline reads with (and the benchmark's consume+decode ceiling, so
/// the two compare like with like). Offsets are committed by the checkpoint, never
/// automatically. The prefetch queue is held small (20,000 messages, 16 MB, against
/// librdkafka's 100,000 and 64 MB) to bound memory, and refilled 10 ms after it drains below
/// that instead of librdkafka's 1 s: with the default pause, a queue that fills pauses the
/// fetcher for a second at a time and one partition tops out near 50,000 events/s
/// (docs/benchmarks.md). An offset Kafka no longer has is an error (`auto.offset.reset =
/// error`), never a silent jump to the first one left: the events in between would be missing
/// from the state for good ([`OffsetGap`](crate::consumer::OffsetGap)).
pub fn consumer_config(kafka: &KafkaConnection, group: &str) -> ClientConfig {
    let mut config = kafka.client_config();
    config
        .set("group.id", group)
        .set("enable.auto.commit", "false")
        .set("enable.auto.offset.store", "false")
        .set("auto.offset.reset", "error")
        .set("fetch.wait.max.ms", "20")
        .set("queued.min.messages", "20000")
        .set("queued.max.messages.kbytes", "16384")
        .set("fetch.queue.backoff.ms", "10");
    config
}

/// A pipeline's topics in Kafka, read by its consumer group.
pub struct KafkaSource {
    consumer: Arc<PipelineConsumer>,
    sources: Arc<Vec<SourceTable>>,
    schema_registry_url: Option<String>,
    batch_max_events: usize,
    batch_max_wait: Duration,
    pipeline: String,
    stop: watch::Receiver<bool>,
}

impl KafkaSource {
    pub fn new(
        pipeline: &Pipeline,
        options: &ProcessOptions,
        metrics: Arc<ProcessMetrics>,
        stop: watch::Receiver<bool>,
    ) -> Result<KafkaSource, ProcessError> {
        let name = &pipeline.definition.name;
        let group = pipeline.definition.consumer_group();
        let consumer: PipelineConsumer = consumer_config(&options.kafka, &group)
            .create_with_context(PipelineConsumerContext::new(name, &group, metrics))?;
        Ok(KafkaSource {
            consumer: Arc::new(consumer),
            sources: Arc::new(pipeline.definition.sources.clone()),
            schema_registry_url: options.schema_registry_url.clone(),
            batch_max_events: options.batch_max_events,
            batch_max_wait: options.batch_max_wait,
            pipeline: name.clone(),
            stop,
        })
    }

    fn fail(&self, message: String) -> ProcessError {
        ProcessError::Pipeline {
            pipeline: self.pipeline.clone(),
            message,
        }
    }
}

impl ChangeSource for KafkaSource {
    type Reader = KafkaReader;

    async fn partitions(&self, topic: &str) -> Result<Vec<i32>, ProcessError> {
        Ok(partitions_of(&self.consumer, topic).await?)
    }

    async fn offsets_held(&self, topic: &str, partition: i32) -> Result<(i64, i64), ProcessError> {
        Ok(watermarks(&self.consumer, topic, partition).await?)
    }

    fn reader(
        &self,
        from: &BTreeMap<PartitionKey, Option<i64>>,
    ) -> Result<KafkaReader, ProcessError> {
        let mut assignment = TopicPartitionList::new();
        for ((topic, partition), next) in from {
            let offset = match next {
                Some(next) => Offset::Offset(*next),
                None => Offset::Beginning,
            };
            assignment.add_partition_offset(topic, *partition, offset)?;
        }
        self.consumer.assign(&assignment)?;
        let avro = if self
            .sources
            .iter()
            .any(|source| source.format == SourceFormat::DebeziumAvro)
        {
            let url = self.schema_registry_url.as_deref().ok_or_else(|| {
                self.fail(
                    "a source reads format 'debezium_avro': set WALFLOW_SCHEMA_REGISTRY_URL (or \
                     --schema-registry-url) to the schema registry"
                        .into(),
                )
            })?;
            Some(crate::avro::WriterSchemas::new(url).map_err(|source| {
                ProcessError::SchemaRegistry {
                    pipeline: self.pipeline.clone(),
                    source,
                }
            })?)
        } else {
            None
        };
        Ok(KafkaReader {
            avro,
            consumer: self.consumer.clone(),
            sources: self.sources.clone(),
            batch_max_events: self.batch_max_events,
            batch_max_wait: self.batch_max_wait,
            pipeline: self.pipeline.clone(),
            stop: self.stop.clone(),
        })
    }

    fn commit(&self, offsets: &BTreeMap<PartitionKey, i64>, wait: bool) {
        let mode = if wait {
            CommitMode::Sync
        } else {
            CommitMode::Async
        };
        commit_offsets(&self.consumer, offsets, mode);
    }

    fn lag(&self, offsets: &BTreeMap<PartitionKey, i64>) -> u64 {
        let mut lag = 0u64;
        for ((topic, partition), &next) in offsets {
            let high = tokio::task::block_in_place(|| {
                self.consumer
                    .fetch_watermarks(topic, *partition, Duration::from_secs(1))
            });
            if let Ok((_, high)) = high {
                lag += (high - next).max(0) as u64;
            }
        }
        lag
    }
}

/// Reads micro-batches from the consumer, bounded by events and by time, and decodes them.
pub struct KafkaReader {
    /// Writer schemas, when a source reads Avro.
    avro: Option<crate::avro::WriterSchemas>,
    consumer: Arc<PipelineConsumer>,
    sources: Arc<Vec<SourceTable>>,
    batch_max_events: usize,
    batch_max_wait: Duration,
    pipeline: String,
    stop: watch::Receiver<bool>,
}

impl KafkaReader {
    /// An Avro event decoded for `source`; its writer schema is fetched on first sight, and
    /// a registry that cannot be reached is waited for (the event is not given up), while a
    /// schema the registry does not have makes the event a dead letter.
    async fn decode_avro(
        &mut self,
        source: &SourceTable,
        payload: &[u8],
    ) -> Result<Option<crate::decode::DecodedEvent>, DecodeError> {
        let Some(schemas) = self.avro.as_mut() else {
            return Err(DecodeError::NoSchemaRegistry);
        };
        let id = crate::avro::WriterSchemas::schema_id(payload)?;
        let mut backoff = RETRY.backoff();
        loop {
            let error = match schemas.fetch(id).await {
                Ok(()) => break,
                // Waiting never mends an unknown id or a schema that is not Avro: the event
                // goes to the dead letters and the partition flows on.
                Err(SchemaFetchError::Unavailable(error)) => error,
                Err(refused) => return Err(refused.into()),
            };
            let wait = backoff.next_delay();
            tracing::warn!(pipeline = %self.pipeline, %error, retry_in_ms = wait.as_millis() as u64, "cannot fetch an Avro writer schema; retrying");
            if sleep_or_stop(wait, &mut self.stop).await {
                return Err(DecodeError::StoppedFetchingSchema { id, source: error });
            }
        }
        schemas.decode(source, payload).map(Some)
    }
}

impl BatchRead for KafkaReader {
    async fn read(&mut self) -> ReadBatch {
        let mut batch = ReadBatch::new(*self.stop.borrow());
        let deadline = tokio::time::Instant::now() + self.batch_max_wait;
        // Messages borrow the consumer, not the reader, which Avro sources need mutably.
        let consumer = self.consumer.clone();
        while batch.events < self.batch_max_events && !batch.stopping {
            let message = tokio::select! {
                message = tokio::time::timeout_at(deadline, consumer.recv()) => message,
                _ = self.stop.changed() => { batch.stopping = true; break; }
            };
            let message = match message {
                Err(_) => break,
                Ok(Err(KafkaError::MessageConsumption(RDKafkaErrorCode::AutoOffsetReset))) => {
                    batch.offset_out_of_range = true;
                    break;
                }
                Ok(Err(error)) => {
                    tracing::warn!(pipeline = %self.pipeline, %error, "Kafka consumer error; retrying");
                    continue;
                }
                Ok(Ok(message)) => message,
            };
            let record = Record {
                topic: message.topic(),
                partition: message.partition(),
                offset: message.offset(),
                key: message.key(),
                payload: message.payload(),
            };
            batch.count(&record);
            let sources = self.sources.clone();
            for (source_index, source) in sources.iter().enumerate() {
                if source.topic != record.topic {
                    continue;
                }
                let decoded = match (source.format, record.payload) {
                    (SourceFormat::DebeziumAvro, Some(payload)) => {
                        self.decode_avro(source, payload).await
                    }
                    _ => decode(source, record.payload),
                };
                batch.add(source_index, source, &record, decoded);
            }
        }
        batch
    }
}

async fn partitions_of(consumer: &PipelineConsumer, topic: &str) -> Result<Vec<i32>, KafkaError> {
    let metadata = tokio::task::block_in_place(|| {
        consumer.fetch_metadata(Some(topic), Duration::from_secs(5))
    })?;
    Ok(metadata
        .topics()
        .iter()
        .filter(|found| found.name() == topic && found.error().is_none())
        .flat_map(|found| found.partitions().iter().map(|partition| partition.id()))
        .collect())
}

async fn watermarks(
    consumer: &PipelineConsumer,
    topic: &str,
    partition: i32,
) -> Result<(i64, i64), KafkaError> {
    tokio::task::block_in_place(|| {
        consumer.fetch_watermarks(topic, partition, Duration::from_secs(10))
    })
}
