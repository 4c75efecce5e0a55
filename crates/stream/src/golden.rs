//! Golden tests of pipeline files: a pipeline run over a file of change events entirely in
//! memory (no Kafka, no Cassandra), through the same batch step as `walflow process`, its
//! sink tables rendered as text to compare with the expected file beside the input.
//!
//! Input: `sql/pipelines/tests/<pipeline>.input.jsonl`, one change event per line as
//! `{"topic": "walflow.public.users", "value": <Debezium envelope or null>}` (blank lines and
//! lines starting with `#` are skipped). Expected: `<pipeline>.expected`. Every case runs
//! twice, one event per batch and all events in one batch, and both must give the same
//! tables: a pipeline's result may not depend on how the stream was cut into batches.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use crate::checkpoint::Checkpoint;
use crate::decode::decode;
use crate::pipeline::{BatchChange, EvaluateError, Pipeline, Replay};
use crate::value::{Row, Value};

/// One golden case: a pipeline file, its input and its expected output.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GoldenCase {
    pub name: String,
    pub pipeline: PathBuf,
    pub input: PathBuf,
    pub expected: PathBuf,
}

/// The cases of `tests_dir`: one per `<name>.input.jsonl`, for `<pipelines_dir>/<name>.sql`.
pub fn cases(tests_dir: &Path, pipelines_dir: &Path) -> std::io::Result<Vec<GoldenCase>> {
    let mut cases = Vec::new();
    for entry in std::fs::read_dir(tests_dir)? {
        let path = entry?.path();
        let Some(file_name) = path.file_name().and_then(|name| name.to_str()) else {
            continue;
        };
        let Some(name) = file_name.strip_suffix(".input.jsonl") else {
            continue;
        };
        cases.push(GoldenCase {
            name: name.to_owned(),
            pipeline: pipelines_dir.join(format!("{name}.sql")),
            input: path.clone(),
            expected: tests_dir.join(format!("{name}.expected")),
        });
    }
    cases.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(cases)
}

/// One line of an input file, matched to the pipeline's source by its topic.
#[derive(Debug, Clone)]
pub struct InputEvent {
    pub line: usize,
    pub source: usize,
    /// The envelope as Kafka would carry it; `None` for a tombstone.
    pub payload: Option<Vec<u8>>,
}

/// Why a golden case cannot be run: its input file (errors name the file and line), or the
/// pipeline over it.
#[derive(Debug, thiserror::Error)]
pub enum GoldenError {
    #[error("{}:{line}: not a JSON object: {source}", file.display())]
    NotJson {
        file: PathBuf,
        line: usize,
        #[source]
        source: serde_json::Error,
    },
    #[error("{}:{line}: no \"topic\"", file.display())]
    NoTopic { file: PathBuf, line: usize },
    #[error(
        "{}:{line}: topic {topic} is not a source of {} (its topics: {})",
        file.display(),
        pipeline.display(),
        topics.join(", ")
    )]
    UnknownTopic {
        file: PathBuf,
        line: usize,
        topic: String,
        pipeline: PathBuf,
        topics: Vec<String>,
    },
    #[error("{}:{line}: no \"value\" (use null for a tombstone)", file.display())]
    NoValue { file: PathBuf, line: usize },
    #[error(transparent)]
    Evaluate(#[from] EvaluateError),
    #[error(
        "the result depends on how the events are cut into batches (a walflow bug):\n--- one \
         event per batch\n{one_by_one}--- all events in one batch\n{all_at_once}"
    )]
    DependsOnBatching {
        one_by_one: String,
        all_at_once: String,
    },
}

