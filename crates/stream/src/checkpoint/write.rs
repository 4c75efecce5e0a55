//! When a running pipeline writes its checkpoint, and what it counts doing so. A checkpoint
//! is due once a batch has been booked since the last one and the interval has passed; the
//! runner settles the batch in flight before writing, so offsets and state always match.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::{save, Checkpoint, CheckpointError};
use crate::metrics::{unix_ms, ProcessMetrics};

/// A pipeline's checkpoint file and its schedule.
pub struct CheckpointWriter {
    path: PathBuf,
    interval: Duration,
    last: Instant,
    /// Events were read since the last checkpoint.
    dirty: bool,
    metrics: Arc<ProcessMetrics>,
}

impl CheckpointWriter {
    pub fn new(path: PathBuf, interval: Duration, metrics: Arc<ProcessMetrics>) -> Self {
        CheckpointWriter {
            path,
            interval,
            last: Instant::now(),
            dirty: false,
            metrics,
        }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// A batch of `events` went on its way to the sink.
    pub fn batch_started(&mut self, events: usize) {
        self.dirty |= events > 0;
    }

    /// Events were read since the last checkpoint.
    pub fn is_dirty(&self) -> bool {
        self.dirty
    }

    /// The interval has passed with events read.
    pub fn is_due(&self) -> bool {
        self.dirty && self.last.elapsed() >= self.interval
    }

    /// Starts the interval over (after a checkpoint, or after finding nothing to write).
    pub fn start_interval(&mut self) {
        self.last = Instant::now();
    }

    /// Writes `state`, stamped with the time; nothing is dirty after it.
    pub fn write(&mut self, state: &mut Checkpoint) -> Result<(), CheckpointError> {
        let started = Instant::now();
        state.written_at_ms = unix_ms() as i64;
        let bytes = save(&self.path, state)?;
        let metrics = &self.metrics;
        metrics.checkpoints.inc();
        crate::metrics::set_unix_ms(&metrics.last_checkpoint, unix_ms());
        metrics.last_checkpoint_bytes.set(bytes as i64);
        metrics
            .checkpoint_seconds
            .observe(started.elapsed().as_secs_f64());
        tracing::debug!(
            bytes,
            took_ms = started.elapsed().as_millis() as u64,
            "checkpoint written"
        );
        self.dirty = false;
        Ok(())
    }
}
