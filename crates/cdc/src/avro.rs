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
mod tests;
