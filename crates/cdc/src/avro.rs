//! Change events in Avro: the Debezium envelope's schemas derived from a table's Relation
//! message, and each change encoded against them in the Confluent wire format (a zero byte,
//! the schema's registry id as four big-endian bytes, then the Avro datum), which Kafka
//! Connect's converters, Flink's avro-confluent, ksqlDB and confluent-kafka clients read.
//!
//! Schemas, per topic `<prefix>.<schema>.<table>` (also the Avro namespace):
//! - key: record `Key` of the primary-key columns;
//! - value: record `Envelope` with `before` and `after` (optional records `Value` of every
//!   column, each column optional), `source` (record
//!   `io.debezium.connector.postgresql.Source`), `op` and `ts_ms`.
//!
//! Types (docs/events.md): boolean; int2/int4 int; int8/oid long; float4 float; float8
//! double (NaN and infinities as such); numeric string (every digit, NaN); bytea bytes;
//! date int (`date`); timestamp long (`local-timestamp-micros`); timestamptz long
//! (`timestamp-micros`, UTC); uuid string (`uuid`); everything else the Postgres text form
//! as a string. Postgres's `infinity` dates and timestamps are the type's largest value,
//! `-infinity` its smallest. An untouched TOASTed value is the string (or bytes)
//! `__debezium_unavailable_value`, so its column's type is a union that allows it.

use apache_avro::types::Value as Avro;
use apache_avro::Schema;
use serde_json::{json, Value as Json};
use walflow_pgoutput::{Column, Relation, RelationColumn, TupleData};

use crate::envelope::{Operation, Source};
use crate::types::{oid, UNAVAILABLE_VALUE};

const UUID: u32 = 2950;

/// How a column is typed in Avro.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Boolean,
    Int,
    Long,
    Float,
    Double,
    Bytes,
    Date,
    Timestamp,
    TimestampTz,
    Uuid,
    String,
}

impl Kind {
    fn of(column: &RelationColumn) -> Kind {
        match column.type_oid {
            oid::BOOL => Kind::Boolean,
            oid::INT2 | oid::INT4 => Kind::Int,
            oid::INT8 | oid::OID => Kind::Long,
            oid::FLOAT4 => Kind::Float,
            oid::FLOAT8 => Kind::Double,
            oid::BYTEA => Kind::Bytes,
            oid::DATE => Kind::Date,
            oid::TIMESTAMP => Kind::Timestamp,
            oid::TIMESTAMPTZ => Kind::TimestampTz,
            UUID => Kind::Uuid,
            _ => Kind::String,
        }
    }

    /// The Avro type, without null.
    fn schema(self) -> Json {
        match self {
            Kind::Boolean => json!("boolean"),
            Kind::Int => json!("int"),
            Kind::Long => json!("long"),
            Kind::Float => json!("float"),
            Kind::Double => json!("double"),
            Kind::Bytes => json!("bytes"),
            Kind::Date => json!({"type": "int", "logicalType": "date"}),
            Kind::Timestamp => json!({"type": "long", "logicalType": "local-timestamp-micros"}),
            Kind::TimestampTz => json!({"type": "long", "logicalType": "timestamp-micros"}),
            Kind::Uuid => json!({"type": "string", "logicalType": "uuid"}),
            Kind::String => json!("string"),
        }
    }
}

/// An Avro name for a column: letters, digits and `_`, not starting with a digit (other
/// characters become `_`, as Debezium's field-name adjustment does).
pub fn field_name(name: &str) -> String {
    let mut adjusted: String = name
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '_' {
                c
            } else {
                '_'
            }
        })
        .collect();
    if adjusted.chars().next().is_none_or(|c| c.is_ascii_digit()) {
        adjusted.insert(0, '_');
    }
    adjusted
}

/// The Avro namespace of a topic: its dot-separated parts, each adjusted like a field name.
fn namespace(topic: &str) -> String {
    topic
        .split('.')
        .map(field_name)
        .collect::<Vec<_>>()
        .join(".")
}

/// The key and value schemas of a table's events, as Avro JSON.
#[derive(Debug, Clone, PartialEq)]
pub struct TableSchemas {
    pub key: Option<Json>,
    pub value: Json,
}

