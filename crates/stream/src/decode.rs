//! Debezium JSON change events (what `walflow cdc` writes, docs/events.md) to rows of a
//! source's declared columns. An event that does not fit is an error with the reason; the
//! runner sends it to the dead-letter topic.

use std::borrow::Cow;

use serde::Deserialize;
use serde_json::value::RawValue;
use serde_json::Value as Json;

use crate::definition::{SourceMode, SourceTable, COMMIT_TIME_COLUMN, OP_COLUMN};
use crate::operators::normalize::SourceChange;
use crate::value::{ColumnType, Row, Value};

/// Debezium's marker for a TOASTed value Postgres did not send.
pub use walflow_wire::envelope::UNAVAILABLE_VALUE;

/// The envelope with its two images left as raw JSON text: only the declared columns of an
/// image are ever turned into values, the others are skipped without allocating.
#[derive(Debug, Deserialize)]
struct Envelope<'a> {
    #[serde(borrow, default)]
    before: Option<&'a RawValue>,
    #[serde(borrow, default)]
    after: Option<&'a RawValue>,
    #[serde(borrow)]
    op: Cow<'a, str>,
    #[serde(default)]
    source: Option<SourceBlock>,
    #[serde(default)]
    transaction: Option<TransactionBlock>,
}

#[derive(Debug, Deserialize)]
struct SourceBlock {
    #[serde(default)]
    ts_ms: Option<i64>,
    #[serde(default)]
    sequence: Option<Json>,
}

#[derive(Debug, Deserialize)]
struct TransactionBlock {
    #[serde(default)]
    total_order: Option<Json>,
}

pub use walflow_wire::envelope::ChangePosition;

/// Why a change event cannot be read for a source. Its Display is the reason the event's
/// dead letter carries (with the source's name, [`EventError`]).
#[derive(Debug, thiserror::Error)]
pub enum DecodeError {
    #[error("not a Debezium JSON change event: {0}")]
    NotJson(#[source] serde_json::Error),
    #[error("`{image}` is not a JSON object of columns: {source}")]
    ImageNotAnObject {
        image: &'static str,
        #[source]
        source: serde_json::Error,
    },
    #[error("op '{op}' without an `after` row")]
    NoAfterImage { op: String },
    #[error("op 'd' without a `before` row")]
    NoBeforeImage,
    #[error("unknown op '{op}' (expected c, r, u, d or t)")]
    UnknownOp { op: String },
    #[error("`{image}.{column}` is {json}, which is not a {column_type} value")]
    WrongType {
        image: &'static str,
        column: String,
        json: Json,
        column_type: &'static str,
    },
    #[error("`{image}.{column}` (a key column of {table}) is missing or null")]
    NullKey {
        image: &'static str,
        column: String,
        table: String,
    },
    #[error(
        "source.ts_ms = {ts_ms} is no commit time: in microseconds it is beyond what \
         {COMMIT_TIME_COLUMN} can hold"
    )]
    CommitTimeOutOfRange { ts_ms: i64 },
    #[error("no event time: `{column}` is missing or null, and {table} keeps its watermark on it")]
    NoEventTime { column: String, table: String },
    // Postgres's infinity (or anything beyond years 1-9999) would drag the watermark to the
    // end of time and close every window for good.
    #[error(
        "event time `{column}` = {value} is outside years 1-9999 (infinity?): it would move \
         {table}'s watermark past every window"
    )]
    EventTimeOutOfRange {
        column: String,
        value: Value,
        table: String,
    },
    /// An Avro source's event that is not in the Confluent wire framing.
    #[error(transparent)]
    NotFramed(#[from] walflow_wire::confluent::NotFramed),
    #[error("an Avro source without a schema registry")]
    NoSchemaRegistry,
    /// The registry refused the event's writer schema (unknown id, not Avro).
    #[error(transparent)]
    WriterSchema(#[from] crate::avro::SchemaFetchError),
    #[error("stopped while fetching writer schema {id}: {source}")]
    StoppedFetchingSchema {
        id: u32,
        #[source]
        source: walflow_wire::registry::RegistryError,
    },
    #[error("schema {id} was not fetched")]
    SchemaNotFetched { id: u32 },
    #[error("cannot read the Avro datum with schema {id}: {source}")]
    Datum {
        id: u32,
        #[source]
        source: walflow_wire::avro::read::DatumError,
    },
    #[error("the Avro datum has {extra_bytes} bytes more than schema {id} reads")]
    TrailingBytes { id: u32, extra_bytes: usize },
}

/// A change event source `table` could not read: what its dead letter says (the `walflow.error`
/// header), `source <name>: <why>`.
#[derive(Debug, thiserror::Error)]
#[error("source {table}: {error}")]
pub struct EventError {
    pub table: String,
    #[source]
    pub error: DecodeError,
}

/// A value the change event did not carry: a TOASTed column an update left untouched
/// (Postgres does not send it; the event says [`UNAVAILABLE_VALUE`]), or a value computed
/// from one. The Cassandra sink writes it as unset, so Cassandra keeps what it has.
pub fn is_unavailable(value: &Value) -> bool {
    matches!(value, Value::Text(text) if text.contains(UNAVAILABLE_VALUE))
}

/// A decoded event: the change and its commit time (milliseconds), when the event says.
#[derive(Debug, Clone, PartialEq)]
pub struct DecodedEvent {
    pub change: SourceChange,
    pub commit_time_ms: Option<i64>,
    pub position: Option<ChangePosition>,
}

/// One image of a change event as its format gives it: JSON text still to read, or (Avro)
/// the declared columns already read, `None` where the event lacks the column.
pub enum Image<'a> {
    Json(&'a RawValue),
    Columns(Vec<Option<Json>>),
}

/// What a change event says, whatever its format: the fields [`decode_parts`] reads.
pub struct EventParts<'a> {
    pub op: Cow<'a, str>,
    pub before: Option<Image<'a>>,
    pub after: Option<Image<'a>>,
    pub commit_time_ms: Option<i64>,
    pub position: Option<ChangePosition>,
}

