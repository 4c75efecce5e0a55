//! The run loop over memory doubles of Kafka and Cassandra: what reaches the sink tables, and
//! what a checkpoint holds, across failed writes and restarts.

use std::path::{Path, PathBuf};

use tokio::sync::watch;

use super::*;
use crate::definition::PipelineDefinition;
use crate::io::memory::{MemorySink, MemorySource, MemoryTopics};
use crate::metrics::RecoveredError;
use walflow_tls::kafka::KafkaConnection;

const TOPIC: &str = "walflow.public.users";
const SINK: &str = "users_by_country";

async fn users_by_country() -> Pipeline {
    let definition = PipelineDefinition::parse(
        Path::new("users_by_country.sql"),
        "CREATE TABLE users (id TEXT, country TEXT, PRIMARY KEY (id))
           WITH (connector = 'kafka', topic = 'walflow.public.users', format = 'debezium_json');
         CREATE TABLE users_by_country (country TEXT PRIMARY KEY, users BIGINT)
           WITH (connector = 'cassandra', keyspace = 'walflow', table = 'users_by_country');
         INSERT INTO users_by_country SELECT country, count(*) AS users FROM users
           WHERE country IS NOT NULL GROUP BY country;",
    )
    .expect("the test pipeline parses");
    let queries = crate::plan::compile(&definition)
        .await
        .expect("the test pipeline compiles");
    Pipeline {
        definition,
        queries,
    }
}

