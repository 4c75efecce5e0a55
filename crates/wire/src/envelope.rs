//! The Debezium change-event envelope as walflow writes it (docs/events.md): its field names,
//! operation codes, the marker of a value Postgres did not send, and the position fields.
//!
//! ```json
//! {"before": {...}, "after": {...}, "source": {..., "ts_ms": 0, "sequence": "[\"c\",\"l\"]"},
//!  "op": "u", "ts_ms": 0, "transaction": {"id": "xid:lsn", "total_order": 1, ...}}
//! ```

use serde_json::Value as Json;

/// The row before the change (updates with a full replica identity, deletes).
pub const BEFORE: &str = "before";
/// The row after the change (reads, inserts, updates).
pub const AFTER: &str = "after";
/// Where the change came from: server name, database, table, commit time, LSN.
pub const SOURCE: &str = "source";
/// The operation code, one of [`Operation::code`].
pub const OP: &str = "op";
/// When walflow wrote the event (the `source` block has the commit time).
pub const TS_MS: &str = "ts_ms";
/// The transaction block: id, total order, order within the table.
pub const TRANSACTION: &str = "transaction";
/// `source.sequence`: the commit LSN and the change's LSN, see [`sequence`].
pub const SEQUENCE: &str = "sequence";
/// `transaction.total_order`: the change's place among its transaction's events, from 1.
pub const TOTAL_ORDER: &str = "total_order";
/// `source.connector`.
pub const CONNECTOR: &str = "postgresql";

/// A value the change did not carry: a TOASTed column that an update left untouched
/// (Postgres does not send it). Debezium's marker, so its consumers recognise it.
pub const UNAVAILABLE_VALUE: &str = "__debezium_unavailable_value";

/// What happened to the row.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Operation {
    /// A row read by a snapshot.
    Read,
    Create,
    Update,
    Delete,
    Truncate,
}

impl Operation {
    pub const ALL: [Operation; 5] = [
        Operation::Read,
        Operation::Create,
        Operation::Update,
        Operation::Delete,
        Operation::Truncate,
    ];

    /// The envelope's `op`.
    pub fn code(self) -> &'static str {
        match self {
            Operation::Read => "r",
            Operation::Create => "c",
            Operation::Update => "u",
            Operation::Delete => "d",
            Operation::Truncate => "t",
        }
    }

    /// The operation of an `op` code; `None` for a code walflow does not know.
    pub fn from_code(code: &str) -> Option<Operation> {
        Operation::ALL
            .into_iter()
            .find(|operation| operation.code() == code)
    }
}

/// Debezium's `source.sequence`: a JSON array, as text, of two LSNs as decimal text, here
/// the transaction's commit LSN and the change's own LSN.
pub fn sequence(commit_lsn: u64, change_lsn: u64) -> String {
    format!("[\"{commit_lsn}\",\"{change_lsn}\"]")
}

/// Debezium's `transaction.id`: `txId:LSN`, here the commit LSN.
pub fn transaction_id(xid: u32, commit_lsn: u64) -> String {
    format!("{xid}:{commit_lsn}")
}

/// Where a streamed change sits: its transaction's commit LSN and its place among the
/// transaction's events. It grows along every Kafka partition (cdc sends transactions in
/// commit order, each change in its order) and is the same when cdc sends a change again
/// after a restart, so a consumer can drop what it has seen.
#[derive(
    Debug,
    Clone,
    Copy,
    Default,
    PartialEq,
    Eq,
    PartialOrd,
    Ord,
    serde::Serialize,
    serde::Deserialize,
)]
pub struct ChangePosition {
    pub commit_lsn: u64,
    pub total_order: u64,
}

impl ChangePosition {
    /// The position of an event whose `source.sequence` is `sequence` and whose
    /// `transaction.total_order` is `total_order`; `None` unless both say. Numbers may come
    /// as JSON numbers or as decimal text, the sequence as an array or as its JSON text.
    pub fn of(sequence: Option<&Json>, total_order: Option<&Json>) -> Option<ChangePosition> {
        fn number(value: &Json) -> Option<u64> {
            match value {
                Json::Number(number) => number.as_u64(),
                Json::String(text) => text.parse().ok(),
                _ => None,
            }
        }
        let parsed;
        let sequence = match sequence? {
            Json::String(text) => {
                parsed = serde_json::from_str::<Json>(text).ok()?;
                &parsed
            }
            other => other,
        };
        Some(ChangePosition {
            commit_lsn: number(sequence.as_array()?.first()?)?,
            total_order: number(total_order?)?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn operation_codes_read_back() {
        for operation in Operation::ALL {
            assert_eq!(Operation::from_code(operation.code()), Some(operation));
        }
        assert_eq!(Operation::from_code("x"), None);
    }

    #[test]
    fn the_position_cdc_writes_is_the_position_a_consumer_reads() {
        let written = sequence(4_000_000_000_000, 4_000_000_000_100);
        assert_eq!(
            ChangePosition::of(Some(&Json::String(written)), Some(&json!(3))),
            Some(ChangePosition {
                commit_lsn: 4_000_000_000_000,
                total_order: 3
            })
        );
        assert_eq!(
            ChangePosition::of(Some(&json!(["12", "13"])), Some(&json!("4"))),
            Some(ChangePosition {
                commit_lsn: 12,
                total_order: 4
            })
        );
        assert_eq!(ChangePosition::of(None, Some(&json!(1))), None);
        assert_eq!(
            ChangePosition::of(Some(&json!("not json")), Some(&json!(1))),
            None
        );
        assert_eq!(transaction_id(7, 12), "7:12");
    }
}
