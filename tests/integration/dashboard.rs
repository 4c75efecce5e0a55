//! `walflow dashboard` in headless Chromium (Debian's package, installed by
//! `scripts/services browser`): the page loads, draws the hops, and shows the numbers
//! `walflow lag --json` reports for the same slot and pipeline. The screenshot is kept in
//! test-artifacts/dashboard.png.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::harness::{
    items_pipeline, kcat_produce, repo_root, run, stderr, stdout, unique_name, walflow,
    TestDatabase, TestTopics,
};

/// A running `walflow dashboard`, killed when dropped.
struct Dashboard {
    child: Child,
    url: String,
}

impl Drop for Dashboard {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Dashboard {
    fn start(database_url: &str, args: &[&str], pipeline: &Path) -> Dashboard {
        let mut child = walflow(database_url)
            .args(["dashboard", "--listen", "127.0.0.1:0", "--interval", "1"])
            .args(args)
            .arg(pipeline)
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn walflow dashboard");
        let stderr = child.stderr.take().expect("stderr is piped");
        let (sender, receiver) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut sent = false;
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if !sent && line.contains("serving the dashboard") {
                    let start = line.find("http://").expect("the URL is logged");
                    let url = line[start..]
                        .split(|c: char| c.is_whitespace() || c == '"')
                        .next()
                        .unwrap()
                        .to_owned();
                    let _ = sender.send(url);
                    sent = true;
                }
            }
        });
        let url = receiver
            .recv_timeout(Duration::from_secs(30))
            .expect("walflow dashboard logged no URL within 30 s");
        Dashboard { child, url }
    }

    async fn get(&self, path: &str) -> Option<Value> {
        let response = reqwest::get(format!("{}{path}", self.url)).await.ok()?;
        if !response.status().is_success() {
            return None;
        }
        response.json().await.ok()
    }

    /// Waits until the history holds a reading where `wanted` holds.
    async fn wait_for_history(&self, what: &str, wanted: impl Fn(&[Value]) -> bool) {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Some(Value::Array(history)) = self.get("api/history").await {
                if wanted(&history) {
                    return;
                }
            }
            assert!(
                Instant::now() < deadline,
                "the dashboard never showed {what}"
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
}

fn chromium(profile: &Path, args: &[&str], url: &str) -> Output {
    let output = Command::new("chromium")
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-dev-shm-usage",
            "--hide-scrollbars",
            "--no-first-run",
            "--window-size=1400,900",
            // Lets the page's fetches and first refreshes complete before the DOM is read.
            "--virtual-time-budget=5000",
        ])
        .arg(format!("--user-data-dir={}", profile.display()))
        .args(args)
        .arg(url)
        .output()
        .unwrap_or_else(|error| {
            panic!("cannot run chromium ({error}): install it with scripts/services browser")
        });
    assert!(
        output.status.success(),
        "chromium failed: {}",
        stderr(&output)
    );
    output
}

/// The `data-value` of the element with `data-metric="metric"` (and, when given,
/// `data-pipeline="pipeline"`) in the rendered DOM.
fn metric_value(dom: &str, metric: &str, pipeline: Option<&str>) -> Option<String> {
    let marker = format!("data-metric=\"{metric}\"");
    dom.match_indices(&marker).find_map(|(start, _)| {
        let tag_start = dom[..start].rfind('<')?;
        let tag_end = start + dom[start..].find('>')?;
        let tag = &dom[tag_start..tag_end];
        if let Some(pipeline) = pipeline {
            if !tag.contains(&format!("data-pipeline=\"{pipeline}\"")) {
                return None;
            }
        }
        let value_start = tag.find("data-value=\"")? + "data-value=\"".len();
        let value_end = value_start + tag[value_start..].find('"')?;
        Some(tag[value_start..value_end].to_owned())
    })
}

fn artifacts_dir() -> PathBuf {
    let directory = Path::new(repo_root()).join("test-artifacts");
    std::fs::create_dir_all(&directory).unwrap();
    directory
}

