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
use crate::operators::normalize::SourceChange;
use crate::runner::Pipeline;
use crate::value::Row;

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

/// Reads an input file; errors name the file and line.
pub fn read_input(pipeline: &Pipeline, path: &Path, text: &str) -> Result<Vec<InputEvent>, String> {
    let mut events = Vec::new();
    for (index, line) in text.lines().enumerate() {
        let number = index + 1;
        let trimmed = line.trim();
        if trimmed.is_empty() || trimmed.starts_with('#') {
            continue;
        }
        let at = || format!("{}:{number}", path.display());
        let json: serde_json::Value = serde_json::from_str(trimmed)
            .map_err(|error| format!("{}: not a JSON object: {error}", at()))?;
        let topic = json
            .get("topic")
            .and_then(|topic| topic.as_str())
            .ok_or_else(|| format!("{}: no \"topic\"", at()))?;
        let source = pipeline
            .definition
            .sources
            .iter()
            .position(|source| source.topic == topic)
            .ok_or_else(|| {
                let topics: Vec<&str> = pipeline
                    .definition
                    .sources
                    .iter()
                    .map(|source| source.topic.as_str())
                    .collect();
                format!(
                    "{}: topic {topic} is not a source of {} (its topics: {})",
                    at(),
                    pipeline.definition.path.display(),
                    topics.join(", ")
                )
            })?;
        let payload = match json.get("value") {
            None => return Err(format!("{}: no \"value\" (use null for a tombstone)", at())),
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
}

/// Runs the events through the pipeline, `batch_size` events per batch.
pub fn run(
    pipeline: &Pipeline,
    events: &[InputEvent],
    batch_size: usize,
) -> Result<GoldenOutput, String> {
    let mut state: Checkpoint = pipeline.fresh_checkpoint();
    let mut output = GoldenOutput {
        tables: vec![HashMap::new(); pipeline.queries.len()],
        dead_letters: Vec::new(),
    };
    for batch in events.chunks(batch_size.max(1)) {
        let mut changes: Vec<(usize, SourceChange)> = Vec::with_capacity(batch.len());
        for event in batch {
            let source = &pipeline.definition.sources[event.source];
            match decode(source, event.payload.as_deref()) {
                Ok(Some(decoded)) => changes.push((event.source, decoded.change)),
                Ok(None) => {}
                Err(reason) => output.dead_letters.push((event.line, reason)),
            }
        }
        let deltas = pipeline.apply_batch(&mut state, changes)?;
        for (table, delta) in output.tables.iter_mut().zip(&deltas) {
            delta.apply_to(table);
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
        for row in rows {
            let _ = writeln!(text, "{row}");
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

/// Runs a case both ways (one event per batch, one batch for all) and returns the rendered
/// output; an error when the two differ or the input cannot be read.
pub fn evaluate(pipeline: &Pipeline, events: &[InputEvent]) -> Result<String, String> {
    let one_by_one = render(pipeline, &run(pipeline, events, 1)?);
    let all_at_once = render(pipeline, &run(pipeline, events, events.len().max(1))?);
    if one_by_one != all_at_once {
        return Err(format!(
            "the result depends on how the events are cut into batches (a walflow bug):\n\
             --- one event per batch\n{one_by_one}--- all events in one batch\n{all_at_once}"
        ));
    }
    Ok(one_by_one)
}
