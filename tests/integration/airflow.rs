//! The Airflow DAG, run for real by Airflow 3 (`scripts/airflow`, installed by scripts/test):
//! it imports cleanly, and one `airflow dags test` run ingests users into Postgres.

use std::process::Command;

use crate::harness::{repo_root, run, stderr, FakeApi, TestDatabase};

fn scripts_airflow(arguments: &[&str]) -> Command {
    let mut command = Command::new("bash");
    command
        .arg("scripts/airflow")
        .args(arguments)
        .current_dir(repo_root());
    command
}

#[test]
fn the_dags_import_without_errors() {
    let output = run(&mut scripts_airflow(&["dags-check"]));
    assert!(output.status.success(), "{}", stderr(&output));
    assert!(String::from_utf8_lossy(&output.stdout).contains("no import errors"));
}

#[tokio::test]
async fn airflow_dags_test_ingests_a_batch_then_checks_health() {
    let database = TestDatabase::migrated().await;
    let api = FakeApi::start(&[]);
    let services = crate::harness::services();
    let output = run(scripts_airflow(&["dag-test", "walflow_ingest"])
        .env("WALFLOW_BIN", env!("CARGO_BIN_EXE_walflow"))
        .env("WALFLOW_POSTGRES_URL", &database.url)
        .env("WALFLOW_KAFKA_BROKERS", &services.kafka_brokers)
        .env("WALFLOW_CASSANDRA_NODES", &services.cassandra_nodes)
        .env("WALFLOW_INGEST_SOURCE", &api.url)
        .env("WALFLOW_INGEST_COUNT", "321"));
    assert!(output.status.success(), "the DAG run failed");
    assert!(stderr(&output).contains("ran to success"));
    // The oracle is the database the DAG wrote to, not the DAG's own report.
    let client = database.client().await;
    let users: i64 = client
        .query_one("SELECT count(*) FROM users", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(users, 321);
}
