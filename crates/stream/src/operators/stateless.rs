//! Filters and projections: evaluated by DataFusion over the batch, weights carried along.
//! They keep no state, so a retraction passes through exactly like the row it removes.

use datafusion::arrow::array::{Array, BooleanArray};
use datafusion::arrow::compute::filter_record_batch;
use datafusion::arrow::record_batch::RecordBatch;
use datafusion::error::DataFusionError;

use super::Changes;
use crate::plan::Step;

pub fn apply(steps: &[Step], mut changes: Changes) -> Result<Changes, DataFusionError> {
    for step in steps {
        if changes.is_empty() {
            // Still give the batch the step's shape.
            if let Step::Project { schema, .. } = step {
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
                let weights = changes
                    .weights
                    .iter()
                    .enumerate()
                    .filter(|(index, _)| mask.is_valid(*index) && mask.value(*index))
                    .map(|(_, weight)| *weight)
                    .collect();
                Changes {
                    batch: filter_record_batch(&changes.batch, mask)?,
                    weights,
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
                }
            }
        };
    }
    Ok(changes)
}
