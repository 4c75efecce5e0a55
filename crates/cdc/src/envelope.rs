//! Change events in the Debezium envelope: `before`, `after`, `source`, `op`, `ts_ms`, with
//! the primary key as the Kafka key. docs/events.md describes the format.

use std::collections::HashMap;

use base64::Engine;
use serde::ser::SerializeMap;
use serde::Serialize;
use walflow_pgoutput::{Column, Lsn, OldTuple, PgTimestamp, Relation, RelationColumn, TupleData};

use walflow_wire::envelope::{self as wire, UNAVAILABLE_VALUE};

pub use walflow_wire::envelope::Operation;

use crate::types::classify;

/// `source.version`: walflow and its version.
pub const VERSION: &str = concat!("walflow-", env!("CARGO_PKG_VERSION"));

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
    /// A streamed change's place in its transaction; `None` for snapshot rows.
    pub position: Option<EventPosition>,
}

/// Where a streamed change sits: its transaction's commit LSN and its place among the
/// transaction's events. `(commit_lsn, total_order)` grows along every Kafka partition (cdc
/// sends transactions in commit order, each change in its order) and is the same when cdc
/// sends a change again after a restart, so a consumer can drop what it has seen.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EventPosition {
    pub commit_lsn: Lsn,
    /// 1 for the transaction's first event, over all tables.
    pub total_order: u64,
    /// 1 for the transaction's first event of this table.
    pub data_collection_order: u64,
}

impl EventPosition {
    /// Debezium's `source.sequence`: a JSON array, as text, of two LSNs as decimal text,
    /// here the commit LSN and the change's own LSN.
    pub fn sequence(&self, lsn: Lsn) -> String {
        wire::sequence(self.commit_lsn.0, lsn.0)
    }

    /// Debezium's `transaction.id`: `txId:LSN`, here the commit LSN.
    pub fn transaction_id(&self, xid: u32) -> String {
        wire::transaction_id(xid, self.commit_lsn.0)
    }
}

/// One message for Kafka, its key and value already serialized (JSON text, or Avro in the
/// Confluent wire format). `value: None` is a tombstone.
#[derive(Debug, Clone, PartialEq)]
pub struct ChangeEvent {
    pub topic: String,
    pub key: Option<Vec<u8>>,
    pub value: Option<Vec<u8>>,
}

/// The table's topic: see [`walflow_wire::topic`] for how names Kafka refuses are mapped.
pub fn topic_for(prefix: &str, relation: &Relation) -> String {
    walflow_wire::topic::topic_name(prefix, &relation.namespace, &relation.name)
}

/// A row, serialized column by column straight from the decoded tuple: no JSON tree is
/// built. Unchanged TOASTed values carry the unavailable-value marker.
struct RowJson<'a> {
    columns: &'a [RelationColumn],
    tuple: &'a TupleData,
    keys_only: bool,
}

impl Serialize for RowJson<'_> {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut map = serializer.serialize_map(None)?;
        for (column, value) in self.columns.iter().zip(self.tuple.iter()) {
            if self.keys_only && !column.is_key {
                continue;
            }
            let name: &str = &column.name;
            match value {
                Column::Null => map.serialize_entry(name, &())?,
                Column::UnchangedToast => map.serialize_entry(name, UNAVAILABLE_VALUE)?,
                Column::Text(text) => {
                    let text = String::from_utf8_lossy(&text);
                    map.serialize_entry(name, &classify(column.type_oid, &text))?
                }
                Column::Binary(bytes) => map.serialize_entry(
                    name,
                    &base64::engine::general_purpose::STANDARD.encode(&bytes),
                )?,
            }
        }
        map.end()
    }
}

#[derive(Serialize)]
struct Envelope<'a> {
    before: Option<RowJson<'a>>,
    after: Option<RowJson<'a>>,
    source: SourceJson<'a>,
    op: &'static str,
    ts_ms: i64,
    transaction: Option<TransactionJson>,
}

/// Debezium's transaction block (`provide.transaction.metadata`).
#[derive(Serialize)]
struct TransactionJson {
    id: String,
    total_order: u64,
    data_collection_order: u64,
}

fn transaction_json(source: &Source<'_>) -> Option<TransactionJson> {
    source.position.map(|position| TransactionJson {
        id: position.transaction_id(source.xid),
        total_order: position.total_order,
        data_collection_order: position.data_collection_order,
    })
}

#[derive(Serialize)]
struct SourceJson<'a> {
    version: &'static str,
    connector: &'static str,
    name: &'a str,
    ts_ms: i64,
    snapshot: &'static str,
    db: &'a str,
    schema: &'a str,
    table: &'a str,
    #[serde(rename = "txId")]
    tx_id: u32,
    lsn: u64,
    sequence: Option<String>,
}

