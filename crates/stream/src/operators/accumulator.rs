//! Aggregate state that can take a row back as well as add one: what an updating table
//! needs (DataFusion's own accumulators mostly only add). Each keeps exactly enough to give
//! its result after any sequence of additions and retractions, and serializes into the
//! checkpoint.

use std::collections::BTreeMap;

use rustc_hash::FxHashMap as HashMap;

use datafusion::arrow::array::{Array, ArrayRef, BooleanArray};
use datafusion::error::DataFusionError;
use datafusion::physical_expr::PhysicalExpr;
use serde::{Deserialize, Serialize};

use crate::plan::{AggregateCall, AggregateKind};
use crate::value::{value_at, ColumnType, Value};

/// Each aggregate call's argument and `FILTER`, evaluated over one batch: what grouped and
/// session aggregates feed their accumulators from.
pub(super) struct CallInputs {
    arguments: Vec<Option<ArrayRef>>,
    filters: Vec<Option<ArrayRef>>,
}

impl CallInputs {
    pub(super) fn evaluate(
        calls: &[AggregateCall],
        rows: usize,
        evaluate: impl Fn(&std::sync::Arc<dyn PhysicalExpr>) -> Result<ArrayRef, DataFusionError>,
    ) -> Result<CallInputs, DataFusionError> {
        let mut inputs = CallInputs {
            arguments: Vec::new(),
            filters: Vec::new(),
        };
        if rows > 0 {
            for call in calls {
                inputs
                    .arguments
                    .push(call.argument.as_ref().map(&evaluate).transpose()?);
                inputs
                    .filters
                    .push(call.filter.as_ref().map(&evaluate).transpose()?);
            }
        }
        Ok(inputs)
    }

    /// Adds (weight 1) or takes back (-1) `row` in each call's accumulator whose `FILTER`
    /// lets it through.
    pub(super) fn accumulate(
        &self,
        accumulators: &mut [Accumulator],
        row: usize,
        weight: i8,
    ) -> Result<(), DataFusionError> {
        for (index, accumulator) in accumulators.iter_mut().enumerate() {
            if let Some(filter) = &self.filters[index] {
                let passes = filter
                    .as_any()
                    .downcast_ref::<BooleanArray>()
                    .is_some_and(|mask| mask.is_valid(row) && mask.value(row));
                if !passes {
                    continue;
                }
            }
            match &self.arguments[index] {
                Some(array) => {
                    let value = cell(array.as_ref(), row)?;
                    accumulator.update(Some(&value), weight);
                }
                None => accumulator.update(None, weight),
            }
        }
        Ok(())
    }
}