fn user(id: &str, country: &str) -> String {
    format!(r#"{{"id": "{id}", "country": "{country}"}}"#)
}

fn created(id: &str, country: &str) -> String {
    format!(
        r#"{{"before": null, "after": {}, "op": "c", "source": {{"ts_ms": 1767225600000}}}}"#,
        user(id, country)
    )
}

fn moved(id: &str, from: &str, to: &str) -> String {
    format!(
        r#"{{"before": {}, "after": {}, "op": "u", "source": {{"ts_ms": 1767225601000}}}}"#,
        user(id, from),
        user(id, to)
    )
}

fn deleted(id: &str, country: &str) -> String {
    format!(
        r#"{{"before": {}, "after": null, "op": "d", "source": {{"ts_ms": 1767225602000}}}}"#,
        user(id, country)
    )
}

/// Three users arrive, one moves from France to Germany, one leaves Brazil.
fn arrivals_moves_and_leaves() -> Vec<String> {
    vec![
        created("u1", "Brazil"),
        created("u2", "Brazil"),
        created("u3", "France"),
        moved("u3", "France", "Germany"),
        deleted("u1", "Brazil"),
    ]
}

/// What users_by_country holds after [`arrivals_moves_and_leaves`].
fn expected_after_moves_and_leaves() -> Vec<String> {
    vec!["\"Brazil\" | 1".to_owned(), "\"Germany\" | 1".to_owned()]
}

/// A checkpoint directory of the test's own, empty.
fn checkpoint_dir(test: &str) -> PathBuf {
    let directory =
        std::env::temp_dir().join(format!("walflow-runner-{}-{test}", std::process::id()));
    let _ = std::fs::remove_dir_all(&directory);
    directory
}

/// Runs until caught up, a checkpoint after every batch.
fn caught_up_options(checkpoint_dir: &Path) -> ProcessOptions {
    let mut options = ProcessOptions::new(KafkaConnection::new("unused:9092"), Vec::new());
    options.checkpoint_dir = checkpoint_dir.to_owned();
    options.checkpoint_interval = Duration::ZERO;
    options.stop_when_caught_up = true;
    options
}

fn append(topics: &MemoryTopics, events: &[String]) {
    for event in events {
        topics.append(TOPIC, 0, Some(event));
    }
}

/// What one run did, and what its source recorded.
struct Run {
    summary: RunSummary,
    metrics: Arc<ProcessMetrics>,
    /// Where the reader was started.
    assigned: BTreeMap<PartitionKey, Option<i64>>,
    /// The offsets last reported to the source.
    committed: BTreeMap<PartitionKey, i64>,
}

/// One run of the pipeline over the topics into the sink, `batch_size` records per batch.
async fn run_once(
    pipeline: &Pipeline,
    options: &ProcessOptions,
    topics: &MemoryTopics,
    sink: &MemorySink,
    batch_size: usize,
) -> Run {
    let source = MemorySource::new(topics, &pipeline.definition.sources, batch_size);
    let (assigned, committed) = (source.assigned.clone(), source.committed.clone());
    let metrics = Arc::new(ProcessMetrics::default());
    let (_stop, stopped) = watch::channel(false);
    let summary = run_with(
        pipeline,
        options,
        metrics.clone(),
        stopped,
        source,
        sink.clone(),
    )
    .await
    .expect("the run succeeds");
    let assigned = assigned.lock().expect("not poisoned").clone();
    let committed = committed.lock().expect("not poisoned").clone();
    Run {
        summary,
        metrics,
        assigned,
        committed,
    }
}

fn checkpointed_offsets(
    options: &ProcessOptions,
    pipeline: &Pipeline,
) -> BTreeMap<PartitionKey, i64> {
    checkpoint::load(&checkpoint::path_for(
        &options.checkpoint_dir,
        &pipeline.definition.name,
    ))
    .expect("the checkpoint reads")
    .expect("a checkpoint was written")
    .offsets
}

fn offsets(next: i64) -> BTreeMap<PartitionKey, i64> {
    BTreeMap::from([((TOPIC.to_owned(), 0), next)])
}

#[tokio::test]
async fn an_update_and_a_delete_retract_the_old_aggregate_rows() {
    let pipeline = users_by_country().await;
    for batch_size in [1, 2, 5] {
        let directory = checkpoint_dir(&format!("retract-{batch_size}"));
        let topics = MemoryTopics::default();
        append(&topics, &arrivals_moves_and_leaves());
        let sink = MemorySink::default();
        let run = run_once(
            &pipeline,
            &caught_up_options(&directory),
            &topics,
            &sink,
            batch_size,
        )
        .await;
        assert_eq!(
            sink.rows(SINK),
            expected_after_moves_and_leaves(),
            "batches of {batch_size}: France's row goes when its last user moves away, \
             Brazil's count drops when u1 leaves"
        );
        assert_eq!(run.summary.events, 5);
        let _ = std::fs::remove_dir_all(&directory);
    }
}

#[tokio::test]
async fn a_failed_write_is_retried_and_counted_once() {
    let pipeline = users_by_country().await;
    let directory = checkpoint_dir("retried");
    let options = caught_up_options(&directory);
    let topics = MemoryTopics::default();
    append(&topics, &arrivals_moves_and_leaves());
    let sink = MemorySink::default();
    sink.refuse_writes(2);
    let run = run_once(&pipeline, &options, &topics, &sink, 2).await;
    assert_eq!(sink.refused(), 2);
    assert_eq!(run.metrics.error(RecoveredError::CassandraWrite).get(), 2);
    assert_eq!(sink.rows(SINK), expected_after_moves_and_leaves());
    assert_eq!(run.summary.events, 5);
    assert_eq!(run.metrics.events.get(), 5);
    assert_eq!(checkpointed_offsets(&options, &pipeline), offsets(5));
    assert_eq!(run.committed, offsets(5));
    let _ = std::fs::remove_dir_all(&directory);
}

#[tokio::test]
async fn a_checkpoint_never_passes_a_batch_whose_write_failed() {
    let pipeline = users_by_country().await;
    let directory = checkpoint_dir("never-passes");
    let options = caught_up_options(&directory);
    let topics = MemoryTopics::default();
    let events = arrivals_moves_and_leaves();
    append(&topics, &events[..3]);
    let sink = MemorySink::default();
    run_once(&pipeline, &options, &topics, &sink, 3).await;
    assert_eq!(checkpointed_offsets(&options, &pipeline), offsets(3));
    let before_failure = sink.rows(SINK);

    // The move and the delete arrive while every write fails; the run is stopped while it
    // retries them.
    append(&topics, &events[3..]);
    sink.refuse_writes(usize::MAX);
    let source = MemorySource::new(&topics, &pipeline.definition.sources, 3);
    let committed = source.committed.clone();
    let (stop, stopped) = watch::channel(false);
    let failing = tokio::spawn({
        let (pipeline, options, sink) = (pipeline.clone(), options.clone(), sink.clone());
        async move {
            let metrics = Arc::new(ProcessMetrics::default());
            run_with(&pipeline, &options, metrics, stopped, source, sink).await
        }
    });
    let refused = async {
        while sink.refused() == 0 {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    };
    tokio::time::timeout(Duration::from_secs(30), refused)
        .await
        .expect("the run tries to write the batch within 30 s");
    stop.send(true).expect("the run listens");
    let summary = failing
        .await
        .expect("the run does not panic")
        .expect("a stopped run is no failure");
    assert_eq!(summary.events, 0, "the unwritten batch is not booked");
    assert_eq!(checkpointed_offsets(&options, &pipeline), offsets(3));
    assert!(committed.lock().unwrap().is_empty(), "no offsets reported");
    assert_eq!(sink.rows(SINK), before_failure);

    // Started again with Cassandra back: the batch is read again from the checkpoint, and
    // applied once to the state the checkpoint kept.
    sink.refuse_writes(0);
    let run = run_once(&pipeline, &options, &topics, &sink, 3).await;
    assert_eq!(run.summary.events, 2);
    assert_eq!(sink.rows(SINK), expected_after_moves_and_leaves());
    assert_eq!(checkpointed_offsets(&options, &pipeline), offsets(5));
    let _ = std::fs::remove_dir_all(&directory);
}

#[tokio::test]
async fn a_restart_resumes_from_the_checkpoint() {
    let pipeline = users_by_country().await;
    let directory = checkpoint_dir("restart");
    let options = caught_up_options(&directory);
    let topics = MemoryTopics::default();
    let events = arrivals_moves_and_leaves();
    append(&topics, &events[..2]);
    let sink = MemorySink::default();
    let first = run_once(&pipeline, &options, &topics, &sink, 1).await;
    assert_eq!(first.summary.events, 2);
    assert_eq!(
        first.assigned,
        BTreeMap::from([((TOPIC.to_owned(), 0), None)]),
        "a first run reads from the beginning"
    );
    assert_eq!(sink.rows(SINK), vec!["\"Brazil\" | 2".to_owned()]);

    append(&topics, &events[2..]);
    let second = run_once(&pipeline, &options, &topics, &sink, 1).await;
    assert_eq!(
        second.assigned,
        BTreeMap::from([((TOPIC.to_owned(), 0), Some(2))]),
        "the second run starts where the first one's checkpoint left"
    );
    assert_eq!(second.summary.events, 3, "nothing is read twice");
    assert_eq!(sink.rows(SINK), expected_after_moves_and_leaves());

    // The same as one run over everything.
    let fresh = checkpoint_dir("restart-oracle");
    let all_at_once = MemorySink::default();
    run_once(
        &pipeline,
        &caught_up_options(&fresh),
        &topics,
        &all_at_once,
        5,
    )
    .await;
    assert_eq!(sink.rows(SINK), all_at_once.rows(SINK));
    let _ = std::fs::remove_dir_all(&directory);
    let _ = std::fs::remove_dir_all(&fresh);
}

#[tokio::test]
async fn an_undecodable_event_goes_to_the_dead_letter_topic_and_the_run_goes_on() {
    let pipeline = users_by_country().await;
    let directory = checkpoint_dir("dead-letter");
    let topics = MemoryTopics::default();
    topics.append(TOPIC, 0, Some(&created("u1", "Brazil")));
    topics.append(TOPIC, 0, Some("{not json"));
    topics.append(TOPIC, 0, Some(&created("u2", "Chile")));
    let sink = MemorySink::default();
    let run = run_once(&pipeline, &caught_up_options(&directory), &topics, &sink, 2).await;
    assert_eq!(run.summary.dead_letters, 1);
    let letters = sink.letters("walflow.dead_letter.users_by_country");
    assert_eq!(letters.len(), 1, "{letters:?}");
    assert_eq!((letters[0].partition, letters[0].offset), (0, 1));
    assert!(
        letters[0].reason.starts_with("source users: "),
        "{}",
        letters[0].reason
    );
    assert_eq!(
        sink.rows(SINK),
        vec!["\"Brazil\" | 1".to_owned(), "\"Chile\" | 1".to_owned()]
    );
    let _ = std::fs::remove_dir_all(&directory);
}

#[tokio::test]
async fn a_run_resumed_after_a_kill_takes_back_what_the_killed_run_wrote_past_its_checkpoint() {
    let pipeline = users_by_country().await;
    let directory = checkpoint_dir("killed");
    let options = caught_up_options(&directory);
    let path = checkpoint::path_for(&options.checkpoint_dir, &pipeline.definition.name);
    let topics = MemoryTopics::default();
    let sink = MemorySink::default();
    append(&topics, &[created("u1", "Brazil")]);
    run_once(&pipeline, &options, &topics, &sink, 1).await;
    let last_checkpoint = std::fs::read(&path).expect("the checkpoint reads");

    // The killed run wrote u2's arrival in Chile, then died before its next checkpoint.
    append(&topics, &[created("u2", "Chile")]);
    run_once(&pipeline, &options, &topics, &sink, 1).await;
    assert_eq!(
        sink.rows(SINK),
        vec!["\"Brazil\" | 1".to_owned(), "\"Chile\" | 1".to_owned()]
    );
    std::fs::write(&path, last_checkpoint).expect("the checkpoint writes");

    // Resumed, it reads u2's arrival and move in one batch: Chile comes and goes within it.
    append(&topics, &[moved("u2", "Chile", "Peru")]);
    let resumed = run_once(&pipeline, &options, &topics, &sink, 2).await;
    assert_eq!(resumed.summary.events, 2);
    assert_eq!(
        sink.rows(SINK),
        vec!["\"Brazil\" | 1".to_owned(), "\"Peru\" | 1".to_owned()],
        "Chile's row, written by the killed run past its checkpoint, is taken back"
    );
    let _ = std::fs::remove_dir_all(&directory);
}