pub fn schemas(relation: &Relation, topic: &str) -> TableSchemas {
    let namespace = namespace(topic);
    let key_fields: Vec<Json> = relation
        .columns
        .iter()
        .filter(|column| column.is_key)
        .map(|column| json!({"name": field_name(&column.name), "type": Kind::of(column).schema()}))
        .collect();
    let value_fields: Vec<Json> = relation
        .columns
        .iter()
        .map(|column| {
            let kind = Kind::of(column);
            let mut branches = vec![json!("null"), kind.schema()];
            // A bytea column's untouched TOASTed value: the marker, a string.
            if kind == Kind::Bytes {
                branches.push(json!("string"));
            }
            json!({"name": field_name(&column.name), "type": branches, "default": null})
        })
        .collect();
    let key = (!key_fields.is_empty()).then(
        || json!({"type": "record", "name": "Key", "namespace": namespace, "fields": key_fields}),
    );
    let value = json!({
        "type": "record",
        "name": "Envelope",
        "namespace": namespace,
        "fields": [
            {"name": "before", "type": ["null", {
                "type": "record", "name": "Value", "fields": value_fields}], "default": null},
            {"name": "after", "type": ["null", "Value"], "default": null},
            {"name": "source", "type": {
                "type": "record",
                "name": "Source",
                "namespace": "io.debezium.connector.postgresql",
                "fields": [
                    {"name": "version", "type": "string"},
                    {"name": "connector", "type": "string"},
                    {"name": "name", "type": "string"},
                    {"name": "ts_ms", "type": "long"},
                    {"name": "snapshot", "type": ["string", "null"], "default": "false"},
                    {"name": "db", "type": "string"},
                    {"name": "schema", "type": "string"},
                    {"name": "table", "type": "string"},
                    {"name": "txId", "type": ["null", "long"], "default": null},
                    {"name": "lsn", "type": ["null", "long"], "default": null}
                ]}},
            {"name": "op", "type": "string"},
            {"name": "ts_ms", "type": ["null", "long"], "default": null}
        ]
    });
    TableSchemas { key, value }
}

/// Parsed schemas, ready to encode against.
#[derive(Debug, Clone)]
pub struct ParsedSchemas {
    pub key: Option<Schema>,
    pub value: Schema,
}

impl TableSchemas {
    pub fn parse(&self) -> Result<ParsedSchemas, apache_avro::Error> {
        Ok(ParsedSchemas {
            key: self.key.as_ref().map(Schema::parse).transpose()?,
            value: Schema::parse(&self.value)?,
        })
    }
}

/// The Avro value of one column of a tuple, for the value record (a union with null).
fn column_value(column: &RelationColumn, value: &Column) -> Avro {
    let kind = Kind::of(column);
    let text = match value {
        Column::Null => return Avro::Union(0, Box::new(Avro::Null)),
        Column::UnchangedToast => {
            return match kind {
                Kind::String => Avro::Union(1, Box::new(Avro::String(UNAVAILABLE_VALUE.into()))),
                // bytes columns: the third branch, a string.
                Kind::Bytes => Avro::Union(2, Box::new(Avro::String(UNAVAILABLE_VALUE.into()))),
                // Fixed-width types are never TOASTed.
                _ => Avro::Union(0, Box::new(Avro::Null)),
            };
        }
        Column::Text(text) => String::from_utf8_lossy(text).into_owned(),
        Column::Binary(bytes) => String::from_utf8_lossy(bytes).into_owned(),
    };
    Avro::Union(1, Box::new(scalar(kind, &text)))
}

/// A non-null value from Postgres's text output, in the column's Avro type.
fn scalar(kind: Kind, text: &str) -> Avro {
    let infinite = |positive: Avro, negative: Avro| match text {
        "infinity" => Some(positive),
        "-infinity" => Some(negative),
        _ => None,
    };
    match kind {
        Kind::Boolean => Avro::Boolean(text == "t"),
        Kind::Int => Avro::Int(text.parse().unwrap_or_default()),
        Kind::Long => Avro::Long(text.parse().unwrap_or_default()),
        Kind::Float => Avro::Float(match text {
            "Infinity" => f32::INFINITY,
            "-Infinity" => f32::NEG_INFINITY,
            _ => text.parse().unwrap_or(f32::NAN),
        }),
        Kind::Double => Avro::Double(match text {
            "Infinity" => f64::INFINITY,
            "-Infinity" => f64::NEG_INFINITY,
            _ => text.parse().unwrap_or(f64::NAN),
        }),
        Kind::Bytes => Avro::Bytes(bytea(text)),
        Kind::Date => infinite(Avro::Date(i32::MAX), Avro::Date(i32::MIN)).unwrap_or_else(|| {
            Avro::Date(
                chrono::NaiveDate::parse_from_str(text, "%Y-%m-%d")
                    .map(|date| (date - chrono::NaiveDate::default()).num_days() as i32)
                    .unwrap_or_default(),
            )
        }),
        Kind::Timestamp => infinite(
            Avro::LocalTimestampMicros(i64::MAX),
            Avro::LocalTimestampMicros(i64::MIN),
        )
        .unwrap_or_else(|| {
            Avro::LocalTimestampMicros(
                chrono::NaiveDateTime::parse_from_str(text, "%Y-%m-%d %H:%M:%S%.f")
                    .map(|timestamp| timestamp.and_utc().timestamp_micros())
                    .unwrap_or_default(),
            )
        }),
        Kind::TimestampTz => infinite(
            Avro::TimestampMicros(i64::MAX),
            Avro::TimestampMicros(i64::MIN),
        )
        .unwrap_or_else(|| {
            Avro::TimestampMicros(
                chrono::DateTime::parse_from_str(text, "%Y-%m-%d %H:%M:%S%.f%#z")
                    .map(|timestamp| timestamp.timestamp_micros())
                    .unwrap_or_default(),
            )
        }),
        Kind::Uuid => match text.parse() {
            Ok(uuid) => Avro::Uuid(uuid),
            Err(_) => Avro::String(text.to_owned()),
        },
        Kind::String => Avro::String(text.to_owned()),
    }
}