/// Reads an input file; errors name the file and line.
pub fn read_input(
    pipeline: &Pipeline,
    path: &Path,
    text: &str,
) -> Result<Vec<InputEvent>, GoldenError> {
    let mut events = Vec::new();
    for (index, line) in text.lines().enumerate() {
        let number = index + 1;
        let trimmed = line.trim();
        if trimmed.is_empty() || trimmed.starts_with('#') {
            continue;
        }
        let file = || path.to_owned();
        let json: serde_json::Value =
            serde_json::from_str(trimmed).map_err(|source| GoldenError::NotJson {
                file: file(),
                line: number,
                source,
            })?;
        let topic = json
            .get("topic")
            .and_then(|topic| topic.as_str())
            .ok_or_else(|| GoldenError::NoTopic {
                file: file(),
                line: number,
            })?;
        let source = pipeline
            .definition
            .sources
            .iter()
            .position(|source| source.topic == topic)
            .ok_or_else(|| GoldenError::UnknownTopic {
                file: file(),
                line: number,
                topic: topic.to_owned(),
                pipeline: pipeline.definition.path.clone(),
                topics: pipeline
                    .definition
                    .sources
                    .iter()
                    .map(|source| source.topic.clone())
                    .collect(),
            })?;
        let payload = match json.get("value") {
            None => {
                return Err(GoldenError::NoValue {
                    file: file(),
                    line: number,
                })
            }
            Some(serde_json::Value::Null) => None,
            // A string is the payload as it was on the wire (it may be undecodable on purpose).
            Some(serde_json::Value::String(raw)) => Some(raw.clone().into_bytes()),
            Some(value) => Some(value.to_string().into_bytes()),
        };
        events.push(InputEvent {
            line: number,
            source,
            payload,
        });
    }
    Ok(events)
}

/// The pipeline's sink tables after the input, and the events it could not decode.
#[derive(Debug, Clone, PartialEq)]
pub struct GoldenOutput {
    /// Per query, in file order: the sink's rows by key.
    pub tables: Vec<HashMap<Row, Row>>,
    /// `(line, reason)` of each event that would go to the dead-letter topic.
    pub dead_letters: Vec<(usize, String)>,
    /// What would go to the late-events topic, one line each.
    pub late: Vec<String>,
}

/// Runs the events through the pipeline, `batch_size` events per batch.
pub fn run(
    pipeline: &Pipeline,
    events: &[InputEvent],
    batch_size: usize,
) -> Result<GoldenOutput, GoldenError> {
    let mut state: Checkpoint = pipeline.fresh_checkpoint();
    let mut output = GoldenOutput {
        tables: vec![HashMap::new(); pipeline.queries.len()],
        dead_letters: Vec::new(),
        late: Vec::new(),
    };
    for batch in events.chunks(batch_size.max(1)) {
        let mut changes: Vec<BatchChange> = Vec::with_capacity(batch.len());
        for event in batch {
            let source = &pipeline.definition.sources[event.source];
            match decode(source, event.payload.as_deref()) {
                Ok(Some(decoded)) => changes.push(BatchChange {
                    source: event.source,
                    partition: 0,
                    change: decoded.change,
                    position: decoded.position,
                    commit_time_ms: decoded.commit_time_ms,
                }),
                Ok(None) => {}
                Err(error) => output.dead_letters.push((event.line, error.to_string())),
            }
        }
        // No wall clock: no partition goes idle, so the result depends on the input alone.
        let batch_output = pipeline.apply_batch(&mut state, changes, None, Replay::No)?;
        for (table, delta) in output.tables.iter_mut().zip(&batch_output.deltas) {
            delta.apply_to(table);
        }
        for (sink, event) in batch_output.late {
            let time = |micros: i64| Value::Timestamp(micros).to_string();
            let row: Vec<String> = event
                .column_names
                .iter()
                .zip(&event.row)
                .map(|(name, value)| format!("{name}={value}"))
                .collect();
            output.late.push(format!(
                "{sink}: window [{}, {}) closed at watermark {}: {}",
                time(event.window_start_us),
                time(event.window_end_us),
                time(event.watermark_us),
                row.join(", ")
            ));
        }
    }
    Ok(output)
}

