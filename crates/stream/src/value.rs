//! The values a pipeline keeps in its state and writes to Cassandra: the column types a
//! pipeline file can declare, one `Value` per cell, and the conversions to and from Arrow
//! arrays (what DataFusion evaluates over).

use std::cmp::Ordering;
use std::hash::{Hash, Hasher};
use std::sync::Arc;

use datafusion::arrow::array::{
    Array, ArrayRef, BooleanArray, BooleanBuilder, Date32Array, Date32Builder, Float32Array,
    Float64Array, Float64Builder, Int16Array, Int32Array, Int32Builder, Int64Array, Int64Builder,
    Int8Array, LargeStringArray, StringArray, StringBuilder, StringViewArray,
    TimestampMicrosecondArray, TimestampMicrosecondBuilder, TimestampMillisecondArray,
    TimestampNanosecondArray, TimestampSecondArray, UInt32Array, UInt64Array,
};
use datafusion::arrow::datatypes::{DataType, TimeUnit};
use serde::{Deserialize, Serialize};

/// A column type a pipeline can declare for a source or a sink.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum ColumnType {
    Boolean,
    Int32,
    Int64,
    Float64,
    Text,
    /// Microseconds since the Unix epoch, UTC.
    Timestamp,
    /// Days since 1970-01-01.
    Date,
}

impl ColumnType {
    pub fn arrow(self) -> DataType {
        match self {
            ColumnType::Boolean => DataType::Boolean,
            ColumnType::Int32 => DataType::Int32,
            ColumnType::Int64 => DataType::Int64,
            ColumnType::Float64 => DataType::Float64,
            ColumnType::Text => DataType::Utf8,
            ColumnType::Timestamp => {
                DataType::Timestamp(TimeUnit::Microsecond, Some(Arc::from("UTC")))
            }
            ColumnType::Date => DataType::Date32,
        }
    }

    /// The column type that holds values of an Arrow type, if any.
    pub fn from_arrow(data_type: &DataType) -> Option<ColumnType> {
        Some(match data_type {
            DataType::Boolean => ColumnType::Boolean,
            DataType::Int8 | DataType::Int16 | DataType::Int32 => ColumnType::Int32,
            DataType::Int64 | DataType::UInt32 | DataType::UInt64 => ColumnType::Int64,
            DataType::Float32 | DataType::Float64 => ColumnType::Float64,
            DataType::Utf8 | DataType::LargeUtf8 | DataType::Utf8View => ColumnType::Text,
            DataType::Timestamp(_, _) => ColumnType::Timestamp,
            DataType::Date32 => ColumnType::Date,
            _ => return None,
        })
    }

    /// The type as Cassandra's CQL names it.
    pub fn cql(self) -> &'static str {
        match self {
            ColumnType::Boolean => "boolean",
            ColumnType::Int32 => "int",
            ColumnType::Int64 => "bigint",
            ColumnType::Float64 => "double",
            ColumnType::Text => "text",
            ColumnType::Timestamp => "timestamp",
            ColumnType::Date => "date",
        }
    }

    /// The SQL spelling used in messages and docs.
    pub fn sql(self) -> &'static str {
        match self {
            ColumnType::Boolean => "BOOLEAN",
            ColumnType::Int32 => "INT",
            ColumnType::Int64 => "BIGINT",
            ColumnType::Float64 => "DOUBLE",
            ColumnType::Text => "TEXT",
            ColumnType::Timestamp => "TIMESTAMP",
            ColumnType::Date => "DATE",
        }
    }
}

/// One cell. Equality and hashing are total (floats by their bits, with every NaN alike and
/// -0 equal to 0), so values can key state maps.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum Value {
    Null,
    Boolean(bool),
    Int32(i32),
    Int64(i64),
    Float64(f64),
    Text(String),
    Timestamp(i64),
    Date(i32),
}

pub type Row = Vec<Value>;

impl Value {
    pub fn is_null(&self) -> bool {
        matches!(self, Value::Null)
    }

