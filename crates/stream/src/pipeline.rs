//! The pure core of a pipeline: its compiled file, and one micro-batch of changes applied to
//! its state, giving the writes each sink needs. No I/O: the runner calls it between reading
//! Kafka and writing Cassandra, golden tests and `walflow sql test` between an input file and
//! tables in memory, and live edit compares two of them.

use std::collections::HashMap;

use crate::checkpoint::{self, Checkpoint};
use crate::definition::{DefinitionError, PipelineDefinition};
use crate::operators::normalize::{SourceChange, SourceOutput, SourceState};
use crate::operators::window::LateEvent;
pub use crate::operators::Replay;
use crate::operators::{evaluate, BatchInput, QueryState};
use crate::plan::{compile, CompiledQuery};
use crate::sink::SinkDelta;

/// A query's operators failed on a batch (DataFusion evaluating an expression): the batch
/// cannot be applied.
#[derive(Debug, thiserror::Error)]
#[error("query into {sink}: {source}")]
pub struct EvaluateError {
    pub sink: String,
    #[source]
    pub source: datafusion::error::DataFusionError,
}

/// A pipeline ready to run: its file, its compiled queries and its state.
#[derive(Debug, Clone)]
pub struct Pipeline {
    pub definition: PipelineDefinition,
    pub queries: Vec<CompiledQuery>,
}

impl Pipeline {
    pub async fn load(path: &std::path::Path) -> Result<Pipeline, DefinitionError> {
        let definition = PipelineDefinition::load(path)?;
        let queries = compile(&definition).await?;
        Ok(Pipeline {
            definition,
            queries,
        })
    }

    /// Sources read by a stateful query (an aggregate or a join), or by one that filters,
    /// are kept per key ([`CompiledQuery::keeps_sources_keyed`]).
    fn keyed_sources(&self) -> Vec<&str> {
        self.queries
            .iter()
            .filter(|query| query.keeps_sources_keyed())
            .flat_map(|query| query.sources.iter().map(String::as_str))
            .collect()
    }