#[tokio::test]
async fn the_page_shows_every_hop_with_the_numbers_of_walflow_lag() {
    let database = TestDatabase::create().await;
    let topics = TestTopics::new();
    let directory = tempfile::tempdir().unwrap();
    let topic = format!("{}.public.items", topics.prefix);
    let pipeline = items_pipeline(directory.path(), &topic, "unused", "price");
    let checkpoints = directory.path().join("checkpoints");
    let slot = unique_name("walflow_slot");
    let client = database.client().await;
    // A slot nobody reads, and about 2 MB of WAL it holds.
    client
        .batch_execute(&format!(
            "SELECT pg_create_logical_replication_slot('{slot}', 'pgoutput');
             CREATE TABLE filler (id int, body text);
             INSERT INTO filler SELECT g, (SELECT string_agg(md5(i::text), '') FROM generate_series(1, 36) i)
               FROM generate_series(1, 1500) g"
        ))
        .await
        .unwrap();
    let event =
        |id: u32| format!(r#"{{"before":null,"after":{{"id":{id},"price":1.5}},"op":"c"}}"#);
    kcat_produce(&topic, (0..7).map(event));

    let args = [
        "--slot",
        slot.as_str(),
        "--checkpoint-dir",
        checkpoints.to_str().unwrap(),
    ];
    let dashboard = Dashboard::start(&database.url, &args, &pipeline);
    let items_lag = |sample: &Value| sample["pipelines"][0]["lag_events"].as_u64();
    dashboard
        .wait_for_history("7 events behind", |history| {
            history.iter().filter(|s| items_lag(s) == Some(7)).count() >= 2
        })
        .await;
    // More events while the page's charts are drawn from the history: the lag steps up.
    kcat_produce(&topic, (7..19).map(event));
    dashboard
        .wait_for_history("19 events behind", |history| {
            history.iter().filter(|s| items_lag(s) == Some(19)).count() >= 2
        })
        .await;

    let profile = tempfile::tempdir().unwrap();
    let dom = stdout(&chromium(profile.path(), &["--dump-dom"], &dashboard.url));
    let lag = run(walflow(&database.url)
        .args(["lag", "--json"])
        .args(args)
        .arg(&pipeline));
    assert!(lag.status.success(), "{}", stderr(&lag));
    let lag: Value = serde_json::from_str(&stdout(&lag)).unwrap();

    for hop in ["postgres slot", "cdc", "kafka", "processing", "end to end"] {
        assert!(
            dom.contains(&format!("data-hop=\"{hop}\"")),
            "no {hop} hop on the page:\n{dom}"
        );
    }
    // Kafka: exactly what lag reports.
    assert_eq!(lag["report"]["kafka"][0]["lag"], 19, "{lag}");
    assert_eq!(
        metric_value(&dom, "kafka_lag_events", Some("items")).as_deref(),
        Some("19"),
        "{dom}"
    );
    // The slot: read by the page first, then by lag; WAL only grows in between (other
    // tests write too), and both hold at least the 2 MB written here.
    let page_bytes: i64 = metric_value(&dom, "slot_lag_bytes", None)
        .and_then(|value| value.parse().ok())
        .unwrap_or_else(|| panic!("no slot lag on the page:\n{dom}"));
    let lag_bytes = lag["report"]["slot"]["lag_bytes"].as_i64().unwrap();
    assert!(page_bytes > 1 << 20, "{page_bytes} bytes on the page");
    assert!(
        page_bytes <= lag_bytes,
        "the page ({page_bytes}) is ahead of walflow lag ({lag_bytes})"
    );
    assert_eq!(
        metric_value(&dom, "slot_active", None).as_deref(),
        Some("false")
    );
    assert_eq!(lag["report"]["slot"]["active"], false);
    assert_eq!(
        metric_value(&dom, "cdc_lag_ms", None).as_deref(),
        Some(""),
        "not attached"
    );
    assert!(dom.contains("INACTIVE and retains"), "the warning: {dom}");
    assert_eq!(
        metric_value(&dom, "checkpoint_age_ms", Some("items")).as_deref(),
        Some(""),
        "no checkpoint yet"
    );
    // The charts are drawn: a line per series.
    assert!(dom.matches("<polyline").count() >= 3, "{dom}");

    let screenshot = artifacts_dir().join("dashboard.png");
    let _ = std::fs::remove_file(&screenshot);
    chromium(
        profile.path(),
        &[&format!("--screenshot={}", screenshot.display())],
        &dashboard.url,
    );
    let png = std::fs::read(&screenshot).expect("chromium wrote the screenshot");
    assert!(png.starts_with(b"\x89PNG"), "not a PNG");
    assert!(png.len() > 20_000, "a {} byte screenshot", png.len());
    client
        .batch_execute(&format!("SELECT pg_drop_replication_slot('{slot}')"))
        .await
        .unwrap();
}
