//! Window assignment: every row of a changelog source gets its event-time window(s) (one
//! tumbling window, or size / slide hopping ones), as the row once per window with the
//! window's start appended. A row whose window the watermark had already closed when the row
//! arrived is late for it: kept if the window still takes late events (allowed lateness),
//! otherwise set aside as a late event, counted and sent to the late-events topic, never
//! dropped silently.

use std::sync::Arc;

use datafusion::arrow::array::{ArrayRef, TimestampMicrosecondArray, UInt32Array};
use datafusion::arrow::compute::take;
use datafusion::arrow::record_batch::{RecordBatch, RecordBatchOptions};
use datafusion::error::DataFusionError;

use super::Changes;
use crate::plan::WindowAssign;
use crate::value::{value_at, Row, Value};
use crate::windows::window_starts;

/// An event that arrived after its window was closed (and past any allowed lateness).
#[derive(Debug, Clone, PartialEq)]
pub struct LateEvent {
    /// The source it came from.
    pub source: String,
    /// The row as the window operator received it (the source's columns, as projected).
    pub row: Row,
    pub column_names: Vec<String>,
    pub window_start_us: i64,
    pub window_end_us: i64,
    /// The watermark when the event arrived.
    pub watermark_us: i64,
}

pub fn assign(
    assign: &WindowAssign,
    changes: Changes,
    late: &mut Vec<LateEvent>,
) -> Result<Changes, DataFusionError> {
    let rows = changes.len();
    let times = assign.time.evaluate(&changes.batch)?.into_array(rows)?;
    let mut take_rows: Vec<u32> = Vec::with_capacity(rows);
    let mut starts: Vec<i64> = Vec::with_capacity(rows);
    let mut weights: Vec<i8> = Vec::with_capacity(rows);
    for row in 0..rows {
        // Rows without event time were refused when decoded; a NULL here came from the
        // SELECT's own expression and has no window.
        let Some(Value::Timestamp(time_us)) = value_at(times.as_ref(), row) else {
            continue;
        };
        let arrived_at = changes
            .arrivals
            .as_ref()
            .map_or(i64::MIN, |arrivals| arrivals[row]);
        for start in window_starts(time_us, assign.size_us, assign.slide_us) {
            let end = start.saturating_add(assign.size_us);
            let closed = end <= arrived_at;
            if closed && end.saturating_add(assign.allowed_lateness_us) <= arrived_at {
                late.push(LateEvent {
                    source: assign.source.clone(),
                    row: row_values(&changes.batch, row)?,
                    column_names: changes
                        .batch
                        .schema()
                        .fields()
                        .iter()
                        .map(|field| field.name().clone())
                        .collect(),
                    window_start_us: start,
                    window_end_us: end,
                    watermark_us: arrived_at,
                });
                continue;
            }
            take_rows.push(row as u32);
            starts.push(start);
            weights.push(changes.weights[row]);
        }
    }
    let indices = UInt32Array::from(take_rows);
    let mut columns: Vec<ArrayRef> = changes
        .batch
        .columns()
        .iter()
        .map(|column| take(column.as_ref(), &indices, None))
        .collect::<Result<_, _>>()?;
    columns.push(Arc::new(
        TimestampMicrosecondArray::from(starts).with_timezone("UTC"),
    ));
    let options = RecordBatchOptions::new().with_row_count(Some(weights.len()));
    Ok(Changes {
        batch: RecordBatch::try_new_with_options(assign.schema.clone(), columns, &options)?,
        weights,
        arrivals: None,
    })
}

fn row_values(batch: &RecordBatch, row: usize) -> Result<Row, DataFusionError> {
    batch
        .columns()
        .iter()
        .map(|column| {
            value_at(column.as_ref(), row).ok_or_else(|| {
                DataFusionError::Internal(format!(
                    "a column of type {} cannot be shown",
                    column.data_type()
                ))
            })
        })
        .collect()
}