/// `Ok(None)` for a tombstone (a null value after a delete: nothing to do).
pub fn decode(
    source: &SourceTable,
    payload: Option<&[u8]>,
) -> Result<Option<DecodedEvent>, DecodeError> {
    let Some(payload) = payload else {
        return Ok(None);
    };
    let envelope: Envelope<'_> = serde_json::from_slice(payload).map_err(DecodeError::NotJson)?;
    decode_parts(
        source,
        EventParts {
            commit_time_ms: envelope.source.as_ref().and_then(|source| source.ts_ms),
            position: ChangePosition::of(
                envelope
                    .source
                    .as_ref()
                    .and_then(|source| source.sequence.as_ref()),
                envelope
                    .transaction
                    .as_ref()
                    .and_then(|transaction| transaction.total_order.as_ref()),
            ),
            op: envelope.op,
            before: image(envelope.before).map(Image::Json),
            after: image(envelope.after).map(Image::Json),
        },
    )
    .map(Some)
}

/// A change event's parts as the source's change (or, for a changelog source, its row).
pub fn decode_parts(
    source: &SourceTable,
    event: EventParts<'_>,
) -> Result<DecodedEvent, DecodeError> {
    let commit_time_ms = event.commit_time_ms;
    let position = event.position;
    if source.mode == SourceMode::Changelog {
        return changelog_row(source, event).map(|row| DecodedEvent {
            change: SourceChange::Append(row),
            commit_time_ms,
            position,
        });
    }
    let op = event.op;
    let change = match op.as_ref() {
        "c" | "r" | "u" => {
            let after = event
                .after
                .ok_or_else(|| DecodeError::NoAfterImage { op: op.to_string() })?;
            let (after, unavailable) = row(source, after, "after")?;
            let before = match event.before {
                Some(before) if op == "u" => Some(row(source, before, "before")?.0),
                _ => None,
            };
            SourceChange::Upsert {
                before,
                after,
                unavailable,
            }
        }
        "d" => {
            let before = event.before.ok_or(DecodeError::NoBeforeImage)?;
            SourceChange::Delete {
                before: row(source, before, "before")?.0,
            }
        }
        "t" => SourceChange::Truncate,
        other => {
            return Err(DecodeError::UnknownOp {
                op: other.to_owned(),
            })
        }
    };
    Ok(DecodedEvent {
        change,
        commit_time_ms,
        position,
    })
}

