//! Where a run starts: the checkpoint it resumes from, or a fresh state (the sink tables
//! emptied first when rebuilding), and where each partition ends at that moment.

use std::collections::BTreeMap;

use crate::checkpoint::{self, Checkpoint, CheckpointError};
use crate::consumer::OffsetGap;
use crate::io::{BatchSink, ChangeSource, PartitionKey};
use crate::sink::SinkDelta;

use super::{Pipeline, ProcessError, ProcessOptions};

/// The state a run starts from: the checkpoint's, or a fresh one (the sink tables emptied
/// first when rebuilding). Refuses to resume over offsets the source no longer holds, and to
/// rebuild from topics retention has shortened.
pub(super) async fn starting_state<S: ChangeSource, K: BatchSink>(
    pipeline: &Pipeline,
    options: &ProcessOptions,
    source: &S,
    sink: &mut K,
    partitions: &[PartitionKey],
    checkpoint_path: &std::path::Path,
) -> Result<Start, ProcessError> {
    let name = &pipeline.definition.name;
    let fail = |message: String| ProcessError::Pipeline {
        pipeline: name.clone(),
        message,
    };
    let mut rebuild = options.rebuild;
    let saved = match checkpoint::load(checkpoint_path) {
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
        Err(error @ (CheckpointError::Corrupt { .. } | CheckpointError::UnknownFormat { .. }))
            if options.rebuild_if_changed =>
        {
            tracing::warn!(pipeline = %name, %error, "the checkpoint cannot be used: rebuilding");
            rebuild = true;
            None
        }
        Err(error) if !rebuild => return Err(error.into()),
        Err(_) => None,
        Ok(saved) => saved.filter(|_| !rebuild),
    };
    // What the source still holds of each partition, before anything is emptied.
    let mut retained = BTreeMap::new();
    for (topic, partition) in partitions {
        let range = source.offsets_held(topic, *partition).await?;
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
        checkpoint::remove(checkpoint_path)?;
    }
    let resumed = saved.is_some();
    let state = match saved {
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
                    sink.write_rows(&query.sink, &delta).await?;
                }
                tracing::info!(pipeline = %name, "rebuilding from the start of the topics");
            }
            pipeline.fresh_checkpoint()
        }
    };
    let ends = retained
        .into_iter()
        .map(|(key, (_, high))| (key, high))
        .collect();
    Ok(Start {
        state,
        resumed,
        ends,
    })
}

/// What a run starts from.
pub(super) struct Start {
    pub(super) state: Checkpoint,
    /// From a saved checkpoint (else fresh, the sink tables new or emptied).
    pub(super) resumed: bool,
    /// Where each partition ends now: nothing past it can have been read before.
    pub(super) ends: BTreeMap<PartitionKey, i64>,
}
