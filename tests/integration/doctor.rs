//! `walflow doctor` against the real services, and against servers that are unfit.

use serde_json::Value;

use crate::harness::{run, services, stdout, walflow, ScratchPostgres, TestDatabase};

fn checks_of<'a>(report: &'a Value, service: &str) -> &'a Vec<Value> {
    report["services"]
        .as_array()
        .unwrap()
        .iter()
        .find(|entry| entry["service"] == service)
        .unwrap_or_else(|| panic!("no {service} in {report}"))["checks"]
        .as_array()
        .unwrap()
}

fn check<'a>(report: &'a Value, service: &str, name: &str) -> &'a Value {
    checks_of(report, service)
        .iter()
        .find(|check| check["name"] == name)
        .unwrap_or_else(|| panic!("no {service} check {name} in {report}"))
}

#[tokio::test]
async fn doctor_passes_against_the_local_services() {
    let database = TestDatabase::create().await;
    let output = run(walflow(&database.url).args(["doctor", "--json"]));
    assert_eq!(output.status.code(), Some(0));
    let report: Value = serde_json::from_str(&stdout(&output)).unwrap();
    assert_ne!(report["status"], "fail");
    for service in ["postgres", "kafka", "cassandra"] {
        for check in checks_of(&report, service) {
            assert_ne!(check["status"], "fail", "{service}: {check}");
        }
    }
    assert_eq!(check(&report, "postgres", "wal_level")["status"], "ok");
    assert_eq!(
        check(&report, "postgres", "replication privilege")["status"],
        "ok"
    );
    assert_eq!(check(&report, "kafka", "create topic")["status"], "ok");
    assert_eq!(
        check(&report, "cassandra", "create keyspace")["status"],
        "ok"
    );

    // Versions come from the servers themselves, cross-checked here by asking them directly.
    let client = database.client().await;
    let server_version: String = client
        .query_one("SHOW server_version", &[])
        .await
        .unwrap()
        .get(0);
    let postgres = &report["services"][0];
    assert_eq!(postgres["version"], server_version.as_str());
    let cassandra = crate::harness::cassandra_session(&services().cassandra_nodes).await;
    let (release,): (String,) = cassandra
        .query_unpaged("SELECT release_version FROM system.local", ())
        .await
        .unwrap()
        .into_rows_result()
        .unwrap()
        .single_row()
        .unwrap();
    assert_eq!(report["services"][2]["version"], release.as_str());
    assert!(report["services"][1]["version"]
        .as_str()
        .unwrap()
        .contains("metadata.version"));
}

#[tokio::test]
async fn doctor_exits_3_and_names_the_setting_when_wal_level_is_replica() {
    let scratch = ScratchPostgres::start(&["wal_level=replica"]);
    let output = run(walflow(&scratch.url).args(["doctor"]));
    assert_eq!(output.status.code(), Some(3));
    let table = stdout(&output);
    assert!(table.contains("wal_level is replica"), "{table}");
    assert!(
        table.contains("wal_level = logical"),
        "the fix names the setting: {table}"
    );
    assert!(
        table.contains("restart"),
        "the fix says a restart is needed: {table}"
    );

    let output = run(walflow(&scratch.url).args(["doctor", "--json"]));
    assert_eq!(output.status.code(), Some(3));
    let report: Value = serde_json::from_str(&stdout(&output)).unwrap();
    assert_eq!(report["status"], "fail");
    assert_eq!(check(&report, "postgres", "wal_level")["status"], "fail");
    // The other services are still checked, and still pass.
    assert_eq!(check(&report, "kafka", "create topic")["status"], "ok");
}

#[tokio::test]
async fn doctor_reports_an_unreachable_kafka_without_hiding_the_others() {
    let database = TestDatabase::create().await;
    let output = run(walflow(&database.url).args([
        "doctor",
        "--json",
        "--timeout-secs",
        "2",
        "--kafka-brokers",
        "127.0.0.1:1",
    ]));
    assert_eq!(output.status.code(), Some(3));
    let report: Value = serde_json::from_str(&stdout(&output)).unwrap();
    let connect = check(&report, "kafka", "connect");
    assert_eq!(connect["status"], "fail");
    assert!(connect["fix"]
        .as_str()
        .unwrap()
        .contains("WALFLOW_KAFKA_BROKERS"));
    assert_eq!(check(&report, "postgres", "wal_level")["status"], "ok");
    assert_eq!(check(&report, "cassandra", "connect")["status"], "ok");
}

