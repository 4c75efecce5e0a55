//! walflow's pgoutput decoder against the bytes Postgres itself produces: changes made with
//! SQL are read back through `pg_logical_slot_get_binary_changes` (the same pgoutput output
//! a replication connection carries) and must decode into exactly those changes.

use bytes::Bytes;
use walflow_pgoutput::{Column, LogicalDecoder, LogicalMessage, OldTuple, ReplicaIdentity};

use crate::harness::TestDatabase;

fn text(value: &str) -> Column {
    Column::Text(Bytes::copy_from_slice(value.as_bytes()))
}

async fn decoded_changes(
    database: &TestDatabase,
    slot: &str,
    options: &str,
    session_setup: &str,
) -> Vec<LogicalMessage> {
    let client = database.client().await;
    client.batch_execute(session_setup).await.unwrap();
    let rows = client
        .query(
            &format!(
                "SELECT data FROM pg_logical_slot_get_binary_changes('{slot}', NULL, NULL, \
                 'publication_names', 'walflow_test', {options})"
            ),
            &[],
        )
        .await
        .unwrap();
    let mut decoder = LogicalDecoder::new();
    rows.iter()
        .map(|row| {
            let data: Vec<u8> = row.get(0);
            decoder
                .decode(Bytes::from(data))
                .unwrap_or_else(|error| panic!("{error}"))
        })
        .collect()
}

/// On its own: a slot cannot be created in a transaction that has written (and a
/// multi-statement batch is one transaction).
/// Slot names are global to the server: each test has its own.
async fn create_slot(client: &tokio_postgres::Client) -> String {
    let slot = crate::harness::unique_name("walflow_slot");
    client
        .batch_execute(&format!(
            "SELECT pg_create_logical_replication_slot('{slot}', 'pgoutput')"
        ))
        .await
        .unwrap();
    slot
}