/// The value at `row` of a grouping key or aggregate argument.
pub(super) fn cell(array: &dyn Array, row: usize) -> Result<Value, DataFusionError> {
    value_at(array, row).ok_or_else(|| {
        DataFusionError::Internal(format!(
            "a grouping or aggregate argument has type {}, which walflow does not keep",
            array.data_type()
        ))
    })
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Accumulator {
    /// count(*) and count(x): rows (non-null x) counted.
    Count { count: i64 },
    /// sum and avg over integers: exact.
    IntegerSum { sum: i128, count: i64 },
    /// sum and avg over floats, with Neumaier's compensation so that adding and then
    /// retracting the same values comes back to (nearly) exactly where it was.
    FloatSum {
        sum: f64,
        compensation: f64,
        count: i64,
    },
    /// min and max: every value with its multiplicity, since a retraction of the minimum
    /// needs the next one.
    Extremes { values: BTreeMap<Value, i64> },
    /// count(DISTINCT x): each distinct value with its multiplicity.
    Distinct { values: HashMap<Value, i64> },
}

impl Accumulator {
    pub fn new(call: &AggregateCall) -> Accumulator {
        if call.distinct && call.kind == AggregateKind::Count {
            return Accumulator::Distinct {
                values: HashMap::default(),
            };
        }
        match call.kind {
            AggregateKind::Count => Accumulator::Count { count: 0 },
            AggregateKind::Sum | AggregateKind::Avg => {
                // The argument's type is only known from the values; integer until a float
                // arrives (the planner coerces, so a column never mixes the two).
                Accumulator::IntegerSum { sum: 0, count: 0 }
            }
            AggregateKind::Min | AggregateKind::Max => Accumulator::Extremes {
                values: BTreeMap::new(),
            },
        }
    }

    /// Adds (`weight` > 0) or retracts (`weight` < 0) one value; `None` is `count(*)`'s row.
    pub fn update(&mut self, value: Option<&Value>, weight: i8) {
        let weight = i64::from(weight);
        let Some(value) = value else {
            // count(*): every row counts.
            if let Accumulator::Count { count } = self {
                *count += weight;
            }
            return;
        };
        if value.is_null() {
            return;
        }
        match self {
            Accumulator::Count { count } => *count += weight,
            Accumulator::IntegerSum { sum, count } => match value {
                Value::Float64(_) => {
                    let mut converted = Accumulator::FloatSum {
                        sum: *sum as f64,
                        compensation: 0.0,
                        count: *count,
                    };
                    converted.update(Some(value), weight as i8);
                    *self = converted;
                }
                value => {
                    if let Some(integer) = value.as_i64() {
                        *sum += i128::from(integer) * i128::from(weight);
                        *count += weight;
                    }
                }
            },
            Accumulator::FloatSum {
                sum,
                compensation,
                count,
            } => {
                if let Some(float) = value.as_f64() {
                    let term = float * weight as f64;
                    let total = *sum + term;
                    if sum.abs() >= term.abs() {
                        *compensation += (*sum - total) + term;
                    } else {
                        *compensation += (term - total) + *sum;
                    }
                    *sum = total;
                    *count += weight;
                }
            }
            Accumulator::Extremes { values } => {
                let entry = values.entry(value.clone()).or_insert(0);
                *entry += weight;
                if *entry <= 0 {
                    values.remove(value);
                }
            }
            Accumulator::Distinct { values } => {
                let entry = values.entry(value.clone()).or_insert(0);
                *entry += weight;
                if *entry <= 0 {
                    values.remove(value);
                }
            }
        }
    }

    /// Takes in everything `other` holds (two session windows merging into one).
    pub fn merge(&mut self, other: &Accumulator) {
        match (&mut *self, other) {
            (Accumulator::Count { count }, Accumulator::Count { count: more }) => *count += more,
            (
                Accumulator::IntegerSum { sum, count },
                Accumulator::IntegerSum {
                    sum: more_sum,
                    count: more_count,
                },
            ) => {
                *sum += more_sum;
                *count += more_count;
            }
            (
                Accumulator::FloatSum {
                    sum,
                    compensation,
                    count,
                },
                Accumulator::FloatSum {
                    sum: more_sum,
                    compensation: more_compensation,
                    count: more_count,
                },
            ) => {
                let total = *sum + more_sum;
                if sum.abs() >= more_sum.abs() {
                    *compensation += (*sum - total) + more_sum;
                } else {
                    *compensation += (more_sum - total) + *sum;
                }
                *sum = total;
                *compensation += more_compensation;
                *count += more_count;
            }
            // An integer sum meets a float one: continue in floats.
            (Accumulator::IntegerSum { sum, count }, Accumulator::FloatSum { .. }) => {
                let mut converted = Accumulator::FloatSum {
                    sum: *sum as f64,
                    compensation: 0.0,
                    count: *count,
                };
                converted.merge(other);
                *self = converted;
            }
            (
                Accumulator::FloatSum { sum, count, .. },
                Accumulator::IntegerSum {
                    sum: more,
                    count: more_count,
                },
            ) => {
                *sum += *more as f64;
                *count += more_count;
            }
            (Accumulator::Extremes { values }, Accumulator::Extremes { values: more }) => {
                for (value, count) in more {
                    *values.entry(value.clone()).or_insert(0) += count;
                }
            }
            (Accumulator::Distinct { values }, Accumulator::Distinct { values: more }) => {
                for (value, count) in more {
                    *values.entry(value.clone()).or_insert(0) += count;
                }
            }
            _ => debug_assert!(false, "accumulators of one call always have the same kind"),
        }
    }

    /// The aggregate's current result, in the type DataFusion declared for it.
    pub fn result(&self, kind: AggregateKind, output_type: ColumnType) -> Value {
        let value = match (self, kind) {
            (Accumulator::Count { count }, _) => Value::Int64(*count),
            (Accumulator::Distinct { values }, _) => Value::Int64(values.len() as i64),
            (Accumulator::IntegerSum { count: 0, .. }, _)
            | (Accumulator::FloatSum { count: 0, .. }, _) => Value::Null,
            (Accumulator::IntegerSum { sum, count }, AggregateKind::Avg) => {
                Value::Float64(*sum as f64 / *count as f64)
            }
            (Accumulator::IntegerSum { sum, .. }, _) => {
                Value::Int64(i64::try_from(*sum).unwrap_or(if *sum > 0 {
                    i64::MAX
                } else {
                    i64::MIN
                }))
            }
            (
                Accumulator::FloatSum {
                    sum,
                    compensation,
                    count,
                },
                AggregateKind::Avg,
            ) => Value::Float64((sum + compensation) / *count as f64),
            (
                Accumulator::FloatSum {
                    sum, compensation, ..
                },
                _,
            ) => Value::Float64(sum + compensation),
            (Accumulator::Extremes { values }, AggregateKind::Max) => {
                values.keys().next_back().cloned().unwrap_or(Value::Null)
            }
            (Accumulator::Extremes { values }, _) => {
                values.keys().next().cloned().unwrap_or(Value::Null)
            }
        };
        value.convert(output_type).unwrap_or(value)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn call(kind: AggregateKind, distinct: bool, output_type: ColumnType) -> AggregateCall {
        AggregateCall {
            kind,
            argument: None,
            distinct,
            filter: None,
            output_type,
        }
    }

    #[test]
    fn retracting_what_was_added_gives_back_the_earlier_result() {
        let cases = [
            (AggregateKind::Count, false, ColumnType::Int64),
            (AggregateKind::Count, true, ColumnType::Int64),
            (AggregateKind::Sum, false, ColumnType::Int64),
            (AggregateKind::Avg, false, ColumnType::Float64),
            (AggregateKind::Min, false, ColumnType::Int32),
            (AggregateKind::Max, false, ColumnType::Int32),
        ];
        for (kind, distinct, output_type) in cases {
            let call = call(kind, distinct, output_type);
            let mut accumulator = Accumulator::new(&call);
            for value in [3, 1, 4, 1, 5] {
                accumulator.update(Some(&Value::Int32(value)), 1);
            }
            accumulator.update(Some(&Value::Null), 1);
            let before = accumulator.result(kind, output_type);
            for value in [9, 2, 6] {
                accumulator.update(Some(&Value::Int32(value)), 1);
            }
            for value in [6, 9, 2] {
                accumulator.update(Some(&Value::Int32(value)), -1);
            }
            assert_eq!(
                accumulator.result(kind, output_type),
                before,
                "{kind:?} {distinct}"
            );
        }
    }

    #[test]
    fn results_match_sql_over_the_remaining_rows() {
        let mut min = Accumulator::new(&call(AggregateKind::Min, false, ColumnType::Int32));
        let mut avg = Accumulator::new(&call(AggregateKind::Avg, false, ColumnType::Float64));
        let mut distinct = Accumulator::new(&call(AggregateKind::Count, true, ColumnType::Int64));
        for value in [1, 1, 2, 7] {
            for accumulator in [&mut min, &mut avg, &mut distinct] {
                accumulator.update(Some(&Value::Int32(value)), 1);
            }
        }
        for accumulator in [&mut min, &mut avg, &mut distinct] {
            accumulator.update(Some(&Value::Int32(1)), -1);
        }
        assert_eq!(
            min.result(AggregateKind::Min, ColumnType::Int32),
            Value::Int32(1)
        );
        assert_eq!(
            avg.result(AggregateKind::Avg, ColumnType::Float64),
            Value::Float64(10.0 / 3.0)
        );
        assert_eq!(
            distinct.result(AggregateKind::Count, ColumnType::Int64),
            Value::Int64(3)
        );
        for accumulator in [&mut min, &mut avg] {
            for value in [1, 2, 7] {
                accumulator.update(Some(&Value::Int32(value)), -1);
            }
        }
        assert_eq!(
            min.result(AggregateKind::Min, ColumnType::Int32),
            Value::Null
        );
        assert_eq!(
            avg.result(AggregateKind::Avg, ColumnType::Float64),
            Value::Null
        );
    }

    #[test]
    fn float_sums_come_back_after_retractions() {
        let mut sum = Accumulator::new(&call(AggregateKind::Sum, false, ColumnType::Float64));
        sum.update(Some(&Value::Float64(0.1)), 1);
        for value in [1e16, 0.2, 3.3, -7.25] {
            sum.update(Some(&Value::Float64(value)), 1);
        }
        for value in [1e16, 0.2, 3.3, -7.25] {
            sum.update(Some(&Value::Float64(value)), -1);
        }
        let Value::Float64(result) = sum.result(AggregateKind::Sum, ColumnType::Float64) else {
            panic!("a float sum");
        };
        // Without compensation the 0.1 is lost entirely under 1e16.
        assert!((result - 0.1).abs() < 1e-15, "{result}");
    }
}
