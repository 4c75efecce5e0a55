//! Runs one pipeline file: a source's micro-batches (Kafka) -> decode -> operators -> a sink
//! (Cassandra), with checkpoints of offsets and state together. A batch's offsets only enter
//! a checkpoint after its rows are in the sink and its dead letters are acknowledged, so
//! nothing accepted is lost; sink trouble makes the batch wait and retry, holding its
//! position. This file is the start-up and the loop; the pure batch step is
//! [`pipeline`](crate::pipeline), the far sides are behind the traits of [`io`](crate::io).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use rdkafka::error::KafkaError;
use tokio::sync::watch;
use walflow_tls::kafka::KafkaConnection;

use crate::checkpoint::{self, Checkpoint, CheckpointError, CheckpointWriter};
use crate::consumer::OffsetGap;
use crate::definition::{DefinitionError, SinkTable};
use crate::io::dead_letters::{late_letter, DeadLetter};
use crate::io::reader::KafkaSource;
use crate::io::writer::{advance, settle, BatchWrite, BatchWriter, CassandraOutputs};
use crate::io::{
    read_ahead, sleep_or_stop, BatchSink, ChangeSource, PartitionKey, ReadBatch, RETRY,
};
use crate::live_edit::{state_fits, FileWatch};
use crate::metrics::unix_ms;
use crate::sink::SinkError;

pub use crate::io::reader::consumer_config;
pub use crate::metrics::{ProcessMetrics, LATENCY_BUCKETS};
pub use crate::pipeline::{BatchChange, BatchOutput, EvaluateError, Pipeline, Replay};
use start::{starting_state, Start};

