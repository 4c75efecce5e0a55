//! Which columns make up a table's Kafka key.
//!
//! Debezium keys every event of a row by its primary key, so that all versions of one row
//! share a key (and with it a partition and a compaction slot). pgoutput's Relation message
//! flags the columns of the replica identity, which is the primary key under `REPLICA
//! IDENTITY DEFAULT` and the chosen index under `USING INDEX`; but under `REPLICA IDENTITY
//! FULL` it flags every column ("all columns are sent as part of key"), and under `NOTHING`
//! none. For those two the key is taken from the catalog's primary key instead, exactly as
//! the snapshot does, so streamed and snapshot events of one row carry the same key.

use tokio_postgres::Client;
use walflow_pgoutput::{Relation, ReplicaIdentity};

use crate::publication::SetupError;

/// Replaces the key flags of a FULL or NOTHING relation with its primary key's columns (none
/// when it has no primary key). DEFAULT and USING INDEX relations keep pgoutput's flags.
pub async fn resolve_key_columns(
    client: &Client,
    relation: &mut Relation,
) -> Result<(), SetupError> {
    if !matches!(
        relation.replica_identity,
        ReplicaIdentity::Full | ReplicaIdentity::Nothing
    ) {
        return Ok(());
    }
    let rows = client
        .query(
            "SELECT a.attname::text
               FROM pg_index i
               JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = ANY (i.indkey)
              WHERE i.indrelid = $1 AND i.indisprimary",
            &[&relation.oid],
        )
        .await
        .map_err(|source| SetupError::Postgres {
            context: format!(
                "cannot read the primary key of {}.{}",
                relation.namespace, relation.name
            ),
            source,
        })?;
    let primary_key: Vec<String> = rows.iter().map(|row| row.get(0)).collect();
    mark_key_columns(relation, &primary_key);
    Ok(())
}

/// Flags exactly the columns named in `key` as key columns.
pub fn mark_key_columns(relation: &mut Relation, key: &[String]) {
    for column in &mut relation.columns {
        column.is_key = key.iter().any(|name| name.as_str() == &*column.name);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use walflow_pgoutput::RelationColumn;

    #[test]
    fn only_the_named_columns_stay_key_columns() {
        let column = |name: &str| RelationColumn {
            is_key: true,
            name: name.into(),
            type_oid: 23,
            type_modifier: -1,
        };
        let mut relation = Relation {
            xid: None,
            oid: 1,
            namespace: "public".into(),
            name: "users".into(),
            replica_identity: ReplicaIdentity::Full,
            columns: vec![column("id"), column("email"), column("updated_at")],
        };
        mark_key_columns(&mut relation, &["id".to_owned()]);
        let keys: Vec<bool> = relation
            .columns
            .iter()
            .map(|column| column.is_key)
            .collect();
        assert_eq!(keys, [true, false, false]);
    }
}
