//! `walflow lag`: how far behind each hop is, read from the systems themselves (Postgres's
//! slot, Kafka's committed offsets, the checkpoints on disk), so it answers while walflow's
//! own processes are down, which is when people look.

pub mod kafka;
pub mod postgres;

use serde::Serialize;

pub use kafka::{ConsumerGroup, PartitionLag};
pub use postgres::SlotLag;

/// One pipeline's checkpoint, as found on disk, and the end-to-end lag it implies.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct CheckpointAge {
    pub pipeline: String,
    /// Milliseconds since the checkpoint was written; `None` when there is none yet.
    pub age_ms: Option<u64>,
    /// Postgres commit time (Unix ms) of the newest change in Cassandra as of the checkpoint.
    pub newest_commit_ms: Option<i64>,
    /// Now minus `newest_commit_ms`; zero when nothing is waiting anywhere (cdc attached and
    /// caught up, the pipeline's consumer group at the end of every partition). Set by
    /// [`LagReport::settle_end_to_end`].
    pub end_to_end_ms: Option<u64>,
    /// For a pipeline with event-time windows: its lowest watermark as of the checkpoint
    /// (Unix ms), and now minus it (how far behind wall-clock time its windows close).
    pub watermark_ms: Option<i64>,
    pub watermark_lag_ms: Option<u64>,
}

/// Everything `walflow lag` reports, hop by hop. The JSON shape of `walflow lag --json`.
#[derive(Debug, Clone, Serialize)]
pub struct LagReport {
    /// The replication slot cdc reads; `None` when it does not exist.
    pub slot: Option<SlotLag>,
    pub slot_name: String,
    /// Per processing pipeline's consumer group, per partition of its topics.
    pub kafka: Vec<PartitionLag>,
    pub checkpoints: Vec<CheckpointAge>,
    /// What could not be read, per hop (the rest of the report still stands).
    pub errors: Vec<HopError>,
}

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct HopError {
    pub hop: &'static str,
    pub message: String,
}

/// Limits whose breach makes `walflow lag` exit 3.
#[derive(Debug, Clone, Copy, Default)]
pub struct Thresholds {
    pub max_lag_bytes: Option<u64>,
    /// cdc's time lag and each pipeline's end-to-end lag.
    pub max_lag_ms: Option<u64>,
    pub max_lag_events: Option<u64>,
    pub max_checkpoint_age_ms: Option<u64>,
}

/// A limit exceeded, naming the hop.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Breach {
    pub hop: String,
    pub message: String,
}

impl LagReport {
    /// Fills in each pipeline's end-to-end lag from its checkpoint and the other hops.
    pub fn settle_end_to_end(&mut self, now_ms: i64) {
        let cdc_caught_up = self
            .slot
            .as_ref()
            .is_some_and(|slot| slot.cdc_lag_ms == Some(0.0));
        for checkpoint in &mut self.checkpoints {
            let group = format!("walflow-process-{}", checkpoint.pipeline);
            let mut partitions = self.kafka.iter().filter(|lag| lag.group == group);
            let processed_all =
                partitions.clone().next().is_some() && partitions.all(|lag| lag.lag == 0);
            checkpoint.end_to_end_ms = if cdc_caught_up && processed_all {
                Some(0)
            } else {
                checkpoint
                    .newest_commit_ms
                    .map(|commit| (now_ms - commit).max(0) as u64)
            };
        }
    }