#[derive(Debug, Clone)]
pub struct ProcessOptions {
    /// Kafka's brokers and the librdkafka properties every client gets (TLS, SASL).
    pub kafka: KafkaConnection,
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
    pub fn new(kafka: KafkaConnection, cassandra_nodes: Vec<String>) -> ProcessOptions {
        ProcessOptions {
            kafka,
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
    /// A query's operators failed on a batch.
    #[error("pipeline {pipeline}: {source}")]
    Evaluate {
        pipeline: String,
        #[source]
        source: EvaluateError,
    },
    /// The task writing a batch panicked or was cancelled.
    #[error("pipeline {pipeline}: a write task failed: {source}")]
    WriteTask {
        pipeline: String,
        #[source]
        source: tokio::task::JoinError,
    },
    /// An Avro source's schema registry client could not be made.
    #[error("pipeline {pipeline}: {source}")]
    SchemaRegistry {
        pipeline: String,
        #[source]
        source: walflow_wire::registry::RegistryError,
    },
    /// Why the pipeline cannot go on, for a person: what is wrong and what to run.
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

/// Runs `pipeline` from Kafka into Cassandra until stopped (or caught up, when the options
/// say so).
pub async fn run(
    pipeline: &Pipeline,
    options: &ProcessOptions,
    metrics: Arc<ProcessMetrics>,
    mut stop: watch::Receiver<bool>,
) -> Result<RunSummary, ProcessError> {
    let name = &pipeline.definition.name;
    // Held until the pipeline stops: a second process on it would overwrite its checkpoint.
    let _lock = checkpoint::lock(&options.checkpoint_dir, name)?;
    // Cassandra first: its tables must exist before anything is read.
    let Some(sink) = CassandraOutputs::connect(name, options, &mut stop).await? else {
        return Ok(RunSummary::default());
    };
    let source = KafkaSource::new(pipeline, options, metrics.clone(), stop.clone())?;
    run_with(pipeline, options, metrics, stop, source, sink).await
}

/// Runs `pipeline` from `source` into `sink`: the sink tables made ready, the source's
/// partitions found, the state resumed from the checkpoint (or rebuilt), then the loop.
pub(crate) async fn run_with<S: ChangeSource, K: BatchSink>(
    pipeline: &Pipeline,
    options: &ProcessOptions,
    metrics: Arc<ProcessMetrics>,
    mut stop: watch::Receiver<bool>,
    source: S,
    mut sink: K,
) -> Result<RunSummary, ProcessError> {
    let name = pipeline.definition.name.clone();
    for query in &pipeline.queries {
        sink.prepare(&query.sink).await?;
    }
    // Every partition of every source topic, read from the checkpoint's offsets.
    let topics = pipeline.definition.topics();
    let mut partitions: Vec<PartitionKey> = Vec::new();
    for topic in &topics {
        let mut backoff = RETRY.backoff();
        loop {
            match source.partitions(topic).await {
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
    let checkpoint_path = checkpoint::path_for(&options.checkpoint_dir, &name);
    let Start {
        mut state,
        resumed,
        ends,
    } = starting_state(
        pipeline,
        options,
        &source,
        &mut sink,
        &partitions,
        &checkpoint_path,
    )
    .await?;
    let mut checkpoints = CheckpointWriter::new(
        checkpoint_path,
        options.checkpoint_interval,
        metrics.clone(),
    );
    if !resumed {
        // From now on the sink may hold what this run writes: a run started after it is
        // killed resumes from this checkpoint, and replays (below).
        checkpoints.write(&mut state)?;
    }
    // A run that resumes may replay what a killed run wrote past its checkpoint, as far as
    // the topics reached when this one started (`Replay`).
    let replaying_until = resumed.then(|| ends.clone());
    if resumed {
        tracing::info!(pipeline = %name, "replaying from the checkpoint up to where the topics end now, writing every result the events pass through (a run killed after the checkpoint may have written any of them)");
    }

    let from: BTreeMap<PartitionKey, Option<i64>> = partitions
        .iter()
        .map(|key| (key.clone(), state.offsets.get(key).copied()))
        .collect();
    let reader = source.reader(&from)?;
    let stop_at = options.stop_when_caught_up.then_some(ends);
    let dead_letter_topic = options
        .dead_letter_topic
        .clone()
        .unwrap_or_else(|| format!("walflow.dead_letter.{name}"));
    let late_topic = options
        .late_topic
        .clone()
        .unwrap_or_else(|| format!("walflow.late.{name}"));
    tracing::info!(pipeline = %name, topics = ?topics, group = %pipeline.definition.consumer_group(), dead_letter_topic = %dead_letter_topic, "processing");

    // Reading and decoding run on a task of their own, a batch ahead of the evaluation, so
    // the two use both cores.
    let (batch_sender, batches) = tokio::sync::mpsc::channel::<ReadBatch>(1);
    let _abort_reader = AbortOnDrop(tokio::spawn(read_ahead(reader, batch_sender)));
    let sinks: Arc<Vec<SinkTable>> = Arc::new(
        pipeline
            .queries
            .iter()
            .map(|query| query.sink.clone())
            .collect(),
    );
    RunLoop {
        // Edits of the file take over at a batch boundary (live_edit.rs); not while draining
        // a topic to its end (benchmarks, tests that stop when caught up).
        file_watch: (!options.stop_when_caught_up)
            .then(|| FileWatch::new(&pipeline.definition.path, &pipeline.definition.text)),
        pipeline: pipeline.clone(),
        read_positions: state.offsets.clone(),
        state,
        summary: RunSummary::default(),
        checkpoints,
        in_flight: None,
        stop_at,
        replaying_until,
        source,
        writer: BatchWriter {
            sink: Arc::new(sink),
            sinks,
            dead_letter_topic,
            late_topic,
            pipeline: name.clone(),
            metrics: metrics.clone(),
            stop,
        },
        metrics,
        name,
    }
    .run(batches)
    .await
}

/// Aborts a task when the run ends, however it ends.
struct AbortOnDrop<T>(tokio::task::JoinHandle<T>);

impl<T> Drop for AbortOnDrop<T> {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// The running loop's state: batch after batch applied to `state` and handed to a writer;
/// checkpoints once what was written catches up.
struct RunLoop<S, K> {
    name: String,
    /// The running version of the file (replaced by a live edit).
    pipeline: Pipeline,
    file_watch: Option<FileWatch>,
    state: Checkpoint,
    summary: RunSummary,
    checkpoints: CheckpointWriter,
    /// The batch being written while the next one is read and evaluated.
    in_flight: Option<tokio::task::JoinHandle<Option<BatchWrite>>>,
    /// How far the reader has read (ahead of the checkpointed offsets while a batch is in
    /// flight).
    read_positions: BTreeMap<PartitionKey, i64>,
    /// Where every partition ended at start, when the run stops once caught up.
    stop_at: Option<BTreeMap<PartitionKey, i64>>,
    /// Where every partition ended at start, while a resumed run replays up to there.
    replaying_until: Option<BTreeMap<PartitionKey, i64>>,
    source: S,
    /// A template: each batch's write task gets a copy.
    writer: BatchWriter<K>,
    metrics: Arc<ProcessMetrics>,
}

impl<S: ChangeSource, K: BatchSink> RunLoop<S, K> {
    fn fail(&self, message: String) -> ProcessError {
        ProcessError::Pipeline {
            pipeline: self.name.clone(),
            message,
        }
    }

    async fn run(
        mut self,
        mut batches: tokio::sync::mpsc::Receiver<ReadBatch>,
    ) -> Result<RunSummary, ProcessError> {
        loop {
            let Some(read) = batches.recv().await else {
                return Err(self.fail("the Kafka reading task ended unexpectedly".into()));
            };
            if read.offset_out_of_range {
                return Err(self.out_of_range(&read).await);
            }
            if !self.switch_if_edited().await? {
                return Ok(self.summary);
            }
            let replay = self.replay_of_next_batch();
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
            } = self
                .pipeline
                .apply_batch(&mut self.state, changes, Some(unix_ms()), replay)
                .map_err(|source| ProcessError::Evaluate {
                    pipeline: self.name.clone(),
                    source,
                })?;
            if duplicates > 0 {
                self.summary.duplicates += duplicates;
                tracing::info!(pipeline = %self.name, duplicates, "dropped changelog events already counted (cdc sent them again)");
            }
            let late: Vec<DeadLetter> = late
                .into_iter()
                .map(|(sink, event)| late_letter(&self.pipeline.definition, &sink, &event))
                .collect();
            if let Some(watermark) = self
                .state
                .watermarks
                .values()
                .filter(|watermark| watermark.is_set())
                .map(|watermark| watermark.current())
                .min()
            {
                crate::metrics::set_unix_ms(
                    &self.metrics.watermark,
                    (watermark / 1000).max(0) as u64,
                );
            }
            self.metrics
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
                advance(&mut self.read_positions, key, *next);
            }
            if !self.settle().await? {
                return Ok(self.summary);
            }
            self.in_flight = Some(tokio::spawn(self.writer.clone().write(batch)));
            self.checkpoints.batch_started(events);
            if replay == Replay::AfterCrash && self.replay_of_next_batch() == Replay::No {
                // The replay is over: rewrite the sinks whole, before any checkpoint.
                if !self.settle().await? || !self.refresh_sinks().await? {
                    return Ok(self.summary);
                }
            }

            let caught_up = self.stop_at.as_ref().is_some_and(|ends| {
                ends.iter()
                    .all(|(key, &end)| self.read_positions.get(key).copied().unwrap_or(0) >= end)
            });
            let last = stopping || caught_up;
            if last || self.checkpoints.is_due() {
                // A checkpoint pairs offsets with state: nothing may be in flight.
                if !self.settle().await? {
                    return Ok(self.summary);
                }
                if self.checkpoints.is_dirty() {
                    // The last commit waits for the source: the process may exit right after.
                    self.checkpoint(last)?;
                    self.metrics
                        .consumer_lag
                        .set(self.source.lag(&self.state.offsets) as i64);
                }
                self.checkpoints.start_interval();
            }
            if last {
                break;
            }
        }
        let summary = &self.summary;
        tracing::info!(pipeline = %self.name, events = summary.events, rows_written = summary.rows_written, dead_letters = summary.dead_letters, duplicates_dropped = summary.duplicates, "stopped");
        Ok(self.summary)
    }

    /// Whether the next batch replays events a killed run may have written: while any
    /// partition is read short of where it ended when this run started.
    fn replay_of_next_batch(&mut self) -> Replay {
        let Some(ends) = &self.replaying_until else {
            return Replay::No;
        };
        let short = |(key, end): (&PartitionKey, &i64)| {
            self.read_positions.get(key).copied().unwrap_or(0) < *end
        };
        if ends.iter().any(short) {
            return Replay::AfterCrash;
        }
        self.replaying_until = None;
        tracing::info!(pipeline = %self.name, "past where the topics ended at start: writing only what changes");
        Replay::No
    }

    /// Empties and rewrites every sink whose query's sources keep their rows
    /// ([`Pipeline::refresh`]); false when the run was stopped while writing.
    async fn refresh_sinks(&mut self) -> Result<bool, ProcessError> {
        let deltas =
            self.pipeline
                .refresh(&self.state)
                .map_err(|source| ProcessError::Evaluate {
                    pipeline: self.name.clone(),
                    source,
                })?;
        let tables: Vec<&str> = self
            .pipeline
            .queries
            .iter()
            .zip(&deltas)
            .filter(|(_, delta)| delta.truncate_first)
            .map(|(query, _)| query.sink.name.as_str())
            .collect();
        tracing::info!(pipeline = %self.name, sinks = ?tables, "replay done: rewriting these sink tables whole from the state");
        let refresh = BatchWrite {
            deltas,
            dead_letters: Vec::new(),
            late: Vec::new(),
            positions: Vec::new(),
            commit_times_ms: Vec::new(),
            newest_commit_ms: 0,
            events: 0,
        };
        self.in_flight = Some(tokio::spawn(self.writer.clone().write(refresh)));
        self.settle().await
    }

    /// Waits for the batch in flight, if any, and books it; false when it was never written
    /// (asked to stop while retrying it).
    async fn settle(&mut self) -> Result<bool, ProcessError> {
        settle(
            self.in_flight.take(),
            &mut self.state,
            &mut self.summary,
            &self.metrics,
        )
        .await
        .map_err(|source| ProcessError::WriteTask {
            pipeline: self.name.clone(),
            source,
        })
    }

    /// Writes the checkpoint and reports its offsets to the source.
    fn checkpoint(&mut self, wait: bool) -> Result<(), ProcessError> {
        self.checkpoints.write(&mut self.state)?;
        self.source.commit(&self.state.offsets, wait);
        Ok(())
    }

    /// Takes an edit of the pipeline file over, from a checkpoint of everything the old text
    /// did, when its state fits; false when the run was stopped while settling.
    async fn switch_if_edited(&mut self) -> Result<bool, ProcessError> {
        if !self.file_watch.as_mut().is_some_and(FileWatch::changed) {
            return Ok(true);
        }
        let name = &self.name;
        let path = self.pipeline.definition.path.clone();
        let edited = match Pipeline::load(&path).await {
            Err(error) => {
                tracing::error!(pipeline = %name, %error, "the edited pipeline file does not check; the running version keeps going");
                return Ok(true);
            }
            Ok(edited) => edited,
        };
        if let Err(why) = state_fits(&self.pipeline, &edited) {
            tracing::warn!(
                pipeline = %name,
                "the edited pipeline's state does not fit the running one ({why}); the \
                 running version keeps going: run walflow process --rebuild {} to rebuild \
                 it from the start of the topics",
                path.display()
            );
            return Ok(true);
        }
        if !self.settle().await? {
            return Ok(false);
        }
        self.state.fingerprint = checkpoint::fingerprint(&edited.definition.text);
        self.checkpoint(false)?;
        self.checkpoints.start_interval();
        if let Some(watch) = self.file_watch.as_mut() {
            watch.switched_to(&edited.definition.text);
        }
        self.pipeline = edited;
        tracing::info!(pipeline = %self.name, file = %path.display(), "switched to the edited pipeline file from its last checkpoint");
        Ok(true)
    }

    /// The error of a source that no longer has a partition's read position (retention
    /// deleted records the pipeline had not read yet: it lagged behind).
    async fn out_of_range(&self, read: &ReadBatch) -> ProcessError {
        let mut positions = self.read_positions.clone();
        for (key, next) in &read.positions {
            advance(&mut positions, key, *next);
        }
        let mut gaps = Vec::new();
        for ((topic, partition), &next) in &positions {
            if let Ok(range) = self.source.offsets_held(topic, *partition).await {
                gaps.extend(OffsetGap::of(topic, *partition, next, range));
            }
        }
        self.fail(if gaps.is_empty() {
            "Kafka has no records at a partition's read position any more (deleted by \
             retention?), and the pipeline does not jump over them"
                .into()
        } else {
            crate::consumer::resume_refused(&gaps)
        })
    }
}

mod start;

#[cfg(test)]
mod tests;
