//! `walflow ingest` against the real Postgres and a local fake API. The oracle is the API
//! itself, asked directly: the rows must be exactly the users it serves.

use std::collections::BTreeSet;
use std::process::Stdio;
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::harness::{run, stderr, stdout, walflow, FakeApi, FixedHttp, TestDatabase};

fn ingest(database: &TestDatabase, api: &FakeApi, flags: &[&str]) -> (std::process::Output, Value) {
    let output = run(walflow(&database.url)
        .args(["ingest", "--json", "--source", &api.url])
        .args(flags));
    let summary = stdout(&output)
        .lines()
        .last()
        .and_then(|line| serde_json::from_str(line).ok())
        .unwrap_or(Value::Null);
    (output, summary)
}

async fn count(database: &TestDatabase, sql: &str) -> i64 {
    database
        .client()
        .await
        .query_one(sql, &[])
        .await
        .unwrap()
        .get(0)
}

async fn ids_in_table(database: &TestDatabase) -> BTreeSet<String> {
    let client = database.client().await;
    client
        .query("SELECT id::text FROM users", &[])
        .await
        .unwrap()
        .iter()
        .map(|row| row.get(0))
        .collect()
}

/// The uuids of the first `count` users the API serves for `seed`, in pages of `per_page`.
async fn ids_from_api(
    api: &FakeApi,
    seed: &str,
    count: u32,
    per_page: u32,
) -> (BTreeSet<String>, Vec<Value>) {
    let mut records = Vec::new();
    let mut page = 1;
    while (records.len() as u32) < count {
        records.extend(api.page(per_page, page, seed).await);
        page += 1;
    }
    records.truncate(count as usize);
    let ids = records
        .iter()
        .filter_map(|record| record["login"]["uuid"].as_str().map(str::to_owned))
        .collect();
    (ids, records)
}

async fn table_fingerprint(database: &TestDatabase) -> String {
    let client = database.client().await;
    client
        .query_one(
            "SELECT coalesce(md5(string_agg(u::text, ',' ORDER BY id)), '') FROM users u",
            &[],
        )
        .await
        .unwrap()
        .get(0)
}

#[tokio::test]
async fn ingest_writes_exactly_the_users_the_api_serves() {
    let database = TestDatabase::migrated().await;
    let api = FakeApi::start(&[]);
    let (output, summary) = ingest(&database, &api, &["--count", "12345", "--seed", "exact"]);
    assert_eq!(output.status.code(), Some(0));
    assert_eq!(summary["fetched"], 12345);
    assert_eq!(summary["inserted"], 12345);
    assert_eq!(summary["rejected"], 0);

    let (expected, records) = ids_from_api(&api, "exact", 12345, 5000).await;
    assert_eq!(ids_in_table(&database).await, expected);

    // Field by field for one user: numeric postcodes become text, dates keep milliseconds.
    let sample = &records[4321];
    let client = database.client().await;
    let row = client
        .query_one(
            "SELECT email, postcode, to_char(dob AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.MS\"Z\"'), \
                    street_number, latitude::text FROM users WHERE id = $1::text::uuid",
            &[&sample["login"]["uuid"].as_str().unwrap()],
        )
        .await
        .unwrap();
    assert_eq!(row.get::<_, String>(0), sample["email"].as_str().unwrap());
    let postcode = match &sample["location"]["postcode"] {
        Value::String(text) => text.clone(),
        other => other.to_string(),
    };
    assert_eq!(row.get::<_, String>(1), postcode);
    assert_eq!(
        row.get::<_, String>(2),
        sample["dob"]["date"].as_str().unwrap()
    );
    assert_eq!(
        i64::from(row.get::<_, i32>(3)),
        sample["location"]["street"]["number"].as_i64().unwrap()
    );
    assert_eq!(
        row.get::<_, String>(4),
        sample["location"]["coordinates"]["latitude"]
            .as_str()
            .unwrap()
    );
}

#[tokio::test]
async fn the_same_seed_twice_changes_nothing() {
    let database = TestDatabase::migrated().await;
    let api = FakeApi::start(&[]);
    let (first, _) = ingest(
        &database,
        &api,
        &["--count", "3000", "--seed", "twice", "--batch-size", "1000"],
    );
    assert_eq!(first.status.code(), Some(0));
    let before = table_fingerprint(&database).await;
    let (second, summary) = ingest(
        &database,
        &api,
        &["--count", "3000", "--seed", "twice", "--batch-size", "1000"],
    );
    assert_eq!(second.status.code(), Some(0));
    assert_eq!(summary["inserted"], 0);
    assert_eq!(summary["updated"], 0);
    assert_eq!(summary["unchanged"], 3000);
    assert_eq!(
        table_fingerprint(&database).await,
        before,
        "not even updated_at moved"
    );
    assert_eq!(count(&database, "SELECT count(*) FROM users").await, 3000);
}