    fn rank(&self) -> u8 {
        match self {
            Value::Null => 0,
            Value::Boolean(_) => 1,
            Value::Int32(_) | Value::Int64(_) => 2,
            Value::Float64(_) => 3,
            Value::Text(_) => 4,
            Value::Timestamp(_) => 5,
            Value::Date(_) => 6,
        }
    }

    fn float_bits(value: f64) -> u64 {
        if value.is_nan() {
            f64::NAN.to_bits()
        } else if value == 0.0 {
            0
        } else {
            value.to_bits()
        }
    }

    /// As an integer, when it is one.
    pub fn as_i64(&self) -> Option<i64> {
        match self {
            Value::Int32(value) => Some(i64::from(*value)),
            Value::Int64(value) => Some(*value),
            _ => None,
        }
    }

    /// As a float, when it is a number.
    pub fn as_f64(&self) -> Option<f64> {
        match self {
            Value::Int32(value) => Some(f64::from(*value)),
            Value::Int64(value) => Some(*value as f64),
            Value::Float64(value) => Some(*value),
            _ => None,
        }
    }

    /// The same value in the representation of `target`, when that loses nothing
    /// (Int64 -> Int32 only in range); `None` when it cannot be.
    pub fn convert(&self, target: ColumnType) -> Option<Value> {
        Some(match (self, target) {
            (Value::Null, _) => Value::Null,
            (Value::Boolean(value), ColumnType::Boolean) => Value::Boolean(*value),
            (Value::Int32(value), ColumnType::Int32) => Value::Int32(*value),
            (Value::Int32(value), ColumnType::Int64) => Value::Int64(i64::from(*value)),
            (Value::Int64(value), ColumnType::Int64) => Value::Int64(*value),
            (Value::Int64(value), ColumnType::Int32) => Value::Int32(i32::try_from(*value).ok()?),
            (Value::Int32(value), ColumnType::Float64) => Value::Float64(f64::from(*value)),
            (Value::Int64(value), ColumnType::Float64) => Value::Float64(*value as f64),
            (Value::Float64(value), ColumnType::Float64) => Value::Float64(*value),
            (Value::Text(value), ColumnType::Text) => Value::Text(value.clone()),
            (Value::Timestamp(value), ColumnType::Timestamp) => Value::Timestamp(*value),
            (Value::Date(value), ColumnType::Date) => Value::Date(*value),
            _ => return None,
        })
    }
}

impl PartialEq for Value {
    fn eq(&self, other: &Value) -> bool {
        self.cmp(other) == Ordering::Equal
    }
}

impl Eq for Value {}

impl Hash for Value {
    fn hash<H: Hasher>(&self, state: &mut H) {
        self.rank().hash(state);
        match self {
            Value::Null => {}
            Value::Boolean(value) => value.hash(state),
            Value::Int32(value) => i64::from(*value).hash(state),
            Value::Int64(value) => value.hash(state),
            Value::Float64(value) => Value::float_bits(*value).hash(state),
            Value::Text(value) => value.hash(state),
            Value::Timestamp(value) => value.hash(state),
            Value::Date(value) => value.hash(state),
        }
    }
}

