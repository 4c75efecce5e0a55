//! Turns a source's change events into weighted rows. Two modes:
//!
//! - **keyed** (when a stateful query such as an aggregate reads the source): the current row
//!   of every key is kept, so a retraction removes exactly what was added, whatever the
//!   events' `before` images hold; replayed events (cdc delivers at least once) change
//!   nothing, unchanged TOAST values are filled in from the kept row.
//! - **images** (when only stateless queries read it): the event's own `before` and `after`
//!   images are used, and nothing is kept. Replays are harmless because the sink writes the
//!   same rows again.

use rustc_hash::FxHashMap as HashMap;

use serde::{Deserialize, Serialize};

use crate::decode::is_unavailable;
use crate::value::Row;

/// One change event of a source, decoded to the declared columns.
#[derive(Debug, Clone, PartialEq)]
pub enum SourceChange {
    /// Insert, snapshot read, or update: the new row (and the old one when the event has it).
    Upsert {
        before: Option<Row>,
        after: Row,
        /// Columns whose value Postgres did not send (unchanged TOAST).
        unavailable: Vec<usize>,
    },
    /// The old row: complete under REPLICA IDENTITY FULL, only the key columns otherwise.
    Delete {
        before: Row,
    },
    Truncate,
    /// One event of a changelog source: a row that only ever enters (windows read these).
    Append(Row),
}

/// What one batch of a source's changes becomes.
#[derive(Debug, Default)]
pub struct SourceOutput {
    pub changes: Vec<(Row, i8)>,
    /// The source was truncated before `changes` (images mode: sinks fed only by it are
    /// emptied first).
    pub truncated_first: bool,
    /// Images mode: per key, the row this batch added last, so that a delete whose before
    /// image holds only the key retracts exactly that row.
    added: HashMap<Row, Row>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct SourceState {
    /// `None` in images mode.
    rows: Option<HashMap<Row, Row>>,
}

impl SourceState {
    pub fn new(keyed: bool) -> SourceState {
        SourceState {
            rows: keyed.then(HashMap::default),
        }
    }

    pub fn is_keyed(&self) -> bool {
        self.rows.is_some()
    }

    /// Every row kept (none in images mode).
    pub fn current_rows(&self) -> Option<Vec<Row>> {
        self.rows
            .as_ref()
            .map(|rows| rows.values().cloned().collect())
    }

    pub fn rows(&self) -> usize {
        self.rows.as_ref().map_or(0, HashMap::len)
    }

