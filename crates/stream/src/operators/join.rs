//! The updating inner equi-join. Each side's current rows are kept, grouped by join key.
//! A batch of changes on both sides becomes the change of the join by the usual rule
//!
//! ```text
//! Δ(L ⋈ R) = ΔL ⋈ R  +  (L + ΔL) ⋈ ΔR
//! ```
//!
//! so the left changes meet the right side as it was before the batch, and the right changes
//! meet the left side as it is after it. A retraction (-1) on either side retracts exactly
//! the joined rows its insertion produced. The work per batch grows with the batch and the
//! rows sharing its keys, never with the history.
//!
//! SQL equality never matches NULL, so a row whose key has a NULL joins nothing and is not
//! kept.

use std::sync::Arc;

use datafusion::arrow::array::ArrayRef;
use datafusion::error::DataFusionError;
use datafusion::physical_expr::PhysicalExpr;
use rustc_hash::FxHashMap as HashMap;
use serde::{Deserialize, Serialize};

use super::Changes;
use crate::plan::JoinPlan;
use crate::value::{value_at, Row, Value};

/// Rows of one side under each join key, with their multiplicity (a projection below the
/// join can make two source rows look the same).
type Side = HashMap<Row, HashMap<Row, i64>>;

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct JoinState {
    left: Side,
    right: Side,
}

impl JoinState {
    /// Rows kept on each side.
    pub fn rows(&self) -> (usize, usize) {
        let count = |side: &Side| side.values().map(HashMap::len).sum();
        (count(&self.left), count(&self.right))
    }

    pub fn apply(
        &mut self,
        plan: &JoinPlan,
        left: &Changes,
        right: &Changes,
    ) -> Result<Changes, DataFusionError> {
        let mut output: Vec<(Row, i8)> = Vec::new();

        let left_rows = keyed_rows(&plan.left_keys, left)?;
        for (key, row, weight) in &left_rows {
            for (other, &count) in self.right.get(key).into_iter().flatten() {
                emit(&mut output, joined(row, other), *weight, count);
            }
        }
        for (key, row, weight) in left_rows {
            add(&mut self.left, key, row, weight);
        }

        let right_rows = keyed_rows(&plan.right_keys, right)?;
        for (key, row, weight) in &right_rows {
            for (other, &count) in self.left.get(key).into_iter().flatten() {
                emit(&mut output, joined(other, row), *weight, count);
            }
        }
        for (key, row, weight) in right_rows {
            add(&mut self.right, key, row, weight);
        }

        Changes::from_rows(plan.output_schema.clone(), &output)
    }
}

/// The batch's rows with their join keys; rows whose key has a NULL are left out.
fn keyed_rows(
    keys: &[Arc<dyn PhysicalExpr>],
    changes: &Changes,
) -> Result<Vec<(Row, Row, i8)>, DataFusionError> {
    if changes.is_empty() {
        return Ok(Vec::new());
    }
    let arrays: Vec<ArrayRef> = keys
        .iter()
        .map(|expr| expr.evaluate(&changes.batch)?.into_array(changes.len()))
        .collect::<Result<_, _>>()?;
    let rows = changes.to_rows()?;
    let mut keyed = Vec::with_capacity(rows.len());
    for (index, (row, weight)) in rows.into_iter().enumerate() {
        let key = arrays
            .iter()
            .map(|array| {
                value_at(array.as_ref(), index).ok_or_else(|| {
                    DataFusionError::Internal(format!(
                        "a join key has type {}, which walflow does not keep",
                        array.data_type()
                    ))
                })
            })
            .collect::<Result<Row, _>>()?;
        if key.iter().any(|value| matches!(value, Value::Null)) {
            continue;
        }
        keyed.push((key, row, weight));
    }
    Ok(keyed)
}

fn add(side: &mut Side, key: Row, row: Row, weight: i8) {
    let weight = i64::from(weight);
    let Some(rows) = side.get_mut(&key) else {
        side.insert(key, HashMap::from_iter([(row, weight)]));
        return;
    };
    let Some(count) = rows.get_mut(&row) else {
        rows.insert(row, weight);
        return;
    };
    *count += weight;
    if *count == 0 {
        rows.remove(&row);
        if rows.is_empty() {
            side.remove(&key);
        }
    }
}

fn joined(left: &Row, right: &Row) -> Row {
    let mut row = Vec::with_capacity(left.len() + right.len());
    row.extend_from_slice(left);
    row.extend_from_slice(right);
    row
}