/// bytea's hex text form (`\x48656c6c6f`) back to bytes.
fn bytea(text: &str) -> Vec<u8> {
    match text.strip_prefix("\\x") {
        Some(hex) => (0..hex.len())
            .step_by(2)
            .filter_map(|index| {
                hex.get(index..index + 2)
                    .and_then(|pair| u8::from_str_radix(pair, 16).ok())
            })
            .collect(),
        None => text.as_bytes().to_vec(),
    }
}

fn row_record(relation: &Relation, tuple: &TupleData) -> Avro {
    Avro::Record(
        relation
            .columns
            .iter()
            .zip(tuple.iter())
            .map(|(column, value)| (field_name(&column.name), column_value(column, &value)))
            .collect(),
    )
}

fn key_record(relation: &Relation, tuple: &TupleData) -> Avro {
    Avro::Record(
        relation
            .columns
            .iter()
            .zip(tuple.iter())
            .filter(|(column, _)| column.is_key)
            .map(|(column, value)| {
                let value = match column_value(column, &value) {
                    Avro::Union(_, inner) => *inner,
                    other => other,
                };
                (field_name(&column.name), value)
            })
            .collect(),
    )
}

/// The Confluent wire format: magic byte 0, the schema id (big-endian), the datum.
pub fn wire_format(schema_id: u32, datum: &[u8]) -> Vec<u8> {
    let mut bytes = Vec::with_capacity(5 + datum.len());
    bytes.push(0);
    bytes.extend_from_slice(&schema_id.to_be_bytes());
    bytes.extend_from_slice(datum);
    bytes
}