#[tokio::test]
async fn doctor_fails_a_role_without_replication_privilege() {
    let database = TestDatabase::create().await;
    let client = database.client().await;
    let role = crate::harness::unique_name("walflow_norepl");
    client
        .batch_execute(&format!(
            "CREATE ROLE {role} LOGIN PASSWORD 'pw' NOREPLICATION"
        ))
        .await
        .unwrap();
    let url = {
        let mut url = url::Url::parse(&database.url).unwrap();
        url.set_username(&role).unwrap();
        url.set_password(Some("pw")).unwrap();
        url.to_string()
    };
    let output = run(walflow(&url).args(["doctor", "--json"]));
    client
        .batch_execute(&format!("DROP ROLE {role}"))
        .await
        .ok();
    assert_eq!(output.status.code(), Some(3));
    let report: Value = serde_json::from_str(&stdout(&output)).unwrap();
    let privilege = check(&report, "postgres", "replication privilege");
    assert_eq!(privilege["status"], "fail");
    assert!(privilege["fix"]
        .as_str()
        .unwrap()
        .contains(&format!("ALTER ROLE \"{role}\" WITH REPLICATION")));
}

#[tokio::test]
async fn doctor_checks_the_schema_registry_when_one_is_given() {
    let database = TestDatabase::create().await;
    let url = services().schema_registry_url;
    let output =
        run(walflow(&database.url).args(["doctor", "--json", "--schema-registry-url", &url]));
    assert_eq!(output.status.code(), Some(0), "{}", stdout(&output));
    let report: Value = serde_json::from_str(&stdout(&output)).unwrap();
    for name in ["connect", "compatibility", "register"] {
        assert_eq!(
            check(&report, "schema registry", name)["status"],
            "ok",
            "{report}"
        );
    }
    // The registry's own answer, read with another client.
    let config: Value = reqwest::get(format!("{url}/config"))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let level = config["compatibilityLevel"].as_str().unwrap();
    assert!(
        check(&report, "schema registry", "compatibility")["detail"]
            .as_str()
            .unwrap()
            .contains(level),
        "{report} vs {config}"
    );
    // The scratch subject is gone again.
    let subjects: Vec<String> = reqwest::get(format!("{url}/subjects"))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert!(
        !subjects
            .iter()
            .any(|subject| subject.starts_with("walflow_doctor")),
        "{subjects:?}"
    );

    // Nothing listens there: a failure with the fix, the other services still checked.
    let output = run(walflow(&database.url).args([
        "doctor",
        "--json",
        "--schema-registry-url",
        "http://127.0.0.1:1/apis/ccompat/v7",
    ]));
    assert_eq!(output.status.code(), Some(3));
    let report: Value = serde_json::from_str(&stdout(&output)).unwrap();
    let connect = check(&report, "schema registry", "connect");
    assert_eq!(connect["status"], "fail");
    assert!(
        connect["fix"]
            .as_str()
            .unwrap()
            .contains("WALFLOW_SCHEMA_REGISTRY_URL"),
        "{connect}"
    );
    assert_eq!(check(&report, "kafka", "create topic")["status"], "ok");
}

/// The registry's URL may carry credentials (its userinfo is the only way to authenticate);
/// `doctor` names the registry in its address, errors and fixes without them.
#[tokio::test]
async fn doctor_shows_the_schema_registry_without_its_credentials() {
    let database = TestDatabase::create().await;
    let mut reachable = url::Url::parse(&services().schema_registry_url).unwrap();
    reachable.set_username("user").unwrap();
    reachable.set_password(Some("s3cret")).unwrap();
    for registry in [
        "http://user:s3cret@127.0.0.1:1/apis/ccompat/v7",
        reachable.as_str(),
    ] {
        for format in [&["doctor", "--json"][..], &["doctor"]] {
            let output = run(walflow(&database.url)
                .env("WALFLOW_SCHEMA_REGISTRY_URL", registry)
                .args(format));
            let all = format!("{}{}", stdout(&output), crate::harness::stderr(&output));
            assert!(all.contains("schema registry"), "{all}");
            assert!(!all.contains("s3cret"), "the password leaked: {all}");
            assert!(all.contains("user:***@"), "the registry is named: {all}");
        }
    }
}
