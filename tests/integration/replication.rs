//! walflow's replication connection against the real Postgres: SCRAM authentication,
//! IDENTIFY_SYSTEM, a pgoutput slot with an exported snapshot, the change stream, and status
//! updates that move the slot's confirmed position.

use std::time::Duration;

use bytes::Bytes;
use walflow_cdc::replication::{ReplicationConfig, ReplicationConnection};
use walflow_pgoutput::{
    Column, LogicalDecoder, LogicalMessage, Lsn, PgTimestamp, ReplicationMessage,
    StandbyStatusUpdate,
};

use crate::harness::{unique_name, TestDatabase};

#[tokio::test]
async fn a_slot_streams_committed_changes_and_status_updates_confirm_them() {
    let database = TestDatabase::create().await;
    let client = database.client().await;
    client
        .batch_execute("CREATE TABLE accounts (id int PRIMARY KEY, owner text); CREATE PUBLICATION walflow_test FOR TABLE accounts")
        .await
        .unwrap();

    let config = ReplicationConfig::from_url(&database.url).unwrap();
    let mut connection = ReplicationConnection::connect(&config)
        .await
        .expect("SCRAM login in replication mode");
    let identity = connection.identify_system().await.unwrap();
    let current: String = client
        .query_one("SELECT pg_current_wal_lsn()::text", &[])
        .await
        .unwrap()
        .get(0);
    assert!(identity.current_wal_lsn <= current.parse::<Lsn>().unwrap());
    assert_eq!(identity.database.as_deref(), Some(database.name.as_str()));

    let slot_name = unique_name("walflow_slot");
    let slot = connection
        .create_logical_slot(&slot_name, true)
        .await
        .unwrap();
    assert!(slot.snapshot_name.is_some(), "an exported snapshot");
    client
        .batch_execute("INSERT INTO accounts VALUES (1, 'ada'), (2, 'grace')")
        .await
        .unwrap();

    let mut stream = connection
        .start_replication(&slot_name, Lsn(0), &["walflow_test"], 1)
        .await
        .unwrap();
    let mut decoder = LogicalDecoder::new();
    let mut inserted = Vec::new();
    let commit = loop {
        let message = tokio::time::timeout(Duration::from_secs(20), stream.next())
            .await
            .expect("a change within 20 s")
            .unwrap()
            .expect("the stream goes on");
        let ReplicationMessage::XLogData(data) = message else {
            continue;
        };
        match decoder.decode(data.data).unwrap() {
            LogicalMessage::Insert(insert) => inserted.push(insert.new.iter().collect::<Vec<_>>()),
            LogicalMessage::Commit(commit) => break commit,
            _ => {}
        }
    };
    let text = |value: &str| Column::Text(Bytes::copy_from_slice(value.as_bytes()));
    assert_eq!(
        inserted,
        [vec![text("1"), text("ada")], vec![text("2"), text("grace")]]
    );
    assert!(commit.commit_lsn >= slot.consistent_point);

    stream
        .send_status(StandbyStatusUpdate {
            written: commit.end_lsn,
            flushed: commit.end_lsn,
            applied: commit.end_lsn,
            client_time: PgTimestamp::from_unix_micros(0),
            reply_requested: false,
        })
        .await
        .unwrap();
    let mut confirmed = String::new();
    for _ in 0..100 {
        confirmed = client
            .query_one(
                "SELECT confirmed_flush_lsn::text FROM pg_replication_slots WHERE slot_name = $1",
                &[&slot_name],
            )
            .await
            .unwrap()
            .get(0);
        if confirmed.parse::<Lsn>().unwrap() == commit.end_lsn {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(
        confirmed.parse::<Lsn>().unwrap(),
        commit.end_lsn,
        "the slot confirmed what walflow reported"
    );
}

#[tokio::test]
async fn a_wrong_password_is_reported_by_the_server() {
    let database = TestDatabase::create().await;
    let mut url = url::Url::parse(&database.url).unwrap();
    url.set_password(Some("not-the-password")).unwrap();
    let config = ReplicationConfig::from_url(url.as_str()).unwrap();
    let error = ReplicationConnection::connect(&config)
        .await
        .err()
        .expect("refused");
    assert_eq!(error.code(), Some("28P01"), "{error}");
    assert!(
        error.to_string().contains("password authentication failed"),
        "{error}"
    );
}

#[tokio::test]
async fn starting_an_unknown_slot_names_it() {
    let database = TestDatabase::create().await;
    let config = ReplicationConfig::from_url(&database.url).unwrap();
    let connection = ReplicationConnection::connect(&config).await.unwrap();
    let error = connection
        .start_replication("no_such_slot", Lsn(0), &["p"], 1)
        .await
        .err()
        .expect("refused");
    assert!(error.to_string().contains("no_such_slot"), "{error}");
}