    pub fn apply(
        &mut self,
        key_columns: &[usize],
        change: SourceChange,
        output: &mut SourceOutput,
    ) {
        let key_of = |row: &Row| -> Row {
            key_columns
                .iter()
                .map(|&index| row[index].clone())
                .collect()
        };
        match (&mut self.rows, change) {
            (_, SourceChange::Append(row)) => output.changes.push((row, 1)),
            (
                Some(rows),
                SourceChange::Upsert {
                    before,
                    mut after,
                    unavailable,
                },
            ) => {
                // An update that changes the key moves the row: the old key goes.
                if let Some(before) = &before {
                    let old_key = key_of(before);
                    if old_key != key_of(&after) {
                        if let Some(old) = rows.remove(&old_key) {
                            output.changes.push((old, -1));
                        }
                    }
                }
                let key = key_of(&after);
                let old = rows.get(&key);
                for &index in &unavailable {
                    // The kept row knows the value; else the event's before image may
                    // (REPLICA IDENTITY FULL sends whole old rows).
                    if let Some(known) = old.or(before.as_ref()) {
                        if !is_unavailable(&known[index]) {
                            after[index] = known[index].clone();
                        }
                    }
                }
                if old == Some(&after) {
                    return;
                }
                if let Some(old) = rows.insert(key, after.clone()) {
                    output.changes.push((old, -1));
                }
                output.changes.push((after, 1));
            }
            (Some(rows), SourceChange::Delete { before }) => {
                if let Some(old) = rows.remove(&key_of(&before)) {
                    output.changes.push((old, -1));
                }
            }
            (Some(rows), SourceChange::Truncate) => {
                output
                    .changes
                    .extend(rows.drain().map(|(_, row)| (row, -1)));
            }
            (
                None,
                SourceChange::Upsert {
                    before,
                    mut after,
                    unavailable,
                },
            ) => {
                // Nothing is kept here: only a before image (REPLICA IDENTITY FULL) can fill
                // in unchanged TOAST values; otherwise they stay marked, and the sink leaves
                // them as they are in Cassandra.
                if let Some(before) = &before {
                    for &index in &unavailable {
                        if !is_unavailable(&before[index]) {
                            after[index] = before[index].clone();
                        }
                    }
                }
                if let Some(before) = before {
                    if before == after {
                        return;
                    }
                    output.changes.push((before, -1));
                }
                output.added.insert(key_of(&after), after.clone());
                output.changes.push((after, 1));
            }
            (None, SourceChange::Delete { before }) => {
                // With the default replica identity the before image is the key alone: if this
                // batch added the row, that whole row is what leaves.
                let before = output.added.remove(&key_of(&before)).unwrap_or(before);
                output.changes.push((before, -1));
            }
            (None, SourceChange::Truncate) => {
                output.changes.clear();
                output.added.clear();
                output.truncated_first = true;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::value::Value;

    fn row(id: i32, name: &str) -> Row {
        vec![Value::Int32(id), Value::Text(name.into())]
    }

    fn upsert(after: Row) -> SourceChange {
        SourceChange::Upsert {
            before: None,
            after,
            unavailable: vec![],
        }
    }

    #[test]
    fn keyed_mode_retracts_what_it_holds_and_ignores_replays() {
        let mut state = SourceState::new(true);
        let mut output = SourceOutput::default();
        state.apply(&[0], upsert(row(1, "a")), &mut output);
        state.apply(&[0], upsert(row(1, "b")), &mut output);
        // A replayed event: cdc sends it again after a crash.
        state.apply(&[0], upsert(row(1, "b")), &mut output);
        state.apply(
            &[0],
            SourceChange::Delete {
                before: vec![Value::Int32(1), Value::Null],
            },
            &mut output,
        );
        state.apply(
            &[0],
            SourceChange::Delete {
                before: row(1, "b"),
            },
            &mut output,
        );
        assert_eq!(
            output.changes,
            vec![
                (row(1, "a"), 1),
                (row(1, "a"), -1),
                (row(1, "b"), 1),
                (row(1, "b"), -1)
            ]
        );
        assert_eq!(state.rows(), 0);
    }

    #[test]
    fn keyed_mode_fills_unchanged_toast_values_from_the_kept_row() {
        let mut state = SourceState::new(true);
        let mut output = SourceOutput::default();
        state.apply(&[0], upsert(row(1, "long text")), &mut output);
        state.apply(
            &[0],
            SourceChange::Upsert {
                before: None,
                after: vec![
                    Value::Int32(1),
                    Value::Text("__debezium_unavailable_value".into()),
                ],
                unavailable: vec![1],
            },
            &mut output,
        );
        assert_eq!(output.changes, vec![(row(1, "long text"), 1)]);
    }

    #[test]
    fn images_mode_truncate_drops_earlier_changes_and_says_so() {
        let mut state = SourceState::new(false);
        let mut output = SourceOutput::default();
        state.apply(&[0], upsert(row(1, "a")), &mut output);
        state.apply(&[0], SourceChange::Truncate, &mut output);
        state.apply(&[0], upsert(row(2, "b")), &mut output);
        assert!(output.truncated_first);
        assert_eq!(output.changes, vec![(row(2, "b"), 1)]);
    }

    #[test]
    fn images_mode_retracts_the_whole_row_a_batch_added_when_deleted_by_key() {
        let mut state = SourceState::new(false);
        let mut output = SourceOutput::default();
        let row = vec![Value::Int32(4), Value::Text("four".into())];
        state.apply(
            &[0],
            SourceChange::Upsert {
                before: None,
                after: row.clone(),
                unavailable: vec![],
            },
            &mut output,
        );
        state.apply(
            &[0],
            SourceChange::Delete {
                before: vec![Value::Int32(4), Value::Null],
            },
            &mut output,
        );
        assert_eq!(output.changes, vec![(row.clone(), 1), (row, -1)]);
    }
}
