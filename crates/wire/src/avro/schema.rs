//! The Avro schemas of a table's change events, per topic `<prefix>.<schema>.<table>` (also
//! the Avro namespace):
//! - key: record `Key` of the primary-key columns;
//! - value: record `Envelope` with `before` and `after` (optional records `Value` of every
//!   column, each column optional), `source` (record
//!   `io.debezium.connector.postgresql.Source`), `op`, `ts_ms` and `transaction`.
//!
//! A column's type is one of [`ColumnType`]; cdc maps Postgres's types onto them
//! (docs/events.md). An untouched TOASTed value is the string
//! [`UNAVAILABLE_VALUE`](crate::envelope::UNAVAILABLE_VALUE), so a `bytes` column's union
//! allows a string too.

use apache_avro::Schema;
use serde_json::{json, Value as Json};

/// How a column is typed in Avro.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ColumnType {
    Boolean,
    Int,
    Long,
    Float,
    Double,
    Bytes,
    /// Days since 1970-01-01 (`int`, logical type `date`).
    Date,
    /// Microseconds since 1970-01-01 in no time zone (`local-timestamp-micros`).
    Timestamp,
    /// Microseconds since 1970-01-01 UTC (`timestamp-micros`).
    TimestampTz,
    Uuid,
    String,
}

impl ColumnType {
    /// The Avro type, without null.
    pub fn schema(self) -> Json {
        match self {
            ColumnType::Boolean => json!("boolean"),
            ColumnType::Int => json!("int"),
            ColumnType::Long => json!("long"),
            ColumnType::Float => json!("float"),
            ColumnType::Double => json!("double"),
            ColumnType::Bytes => json!("bytes"),
            ColumnType::Date => json!({"type": "int", "logicalType": "date"}),
            ColumnType::Timestamp => {
                json!({"type": "long", "logicalType": "local-timestamp-micros"})
            }
            ColumnType::TimestampTz => json!({"type": "long", "logicalType": "timestamp-micros"}),
            ColumnType::Uuid => json!({"type": "string", "logicalType": "uuid"}),
            ColumnType::String => json!("string"),
        }
    }

    /// The type's name in messages: the logical type where there is one.
    pub fn name(self) -> &'static str {
        match self {
            ColumnType::Boolean => "boolean",
            ColumnType::Int => "int",
            ColumnType::Long => "long",
            ColumnType::Float => "float",
            ColumnType::Double => "double",
            ColumnType::Bytes => "bytes",
            ColumnType::Date => "date",
            ColumnType::Timestamp => "local-timestamp-micros",
            ColumnType::TimestampTz => "timestamp-micros",
            ColumnType::Uuid => "uuid",
            ColumnType::String => "string",
        }
    }

    /// The branches of a value column's union: null, the type, and for bytes the string
    /// that marks an untouched TOASTed value. (A text column's marker is a string anyway;
    /// fixed-width types are never TOASTed.)
    pub fn value_branches(self) -> Vec<Json> {
        let mut branches = vec![json!("null"), self.schema()];
        if self == ColumnType::Bytes {
            branches.push(json!("string"));
        }
        branches
    }
}

/// The union branch of a present value in a value column.
pub const PRESENT_BRANCH: i64 = 1;
/// The union branch of null in a value column.
pub const NULL_BRANCH: i64 = 0;

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
pub fn namespace(topic: &str) -> String {
    topic
        .split('.')
        .map(field_name)
        .collect::<Vec<_>>()
        .join(".")
}

/// One column of a table, as its schemas need it.
#[derive(Debug, Clone, Copy)]
pub struct SchemaColumn<'a> {
    pub name: &'a str,
    pub column_type: ColumnType,
    pub is_key: bool,
}

/// The key and value schemas of a table's events, as Avro JSON.
#[derive(Debug, Clone, PartialEq)]
pub struct TableSchemas {
    pub key: Option<Json>,
    pub value: Json,
}

/// Parsed schemas, ready to encode against.
#[derive(Debug, Clone)]
pub struct ParsedSchemas {
    pub key: Option<Schema>,
    pub value: Schema,
}

