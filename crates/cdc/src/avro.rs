//! Change events in Avro: a table's Relation message mapped onto the envelope's schemas
//! (walflow-wire's `avro::schema`), and each change encoded against them in the Confluent wire
//! format, straight from pgoutput's text without building Avro values.
//!
//! Types (docs/events.md): boolean; int2/int4 int; int8/oid long; float4 float; float8
//! double (NaN and infinities as such); numeric string (every digit, NaN); bytea bytes;
//! date int (`date`); timestamp long (`local-timestamp-micros`); timestamptz long
//! (`timestamp-micros`, UTC); uuid string (`uuid`); everything else the Postgres text form
//! as a string. Postgres's `infinity` dates and timestamps are the type's largest value,
//! `-infinity` its smallest. An untouched TOASTed value is the string (or bytes)
//! `__debezium_unavailable_value`, so its column's type is a union that allows it.

use walflow_pgoutput::{Column, Relation, RelationColumn, TupleData};
use walflow_wire::avro::schema::{field_name, SchemaColumn};
use walflow_wire::avro::write::{self, SourceBlock, TransactionBlock};
use walflow_wire::avro::{ColumnType, TableSchemas};
use walflow_wire::confluent;
use walflow_wire::envelope::UNAVAILABLE_VALUE;

use crate::envelope::{Operation, Source};
use crate::pg_time;
use crate::types::{bytea_hex, oid};

/// The Avro type of a Postgres column.
fn column_type(column: &RelationColumn) -> ColumnType {
    match column.type_oid {
        oid::BOOL => ColumnType::Boolean,
        oid::INT2 | oid::INT4 => ColumnType::Int,
        oid::INT8 | oid::OID => ColumnType::Long,
        oid::FLOAT4 => ColumnType::Float,
        oid::FLOAT8 => ColumnType::Double,
        oid::BYTEA => ColumnType::Bytes,
        oid::DATE => ColumnType::Date,
        oid::TIMESTAMP => ColumnType::Timestamp,
        oid::TIMESTAMPTZ => ColumnType::TimestampTz,
        oid::UUID => ColumnType::Uuid,
        _ => ColumnType::String,
    }
}

/// Two columns of `relation` whose Avro names are the same (`a-b` and `a_b`, or two
/// non-ASCII names of one length): the first such pair and the name they share.
pub fn colliding_field_names(relation: &Relation) -> Option<(String, String, String)> {
    let mut seen: std::collections::HashMap<String, &str> = std::collections::HashMap::new();
    for column in relation.columns.iter() {
        let adjusted = field_name(&column.name);
        if let Some(first) = seen.insert(adjusted.clone(), &column.name) {
            return Some((first.to_owned(), column.name.to_string(), adjusted));
        }
    }
    None
}

/// The key and value schemas of a table's events.
pub fn schemas(relation: &Relation, topic: &str) -> TableSchemas {
    TableSchemas::of(
        relation.columns.iter().map(|column| SchemaColumn {
            name: &column.name,
            column_type: column_type(column),
            is_key: column.is_key,
        }),
        topic,
    )
}

/// Why a change could not be written in its table's Avro schema.
#[derive(Debug, thiserror::Error)]
pub enum EncodeError {
    #[error("column {column}: Postgres sent {text:?}, which is not a {kind} value")]
    Unreadable {
        column: String,
        text: String,
        kind: &'static str,
    },
    #[error("key column {column} has no value in the change")]
    MissingKey { column: String },
}

