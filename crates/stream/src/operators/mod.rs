//! The streaming operators, one per file. Every operator consumes and produces *changes*:
//! rows with a weight, +1 for a row that enters the result and -1 for one that leaves it.
//! An update is a -1 of the old row followed by a +1 of the new one.

pub mod accumulator;
pub mod aggregate;
pub mod normalize;
pub mod stateless;

use datafusion::arrow::datatypes::SchemaRef;
use datafusion::arrow::record_batch::RecordBatch;

use crate::value::{column_to_array, ColumnType, Row};

/// A batch of changes in Arrow form, each row with its weight.
#[derive(Debug, Clone)]
pub struct Changes {
    pub batch: RecordBatch,
    pub weights: Vec<i8>,
}

impl Changes {
    /// Builds the record batch of `schema` from rows (every column of a type
    /// [`ColumnType::from_arrow`] knows).
    pub fn from_rows(
        schema: SchemaRef,
        rows: &[(Row, i8)],
    ) -> Result<Changes, datafusion::error::DataFusionError> {
        let columns = schema
            .fields()
            .iter()
            .enumerate()
            .map(|(index, field)| {
                let column_type = ColumnType::from_arrow(field.data_type()).ok_or_else(|| {
                    datafusion::error::DataFusionError::Internal(format!(
                        "column {} has type {}, which walflow does not keep",
                        field.name(),
                        field.data_type()
                    ))
                })?;
                let array = column_to_array(rows.iter().map(|(row, _)| row), index, column_type);
                // Arrow types that map to one column type (Int16 -> Int32, ...) are cast back.
                if array.data_type() != field.data_type() {
                    datafusion::arrow::compute::cast(&array, field.data_type()).map_err(Into::into)
                } else {
                    Ok(array)
                }
            })
            .collect::<Result<Vec<_>, datafusion::error::DataFusionError>>()?;
        let options = datafusion::arrow::record_batch::RecordBatchOptions::new()
            .with_row_count(Some(rows.len()));
        let batch = RecordBatch::try_new_with_options(schema, columns, &options)?;
        Ok(Changes {
            batch,
            weights: rows.iter().map(|(_, weight)| *weight).collect(),
        })
    }

    pub fn len(&self) -> usize {
        self.weights.len()
    }

    pub fn is_empty(&self) -> bool {
        self.weights.is_empty()
    }

    /// The rows back, with their weights.
    pub fn to_rows(&self) -> Result<Vec<(Row, i8)>, datafusion::error::DataFusionError> {
        let columns = self.batch.columns();
        (0..self.len())
            .map(|row| {
                let values = columns
                    .iter()
                    .map(|array| {
                        crate::value::value_at(array.as_ref(), row).ok_or_else(|| {
                            datafusion::error::DataFusionError::Internal(format!(
                                "a result column has type {}, which walflow does not keep",
                                array.data_type()
                            ))
                        })
                    })
                    .collect::<Result<Row, _>>()?;
                Ok((values, self.weights[row]))
            })
            .collect()
    }
}
