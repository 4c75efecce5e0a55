//! The runner's two far sides, each behind one small trait: a [`ChangeSource`] the loop reads
//! micro-batches of decoded changes from (Kafka, [`reader`]), and a [`BatchSink`] a batch's
//! results go to (rows to Cassandra and records to the dead-letter and late-events topics,
//! [`writer`]). Tests run the same loop over memory implementations of both.

use std::collections::BTreeMap;
use std::future::Future;
use std::time::Duration;

use rdkafka::error::KafkaError;
use tokio::sync::watch;
use walflow_retry::RetryPolicy;

use crate::decode::{DecodeError, DecodedEvent, EventError};
use crate::definition::{SinkTable, SourceTable};
use crate::pipeline::BatchChange;
use crate::runner::ProcessError;
use crate::sink::{SinkDelta, SinkError};

pub mod dead_letters;
#[cfg(test)]
pub(crate) mod memory;
pub mod reader;
pub mod writer;

use dead_letters::DeadLetter;

/// A Kafka partition: its topic and number.
pub type PartitionKey = (String, i32);

/// Where a pipeline's change events come from, as the runner sees it. At start it asks which
/// partitions there are and what each still holds, then starts a [`BatchRead`] at the
/// checkpoint's offsets (it runs on a task of its own, a batch ahead of the loop); at each
/// checkpoint it reports the checkpoint's offsets back.
pub trait ChangeSource: Send + Sync + 'static {
    type Reader: BatchRead;

    /// The partitions of `topic`; empty (or an error) while it does not exist.
    fn partitions(
        &self,
        topic: &str,
    ) -> impl Future<Output = Result<Vec<i32>, ProcessError>> + Send;

    /// The offsets a partition holds: its first and the next one to be written (Kafka's low
    /// and high watermarks).
    fn offsets_held(
        &self,
        topic: &str,
        partition: i32,
    ) -> impl Future<Output = Result<(i64, i64), ProcessError>> + Send;

    /// Starts reading every partition at its offset (`None`: at its beginning).
    fn reader(
        &self,
        from: &BTreeMap<PartitionKey, Option<i64>>,
    ) -> Result<Self::Reader, ProcessError>;

    /// Tells the source how far the checkpoint got, for monitoring (Kafka's consumer group,
    /// which `walflow lag` and Kafka's tools read). Failures are counted, never returned: the
    /// checkpoint alone decides where the pipeline resumes. `wait`: the process may exit
    /// right after, so the report is complete before this returns.
    fn commit(&self, offsets: &BTreeMap<PartitionKey, i64>, wait: bool);

    /// Events the source holds past `offsets`.
    fn lag(&self, offsets: &BTreeMap<PartitionKey, i64>) -> u64;
}

/// Reads micro-batches, bounded by events and by time, and decodes them.
pub trait BatchRead: Send + 'static {
    fn read(&mut self) -> impl Future<Output = ReadBatch> + Send;
}

/// Where a batch's results go: rows to the sink tables, records (dead letters, late events)
/// to topics. Table writes are absolute (the row as it is now, or its absence), so a batch
/// written again after a failure converges to the same tables.
pub trait BatchSink: Send + Sync + 'static {
    /// Makes a sink table ready for writes: created when missing, its shape checked.
    fn prepare(&mut self, table: &SinkTable) -> impl Future<Output = Result<(), SinkError>> + Send;

    /// Writes one sink table's delta; a failure may leave part of it written (the caller
    /// writes all of it again).
    fn write_rows(
        &self,
        table: &SinkTable,
        delta: &SinkDelta,
    ) -> impl Future<Output = Result<(), SinkError>> + Send;

    /// Hands records to `topic` and waits until it has them all.
    fn send_letters(
        &self,
        topic: &str,
        letters: &[DeadLetter],
    ) -> impl Future<Output = Result<(), KafkaError>> + Send;
}

/// One micro-batch as read and decoded, before any state is touched.
#[derive(Debug, Default)]
pub struct ReadBatch {
    /// Each decoded change with the index of its source, in the order read.
    pub changes: Vec<BatchChange>,
    /// The next offset of each record's partition, in the order read.
    pub positions: Vec<(PartitionKey, i64)>,
    pub dead_letters: Vec<DeadLetter>,
    pub newest_commit_ms: u64,
    pub commit_times_ms: Vec<u64>,
    /// Records read.
    pub events: usize,
    /// Asked to stop while reading: this is the last batch.
    pub stopping: bool,
    /// The source no longer has a partition's read position: the last batch, and the
    /// pipeline stops with the gap.
    pub offset_out_of_range: bool,
}

/// One record of a partition, as read.
pub struct Record<'a> {
    pub topic: &'a str,
    pub partition: i32,
    pub offset: i64,
    pub key: Option<&'a [u8]>,
    pub payload: Option<&'a [u8]>,
}

impl ReadBatch {
    pub fn new(stopping: bool) -> ReadBatch {
        ReadBatch {
            stopping,
            ..ReadBatch::default()
        }
    }

    /// Counts a record read; its decoded changes follow with [`add`](ReadBatch::add), one per
    /// source reading its topic.
    pub fn count(&mut self, record: &Record<'_>) {
        self.events += 1;
        self.positions.push((
            (record.topic.to_owned(), record.partition),
            record.offset + 1,
        ));
    }

    /// What source `source_index` made of a record: a change, nothing (a tombstone), or a
    /// dead letter with the reason.
    pub fn add(
        &mut self,
        source_index: usize,
        source: &SourceTable,
        record: &Record<'_>,
        decoded: Result<Option<DecodedEvent>, DecodeError>,
    ) {
        match decoded {
            Ok(Some(event)) => {
                if let Some(commit_ms) = event.commit_time_ms.filter(|&ms| ms > 0) {
                    self.newest_commit_ms = self.newest_commit_ms.max(commit_ms as u64);
                    self.commit_times_ms.push(commit_ms as u64);
                }
                self.changes.push(BatchChange {
                    source: source_index,
                    partition: record.partition,
                    change: event.change,
                    position: event.position,
                    commit_time_ms: event.commit_time_ms,
                });
            }
            Ok(None) => {}
            Err(error) => self.dead_letters.push(DeadLetter {
                topic: record.topic.to_owned(),
                partition: record.partition,
                offset: record.offset,
                key: record.key.map(<[u8]>::to_vec),
                payload: record.payload.map(<[u8]>::to_vec),
                reason: EventError {
                    table: source.name.clone(),
                    error,
                }
                .to_string(),
            }),
        }
    }
}

/// Reads batch after batch into `batches` until the loop stops taking them or the source
/// says it is the last.
pub(crate) async fn read_ahead<R: BatchRead>(
    mut reader: R,
    batches: tokio::sync::mpsc::Sender<ReadBatch>,
) {
    loop {
        let batch = reader.read().await;
        let stopping = batch.stopping || batch.offset_out_of_range;
        if batches.send(batch).await.is_err() || stopping {
            return;
        }
    }
}

/// Waiting for Cassandra, a topic, the schema registry, or a write to succeed, for as long
/// as it takes (or until stopped).
pub(crate) const RETRY: RetryPolicy =
    RetryPolicy::forever(Duration::from_millis(200), Duration::from_secs(10));

/// Sleeps, or returns true at once when asked to stop.
pub(crate) async fn sleep_or_stop(duration: Duration, stop: &mut watch::Receiver<bool>) -> bool {
    if *stop.borrow() {
        return true;
    }
    tokio::select! {
        _ = tokio::time::sleep(duration) => false,
        _ = stop.changed() => true,
    }
}