/// Writes a non-null value from Postgres's text output in the column's Avro type; false when
/// the text is not a value of that type.
fn write_scalar(buffer: &mut Vec<u8>, column_type: ColumnType, text: &str) -> bool {
    let infinite = |positive: i64, negative: i64| match text {
        "infinity" => Some(positive),
        "-infinity" => Some(negative),
        _ => None,
    };
    match column_type {
        ColumnType::Boolean => match text {
            "t" => write::boolean(buffer, true),
            "f" => write::boolean(buffer, false),
            _ => return false,
        },
        ColumnType::Int => match text.parse::<i32>() {
            Ok(number) => write::long(buffer, i64::from(number)),
            Err(_) => return false,
        },
        ColumnType::Long => match text.parse::<i64>() {
            Ok(number) => write::long(buffer, number),
            Err(_) => return false,
        },
        ColumnType::Float => match float_text(text) {
            Some(number) => write::float(buffer, number as f32),
            None => return false,
        },
        ColumnType::Double => match float_text(text) {
            Some(number) => write::double(buffer, number),
            None => return false,
        },
        // cdc's connections ask for bytea's hex form.
        ColumnType::Bytes => match bytea_hex(text) {
            Some(bytes) => write::bytes(buffer, &bytes),
            None => return false,
        },
        ColumnType::Date => match infinite(i64::from(i32::MAX), i64::from(i32::MIN))
            .or_else(|| pg_time::date_days(text))
            .and_then(|days| i32::try_from(days).ok())
        {
            Some(days) => write::long(buffer, i64::from(days)),
            None => return false,
        },
        ColumnType::Timestamp => {
            match infinite(i64::MAX, i64::MIN).or_else(|| pg_time::timestamp_micros(text)) {
                Some(micros) => write::long(buffer, micros),
                None => return false,
            }
        }
        ColumnType::TimestampTz => {
            match infinite(i64::MAX, i64::MIN).or_else(|| pg_time::timestamptz_micros(text)) {
                Some(micros) => write::long(buffer, micros),
                None => return false,
            }
        }
        // Postgres writes uuids in the canonical form the logical type asks for.
        ColumnType::Uuid | ColumnType::String => write::string(buffer, text),
    }
    true
}

/// float4/float8 text, with Postgres's spellings of NaN and the infinities.
fn float_text(text: &str) -> Option<f64> {
    match text {
        "NaN" => Some(f64::NAN),
        "Infinity" => Some(f64::INFINITY),
        "-Infinity" => Some(f64::NEG_INFINITY),
        _ => text.parse().ok(),
    }
}

/// One column of the value record: a union of null, the column's type and, for bytes, the
/// string that marks an untouched TOASTed value.
fn write_column(
    buffer: &mut Vec<u8>,
    column: &RelationColumn,
    value: &Column,
) -> Result<(), EncodeError> {
    let column_type = column_type(column);
    match value {
        Column::Null => write::branch(buffer, 0),
        Column::UnchangedToast => match column_type {
            ColumnType::String => {
                write::branch(buffer, 1);
                write::string(buffer, UNAVAILABLE_VALUE);
            }
            ColumnType::Bytes => {
                write::branch(buffer, 2);
                write::string(buffer, UNAVAILABLE_VALUE);
            }
            // Fixed-width types are never TOASTed.
            _ => write::branch(buffer, 0),
        },
        Column::Text(_) | Column::Binary(_) => {
            write::branch(buffer, 1);
            write_text(buffer, column, column_type, value)?;
        }
    }
    Ok(())
}

/// A value Postgres sent as text, in the column's Avro type, or the error naming it.
fn write_text(
    buffer: &mut Vec<u8>,
    column: &RelationColumn,
    column_type: ColumnType,
    value: &Column,
) -> Result<(), EncodeError> {
    let text = match value {
        Column::Text(bytes) | Column::Binary(bytes) => String::from_utf8_lossy(bytes),
        Column::Null | Column::UnchangedToast => std::borrow::Cow::Borrowed(""),
    };
    if write_scalar(buffer, column_type, &text) {
        Ok(())
    } else {
        Err(EncodeError::Unreadable {
            column: column.name.to_string(),
            text: text.into_owned(),
            kind: column_type.name(),
        })
    }
}

/// `before` or `after`: null, or the `Value` record of every column.
fn write_row(
    buffer: &mut Vec<u8>,
    relation: &Relation,
    tuple: Option<&TupleData>,
) -> Result<(), EncodeError> {
    let Some(tuple) = tuple else {
        write::null_image(buffer);
        return Ok(());
    };
    write::row_image(buffer);
    let mut values = tuple.iter();
    for column in &relation.columns {
        // A tuple shorter than its relation (never sent by Postgres) reads as nulls.
        let value = values.next().unwrap_or(Column::Null);
        write_column(buffer, column, &value)?;
    }
    Ok(())
}

fn write_key(
    buffer: &mut Vec<u8>,
    relation: &Relation,
    tuple: &TupleData,
) -> Result<(), EncodeError> {
    for (column, value) in relation.columns.iter().zip(tuple.iter()) {
        if !column.is_key {
            continue;
        }
        match value {
            Column::Text(_) | Column::Binary(_) => {
                write_text(buffer, column, column_type(column), &value)?
            }
            Column::Null | Column::UnchangedToast => {
                return Err(EncodeError::MissingKey {
                    column: column.name.to_string(),
                })
            }
        }
    }
    Ok(())
}

/// The registry ids of a table's schemas.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SchemaIds {
    pub key: Option<u32>,
    pub value: u32,
}

