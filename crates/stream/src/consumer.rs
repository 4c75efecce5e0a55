//! A pipeline's Kafka consumer: its configuration, and the context that reports what
//! librdkafka says after the fact (offset commits that failed).

use std::collections::BTreeMap;
use std::sync::Arc;

use rdkafka::consumer::{CommitMode, Consumer, ConsumerContext, StreamConsumer};
use rdkafka::error::{KafkaError, KafkaResult};
use rdkafka::{ClientContext, Offset, TopicPartitionList};

use crate::metrics::{ProcessMetrics, RecoveredError};

/// A pipeline's consumer.
pub type PipelineConsumer = StreamConsumer<PipelineConsumerContext>;

/// Logs and counts offset commits that fail. An asynchronous commit's result arrives later,
/// through this context, while the consumer is polled.
pub struct PipelineConsumerContext {
    pipeline: String,
    group: String,
    metrics: Arc<ProcessMetrics>,
}

impl PipelineConsumerContext {
    pub fn new(pipeline: &str, group: &str, metrics: Arc<ProcessMetrics>) -> Self {
        PipelineConsumerContext {
            pipeline: pipeline.to_owned(),
            group: group.to_owned(),
            metrics,
        }
    }

    fn commit_failed(&self, error: &KafkaError, offsets: &TopicPartitionList) {
        self.metrics.error(RecoveredError::OffsetCommit).inc();
        let offsets: Vec<String> = offsets
            .elements()
            .iter()
            .map(|element| match element.offset() {
                Offset::Offset(next) => {
                    format!("{}[{}]@{next}", element.topic(), element.partition())
                }
                other => format!("{}[{}]@{other:?}", element.topic(), element.partition()),
            })
            .collect();
        tracing::warn!(
            pipeline = %self.pipeline,
            group = %self.group,
            %error,
            offsets = %offsets.join(", "),
            "committing offsets to the consumer group failed; the checkpoint is unaffected (it \
             decides where the pipeline resumes), but the group's lag that walflow lag and \
             Kafka's tools show stays behind until a commit succeeds"
        );
    }
}

impl ClientContext for PipelineConsumerContext {}

impl ConsumerContext for PipelineConsumerContext {
    fn commit_callback(&self, result: KafkaResult<()>, offsets: &TopicPartitionList) {
        if let Err(error) = result {
            self.commit_failed(&error, offsets);
        }
    }
}

/// The consumer group's committed offsets follow the checkpoint, so Kafka's own tools (and
/// `walflow lag`) see how far processing is. The checkpoint stays the source of truth.
pub fn commit_offsets(
    consumer: &PipelineConsumer,
    offsets: &BTreeMap<(String, i32), i64>,
    mode: CommitMode,
) {
    let mut list = TopicPartitionList::new();
    for ((topic, partition), &next) in offsets {
        if let Err(error) = list.add_partition_offset(topic, *partition, Offset::Offset(next)) {
            consumer.context().commit_failed(&error, &list);
            return;
        }
    }
    let commit = || consumer.commit(&list, mode);
    let result = match mode {
        CommitMode::Sync => tokio::task::block_in_place(commit),
        CommitMode::Async => commit(),
    };
    if let Err(error) = result {
        consumer.context().commit_failed(&error, &list);
    }
}

/// A partition the pipeline cannot read where it must go on: Kafka no longer has the offset
/// (retention deleted it), or never had it (the topic was created again).
#[derive(Debug, Clone, PartialEq)]
pub struct OffsetGap {
    pub topic: String,
    pub partition: i32,
    /// Where the pipeline must read next.
    pub next: i64,
    /// The partition's first and next offsets in Kafka (low and high watermarks).
    pub low: i64,
    pub high: i64,
}

impl OffsetGap {
    /// The gap, if any, of reading `topic`'s `partition` at `next` when Kafka holds
    /// `low..high`.
    pub fn of(topic: &str, partition: i32, next: i64, (low, high): (i64, i64)) -> Option<Self> {
        (next < low || next > high).then(|| OffsetGap {
            topic: topic.to_owned(),
            partition,
            next,
            low,
            high,
        })
    }
}