impl PartialOrd for Value {
    fn partial_cmp(&self, other: &Value) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for Value {
    fn cmp(&self, other: &Value) -> Ordering {
        match (self, other) {
            (Value::Boolean(a), Value::Boolean(b)) => a.cmp(b),
            (Value::Int32(_) | Value::Int64(_), Value::Int32(_) | Value::Int64(_)) => {
                self.as_i64().cmp(&other.as_i64())
            }
            (Value::Float64(a), Value::Float64(b)) => {
                if Value::float_bits(*a) == Value::float_bits(*b) {
                    Ordering::Equal
                } else {
                    a.total_cmp(b)
                }
            }
            (Value::Text(a), Value::Text(b)) => a.cmp(b),
            (Value::Timestamp(a), Value::Timestamp(b)) => a.cmp(b),
            (Value::Date(a), Value::Date(b)) => a.cmp(b),
            _ => self.rank().cmp(&other.rank()),
        }
    }
}

/// Days from 0001-01-01 (chrono's day 1 of the common era) to 1970-01-01.
const DAYS_FROM_CE_TO_1970: i32 = 719_163;

impl std::fmt::Display for Value {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Value::Null => f.write_str("NULL"),
            Value::Boolean(value) => write!(f, "{value}"),
            Value::Int32(value) => write!(f, "{value}"),
            Value::Int64(value) => write!(f, "{value}"),
            Value::Float64(value) => write!(f, "{value}"),
            Value::Text(value) => write!(f, "{value:?}"),
            Value::Timestamp(micros) => match chrono::DateTime::from_timestamp_micros(*micros) {
                Some(time) => write!(f, "{}", time.format("%Y-%m-%dT%H:%M:%S%.6fZ")),
                None => write!(f, "timestamp {micros}"),
            },
            // Postgres dates reach further than chrono's calendar: those show their number.
            Value::Date(days) => match days
                .checked_add(DAYS_FROM_CE_TO_1970)
                .and_then(chrono::NaiveDate::from_num_days_from_ce_opt)
            {
                Some(date) => write!(f, "{date}"),
                None => write!(f, "date {days}"),
            },
        }
    }
}

/// A value as JSON, for the records walflow writes to Kafka (late events): numbers and
/// booleans as such, the rest as their text.
pub fn value_to_json(value: &Value) -> serde_json::Value {
    match value {
        Value::Null => serde_json::Value::Null,
        Value::Boolean(flag) => serde_json::Value::Bool(*flag),
        Value::Int32(number) => serde_json::Value::from(*number),
        Value::Int64(number) => serde_json::Value::from(*number),
        Value::Float64(number) => serde_json::Number::from_f64(*number).map_or_else(
            || serde_json::Value::String(number.to_string()),
            serde_json::Value::Number,
        ),
        Value::Text(text) => serde_json::Value::String(text.clone()),
        other => serde_json::Value::String(other.to_string()),
    }
}

/// Builds one Arrow column of `column_type` from the `index`-th value of each row.
pub fn column_to_array<'a>(
    rows: impl Iterator<Item = &'a Row>,
    index: usize,
    column_type: ColumnType,
) -> ArrayRef {
    macro_rules! build {
        ($builder:expr, $variant:ident, $convert:expr) => {{
            let mut builder = $builder;
            for row in rows {
                match row[index].convert(column_type) {
                    Some(Value::$variant(value)) => builder.append_value($convert(value)),
                    _ => builder.append_null(),
                }
            }
            Arc::new(builder.finish()) as ArrayRef
        }};
    }
    match column_type {
        ColumnType::Boolean => build!(BooleanBuilder::new(), Boolean, |v| v),
        ColumnType::Int32 => build!(Int32Builder::new(), Int32, |v| v),
        ColumnType::Int64 => build!(Int64Builder::new(), Int64, |v| v),
        ColumnType::Float64 => build!(Float64Builder::new(), Float64, |v| v),
        ColumnType::Text => build!(StringBuilder::new(), Text, |v: String| v),
        ColumnType::Timestamp => {
            let mut builder = TimestampMicrosecondBuilder::new().with_timezone("UTC");
            for row in rows {
                match row[index].convert(column_type) {
                    Some(Value::Timestamp(value)) => builder.append_value(value),
                    _ => builder.append_null(),
                }
            }
            Arc::new(builder.finish()) as ArrayRef
        }
        ColumnType::Date => build!(Date32Builder::new(), Date, |v| v),
    }
}

