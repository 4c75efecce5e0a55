//! Memory doubles of the runner's far sides, for tests of the loop without Kafka or
//! Cassandra: [`MemoryTopics`] hold records per partition as Kafka would (and outlive a run,
//! as Kafka outlives a process), a [`MemorySource`] reads them in batches of a set size, and
//! a [`MemorySink`] applies each write to tables in memory as Cassandra would, failing on
//! demand.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use super::dead_letters::DeadLetter;
use super::{BatchRead, BatchSink, ChangeSource, PartitionKey, ReadBatch, Record};
use crate::decode::decode;
use crate::definition::{SinkTable, SourceTable};
use crate::runner::ProcessError;
use crate::sink::{SinkDelta, SinkError};
use crate::value::Row;
use rdkafka::error::KafkaError;

fn locked<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// A partition's records (payloads; `None` is a tombstone), its offsets from 0.
type Records = Vec<Option<Vec<u8>>>;

/// Partitions of records, as a Kafka cluster holds them.
#[derive(Clone, Default)]
pub(crate) struct MemoryTopics {
    partitions: Arc<Mutex<BTreeMap<PartitionKey, Records>>>,
}

impl MemoryTopics {
    /// Appends a record to a partition (creating the topic on first sight).
    pub fn append(&self, topic: &str, partition: i32, payload: Option<&str>) {
        locked(&self.partitions)
            .entry((topic.to_owned(), partition))
            .or_default()
            .push(payload.map(|text| text.as_bytes().to_vec()));
    }
}

/// Reads [`MemoryTopics`] for a pipeline's sources, and remembers what the run asked of it.
pub(crate) struct MemorySource {
    topics: MemoryTopics,
    sources: Arc<Vec<SourceTable>>,
    batch_max_events: usize,
    /// Where the reader was told to start.
    pub assigned: Arc<Mutex<BTreeMap<PartitionKey, Option<i64>>>>,
    /// The offsets of the newest checkpoint reported.
    pub committed: Arc<Mutex<BTreeMap<PartitionKey, i64>>>,
}

impl MemorySource {
    pub fn new(
        topics: &MemoryTopics,
        sources: &[SourceTable],
        batch_max_events: usize,
    ) -> MemorySource {
        MemorySource {
            topics: topics.clone(),
            sources: Arc::new(sources.to_vec()),
            batch_max_events: batch_max_events.max(1),
            assigned: Arc::default(),
            committed: Arc::default(),
        }
    }
}

impl ChangeSource for MemorySource {
    type Reader = MemoryReader;

    async fn partitions(&self, topic: &str) -> Result<Vec<i32>, ProcessError> {
        Ok(locked(&self.topics.partitions)
            .keys()
            .filter(|(name, _)| name == topic)
            .map(|(_, partition)| *partition)
            .collect())
    }

    async fn offsets_held(&self, topic: &str, partition: i32) -> Result<(i64, i64), ProcessError> {
        let partitions = locked(&self.topics.partitions);
        let records = partitions
            .get(&(topic.to_owned(), partition))
            .map_or(0, Vec::len);
        Ok((0, records as i64))
    }

    fn reader(
        &self,
        from: &BTreeMap<PartitionKey, Option<i64>>,
    ) -> Result<MemoryReader, ProcessError> {
        locked(&self.assigned).clone_from(from);
        Ok(MemoryReader {
            topics: self.topics.clone(),
            sources: self.sources.clone(),
            batch_max_events: self.batch_max_events,
            next: from
                .iter()
                .map(|(key, next)| (key.clone(), next.unwrap_or(0)))
                .collect(),
        })
    }

    fn commit(&self, offsets: &BTreeMap<PartitionKey, i64>, _wait: bool) {
        locked(&self.committed).clone_from(offsets);
    }

    fn lag(&self, offsets: &BTreeMap<PartitionKey, i64>) -> u64 {
        let partitions = locked(&self.topics.partitions);
        offsets
            .iter()
            .map(|(key, &next)| {
                let end = partitions.get(key).map_or(0, Vec::len) as i64;
                (end - next).max(0) as u64
            })
            .sum()
    }
}

