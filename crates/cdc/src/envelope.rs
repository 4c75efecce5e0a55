//! Change events in the Debezium envelope: `before`, `after`, `source`, `op`, `ts_ms`, with
//! the primary key as the Kafka key. docs/events.md describes the format.

use std::collections::HashMap;

use base64::Engine;
use serde_json::{json, Map, Value};
use walflow_pgoutput::{Column, Lsn, OldTuple, PgTimestamp, Relation, RelationColumn, TupleData};

use crate::types::{text_to_json, UNAVAILABLE_VALUE};

/// What Relation messages said about each table, by OID; a later Relation for the same
/// table (a column added, say) replaces the earlier one from that point of the stream on.
#[derive(Debug, Default)]
pub struct RelationCache {
    tables: HashMap<u32, Relation>,
}

impl RelationCache {
    pub fn update(&mut self, relation: Relation) {
        self.tables.insert(relation.oid, relation);
    }

    pub fn get(&self, oid: u32) -> Option<&Relation> {
        self.tables.get(&oid)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Operation {
    Read,
    Create,
    Update,
    Delete,
    Truncate,
}

impl Operation {
    pub fn code(self) -> &'static str {
        match self {
            Operation::Read => "r",
            Operation::Create => "c",
            Operation::Update => "u",
            Operation::Delete => "d",
            Operation::Truncate => "t",
        }
    }
}

/// Where a change came from: the `source` block.
#[derive(Debug, Clone)]
pub struct Source<'a> {
    /// The logical server name: the topic prefix.
    pub name: &'a str,
    pub database: &'a str,
    pub commit_time: PgTimestamp,
    pub xid: u32,
    pub lsn: Lsn,
    pub snapshot: bool,
}

/// One message for Kafka. `value: None` is a tombstone.
#[derive(Debug, Clone, PartialEq)]
pub struct ChangeEvent {
    pub topic: String,
    pub key: Option<Value>,
    pub value: Option<Value>,
}

pub fn topic_for(prefix: &str, relation: &Relation) -> String {
    format!("{prefix}.{}.{}", relation.namespace, relation.name)
}

/// A row as a JSON object; unchanged TOASTed values carry the unavailable-value marker.
pub fn row_json(columns: &[RelationColumn], tuple: &TupleData) -> Value {
    let mut row = Map::with_capacity(columns.len());
    for (column, value) in columns.iter().zip(tuple.iter()) {
        let json = match value {
            Column::Null => Value::Null,
            Column::UnchangedToast => Value::String(UNAVAILABLE_VALUE.to_owned()),
            Column::Text(text) => text_to_json(column.type_oid, &String::from_utf8_lossy(&text)),
            Column::Binary(bytes) => {
                Value::String(base64::engine::general_purpose::STANDARD.encode(&bytes))
            }
        };
        row.insert(column.name.to_string(), json);
    }
    Value::Object(row)
}

/// The key: the replica identity's key columns of `row`, or no key when the table has none.
pub fn key_json(columns: &[RelationColumn], row: &Value) -> Option<Value> {
    let keys: Map<String, Value> = columns
        .iter()
        .filter(|column| column.is_key)
        .map(|column| {
            (
                column.name.to_string(),
                row.get(&*column.name).cloned().unwrap_or(Value::Null),
            )
        })
        .collect();
    if keys.is_empty() {
        None
    } else {
        Some(Value::Object(keys))
    }
}

pub fn old_tuple(old: &OldTuple) -> &TupleData {
    match old {
        OldTuple::Key(tuple) | OldTuple::Full(tuple) => tuple,
    }
}

/// The event of one row change, in the Debezium envelope.
pub fn row_event(
    relation: &Relation,
    operation: Operation,
    before: Option<&TupleData>,
    after: Option<&TupleData>,
    source: &Source<'_>,
    topic_prefix: &str,
    now_ms: i64,
) -> ChangeEvent {
    let before = before.map(|tuple| row_json(&relation.columns, tuple));
    let after = after.map(|tuple| row_json(&relation.columns, tuple));
    let key = after
        .as_ref()
        .or(before.as_ref())
        .and_then(|row| key_json(&relation.columns, row));
    ChangeEvent {
        topic: topic_for(topic_prefix, relation),
        key,
        value: Some(json!({
            "before": before,
            "after": after,
            "source": source_json(relation, source),
            "op": operation.code(),
            "ts_ms": now_ms,
            "transaction": null,
        })),
    }
}

