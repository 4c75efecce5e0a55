//! walflow against a Postgres that takes TLS connections only (`scripts/services up secure`:
//! `hostssl` lines alone in pg_hba.conf, replication included, a certificate from a CA made
//! at its first start). Everything walflow opens to it, the replication connection too, is
//! encrypted and verified; and what cannot be trusted is refused with what did not match,
//! never a hang.

use std::path::PathBuf;
use std::time::Duration;

use serde_json::Value;

use crate::cdc::{kcat_all, wait_until_caught_up, walflow_refusal, Cdc};
use crate::harness::{run, stderr, stdout, unique_name, walflow, TestDatabase, TestTopics};

/// The secure Postgres's URL (`sslmode=verify-full` with the local CA), from
/// `eval "$(scripts/services env)"` after `scripts/services up secure`.
fn secure_postgres_url() -> String {
    std::env::var("WALFLOW_TEST_SECURE_POSTGRES_URL").unwrap_or_else(|_| {
        panic!(
            "WALFLOW_TEST_SECURE_POSTGRES_URL is not set: the TLS tests need the Postgres that \
             takes TLS only. Run `scripts/services up secure && eval \"$(scripts/services env)\"`, \
             or scripts/test, which does both"
        )
    })
}

/// The directory of the local CA and its certificates.
fn tls_dir() -> PathBuf {
    PathBuf::from(std::env::var("WALFLOW_TEST_TLS_DIR").expect("WALFLOW_TEST_TLS_DIR is set"))
}

