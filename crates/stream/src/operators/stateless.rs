//! Filters, projections and window assignment: evaluated over the batch, weights (and arrival
//! watermarks) carried along.
//! They keep no state, so a retraction passes through exactly like the row it removes.

use datafusion::arrow::array::{Array, BooleanArray};
use datafusion::arrow::compute::filter_record_batch;
use datafusion::arrow::record_batch::RecordBatch;
use datafusion::error::DataFusionError;

use super::Changes;
use crate::plan::{Step, WindowAssign};

pub fn apply(
    steps: &[Step],
    mut changes: Changes,
    late: &mut Vec<super::window::LateEvent>,
) -> Result<Changes, DataFusionError> {
    for step in steps {
        if changes.is_empty() {
            // Still give the batch the step's shape.
            if let Step::Project { schema, .. } | Step::AssignWindows(WindowAssign { schema, .. }) =
                step
            {
                changes.batch = RecordBatch::new_empty(schema.clone());
            }
            continue;
        }
        changes = match step {
            Step::Filter(predicate) => {
                let mask = predicate
                    .evaluate(&changes.batch)?
                    .into_array(changes.len())?;
                let mask = mask
                    .as_any()
                    .downcast_ref::<BooleanArray>()
                    .ok_or_else(|| {
                        DataFusionError::Internal("a filter did not give booleans".into())
                    })?;
                let keep = |index: &usize| mask.is_valid(*index) && mask.value(*index);
                let weights = changes
                    .weights
                    .iter()
                    .enumerate()
                    .filter(|(index, _)| keep(index))
                    .map(|(_, weight)| *weight)
                    .collect();
                let arrivals = changes.arrivals.as_ref().map(|arrivals| {
                    arrivals
                        .iter()
                        .enumerate()
                        .filter(|(index, _)| keep(index))
                        .map(|(_, arrival)| *arrival)
                        .collect()
                });
                Changes {
                    batch: filter_record_batch(&changes.batch, mask)?,
                    weights,
                    arrivals,
                }
            }
            Step::Project { exprs, schema } => {
                let rows = changes.len();
                let columns = exprs
                    .iter()
                    .map(|expr| expr.evaluate(&changes.batch)?.into_array(rows))
                    .collect::<Result<Vec<_>, _>>()?;
                let options = datafusion::arrow::record_batch::RecordBatchOptions::new()
                    .with_row_count(Some(rows));
                Changes {
                    batch: RecordBatch::try_new_with_options(schema.clone(), columns, &options)?,
                    weights: changes.weights,
                    arrivals: changes.arrivals,
                }
            }
            Step::AssignWindows(assign) => super::window::assign(assign, changes, late)?,
        };
    }
    Ok(changes)
}