/// A changelog source's row for one event: the after image (the before image of a delete;
/// nothing of a truncate), and the metadata columns.
fn changelog_row(source: &SourceTable, event: EventParts<'_>) -> Result<Row, DecodeError> {
    let commit_time_ms = event.commit_time_ms;
    let op = event.op.as_ref();
    let image = match op {
        "c" | "r" | "u" => Some(
            event
                .after
                .ok_or_else(|| DecodeError::NoAfterImage { op: op.to_owned() })?,
        ),
        "d" => Some(event.before.ok_or(DecodeError::NoBeforeImage)?),
        "t" => None,
        other => {
            return Err(DecodeError::UnknownOp {
                op: other.to_owned(),
            })
        }
    };
    let mut row = match image {
        Some(image) => row(source, image, if op == "d" { "before" } else { "after" })?.0,
        None => vec![Value::Null; source.columns.len()],
    };
    for (index, column) in source.columns.iter().enumerate() {
        match column.name.as_str() {
            OP_COLUMN => row[index] = Value::Text(op.to_owned()),
            COMMIT_TIME_COLUMN => {
                row[index] = match commit_time_ms {
                    None => Value::Null,
                    Some(ms) => Value::Timestamp(
                        ms.checked_mul(1000)
                            .ok_or(DecodeError::CommitTimeOutOfRange { ts_ms: ms })?,
                    ),
                }
            }
            _ => {}
        }
    }
    if let Some(watermark) = &source.watermark {
        match &row[watermark.column] {
            Value::Null => {
                return Err(DecodeError::NoEventTime {
                    column: source.columns[watermark.column].name.clone(),
                    table: source.name.clone(),
                })
            }
            Value::Timestamp(micros)
                if !(EVENT_TIME_MIN_US..=EVENT_TIME_MAX_US).contains(micros) =>
            {
                return Err(DecodeError::EventTimeOutOfRange {
                    column: source.columns[watermark.column].name.clone(),
                    value: row[watermark.column].clone(),
                    table: source.name.clone(),
                })
            }
            _ => {}
        }
    }
    Ok(row)
}

/// Event times walflow windows: years 1 to 9999, in microseconds since 1970.
const EVENT_TIME_MIN_US: i64 = -62_135_596_800_000_000;
const EVENT_TIME_MAX_US: i64 = 253_402_300_799_999_999;

/// An image, unless absent or `null`.
fn image(raw: Option<&RawValue>) -> Option<&RawValue> {
    raw.filter(|raw| raw.get() != "null")
}

/// The declared columns of one image. A column the event lacks reads as NULL (a column the
/// table does not have, or one dropped since); a key column must be there.
fn row(
    source: &SourceTable,
    image: Image<'_>,
    image_name: &'static str,
) -> Result<(Row, Vec<usize>), DecodeError> {
    let found = match image {
        Image::Columns(found) => found,
        Image::Json(image) => {
            let mut found: Vec<Option<Json>> = vec![None; source.columns.len()];
            let mut deserializer = serde_json::Deserializer::from_str(image.get());
            serde::Deserializer::deserialize_map(
                &mut deserializer,
                ImageVisitor {
                    source,
                    found: &mut found,
                },
            )
            .map_err(|source| DecodeError::ImageNotAnObject {
                image: image_name,
                source,
            })?;
            found
        }
    };
    let mut row = Vec::with_capacity(source.columns.len());
    let mut unavailable = Vec::new();
    for (index, (column, json)) in source.columns.iter().zip(found).enumerate() {
        let json = json.unwrap_or(Json::Null);
        if json.as_str() == Some(UNAVAILABLE_VALUE) {
            unavailable.push(index);
            row.push(Value::Text(UNAVAILABLE_VALUE.to_owned()));
            continue;
        }
        let Some(value) = json_to_value(&json, column.column_type) else {
            return Err(DecodeError::WrongType {
                image: image_name,
                column: column.name.clone(),
                json,
                column_type: column.column_type.sql(),
            });
        };
        if value.is_null() && source.primary_key.contains(&index) {
            return Err(DecodeError::NullKey {
                image: image_name,
                column: column.name.clone(),
                table: source.name.clone(),
            });
        }
        row.push(value);
    }
    Ok((row, unavailable))
}

