//! `--metrics-listen`: cdc and process serve their counters to Prometheus, and a scrape
//! shows the events they handled.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::cdc::Cdc;
use crate::harness::{
    items_pipeline, kcat_produce, services, unique_name, walflow, TestDatabase, TestKeyspace,
    TestTopics,
};

/// The endpoint's URL from the "serving metrics" log line.
fn metrics_url(log: &str) -> Option<String> {
    let line = log.lines().find(|line| line.contains("serving metrics"))?;
    let start = line.find("http://")?;
    Some(
        line[start..]
            .split(|c: char| c.is_whitespace() || c == '"')
            .next()?
            .to_owned(),
    )
}

/// Every metric docs/grafana-dashboard.json queries whose name starts with `prefix` must be
/// in the scraped body: the shipped dashboard never charts a name that does not exist.
fn assert_dashboard_metrics_served(body: &str, prefix: &str) {
    let dashboard = std::fs::read_to_string(
        std::path::Path::new(crate::harness::repo_root()).join("docs/grafana-dashboard.json"),
    )
    .unwrap();
    let mut names: Vec<&str> = dashboard
        .match_indices(prefix)
        .map(|(start, _)| {
            let rest = &dashboard[start..];
            let end = rest
                .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                .unwrap_or(rest.len());
            &rest[..end]
        })
        .collect();
    names.sort();
    names.dedup();
    assert!(!names.is_empty(), "the dashboard charts no {prefix} metric");
    for name in names {
        assert!(
            body.lines()
                .any(|line| line.starts_with(&format!("{name}{{"))),
            "the dashboard charts {name}, which is not served:\n{body}"
        );
    }
}

/// The value of the first sample of `name` whose labels contain every one of `labels`.
fn sample(body: &str, name: &str, labels: &[&str]) -> Option<f64> {
    body.lines()
        .filter(|line| {
            line.starts_with(&format!("{name}{{")) || line.starts_with(&format!("{name} "))
        })
        .find(|line| labels.iter().all(|label| line.contains(label)))
        .and_then(|line| line.rsplit(' ').next())
        .and_then(|value| value.parse().ok())
}

/// Scrapes until `wanted` holds for the body; returns the body.
async fn scrape_until(url: &str, what: &str, wanted: impl Fn(&str) -> bool) -> String {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let body = match reqwest::get(url).await {
            Ok(response) => {
                assert!(response.headers()["content-type"]
                    .to_str()
                    .unwrap()
                    .starts_with("application/openmetrics-text"));
                response.text().await.unwrap()
            }
            Err(_) => String::new(),
        };
        if wanted(&body) {
            return body;
        }
        assert!(
            Instant::now() < deadline,
            "{what} not in the metrics after 60 s:\n{body}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test]
async fn cdc_serves_its_counters_to_prometheus() {
    let database = TestDatabase::create().await;
    let topics = TestTopics::new();
    let slot = unique_name("walflow_slot");
    let client = database.client().await;
    client
        .batch_execute("CREATE TABLE ticks (id int PRIMARY KEY)")
        .await
        .unwrap();
    let cdc = Cdc::start_with(
        &database,
        &slot,
        &topics,
        "public.ticks",
        &["--metrics-listen", "127.0.0.1:0"],
    );
    cdc.wait_until_streaming(&database).await;
    client
        .batch_execute("INSERT INTO ticks SELECT generate_series(1, 3)")
        .await
        .unwrap();
    let url = metrics_url(&cdc.log_so_far()).expect("cdc logs its metrics URL");
    let events = format!("walflow_cdc_events_total{{slot=\"{slot}\"}} 3");
    let acknowledged = |body: &str| -> u64 {
        body.lines()
            .find(|line| line.starts_with("walflow_cdc_acknowledged_transactions_total"))
            .and_then(|line| line.rsplit(' ').next())
            .and_then(|value| value.parse().ok())
            .unwrap_or(0)
    };
    let body = scrape_until(&url, "three events, acknowledged", |body| {
        body.contains(&events) && acknowledged(body) >= 1
    })
    .await;
    assert!(
        body.contains("# TYPE walflow_cdc_event_bytes counter"),
        "{body}"
    );
    let topic = format!("{}.public.ticks", topics.prefix);
    assert_eq!(
        sample(&body, "walflow_cdc_topic_events_total", &[&topic]),
        Some(3.0),
        "{body}"
    );
    assert!(
        sample(&body, "walflow_cdc_commit_to_ack_seconds_count", &[]) >= Some(1.0),
        "a latency per acknowledged transaction: {body}"
    );
    assert_eq!(
        sample(
            &body,
            "walflow_cdc_errors_total",
            &["kind=\"kafka_undelivered\""]
        ),
        Some(0.0),
        "{body}"
    );
    assert!(
        sample(&body, "walflow_cdc_slot_lag_bytes", &[]).is_some(),
        "{body}"
    );
    assert_dashboard_metrics_served(&body, "walflow_cdc_");
    let (code, log) = cdc.stop();
    assert_eq!(code, Some(0), "{log}");
}

#[tokio::test]
async fn process_serves_each_pipelines_counters_to_prometheus() {
    let topics = TestTopics::new();
    let keyspace = TestKeyspace::create().await;
    let directory = tempfile::tempdir().unwrap();
    let topic = format!("{}.public.items", topics.prefix);
    let pipeline = items_pipeline(directory.path(), &topic, &keyspace.name, "price");
    let committed = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis();
    kcat_produce(
        &topic,
        (0..5)
            .map(|id| format!(r#"{{"before":null,"after":{{"id":{id},"price":2.0}},"op":"c","source":{{"ts_ms":{committed}}}}}"#))
            .chain(["not an event".to_owned()]),
    );

    let mut child = walflow(&services().postgres_url)
        .args([
            "process",
            "--metrics-listen",
            "127.0.0.1:0",
            "--checkpoint-dir",
        ])
        .arg(directory.path().join("checkpoints"))
        .args([
            "--dead-letter-prefix",
            &format!("{}.dead_letter", topics.prefix),
        ])
        .arg(&pipeline)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = child.stderr.take().unwrap();
    let (sender, receiver) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if sender.send(line).is_err() {
                break;
            }
        }
    });
    let url = loop {
        let line = receiver
            .recv_timeout(Duration::from_secs(60))
            .expect("process logs its metrics URL");
        if let Some(url) = metrics_url(&line) {
            break url;
        }
    };
    let events = "walflow_process_events_total{pipeline=\"items\"} 6";
    let body = scrape_until(&url, events, |body| body.contains(events)).await;
    assert!(
        body.contains("walflow_process_dead_letters_total{pipeline=\"items\"} 1"),
        "{body}"
    );
    assert!(
        body.contains("walflow_process_rows_written_total{pipeline=\"items\"} 5"),
        "{body}"
    );
    assert_eq!(
        sample(&body, "walflow_process_commit_to_write_seconds_count", &[]),
        Some(5.0),
        "one latency per event with a commit time: {body}"
    );
    assert!(
        sample(&body, "walflow_process_batch_write_seconds_count", &[]) >= Some(1.0),
        "{body}"
    );
    assert_eq!(
        sample(
            &body,
            "walflow_process_errors_total",
            &["kind=\"cassandra_write\""]
        ),
        Some(0.0),
        "{body}"
    );
    assert_dashboard_metrics_served(&body, "walflow_process_");
    Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(child.wait().unwrap().success());
}