    /// The limits this report exceeds; a hop that could not be read counts as exceeding
    /// every limit set on it (a monitor must not go quiet because the thing is down).
    pub fn breaches(&self, thresholds: &Thresholds) -> Vec<Breach> {
        let mut breaches = Vec::new();
        if let Some(limit) = thresholds.max_lag_bytes {
            // Postgres counts WAL bytes in an i64: a larger limit is one no slot can pass.
            let limit = i64::try_from(limit).unwrap_or(i64::MAX);
            match &self.slot {
                Some(slot) if slot.lag_bytes.unwrap_or(0) > limit => breaches.push(Breach {
                    hop: "postgres slot".into(),
                    message: format!(
                        "slot {} is {} behind the current WAL position (limit {})",
                        slot.slot_name,
                        human_bytes(slot.lag_bytes.unwrap_or(0)),
                        human_bytes(limit)
                    ),
                }),
                Some(_) => {}
                None => breaches.push(Breach {
                    hop: "postgres slot".into(),
                    message: format!(
                        "slot {} could not be read or does not exist",
                        self.slot_name
                    ),
                }),
            }
        }
        if let Some(limit) = thresholds.max_lag_ms {
            if let Some(slot) = &self.slot {
                match slot.cdc_lag_ms {
                    Some(lag) if lag > limit as f64 => breaches.push(Breach {
                        hop: "cdc".into(),
                        message: format!(
                            "cdc is {} behind Postgres (limit {})",
                            human_duration_ms(lag as u64),
                            human_duration_ms(limit)
                        ),
                    }),
                    Some(_) => {}
                    None => breaches.push(Breach {
                        hop: "cdc".into(),
                        message: format!("no walflow cdc is attached to slot {}", slot.slot_name),
                    }),
                }
            }
            for checkpoint in &self.checkpoints {
                if let Some(lag) = checkpoint.end_to_end_ms.filter(|&lag| lag > limit) {
                    breaches.push(Breach {
                        hop: "end to end".into(),
                        message: format!(
                            "pipeline {}'s newest result in Cassandra was committed {} ago (limit {})",
                            checkpoint.pipeline,
                            human_duration_ms(lag),
                            human_duration_ms(limit)
                        ),
                    });
                }
            }
        }
        if let Some(limit) = thresholds.max_lag_events {
            for partition in &self.kafka {
                if partition.lag > limit {
                    breaches.push(Breach {
                        hop: "kafka".into(),
                        message: format!(
                            "consumer group {} is {} events behind on {}[{}] (limit {limit})",
                            partition.group, partition.lag, partition.topic, partition.partition
                        ),
                    });
                }
            }
        }
        if let Some(limit) = thresholds.max_checkpoint_age_ms {
            for checkpoint in &self.checkpoints {
                if checkpoint.age_ms.is_none_or(|age| age > limit) {
                    breaches.push(Breach {
                        hop: "processing".into(),
                        message: format!(
                            "pipeline {}'s last checkpoint is {} (limit {})",
                            checkpoint.pipeline,
                            checkpoint
                                .age_ms
                                .map_or("missing".to_owned(), |age| format!(
                                    "{} old",
                                    human_duration_ms(age)
                                )),
                            human_duration_ms(limit)
                        ),
                    });
                }
            }
        }
        for error in &self.errors {
            let limited = match error.hop {
                "postgres slot" => thresholds.max_lag_bytes.is_some(),
                "kafka" => thresholds.max_lag_events.is_some(),
                "processing" => thresholds.max_checkpoint_age_ms.is_some(),
                _ => false,
            };
            if limited {
                breaches.push(Breach {
                    hop: error.hop.into(),
                    message: error.message.clone(),
                });
            }
        }
        breaches
    }

    /// Loud warnings a user must not miss, whatever the thresholds.
    pub fn warnings(&self) -> Vec<String> {
        let mut warnings = Vec::new();
        if let Some(slot) = &self.slot {
            if !slot.active && slot.retained_bytes.unwrap_or(0) > 0 {
                warnings.push(format!(
                    "slot {} is INACTIVE and retains {} of WAL, growing with every write: start \
                     walflow cdc, or drop the slot (walflow cdc drop) if it is abandoned, before \
                     the WAL fills Postgres's disk",
                    slot.slot_name,
                    human_bytes(slot.retained_bytes.unwrap_or(0))
                ));
            }
            if slot.wal_status.as_deref() == Some("lost") {
                warnings.push(format!(
                    "slot {} has lost WAL it still needed (wal_status lost): changes are gone; \
                     drop it (walflow cdc drop) and start cdc again to take a new snapshot",
                    slot.slot_name
                ));
            }
        }
        warnings
    }