/// The output as text: per sink, its columns, then its rows sorted, one per line; then the
/// dead letters.
pub fn render(pipeline: &Pipeline, output: &GoldenOutput) -> String {
    let mut text = String::new();
    for (query, table) in pipeline.queries.iter().zip(&output.tables) {
        let sink = &query.sink;
        let columns: Vec<&str> = sink
            .columns
            .iter()
            .map(|column| column.name.as_str())
            .collect();
        let _ = writeln!(
            text,
            "## {}.{} ({}): {} rows",
            sink.keyspace,
            sink.table,
            columns.join(", "),
            table.len()
        );
        for row in sorted_rows(table) {
            let _ = writeln!(text, "{row}");
        }
    }
    if !output.late.is_empty() {
        let _ = writeln!(text, "## late events: {}", output.late.len());
        for line in &output.late {
            let _ = writeln!(text, "{line}");
        }
    }
    if !output.dead_letters.is_empty() {
        let _ = writeln!(text, "## dead letters: {}", output.dead_letters.len());
        for (line, reason) in &output.dead_letters {
            let _ = writeln!(text, "line {line}: {reason}");
        }
    }
    text
}

/// A sink table's rows as text, one `value | value` line each, sorted.
pub fn sorted_rows(table: &HashMap<Row, Row>) -> Vec<String> {
    let mut rows: Vec<String> = table
        .values()
        .map(|row| {
            row.iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join(" | ")
        })
        .collect();
    rows.sort();
    rows
}

