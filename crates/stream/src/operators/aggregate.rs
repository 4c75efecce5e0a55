//! The changelog aggregate: GROUP BY over an updating table. Per group it keeps the number
//! of rows and one retractable accumulator per aggregate call. A batch touches some groups;
//! for each, the group's row as it was before the batch is retracted and its row after the
//! batch is added, so downstream (and Cassandra) always hold the current result. The work
//! per batch grows with the batch, never with the history. A batch replayed after a crash
//! ([`Replay::AfterCrash`]) writes the groups after every row instead, each result the rows
//! pass through, so that no row a killed run wrote in between outlives the replay.
//!
//! Over event-time windows (one group column is a window's start), the watermark decides
//! the rest: with `emit = 'on_close'` a window's rows are held back until the watermark
//! passes its end, then written once; with `'updating'` they are written as they grow.
//! Either way a window's groups are freed once the watermark passes its end plus the
//! allowed lateness, so state holds only the open windows.

use rustc_hash::FxHashMap as HashMap;

use datafusion::arrow::array::ArrayRef;
use datafusion::error::DataFusionError;
use serde::{Deserialize, Serialize};

use super::accumulator::{cell, Accumulator, CallInputs};
use super::{Changes, Replay};
use crate::definition::EmitMode;
use crate::plan::{AggregatePlan, WindowedAggregate};
use crate::value::{Row, Value};

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct AggregateState {
    groups: HashMap<Row, GroupState>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct GroupState {
    /// Rows currently in the group; at zero the group is gone (unless the aggregate is
    /// global, which always has its one row).
    rows: i64,
    accumulators: Vec<Accumulator>,
    /// A window's group whose row has been written (emit on close).
    #[serde(default)]
    emitted: bool,
}

impl AggregateState {
    pub fn groups(&self) -> usize {
        self.groups.len()
    }

    /// Applies a batch of input changes; returns the changes of the aggregate's output.
    pub fn apply(
        &mut self,
        plan: &AggregatePlan,
        input: &Changes,
        watermark: Option<i64>,
        replay: Replay,
    ) -> Result<Changes, DataFusionError> {
        let mut changes = self.apply_rows(plan, input, watermark, replay)?;
        if let (Some(window), Some(watermark)) = (&plan.window, watermark) {
            changes.extend(self.close_windows(plan, window, watermark));
        }
        Changes::from_rows(plan.output_schema.clone(), &changes)
    }

    /// Writes the rows of windows the watermark has closed (emit on close) and frees the
    /// windows past their allowed lateness.
    fn close_windows(
        &mut self,
        plan: &AggregatePlan,
        window: &WindowedAggregate,
        watermark: i64,
    ) -> Vec<(Row, i8)> {
        let end_of = |key: &Row| match key.get(window.start_group) {
            Some(Value::Timestamp(start)) => Some(start.saturating_add(window.size_us)),
            _ => None,
        };
        let mut closed = Vec::new();
        if window.emit == EmitMode::OnClose {
            for (key, group) in self.groups.iter_mut() {
                if !group.emitted && end_of(key).is_some_and(|end| end <= watermark) {
                    group.emitted = true;
                    if group.rows > 0 {
                        closed.push((output_row(plan, key, group), 1));
                    }
                }
            }
            // The same order whatever the hash map's.
            closed.sort_by(|a: &(Row, i8), b| format!("{:?}", a.0).cmp(&format!("{:?}", b.0)));
        }
        self.groups.retain(|key, _| {
            end_of(key).is_none_or(|end| end.saturating_add(window.allowed_lateness_us) > watermark)
        });
        closed
    }

    fn apply_rows(
        &mut self,
        plan: &AggregatePlan,
        input: &Changes,
        watermark: Option<i64>,
        replay: Replay,
    ) -> Result<Vec<(Row, i8)>, DataFusionError> {
        // With emit on close, a window's row is written only once the window is closed.
        let held_back = |key: &Row| -> bool {
            let Some(window) = plan.window.as_ref().filter(|w| w.emit == EmitMode::OnClose) else {
                return false;
            };
            match (key.get(window.start_group), watermark) {
                (Some(Value::Timestamp(start)), Some(watermark)) => {
                    start.saturating_add(window.size_us) > watermark
                }
                _ => true,
            }
        };
        let rows = input.len();
        let evaluate = |expr: &std::sync::Arc<dyn datafusion::physical_expr::PhysicalExpr>| {
            expr.evaluate(&input.batch)?.into_array(rows)
        };
        let group_arrays: Vec<ArrayRef> = if rows == 0 {
            Vec::new()
        } else {
            plan.group_exprs
                .iter()
                .map(evaluate)
                .collect::<Result<_, _>>()?
        };
        let inputs = CallInputs::evaluate(&plan.calls, rows, evaluate)?;

        // The output row of each touched group before this batch, in first-touch order.
        let mut touched: Vec<(Row, Option<Row>)> = Vec::new();
        let mut touched_index: HashMap<Row, usize> = HashMap::default();
        if plan.global && self.groups.is_empty() {
            // A global aggregate has its row from the start, even over no input.
            self.groups.insert(Vec::new(), new_group(plan));
            touched_index.insert(Vec::new(), 0);
            touched.push((Vec::new(), None));
        }
        let mut output = Vec::new();
        for row in 0..rows {
            let key = group_arrays
                .iter()
                .map(|array| cell(array.as_ref(), row))
                .collect::<Result<Row, _>>()?;
            if !touched_index.contains_key(&key) {
                let before = self.visible_row(plan, &key);
                touched_index.insert(key.clone(), touched.len());
                touched.push((key.clone(), before));
            }
            let weight = input.weights[row];
            let group = self.groups.entry(key).or_insert_with(|| new_group(plan));
            group.rows += i64::from(weight);
            inputs.accumulate(&mut group.accumulators, row, weight)?;
            if replay == Replay::AfterCrash {
                // Every row's result is written: a killed run may have written any of them.
                touched_index.clear();
                output.extend(self.write_touched(plan, touched.drain(..), &held_back));
            }
        }
        output.extend(self.write_touched(plan, touched.drain(..), &held_back));
        Ok(output)
    }

    /// A group's row as the sink holds it, if it holds one.
    fn visible_row(&self, plan: &AggregatePlan, key: &Row) -> Option<Row> {
        self.groups
            .get(key)
            .filter(|group| plan.global || group.rows > 0)
            // Emit on close: only a written row can be retracted.
            .filter(|group| {
                plan.window
                    .as_ref()
                    .is_none_or(|w| w.emit == EmitMode::Updating)
                    || group.emitted
            })
            .map(|group| output_row(plan, key, group))
    }

    /// The changes that bring the sink from each touched group's row before (if any) to its
    /// row now: the retractions first, then the new rows. Groups left empty are freed.
    fn write_touched(
        &mut self,
        plan: &AggregatePlan,
        touched: impl Iterator<Item = (Row, Option<Row>)>,
        held_back: &dyn Fn(&Row) -> bool,
    ) -> Vec<(Row, i8)> {
        let mut retractions = Vec::new();
        let mut insertions = Vec::new();
        for (key, before) in touched {
            let after = match self.groups.get_mut(&key) {
                // An open window's row waits for its close (emit on close).
                Some(_) if held_back(&key) => None,
                Some(group) if plan.global || group.rows > 0 => {
                    if plan.window.is_some() {
                        group.emitted = true;
                    }
                    Some(output_row(plan, &key, group))
                }
                _ => {
                    self.groups.remove(&key);
                    None
                }
            };
            if before == after {
                continue;
            }
            if let Some(before) = before {
                retractions.push((before, -1));
            }
            if let Some(after) = after {
                insertions.push((after, 1));
            }
        }
        retractions.extend(insertions);
        retractions
    }
}

fn new_group(plan: &AggregatePlan) -> GroupState {
    GroupState {
        rows: 0,
        accumulators: plan.calls.iter().map(Accumulator::new).collect(),
        emitted: false,
    }
}

fn output_row(plan: &AggregatePlan, key: &Row, group: &GroupState) -> Row {
    let mut row = key.clone();
    for (call, accumulator) in plan.calls.iter().zip(&group.accumulators) {
        row.push(accumulator.result(call.kind, call.output_type));
    }
    row
}