    /// One micro-batch through the pipeline: its changes applied to the sources' state, then
    /// every query evaluated over them; returns the writes each sink needs, in query order.
    /// A batch that replays events after a crash is evaluated as [`Replay::AfterCrash`] says.
    /// No I/O: the runner calls it between reading Kafka and writing Cassandra, and
    /// `walflow sql test` between an input file and an in-memory table.
    pub fn apply_batch(
        &self,
        state: &mut Checkpoint,
        changes: Vec<BatchChange>,
        now_ms: Option<u64>,
        replay: Replay,
    ) -> Result<BatchOutput, EvaluateError> {
        let mut outputs: Vec<SourceOutput> = self
            .definition
            .sources
            .iter()
            .map(|_| SourceOutput::default())
            .collect();
        let mut arrivals: Vec<Vec<i64>> = vec![Vec::new(); self.definition.sources.len()];
        let mut duplicates = 0u64;
        // The batch's changes as runs of consecutive changes of one source, in their order.
        let mut runs: Vec<SourceRun> = Vec::new();
        let self_joined: Vec<bool> = self
            .definition
            .sources
            .iter()
            .map(|source| {
                let reads = |query: &CompiledQuery| query.root.reads_of(&source.name);
                replay == Replay::AfterCrash && self.queries.iter().any(|query| reads(query) > 1)
            })
            .collect();
        let watermarks_before: HashMap<String, i64> = state
            .watermarks
            .iter()
            .map(|(name, watermark)| (name.clone(), watermark.current()))
            .collect();
        for source in &self.definition.sources {
            if let (Some(spec), Some(watermark)) =
                (&source.watermark, state.watermarks.get_mut(&source.name))
            {
                // Partitions may have gone idle since the last batch.
                watermark.advance(spec, now_ms);
            }
        }
        for BatchChange {
            source: source_index,
            partition,
            change,
            position,
            commit_time_ms,
        } in changes
        {
            let source = &self.definition.sources[source_index];
            // A keyed source absorbs a change sent twice (it upserts the same row); a
            // changelog source would count it twice.
            if source.mode == crate::definition::SourceMode::Changelog {
                if let Some(position) = position {
                    if !state.admit_changelog_event(
                        &source.name,
                        partition,
                        position,
                        commit_time_ms,
                    ) {
                        duplicates += 1;
                        continue;
                    }
                }
            }
            if let (Some(spec), SourceChange::Append(row)) = (&source.watermark, &change) {
                if let Some(crate::value::Value::Timestamp(event_us)) = row.get(spec.column) {
                    let watermark = state.watermarks.entry(source.name.clone()).or_default();
                    arrivals[source_index]
                        .push(watermark.observe(spec, partition, *event_us, now_ms));
                }
            }
            let output = &mut outputs[source_index];
            let rows_before = output.changes.len();
            state
                .sources
                .get_mut(&source.name)
                .expect("every source has a state")
                .apply(&source.primary_key, change, output);
            if output.changes.len() < rows_before {
                // A source read in images mode starts again after a truncate.
                runs.retain(|run| run.source != source_index);
            }
            let rows = output.changes.len();
            if self_joined[source_index] {
                // A join of the source with itself meets both sides' changes one by one.
                runs.extend((rows_before.min(rows)..rows).map(|row| SourceRun {
                    source: source_index,
                    rows: row..row + 1,
                }));
            } else {
                match runs.last_mut() {
                    Some(run) if run.source == source_index => run.rows.end = rows,
                    _ => runs.push(SourceRun {
                        source: source_index,
                        rows: rows_before.min(rows)..rows,
                    }),
                }
            }
        }

        // Run the queries over the batch: over all of it at once, or, replaying after a
        // crash, run by run.
        let mut deltas: Vec<SinkDelta> = Vec::with_capacity(self.queries.len());
        let mut late = Vec::new();
        let watermarks: HashMap<&str, i64> = state
            .watermarks
            .iter()
            .filter(|(_, watermark)| watermark.is_set())
            .map(|(name, watermark)| (name.as_str(), watermark.current()))
            .collect();
        let watermarked = |index: usize| self.definition.sources[index].watermark.is_some();
        let inputs: Vec<BatchInput<'_>> = if replay == Replay::AfterCrash && !runs.is_empty() {
            runs.iter()
                .map(|run| {
                    let name = self.definition.sources[run.source].name.as_str();
                    let rows = &outputs[run.source].changes[run.rows.clone()];
                    let mut input = BatchInput::of_changes(HashMap::from([(name, rows)]));
                    if watermarked(run.source) {
                        let arrivals = &arrivals[run.source];
                        // An appended row arrives with one watermark: rows and arrivals pair up.
                        if let Some(arrivals) = arrivals.get(run.rows.clone()) {
                            input.arrivals.insert(name, arrivals);
                        }
                    }
                    input.watermarks = watermarks.clone();
                    input.replay = Replay::AfterCrash;
                    input
                })
                .collect()
        } else {
            vec![BatchInput {
                changes: self
                    .definition
                    .sources
                    .iter()
                    .zip(&outputs)
                    .map(|(source, output)| (source.name.as_str(), output.changes.as_slice()))
                    .collect(),
                arrivals: self
                    .definition
                    .sources
                    .iter()
                    .enumerate()
                    .zip(&arrivals)
                    .filter(|((index, _), _)| watermarked(*index))
                    .map(|((_, source), arrivals)| (source.name.as_str(), arrivals.as_slice()))
                    .collect(),
                watermarks: watermarks.clone(),
                replay,
            }]
        };
        // A watermark that moved (a partition went idle) closes windows even without rows.
        let watermark_moved = |source: &str| {
            watermarks.get(source).is_some_and(|now| {
                watermarks_before
                    .get(source)
                    .is_none_or(|before| before != now)
            })
        };
        for (query, query_state) in self.queries.iter().zip(&mut state.queries) {
            let mut delta = SinkDelta::default();
            // Only a stateless query reads a source in images mode, and then it reads that
            // source alone.
            let truncated_first = !query.is_stateful()
                && self
                    .definition
                    .sources
                    .iter()
                    .zip(&outputs)
                    .any(|(source, output)| output.truncated_first && query.reads(&source.name));
            if truncated_first {
                delta.truncate();
            }
            let windows_due = query
                .sources
                .iter()
                .any(|source| watermark_moved(source.as_str()));
            for input in &inputs {
                let changed = query.sources.iter().any(|source| {
                    input
                        .changes
                        .get(source.as_str())
                        .is_some_and(|rows| !rows.is_empty())
                });
                if !(changed || windows_due || query_state.awaits_first_row(query)) {
                    continue;
                }
                let mut query_late = Vec::new();
                let changes = evaluate(&query.root, input, query_state, &mut query_late)
                    .and_then(|changes| changes.to_rows())
                    .map_err(|source| EvaluateError {
                        sink: query.sink.name.clone(),
                        source,
                    })?;
                delta.add(query, changes);
                late.extend(
                    query_late
                        .into_iter()
                        .map(|event| (query.sink.name.clone(), event)),
                );
            }
            if delta.null_keys > 0 {
                tracing::warn!(pipeline = %self.definition.name, sink = %query.sink.name, rows = delta.null_keys, "rows with a NULL key column skipped (Cassandra cannot store them)");
            }
            deltas.push(delta);
        }
        Ok(BatchOutput {
            deltas,
            late,
            duplicates,
        })
    }

    /// For each query whose sources all keep their rows: a delta that empties its sink table
    /// and writes the query's whole current result, evaluated afresh over those rows (empty
    /// for the other queries). The last step of a replay after a crash: a replay cuts the
    /// events into other batches, and across topics and partitions in another order, than
    /// the killed run did, so a key the killed run wrote past its checkpoint may be one the
    /// replay never passes through; rewritten whole, the table holds no such row.
    pub fn refresh(&self, state: &Checkpoint) -> Result<Vec<SinkDelta>, EvaluateError> {
        let mut deltas = Vec::with_capacity(self.queries.len());
        for query in &self.queries {
            let mut delta = SinkDelta::default();
            let rows: Option<Vec<(&str, Vec<ChangedRow>)>> = query
                .sources
                .iter()
                .map(|name| {
                    let source = state.sources.get(name)?;
                    let rows = source.current_rows()?;
                    Some((
                        name.as_str(),
                        rows.into_iter().map(|row| (row, 1)).collect::<Vec<_>>(),
                    ))
                })
                .collect();
            // A changelog source appends every event and keeps none: its results live only in
            // the state of the query's operators (counts of changes, windows), never
            // recomputed from rows.
            let appends = self.definition.sources.iter().any(|source| {
                query.reads(&source.name)
                    && (source.watermark.is_some()
                        || source.mode == crate::definition::SourceMode::Changelog)
            });
            if let (Some(rows), false) = (rows, appends) {
                let input = BatchInput::of_changes(
                    rows.iter()
                        .map(|(name, rows)| (*name, rows.as_slice()))
                        .collect(),
                );
                let mut fresh = QueryState::new(query);
                let mut late = Vec::new();
                let changes = evaluate(&query.root, &input, &mut fresh, &mut late)
                    .and_then(|changes| changes.to_rows())
                    .map_err(|source| EvaluateError {
                        sink: query.sink.name.clone(),
                        source,
                    })?;
                delta.truncate();
                delta.add(query, changes);
            }
            deltas.push(delta);
        }
        Ok(deltas)
    }

    pub fn fresh_checkpoint(&self) -> Checkpoint {
        let keyed = self.keyed_sources();
        Checkpoint {
            fingerprint: checkpoint::fingerprint(&self.definition.text),
            sources: self
                .definition
                .sources
                .iter()
                .map(|source| {
                    (
                        source.name.clone(),
                        SourceState::new(keyed.contains(&source.name.as_str())),
                    )
                })
                .collect(),
            queries: self.queries.iter().map(QueryState::new).collect(),
            ..Checkpoint::default()
        }
    }
}

/// A row with its weight, as the operators take them.
type ChangedRow = (crate::value::Row, i8);

/// Consecutive changes of one source in a batch: their rows in the source's output.
struct SourceRun {
    source: usize,
    rows: std::ops::Range<usize>,
}

/// One decoded change of a batch, with where it came from.
#[derive(Debug, Clone)]
pub struct BatchChange {
    /// Index of the source in the pipeline file.
    pub source: usize,
    /// Its Kafka partition (watermarks and changelog positions are kept per partition).
    pub partition: i32,
    pub change: SourceChange,
    /// Where cdc's event sits in what it sent, when the event says (changelog sources drop
    /// what they have seen).
    pub position: Option<crate::decode::ChangePosition>,
    /// The commit time the event carries (Unix ms).
    pub commit_time_ms: Option<i64>,
}

/// What a batch does: the writes each sink needs, in query order, and the events that came
/// too late for their window, with the sink of the query they were late for.
#[derive(Debug, Default)]
pub struct BatchOutput {
    pub deltas: Vec<SinkDelta>,
    pub late: Vec<(String, LateEvent)>,
    /// Changelog events dropped as already seen (cdc sent them again after a restart).
    pub duplicates: u64,
}
