//! `walflow migrate` applies sql/schema/ once, in order, and refuses edited history.

use crate::harness::{run, stderr, stdout, walflow, TestDatabase};

#[tokio::test]
async fn migrate_creates_the_schema_once() {
    let database = TestDatabase::create().await;
    let first = run(walflow(&database.url).arg("migrate"));
    assert_eq!(first.status.code(), Some(0));
    assert!(
        stdout(&first).contains("2 applied, 0 already there"),
        "{}",
        stdout(&first)
    );

    let client = database.client().await;
    let tables: Vec<String> = client
        .query(
            "SELECT table_name::text FROM information_schema.tables \
             WHERE table_schema = 'public' ORDER BY 1",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|row| row.get(0))
        .collect();
    assert_eq!(
        tables,
        [
            "countries",
            "ingest_rejects",
            "users",
            "walflow_schema_migrations"
        ]
    );
    let replica_identity: i8 = client
        .query_one(
            "SELECT relreplident::\"char\" FROM pg_class WHERE relname = 'users'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(
        replica_identity as u8, b'f',
        "users has REPLICA IDENTITY FULL"
    );

    let second = run(walflow(&database.url).arg("migrate"));
    assert_eq!(second.status.code(), Some(0));
    assert!(
        stdout(&second).contains("0 applied, 2 already there"),
        "{}",
        stdout(&second)
    );
}

#[tokio::test]
async fn migrate_refuses_a_schema_file_changed_after_it_was_applied() {
    let database = TestDatabase::create().await;
    assert_eq!(
        run(walflow(&database.url).arg("migrate")).status.code(),
        Some(0)
    );
    let client = database.client().await;
    client
        .execute("UPDATE walflow_schema_migrations SET checksum = 'edited' WHERE file = '0001_users.sql'", &[])
        .await
        .unwrap();
    let output = run(walflow(&database.url).arg("migrate"));
    assert_eq!(output.status.code(), Some(1));
    assert!(
        stderr(&output).contains("sql/schema/0001_users.sql was changed"),
        "{}",
        stderr(&output)
    );
}

#[tokio::test]
async fn concurrent_migrations_apply_each_file_once() {
    let database = TestDatabase::create().await;
    let children: Vec<_> = (0..3)
        .map(|_| {
            walflow(&database.url)
                .arg("migrate")
                .spawn()
                .expect("spawn walflow migrate")
        })
        .collect();
    for child in children {
        let output = child.wait_with_output().unwrap();
        assert_eq!(output.status.code(), Some(0));
    }
    let client = database.client().await;
    let count: i64 = client
        .query_one("SELECT count(*) FROM walflow_schema_migrations", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(count, 2);
    let countries: i64 = client
        .query_one("SELECT count(*) FROM countries", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(countries, 21, "the seed rows went in once");
}