    /// The report as a table for people.
    pub fn render_table(&self) -> String {
        let mut rows: Vec<[String; 3]> = Vec::new();
        match &self.slot {
            Some(slot) => {
                let state = if slot.active {
                    match slot.active_seconds {
                        Some(seconds) => format!(
                            "active (pid {}, for {})",
                            slot.active_pid.unwrap_or_default(),
                            human_duration_ms((seconds * 1000.0) as u64)
                        ),
                        None => format!("active (pid {})", slot.active_pid.unwrap_or_default()),
                    }
                } else {
                    "INACTIVE".to_owned()
                };
                rows.push([
                    "postgres slot".into(),
                    slot.slot_name.clone(),
                    format!(
                        "{} behind, retains {}, wal_status {}{}, {state}",
                        slot.lag_bytes.map_or("?".into(), human_bytes),
                        slot.retained_bytes.map_or("?".into(), human_bytes),
                        slot.wal_status.as_deref().unwrap_or("?"),
                        slot.safe_wal_size.map_or(String::new(), |size| format!(
                            " (safe {})",
                            human_bytes(size)
                        )),
                    ),
                ]);
            }
            None => rows.push([
                "postgres slot".into(),
                self.slot_name.clone(),
                "does not exist (walflow cdc creates it)".into(),
            ]),
        }
        if let Some(slot) = &self.slot {
            rows.push([
                "cdc".into(),
                slot.slot_name.clone(),
                match slot.cdc_lag_ms {
                    Some(0.0) => "caught up".into(),
                    Some(lag) => {
                        format!("{} behind (commit -> Kafka)", human_duration_ms(lag as u64))
                    }
                    None => "not attached to the slot".into(),
                },
            ]);
        }
        for partition in &self.kafka {
            rows.push([
                "kafka".into(),
                format!(
                    "{} {}[{}]",
                    partition.group, partition.topic, partition.partition
                ),
                format!(
                    "{} events behind (end {}, committed {})",
                    partition.lag,
                    partition.end_offset,
                    partition
                        .committed_offset
                        .map_or("none".to_owned(), |offset| offset.to_string())
                ),
            ]);
        }
        for checkpoint in &self.checkpoints {
            rows.push([
                "processing".into(),
                checkpoint.pipeline.clone(),
                match (checkpoint.age_ms, checkpoint.watermark_lag_ms) {
                    (Some(age), Some(watermark)) => format!(
                        "checkpoint {} old, watermark {} behind",
                        human_duration_ms(age),
                        human_duration_ms(watermark)
                    ),
                    (Some(age), None) => format!("checkpoint {} old", human_duration_ms(age)),
                    (None, _) => "no checkpoint yet".into(),
                },
            ]);
        }
        for error in &self.errors {
            rows.push([error.hop.into(), "error".into(), error.message.clone()]);
        }
        crate::table::render(None, &rows)
    }
}

/// Bytes in kB/MB/GB (powers of 1024), as people read them.
pub fn human_bytes(bytes: i64) -> String {
    let units = ["B", "kB", "MB", "GB", "TB"];
    let mut value = bytes as f64;
    let mut unit = 0;
    while value.abs() >= 1024.0 && unit < units.len() - 1 {
        value /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{bytes} B")
    } else {
        format!("{value:.1} {}", units[unit])
    }
}