/// Reads up to a batch's worth of records, partition by partition, decoding them as the Kafka
/// reader does (JSON sources).
pub(crate) struct MemoryReader {
    topics: MemoryTopics,
    sources: Arc<Vec<SourceTable>>,
    batch_max_events: usize,
    next: BTreeMap<PartitionKey, i64>,
}

impl BatchRead for MemoryReader {
    async fn read(&mut self) -> ReadBatch {
        let mut batch = ReadBatch::new(false);
        {
            let partitions = locked(&self.topics.partitions);
            for ((topic, partition), next) in &mut self.next {
                let records = partitions
                    .get(&(topic.clone(), *partition))
                    .map_or(&[][..], Vec::as_slice);
                while batch.events < self.batch_max_events && (*next as usize) < records.len() {
                    let record = Record {
                        topic,
                        partition: *partition,
                        offset: *next,
                        key: None,
                        payload: records[*next as usize].as_deref(),
                    };
                    batch.count(&record);
                    for (source_index, source) in self.sources.iter().enumerate() {
                        if source.topic == *topic {
                            batch.add(
                                source_index,
                                source,
                                &record,
                                decode(source, record.payload),
                            );
                        }
                    }
                    *next += 1;
                }
            }
        }
        if batch.events == 0 {
            // Nothing new: wait a little, as a consumer's poll would.
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        batch
    }
}

/// Sink tables in memory, written as Cassandra writes them, and the records sent to topics.
/// Clones share the tables, which outlive a run (as Cassandra outlives a process).
#[derive(Clone, Default)]
pub(crate) struct MemorySink {
    tables: Arc<Mutex<HashMap<String, HashMap<Row, Row>>>>,
    letters: Arc<Mutex<Vec<(String, DeadLetter)>>>,
    /// Table writes still to refuse.
    refuse_writes: Arc<AtomicUsize>,
    /// Table writes refused so far.
    refused: Arc<AtomicUsize>,
}

impl MemorySink {
    /// Refuses the next `count` table writes (`usize::MAX`: all of them, until told otherwise).
    pub fn refuse_writes(&self, count: usize) {
        self.refuse_writes.store(count, Ordering::SeqCst);
    }

    pub fn refused(&self) -> usize {
        self.refused.load(Ordering::SeqCst)
    }

    /// A table's rows as text (`value | value`), sorted.
    pub fn rows(&self, table: &str) -> Vec<String> {
        locked(&self.tables)
            .get(table)
            .map(crate::golden::sorted_rows)
            .unwrap_or_default()
    }

    /// What was sent to `topic`.
    pub fn letters(&self, topic: &str) -> Vec<DeadLetter> {
        locked(&self.letters)
            .iter()
            .filter(|(to, _)| to == topic)
            .map(|(_, letter)| letter.clone())
            .collect()
    }
}

impl BatchSink for MemorySink {
    async fn prepare(&mut self, table: &SinkTable) -> Result<(), SinkError> {
        locked(&self.tables).entry(table.name.clone()).or_default();
        Ok(())
    }

    async fn write_rows(&self, table: &SinkTable, delta: &SinkDelta) -> Result<(), SinkError> {
        let refuse = self
            .refuse_writes
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |left| {
                left.checked_sub(1)
            })
            .is_ok();
        if refuse {
            self.refused.fetch_add(1, Ordering::SeqCst);
            return Err(SinkError::Refused {
                table: table.name.clone(),
            });
        }
        let mut tables = locked(&self.tables);
        delta.apply_to(tables.entry(table.name.clone()).or_default());
        Ok(())
    }

    async fn send_letters(&self, topic: &str, letters: &[DeadLetter]) -> Result<(), KafkaError> {
        locked(&self.letters).extend(
            letters
                .iter()
                .map(|letter| (topic.to_owned(), letter.clone())),
        );
        Ok(())
    }
}
