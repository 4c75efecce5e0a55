//! Writing a batch's results: its rows to the sink tables, its dead letters and late events to
//! their topics, retried until all of it is done. Batch N is written on a task of its own
//! while batch N+1 is read and evaluated; [`settle`] waits for it and books it, and only then
//! do its offsets count towards a checkpoint.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Instant;

use rdkafka::error::KafkaError;
use rdkafka::producer::FutureProducer;
use tokio::sync::watch;

use super::dead_letters::{send_dead_letters, DeadLetter};
use super::{sleep_or_stop, BatchSink, PartitionKey, RETRY};
use crate::checkpoint::Checkpoint;
use crate::definition::SinkTable;
use crate::metrics::{ProcessMetrics, RecoveredError};
use crate::runner::{ProcessError, ProcessOptions, RunSummary};
use crate::sink::{CassandraSink, SinkDelta, SinkError};

/// Why writing a batch failed (it is retried, holding its position).
#[derive(Debug, thiserror::Error)]
pub(crate) enum WriteError {
    #[error(transparent)]
    Rows(#[from] SinkError),
    #[error("dead-letter topic {topic}: {source}")]
    DeadLetters {
        topic: String,
        #[source]
        source: KafkaError,
    },
    #[error("late-events topic {topic}: {source}")]
    LateEvents {
        topic: String,
        #[source]
        source: KafkaError,
    },
}

impl WriteError {
    /// The kind it is counted under.
    fn kind(&self) -> RecoveredError {
        match self {
            WriteError::Rows(_) => RecoveredError::CassandraWrite,
            WriteError::DeadLetters { .. } => RecoveredError::DeadLetterSend,
            WriteError::LateEvents { .. } => RecoveredError::LateEventSend,
        }
    }
}

/// One micro-batch on its way to the sink.
pub(crate) struct BatchWrite {
    pub deltas: Vec<SinkDelta>,
    pub dead_letters: Vec<DeadLetter>,
    /// Events too late for their window, for the late-events topic.
    pub late: Vec<DeadLetter>,
    pub positions: Vec<(PartitionKey, i64)>,
    pub commit_times_ms: Vec<u64>,
    pub newest_commit_ms: u64,
    pub events: usize,
}

/// What a write task needs; it owns its share so it can run beside the next batch.
pub(crate) struct BatchWriter<K> {
    pub sink: Arc<K>,
    pub sinks: Arc<Vec<SinkTable>>,
    pub dead_letter_topic: String,
    pub late_topic: String,
    pub pipeline: String,
    pub metrics: Arc<ProcessMetrics>,
    pub stop: watch::Receiver<bool>,
}

impl<K> Clone for BatchWriter<K> {
    fn clone(&self) -> Self {
        BatchWriter {
            sink: self.sink.clone(),
            sinks: self.sinks.clone(),
            dead_letter_topic: self.dead_letter_topic.clone(),
            late_topic: self.late_topic.clone(),
            pipeline: self.pipeline.clone(),
            metrics: self.metrics.clone(),
            stop: self.stop.clone(),
        }
    }
}

impl<K: BatchSink> BatchWriter<K> {
    /// Writes the rows and hands dead letters to their topic, retrying until both succeed;
    /// `None` when asked to stop first (the batch's offsets then never reach a checkpoint,
    /// so the next run processes it again).
    pub async fn write(mut self, batch: BatchWrite) -> Option<BatchWrite> {
        let name = &self.pipeline;
        let mut backoff = RETRY.backoff();
        let writing = Instant::now();
        loop {
            let mut result: Result<u64, WriteError> = Ok(0);
            for (sink_table, delta) in self.sinks.iter().zip(&batch.deltas) {
                if delta.is_empty() {
                    continue;
                }
                match self.sink.write_rows(sink_table, delta).await {
                    Ok(()) => {
                        if let Ok(rows) = &mut result {
                            *rows += delta.len() as u64;
                        }
                    }
                    Err(error) => {
                        result = Err(error.into());
                        break;
                    }
                }
            }
            if result.is_ok() && !batch.dead_letters.is_empty() {
                if let Err(source) = self
                    .sink
                    .send_letters(&self.dead_letter_topic, &batch.dead_letters)
                    .await
                {
                    result = Err(WriteError::DeadLetters {
                        topic: self.dead_letter_topic.clone(),
                        source,
                    });
                }
            }
            if result.is_ok() && !batch.late.is_empty() {
                if let Err(source) = self.sink.send_letters(&self.late_topic, &batch.late).await {
                    result = Err(WriteError::LateEvents {
                        topic: self.late_topic.clone(),
                        source,
                    });
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
                    self.metrics.rows_written.inc_by(rows);
                    if !batch.dead_letters.is_empty() {
                        tracing::warn!(pipeline = %name, count = batch.dead_letters.len(), topic = %self.dead_letter_topic, first_reason = %batch.dead_letters[0].reason, "events sent to the dead-letter topic");
                    }
                    return Some(batch);
                }
                Err(error) => {
                    self.metrics.error(error.kind()).inc();
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
pub(crate) async fn settle(
    in_flight: Option<tokio::task::JoinHandle<Option<BatchWrite>>>,
    state: &mut Checkpoint,
    summary: &mut RunSummary,
    metrics: &ProcessMetrics,
) -> Result<bool, tokio::task::JoinError> {
    let Some(handle) = in_flight else {
        return Ok(true);
    };
    match handle.await? {
        Some(written) => {
            finish(written, state, summary, metrics);
            Ok(true)
        }
        None => Ok(false),
    }
}

/// Moves a partition's next offset forward (never back).
pub(crate) fn advance(positions: &mut BTreeMap<PartitionKey, i64>, key: &PartitionKey, next: i64) {
    let entry = positions.entry(key.clone()).or_insert(next);
    *entry = (*entry).max(next);
}

/// A batch is in the sink: its offsets may now enter the next checkpoint.
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
    metrics.events.inc_by(written.events as u64);
    metrics
        .dead_letters
        .inc_by(written.dead_letters.len() as u64);
    metrics.late_events.inc_by(written.late.len() as u64);
    summary.late_events += written.late.len() as u64;
    metrics.batches.inc();
    state.newest_commit_ms = state.newest_commit_ms.max(written.newest_commit_ms as i64);
    crate::metrics::advance_unix_ms(&metrics.written_commit_time, written.newest_commit_ms);
}

/// Cassandra for the sink tables, a Kafka producer for the dead-letter and late-events
/// topics.
pub struct CassandraOutputs {
    tables: CassandraSink,
    topics: FutureProducer,
    pipeline: String,
}

impl CassandraOutputs {
    /// Connects to Cassandra, waiting for it for as long as it takes; `None` when asked to
    /// stop first.
    pub async fn connect(
        pipeline: &str,
        options: &ProcessOptions,
        stop: &mut watch::Receiver<bool>,
    ) -> Result<Option<CassandraOutputs>, ProcessError> {
        let mut backoff = RETRY.backoff();
        let tables = loop {
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
                    tracing::warn!(pipeline = %pipeline, %error, retry_in_ms = wait.as_millis() as u64, "waiting for Cassandra");
                    if sleep_or_stop(wait, stop).await {
                        return Ok(None);
                    }
                }
            }
        };
        let topics: FutureProducer = options
            .kafka
            .client_config()
            .set("enable.idempotence", "true")
            .set("acks", "all")
            .create()?;
        Ok(Some(CassandraOutputs {
            tables,
            topics,
            pipeline: pipeline.to_owned(),
        }))
    }
}

impl BatchSink for CassandraOutputs {
    async fn prepare(&mut self, table: &SinkTable) -> Result<(), SinkError> {
        self.tables.prepare(table).await
    }

    async fn write_rows(&self, table: &SinkTable, delta: &SinkDelta) -> Result<(), SinkError> {
        self.tables.write(table, delta).await
    }

    async fn send_letters(&self, topic: &str, letters: &[DeadLetter]) -> Result<(), KafkaError> {
        send_dead_letters(&self.topics, topic, &self.pipeline, letters).await
    }
}