#[tokio::test]
async fn rate_limits_and_server_errors_are_retried_until_every_user_is_written() {
    let database = TestDatabase::migrated().await;
    let api = FakeApi::start(&[
        "--fail-429-rate",
        "0.25",
        "--retry-after-secs",
        "0",
        "--fail-500-rate",
        "0.2",
        "--malformed-json-rate",
        "0.1",
        "--fault-seed",
        "7",
    ]);
    let (output, summary) = ingest(
        &database,
        &api,
        &["--count", "4000", "--seed", "retry", "--batch-size", "250"],
    );
    assert_eq!(output.status.code(), Some(0));
    assert_eq!(summary["inserted"], 4000);
    assert!(summary["retries"].as_u64().unwrap() > 0, "{summary}");
    let log = stderr(&output);
    assert!(log.contains("retrying the API request"), "{log}");
    assert!(
        log.contains("HTTP 429"),
        "429s are visible in the log: {log}"
    );
    assert!(
        log.contains("HTTP 500"),
        "500s are visible in the log: {log}"
    );
    assert!(
        log.contains("malformed JSON"),
        "garbled bodies are visible in the log: {log}"
    );
    let (expected, _) = ids_from_api(&api, "retry", 4000, 250).await;
    assert_eq!(ids_in_table(&database).await, expected);
}

#[tokio::test]
async fn a_request_that_keeps_failing_ends_with_the_url_and_keeps_what_was_written() {
    let database = TestDatabase::migrated().await;
    let api = FakeApi::start(&["--fail-500-rate", "0.999"]);
    let (output, summary) = ingest(
        &database,
        &api,
        &["--count", "100", "--seed", "down", "--max-retries", "2"],
    );
    assert_eq!(output.status.code(), Some(1));
    let message = stderr(&output);
    assert!(message.contains("after 3 attempts"), "{message}");
    assert!(
        message.contains("seed=down"),
        "the failing request is named: {message}"
    );
    assert_eq!(summary["fetched"], 0);
}

#[tokio::test]
async fn malformed_records_land_in_ingest_rejects_with_reasons_and_the_rest_are_written() {
    let database = TestDatabase::migrated().await;
    let api = FakeApi::start(&["--bad-record-rate", "0.05"]);
    let (output, summary) = ingest(
        &database,
        &api,
        &["--count", "3000", "--seed", "bad", "--batch-size", "1000"],
    );
    assert_eq!(output.status.code(), Some(0));

    // Decide which records are bad straight from the API's JSON, independently of walflow's
    // validation code.
    let (_, records) = ids_from_api(&api, "bad", 3000, 1000).await;
    let is_bad = |record: &Value| {
        record["login"].get("uuid").is_none()
            || record["dob"]["date"] == "not-a-date"
            || record["location"]["street"]["number"].is_string()
            || !record["email"].is_string()
    };
    let bad: Vec<&Value> = records.iter().filter(|record| is_bad(record)).collect();
    let good: BTreeSet<String> = records
        .iter()
        .filter(|record| !is_bad(record))
        .map(|record| record["login"]["uuid"].as_str().unwrap().to_owned())
        .collect();
    assert!(
        bad.len() > 50,
        "the fault rate produced {} bad records",
        bad.len()
    );
    assert_eq!(summary["rejected"], bad.len());
    assert_eq!(ids_in_table(&database).await, good);

    let client = database.client().await;
    let rejects = client
        .query(
            "SELECT payload, reason FROM ingest_rejects ORDER BY id",
            &[],
        )
        .await
        .unwrap();
    assert_eq!(rejects.len(), bad.len());
    let stored: BTreeSet<String> = rejects
        .iter()
        .map(|row| row.get::<_, Value>(0).to_string())
        .collect();
    let expected: BTreeSet<String> = bad.iter().map(|record| record.to_string()).collect();
    assert_eq!(
        stored, expected,
        "the rejected payloads are stored as the API sent them"
    );
    for row in &rejects {
        let payload: Value = row.get(0);
        let reason: String = row.get(1);
        let field = if payload["login"].get("uuid").is_none() {
            "login.uuid: is missing"
        } else if payload["dob"]["date"] == "not-a-date" {
            "dob.date"
        } else if payload["location"]["street"]["number"].is_string() {
            "location.street.number: invalid type: string"
        } else {
            "email: invalid type: integer"
        };
        assert!(reason.starts_with(field), "reason {reason:?} for {payload}");
    }
}

