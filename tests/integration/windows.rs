//! Event-time windows against the real Kafka and Cassandra, with Postgres as the batch
//! oracle: change events shuffled out of order within the watermark's delay give exactly the
//! windows a GROUP BY over the whole event log gives; events later than that are applied
//! (changes_per_minute allows an hour) or sent to the late-events topic (signups), counted.

use std::collections::BTreeMap;

use scylla::value::CqlTimestamp;

use crate::harness::{
    cassandra_session, kcat_produce, repo_root, run, services, stderr, walflow, TestDatabase,
    TestKeyspace, TestTopics,
};

/// One change event of the test's log.
struct Event {
    id: String,
    country: Option<&'static str>,
    op: &'static str,
    commit_ms: i64,
}

/// A small deterministic generator (xorshift), so a failure replays.
struct Random(u64);

impl Random {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    fn below(&mut self, bound: u64) -> u64 {
        self.next() % bound
    }
}

const BASE_MS: i64 = 1_767_225_600_000; // 2026-01-01T00:00:00Z
const COUNTRIES: [Option<&str>; 6] = [
    Some("Brazil"),
    Some("France"),
    Some("Germany"),
    Some("Canada"),
    Some("Norway"),
    None,
];

fn envelope(topic: &str, event: &Event) -> String {
    let row = serde_json::json!({ "id": event.id, "country": event.country });
    let (before, after) = match event.op {
        "d" => (row, serde_json::Value::Null),
        _ => (serde_json::Value::Null, row),
    };
    serde_json::json!({
        "topic": topic,
        "before": before,
        "after": after,
        "op": event.op,
        "source": { "ts_ms": event.commit_ms },
    })
    .to_string()
}

/// The event log of a test: `count` events over 15 minutes of commit time arriving up to
/// 4 s out of order (the watermark trails by 5 s, so none is late), then three signups 20
/// minutes behind the newest (past every window they belong to). Produced to `topic` and
/// written to Postgres's `events` table, the oracle.
async fn write_event_log(topic: &str, client: &tokio_postgres::Client, count: usize, seed: u64) {
    let mut random = Random(seed);
    let mut events: Vec<(i64, Event)> = (0..count)
        .map(|index| {
            let commit_ms = BASE_MS + random.below(15 * 60_000) as i64;
            let op = match random.below(10) {
                0 => "d",
                1..=3 => "u",
                _ => "c",
            };
            // Thirty users, so their updates form sessions.
            let _ = index;
            let event = Event {
                id: format!("u{}", random.below(30)),
                country: COUNTRIES[random.below(COUNTRIES.len() as u64) as usize],
                op,
                commit_ms,
            };
            (commit_ms + random.below(4_000) as i64, event)
        })
        .collect();
    events.sort_by_key(|(arrival, event)| (*arrival, event.id.clone()));
    let newest_ms = events
        .iter()
        .map(|(_, event)| event.commit_ms)
        .max()
        .unwrap();
    for index in 0..3 {
        events.push((
            i64::MAX,
            Event {
                id: format!("late{index}"),
                country: Some("Chile"),
                op: "c",
                commit_ms: newest_ms - 20 * 60_000,
            },
        ));
    }
    let envelopes: Vec<String> = events
        .iter()
        .map(|(_, event)| {
            let mut value: serde_json::Value =
                serde_json::from_str(&envelope(topic, event)).unwrap();
            value.as_object_mut().unwrap().remove("topic");
            value.to_string()
        })
        .collect();
    kcat_produce(topic, envelopes);
    client
        .batch_execute(
            "CREATE TABLE events (id text, country text, op text, commit_time timestamptz)",
        )
        .await
        .unwrap();
    for chunk in events.chunks(500) {
        let mut sql = String::from("INSERT INTO events VALUES ");
        let values: Vec<String> = chunk
            .iter()
            .map(|(_, event)| {
                format!(
                    "('{}', {}, '{}', to_timestamp({}::float8 / 1000))",
                    event.id,
                    event
                        .country
                        .map_or("NULL".to_owned(), |c| format!("'{c}'")),
                    event.op,
                    event.commit_ms
                )
            })
            .collect();
        sql.push_str(&values.join(", "));
        client.batch_execute(&sql).await.unwrap();
    }
}

/// The two shipped windowed pipelines, pointed at this test's topic and keyspace.
fn windowed_pipelines(
    directory: &std::path::Path,
    topic: &str,
    keyspace: &str,
) -> Vec<std::path::PathBuf> {
    [
        "changes_per_minute",
        "signups_last_10_minutes",
        "editing_sessions",
    ]
    .iter()
    .map(|name| {
        let shipped =
            std::fs::read_to_string(format!("{}/sql/pipelines/{name}.sql", repo_root())).unwrap();
        let path = directory.join(format!("{name}.sql"));
        std::fs::write(
            &path,
            shipped
                .replace("'walflow.public.users'", &format!("'{topic}'"))
                .replace("keyspace = 'walflow'", &format!("keyspace = '{keyspace}'")),
        )
        .unwrap();
        path
    })
    .collect()
}