/// One change's key (when the table has one) and value, in the wire format with the
/// schemas of [`schemas`] registered under `ids`.
pub fn encode_change(
    ids: SchemaIds,
    relation: &Relation,
    operation: Operation,
    before: Option<&TupleData>,
    after: Option<&TupleData>,
    source: &Source<'_>,
    now_ms: i64,
) -> Result<(Option<Vec<u8>>, Vec<u8>), EncodeError> {
    let key = match (ids.key, after.or(before)) {
        (Some(id), Some(tuple)) => {
            let mut key = confluent::header(id, 64);
            write_key(&mut key, relation, tuple)?;
            Some(key)
        }
        _ => None,
    };
    let mut value = confluent::header(ids.value, 512);
    write_row(&mut value, relation, before)?;
    write_row(&mut value, relation, after)?;
    let sequence = source
        .position
        .as_ref()
        .map(|position| position.sequence(source.lsn));
    let transaction_id = source
        .position
        .as_ref()
        .map(|position| position.transaction_id(source.xid));
    let transaction =
        source
            .position
            .as_ref()
            .zip(transaction_id.as_deref())
            .map(|(position, id)| TransactionBlock {
                id,
                total_order: position.total_order as i64,
                data_collection_order: position.data_collection_order as i64,
            });
    write::envelope_tail(
        &mut value,
        &SourceBlock {
            version: crate::envelope::VERSION,
            name: source.name,
            ts_ms: source.commit_time.unix_millis(),
            snapshot: source.snapshot,
            db: source.database,
            schema: &relation.namespace,
            table: &relation.name,
            tx_id: i64::from(source.xid),
            lsn: source.lsn.0 as i64,
            sequence: sequence.as_deref(),
        },
        operation.code(),
        now_ms,
        transaction.as_ref(),
    );
    Ok((key, value))
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;
    use bytestring::ByteString;
    use walflow_pgoutput::{Lsn, PgTimestamp, ReplicaIdentity};

    use super::*;
    use apache_avro::types::Value as Avro;
    use apache_avro::Schema;
    use walflow_wire::avro::read::{DeclaredColumns, Reader};
    use walflow_wire::avro::schema::namespace;

    /// Reads a datum with apache-avro, the independent reader, and checks that it used every
    /// byte.
    fn read_all(schema: &Schema, mut datum: &[u8]) -> Avro {
        let value = apache_avro::from_avro_datum(schema, &mut datum, None).unwrap();
        assert!(datum.is_empty(), "{} bytes left unread", datum.len());
        value
    }

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
                column("uid", oid::UUID, false),
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
            position: Some(crate::envelope::EventPosition {
                commit_lsn: Lsn(120),
                total_order: 1,
                data_collection_order: 1,
            }),
        };
        let ids = SchemaIds {
            key: Some(3),
            value: 4,
        };
        let (key, value) = encode_change(
            ids,
            &relation,
            Operation::Update,
            None,
            Some(&tuple),
            &source,
            5,
        )
        .unwrap();
        let key = key.unwrap();
        assert_eq!(key[..5], [0, 0, 0, 0, 3]);
        assert_eq!(value[..5], [0, 0, 0, 0, 4]);
        let key = read_all(parsed.key.as_ref().unwrap(), &key[5..]);
        assert_eq!(key, Avro::Record(vec![("id".into(), Avro::Long(7))]));
        let value = read_all(&parsed.value, &value[5..]);
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
        let Avro::Record(source_block) = field("source") else {
            panic!("{fields:?}")
        };
        assert!(source_block.contains(&(
            "sequence".into(),
            Avro::Union(1, Box::new(Avro::String(r#"["120","99"]"#.into())))
        )));
        assert_eq!(
            field("transaction"),
            Avro::Union(
                1,
                Box::new(Avro::Record(vec![
                    ("id".into(), Avro::String("42:120".into())),
                    ("total_order".into(), Avro::Long(1)),
                    ("data_collection_order".into(), Avro::Long(1)),
                ]))
            )
        );
    }

    #[test]
    fn columns_whose_avro_names_collide_are_named() {
        let mut relation = relation();
        assert_eq!(colliding_field_names(&relation), None);
        let mut columns = relation.columns.clone();
        let mut clash = columns[10].clone();
        clash.name = ByteString::from("first-name");
        columns.push(clash);
        relation.columns = columns;
        assert_eq!(
            colliding_field_names(&relation),
            Some((
                "first name".to_owned(),
                "first-name".to_owned(),
                "first_name".to_owned()
            ))
        );
    }

    #[test]
    fn names_are_adjusted_to_avro_and_the_wire_format_has_its_header() {
        assert_eq!(field_name("first name"), "first_name");
        assert_eq!(field_name("2fa"), "_2fa");
        assert_eq!(
            namespace("walflow_test_1.public.zoo"),
            "walflow_test_1.public.zoo"
        );
        assert_eq!(confluent::header(258, 0), vec![0, 0, 0, 1, 2]);
    }

    fn source() -> Source<'static> {
        Source {
            name: "walflow",
            database: "db",
            commit_time: PgTimestamp::from_unix_micros(1_767_225_600_000_000),
            xid: 42,
            lsn: Lsn(99),
            snapshot: true,
            position: None,
        }
    }

    #[test]
    fn a_value_the_column_type_cannot_hold_is_an_error_naming_the_column() {
        let relation = relation();
        let mut values = vec![text("7"); 1];
        values.extend((1..relation.columns.len()).map(|_| Column::Null));
        values[6] = text("someday");
        let tuple = walflow_pgoutput::encode::tuple(&values);
        let ids = SchemaIds {
            key: Some(1),
            value: 2,
        };
        let error = encode_change(
            ids,
            &relation,
            Operation::Create,
            None,
            Some(&tuple),
            &source(),
            0,
        )
        .unwrap_err();
        assert_eq!(
            error.to_string(),
            "column born: Postgres sent \"someday\", which is not a date value"
        );
        let no_key = walflow_pgoutput::encode::tuple(
            &(0..relation.columns.len())
                .map(|_| Column::Null)
                .collect::<Vec<_>>(),
        );
        assert!(matches!(
            encode_change(
                ids,
                &relation,
                Operation::Delete,
                Some(&no_key),
                None,
                &source(),
                0
            ),
            Err(EncodeError::MissingKey { .. })
        ));
    }

    /// Postgres's text for an astronomical year, month and day (year 0 is 1 BC).
    fn date_text(year: i32, month: u32, day: u32) -> String {
        if year > 0 {
            format!("{year:04}-{month:02}-{day:02}")
        } else {
            format!("{:04}-{month:02}-{day:02} BC", 1 - year)
        }
    }

    proptest::proptest! {
        /// Every value as Postgres prints it, written by walflow's encoder and read back by
        /// apache-avro with the registered schema: the same value, and every byte used.
        #[test]
        fn apache_avro_reads_back_what_the_encoder_writes(
            id in proptest::num::i64::ANY,
            flag in proptest::option::of(proptest::bool::ANY),
            small in proptest::num::i16::ANY,
            ratio in proptest::num::f64::ANY,
            price in "-?[0-9]{1,30}(\\.[0-9]{1,10})?",
            blob in proptest::collection::vec(proptest::num::u8::ANY, 0..40),
            (year, month, day) in (-4000i32..9999, 1u32..=12, 1u32..=28),
            micros in 0i64..86_400_000_000,
            offset_minutes in -15i64 * 60..=15 * 60,
            note in "\\PC{0,40}",
            toast in proptest::bool::ANY,
            operation_index in 0usize..4,
        ) {
            let relation = relation();
            let time = format!(
                "{:02}:{:02}:{:02}.{:06}",
                micros / 3_600_000_000,
                micros / 60_000_000 % 60,
                micros / 1_000_000 % 60,
                micros % 1_000_000
            );
            let date = date_text(year, month, day);
            let (date_part, era) = match date.strip_suffix(" BC") {
                Some(part) => (part.to_owned(), " BC"),
                None => (date.clone(), ""),
            };
            let offset = format!(
                "{}{:02}:{:02}",
                if offset_minutes < 0 { '-' } else { '+' },
                offset_minutes.abs() / 60,
                offset_minutes.abs() % 60
            );
            let hex: String = blob.iter().map(|byte| format!("{byte:02x}")).collect();
            let columns = vec![
                text(&id.to_string()),
                flag.map_or(Column::Null, |flag| text(if flag { "t" } else { "f" })),
                text(&small.to_string()),
                text(&if ratio.is_nan() { "NaN".to_owned() } else if ratio.is_infinite() {
                    if ratio > 0.0 { "Infinity".to_owned() } else { "-Infinity".to_owned() }
                } else { ratio.to_string() }),
                text(&price),
                text(&format!("\\x{hex}")),
                text(&date),
                text(&format!("{date_part} {time}{era}")),
                text(&format!("{date_part} {time}{offset}{era}")),
                text("7a0eed16-9430-4d68-901f-c0d4c1c3bf00"),
                if toast { Column::UnchangedToast } else { text(&note) },
            ];
            let tuple = walflow_pgoutput::encode::tuple(&columns);
            let operation = [Operation::Read, Operation::Create, Operation::Update, Operation::Delete][operation_index];
            let (before, after) = match operation {
                Operation::Delete => (Some(&tuple), None),
                Operation::Update => (Some(&tuple), Some(&tuple)),
                _ => (None, Some(&tuple)),
            };
            let parsed = schemas(&relation, "walflow.public.zoo").parse().unwrap();
            let ids = SchemaIds { key: Some(1), value: 2 };
            let (key, value) =
                encode_change(ids, &relation, operation, before, after, &source(), 5).unwrap();
            let key = read_all(parsed.key.as_ref().unwrap(), &key.unwrap()[5..]);
            proptest::prop_assert_eq!(key, Avro::Record(vec![("id".into(), Avro::Long(id))]));
            let Avro::Record(fields) = read_all(&parsed.value, &value[5..]) else {
                panic!("not a record")
            };
            let field = |name: &str| fields.iter().find(|(n, _)| n == name).unwrap().1.clone();
            proptest::prop_assert_eq!(field("op"), Avro::String(operation.code().into()));
            let row = field(if operation == Operation::Delete { "before" } else { "after" });
            let Avro::Union(1, row) = row else { panic!("{row:?}") };
            let Avro::Record(row) = *row else { panic!() };
            let column = |name: &str| match &row.iter().find(|(n, _)| n == name).unwrap().1 {
                Avro::Union(_, inner) => (**inner).clone(),
                other => other.clone(),
            };
            let epoch = chrono::NaiveDate::default();
            let days = (chrono::NaiveDate::from_ymd_opt(year, month, day).unwrap() - epoch).num_days();
            proptest::prop_assert_eq!(column("flag"), flag.map_or(Avro::Null, Avro::Boolean));
            proptest::prop_assert_eq!(column("small"), Avro::Int(i32::from(small)));
            match column("ratio") {
                Avro::Double(read) if ratio.is_nan() => proptest::prop_assert!(read.is_nan()),
                read => proptest::prop_assert_eq!(read, Avro::Double(ratio)),
            }
            proptest::prop_assert_eq!(column("price"), Avro::String(price.clone()));
            proptest::prop_assert_eq!(column("blob"), Avro::Bytes(blob.clone()));
            proptest::prop_assert_eq!(column("born"), Avro::Date(days as i32));
            proptest::prop_assert_eq!(
                column("seen"),
                Avro::LocalTimestampMicros(days * 86_400_000_000 + micros)
            );
            proptest::prop_assert_eq!(
                column("at"),
                Avro::TimestampMicros(days * 86_400_000_000 + micros - offset_minutes * 60_000_000)
            );
            proptest::prop_assert_eq!(
                column("first_name"),
                Avro::String(if toast { UNAVAILABLE_VALUE.to_owned() } else { note.clone() })
            );

            // process's reader reads the same event back, as a pipeline declaring some of
            // the columns (and one the table lacks) sees it.
            let declared = ["first_name", "small", "id", "born", "missing"];
            let reader = Reader::new(&parsed.value).unwrap();
            let (id_in_framing, mut datum) = confluent::split(&value).unwrap();
            proptest::prop_assert_eq!(id_in_framing, 2);
            let envelope = reader
                .read_envelope(
                    &DeclaredColumns {
                        count: declared.len(),
                        position_of: |name: &str| declared.iter().position(|d| *d == name),
                    },
                    &mut datum,
                )
                .unwrap();
            proptest::prop_assert!(datum.is_empty());
            proptest::prop_assert_eq!(envelope.op.as_str(), operation.code());
            proptest::prop_assert_eq!(envelope.commit_time_ms, Some(source().commit_time.unix_millis()));
            let image = if operation == Operation::Delete { &envelope.before } else { &envelope.after };
            let expected_note = if toast { UNAVAILABLE_VALUE.to_owned() } else { note.clone() };
            proptest::prop_assert_eq!(
                image.clone().unwrap(),
                vec![
                    Some(serde_json::json!(expected_note)),
                    Some(serde_json::json!(small)),
                    Some(serde_json::json!(id)),
                    Some(serde_json::json!(days)),
                    None,
                ]
            );
        }
    }
}
