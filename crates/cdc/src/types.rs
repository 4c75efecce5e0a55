//! Column values, as pgoutput sends them in text form, to JSON the way Debezium's
//! PostgreSQL connector writes them with its JSON converter (docs/events.md has the table).

use crate::pg_time;
use base64::Engine;
use serde_json::{Number, Value};

pub mod oid {
    pub const BOOL: u32 = 16;
    pub const TEXT: u32 = 25;
    pub const UUID: u32 = 2950;
    pub const BYTEA: u32 = 17;
    pub const INT8: u32 = 20;
    pub const INT2: u32 = 21;
    pub const INT4: u32 = 23;
    pub const OID: u32 = 26;
    pub const FLOAT4: u32 = 700;
    pub const FLOAT8: u32 = 701;
    pub const NUMERIC: u32 = 1700;
    pub const DATE: u32 = 1082;
    pub const TIMESTAMP: u32 = 1114;
    pub const TIMESTAMPTZ: u32 = 1184;
}

/// One non-null value's JSON form, decided once and written either as a `serde_json::Value`
/// or straight into the serialized event.
#[derive(Debug, Clone, PartialEq)]
pub enum JsonScalar<'a> {
    Bool(bool),
    Integer(i64),
    Float(f64),
    Text(std::borrow::Cow<'a, str>),
}

impl serde::Serialize for JsonScalar<'_> {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        match self {
            JsonScalar::Bool(value) => serializer.serialize_bool(*value),
            JsonScalar::Integer(value) => serializer.serialize_i64(*value),
            JsonScalar::Float(value) => serializer.serialize_f64(*value),
            JsonScalar::Text(value) => serializer.serialize_str(value),
        }
    }
}

impl From<JsonScalar<'_>> for Value {
    fn from(scalar: JsonScalar<'_>) -> Value {
        match scalar {
            JsonScalar::Bool(value) => Value::Bool(value),
            JsonScalar::Integer(value) => Value::Number(value.into()),
            JsonScalar::Float(value) => Number::from_f64(value)
                .map(Value::Number)
                .unwrap_or(Value::Null),
            JsonScalar::Text(value) => Value::String(value.into_owned()),
        }
    }
}

/// The JSON form of one non-null value in Postgres's text output format.
pub fn text_to_json(type_oid: u32, text: &str) -> Value {
    classify(type_oid, text).into()
}

/// Decides the JSON form of one non-null value in Postgres's text output format.
pub fn classify(type_oid: u32, text: &str) -> JsonScalar<'_> {
    let as_text = || JsonScalar::Text(std::borrow::Cow::Borrowed(text));
    match type_oid {
        oid::BOOL => JsonScalar::Bool(text == "t"),
        oid::INT2 | oid::INT4 | oid::INT8 | oid::OID => text
            .parse::<i64>()
            .map(JsonScalar::Integer)
            .unwrap_or_else(|_| as_text()),
        // Finite floats are numbers; NaN and the infinities have no JSON number and stay
        // strings ("NaN", "Infinity", "-Infinity"), as Debezium writes them.
        oid::FLOAT4 | oid::FLOAT8 => match text.parse::<f64>() {
            Ok(value) if value.is_finite() => JsonScalar::Float(value),
            _ => as_text(),
        },
        // Exact: numeric keeps every digit as a string (Debezium's decimal.handling.mode=string),
        // including "NaN" and "Infinity".
        oid::NUMERIC => as_text(),
        // Bytes as base64, like Debezium's binary.handling.mode=base64.
        oid::BYTEA => JsonScalar::Text(std::borrow::Cow::Owned(bytea_text_to_base64(text))),
        // Debezium's time types (time.precision.mode=adaptive): io.debezium.time.Date (days
        // since 1970-01-01), MicroTimestamp (microseconds since the epoch, no zone) and
        // ZonedTimestamp (ISO 8601 in UTC). 'infinity' and '-infinity' stay strings.
        // BC dates are negative days, as Debezium writes them.
        oid::DATE => pg_time::date_days(text)
            .map(JsonScalar::Integer)
            .unwrap_or_else(as_text),
        oid::TIMESTAMP => pg_time::timestamp_micros(text)
            .map(JsonScalar::Integer)
            .unwrap_or_else(as_text),
        oid::TIMESTAMPTZ => pg_time::timestamptz_micros(text)
            .and_then(chrono::DateTime::from_timestamp_micros)
            .map(|timestamp| {
                JsonScalar::Text(std::borrow::Cow::Owned(
                    timestamp.to_rfc3339_opts(chrono::SecondsFormat::AutoSi, true),
                ))
            })
            .unwrap_or_else(as_text),
        // Everything else in Postgres's own text form: text, varchar, uuid, json/jsonb (the
        // document as a string, as Debezium's io.debezium.data.Json), times, intervals,
        // network types, arrays, enums, domains.
        _ => as_text(),
    }
}

fn bytea_text_to_base64(text: &str) -> String {
    if !text.starts_with("\\x") {
        // The escape output format: rare (bytea_output = escape); kept as sent.
        return base64::engine::general_purpose::STANDARD.encode(text.as_bytes());
    }
    base64::engine::general_purpose::STANDARD.encode(bytea_hex(text).unwrap_or_default())
}

/// bytea's hex text form (`\x48656c6c6f`) back to bytes; `None` when it is not that form.
pub(crate) fn bytea_hex(text: &str) -> Option<Vec<u8>> {
    let hex = text.strip_prefix("\\x")?;
    if hex.len() % 2 != 0 {
        return None;
    }
    (0..hex.len())
        .step_by(2)
        .map(|index| {
            hex.get(index..index + 2)
                .and_then(|pair| u8::from_str_radix(pair, 16).ok())
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn numbers_stay_numbers_and_exact_values_stay_exact() {
        assert_eq!(text_to_json(oid::INT4, "42"), json!(42));
        assert_eq!(
            text_to_json(oid::INT8, "-9223372036854775808"),
            json!(i64::MIN)
        );
        assert_eq!(text_to_json(oid::FLOAT8, "1.5"), json!(1.5));
        assert_eq!(text_to_json(oid::FLOAT8, "NaN"), json!("NaN"));
        assert_eq!(text_to_json(oid::FLOAT4, "-Infinity"), json!("-Infinity"));
        assert_eq!(
            text_to_json(oid::NUMERIC, "12345678901234567890.000000001"),
            json!("12345678901234567890.000000001")
        );
        assert_eq!(text_to_json(oid::BOOL, "t"), json!(true));
        assert_eq!(text_to_json(oid::BOOL, "f"), json!(false));
    }

    #[test]
    fn bytes_are_base64() {
        assert_eq!(text_to_json(oid::BYTEA, "\\x48656c6c6f"), json!("SGVsbG8="));
    }

    #[test]
    fn other_types_keep_their_text_form() {
        assert_eq!(
            text_to_json(2950, "7a0eed16-9430-4d68-901f-c0d4c1c3bf00"),
            json!("7a0eed16-9430-4d68-901f-c0d4c1c3bf00")
        );
        assert_eq!(text_to_json(1184, "infinity"), json!("infinity"));
        assert_eq!(text_to_json(1007, "{1,2,3}"), json!("{1,2,3}"));
    }
}