/// A truncate, which has no row: no key, no before or after.
pub fn truncate_event(
    relation: &Relation,
    source: &Source<'_>,
    topic_prefix: &str,
    now_ms: i64,
) -> ChangeEvent {
    ChangeEvent {
        topic: topic_for(topic_prefix, relation),
        key: None,
        value: Some(json!({
            "before": null,
            "after": null,
            "source": source_json(relation, source),
            "op": Operation::Truncate.code(),
            "ts_ms": now_ms,
            "transaction": null,
        })),
    }
}

/// The tombstone that follows a delete, so that compacted topics forget the key.
pub fn tombstone(delete: &ChangeEvent) -> Option<ChangeEvent> {
    delete.key.as_ref().map(|key| ChangeEvent {
        topic: delete.topic.clone(),
        key: Some(key.clone()),
        value: None,
    })
}

fn source_json(relation: &Relation, source: &Source<'_>) -> Value {
    json!({
        "version": concat!("walflow-", env!("CARGO_PKG_VERSION")),
        "connector": "postgresql",
        "name": source.name,
        "ts_ms": source.commit_time.unix_millis(),
        "snapshot": if source.snapshot { "true" } else { "false" },
        "db": source.database,
        "schema": &*relation.namespace,
        "table": &*relation.name,
        "txId": source.xid,
        "lsn": source.lsn.0,
    })
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;
    use bytestring::ByteString;
    use walflow_pgoutput::{encode, ReplicaIdentity};

    use super::*;

    fn relation() -> Relation {
        let column = |name: &str, is_key: bool, type_oid: u32| RelationColumn {
            is_key,
            name: ByteString::from(name),
            type_oid,
            type_modifier: -1,
        };
        Relation {
            xid: None,
            oid: 16384,
            namespace: ByteString::from("public"),
            name: ByteString::from("users"),
            replica_identity: ReplicaIdentity::Full,
            columns: vec![
                column("id", true, 23),
                column("email", false, 25),
                column("bio", false, 25),
            ],
        }
    }

    fn text(value: &str) -> Column {
        Column::Text(Bytes::copy_from_slice(value.as_bytes()))
    }

    fn source() -> Source<'static> {
        Source {
            name: "walflow",
            database: "shop",
            commit_time: PgTimestamp(0),
            xid: 9,
            lsn: Lsn(100),
            snapshot: false,
        }
    }

    #[test]
    fn updates_carry_before_after_source_and_the_key() {
        let before = encode::tuple(&[text("1"), text("old@example.com"), Column::Null]);
        let after = encode::tuple(&[text("1"), text("new@example.com"), Column::UnchangedToast]);
        let event = row_event(
            &relation(),
            Operation::Update,
            Some(&before),
            Some(&after),
            &source(),
            "walflow",
            5,
        );
        assert_eq!(event.topic, "walflow.public.users");
        assert_eq!(event.key, Some(json!({"id": 1})));
        let value = event.value.unwrap();
        assert_eq!(value["op"], "u");
        assert_eq!(
            value["before"],
            json!({"id": 1, "email": "old@example.com", "bio": null})
        );
        assert_eq!(value["after"]["email"], "new@example.com");
        assert_eq!(
            value["after"]["bio"], UNAVAILABLE_VALUE,
            "unchanged TOAST is marked, not null"
        );
        assert_eq!(value["source"]["connector"], "postgresql");
        assert_eq!(value["source"]["table"], "users");
        assert_eq!(value["source"]["txId"], 9);
        assert_eq!(value["source"]["ts_ms"], 946_684_800_000i64);
    }

    #[test]
    fn deletes_are_followed_by_a_tombstone_for_their_key() {
        let before = encode::tuple(&[text("7"), Column::Null, Column::Null]);
        let event = row_event(
            &relation(),
            Operation::Delete,
            Some(&before),
            None,
            &source(),
            "walflow",
            5,
        );
        assert_eq!(event.value.as_ref().unwrap()["after"], Value::Null);
        let tombstone = tombstone(&event).unwrap();
        assert_eq!(tombstone.key, Some(json!({"id": 7})));
        assert_eq!(tombstone.value, None);
    }
}