impl TableSchemas {
    /// The schemas of the table of `columns` whose events go to `topic`.
    pub fn of<'a>(
        columns: impl IntoIterator<Item = SchemaColumn<'a>>,
        topic: &str,
    ) -> TableSchemas {
        let namespace = namespace(topic);
        let mut key_fields = Vec::new();
        let mut value_fields = Vec::new();
        for column in columns {
            let name = field_name(column.name);
            if column.is_key {
                key_fields.push(json!({"name": name, "type": column.column_type.schema()}));
            }
            value_fields.push(
                json!({"name": name, "type": column.column_type.value_branches(), "default": null}),
            );
        }
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
                        {"name": "lsn", "type": ["null", "long"], "default": null},
                        {"name": "sequence", "type": ["null", "string"], "default": null}
                    ]}},
                {"name": "op", "type": "string"},
                {"name": "ts_ms", "type": ["null", "long"], "default": null},
                {"name": "transaction", "type": ["null", {
                    "type": "record",
                    "name": "block",
                    "namespace": "event",
                    "fields": [
                        {"name": "id", "type": "string"},
                        {"name": "total_order", "type": "long"},
                        {"name": "data_collection_order", "type": "long"}
                    ]}], "default": null}
            ]
        });
        TableSchemas { key, value }
    }

    pub fn parse(&self) -> Result<ParsedSchemas, apache_avro::Error> {
        Ok(ParsedSchemas {
            key: self.key.as_ref().map(Schema::parse).transpose()?,
            value: Schema::parse(&self.value)?,
        })
    }
}

/// What changed between two versions of a table's value schema, column by column, in the
/// words a user needs: `column age (int) added`, `column name removed`,
/// `column price changed from double to string`.
pub fn column_changes(old: &Json, new: &Json) -> Vec<String> {
    let (before, after) = (value_columns(old), value_columns(new));
    let mut changes = Vec::new();
    for (name, kind) in &after {
        match before.iter().find(|(old_name, _)| old_name == name) {
            None => changes.push(format!("column {name} ({kind}) added")),
            Some((_, old_kind)) if old_kind != kind => {
                changes.push(format!("column {name} changed from {old_kind} to {kind}"))
            }
            Some(_) => {}
        }
    }
    for (name, _) in &before {
        if !after.iter().any(|(new_name, _)| new_name == name) {
            changes.push(format!("column {name} removed"));
        }
    }
    changes
}

/// The columns of an envelope schema's `Value` record, with their types as
/// [`column_changes`] names them (branches other than null joined by `|`).
fn value_columns(schema: &Json) -> Vec<(String, String)> {
    // Envelope -> before -> ["null", Value record] -> fields.
    let value = schema["fields"]
        .as_array()
        .and_then(|fields| fields.iter().find(|field| field["name"] == "before"))
        .and_then(|before| before["type"].as_array())
        .and_then(|branches| branches.iter().find(|branch| branch.is_object()))
        .map(|record| record["fields"].clone())
        .unwrap_or(Json::Null);
    let type_name = |field: &Json| -> String {
        let Some(branches) = field["type"].as_array() else {
            return field["type"].to_string();
        };
        branches
            .iter()
            .filter(|branch| *branch != "null")
            .map(|branch| match branch {
                Json::String(name) => name.clone(),
                other => other["logicalType"]
                    .as_str()
                    .or(other["type"].as_str())
                    .unwrap_or("?")
                    .to_owned(),
            })
            .collect::<Vec<_>>()
            .join("|")
    };
    value
        .as_array()
        .map(|fields| {
            fields
                .iter()
                .map(|field| {
                    (
                        field["name"].as_str().unwrap_or("?").to_owned(),
                        type_name(field),
                    )
                })
                .collect()
        })
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn table(columns: &[(&'static str, ColumnType, bool)]) -> TableSchemas {
        TableSchemas::of(
            columns
                .iter()
                .map(|&(name, column_type, is_key)| SchemaColumn {
                    name,
                    column_type,
                    is_key,
                }),
            "walflow.public.people",
        )
    }

    #[test]
    fn names_are_adjusted_to_avro() {
        assert_eq!(field_name("first name"), "first_name");
        assert_eq!(field_name("1st"), "_1st");
        assert_eq!(field_name(""), "_");
        assert_eq!(
            namespace("walflow.public.my-table"),
            "walflow.public.my_table"
        );
    }

    #[test]
    fn a_table_without_a_key_has_no_key_schema_and_both_parse() {
        let keyless = table(&[("note", ColumnType::String, false)]);
        assert_eq!(keyless.key, None);
        keyless.parse().unwrap();
        let keyed = table(&[
            ("id", ColumnType::Long, true),
            ("blob", ColumnType::Bytes, false),
        ]);
        let parsed = keyed.parse().unwrap();
        assert!(parsed.key.is_some());
    }

    #[test]
    fn column_changes_name_each_column() {
        let v1 = table(&[
            ("id", ColumnType::Long, true),
            ("age", ColumnType::Int, false),
        ]);
        let v2 = table(&[
            ("id", ColumnType::Long, true),
            ("age", ColumnType::String, false),
            ("born", ColumnType::Date, false),
        ]);
        assert_eq!(
            column_changes(&v1.value, &v2.value),
            vec![
                "column age changed from int to string".to_owned(),
                "column born (date) added".to_owned(),
            ]
        );
        assert_eq!(
            column_changes(&v2.value, &v1.value),
            vec![
                "column age changed from string to int".to_owned(),
                "column born removed".to_owned(),
            ]
        );
    }
}