fn process_command(
    directory: &std::path::Path,
    topics: &TestTopics,
    pipelines: &[std::path::PathBuf],
) -> std::process::Command {
    let mut command = walflow(&services().postgres_url);
    command
        .args(["process", "--checkpoint-dir"])
        .arg(directory.join("checkpoints"))
        .args([
            "--dead-letter-prefix",
            &format!("{}.dead_letter", topics.prefix),
            "--late-events-prefix",
            &format!("{}.late", topics.prefix),
        ])
        .args(pipelines);
    command
}

/// The three sinks equal the batch queries over the log in Postgres: changes_per_minute
/// counts every event (the late ones are within its hour of allowed lateness); signups count
/// each signup in its ten windows, the three late ones in none; editing sessions are the
/// gaps-and-islands of each user's updates.
async fn assert_windows_equal_postgres(client: &tokio_postgres::Client, keyspace: &str) {
    let session = cassandra_session(&services().cassandra_nodes).await;
    let expected_changes: BTreeMap<(i64, String, String), i64> = client
        .query(
            "SELECT (extract(epoch FROM date_bin('1 minute', commit_time, timestamptz 'epoch')) * 1000)::bigint,
                    op, coalesce(country, '(none)'), count(*)
               FROM events GROUP BY 1, 2, 3",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|row| ((row.get(0), row.get(1), row.get(2)), row.get(3)))
        .collect();
    let actual_changes: BTreeMap<(i64, String, String), i64> = session
        .query_unpaged(
            format!(
                "SELECT minute, operation, country, changes FROM {keyspace}.changes_per_minute"
            ),
            (),
        )
        .await
        .unwrap()
        .into_rows_result()
        .unwrap()
        .rows::<(CqlTimestamp, String, String, i64)>()
        .unwrap()
        .map(|row| {
            let (minute, operation, country, changes) = row.unwrap();
            ((minute.0, operation, country), changes)
        })
        .collect();
    assert_eq!(actual_changes, expected_changes);

    let expected_signups: BTreeMap<i64, (i64, i64)> = client
        .query(
            "SELECT (extract(epoch FROM s.start) * 1000)::bigint, count(*), count(DISTINCT e.country)
               FROM events e CROSS JOIN LATERAL generate_series(
                      date_bin('1 minute', e.commit_time, timestamptz 'epoch') - interval '9 minutes',
                      date_bin('1 minute', e.commit_time, timestamptz 'epoch'),
                      interval '1 minute') AS s(start)
              WHERE e.op = 'c' AND e.id NOT LIKE 'late%'
              GROUP BY 1",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|row| (row.get(0), (row.get(1), row.get(2))))
        .collect();
    let actual_signups: BTreeMap<i64, (i64, i64)> = session
        .query_unpaged(
            format!(
                "SELECT window_start, window_end, signups, countries FROM {keyspace}.signups_last_10_minutes"
            ),
            (),
        )
        .await
        .unwrap()
        .into_rows_result()
        .unwrap()
        .rows::<(CqlTimestamp, CqlTimestamp, i64, i64)>()
        .unwrap()
        .map(|row| {
            let (start, end, signups, countries) = row.unwrap();
            assert_eq!(end.0 - start.0, 10 * 60_000, "window_end is start + size");
            (start.0, (signups, countries))
        })
        .collect();
    assert_eq!(actual_signups, expected_signups);

    // editing_sessions: updates of a user less than 5 minutes apart are one session
    // (gaps and islands over the whole log).
    let expected_sessions: BTreeMap<(String, i64), (i64, i64)> = client
        .query(
            "WITH marked AS (
                 SELECT id, commit_time,
                        CASE WHEN lag(commit_time) OVER w IS NULL
                               OR commit_time - lag(commit_time) OVER w >= interval '5 minutes'
                             THEN 1 ELSE 0 END AS starts
                   FROM events WHERE op = 'u'
                 WINDOW w AS (PARTITION BY id ORDER BY commit_time)),
             numbered AS (
                 SELECT id, commit_time,
                        sum(starts) OVER (PARTITION BY id ORDER BY commit_time
                                          ROWS UNBOUNDED PRECEDING) AS session
                   FROM marked)
             SELECT id, (extract(epoch FROM min(commit_time)) * 1000)::bigint,
                    (extract(epoch FROM max(commit_time) + interval '5 minutes') * 1000)::bigint,
                    count(*)
               FROM numbered GROUP BY id, session",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|row| ((row.get(0), row.get(1)), (row.get(2), row.get(3))))
        .collect();
    let actual_sessions: BTreeMap<(String, i64), (i64, i64)> = session
        .query_unpaged(
            format!(
                "SELECT id, session_start, session_end, updates FROM {keyspace}.editing_sessions"
            ),
            (),
        )
        .await
        .unwrap()
        .into_rows_result()
        .unwrap()
        .rows::<(String, CqlTimestamp, CqlTimestamp, i64)>()
        .unwrap()
        .map(|row| {
            let (id, start, end, updates) = row.unwrap();
            ((id, start.0), (end.0, updates))
        })
        .collect();
    assert!(
        expected_sessions.values().any(|(_, updates)| *updates > 1),
        "some sessions hold several updates"
    );
    assert_eq!(actual_sessions, expected_sessions);
}

/// The late-events topic of signups: `(id, window_start)` of each record, checking each
/// says why it is late.
fn late_signups(topics: &TestTopics) -> Vec<(String, String)> {
    crate::cdc::kcat_all(&format!("{}.late.signups_last_10_minutes", topics.prefix))
        .iter()
        .map(|record| {
            let payload: serde_json::Value =
                serde_json::from_str(record["payload"].as_str().unwrap()).unwrap();
            let headers = record["headers"].as_array().unwrap();
            let reason = headers
                .iter()
                .position(|header| header == "walflow.error")
                .map(|at| headers[at + 1].as_str().unwrap())
                .unwrap();
            assert!(reason.contains("late for window"), "{reason}");
            (
                payload["row"]["id"].as_str().unwrap().to_owned(),
                payload["window_start"].as_str().unwrap().to_owned(),
            )
        })
        .collect()
}

#[tokio::test]
async fn windows_equal_the_batch_query_over_the_event_log_and_late_events_are_routed() {
    let database = TestDatabase::create().await;
    let topics = TestTopics::new();
    let keyspace = TestKeyspace::create().await;
    let directory = tempfile::tempdir().unwrap();
    let topic = format!("{}.public.users", topics.prefix);
    let client = database.client().await;
    write_event_log(&topic, &client, 400, 0x5eed_1234_abcd).await;
    let pipelines = windowed_pipelines(directory.path(), &topic, &keyspace.name);
    let output = run(
        process_command(directory.path(), &topics, &pipelines).args([
            "--until-caught-up",
            "--batch-max-events",
            "50",
        ]),
    );
    assert!(output.status.success(), "{}", stderr(&output));
    assert_windows_equal_postgres(&client, &keyspace.name).await;
    // Each late signup is late for its ten windows: 30 records.
    let late = late_signups(&topics);
    assert_eq!(late.len(), 30, "{late:?}");
    assert!(
        late.iter().all(|(id, _)| id.starts_with("late")),
        "{late:?}"
    );
    assert!(stderr(&output).contains("too late"), "{}", stderr(&output));
}

/// Waits (at most 60 s) until the log holds `started` "processing" lines: every pipeline of
/// the running process has connected and started reading.
fn wait_for_processing(
    log_path: &std::path::Path,
    child: &mut std::process::Child,
    trial: usize,
    started: usize,
) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    loop {
        let log = std::fs::read_to_string(log_path).unwrap_or_default();
        if log.matches(" processing pipeline=").count() >= started {
            return;
        }
        assert!(
            child.try_wait().unwrap().is_none(),
            "process exited before processing in trial {trial}: {log}"
        );
        assert!(
            std::time::Instant::now() < deadline,
            "the pipelines did not start within 60 s in trial {trial}: {log}"
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
}

#[tokio::test]
async fn kill_9_during_windowed_processing_still_gives_the_batch_answer() {
    let database = TestDatabase::create().await;
    let topics = TestTopics::new();
    let keyspace = TestKeyspace::create().await;
    let directory = tempfile::tempdir().unwrap();
    let topic = format!("{}.public.users", topics.prefix);
    let client = database.client().await;
    write_event_log(&topic, &client, 3000, 0x0ddb_a11c_0ffe).await;
    let pipelines = windowed_pipelines(directory.path(), &topic, &keyspace.name);
    let log_path = directory.path().join("process.log");
    let mut seed = std::process::id() as u64 ^ 0x9e37_79b9_7f4a_7c15;
    let mut started_before = 0;
    for trial in 0..10 {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log_path)
            .unwrap();
        let mut child = process_command(directory.path(), &topics, &pipelines)
            .args([
                "--checkpoint-interval-ms",
                "100",
                "--batch-max-events",
                "20",
            ])
            .stdout(std::process::Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap();
        // The kill falls while the pipelines process: once all three have started (how
        // long connecting takes depends on the machine's load, which is not what this
        // test is about), at a pseudo-random moment 0.1 to 0.8 s later.
        wait_for_processing(
            &log_path,
            &mut child,
            trial,
            started_before + pipelines.len(),
        );
        started_before += pipelines.len();
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        std::thread::sleep(std::time::Duration::from_millis(100 + seed % 700));
        assert!(
            child.try_wait().unwrap().is_none(),
            "process exited early in trial {trial}"
        );
        child.kill().unwrap(); // SIGKILL
        child.wait().unwrap();
    }
    let output =
        run(process_command(directory.path(), &topics, &pipelines).args(["--until-caught-up"]));
    assert!(output.status.success(), "{}", stderr(&output));
    let history = std::fs::read_to_string(&log_path).unwrap();
    assert!(
        history.matches("resuming from the checkpoint").count() >= 5,
        "most restarts resumed from a checkpoint written before a kill: {history}"
    );
    assert_windows_equal_postgres(&client, &keyspace.name).await;
    // Late events are delivered at least once (a replay after a kill sends them again):
    // every one of the 30 is there.
    let mut late = late_signups(&topics);
    late.sort();
    late.dedup();
    assert_eq!(late.len(), 30, "{late:?}");
}