fn source_json<'a>(relation: &'a Relation, source: &'a Source<'a>) -> SourceJson<'a> {
    SourceJson {
        version: VERSION,
        connector: wire::CONNECTOR,
        name: source.name,
        ts_ms: source.commit_time.unix_millis(),
        snapshot: if source.snapshot { "true" } else { "false" },
        db: source.database,
        schema: &relation.namespace,
        table: &relation.name,
        tx_id: source.xid,
        lsn: source.lsn.0,
        sequence: source
            .position
            .map(|position| position.sequence(source.lsn)),
    }
}

fn to_json(value: &impl Serialize) -> String {
    // Serializing these types into a String cannot fail: every map key is a string.
    serde_json::to_string(value).unwrap_or_default()
}

pub fn old_tuple(old: &OldTuple) -> &TupleData {
    match old {
        OldTuple::Key(tuple) | OldTuple::Full(tuple) => tuple,
    }
}

/// One change to turn into an event, whatever the encoding: the table, what happened, the
/// row before and after (as the operation has them), and where it came from.
#[derive(Debug, Clone)]
pub struct Change<'a> {
    pub relation: &'a Relation,
    pub operation: Operation,
    pub before: Option<&'a TupleData>,
    pub after: Option<&'a TupleData>,
    pub source: Source<'a>,
    pub topic_prefix: &'a str,
    /// When cdc handled the change (the envelope's `ts_ms`), Unix milliseconds.
    pub ts_ms: i64,
}

/// The event of one change, in the Debezium envelope. A truncate has no row: no key, no
/// before or after.
pub fn row_event(change: &Change<'_>) -> ChangeEvent {
    fn row<'a>(relation: &'a Relation, tuple: &'a TupleData, keys_only: bool) -> RowJson<'a> {
        RowJson {
            columns: &relation.columns,
            tuple,
            keys_only,
        }
    }
    let relation = change.relation;
    let has_key = relation.columns.iter().any(|column| column.is_key);
    let key = change
        .after
        .or(change.before)
        .filter(|_| has_key)
        .map(|tuple| to_json(&row(relation, tuple, true)).into_bytes());
    let envelope = Envelope {
        before: change.before.map(|tuple| row(relation, tuple, false)),
        after: change.after.map(|tuple| row(relation, tuple, false)),
        source: source_json(relation, &change.source),
        op: change.operation.code(),
        ts_ms: change.ts_ms,
        transaction: transaction_json(&change.source),
    };
    ChangeEvent {
        topic: topic_for(change.topic_prefix, relation),
        key,
        value: Some(to_json(&envelope).into_bytes()),
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

#[cfg(test)]
mod tests {
    use bytes::Bytes;
    use bytestring::ByteString;
    use serde_json::{json, Value};
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

    fn parse(json: &Option<Vec<u8>>) -> Value {
        serde_json::from_slice(json.as_deref().unwrap()).unwrap()
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
            position: Some(EventPosition {
                commit_lsn: Lsn(180),
                total_order: 3,
                data_collection_order: 2,
            }),
        }
    }

    #[test]
    fn updates_carry_before_after_source_and_the_key() {
        let before = encode::tuple(&[text("1"), text("old@example.com"), Column::Null]);
        let after = encode::tuple(&[text("1"), text("new@example.com"), Column::UnchangedToast]);
        let event = row_event(&Change {
            relation: &relation(),
            operation: Operation::Update,
            before: Some(&before),
            after: Some(&after),
            source: source(),
            topic_prefix: "walflow",
            ts_ms: 5,
        });
        assert_eq!(event.topic, "walflow.public.users");
        assert_eq!(parse(&event.key), json!({"id": 1}));
        let value = parse(&event.value);
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
        assert_eq!(value["source"]["sequence"], r#"["180","100"]"#);
        assert_eq!(
            value["transaction"],
            json!({"id": "9:180", "total_order": 3, "data_collection_order": 2})
        );
    }

    #[test]
    fn snapshot_rows_have_no_sequence_and_no_transaction() {
        let after = encode::tuple(&[text("1"), Column::Null, Column::Null]);
        let snapshot = Source {
            snapshot: true,
            position: None,
            ..source()
        };
        let event = row_event(&Change {
            relation: &relation(),
            operation: Operation::Read,
            before: None,
            after: Some(&after),
            source: snapshot.clone(),
            topic_prefix: "walflow",
            ts_ms: 5,
        });
        let value = parse(&event.value);
        assert_eq!(value["source"]["sequence"], Value::Null);
        assert_eq!(value["transaction"], Value::Null);
    }

    #[test]
    fn deletes_are_followed_by_a_tombstone_for_their_key() {
        let before = encode::tuple(&[text("7"), Column::Null, Column::Null]);
        let event = row_event(&Change {
            relation: &relation(),
            operation: Operation::Delete,
            before: Some(&before),
            after: None,
            source: source(),
            topic_prefix: "walflow",
            ts_ms: 5,
        });
        assert_eq!(parse(&event.value)["after"], Value::Null);
        let tombstone = tombstone(&event).unwrap();
        assert_eq!(parse(&tombstone.key), json!({"id": 7}));
        assert_eq!(tombstone.value, None);
    }
}
