//! A pipeline's Kafka consumer: its configuration, and the context that reports what
//! librdkafka says after the fact (offset commits that failed).

use std::sync::atomic::Ordering;
use std::sync::Arc;

use rdkafka::consumer::{CommitMode, Consumer, ConsumerContext, StreamConsumer};
use rdkafka::error::{KafkaError, KafkaResult};
use rdkafka::{ClientContext, Offset, TopicPartitionList};

use crate::checkpoint::Checkpoint;
use crate::runner::ProcessMetrics;

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
        self.metrics
            .offset_commit_errors
            .fetch_add(1, Ordering::Relaxed);
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
pub fn commit_offsets(consumer: &PipelineConsumer, state: &Checkpoint, mode: CommitMode) {
    let mut list = TopicPartitionList::new();
    for ((topic, partition), &next) in &state.offsets {
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
        assert_eq!(metrics.offset_commit_errors.load(Ordering::Relaxed), 0);
        context.commit_callback(
            Err(KafkaError::ConsumerCommit(
                RDKafkaErrorCode::CoordinatorNotAvailable,
            )),
            &offsets,
        );
        assert_eq!(metrics.offset_commit_errors.load(Ordering::Relaxed), 1);
    }
}