/// The value at `row` of an Arrow array, for the types [`ColumnType::from_arrow`] knows;
/// `None` for another type.
pub fn value_at(array: &dyn Array, row: usize) -> Option<Value> {
    if array.is_null(row) {
        return Some(Value::Null);
    }
    macro_rules! get {
        ($array_type:ty) => {
            array.as_any().downcast_ref::<$array_type>()?.value(row)
        };
    }
    Some(match array.data_type() {
        DataType::Boolean => Value::Boolean(get!(BooleanArray)),
        DataType::Int8 => Value::Int32(i32::from(get!(Int8Array))),
        DataType::Int16 => Value::Int32(i32::from(get!(Int16Array))),
        DataType::Int32 => Value::Int32(get!(Int32Array)),
        DataType::Int64 => Value::Int64(get!(Int64Array)),
        DataType::UInt32 => Value::Int64(i64::from(get!(UInt32Array))),
        DataType::UInt64 => Value::Int64(i64::try_from(get!(UInt64Array)).ok()?),
        DataType::Float32 => Value::Float64(f64::from(get!(Float32Array))),
        DataType::Float64 => Value::Float64(get!(Float64Array)),
        DataType::Utf8 => Value::Text(get!(StringArray).to_owned()),
        DataType::LargeUtf8 => Value::Text(get!(LargeStringArray).to_owned()),
        DataType::Utf8View => Value::Text(get!(StringViewArray).to_owned()),
        DataType::Timestamp(TimeUnit::Second, _) => {
            Value::Timestamp(get!(TimestampSecondArray).checked_mul(1_000_000)?)
        }
        DataType::Timestamp(TimeUnit::Millisecond, _) => {
            Value::Timestamp(get!(TimestampMillisecondArray).checked_mul(1_000)?)
        }
        DataType::Timestamp(TimeUnit::Microsecond, _) => {
            Value::Timestamp(get!(TimestampMicrosecondArray))
        }
        DataType::Timestamp(TimeUnit::Nanosecond, _) => {
            Value::Timestamp(get!(TimestampNanosecondArray).div_euclid(1_000))
        }
        DataType::Date32 => Value::Date(get!(Date32Array)),
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn equal_values_hash_alike_across_integer_widths_and_float_zeroes() {
        use std::collections::hash_map::DefaultHasher;
        let hash = |value: &Value| {
            let mut hasher = DefaultHasher::new();
            value.hash(&mut hasher);
            hasher.finish()
        };
        assert_eq!(Value::Int32(5), Value::Int64(5));
        assert_eq!(hash(&Value::Int32(5)), hash(&Value::Int64(5)));
        assert_eq!(Value::Float64(0.0), Value::Float64(-0.0));
        assert_eq!(hash(&Value::Float64(0.0)), hash(&Value::Float64(-0.0)));
        assert_eq!(Value::Float64(f64::NAN), Value::Float64(-f64::NAN));
        assert_ne!(Value::Null, Value::Int32(0));
        assert!(Value::Null < Value::Int32(i32::MIN));
    }

    #[test]
    fn dates_beyond_the_calendar_display_as_their_day_number() {
        assert_eq!(Value::Date(19_000).to_string(), "2022-01-08");
        assert_eq!(Value::Date(-719_162).to_string(), "0001-01-01");
        // Postgres dates reach year 5874897, beyond what chrono can name.
        assert_eq!(
            Value::Date(i32::MAX).to_string(),
            format!("date {}", i32::MAX)
        );
        assert_eq!(
            Value::Date(i32::MIN).to_string(),
            format!("date {}", i32::MIN)
        );
        assert_eq!(
            value_to_json(&Value::Date(i32::MAX)),
            format!("date {}", i32::MAX)
        );
    }

    #[test]
    fn rows_go_to_arrow_and_back_unchanged() {
        let types = [
            ColumnType::Boolean,
            ColumnType::Int32,
            ColumnType::Int64,
            ColumnType::Float64,
            ColumnType::Text,
            ColumnType::Timestamp,
            ColumnType::Date,
        ];
        let rows = [
            vec![
                Value::Boolean(true),
                Value::Int32(-7),
                Value::Int64(1 << 40),
                Value::Float64(2.5),
                Value::Text("Zoë".into()),
                Value::Timestamp(1_700_000_000_123_456),
                Value::Date(19_000),
            ],
            vec![Value::Null; 7],
        ];
        for (index, column_type) in types.iter().enumerate() {
            let array = column_to_array(rows.iter(), index, *column_type);
            assert_eq!(array.data_type(), &column_type.arrow());
            for (row_index, row) in rows.iter().enumerate() {
                assert_eq!(value_at(&array, row_index).unwrap(), row[index]);
            }
        }
    }
}
