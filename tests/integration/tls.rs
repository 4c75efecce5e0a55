//! walflow against a Postgres that takes TLS connections only (`scripts/services up secure`:
//! `hostssl` lines alone in pg_hba.conf, replication included, a certificate from a CA made
//! at its first start). Everything walflow opens to it, the replication connection too, is
//! encrypted and verified; and what cannot be trusted is refused with what did not match,
//! never a hang.

use std::path::PathBuf;
use std::time::Duration;

use serde_json::Value;

use crate::cdc::{kcat_all, wait_until_caught_up, Cdc};
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

/// Runs `walflow <args>` against `url`, expected to fail fast: its exit code and stderr.
fn refused(url: &str, args: &[&str]) -> (Option<i32>, String) {
    let log = tempfile::NamedTempFile::new().unwrap();
    let status =
        crate::process::run_within(walflow(url).args(args), log.path(), Duration::from_secs(60));
    (
        status.and_then(|status| status.code()),
        std::fs::read_to_string(log.path()).unwrap(),
    )
}

#[tokio::test]
async fn plain_text_an_unknown_ca_and_a_wrong_host_name_are_refused_with_what_did_not_match() {
    let database = TestDatabase::create_on(&secure_postgres_url()).await;
    let dir = tls_dir();
    let port = 5433;
    let cdc = |url: &str| {
        refused(
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
    let (code, log) = refused(&wrong_host, &["migrate"]);
    assert_eq!(code, Some(1), "{log}");
    assert!(
        log.contains("hostname mismatch")
            && log.contains("wrong.example")
            && log.contains("DNS:localhost"),
        "{log}"
    );
    // verify-ca checks the CA alone: the same host name passes.
    let (code, log) = refused(
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
    let (code, log) = refused(&by_certificate, &["migrate"]);
    assert_eq!(code, Some(0), "{log}");
    for (_, log) in [cdc(&plain), cdc(&other_ca)] {
        assert!(!log.contains("walflow:walflow@"), "a password in {log}");
    }
}