impl std::fmt::Display for OffsetGap {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let OffsetGap {
            topic,
            partition,
            next,
            low,
            high,
        } = self;
        if next < low {
            write!(
                f,
                "topic {topic} partition {partition}: offsets {next} to {} were deleted (by \
                 retention) before the pipeline read them; the partition now starts at offset \
                 {low}",
                low - 1
            )
        } else {
            write!(
                f,
                "topic {topic} partition {partition}: the pipeline must read on at offset \
                 {next}, past the partition's end at {high} (was the topic deleted and created \
                 again?)"
            )
        }
    }
}

/// How to rebuild the sink tables when the topics no longer hold every change.
const REBUILD_FROM_A_NEW_SNAPSHOT: &str = "To rebuild from a complete copy of the source \
    tables, let a second walflow cdc snapshot them into new topics (walflow cdc --topic-prefix \
    NEW --slot NEW --publication NEW; a new slot takes an initial snapshot), point the \
    pipeline's sources at NEW.<schema>.<table> and run walflow process --rebuild on it, then \
    stop the old cdc and drop its slot (docs/operations.md, \"Topics shortened by retention\")";

/// Why a pipeline resuming from its checkpoint stops instead of skipping `gaps`.
pub fn resume_refused(gaps: &[OffsetGap]) -> String {
    let gaps: Vec<String> = gaps.iter().map(OffsetGap::to_string).collect();
    format!(
        "{}. Going on would leave those changes out of the state and sink tables for good. \
         {REBUILD_FROM_A_NEW_SNAPSHOT}",
        gaps.join("; ")
    )
}

/// Why a rebuild is refused when retention has deleted the first records of `starts`
/// (topic, partition, first offset still in Kafka).
pub fn rebuild_refused(starts: &[(String, i32, i64)]) -> String {
    let starts: Vec<String> = starts
        .iter()
        .map(|(topic, partition, low)| {
            format!("topic {topic} partition {partition} starts at offset {low}")
        })
        .collect();
    format!(
        "cannot rebuild from the start of the topics: {} (retention deleted the records before \
         it), so the rebuilt sink tables would hold only the changes still retained. The sink \
         tables and the checkpoint are left as they were. {REBUILD_FROM_A_NEW_SNAPSHOT}",
        starts.join(", ")
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use rdkafka::types::RDKafkaErrorCode;

    #[test]
    fn a_failed_commit_reported_later_is_counted() {
        let metrics = Arc::new(ProcessMetrics::default());
        let context = PipelineConsumerContext::new("users", "walflow-users", metrics.clone());
        let mut offsets = TopicPartitionList::new();
        offsets
            .add_partition_offset("walflow.public.users", 0, Offset::Offset(42))
            .unwrap();
        context.commit_callback(Ok(()), &offsets);
        assert_eq!(metrics.error(RecoveredError::OffsetCommit).get(), 0);
        context.commit_callback(
            Err(KafkaError::ConsumerCommit(
                RDKafkaErrorCode::CoordinatorNotAvailable,
            )),
            &offsets,
        );
        assert_eq!(metrics.error(RecoveredError::OffsetCommit).get(), 1);
    }

    #[test]
    fn a_gap_is_an_offset_before_the_first_retained_one_or_past_the_end() {
        assert_eq!(OffsetGap::of("t", 0, 5, (0, 9)), None);
        assert_eq!(OffsetGap::of("t", 0, 9, (9, 9)), None);
        let deleted = OffsetGap::of("t", 2, 3, (5, 9)).unwrap();
        assert!(
            deleted
                .to_string()
                .contains("topic t partition 2: offsets 3 to 4 were deleted"),
            "{deleted}"
        );
        let recreated = OffsetGap::of("t", 0, 12, (0, 4)).unwrap();
        assert!(
            recreated
                .to_string()
                .contains("past the partition's end at 4"),
            "{recreated}"
        );
        let message = resume_refused(&[deleted]);
        assert!(
            message.contains("--topic-prefix") && message.contains("--rebuild"),
            "{message}"
        );
    }
}
