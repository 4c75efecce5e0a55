//! The Airflow DAG, run for real by Airflow 3 (`scripts/airflow`, installed by scripts/test):
//! it imports cleanly, one `airflow dags test` run ingests users into Postgres and passes its
//! health check while cdc streams, and the health task fails, naming the hop, once cdc stops.

use std::process::Command;

use crate::cdc::Cdc;
use crate::harness::{
    items_pipeline, repo_root, run, stderr, unique_name, FakeApi, TestDatabase, TestTopics,
};

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
    let topics = TestTopics::new();
    let slot = unique_name("walflow_slot");
    let cdc = Cdc::started(&database, &slot, &topics, "public.users").await;
    // The health task's walflow lag reads this test's slot, a pipeline of its own and an
    // empty checkpoint directory.
    let directory = tempfile::tempdir().unwrap();
    let pipeline = items_pipeline(
        directory.path(),
        &format!("{}.public.items", topics.prefix),
        "unused",
        "price",
    );
    let checkpoints = directory.path().join("checkpoints");
    let with_environment = |command: &mut Command| {
        command
            .env("WALFLOW_BIN", env!("CARGO_BIN_EXE_walflow"))
            .env("WALFLOW_POSTGRES_URL", &database.url)
            .env("WALFLOW_KAFKA_BROKERS", &services.kafka_brokers)
            .env("WALFLOW_CASSANDRA_NODES", &services.cassandra_nodes)
            .env("WALFLOW_INGEST_SOURCE", &api.url)
            .env("WALFLOW_INGEST_COUNT", "321")
            .env("WALFLOW_SLOT", &slot)
            .env("WALFLOW_PIPELINES_DIR", pipeline.parent().unwrap())
            .env("WALFLOW_CHECKPOINT_DIR", &checkpoints);
    };
    let mut dag_test = scripts_airflow(&["dag-test", "walflow_ingest"]);
    with_environment(&mut dag_test);
    let output = run(&mut dag_test);
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

    // cdc stops: the health task fails with walflow lag's exit 3, naming the hop.
    let (code, log) = cdc.stop();
    assert_eq!(code, Some(0), "{log}");
    let mut health = scripts_airflow(&["task-test", "walflow_ingest", "check_pipeline_health"]);
    with_environment(&mut health);
    let output = run(&mut health);
    assert_eq!(output.status.code(), Some(3), "{}", stderr(&output));
    assert!(
        stderr(&output).contains(&format!(
            "LAG cdc: no walflow cdc is attached to slot {slot}"
        )),
        "{}",
        stderr(&output)
    );
}