#[tokio::test]
async fn postgres_pgoutput_decodes_into_the_changes_made() {
    let database = TestDatabase::create().await;
    let client = database.client().await;
    client
        .batch_execute(
            "CREATE TABLE items (id int PRIMARY KEY, name text, note text, price numeric, tags text[]);
             CREATE TABLE full_items (id int PRIMARY KEY, name text);
             ALTER TABLE full_items REPLICA IDENTITY FULL;
             CREATE PUBLICATION walflow_test FOR TABLE items, full_items;",
        )
        .await
        .unwrap();
    let slot = create_slot(&client).await;
    // One transaction each. `note` is large and incompressible enough to be stored out of
    // line (TOASTed).
    for statement in [
        "INSERT INTO items VALUES (1, 'first', (SELECT string_agg(md5(i::text), '') FROM generate_series(1, 5000) i), 1.50, '{a,b}')",
        "UPDATE items SET name = 'renamed' WHERE id = 1",
        "DELETE FROM items WHERE id = 1",
        "INSERT INTO full_items VALUES (7, 'x')",
        "UPDATE full_items SET name = 'y' WHERE id = 7",
        "DELETE FROM full_items WHERE id = 7",
        "TRUNCATE items",
    ] {
        client.batch_execute(statement).await.unwrap();
    }

    let messages = decoded_changes(&database, &slot, "'proto_version', '1'", "SELECT 1").await;
    let tags: String = messages
        .iter()
        .map(|message| message.tag() as char)
        .collect();
    // TRUNCATE invalidates the relation's cache entry, so Postgres sends its Relation again.
    assert_eq!(tags, "BRICBUCBDCBRICBUCBDCBRTC");

    let LogicalMessage::Relation(items) = &messages[1] else {
        panic!("expected a Relation: {:?}", messages[1])
    };
    assert_eq!(&*items.name, "items");
    assert_eq!(&*items.namespace, "public");
    assert_eq!(items.replica_identity, ReplicaIdentity::Default);
    let columns: Vec<(&str, bool)> = items
        .columns
        .iter()
        .map(|column| (&*column.name, column.is_key))
        .collect();
    assert_eq!(
        columns,
        [
            ("id", true),
            ("name", false),
            ("note", false),
            ("price", false),
            ("tags", false)
        ]
    );
    assert_eq!(items.columns[0].type_oid, 23, "int4");

    let LogicalMessage::Insert(insert) = &messages[2] else {
        panic!("expected an Insert")
    };
    let values: Vec<Column> = insert.new.iter().collect();
    assert_eq!(values[0], text("1"));
    assert_eq!(values[1], text("first"));
    assert!(matches!(&values[2], Column::Text(note) if note.len() == 160_000));
    assert_eq!(values[3], text("1.50"));
    assert_eq!(values[4], text("{a,b}"));

    let LogicalMessage::Update(update) = &messages[5] else {
        panic!("expected an Update")
    };
    assert_eq!(
        update.old, None,
        "the key did not change: no old tuple under REPLICA IDENTITY DEFAULT"
    );
    let values: Vec<Column> = update.new.iter().collect();
    assert_eq!(values[1], text("renamed"));
    assert_eq!(
        values[2],
        Column::UnchangedToast,
        "the untouched TOASTed note is marked, not null"
    );

    let LogicalMessage::Delete(delete) = &messages[8] else {
        panic!("expected a Delete")
    };
    let OldTuple::Key(key) = &delete.old else {
        panic!("expected the old key")
    };
    assert_eq!(
        key.iter().collect::<Vec<_>>(),
        [
            text("1"),
            Column::Null,
            Column::Null,
            Column::Null,
            Column::Null
        ]
    );

    let LogicalMessage::Update(full_update) = &messages[15] else {
        panic!("expected an Update")
    };
    let Some(OldTuple::Full(old)) = &full_update.old else {
        panic!("expected the whole old row")
    };
    assert_eq!(old.iter().collect::<Vec<_>>(), [text("7"), text("x")]);
    assert_eq!(
        full_update.new.iter().collect::<Vec<_>>(),
        [text("7"), text("y")]
    );

    let LogicalMessage::Truncate(truncate) = &messages[22] else {
        panic!("expected a Truncate")
    };
    assert_eq!(truncate.relation_oids, [items.oid]);
}

#[tokio::test]
async fn large_transactions_stream_under_protocol_2() {
    let database = TestDatabase::create().await;
    let client = database.client().await;
    client
        .batch_execute(
            "CREATE TABLE events (id int PRIMARY KEY, payload text);
             CREATE PUBLICATION walflow_test FOR TABLE events;",
        )
        .await
        .unwrap();
    let slot = create_slot(&client).await;
    client
        .batch_execute("INSERT INTO events SELECT i, md5(i::text) FROM generate_series(1, 5000) i")
        .await
        .unwrap();
    // A decoding memory of 64 kB makes Postgres stream the 5000-row transaction in pieces.
    let messages = decoded_changes(
        &database,
        &slot,
        "'proto_version', '2', 'streaming', 'on'",
        "SET logical_decoding_work_mem = '64kB'",
    )
    .await;
    let starts = messages
        .iter()
        .filter(|message| matches!(message, LogicalMessage::StreamStart(_)))
        .count();
    let inserts: Vec<_> = messages
        .iter()
        .filter_map(|message| match message {
            LogicalMessage::Insert(insert) => Some(insert),
            _ => None,
        })
        .collect();
    assert!(starts >= 1, "the transaction was streamed");
    assert_eq!(inserts.len(), 5000);
    assert!(
        inserts.iter().all(|insert| insert.xid.is_some()),
        "streamed changes carry their xid"
    );
    let Some(LogicalMessage::StreamCommit(commit)) = messages.last() else {
        panic!("ends with Stream Commit")
    };
    assert_eq!(Some(commit.xid), inserts[0].xid);
}
