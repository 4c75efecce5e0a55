//! Session windows: `GROUP BY session(time, gap), key...`. Per key, events closer than `gap`
//! to one another form a session, from its first event to its last plus the gap. An event
//! that falls between two sessions joins them into one: their rows are taken back and the
//! merged session's row written (its start, part of the sink key, may move earlier). With
//! `emit = 'on_close'` a session's row is written once the watermark passes its end; with
//! `'updating'` as it grows. A session is freed once the watermark passes its end plus the
//! allowed lateness. An event that would start a session the watermark has already passed
//! (beyond the allowed lateness), touching no kept session, is late: set aside for the
//! late-events topic.

use rustc_hash::FxHashMap as HashMap;

use datafusion::arrow::array::ArrayRef;
use datafusion::error::DataFusionError;
use serde::{Deserialize, Serialize};

use super::accumulator::{cell, Accumulator, CallInputs};
use super::window::LateEvent;
use super::{Changes, Replay};
use crate::definition::EmitMode;
use crate::plan::{AggregatePlan, SessionWindow};
use crate::value::{Row, Value};

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct SessionState {
    /// Per key (the group columns other than the session), its kept sessions.
    keys: HashMap<Row, Vec<Session>>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Session {
    start_us: i64,
    last_us: i64,
    rows: i64,
    accumulators: Vec<Accumulator>,
    /// Its row is in the sink.
    emitted: bool,
    /// Changed by the batch being applied.
    #[serde(skip)]
    touched: bool,
}

impl SessionState {
    pub fn sessions(&self) -> usize {
        self.keys.values().map(Vec::len).sum()
    }

    pub fn apply(
        &mut self,
        plan: &AggregatePlan,
        session: &SessionWindow,
        input: &Changes,
        watermark: Option<i64>,
        replay: Replay,
        late: &mut Vec<LateEvent>,
    ) -> Result<Changes, DataFusionError> {
        let rows = input.len();
        let evaluate = |expr: &std::sync::Arc<dyn datafusion::physical_expr::PhysicalExpr>| {
            expr.evaluate(&input.batch)?.into_array(rows)
        };
        let mut group_arrays: Vec<ArrayRef> = Vec::new();
        if rows > 0 {
            for expr in &plan.group_exprs {
                group_arrays.push(evaluate(expr)?);
            }
        }
        let inputs = CallInputs::evaluate(&plan.calls, rows, evaluate)?;
        let gap = session.gap_us;
        let mut output: Vec<(Row, i8)> = Vec::new();
        for row in 0..rows {
            let mut key = Vec::with_capacity(group_arrays.len());
            let mut time_us = None;
            for (index, array) in group_arrays.iter().enumerate() {
                let value = cell(array.as_ref(), row)?;
                if index == session.start_group {
                    if let Value::Timestamp(micros) = value {
                        time_us = Some(micros);
                    }
                } else {
                    key.push(value);
                }
            }
            // No event time: no session (decoding refuses such events of the source).
            let Some(time_us) = time_us else { continue };
            let arrived_at = input
                .arrivals
                .as_ref()
                .map_or(i64::MIN, |arrivals| arrivals[row]);
            let sessions = self.keys.entry(key.clone()).or_default();
            // Sessions past their end and lateness when this event arrived are closed for
            // good, whether or not this batch has freed them yet (the result must not depend
            // on where batches are cut).
            let overlapping: Vec<usize> = sessions
                .iter()
                .enumerate()
                .filter(|(_, kept)| {
                    time_us < kept.last_us.saturating_add(gap)
                        && time_us.saturating_add(gap) > kept.start_us
                        && (kept.last_us.saturating_add(gap))
                            .saturating_add(session.allowed_lateness_us)
                            > arrived_at
                })
                .map(|(index, _)| index)
                .collect();
            if overlapping.is_empty()
                && (time_us.saturating_add(gap)).saturating_add(session.allowed_lateness_us)
                    <= arrived_at
            {
                late.push(LateEvent {
                    source: session.source.clone(),
                    row: (0..input.batch.num_columns())
                        .map(|column| cell(input.batch.column(column).as_ref(), row))
                        .collect::<Result<_, _>>()?,
                    column_names: input
                        .batch
                        .schema()
                        .fields()
                        .iter()
                        .map(|field| field.name().clone())
                        .collect(),
                    window_start_us: time_us,
                    window_end_us: time_us.saturating_add(gap),
                    watermark_us: arrived_at,
                });
                if sessions.is_empty() {
                    self.keys.remove(&key);
                }
                continue;
            }
            let mut merged = Session {
                start_us: time_us,
                last_us: time_us,
                rows: 0,
                accumulators: plan.calls.iter().map(Accumulator::new).collect(),
                emitted: false,
                touched: true,
            };
            // Merged sessions leave; their rows leave the sink with them. Replaying after a
            // crash, a session this run has not written may be one the killed run wrote.
            for index in overlapping.into_iter().rev() {
                let old = sessions.swap_remove(index);
                if old.emitted || replay == Replay::AfterCrash {
                    output.push((output_row(plan, session, &key, &old), -1));
                }
                merged.start_us = merged.start_us.min(old.start_us);
                merged.last_us = merged.last_us.max(old.last_us);
                merged.rows += old.rows;
                for (into, from) in merged.accumulators.iter_mut().zip(&old.accumulators) {
                    into.merge(from);
                }
            }
            merged.rows += i64::from(input.weights[row]);
            inputs.accumulate(&mut merged.accumulators, row, input.weights[row])?;
            sessions.push(merged);
        }

        // Write what is due: touched sessions (updating, or already closed), then sessions
        // the watermark has just closed (on close); free what is past its lateness.
        let watermark = watermark.unwrap_or(i64::MIN);
        let mut written = Vec::new();
        for (key, sessions) in self.keys.iter_mut() {
            for kept in sessions.iter_mut() {
                let closed = kept.last_us.saturating_add(gap) <= watermark;
                let due = match session.emit {
                    EmitMode::Updating => kept.touched,
                    EmitMode::OnClose => closed && (kept.touched || !kept.emitted),
                };
                if due {
                    // A session that took an event was rebuilt above, its old row already
                    // taken back: this is its only row now.
                    written.push((output_row(plan, session, key, kept), 1));
                    kept.emitted = true;
                }
                kept.touched = false;
            }
            sessions.retain(|kept| {
                (kept.last_us.saturating_add(gap)).saturating_add(session.allowed_lateness_us)
                    > watermark
            });
        }
        self.keys.retain(|_, sessions| !sessions.is_empty());
        // The same order whatever the hash map's.
        written.sort_by_key(|(row, _)| format!("{row:?}"));
        output.extend(written);
        Changes::from_rows(plan.output_schema.clone(), &output)
    }
}

/// A session's row: the group columns with the session's start in its place, then one
/// column per aggregate call.
fn output_row(plan: &AggregatePlan, session: &SessionWindow, key: &Row, kept: &Session) -> Row {
    let mut row = Vec::with_capacity(key.len() + 1 + plan.calls.len());
    let mut rest = key.iter();
    for index in 0..key.len() + 1 {
        if index == session.start_group {
            row.push(Value::Timestamp(kept.start_us));
        } else if let Some(value) = rest.next() {
            row.push(value.clone());
        }
    }
    for (call, accumulator) in plan.calls.iter().zip(&kept.accumulators) {
        row.push(accumulator.result(call.kind, call.output_type));
    }
    row
}
