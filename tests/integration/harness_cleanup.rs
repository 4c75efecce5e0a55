//! The harness's promise: every test's database, topics and keyspace are gone after it.

use std::process::{Command, Stdio};
use std::time::Duration;

use crate::harness::{
    cassandra_session, connect, services, TestDatabase, TestKeyspace, TestTopics,
};

#[tokio::test]
async fn per_test_resources_are_removed_when_dropped() {
    let services = services();
    let admin = connect(&services.postgres_url).await;
    let nodes = services.cassandra_nodes.clone();
    let cassandra = cassandra_session(&nodes).await;

    let database = TestDatabase::create().await;
    let database_name = database.name.clone();
    let _open_connection = database.client().await; // dropped WITH (FORCE) all the same
    let topics = TestTopics::new();
    let topic = format!("{}.public.users", topics.prefix);
    let mut kcat = Command::new("kcat")
        .args(["-P", "-b", &services.kafka_brokers, "-t", &topic])
        .stdin(Stdio::piped())
        .spawn()
        .expect("kcat (scripts/services up installs it)");
    use std::io::Write;
    kcat.stdin.take().unwrap().write_all(b"hello\n").unwrap();
    assert!(kcat.wait().unwrap().success());
    let keyspace = TestKeyspace::create().await;
    let keyspace_name = keyspace.name.clone();

    let exists = |sql: &'static str, name: String| {
        let admin = &admin;
        async move {
            admin
                .query_one(sql, &[&name])
                .await
                .unwrap()
                .get::<_, i64>(0)
                == 1
        }
    };
    assert!(
        exists(
            "SELECT count(*) FROM pg_database WHERE datname = $1",
            database_name.clone()
        )
        .await
    );
    assert!(topic_exists(&services.kafka_brokers, &topic));
    assert!(keyspace_exists(&cassandra, &keyspace_name).await);

    drop(database);
    drop(topics);
    drop(keyspace);

    assert!(
        !exists(
            "SELECT count(*) FROM pg_database WHERE datname = $1",
            database_name
        )
        .await
    );
    assert!(!keyspace_exists(&cassandra, &keyspace_name).await);
    // Topic deletion completes asynchronously in the broker.
    let mut gone = false;
    for _ in 0..50 {
        if !topic_exists(&services.kafka_brokers, &topic) {
            gone = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(gone, "topic {topic} still exists");
}

/// Asks for every topic (asking for one by name could create it on a broker that
/// auto-creates topics).
fn topic_exists(brokers: &str, topic: &str) -> bool {
    let output = Command::new("kcat")
        .args(["-L", "-b", brokers, "-m", "10"])
        .output()
        .unwrap();
    assert!(output.status.success(), "kcat -L failed");
    String::from_utf8_lossy(&output.stdout).contains(&format!("topic \"{topic}\" with"))
}

async fn keyspace_exists(session: &scylla::client::session::Session, name: &str) -> bool {
    let rows = session
        .query_unpaged(
            "SELECT keyspace_name FROM system_schema.keyspaces WHERE keyspace_name = ?",
            (name,),
        )
        .await
        .unwrap()
        .into_rows_result()
        .unwrap();
    rows.rows_num() == 1
}
