//! `walflow lag` against the real services: the slot's bytes grow while cdc is stopped and
//! fall back once it catches up; Kafka lag equals the events a pipeline has not processed.

use std::path::Path;
use std::process::Output;
use std::time::{Duration, Instant};

use serde_json::Value;
use walflow_pgoutput::Lsn;

use crate::cdc::{wait_for_active_slot, Cdc};
use crate::harness::{
    items_pipeline, kcat_produce, run, services, stderr, stdout, unique_name, walflow,
    TestDatabase, TestKeyspace, TestTopics,
};

fn lag(database_url: &str, pipeline: &Path, args: &[&str]) -> Output {
    run(walflow(database_url).arg("lag").args(args).arg(pipeline))
}

fn lag_json(database_url: &str, pipeline: &Path, args: &[&str]) -> Value {
    let output = lag(database_url, pipeline, &[&["--json"], args].concat());
    assert!(output.status.success(), "{}", stderr(&output));
    serde_json::from_str(&stdout(&output)).unwrap()
}

#[tokio::test]
async fn slot_lag_grows_while_cdc_is_stopped_breaches_the_threshold_and_falls_after() {
    let database = TestDatabase::migrated().await;
    let topics = TestTopics::new();
    let directory = tempfile::tempdir().unwrap();
    let pipeline = items_pipeline(directory.path(), "unused", "unused", "price");
    let slot = unique_name("walflow_slot");
    let cdc = Cdc::start_with(&database, &slot, &topics, "public.users", &[]);
    wait_for_active_slot(&database, &slot).await;
    cdc.stop();

    // About 10 MB of WAL that nobody confirms (rows under the TOAST threshold, so nothing is
    // compressed away).
    database
        .client()
        .await
        .batch_execute(
            "INSERT INTO users (id, first_name, last_name, email, username, picture_large)
             SELECT gen_random_uuid(), 'Ada', 'Lovelace', 'ada@example.com', 'ada',
                    (SELECT string_agg(md5(g::text), '') FROM generate_series(1, 36) g)
               FROM generate_series(1, 8000)",
        )
        .await
        .unwrap();
    let written_to: String = database
        .client()
        .await
        .query_one("SELECT pg_current_wal_lsn()::text", &[])
        .await
        .unwrap()
        .get(0);
    let written_to: Lsn = written_to.parse().unwrap();
    let behind = lag_json(&database.url, &pipeline, &["--slot", &slot]);
    let slot_report = &behind["report"]["slot"];
    let lag_bytes = slot_report["lag_bytes"].as_i64().unwrap();
    assert!(lag_bytes > 4 << 20, "{behind}");
    assert_eq!(slot_report["active"], false, "{behind}");

    assert_eq!(
        slot_report["cdc_lag_ms"],
        Value::Null,
        "cdc is not attached"
    );

    let breached = lag(
        &database.url,
        &pipeline,
        &[
            "--slot",
            &slot,
            "--max-lag-bytes",
            "1MB",
            "--max-lag-seconds",
            "60",
        ],
    );
    assert_eq!(breached.status.code(), Some(3));
    let message = stderr(&breached);
    assert!(message.contains("LAG postgres slot"), "{message}");
    assert!(
        message.contains("LAG cdc: no walflow cdc is attached"),
        "{message}"
    );
    assert!(message.contains("INACTIVE and retains"), "{message}");
    assert!(stdout(&breached).contains(&slot), "{}", stdout(&breached));

    // cdc catches up: the slot confirms everything written above and cdc's lag is zero.
    // (The slot's byte lag itself never stays at zero here: the other tests write WAL too.)
    let restarted = Instant::now();
    let _cdc = Cdc::start_with(&database, &slot, &topics, "public.users", &[]);
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let now = lag_json(&database.url, &pipeline, &["--slot", &slot]);
        let slot_now = &now["report"]["slot"];
        let confirmed: Lsn = slot_now["confirmed_flush_lsn"]
            .as_str()
            .unwrap()
            .parse()
            .unwrap();
        if confirmed >= written_to && slot_now["active"] == true && slot_now["cdc_lag_ms"] == 0.0 {
            eprintln!(
                "caught up {} ms after cdc restarted, {} bytes behind the current WAL",
                restarted.elapsed().as_millis(),
                slot_now["lag_bytes"]
            );
            assert!(
                lag(
                    &database.url,
                    &pipeline,
                    &["--slot", &slot, "--max-lag-seconds", "60"]
                )
                .status
                .success(),
                "caught up, yet a breach"
            );
            break;
        }
        assert!(
            Instant::now() < deadline,
            "not caught up 60 s after cdc restarted: {now}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test]
async fn kafka_lag_is_the_events_a_pipeline_has_not_processed() {
    let topics = TestTopics::new();
    let keyspace = TestKeyspace::create().await;
    let directory = tempfile::tempdir().unwrap();
    let topic = format!("{}.public.items", topics.prefix);
    let pipeline = items_pipeline(directory.path(), &topic, &keyspace.name, "price");
    // Committed in Postgres (so the events say) a minute ago.
    let committed = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis()
        - 60_000;
    kcat_produce(
        &topic,
        (0..7).map(|id| {
            format!(
                r#"{{"before":null,"after":{{"id":{id},"price":1.5}},"op":"c","source":{{"ts_ms":{committed}}}}}"#
            )
        }),
    );
    let database_url = services().postgres_url;
    let checkpoints = directory.path().join("checkpoints");
    let checkpoint_dir = checkpoints.to_str().unwrap();
    let slot = unique_name("absent_slot");
    let args = ["--slot", slot.as_str(), "--checkpoint-dir", checkpoint_dir];

    let before = lag_json(&database_url, &pipeline, &args);
    let partitions = before["report"]["kafka"].as_array().unwrap();
    assert_eq!(partitions.len(), 1, "{before}");
    assert_eq!(partitions[0]["group"], "walflow-process-items");
    assert_eq!(partitions[0]["lag"], 7, "{before}");
    assert_eq!(partitions[0]["committed_offset"], Value::Null);
    assert_eq!(before["report"]["slot"], Value::Null, "no such slot");
    assert_eq!(before["report"]["checkpoints"][0]["age_ms"], Value::Null);

    let breached = lag(
        &database_url,
        &pipeline,
        &[&args[..], &["--max-lag-events", "6"]].concat(),
    );
    assert_eq!(breached.status.code(), Some(3));
    assert!(
        stderr(&breached).contains("LAG kafka"),
        "{}",
        stderr(&breached)
    );

    let processed = run(walflow(&database_url)
        .args([
            "process",
            "--until-caught-up",
            "--checkpoint-dir",
            checkpoint_dir,
        ])
        .args([
            "--dead-letter-prefix",
            &format!("{}.dead_letter", topics.prefix),
        ])
        .arg(&pipeline));
    assert!(processed.status.success(), "{}", stderr(&processed));
    let after = lag_json(&database_url, &pipeline, &args);
    let partition = &after["report"]["kafka"][0];
    assert_eq!(partition["lag"], 0, "{after}");
    assert_eq!(partition["committed_offset"], 7, "{after}");
    assert!(
        after["report"]["checkpoints"][0]["age_ms"].is_u64(),
        "{after}"
    );
    // No slot here, so cdc cannot be known caught up: end to end is the age of the newest
    // result, committed a minute ago.
    let end_to_end = after["report"]["checkpoints"][0]["end_to_end_ms"]
        .as_u64()
        .unwrap();
    assert!((60_000..600_000).contains(&end_to_end), "{after}");
    let late = lag(
        &database_url,
        &pipeline,
        &[&args[..], &["--max-lag-seconds", "30"]].concat(),
    );
    assert_eq!(late.status.code(), Some(3));
    assert!(
        stderr(&late).contains("LAG end to end"),
        "{}",
        stderr(&late)
    );
    let healthy = lag(
        &database_url,
        &pipeline,
        &[
            &args[..],
            &["--max-lag-events", "6", "--max-checkpoint-age", "600"],
        ]
        .concat(),
    );
    assert_eq!(healthy.status.code(), Some(0), "{}", stderr(&healthy));
}

/// A multi-host URL is one that the `url` crate cannot parse; its password once came back
/// whole in the slot hop's error, which `lag --json` and the dashboard's `/api/lag` show.
#[test]
fn an_unreachable_multi_host_postgres_is_reported_without_its_password() {
    let directory = tempfile::tempdir().unwrap();
    let pipeline = items_pipeline(directory.path(), "unused", "unused", "price");
    let url = "postgres://walflow:s3cret-of-lag@127.0.0.1:1,127.0.0.1:2/walflow";
    let output = lag(url, &pipeline, &["--json"]);
    let all = format!("{}{}", stdout(&output), stderr(&output));
    assert!(!all.contains("s3cret"), "the password leaked: {all}");
    let report: Value = serde_json::from_str(&stdout(&output)).unwrap();
    let errors = report["report"]["errors"].to_string();
    assert!(
        errors.contains("postgres://walflow:***@127.0.0.1:1,127.0.0.1:2/walflow"),
        "the slot's error names the servers: {report}"
    );
}
