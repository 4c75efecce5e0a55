//! A source's watermark: the event time up to which its windows are taken as complete. Per
//! Kafka partition it follows the newest event time seen minus the declared delay; the
//! source's watermark is the slowest partition's, leaving out partitions quiet for longer
//! than the idle timeout (so one quiet partition does not stall every window). It never
//! moves back, and it is checkpointed with the state, so a restart closes windows where the
//! run before it would have.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::definition::Watermark;

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct SourceWatermark {
    partitions: BTreeMap<i32, PartitionClock>,
    /// `None` before the first event.
    watermark_us: Option<i64>,
}

#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
struct PartitionClock {
    newest_event_us: i64,
    /// Wall-clock time (Unix ms) of the partition's last event; 0 when not tracked. Not
    /// checkpointed: after a restart every partition counts as active until it is quiet
    /// again for the idle timeout (the downtime is not quiet).
    #[serde(skip)]
    last_event_ms: u64,
}

impl SourceWatermark {
    /// The watermark (Unix microseconds); `i64::MIN` before any event.
    pub fn current(&self) -> i64 {
        self.watermark_us.unwrap_or(i64::MIN)
    }

    pub fn is_set(&self) -> bool {
        self.watermark_us.is_some()
    }

    /// An event of `partition` at `event_us`, seen at wall-clock `now_ms` (`None`: no idle
    /// detection, as in golden tests). Returns the watermark the event arrived under (the
    /// one before it), then moves the watermark on.
    pub fn observe(
        &mut self,
        spec: &Watermark,
        partition: i32,
        event_us: i64,
        now_ms: Option<u64>,
    ) -> i64 {
        let arrived_under = self.current();
        let clock = self.partitions.entry(partition).or_insert(PartitionClock {
            newest_event_us: event_us,
            last_event_ms: 0,
        });
        clock.newest_event_us = clock.newest_event_us.max(event_us);
        clock.last_event_ms = now_ms.unwrap_or(0);
        self.advance(spec, now_ms);
        arrived_under
    }

    /// Recomputes the watermark: the slowest active partition's newest event time minus the
    /// delay, never below what it was.
    pub fn advance(&mut self, spec: &Watermark, now_ms: Option<u64>) {
        let idle_after_ms = (spec.idle_timeout_us / 1000).max(0) as u64;
        let active = |clock: &&PartitionClock| match now_ms {
            Some(now) if clock.last_event_ms > 0 => {
                now.saturating_sub(clock.last_event_ms) <= idle_after_ms
            }
            _ => true,
        };
        let slowest = self
            .partitions
            .values()
            .filter(active)
            .map(|clock| clock.newest_event_us)
            .min()
            // Every partition idle: the newest of them leads.
            .or_else(|| {
                self.partitions
                    .values()
                    .map(|clock| clock.newest_event_us)
                    .max()
            });
        if let Some(slowest) = slowest {
            let candidate = slowest.saturating_sub(spec.delay_us);
            self.watermark_us = Some(self.watermark_us.map_or(candidate, |w| w.max(candidate)));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SPEC: Watermark = Watermark {
        column: 0,
        delay_us: 5,
        idle_timeout_us: 30_000_000,
    };

    #[test]
    fn the_slowest_partition_holds_the_watermark_until_it_goes_idle() {
        let mut watermark = SourceWatermark::default();
        assert_eq!(watermark.observe(&SPEC, 0, 100, Some(1_000)), i64::MIN);
        assert_eq!(watermark.current(), 95);
        watermark.observe(&SPEC, 1, 50, Some(1_000));
        assert_eq!(watermark.current(), 95, "never moves back");
        watermark.observe(&SPEC, 0, 200, Some(2_000));
        assert_eq!(
            watermark.current(),
            95,
            "partition 1 holds it at 45, under 95"
        );
        watermark.observe(&SPEC, 1, 150, Some(3_000));
        assert_eq!(watermark.current(), 145);
        // Partition 1 goes quiet for longer than the idle timeout: partition 0 leads.
        assert_eq!(watermark.observe(&SPEC, 0, 400, Some(40_000)), 145);
        assert_eq!(watermark.current(), 395);
    }

    #[test]
    fn without_wall_clock_no_partition_is_idle() {
        let mut watermark = SourceWatermark::default();
        watermark.observe(&SPEC, 0, 100, None);
        watermark.observe(&SPEC, 1, 10, None);
        watermark.observe(&SPEC, 0, 1_000, None);
        assert_eq!(watermark.current(), 95);
    }
}