/// Runs a case both ways (one event per batch, one batch for all) and returns the rendered
/// output; an error when the two differ or the input cannot be read.
pub fn evaluate(pipeline: &Pipeline, events: &[InputEvent]) -> Result<String, GoldenError> {
    let one_by_one = render(pipeline, &run(pipeline, events, 1)?);
    let all_at_once = render(pipeline, &run(pipeline, events, events.len().max(1))?);
    if one_by_one != all_at_once {
        return Err(GoldenError::DependsOnBatching {
            one_by_one,
            all_at_once,
        });
    }
    Ok(one_by_one)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::definition::PipelineDefinition;

    async fn pipeline(sink_options: &str) -> Pipeline {
        let definition = PipelineDefinition::parse(
            Path::new("windows.sql"),
            &format!(
                "CREATE TABLE changes (id TEXT, _op TEXT, _commit_time TIMESTAMP,
                   WATERMARK FOR _commit_time AS _commit_time - INTERVAL '10' SECOND)
                   WITH (connector = 'kafka', topic = 't', mode = 'changelog');
                 CREATE TABLE per_minute (minute TIMESTAMP PRIMARY KEY, changes BIGINT)
                   WITH (connector = 'cassandra', keyspace = 'ks'{sink_options});
                 INSERT INTO per_minute SELECT window_start, count(*) FROM changes
                   GROUP BY tumble(_commit_time, INTERVAL '1' MINUTE);"
            ),
        )
        .unwrap();
        let queries = crate::plan::compile(&definition).await.unwrap();
        Pipeline {
            definition,
            queries,
        }
    }

    /// Events at these seconds past midnight, in this order.
    fn input(pipeline: &Pipeline, seconds: &[i64]) -> Vec<InputEvent> {
        let lines: Vec<String> = seconds
            .iter()
            .enumerate()
            .map(|(index, second)| {
                format!(
                    r#"{{"topic":"t","value":{{"op":"c","after":{{"id":"e{index}"}},"source":{{"ts_ms":{}}}}}}}"#,
                    1_767_225_600_000 + second * 1000
                )
            })
            .collect();
        read_input(pipeline, Path::new("in.jsonl"), &lines.join("\n")).unwrap()
    }

    #[tokio::test]
    async fn on_close_writes_a_window_once_the_watermark_passes_it_and_routes_later_events() {
        let pipeline = pipeline("").await;
        // 75 s: watermark 65 s, minute 0 closes with 3 events; 130 s: minute 1 closes with
        // 2; the event at 20 s after that is late (to the topic); minute 2 stays open.
        let events = input(&pipeline, &[5, 30, 59, 75, 62, 130, 20, 140]);
        let text = evaluate(&pipeline, &events).unwrap();
        assert_eq!(
            text,
            "## ks.per_minute (minute, changes): 2 rows\n\
             2026-01-01T00:00:00.000000Z | 3\n\
             2026-01-01T00:01:00.000000Z | 2\n\
             ## late events: 1\n\
             per_minute: window [2026-01-01T00:00:00.000000Z, 2026-01-01T00:01:00.000000Z) \
             closed at watermark 2026-01-01T00:02:00.000000Z: id=\"e6\", _op=\"c\", \
             _commit_time=2026-01-01T00:00:20.000000Z, window_start=2026-01-01T00:00:00.000000Z\n"
                .replace(", window_start=2026-01-01T00:00:00.000000Z", "")
        );
    }

    #[tokio::test]
    async fn late_updates_within_allowed_lateness_then_the_topic() {
        let pipeline = pipeline(", late_events = 'update', allowed_lateness = '1 minute'").await;
        // 20 s arrives under watermark 115 s: minute 0 ended at 60 s, within its minute of
        // lateness, so it counts (the closed window's row is written again); 10 s arrives
        // under watermark 190 s: past it, to the topic.
        let events = input(&pipeline, &[5, 125, 20, 200, 10]);
        let output = run(&pipeline, &events, 1).unwrap();
        let text = render(&pipeline, &output);
        assert!(
            text.starts_with(
                "## ks.per_minute (minute, changes): 2 rows\n\
                 2026-01-01T00:00:00.000000Z | 2\n\
                 2026-01-01T00:02:00.000000Z | 1\n"
            ),
            "{text}"
        );
        assert_eq!(output.late.len(), 1, "{text}");
        assert!(output.late[0].contains("id=\"e4\""), "{text}");
        // Window state is freed once past its lateness: minutes 2 and 3 remain.
        let mut state = pipeline.fresh_checkpoint();
        let changes: Vec<BatchChange> = events
            .iter()
            .map(|event| BatchChange {
                source: 0,
                partition: 0,
                change: decode(&pipeline.definition.sources[0], event.payload.as_deref())
                    .unwrap()
                    .unwrap()
                    .change,
                position: None,
                commit_time_ms: None,
            })
            .collect();
        pipeline
            .apply_batch(&mut state, changes, None, Replay::No)
            .unwrap();
        assert_eq!(state.queries[0].aggregates[0].groups(), 2);
    }

    #[tokio::test]
    async fn a_partition_going_idle_closes_windows_without_new_rows() {
        let pipeline = pipeline("").await;
        let mut state = pipeline.fresh_checkpoint();
        let change = |partition: i32, second: i64| {
            BatchChange {
            source: 0,
            partition,
            change: decode(
                &pipeline.definition.sources[0],
                Some(
                    format!(
                        r#"{{"op":"c","after":{{"id":"p{partition}s{second}"}},"source":{{"ts_ms":{}}}}}"#,
                        1_767_225_600_000 + second * 1000
                    )
                    .as_bytes(),
                ),
            )
            .unwrap()
            .unwrap()
            .change,
            position: None,
            commit_time_ms: None,
        }
        };
        // Partition 1 lags (5 s): the watermark stays before minute 0's end.
        let first = pipeline
            .apply_batch(
                &mut state,
                vec![change(1, 5), change(0, 5), change(0, 70)],
                Some(1_000),
                Replay::No,
            )
            .unwrap();
        assert!(first.deltas[0].is_empty());
        // 31 s later, nothing new: both partitions are idle, the newest leads, minute 0
        // closes and is written although the batch has no rows.
        let second = pipeline
            .apply_batch(&mut state, Vec::new(), Some(32_000), Replay::No)
            .unwrap();
        let mut table = HashMap::new();
        second.deltas[0].apply_to(&mut table);
        assert_eq!(
            table.values().cloned().collect::<Vec<_>>(),
            vec![vec![
                Value::Timestamp(1_767_225_600_000_000),
                Value::Int64(2)
            ]]
        );
    }
}