/// Milliseconds as ms, s, min or h.
pub fn human_duration_ms(ms: u64) -> String {
    match ms {
        0..=999 => format!("{ms} ms"),
        1_000..=59_999 => format!("{:.1} s", ms as f64 / 1000.0),
        60_000..=3_599_999 => format!("{:.1} min", ms as f64 / 60_000.0),
        _ => format!("{:.1} h", ms as f64 / 3_600_000.0),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn report(lag_bytes: i64, active: bool) -> LagReport {
        LagReport {
            slot: Some(SlotLag {
                slot_name: "walflow".into(),
                active,
                active_pid: active.then_some(42),
                active_seconds: active.then_some(90.0),
                wal_status: Some("reserved".into()),
                safe_wal_size: None,
                lag_bytes: Some(lag_bytes),
                retained_bytes: Some(lag_bytes + 100),
                confirmed_flush_lsn: Some("0/16B3748".into()),
                cdc_lag_ms: active.then_some(0.0),
            }),
            slot_name: "walflow".into(),
            kafka: vec![PartitionLag {
                group: "walflow-process-users".into(),
                topic: "walflow.public.users".into(),
                partition: 0,
                end_offset: 120,
                committed_offset: Some(100),
                lag: 20,
            }],
            checkpoints: vec![CheckpointAge {
                pipeline: "users".into(),
                age_ms: Some(4_000),
                newest_commit_ms: Some(1_000_000),
                end_to_end_ms: None,
                watermark_ms: None,
                watermark_lag_ms: None,
            }],
            errors: vec![],
        }
    }

    #[test]
    fn thresholds_name_the_hop_that_breaches_them() {
        let report = report(5_000, true);
        assert!(report.breaches(&Thresholds::default()).is_empty());
        let breaches = report.breaches(&Thresholds {
            max_lag_bytes: Some(4_096),
            max_lag_ms: None,
            max_lag_events: Some(20),
            max_checkpoint_age_ms: Some(3_000),
        });
        let hops: Vec<&str> = breaches.iter().map(|breach| breach.hop.as_str()).collect();
        assert_eq!(hops, ["postgres slot", "processing"]);
        assert!(
            breaches[0].message.contains("4.9 kB behind"),
            "{breaches:?}"
        );
    }

    #[test]
    fn a_byte_limit_past_what_postgres_counts_is_never_breached() {
        let breaches = report(5_000, true).breaches(&Thresholds {
            max_lag_bytes: Some(u64::MAX),
            ..Thresholds::default()
        });
        assert!(breaches.is_empty(), "{breaches:?}");
    }

    #[test]
    fn an_inactive_slot_retaining_wal_is_warned_about() {
        assert!(report(0, true).warnings().is_empty());
        let warnings = report(2 << 20, false).warnings();
        assert_eq!(warnings.len(), 1);
        assert!(
            warnings[0].contains("INACTIVE and retains 2.0 MB"),
            "{warnings:?}"
        );
    }

    #[test]
    fn units_read_as_people_write_them() {
        assert_eq!(human_bytes(512), "512 B");
        assert_eq!(human_bytes(1536), "1.5 kB");
        assert_eq!(human_bytes(3 << 30), "3.0 GB");
        assert_eq!(human_duration_ms(250), "250 ms");
        assert_eq!(human_duration_ms(1_500), "1.5 s");
        assert_eq!(human_duration_ms(90_000), "1.5 min");
    }

    #[test]
    fn end_to_end_is_zero_only_when_nothing_waits_anywhere() {
        let mut report = report(0, true);
        // The consumer group is 20 events behind: the newest result is 9 s old.
        report.settle_end_to_end(1_009_000);
        assert_eq!(report.checkpoints[0].end_to_end_ms, Some(9_000));
        let breaches = report.breaches(&Thresholds {
            max_lag_ms: Some(5_000),
            ..Thresholds::default()
        });
        assert_eq!(breaches.len(), 1, "{breaches:?}");
        assert_eq!(breaches[0].hop, "end to end");

        report.kafka[0].lag = 0;
        report.settle_end_to_end(1_009_000);
        assert_eq!(report.checkpoints[0].end_to_end_ms, Some(0));

        // cdc gone: the slot has no reader, which a time limit reports.
        let mut detached = report.clone();
        detached.slot.as_mut().unwrap().cdc_lag_ms = None;
        detached.settle_end_to_end(1_009_000);
        assert_eq!(detached.checkpoints[0].end_to_end_ms, Some(9_000));
        let hops: Vec<String> = detached
            .breaches(&Thresholds {
                max_lag_ms: Some(5_000),
                ..Thresholds::default()
            })
            .into_iter()
            .map(|breach| breach.hop)
            .collect();
        assert_eq!(hops, ["cdc", "end to end"]);
    }
}