/// `count` copies of the joined row (a row kept twice joins twice).
fn emit(output: &mut Vec<(Row, i8)>, row: Row, weight: i8, count: i64) {
    let weight = if count < 0 { -weight } else { weight };
    for _ in 1..count.unsigned_abs() {
        output.push((row.clone(), weight));
    }
    if count != 0 {
        output.push((row, weight));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use datafusion::arrow::datatypes::{DataType, Field, Schema};
    use datafusion::physical_expr::expressions::Column;

    fn plan() -> JoinPlan {
        let output = Schema::new(vec![
            Field::new("user", DataType::Utf8, true),
            Field::new("country", DataType::Utf8, true),
            Field::new("name", DataType::Utf8, true),
            Field::new("region", DataType::Utf8, true),
        ]);
        JoinPlan {
            left_keys: vec![Arc::new(Column::new("country", 1))],
            right_keys: vec![Arc::new(Column::new("name", 0))],
            output_schema: Arc::new(output),
        }
    }

    fn side(columns: [&str; 2], rows: &[([Option<&str>; 2], i8)]) -> Changes {
        let schema = Arc::new(Schema::new(
            columns
                .iter()
                .map(|name| Field::new(*name, DataType::Utf8, true))
                .collect::<Vec<_>>(),
        ));
        let rows: Vec<(Row, i8)> = rows
            .iter()
            .map(|(values, weight)| {
                (
                    values
                        .iter()
                        .map(|value| value.map_or(Value::Null, |text| Value::Text(text.into())))
                        .collect(),
                    *weight,
                )
            })
            .collect();
        Changes::from_rows(schema, &rows).unwrap()
    }

    fn users(rows: &[([Option<&str>; 2], i8)]) -> Changes {
        side(["user", "country"], rows)
    }

    fn countries(rows: &[([Option<&str>; 2], i8)]) -> Changes {
        side(["name", "region"], rows)
    }

    fn text_rows(changes: &Changes) -> Vec<(String, i8)> {
        let mut rows: Vec<(String, i8)> = changes
            .to_rows()
            .unwrap()
            .into_iter()
            .map(|(row, weight)| {
                let text = row
                    .iter()
                    .map(|value| match value {
                        Value::Text(text) => text.clone(),
                        _ => "-".into(),
                    })
                    .collect::<Vec<_>>()
                    .join(" ");
                (text, weight)
            })
            .collect();
        rows.sort();
        rows
    }

    #[test]
    fn changes_on_both_sides_in_one_batch_join_exactly_once() {
        let plan = plan();
        let mut state = JoinState::default();
        let out = state
            .apply(
                &plan,
                &users(&[([Some("ann"), Some("FR")], 1)]),
                &countries(&[([Some("FR"), Some("Europe")], 1)]),
            )
            .unwrap();
        assert_eq!(text_rows(&out), vec![("ann FR FR Europe".into(), 1)]);

        // A second user joins the kept country; the country moves region in the same batch.
        let out = state
            .apply(
                &plan,
                &users(&[([Some("bob"), Some("FR")], 1)]),
                &countries(&[
                    ([Some("FR"), Some("Europe")], -1),
                    ([Some("FR"), Some("EU")], 1),
                ]),
            )
            .unwrap();
        assert_eq!(
            text_rows(&out),
            vec![
                ("ann FR FR EU".into(), 1),
                ("ann FR FR Europe".into(), -1),
                ("bob FR FR EU".into(), 1),
                ("bob FR FR Europe".into(), -1),
                ("bob FR FR Europe".into(), 1),
            ]
        );
    }

    #[test]
    fn a_deleted_side_retracts_its_joined_rows_and_nulls_never_match() {
        let plan = plan();
        let mut state = JoinState::default();
        state
            .apply(
                &plan,
                &users(&[([Some("ann"), Some("FR")], 1), ([Some("cy"), None], 1)]),
                &countries(&[([Some("FR"), Some("Europe")], 1)]),
            )
            .unwrap();
        assert_eq!(state.rows(), (1, 1));
        let out = state
            .apply(
                &plan,
                &users(&[]),
                &countries(&[([Some("FR"), Some("Europe")], -1)]),
            )
            .unwrap();
        assert_eq!(text_rows(&out), vec![("ann FR FR Europe".into(), -1)]);
        assert_eq!(state.rows(), (1, 0));
        // The user leaves too: nothing is left to join or keep.
        let out = state
            .apply(
                &plan,
                &users(&[([Some("ann"), Some("FR")], -1)]),
                &countries(&[]),
            )
            .unwrap();
        assert!(out.is_empty());
        assert_eq!(state, JoinState::default());
    }
}