#[tokio::test]
async fn churn_updates_and_deletes_and_counts_them() {
    let database = TestDatabase::migrated().await;
    let api = FakeApi::start(&[]);
    let (first, _) = ingest(&database, &api, &["--count", "2000", "--seed", "churn"]);
    assert_eq!(first.status.code(), Some(0));
    let (second, summary) = ingest(
        &database,
        &api,
        &["--count", "2000", "--seed", "churn", "--churn", "0.1"],
    );
    assert_eq!(second.status.code(), Some(0));
    // 200 users churned: 2 : 2 : 1 moves, new emails, deletions.
    assert_eq!(summary["updated"], 160, "{summary}");
    assert_eq!(summary["deleted"], 40, "{summary}");
    assert_eq!(
        count(&database, "SELECT count(*) FROM users").await,
        2000 - 40
    );
    assert_eq!(
        count(
            &database,
            "SELECT count(*) FROM users WHERE updated_at > ingested_at"
        )
        .await,
        160
    );
    assert_eq!(
        count(
            &database,
            "SELECT count(*) FROM users WHERE email LIKE '%@example.org'"
        )
        .await,
        80
    );
}

#[tokio::test]
async fn killed_mid_run_then_rerun_leaves_no_partial_batch_and_no_duplicate() {
    let database = TestDatabase::migrated().await;
    let api = FakeApi::start(&["--latency-ms", "250"]);
    let batch = 400;
    let mut child = walflow(&database.url)
        .args([
            "ingest",
            "--source",
            &api.url,
            "--count",
            "6000",
            "--seed",
            "kill",
            "--batch-size",
            "400",
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    let client = database.client().await;
    loop {
        let written: i64 = client
            .query_one("SELECT count(*) FROM users", &[])
            .await
            .unwrap()
            .get(0);
        if written >= 2 * batch {
            break;
        }
        assert!(Instant::now() < deadline, "ingest wrote nothing in 60 s");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();
    let after_kill: i64 = client
        .query_one("SELECT count(*) FROM users", &[])
        .await
        .unwrap()
        .get(0);
    assert!(after_kill < 6000, "killed before the end");
    assert_eq!(
        after_kill % batch,
        0,
        "whole batches only, got {after_kill} rows"
    );

    let (output, summary) = ingest(
        &database,
        &api,
        &["--count", "6000", "--seed", "kill", "--batch-size", "400"],
    );
    assert_eq!(output.status.code(), Some(0));
    assert_eq!(summary["inserted"].as_i64().unwrap(), 6000 - after_kill);
    let (expected, _) = ids_from_api(&api, "kill", 6000, 400).await;
    assert_eq!(ids_in_table(&database).await, expected);
}

#[tokio::test]
async fn sigint_stops_after_the_current_batch() {
    let database = TestDatabase::migrated().await;
    let api = FakeApi::start(&["--latency-ms", "300"]);
    let child = walflow(&database.url)
        .args([
            "ingest",
            "--json",
            "--source",
            &api.url,
            "--count",
            "5000",
            "--seed",
            "int",
            "--batch-size",
            "250",
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let client = database.client().await;
    let deadline = Instant::now() + Duration::from_secs(60);
    while client
        .query_one("SELECT count(*) FROM users", &[])
        .await
        .unwrap()
        .get::<_, i64>(0)
        == 0
    {
        assert!(Instant::now() < deadline, "ingest wrote nothing in 60 s");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let status = std::process::Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let output = child.wait_with_output().unwrap();
    assert_eq!(output.status.code(), Some(130));
    let summary: Value = serde_json::from_str(stdout(&output).lines().last().unwrap()).unwrap();
    assert_eq!(summary["interrupted"], true);
    let written: i64 = client
        .query_one("SELECT count(*) FROM users", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(written, summary["inserted"].as_i64().unwrap());
    assert_eq!(written % 250, 0);
    assert!(written < 5000);
}

/// An API key may sit in the source URL's query string or userinfo: it reaches neither
/// `--help`, the log, the summary, the error of a failing request nor `ingest_rejects`.
#[tokio::test]
async fn the_source_url_is_shown_without_its_credentials() {
    let database = TestDatabase::migrated().await;
    let secret_source = |api: &FakeApi| {
        let mut url = url::Url::parse(&api.url).unwrap();
        url.set_username("user").unwrap();
        url.set_password(Some("s3cret-password")).unwrap();
        url.set_query(Some("apikey=s3cret-key"));
        url.to_string()
    };
    let leaks = |output: &std::process::Output| {
        let all = format!("{}{}", stdout(output), stderr(output));
        assert!(!all.contains("s3cret"), "the credentials leaked: {all}");
        all
    };

    let help = run(walflow(&database.url)
        .env(
            "WALFLOW_INGEST_SOURCE",
            "http://127.0.0.1:1/api/?apikey=s3cret-key",
        )
        .args(["ingest", "--help"]));
    leaks(&help);

    let with_rejects = FakeApi::start(&["--bad-record-rate", "0.5"]);
    let output = run(walflow(&database.url).args([
        "--log-level",
        "info",
        "ingest",
        "--json",
        "--count",
        "20",
        "--seed",
        "keys",
        "--source",
        &secret_source(&with_rejects),
    ]));
    assert_eq!(output.status.code(), Some(0), "{}", stderr(&output));
    let all = leaks(&output);
    assert!(all.contains("apikey=***"), "the source is named: {all}");
    let sources: Vec<String> = database
        .client()
        .await
        .query("SELECT DISTINCT source FROM ingest_rejects", &[])
        .await
        .unwrap()
        .iter()
        .map(|row| row.get(0))
        .collect();
    assert_eq!(sources.len(), 1, "some records were rejected");
    assert!(!sources[0].contains("s3cret"), "{sources:?}");

    let failing = FakeApi::start(&["--fail-500-rate", "0.999"]);
    let output = run(walflow(&database.url).args([
        "ingest",
        "--json",
        "--count",
        "20",
        "--max-retries",
        "1",
        "--source",
        &secret_source(&failing),
    ]));
    assert_eq!(output.status.code(), Some(1));
    let all = leaks(&output);
    assert!(all.contains("after 2 attempts"), "{all}");

    let unreachable = run(walflow(&database.url).args([
        "ingest",
        "--count",
        "20",
        "--max-retries",
        "0",
        "--source",
        "http://user:s3cret-password@127.0.0.1:1/api/?apikey=s3cret-key",
    ]));
    assert_eq!(unreachable.status.code(), Some(1));
    leaks(&unreachable);
}

/// Postgres text and jsonb cannot hold U+0000: a record carrying one is rejected, by the
/// field, instead of failing its whole batch (and, on every re-run, the same batch again).
#[tokio::test]
async fn a_nul_character_in_a_field_rejects_that_record_and_the_rest_are_written() {
    let database = TestDatabase::migrated().await;
    let api = FakeApi::start(&[]);
    let mut records = api.page(3, 1, "nul").await;
    records[1]["location"]["city"] = Value::String("a\u{0}b".into());
    // A record rejected for another reason may carry a NUL too: its payload is still stored.
    records[2]["login"]["uuid"] = Value::String("not-a-uuid".into());
    records[2]["name"]["first"] = Value::String("nul\u{0}".into());
    let page = serde_json::json!({
        "results": records,
        "info": {"seed": "nul", "results": 3, "page": 1, "version": "1.4"},
    });
    let server = FixedHttp::serve(page.to_string().into_bytes(), true);
    let output = run(walflow(&database.url).args([
        "ingest",
        "--json",
        "--count",
        "3",
        "--seed",
        "nul",
        "--source",
        &server.url,
    ]));
    assert_eq!(output.status.code(), Some(0), "{}", stderr(&output));

    let good = records[0]["login"]["uuid"].as_str().unwrap().to_owned();
    assert_eq!(ids_in_table(&database).await, BTreeSet::from([good]));
    let rejects = database
        .client()
        .await
        .query(
            "SELECT payload, reason FROM ingest_rejects ORDER BY id",
            &[],
        )
        .await
        .unwrap();
    let reasons: Vec<String> = rejects.iter().map(|row| row.get(1)).collect();
    assert_eq!(reasons.len(), 2, "{reasons:?}");
    assert!(
        reasons[0].starts_with("location.city: contains a NUL character"),
        "{reasons:?}"
    );
    assert!(reasons[1].starts_with("login.uuid"), "{reasons:?}");
    let stored: Value = rejects[0].get(0);
    assert_eq!(
        stored["location"]["city"], "a\\u0000b",
        "the NUL is kept visibly"
    );
    assert_eq!(stored["login"]["uuid"], records[1]["login"]["uuid"]);
    let stored: Value = rejects[1].get(0);
    assert_eq!(stored["name"]["first"], "nul\\u0000");
}

/// A source that sends more than a page of users can take (a hostile or broken endpoint, or
/// a redirect to a large file) is refused by the body's size, whether it declares its length
/// or streams it, with the limit and the request named.
#[tokio::test]
async fn a_body_larger_than_a_page_is_refused_naming_the_limit() {
    let database = TestDatabase::migrated().await;
    let limit: usize = 5000 * 8 * 1024;
    for declared_length in [true, false] {
        let server = FixedHttp::serve(vec![b'x'; limit + 1], declared_length);
        let output = run(walflow(&database.url).args([
            "ingest",
            "--count",
            "10",
            "--max-retries",
            "0",
            "--source",
            &format!("{}?apikey=s3cret", server.url),
        ]));
        assert_eq!(output.status.code(), Some(1));
        let message = stderr(&output);
        assert!(
            message.contains(&format!("sent a body of more than {limit} bytes")),
            "declared length {declared_length}: {message}"
        );
        assert!(
            message.contains("apikey=***&results=10&page=1"),
            "{message}"
        );
    }
}