/// One change's key and value datums (without the wire-format header).
#[allow(clippy::too_many_arguments)]
pub fn encode_change(
    schemas: &ParsedSchemas,
    relation: &Relation,
    operation: Operation,
    before: Option<&TupleData>,
    after: Option<&TupleData>,
    source: &Source<'_>,
    now_ms: i64,
) -> Result<(Option<Vec<u8>>, Vec<u8>), apache_avro::Error> {
    let key = match (&schemas.key, after.or(before)) {
        (Some(schema), Some(tuple)) => Some(apache_avro::to_avro_datum(
            schema,
            key_record(relation, tuple),
        )?),
        _ => None,
    };
    let optional_row = |tuple: Option<&TupleData>| match tuple {
        Some(tuple) => Avro::Union(1, Box::new(row_record(relation, tuple))),
        None => Avro::Union(0, Box::new(Avro::Null)),
    };
    let envelope = Avro::Record(vec![
        ("before".into(), optional_row(before)),
        ("after".into(), optional_row(after)),
        (
            "source".into(),
            Avro::Record(vec![
                (
                    "version".into(),
                    Avro::String(concat!("walflow-", env!("CARGO_PKG_VERSION")).into()),
                ),
                ("connector".into(), Avro::String("postgresql".into())),
                ("name".into(), Avro::String(source.name.into())),
                ("ts_ms".into(), Avro::Long(source.commit_time.unix_millis())),
                (
                    "snapshot".into(),
                    Avro::Union(
                        0,
                        Box::new(Avro::String(
                            if source.snapshot { "true" } else { "false" }.into(),
                        )),
                    ),
                ),
                ("db".into(), Avro::String(source.database.into())),
                (
                    "schema".into(),
                    Avro::String(relation.namespace.to_string()),
                ),
                ("table".into(), Avro::String(relation.name.to_string())),
                (
                    "txId".into(),
                    Avro::Union(1, Box::new(Avro::Long(i64::from(source.xid)))),
                ),
                (
                    "lsn".into(),
                    Avro::Union(1, Box::new(Avro::Long(source.lsn.0 as i64))),
                ),
            ]),
        ),
        ("op".into(), Avro::String(operation.code().into())),
        ("ts_ms".into(), Avro::Union(1, Box::new(Avro::Long(now_ms)))),
    ]);
    let value = apache_avro::to_avro_datum(&schemas.value, envelope)?;
    Ok((key, value))
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;
    use bytestring::ByteString;
    use walflow_pgoutput::{Lsn, PgTimestamp, ReplicaIdentity};

    use super::*;

    fn relation() -> Relation {
        let column = |name: &str, type_oid: u32, is_key: bool| RelationColumn {
            is_key,
            name: ByteString::from(name),
            type_oid,
            type_modifier: -1,
        };
        Relation {
            xid: None,
            oid: 1,
            namespace: ByteString::from("public"),
            name: ByteString::from("zoo"),
            replica_identity: ReplicaIdentity::Default,
            columns: vec![
                column("id", oid::INT8, true),
                column("flag", oid::BOOL, false),
                column("small", oid::INT2, false),
                column("ratio", oid::FLOAT8, false),
                column("price", oid::NUMERIC, false),
                column("blob", oid::BYTEA, false),
                column("born", oid::DATE, false),
                column("seen", oid::TIMESTAMP, false),
                column("at", oid::TIMESTAMPTZ, false),
                column("uid", UUID, false),
                column("first name", 25, false),
            ],
        }
    }

    fn text(value: &str) -> Column {
        Column::Text(Bytes::copy_from_slice(value.as_bytes()))
    }

    #[test]
    fn a_change_round_trips_through_its_schema_with_logical_types() {
        let relation = relation();
        let schemas = schemas(&relation, "walflow.public.zoo");
        let parsed = schemas.parse().expect("the schemas are valid Avro");
        let tuple: TupleData = walflow_pgoutput::encode::tuple(&[
            text("7"),
            text("t"),
            text("-3"),
            text("NaN"),
            text("12345678901234567890.5"),
            text("\\x48656c6c6f"),
            text("infinity"),
            text("2026-01-02 03:04:05.5"),
            text("2026-01-02 03:04:05.5+02"),
            text("7a0eed16-9430-4d68-901f-c0d4c1c3bf00"),
            Column::UnchangedToast,
        ]);
        let source = Source {
            name: "walflow",
            database: "db",
            commit_time: PgTimestamp::from_unix_micros(1_767_225_600_000_000),
            xid: 42,
            lsn: Lsn(99),
            snapshot: false,
        };
        let (key, value) = encode_change(
            &parsed,
            &relation,
            Operation::Update,
            None,
            Some(&tuple),
            &source,
            5,
        )
        .unwrap();
        let key = apache_avro::from_avro_datum(
            parsed.key.as_ref().unwrap(),
            &mut key.unwrap().as_slice(),
            None,
        )
        .unwrap();
        assert_eq!(key, Avro::Record(vec![("id".into(), Avro::Long(7))]));
        let value =
            apache_avro::from_avro_datum(&parsed.value, &mut value.as_slice(), None).unwrap();
        let Avro::Record(fields) = value else {
            panic!("{value:?}")
        };
        let field = |name: &str| fields.iter().find(|(n, _)| n == name).unwrap().1.clone();
        assert_eq!(field("op"), Avro::String("u".into()));
        assert_eq!(field("before"), Avro::Union(0, Box::new(Avro::Null)));
        let Avro::Union(1, after) = field("after") else {
            panic!("{fields:?}")
        };
        let Avro::Record(after) = *after else {
            panic!()
        };
        let column = |name: &str| match &after.iter().find(|(n, _)| n == name).unwrap().1 {
            Avro::Union(_, inner) => (**inner).clone(),
            other => other.clone(),
        };
        assert_eq!(column("flag"), Avro::Boolean(true));
        assert_eq!(column("small"), Avro::Int(-3));
        assert!(matches!(column("ratio"), Avro::Double(nan) if nan.is_nan()));
        assert_eq!(
            column("price"),
            Avro::String("12345678901234567890.5".into())
        );
        assert_eq!(column("blob"), Avro::Bytes(b"Hello".to_vec()));
        assert_eq!(column("born"), Avro::Date(i32::MAX));
        assert_eq!(
            column("seen"),
            Avro::LocalTimestampMicros(1_767_323_045_500_000)
        );
        assert_eq!(column("at"), Avro::TimestampMicros(1_767_315_845_500_000));
        assert_eq!(
            column("uid"),
            Avro::Uuid("7a0eed16-9430-4d68-901f-c0d4c1c3bf00".parse().unwrap())
        );
        assert_eq!(column("first_name"), Avro::String(UNAVAILABLE_VALUE.into()));
    }

    #[test]
    fn names_are_adjusted_to_avro_and_the_wire_format_has_its_header() {
        assert_eq!(field_name("first name"), "first_name");
        assert_eq!(field_name("2fa"), "_2fa");
        assert_eq!(
            namespace("walflow_test_1.public.zoo"),
            "walflow_test_1.public.zoo"
        );
        assert_eq!(wire_format(258, &[9]), vec![0, 0, 0, 1, 2, 9]);
    }
}
