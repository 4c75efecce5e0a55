//! Runs one pipeline file: Kafka consumer -> decode -> operators -> Cassandra, in
//! micro-batches bounded by events and by time, with checkpoints of offsets and state
//! together. A batch's offsets only enter a checkpoint after its rows are in Cassandra and
//! its dead letters are acknowledged by Kafka, so nothing accepted is lost; Cassandra or
//! Kafka trouble makes the batch wait and retry, holding its position.

use std::collections::BTreeMap;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use rdkafka::consumer::{CommitMode, Consumer};
use rdkafka::error::KafkaError;
use rdkafka::message::{Header, Message, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::types::RDKafkaErrorCode;
use rdkafka::{ClientConfig, Offset, TopicPartitionList};
use tokio::sync::watch;
use walflow_retry::RetryPolicy;

use crate::checkpoint::{self, Checkpoint, CheckpointError};
use crate::consumer::{commit_offsets, OffsetGap, PipelineConsumer, PipelineConsumerContext};
use crate::decode::decode;
use crate::definition::{
    DefinitionError, PipelineDefinition, SinkTable, SourceFormat, SourceTable,
};
use crate::live_edit::{state_fits, FileWatch};
use crate::metrics::unix_ms;
pub use crate::metrics::{ProcessMetrics, LATENCY_BUCKETS};
use crate::operators::window::LateEvent;
pub use crate::pipeline::{BatchChange, BatchOutput, Pipeline};
use crate::sink::{CassandraSink, SinkDelta, SinkError};

#[derive(Debug, Clone)]
pub struct ProcessOptions {
    pub brokers: String,
    pub cassandra_nodes: Vec<String>,
    pub checkpoint_dir: std::path::PathBuf,
    pub checkpoint_interval: Duration,
    pub batch_max_events: usize,
    pub batch_max_wait: Duration,
    /// Dead-letter topic; `None`: `walflow.dead_letter.<pipeline>`.
    pub dead_letter_topic: Option<String>,
    /// Late-events topic of windowed queries; `None`: `walflow.late.<pipeline>`.
    pub late_topic: Option<String>,
    /// The schema registry, for sources with `format = 'debezium_avro'`.
    pub schema_registry_url: Option<String>,
    /// Forget the checkpoint, empty the sink tables and start from the topics' beginning.
    pub rebuild: bool,
    /// Rebuild (as `rebuild`) only when the checkpoint does not fit: the pipeline file
    /// changed since it was taken, or it is from another walflow version or damaged.
    pub rebuild_if_changed: bool,
    /// Stop once every partition is read up to where it ended at start (benchmarks, tests).
    pub stop_when_caught_up: bool,
    pub cassandra_concurrency: usize,
    /// The CQL replication map of sink keyspaces created by process.
    pub cassandra_replication: String,
}

impl ProcessOptions {
    pub fn new(brokers: &str, cassandra_nodes: Vec<String>) -> ProcessOptions {
        ProcessOptions {
            brokers: brokers.to_owned(),
            cassandra_nodes,
            checkpoint_dir: ".walflow/checkpoints".into(),
            checkpoint_interval: Duration::from_secs(10),
            batch_max_events: 10_000,
            batch_max_wait: Duration::from_millis(50),
            dead_letter_topic: None,
            late_topic: None,
            schema_registry_url: None,
            rebuild: false,
            rebuild_if_changed: false,
            stop_when_caught_up: false,
            cassandra_concurrency: 64,
            cassandra_replication: crate::sink::DEFAULT_KEYSPACE_REPLICATION.to_owned(),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ProcessError {
    #[error(transparent)]
    Definition(#[from] DefinitionError),
    #[error(transparent)]
    Checkpoint(#[from] CheckpointError),
    #[error(transparent)]
    Sink(#[from] SinkError),
    #[error("Kafka: {0}")]
    Kafka(#[from] KafkaError),
    #[error("pipeline {pipeline}: {message}")]
    Pipeline { pipeline: String, message: String },
}

#[derive(Debug, Clone, Default)]
pub struct RunSummary {
    pub events: u64,
    pub dead_letters: u64,
    pub rows_written: u64,
    pub late_events: u64,
    /// Changelog events dropped as already seen.
    pub duplicates: u64,
}

/// The consumer every pipeline reads with (and the benchmark's consume+decode ceiling, so
/// the two compare like with like). Offsets are committed by the checkpoint, never
/// automatically. The prefetch queue is held small (20,000 messages, 16 MB, against
/// librdkafka's 100,000 and 64 MB) to bound memory, and refilled 10 ms after it drains below
/// that instead of librdkafka's 1 s: with the default pause, a queue that fills pauses the
/// fetcher for a second at a time and one partition tops out near 50,000 events/s
/// (docs/benchmarks.md). An offset Kafka no longer has is an error (`auto.offset.reset =
/// error`), never a silent jump to the first one left: the events in between would be missing
/// from the state for good ([`OffsetGap`]).
pub fn consumer_config(brokers: &str, group: &str) -> ClientConfig {
    let mut config = ClientConfig::new();
    config
        .set("bootstrap.servers", brokers)
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

/// Waiting for Cassandra, a topic, the schema registry, or a write to succeed, for as long
/// as it takes (or until stopped).
const RETRY: RetryPolicy =
    RetryPolicy::forever(Duration::from_millis(200), Duration::from_secs(10));

pub async fn run(
    pipeline: &Pipeline,
    options: &ProcessOptions,
    metrics: Arc<ProcessMetrics>,
    mut stop: watch::Receiver<bool>,
) -> Result<RunSummary, ProcessError> {
    let name = pipeline.definition.name.clone();
    let fail = |message: String| ProcessError::Pipeline {
        pipeline: name.clone(),
        message,
    };
    let checkpoint_path = checkpoint::path_for(&options.checkpoint_dir, &name);
    // Held until the pipeline stops: a second process on it would overwrite its checkpoint.
    let _lock = checkpoint::lock(&options.checkpoint_dir, &name)?;

    // Cassandra first: its tables must exist before anything is read.
    let mut backoff = RETRY.backoff();
    let mut sink = loop {
        match CassandraSink::connect(
            &options.cassandra_nodes,
            options.cassandra_concurrency,
            &options.cassandra_replication,
        )
        .await
        {
            Ok(sink) => break sink,
            Err(error) => {
                let wait = backoff.next_delay();
                tracing::warn!(pipeline = %name, %error, retry_in_ms = wait.as_millis() as u64, "waiting for Cassandra");
                if sleep_or_stop(wait, &mut stop).await {
                    return Ok(RunSummary::default());
                }
            }
        }
    };
    for query in &pipeline.queries {
        sink.prepare(&query.sink).await?;
    }

    // Kafka: every partition of every source topic (read from the checkpoint's offsets
    // below).
    let group = pipeline.definition.consumer_group();
    let consumer: PipelineConsumer = consumer_config(&options.brokers, &group)
        .create_with_context(PipelineConsumerContext::new(&name, &group, metrics.clone()))?;
    let topics = pipeline.definition.topics();
    let mut partitions: Vec<(String, i32)> = Vec::new();
    for topic in &topics {
        let mut backoff = RETRY.backoff();
        loop {
            let found = partitions_of(&consumer, topic).await;
            match found {
                Ok(list) if !list.is_empty() => {
                    partitions.extend(list.into_iter().map(|partition| (topic.clone(), partition)));
                    break;
                }
                Ok(_) | Err(_) => {
                    tracing::warn!(pipeline = %name, %topic, "waiting for the topic to exist (is walflow cdc running?)");
                    if sleep_or_stop(backoff.next_delay(), &mut stop).await {
                        return Ok(RunSummary::default());
                    }
                }
            }
        }
    }
    let mut rebuild = options.rebuild;
    let saved = match checkpoint::load(&checkpoint_path) {
        Ok(Some(saved))
            if saved.fingerprint != checkpoint::fingerprint(&pipeline.definition.text) =>
        {
            let message = format!(
                "{} changed since its checkpoint {} was taken, and its state may no longer fit",
                pipeline.definition.path.display(),
                checkpoint_path.display()
            );
            if !(rebuild || options.rebuild_if_changed) {
                return Err(fail(format!(
                    "{message}; run again with --rebuild to empty its sink tables and rebuild \
                     them from the start of the topics"
                )));
            }
            tracing::warn!(pipeline = %name, "{message}: rebuilding");
            rebuild = true;
            None
        }
        Err(error @ CheckpointError::Corrupt { .. }) if options.rebuild_if_changed => {
            tracing::warn!(pipeline = %name, %error, "the checkpoint cannot be used: rebuilding");
            rebuild = true;
            None
        }
        Err(error) if !rebuild => return Err(error.into()),
        Err(_) => None,
        Ok(saved) => saved.filter(|_| !rebuild),
    };
    // What Kafka still holds of each partition, before anything is emptied.
    let mut retained = BTreeMap::new();
    for (topic, partition) in &partitions {
        let range = watermarks(&consumer, topic, *partition).await?;
        retained.insert((topic.clone(), *partition), range);
    }
    let shortened: Vec<(String, i32, i64)> = retained
        .iter()
        .filter(|(_, &(low, _))| low > 0)
        .map(|((topic, partition), &(low, _))| (topic.clone(), *partition, low))
        .collect();
    if rebuild && !shortened.is_empty() {
        return Err(fail(crate::consumer::rebuild_refused(&shortened)));
    }
    if let Some(saved) = &saved {
        let gaps: Vec<OffsetGap> = saved
            .offsets
            .iter()
            .filter_map(|((topic, partition), &next)| {
                let range = retained.get(&(topic.clone(), *partition))?;
                OffsetGap::of(topic, *partition, next, *range)
            })
            .collect();
        if !gaps.is_empty() {
            return Err(fail(crate::consumer::resume_refused(&gaps)));
        }
    }
    if rebuild {
        checkpoint::remove(&checkpoint_path)?;
    }
    let mut state = match saved {
        Some(saved) => {
            tracing::info!(pipeline = %name, offsets = ?saved.offsets, "resuming from the checkpoint");
            saved
        }
        None => {
            for (topic, partition, low) in &shortened {
                tracing::warn!(pipeline = %name, %topic, partition, first_offset = low, "first start: the partition's records before its first offset were deleted by retention, so the sink tables will hold only the changes still retained");
            }
            if rebuild {
                for query in &pipeline.queries {
                    let mut delta = SinkDelta::default();
                    delta.truncate();
                    sink.write(&query.sink, &delta).await?;
                }
                tracing::info!(pipeline = %name, "rebuilding from the start of the topics");
            }
            pipeline.fresh_checkpoint()
        }
    };

    let mut assignment = TopicPartitionList::new();
    for (topic, partition) in &partitions {
        let offset = match state.offsets.get(&(topic.clone(), *partition)) {
            Some(&next) => Offset::Offset(next),
            None => Offset::Beginning,
        };
        assignment.add_partition_offset(topic, *partition, offset)?;
    }
    consumer.assign(&assignment)?;
    let stop_at: Option<BTreeMap<(String, i32), i64>> = if options.stop_when_caught_up {
        let mut ends = BTreeMap::new();
        for (topic, partition) in &partitions {
            let (_, high) = watermarks(&consumer, topic, *partition).await?;
            ends.insert((topic.clone(), *partition), high);
        }
        Some(ends)
    } else {
        None
    };

    let dead_letter_topic = options
        .dead_letter_topic
        .clone()
        .unwrap_or_else(|| format!("walflow.dead_letter.{name}"));
    let late_topic = options
        .late_topic
        .clone()
        .unwrap_or_else(|| format!("walflow.late.{name}"));
    let producer: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", &options.brokers)
        .set("enable.idempotence", "true")
        .set("acks", "all")
        .create()?;

    let mut summary = RunSummary::default();
    let mut last_checkpoint = Instant::now();
    let mut dirty = false;
    let sink = Arc::new(sink);
    let sinks: Arc<Vec<SinkTable>> = Arc::new(
        pipeline
            .queries
            .iter()
            .map(|query| query.sink.clone())
            .collect(),
    );
    let mut in_flight: Option<tokio::task::JoinHandle<Option<BatchWrite>>> = None;
    // Edits of the file take over at a batch boundary (live_edit.rs); not while draining a
    // topic to its end (benchmarks, tests that stop when caught up).
    let mut pipeline = pipeline.clone();
    let mut file_watch = (!options.stop_when_caught_up)
        .then(|| FileWatch::new(&pipeline.definition.path, &pipeline.definition.text));
    // How far the consumer has read (ahead of the checkpointed offsets while a batch is in
    // flight).
    let mut read_positions: BTreeMap<(String, i32), i64> = state.offsets.clone();
    tracing::info!(pipeline = %name, topics = ?topics, group = %group, dead_letter_topic = %dead_letter_topic, "processing");

    let avro_schemas = if pipeline
        .definition
        .sources
        .iter()
        .any(|source| source.format == SourceFormat::DebeziumAvro)
    {
        let url = options.schema_registry_url.as_deref().ok_or_else(|| {
            fail(
                "a source reads format 'debezium_avro': set WALFLOW_SCHEMA_REGISTRY_URL (or \
                 --schema-registry-url) to the schema registry"
                    .into(),
            )
        })?;
        Some(crate::avro::WriterSchemas::new(url).map_err(fail)?)
    } else {
        None
    };
    // Reading and decoding run on a task of their own, a batch ahead of the evaluation
    // below, so the two use both cores.
    let consumer = Arc::new(consumer);
    let (batch_sender, mut batches) = tokio::sync::mpsc::channel::<ReadBatch>(1);
    let reader = tokio::spawn(
        BatchReader {
            avro: avro_schemas,
            consumer: consumer.clone(),
            sources: Arc::new(pipeline.definition.sources.clone()),
            batch_max_events: options.batch_max_events,
            batch_max_wait: options.batch_max_wait,
            pipeline: name.clone(),
            stop: stop.clone(),
        }
        .run(batch_sender),
    );
    let _abort_reader = AbortOnDrop(reader);

    loop {
        let Some(read) = batches.recv().await else {
            return Err(fail("the Kafka reading task ended unexpectedly".into()));
        };
        if read.offset_out_of_range {
            // Retention deleted records the pipeline had not read yet (it lagged behind).
            let mut positions = read_positions.clone();
            for (key, next) in &read.positions {
                advance(&mut positions, key, *next);
            }
            let mut gaps = Vec::new();
            for ((topic, partition), &next) in &positions {
                if let Ok(range) = watermarks(&consumer, topic, *partition).await {
                    gaps.extend(OffsetGap::of(topic, *partition, next, range));
                }
            }
            return Err(fail(if gaps.is_empty() {
                "Kafka has no records at a partition's read position any more (deleted by \
                 retention?), and the pipeline does not jump over them"
                    .into()
            } else {
                crate::consumer::resume_refused(&gaps)
            }));
        }
        if file_watch.as_mut().is_some_and(FileWatch::changed) {
            let path = pipeline.definition.path.clone();
            match Pipeline::load(&path).await {
                Err(error) => {
                    tracing::error!(pipeline = %name, %error, "the edited pipeline file does not check; the running version keeps going")
                }
                Ok(edited) => match state_fits(&pipeline, &edited) {
                    Err(why) => tracing::warn!(
                        pipeline = %name,
                        "the edited pipeline's state does not fit the running one ({why}); the \
                         running version keeps going: run walflow process --rebuild {} to rebuild \
                         it from the start of the topics",
                        path.display()
                    ),
                    Ok(()) => {
                        // From a checkpoint of everything the old text did.
                        if !settle(in_flight.take(), &mut state, &mut summary, &metrics)
                            .await
                            .map_err(fail)?
                        {
                            return Ok(summary);
                        }
                        state.fingerprint = checkpoint::fingerprint(&edited.definition.text);
                        write_checkpoint(&checkpoint_path, &mut state, &metrics)?;
                        commit_offsets(&consumer, &state, CommitMode::Async);
                        dirty = false;
                        last_checkpoint = Instant::now();
                        if let Some(watch) = file_watch.as_mut() {
                            watch.switched_to(&edited.definition.text);
                        }
                        pipeline = edited;
                        tracing::info!(pipeline = %name, file = %path.display(), "switched to the edited pipeline file from its last checkpoint");
                    }
                },
            }
        }
        let evaluating = Instant::now();
        let ReadBatch {
            changes,
            positions,
            dead_letters,
            newest_commit_ms,
            commit_times_ms,
            events,
            stopping,
            offset_out_of_range: _,
        } = read;
        let BatchOutput {
            deltas,
            late,
            duplicates,
        } = pipeline
            .apply_batch(&mut state, changes, Some(unix_ms()))
            .map_err(fail)?;
        if duplicates > 0 {
            summary.duplicates += duplicates;
            tracing::info!(pipeline = %name, duplicates, "dropped changelog events already counted (cdc sent them again)");
        }
        let late: Vec<DeadLetter> = late
            .into_iter()
            .map(|(sink, event)| late_letter(&pipeline.definition, &sink, &event))
            .collect();
        if let Some(watermark) = state
            .watermarks
            .values()
            .filter(|watermark| watermark.is_set())
            .map(|watermark| watermark.current())
            .min()
        {
            metrics
                .watermark_ms
                .store((watermark / 1000).max(0) as u64, Ordering::Relaxed);
        }

        metrics
            .batch_evaluate_seconds
            .observe(evaluating.elapsed().as_secs_f64());

        // Batch N is written while batch N+1 is read and evaluated: wait for the previous
        // write first (so each key's writes stay in order), then start this one.
        let batch = BatchWrite {
            deltas,
            dead_letters,
            late,
            positions,
            commit_times_ms,
            newest_commit_ms,
            events,
        };
        for (key, next) in &batch.positions {
            advance(&mut read_positions, key, *next);
        }
        if !settle(in_flight.take(), &mut state, &mut summary, &metrics)
            .await
            .map_err(fail)?
        {
            return Ok(summary);
        }
        let writer = BatchWriter {
            sink: sink.clone(),
            sinks: sinks.clone(),
            producer: producer.clone(),
            dead_letter_topic: dead_letter_topic.clone(),
            late_topic: late_topic.clone(),
            pipeline: name.clone(),
            metrics: metrics.clone(),
            stop: stop.clone(),
        };
        in_flight = Some(tokio::spawn(writer.write(batch)));
        dirty |= events > 0;

        let caught_up = stop_at.as_ref().is_some_and(|ends| {
            ends.iter()
                .all(|(key, &end)| read_positions.get(key).copied().unwrap_or(0) >= end)
        });
        if stopping
            || caught_up
            || (dirty && last_checkpoint.elapsed() >= options.checkpoint_interval)
        {
            // A checkpoint pairs offsets with state: nothing may be in flight.
            if !settle(in_flight.take(), &mut state, &mut summary, &metrics)
                .await
                .map_err(fail)?
            {
                return Ok(summary);
            }
            if dirty {
                write_checkpoint(&checkpoint_path, &mut state, &metrics)?;
                // The last commit waits for Kafka: the process may exit right after.
                let mode = if stopping || caught_up {
                    CommitMode::Sync
                } else {
                    CommitMode::Async
                };
                commit_offsets(&consumer, &state, mode);
                metrics
                    .consumer_lag
                    .store(consumer_lag(&consumer, &state), Ordering::Relaxed);
                dirty = false;
            }
            last_checkpoint = Instant::now();
        }
        if stopping || caught_up {
            break;
        }
    }
    tracing::info!(pipeline = %name, events = summary.events, rows_written = summary.rows_written, dead_letters = summary.dead_letters, duplicates_dropped = summary.duplicates, "stopped");
    Ok(summary)
}

/// One micro-batch as read from Kafka and decoded, before any state is touched.
struct ReadBatch {
    /// Each decoded change with the index of its source, in the order read.
    changes: Vec<BatchChange>,
    positions: Vec<((String, i32), i64)>,
    dead_letters: Vec<DeadLetter>,
    newest_commit_ms: u64,
    commit_times_ms: Vec<u64>,
    events: usize,
    /// Asked to stop while reading: this is the last batch.
    stopping: bool,
    /// Kafka no longer has a partition's read position: the last batch, and the pipeline
    /// stops with the gap.
    offset_out_of_range: bool,
}

/// Reads micro-batches, bounded by events and by time, and decodes them.
struct BatchReader {
    /// Writer schemas, when a source reads Avro.
    avro: Option<crate::avro::WriterSchemas>,
    consumer: Arc<PipelineConsumer>,
    sources: Arc<Vec<SourceTable>>,
    batch_max_events: usize,
    batch_max_wait: Duration,
    pipeline: String,
    stop: watch::Receiver<bool>,
}

impl BatchReader {
    /// An Avro event decoded for `source`; its writer schema is fetched on first sight, and
    /// a registry that cannot be reached is waited for (the event is not given up), while a
    /// schema the registry does not have makes the event a dead letter.
    async fn decode_avro(
        &mut self,
        source: &SourceTable,
        payload: &[u8],
    ) -> Result<Option<crate::decode::DecodedEvent>, String> {
        let Some(schemas) = self.avro.as_mut() else {
            return Err("an Avro source without a schema registry".into());
        };
        let id = crate::avro::WriterSchemas::schema_id(payload)?;
        let mut backoff = RETRY.backoff();
        loop {
            let error = match schemas.fetch(id).await {
                Ok(()) => break,
                // Waiting never mends an unknown id or a schema that is not Avro: the event
                // goes to the dead letters and the partition flows on.
                Err(refused @ crate::avro::SchemaFetchError::Refused { .. }) => {
                    return Err(refused.to_string())
                }
                Err(crate::avro::SchemaFetchError::Unavailable(error)) => error,
            };
            let wait = backoff.next_delay();
            tracing::warn!(pipeline = %self.pipeline, %error, retry_in_ms = wait.as_millis() as u64, "cannot fetch an Avro writer schema; retrying");
            if sleep_or_stop(wait, &mut self.stop).await {
                return Err(format!(
                    "stopped while fetching writer schema {id}: {error}"
                ));
            }
        }
        schemas.decode(source, payload).map(Some)
    }

    async fn run(mut self, batches: tokio::sync::mpsc::Sender<ReadBatch>) {
        loop {
            let batch = self.read().await;
            let stopping = batch.stopping || batch.offset_out_of_range;
            if batches.send(batch).await.is_err() || stopping {
                return;
            }
        }
    }

    async fn read(&mut self) -> ReadBatch {
        let mut batch = ReadBatch {
            changes: Vec::new(),
            positions: Vec::new(),
            dead_letters: Vec::new(),
            newest_commit_ms: 0,
            commit_times_ms: Vec::new(),
            events: 0,
            stopping: *self.stop.borrow(),
            offset_out_of_range: false,
        };
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
            batch.events += 1;
            batch.positions.push((
                (message.topic().to_owned(), message.partition()),
                message.offset() + 1,
            ));
            let sources = self.sources.clone();
            for (source_index, source) in sources.iter().enumerate() {
                if source.topic != message.topic() {
                    continue;
                }
                let decoded = match (source.format, message.payload()) {
                    (SourceFormat::DebeziumAvro, Some(payload)) => {
                        self.decode_avro(source, payload).await
                    }
                    _ => decode(source, message.payload()),
                };
                match decoded {
                    Ok(Some(event)) => {
                        if let Some(commit_ms) = event.commit_time_ms.filter(|&ms| ms > 0) {
                            batch.newest_commit_ms = batch.newest_commit_ms.max(commit_ms as u64);
                            batch.commit_times_ms.push(commit_ms as u64);
                        }
                        batch.changes.push(BatchChange {
                            source: source_index,
                            partition: message.partition(),
                            change: event.change,
                            position: event.position,
                            commit_time_ms: event.commit_time_ms,
                        });
                    }
                    Ok(None) => {}
                    Err(reason) => batch.dead_letters.push(DeadLetter {
                        topic: message.topic().to_owned(),
                        partition: message.partition(),
                        offset: message.offset(),
                        key: message.key().map(<[u8]>::to_vec),
                        payload: message.payload().map(<[u8]>::to_vec),
                        reason: format!("source {}: {reason}", source.name),
                    }),
                }
            }
        }
        batch
    }
}

/// Aborts a task when the run ends, however it ends.
struct AbortOnDrop<T>(tokio::task::JoinHandle<T>);

impl<T> Drop for AbortOnDrop<T> {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// One micro-batch on its way to Cassandra.
struct BatchWrite {
    deltas: Vec<SinkDelta>,
    dead_letters: Vec<DeadLetter>,
    /// Events too late for their window, for the late-events topic.
    late: Vec<DeadLetter>,
    positions: Vec<((String, i32), i64)>,
    commit_times_ms: Vec<u64>,
    newest_commit_ms: u64,
    events: usize,
}

/// What a write task needs; it owns its share so it can run beside the next batch.
struct BatchWriter {
    sink: Arc<CassandraSink>,
    sinks: Arc<Vec<SinkTable>>,
    producer: FutureProducer,
    dead_letter_topic: String,
    late_topic: String,
    pipeline: String,
    metrics: Arc<ProcessMetrics>,
    stop: watch::Receiver<bool>,
}

impl BatchWriter {
    /// Writes to Cassandra and hands dead letters to Kafka, retrying until both succeed;
    /// `None` when asked to stop first (the batch's offsets then never reach a checkpoint,
    /// so the next run processes it again).
    async fn write(mut self, batch: BatchWrite) -> Option<BatchWrite> {
        let name = &self.pipeline;
        let mut backoff = RETRY.backoff();
        let writing = Instant::now();
        loop {
            let mut result: Result<u64, String> = Ok(0);
            for (sink_table, delta) in self.sinks.iter().zip(&batch.deltas) {
                if delta.is_empty() {
                    continue;
                }
                match self.sink.write(sink_table, delta).await {
                    Ok(()) => {
                        if let Ok(rows) = &mut result {
                            *rows += delta.len() as u64;
                        }
                    }
                    Err(error) => {
                        result = Err(error.to_string());
                        break;
                    }
                }
            }
            if result.is_ok() && !batch.dead_letters.is_empty() {
                if let Err(error) = send_dead_letters(
                    &self.producer,
                    &self.dead_letter_topic,
                    name,
                    &batch.dead_letters,
                )
                .await
                {
                    result = Err(format!(
                        "dead-letter topic {}: {error}",
                        self.dead_letter_topic
                    ));
                }
            }
            if result.is_ok() && !batch.late.is_empty() {
                if let Err(error) =
                    send_dead_letters(&self.producer, &self.late_topic, name, &batch.late).await
                {
                    result = Err(format!("late-events topic {}: {error}", self.late_topic));
                }
            }
            match result {
                Ok(rows) => {
                    if !batch.late.is_empty() {
                        tracing::warn!(pipeline = %name, count = batch.late.len(), topic = %self.late_topic, first = %batch.late[0].reason, "events too late for their window sent to the late-events topic");
                    }
                    self.metrics
                        .batch_write_seconds
                        .observe(writing.elapsed().as_secs_f64());
                    self.metrics.record_latencies(&batch.commit_times_ms);
                    self.metrics.rows_written.fetch_add(rows, Ordering::Relaxed);
                    if !batch.dead_letters.is_empty() {
                        tracing::warn!(pipeline = %name, count = batch.dead_letters.len(), topic = %self.dead_letter_topic, first_reason = %batch.dead_letters[0].reason, "events sent to the dead-letter topic");
                    }
                    return Some(batch);
                }
                Err(error) => {
                    self.metrics
                        .cassandra_errors
                        .fetch_add(1, Ordering::Relaxed);
                    let wait = backoff.next_delay();
                    tracing::warn!(pipeline = %name, %error, retry_in_ms = wait.as_millis() as u64, "writing the batch failed; holding position and retrying");
                    if sleep_or_stop(wait, &mut self.stop).await {
                        return None;
                    }
                }
            }
        }
    }
}

/// Waits for the batch in flight, if any, and books it; false when its writer was stopped
/// before the batch was written (the run then ends without a checkpoint of it).
async fn settle(
    in_flight: Option<tokio::task::JoinHandle<Option<BatchWrite>>>,
    state: &mut Checkpoint,
    summary: &mut RunSummary,
    metrics: &ProcessMetrics,
) -> Result<bool, String> {
    let Some(handle) = in_flight else {
        return Ok(true);
    };
    match handle
        .await
        .map_err(|error| format!("a write task failed: {error}"))?
    {
        Some(written) => {
            finish(written, state, summary, metrics);
            Ok(true)
        }
        None => Ok(false),
    }
}

/// Moves a partition's next offset forward (never back).
fn advance(positions: &mut BTreeMap<(String, i32), i64>, key: &(String, i32), next: i64) {
    let entry = positions.entry(key.clone()).or_insert(next);
    *entry = (*entry).max(next);
}

/// A batch is in Cassandra: its offsets may now enter the next checkpoint.
fn finish(
    written: BatchWrite,
    state: &mut Checkpoint,
    summary: &mut RunSummary,
    metrics: &ProcessMetrics,
) {
    for (key, next) in &written.positions {
        advance(&mut state.offsets, key, *next);
    }
    let rows: u64 = written.deltas.iter().map(|delta| delta.len() as u64).sum();
    summary.rows_written += rows;
    summary.events += written.events as u64;
    summary.dead_letters += written.dead_letters.len() as u64;
    metrics
        .events
        .fetch_add(written.events as u64, Ordering::Relaxed);
    metrics
        .dead_letters
        .fetch_add(written.dead_letters.len() as u64, Ordering::Relaxed);
    metrics
        .late_events
        .fetch_add(written.late.len() as u64, Ordering::Relaxed);
    summary.late_events += written.late.len() as u64;
    metrics.batches.fetch_add(1, Ordering::Relaxed);
    state.newest_commit_ms = state.newest_commit_ms.max(written.newest_commit_ms as i64);
    if written.newest_commit_ms > 0 {
        metrics
            .written_commit_time_ms
            .fetch_max(written.newest_commit_ms, Ordering::Relaxed);
    }
}

fn write_checkpoint(
    path: &std::path::Path,
    state: &mut Checkpoint,
    metrics: &ProcessMetrics,
) -> Result<(), CheckpointError> {
    let started = Instant::now();
    state.written_at_ms = unix_ms() as i64;
    let bytes = checkpoint::save(path, state)?;
    metrics.checkpoints.fetch_add(1, Ordering::Relaxed);
    metrics
        .last_checkpoint_unix_ms
        .store(unix_ms(), Ordering::Relaxed);
    metrics
        .last_checkpoint_bytes
        .store(bytes as u64, Ordering::Relaxed);
    metrics
        .checkpoint_seconds
        .observe(started.elapsed().as_secs_f64());
    tracing::debug!(
        bytes,
        took_ms = started.elapsed().as_millis() as u64,
        "checkpoint written"
    );
    Ok(())
}

fn consumer_lag(consumer: &PipelineConsumer, state: &Checkpoint) -> u64 {
    let mut lag = 0u64;
    for ((topic, partition), &next) in &state.offsets {
        let high = tokio::task::block_in_place(|| {
            consumer.fetch_watermarks(topic, *partition, Duration::from_secs(1))
        });
        if let Ok((_, high)) = high {
            lag += (high - next).max(0) as u64;
        }
    }
    lag
}

struct DeadLetter {
    topic: String,
    partition: i32,
    offset: i64,
    key: Option<Vec<u8>>,
    payload: Option<Vec<u8>>,
    reason: String,
}

/// A late event as a record of the late-events topic: the row as JSON, and why it is late
/// in the `walflow.error` header.
fn late_letter(definition: &PipelineDefinition, sink: &str, event: &LateEvent) -> DeadLetter {
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

async fn send_dead_letters(
    producer: &FutureProducer,
    topic: &str,
    pipeline: &str,
    letters: &[DeadLetter],
) -> Result<(), String> {
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
        delivery.map_err(|(error, _)| error.to_string())?;
    }
    Ok(())
}

/// Sleeps, or returns true at once when asked to stop.
async fn sleep_or_stop(duration: Duration, stop: &mut watch::Receiver<bool>) -> bool {
    if *stop.borrow() {
        return true;
    }
    tokio::select! {
        _ = tokio::time::sleep(duration) => false,
        _ = stop.changed() => true,
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