#[tokio::test]
async fn ingest_cdc_and_doctor_work_over_verified_tls_and_the_replication_link_is_encrypted() {
    let database = TestDatabase::create_on(&secure_postgres_url()).await;
    assert!(
        database.url.contains("sslmode=verify-full"),
        "{}",
        database.url
    );
    let migrated = run(walflow(&database.url).arg("migrate"));
    assert_eq!(migrated.status.code(), Some(0), "{}", stderr(&migrated));
    let topics = TestTopics::new();
    let slot = unique_name("walflow_tls_slot");
    let client = database.client().await;
    let cdc = Cdc::started(&database, &slot, &topics, "public.users").await;

    let api = crate::harness::FakeApi::start(&[]);
    let ingested = run(walflow(&database.url).args([
        "ingest", "--json", "--source", &api.url, "--count", "40", "--seed", "tls",
    ]));
    assert_eq!(ingested.status.code(), Some(0), "{}", stderr(&ingested));

    // The slot's sender speaks TLS: Postgres says so of the connection cdc streams on.
    let (ssl, version): (bool, Option<String>) = {
        let row = client
            .query_one(
                "SELECT s.ssl, s.version FROM pg_replication_slots r \
                 JOIN pg_stat_ssl s ON s.pid = r.active_pid WHERE r.slot_name = $1",
                &[&slot],
            )
            .await
            .unwrap();
        (row.get(0), row.get(1))
    };
    assert!(ssl, "the replication connection is not encrypted");
    assert!(version.is_some_and(|version| version.starts_with("TLS")));

    wait_until_caught_up(&client, &slot).await;
    let (code, log) = cdc.stop();
    assert_eq!(code, Some(0), "{log}");
    let topic = format!("{}.public.users", topics.prefix);
    let created = kcat_all(&topic)
        .iter()
        .filter(|message| {
            serde_json::from_str::<Value>(message["payload"].as_str().unwrap_or("null"))
                .is_ok_and(|payload| payload["op"] == "c")
        })
        .count();
    let in_postgres: i64 = client
        .query_one("SELECT count(*) FROM users", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(created as i64, in_postgres, "one create event per user");
    assert_eq!(in_postgres, 40);

    let doctor = run(walflow(&database.url).args(["doctor", "--json"]));
    let report: Value = serde_json::from_str(&stdout(&doctor)).unwrap();
    let tls = report["services"][0]["checks"]
        .as_array()
        .unwrap()
        .iter()
        .find(|check| check["name"] == "tls")
        .unwrap_or_else(|| panic!("no tls check in {report}"))
        .clone();
    assert_eq!(tls["status"], "ok", "{tls}");
    let detail = tls["detail"].as_str().unwrap();
    assert!(
        detail.contains("encrypted (TLS") && detail.contains("certificate verified"),
        "{detail}"
    );
}

#[tokio::test]
async fn plain_text_an_unknown_ca_and_a_wrong_host_name_are_refused_with_what_did_not_match() {
    let database = TestDatabase::create_on(&secure_postgres_url()).await;
    let dir = tls_dir();
    let port = 5433;
    let cdc = |url: &str| {
        walflow_refusal(
            url,
            &[
                "cdc",
                "--slot",
                &unique_name("walflow_tls_refused"),
                "--tables",
                "public.t",
            ],
        )
    };

    // Plain text: the server refuses it, and walflow says how to ask for TLS.
    let plain = format!(
        "postgres://walflow:walflow@127.0.0.1:{port}/{}?sslmode=disable",
        database.name
    );
    let (code, log) = cdc(&plain);
    assert_eq!(code, Some(1), "{log}");
    assert!(
        log.contains("no encryption") && log.contains("add sslmode=verify-full"),
        "{log}"
    );
    assert!(log.contains("Postgres at 127.0.0.1:5433"), "{log}");

    // A CA that did not sign the server's certificate.
    let other_ca = format!(
        "postgres://walflow:walflow@localhost:{port}/{}?sslmode=verify-full&sslrootcert={}",
        database.name,
        dir.join("other-ca.crt").display()
    );
    let (code, log) = cdc(&other_ca);
    assert_eq!(code, Some(1), "{log}");
    assert!(
        log.contains("the server's certificate does not verify")
            && log.contains("other-ca.crt")
            && log.contains("CN=walflow test CA"),
        "{log}"
    );

    // The right CA, asked for a host name the certificate does not name.
    let wrong_host = format!(
        "host=wrong.example hostaddr=127.0.0.1 port={port} user=walflow password=walflow \
         dbname={} sslmode=verify-full sslrootcert={}",
        database.name,
        dir.join("ca.crt").display()
    );
    let (code, log) = walflow_refusal(&wrong_host, &["migrate"]);
    assert_eq!(code, Some(1), "{log}");
    assert!(
        log.contains("hostname mismatch")
            && log.contains("wrong.example")
            && log.contains("DNS:localhost"),
        "{log}"
    );
    // verify-ca checks the CA alone: the same host name passes.
    let (code, log) = walflow_refusal(
        &wrong_host.replace("verify-full", "verify-ca"),
        &["migrate"],
    );
    assert_eq!(code, Some(0), "{log}");

    // A client certificate logs in as its own role (pg_hba's `cert`), no password.
    let by_certificate = format!(
        "postgres://walflow_cert@localhost:{port}/{}?sslmode=verify-full&sslrootcert={}\
         &sslcert={}&sslkey={}",
        database.name,
        dir.join("ca.crt").display(),
        dir.join("client.crt").display(),
        dir.join("client.key").display()
    );
    let (code, log) = walflow_refusal(&by_certificate, &["migrate"]);
    assert_eq!(code, Some(0), "{log}");
    for (_, log) in [cdc(&plain), cdc(&other_ca)] {
        assert!(!log.contains("walflow:walflow@"), "a password in {log}");
    }
}

/// Kafka's SASL_SSL listener (`scripts/services up secure`) and what walflow's clients need
/// for it, as the variables a user would set; the password comes from a file
/// (`..._FILE`, the Docker secrets convention).
fn with_secure_kafka(command: &mut std::process::Command, password_file: &std::path::Path) {
    let brokers = std::env::var("WALFLOW_TEST_SECURE_KAFKA_BROKERS")
        .expect("WALFLOW_TEST_SECURE_KAFKA_BROKERS is set (scripts/services up secure)");
    command
        .env("WALFLOW_KAFKA_BROKERS", brokers)
        .env("WALFLOW_KAFKA_PROPERTY_SECURITY_PROTOCOL", "SASL_SSL")
        .env("WALFLOW_KAFKA_PROPERTY_SASL_MECHANISM", "SCRAM-SHA-512")
        .env("WALFLOW_KAFKA_PROPERTY_SASL_USERNAME", "walflow")
        .env("WALFLOW_KAFKA_PROPERTY_SASL_PASSWORD_FILE", password_file)
        .env(
            "WALFLOW_KAFKA_PROPERTY_SSL_CA_LOCATION",
            tls_dir().join("ca.crt"),
        );
}

fn kafka_password() -> String {
    std::env::var("WALFLOW_TEST_KAFKA_SASL_PASSWORD")
        .expect("WALFLOW_TEST_KAFKA_SASL_PASSWORD is set")
}

/// `count` messages of `topic` read through the SASL_SSL listener by kcat, an independent
/// client.
fn kcat_over_sasl_ssl(topic: &str, count: usize) -> Vec<Value> {
    let brokers = std::env::var("WALFLOW_TEST_SECURE_KAFKA_BROKERS").unwrap();
    // PLAIN: kcat's librdkafka (2.0) fails SCRAM against Kafka 4; walflow's passes.
    let settings = [
        "security.protocol=SASL_SSL".to_owned(),
        "sasl.mechanism=PLAIN".to_owned(),
        "sasl.username=walflow".to_owned(),
        format!("sasl.password={}", kafka_password()),
        format!("ssl.ca.location={}", tls_dir().join("ca.crt").display()),
    ];
    crate::cdc::kcat_messages_from(&brokers, &settings, topic, count)
}

#[tokio::test]
async fn cdc_and_doctor_reach_kafka_over_sasl_ssl_and_a_wrong_password_or_ca_is_named() {
    let database = TestDatabase::create().await;
    let client = database.client().await;
    client
        .batch_execute(
            "CREATE TABLE items (id int PRIMARY KEY, name text);
             INSERT INTO items VALUES (1, 'a'), (2, 'b'), (3, 'c');",
        )
        .await
        .unwrap();
    let topics = TestTopics::new();
    let directory = tempfile::tempdir().unwrap();
    let password_file = directory.path().join("kafka-password");
    std::fs::write(&password_file, format!("{}\n", kafka_password())).unwrap();
    let cdc_args = |slot: &str| -> Vec<String> {
        [
            "cdc",
            "--slot",
            slot,
            "--publication",
            "walflow_test",
            "--topic-prefix",
            &topics.prefix,
            "--tables",
            "public.items",
            "--status-interval-ms",
            "100",
        ]
        .iter()
        .map(|arg| (*arg).to_owned())
        .collect()
    };

    let log_path = directory.path().join("cdc.log");
    let mut command = walflow(&database.url);
    command.args(cdc_args(&unique_name("walflow_sasl_slot")));
    with_secure_kafka(&mut command, &password_file);
    let mut cdc = command
        .stdout(std::process::Stdio::null())
        .stderr(std::fs::File::create(&log_path).unwrap())
        .spawn()
        .unwrap();
    let topic = format!("{}.public.items", topics.prefix);
    // The snapshot's three rows, then two written while cdc streams.
    let snapshot = kcat_over_sasl_ssl(&topic, 3);
    client
        .batch_execute("INSERT INTO items VALUES (4, 'd'), (5, 'e')")
        .await
        .unwrap();
    let all = kcat_over_sasl_ssl(&topic, 5);
    std::process::Command::new("kill")
        .args(["-TERM", &cdc.id().to_string()])
        .status()
        .unwrap();
    let status = cdc.wait().unwrap();
    let log = std::fs::read_to_string(&log_path).unwrap();
    assert_eq!(status.code(), Some(0), "{log}");
    assert_eq!(snapshot.len(), 3);
    let ids: Vec<i64> = all
        .iter()
        .map(|message| {
            let key: Value = serde_json::from_str(message["key"].as_str().unwrap()).unwrap();
            key["id"].as_i64().unwrap()
        })
        .collect();
    assert_eq!(ids, [1, 2, 3, 4, 5]);

    let mut doctor = walflow(&database.url);
    doctor.args(["doctor", "--json"]);
    with_secure_kafka(&mut doctor, &password_file);
    let doctor = run(&mut doctor);
    let report: Value = serde_json::from_str(&stdout(&doctor)).unwrap();
    let kafka_checks = report["services"][1]["checks"].as_array().unwrap().clone();
    let named = |name: &str| {
        kafka_checks
            .iter()
            .find(|check| check["name"] == name)
            .unwrap_or_else(|| panic!("no kafka check {name} in {report}"))
            .clone()
    };
    assert_eq!(named("connect")["status"], "ok", "{report}");
    assert_eq!(named("security")["status"], "ok", "{report}");
    assert!(
        named("security")["detail"].as_str().unwrap().contains(
            "SASL_SSL: encrypted, the brokers' certificates verified, login SCRAM-SHA-512"
        ),
        "{report}"
    );
    assert!(
        !stdout(&doctor).contains(&kafka_password()),
        "the password in doctor's report"
    );

    // A wrong password, then a CA that did not sign the broker's certificate: cdc stops
    // with what Kafka said, instead of waiting for a Kafka that will never let it in.
    let wrong_password = directory.path().join("wrong-password");
    std::fs::write(&wrong_password, "not-the-password").unwrap();
    for (password, ca, expected) in [
        (
            &wrong_password,
            tls_dir().join("ca.crt"),
            "Authentication failed",
        ),
        (
            &password_file,
            tls_dir().join("other-ca.crt"),
            "certificate verify failed",
        ),
    ] {
        let log = tempfile::NamedTempFile::new().unwrap();
        let mut command = walflow(&database.url);
        command.args(cdc_args(&unique_name("walflow_sasl_refused")));
        with_secure_kafka(&mut command, password);
        command.env("WALFLOW_KAFKA_PROPERTY_SSL_CA_LOCATION", &ca);
        let status = crate::process::run_within(&mut command, log.path(), Duration::from_secs(90));
        let log = std::fs::read_to_string(log.path()).unwrap();
        assert_eq!(status.and_then(|status| status.code()), Some(1), "{log}");
        assert!(
            log.contains("refused walflow") && log.contains(expected),
            "expected `{expected}`: {log}"
        );
        assert!(!log.contains(&kafka_password()), "the password in {log}");
    }
}