/// Walks an image object once, keeping the declared columns and skipping the rest.
struct ImageVisitor<'s> {
    source: &'s SourceTable,
    found: &'s mut Vec<Option<Json>>,
}

impl<'de> serde::de::Visitor<'de> for ImageVisitor<'_> {
    type Value = ();

    fn expecting(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter.write_str("an object of column values")
    }

    fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        while let Some(key) = map.next_key::<Cow<'de, str>>()? {
            match self
                .source
                .columns
                .iter()
                .position(|column| column.name == key.as_ref())
            {
                Some(index) => self.found[index] = Some(map.next_value::<Json>()?),
                None => {
                    map.next_value::<serde::de::IgnoredAny>()?;
                }
            }
        }
        Ok(())
    }
}

/// One JSON value in the declared type, as docs/events.md maps Postgres types.
pub fn json_to_value(json: &Json, column_type: ColumnType) -> Option<Value> {
    if json.is_null() {
        return Some(Value::Null);
    }
    Some(match column_type {
        ColumnType::Boolean => Value::Boolean(json.as_bool()?),
        ColumnType::Int32 => Value::Int32(i32::try_from(json.as_i64()?).ok()?),
        ColumnType::Int64 => Value::Int64(json.as_i64()?),
        ColumnType::Float64 => match json {
            Json::Number(number) => Value::Float64(number.as_f64()?),
            Json::String(text) => match text.as_str() {
                "NaN" => Value::Float64(f64::NAN),
                "Infinity" => Value::Float64(f64::INFINITY),
                "-Infinity" => Value::Float64(f64::NEG_INFINITY),
                // numeric arrives as a string with every digit.
                other => Value::Float64(other.parse().ok()?),
            },
            _ => return None,
        },
        ColumnType::Text => match json {
            Json::String(text) => Value::Text(text.clone()),
            Json::Number(number) => Value::Text(number.to_string()),
            Json::Bool(flag) => Value::Text(flag.to_string()),
            _ => return None,
        },
        ColumnType::Timestamp => match json {
            // timestamptz: ISO 8601 in UTC; timestamp: microseconds since the epoch.
            Json::String(text) => Value::Timestamp(
                chrono::DateTime::parse_from_rfc3339(text)
                    .ok()?
                    .timestamp_micros(),
            ),
            Json::Number(number) => Value::Timestamp(number.as_i64()?),
            _ => return None,
        },
        ColumnType::Date => match json {
            Json::Number(number) => Value::Date(i32::try_from(number.as_i64()?).ok()?),
            Json::String(text) => {
                let date = chrono::NaiveDate::parse_from_str(text, "%Y-%m-%d").ok()?;
                Value::Date(
                    date.signed_duration_since(chrono::NaiveDate::from_ymd_opt(1970, 1, 1)?)
                        .num_days() as i32,
                )
            }
            _ => return None,
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::definition::{Column, Position, SourceFormat};

    fn source() -> SourceTable {
        SourceTable {
            name: "users".into(),
            columns: vec![
                Column {
                    name: "id".into(),
                    column_type: ColumnType::Text,
                },
                Column {
                    name: "age".into(),
                    column_type: ColumnType::Int32,
                },
                Column {
                    name: "dob".into(),
                    column_type: ColumnType::Timestamp,
                },
                Column {
                    name: "bio".into(),
                    column_type: ColumnType::Text,
                },
            ],
            primary_key: vec![0],
            topic: "t".into(),
            format: SourceFormat::DebeziumJson,
            mode: SourceMode::Updating,
            watermark: None,
            position: Position::default(),
        }
    }

    #[test]
    fn updates_carry_both_images_and_mark_unavailable_values() {
        let event = br#"{"before":{"id":"a","age":30,"dob":"1990-01-02T03:04:05Z","bio":"x"},
            "after":{"id":"a","age":31,"dob":"1990-01-02T03:04:05.5Z","bio":"__debezium_unavailable_value"},
            "source":{"ts_ms":1700000000000},"op":"u","ts_ms":1}"#;
        let decoded = decode(&source(), Some(event)).unwrap().unwrap();
        assert_eq!(decoded.commit_time_ms, Some(1_700_000_000_000));
        let SourceChange::Upsert {
            before,
            after,
            unavailable,
        } = decoded.change
        else {
            panic!("an update is an upsert");
        };
        assert_eq!(before.unwrap()[1], Value::Int32(30));
        assert_eq!(after[1], Value::Int32(31));
        assert_eq!(after[2], Value::Timestamp(631_249_445_500_000));
        assert_eq!(unavailable, vec![3]);
    }

    #[test]
    fn tombstones_are_skipped_and_bad_events_say_why() {
        assert_eq!(decode(&source(), None).unwrap(), None);
        let error = decode(&source(), Some(b"{not json")).unwrap_err();
        assert!(matches!(error, DecodeError::NotJson(_)), "{error}");
        let error = error.to_string();
        assert!(
            error.contains("not a Debezium JSON change event"),
            "{error}"
        );
        let error = decode(
            &source(),
            Some(br#"{"after":{"id":"a","age":"old"},"op":"c"}"#),
        )
        .unwrap_err();
        assert_eq!(
            error.to_string(),
            r#"`after.age` is "old", which is not a INT value"#
        );
        let error = decode(&source(), Some(br#"{"after":{"age":3},"op":"c"}"#))
            .unwrap_err()
            .to_string();
        assert!(error.contains("key column"), "{error}");
        let error = decode(&source(), Some(br#"{"after":{"id":"a"},"op":"x"}"#))
            .unwrap_err()
            .to_string();
        assert!(error.contains("unknown op 'x'"), "{error}");
    }

    #[test]
    fn a_dead_letter_reason_names_the_source_and_keeps_the_cause() {
        let error = decode(&source(), Some(b"{not json")).unwrap_err();
        let unreadable = EventError {
            table: "users".into(),
            error,
        };
        let reason = unreadable.to_string();
        assert!(
            reason.starts_with("source users: not a Debezium JSON change event: "),
            "{reason}"
        );
        let cause = std::error::Error::source(&unreadable).and_then(std::error::Error::source);
        assert!(
            cause.is_some_and(
                |cause| cause.is::<serde_json::Error>() && reason.ends_with(&cause.to_string())
            ),
            "{cause:?}"
        );
    }

    #[test]
    fn a_commit_time_beyond_the_microsecond_range_is_an_error_of_the_event() {
        let mut changelog = source();
        changelog.mode = SourceMode::Changelog;
        changelog.columns.push(Column {
            name: COMMIT_TIME_COLUMN.into(),
            column_type: ColumnType::Timestamp,
        });
        let event = |ts_ms: i64| {
            format!(r#"{{"after":{{"id":"a"}},"source":{{"ts_ms":{ts_ms}}},"op":"c"}}"#)
        };
        let decoded = decode(&changelog, Some(event(1_700_000_000_000).as_bytes()))
            .unwrap()
            .unwrap();
        let SourceChange::Append(row) = decoded.change else {
            panic!("a changelog event is appended");
        };
        assert_eq!(row[4], Value::Timestamp(1_700_000_000_000_000));
        for ts_ms in [i64::MAX, i64::MIN, i64::MAX / 999] {
            let error = decode(&changelog, Some(event(ts_ms).as_bytes()))
                .unwrap_err()
                .to_string();
            assert!(
                error.contains("source.ts_ms") && error.contains(&ts_ms.to_string()),
                "{error}"
            );
        }
    }
}
