//! Property tests of the streaming operators, with DataFusion as the oracle: a random
//! changelog (inserts, updates and deletes of rows keyed by a primary key, over one or two
//! source tables) goes through [`Pipeline::apply_batch`] as Debezium JSON events, in batches
//! of random sizes, and the sink table it leaves must equal DataFusion running the same
//! SELECT from scratch over the sources' final rows. Windows compare the closed windows with
//! DataFusion's `GROUP BY date_bin(...)` over the appended rows that were not late.
//!
//! Each property runs 64 cases by default (the whole module stays well under a minute in a
//! debug build); for a longer search set proptest's own variable, for example
//! `PROPTEST_CASES=5000 cargo test -p walflow-stream --lib proptests`.

mod aggregate;
mod join;
mod window;

use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::sync::Arc;

use datafusion::arrow::datatypes::{Field, Schema};
use datafusion::arrow::record_batch::RecordBatch;
use datafusion::datasource::MemTable;
use datafusion::prelude::SessionContext;
use proptest::prelude::*;
use proptest::test_runner::{Config, TestCaseError, TestRunner};

use crate::checkpoint::Checkpoint;
use crate::decode::decode;
use crate::definition::{PipelineDefinition, SinkTable};
use crate::pipeline::{BatchChange, Pipeline, Replay};
use crate::value::{column_to_array, value_at, value_to_json, Row, Value};

/// Cases per property unless `PROPTEST_CASES` says otherwise.
const DEFAULT_CASES: u32 = 64;

/// Commit time of the generated events (2026-01-01T00:00:00Z), in Unix milliseconds.
const EPOCH_MS: i64 = 1_767_225_600_000;

/// A pipeline under test, with the runtime that compiles it and runs the oracle.
struct Harness {
    pipeline: Pipeline,
    runtime: tokio::runtime::Runtime,
}

impl Harness {
    fn new(text: &str) -> Harness {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("a current-thread runtime starts");
        let definition = PipelineDefinition::parse(Path::new("proptest.sql"), text)
            .unwrap_or_else(|error| panic!("the test pipeline parses: {error}"));
        let queries = runtime
            .block_on(crate::plan::compile(&definition))
            .unwrap_or_else(|error| panic!("the test pipeline compiles: {error}"));
        Harness {
            pipeline: Pipeline {
                definition,
                queries,
            },
            runtime,
        }
    }

    /// Runs `property` over `strategy`'s values, `DEFAULT_CASES` times (or `PROPTEST_CASES`).
    fn check<S: Strategy>(
        &self,
        strategy: S,
        property: impl Fn(&Harness, S::Value) -> Result<(), TestCaseError>,
    ) {
        let config = Config {
            cases: if std::env::var_os("PROPTEST_CASES").is_some() {
                Config::default().cases
            } else {
                DEFAULT_CASES
            },
            // A failure shrinks to a few steps (proptest's default of 256 tries stops early).
            max_shrink_iters: 4096,
            // The runner is not the macro: it knows no source file to keep failures beside.
            failure_persistence: None,
            ..Config::default()
        };
        let mut runner = TestRunner::new(config);
        if let Err(failure) = runner.run(&strategy, |value| property(self, value)) {
            panic!("{failure}");
        }
    }

    /// The events through the pipeline, cut into batches of the given sizes (cycled); one
    /// empty batch when there are none (the runner applies every batch it reads, empty or
    /// not, so a global aggregate's row exists from the start).
    fn run_in_batches(&self, events: &[Event], batch_sizes: &[usize]) -> Outcome {
        let mut state: Checkpoint = self.pipeline.fresh_checkpoint();
        let mut outcome = Outcome::new(self.pipeline.queries.len());
        self.feed(&mut state, events, batch_sizes, usize::MAX, 0, &mut outcome);
        outcome
    }

    /// A run killed (kill -9) and started again, as the runner does it: the first run
    /// checkpoints after `crash.checkpointed` batches and dies after `crash.written` (its
    /// writes up to there are in the sink); the second resumes from the checkpoint and cuts
    /// the rest of the events its own way, replaying after a crash until it has passed
    /// everything the first run read.
    fn run_with_crash(&self, events: &[Event], crash: &Crash) -> Outcome {
        let mut state: Checkpoint = self.pipeline.fresh_checkpoint();
        let mut outcome = Outcome::new(self.pipeline.queries.len());
        let sizes = &crash.first_sizes;
        let checkpointed = self.feed(
            &mut state,
            events,
            sizes,
            crash.checkpointed,
            0,
            &mut outcome,
        );
        let checkpoint = state.clone();
        let read_after = self.feed(
            &mut state,
            &events[checkpointed..],
            sizes,
            crash.written - crash.checkpointed,
            0,
            &mut outcome,
        );
        let mut state = checkpoint;
        // The late events the first run sent past its checkpoint are sent again.
        outcome.late = 0;
        // Read again, each source's events come in their order, but the sources interleave
        // otherwise (topics and partitions are read in no fixed order): all of it is replay.
        let again = interleave(&events[checkpointed..], crash.interleaving);
        let replay_ends = if crash.interleaving == 0 {
            read_after
        } else {
            again.len()
        };
        self.feed(
            &mut state,
            &again,
            &crash.second_sizes,
            usize::MAX,
            replay_ends,
            &mut outcome,
        );
        // As the runner does when the replay is over.
        let refresh = self
            .pipeline
            .refresh(&state)
            .unwrap_or_else(|error| panic!("the refresh evaluates: {error}"));
        for (table, delta) in outcome.tables.iter_mut().zip(&refresh) {
            delta.apply_to(table);
        }
        outcome
    }

    /// Applies up to `max_batches` batches of `events`, cut by `batch_sizes` (cycled), to
    /// `state` and their writes to `outcome`'s tables; a batch that starts before event
    /// `replaying_before` replays events a crashed run may have written. At least one batch
    /// (empty when there are no events) unless `max_batches` is 0. Returns how many events
    /// it applied.
    fn feed(
        &self,
        state: &mut Checkpoint,
        events: &[Event],
        batch_sizes: &[usize],
        max_batches: usize,
        replaying_before: usize,
        outcome: &mut Outcome,
    ) -> usize {
        let pipeline = &self.pipeline;
        let mut applied = 0;
        for &size in batch_sizes.iter().cycle().take(max_batches) {
            let rest = &events[applied..];
            let batch = &rest[..size.max(1).min(rest.len())];
            let replay = if applied < replaying_before {
                Replay::AfterCrash
            } else {
                Replay::No
            };
            applied += batch.len();
            let changes: Vec<BatchChange> = batch
                .iter()
                .map(|event| {
                    let source = &pipeline.definition.sources[event.source];
                    let payload = event.envelope.to_string();
                    let decoded = decode(source, Some(payload.as_bytes()))
                        .unwrap_or_else(|error| panic!("{payload} decodes: {error}"))
                        .expect("not a tombstone");
                    BatchChange {
                        source: event.source,
                        partition: 0,
                        change: decoded.change,
                        position: None,
                        commit_time_ms: decoded.commit_time_ms,
                    }
                })
                .collect();
            let output = pipeline
                .apply_batch(state, changes, None, replay)
                .unwrap_or_else(|error| panic!("the batch applies: {error}"));
            for (table, delta) in outcome.tables.iter_mut().zip(&output.deltas) {
                delta.apply_to(table);
            }
            outcome.late += output.late.len();
            if applied == events.len() {
                break;
            }
        }
        applied
    }

    /// DataFusion's answer to `sql` over the sources holding `rows` (per source, in file
    /// order, each row in its declared columns).
    fn oracle(&self, rows: &[Vec<Row>], sql: &str) -> Vec<Row> {
        let context = SessionContext::new();
        for (source, rows) in self.pipeline.definition.sources.iter().zip(rows) {
            let schema = Arc::new(Schema::new(
                source
                    .columns
                    .iter()
                    .map(|column| Field::new(&column.name, column.column_type.arrow(), true))
                    .collect::<Vec<_>>(),
            ));
            let columns = source
                .columns
                .iter()
                .enumerate()
                .map(|(index, column)| column_to_array(rows.iter(), index, column.column_type))
                .collect();
            let batch = RecordBatch::try_new(schema.clone(), columns)
                .unwrap_or_else(|error| panic!("{}'s rows make a batch: {error}", source.name));
            let table = MemTable::try_new(schema, vec![vec![batch]])
                .unwrap_or_else(|error| panic!("{}'s rows make a table: {error}", source.name));
            context
                .register_table(source.name.as_str(), Arc::new(table))
                .unwrap_or_else(|error| panic!("{} registers: {error}", source.name));
        }
        let batches = self
            .runtime
            .block_on(async { context.sql(sql).await?.collect().await })
            .unwrap_or_else(|error| panic!("DataFusion runs {sql}: {error}"));
        let mut result = Vec::new();
        for batch in &batches {
            for row in 0..batch.num_rows() {
                result.push(
                    batch
                        .columns()
                        .iter()
                        .map(|column| {
                            value_at(column.as_ref(), row).unwrap_or_else(|| {
                                panic!("DataFusion's {} is not a walflow type", column.data_type())
                            })
                        })
                        .collect(),
                );
            }
        }
        result
    }

    /// The SELECT of the pipeline's `query`-th INSERT, as DataFusion reads it.
    fn select(&self, query: usize) -> String {
        self.pipeline.definition.queries[query].query.to_string()
    }

    fn sink(&self, query: usize) -> &SinkTable {
        &self.pipeline.queries[query].sink
    }
}

/// One change event of a generated history: the source it belongs to and its envelope.
#[derive(Debug, Clone)]
struct Event {
    source: usize,
    envelope: serde_json::Value,
}

/// What the pipeline left: each query's sink table, and how many events were late.
struct Outcome {
    tables: Vec<HashMap<Row, Row>>,
    late: usize,
}

impl Outcome {
    fn new(queries: usize) -> Outcome {
        Outcome {
            tables: vec![HashMap::new(); queries],
            late: 0,
        }
    }
}

/// `events` with each source's events in their order and the sources interleaved as `seed`
/// picks (0: as given).
fn interleave(events: &[Event], seed: u64) -> Vec<Event> {
    if seed == 0 {
        return events.to_vec();
    }
    let sources = events
        .iter()
        .map(|event| event.source + 1)
        .max()
        .unwrap_or(0);
    let mut queues: Vec<std::collections::VecDeque<Event>> = vec![Default::default(); sources];
    for event in events {
        queues[event.source].push_back(event.clone());
    }
    let mut state = seed;
    let mut result = Vec::with_capacity(events.len());
    while result.len() < events.len() {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        let open: Vec<usize> = (0..sources).filter(|&s| !queues[s].is_empty()).collect();
        let pick = open[(state % open.len() as u64) as usize];
        result.extend(queues[pick].pop_front());
    }
    result
}

/// Where a run is killed and how the run after it cuts its batches
/// ([`Harness::run_with_crash`]).
#[derive(Debug, Clone)]
struct Crash {
    first_sizes: Vec<usize>,
    /// Batches of the first run before its last checkpoint.
    checkpointed: usize,
    /// Batches of the first run written before it dies (at least `checkpointed`).
    written: usize,
    second_sizes: Vec<usize>,
    /// How the run after the crash interleaves the sources (0: in the first run's order).
    interleaving: u64,
}

/// A crash anywhere in the first few batches, each run cutting batches its own way.
fn crash() -> impl Strategy<Value = Crash> {
    (
        batch_sizes(),
        0usize..6,
        0usize..6,
        batch_sizes(),
        prop_oneof![Just(0u64), 1u64..u64::MAX],
    )
        .prop_map(|(first_sizes, a, b, second_sizes, interleaving)| Crash {
            first_sizes,
            checkpointed: a.min(b),
            written: a.max(b),
            second_sizes,
            interleaving,
        })
}

/// One step of a keyed history: the row with key `id` of `source` is written or deleted,
/// or the whole source is truncated.
#[derive(Clone)]
struct Step {
    source: usize,
    id: i64,
    edit: Edit,
}

#[derive(Debug, Clone)]
enum Edit {
    /// Inserted or updated to these values of every column but the key (column 0).
    Put(Row),
    Delete,
    Truncate,
}

/// One line per step in a counterexample: `source 1, id 3 := ["a", 7, NULL]`,
/// `source 1, id 3 deleted`, `source 1 truncated`.
impl std::fmt::Debug for Step {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.edit {
            Edit::Put(row) => {
                let values: Vec<String> = row.iter().map(ToString::to_string).collect();
                let (source, id) = (self.source, self.id);
                write!(f, "source {source}, id {id} := [{}]", values.join(", "))
            }
            Edit::Delete => write!(f, "source {}, id {} deleted", self.source, self.id),
            Edit::Truncate => write!(f, "source {} truncated", self.source),
        }
    }
}

/// Steps over `sources` tables with keys `0..ids`: mostly writes, some deletes, a rare
/// truncate (shrinking turns steps into deletes, of missing keys: no event).
fn step(
    sources: usize,
    ids: i64,
    columns: impl Strategy<Value = Row>,
) -> impl Strategy<Value = Step> {
    let edit = prop_oneof![
        10 => Just(Edit::Delete),
        30 => columns.prop_map(Edit::Put),
        1 => Just(Edit::Truncate),
    ];
    (0..sources, 0..ids, edit).prop_map(|(source, id, edit)| Step { source, id, edit })
}

/// Batch sizes to cut a history with (cycled until it is consumed).
fn batch_sizes() -> impl Strategy<Value = Vec<usize>> {
    prop::collection::vec(1usize..12, 1..8)
}

/// What Postgres logs of a row's old version (the table's REPLICA IDENTITY).
#[derive(Debug, Clone, Copy, PartialEq)]
enum ReplicaIdentity {
    /// The whole old row, for updates and deletes.
    Full,
    /// The key alone (other columns NULL) for deletes; nothing for updates.
    Default,
}

fn replica_identity() -> impl Strategy<Value = ReplicaIdentity> {
    prop_oneof![Just(ReplicaIdentity::Full), Just(ReplicaIdentity::Default)]
}

/// A history's events, as Postgres would send them under `identity` (deleting a missing key
/// sends nothing, a truncate carries no row), and each source's rows at the end. Every
/// source's key is its column 0, a BIGINT.
fn replay(
    harness: &Harness,
    steps: &[Step],
    identity: ReplicaIdentity,
) -> (Vec<Event>, Vec<Vec<Row>>) {
    let sources = &harness.pipeline.definition.sources;
    let mut tables: Vec<BTreeMap<i64, Row>> = vec![BTreeMap::new(); sources.len()];
    let mut events = Vec::new();
    for (index, step) in steps.iter().enumerate() {
        let columns = &sources[step.source].columns;
        // The columns Postgres logs of `row`: all of them, or the key's (column 0) alone.
        let image = |row: &Row, key_only: bool| -> serde_json::Value {
            columns
                .iter()
                .zip(row)
                .enumerate()
                .map(|(index, (column, value))| {
                    let value = if key_only && index > 0 {
                        serde_json::Value::Null
                    } else {
                        value_to_json(value)
                    };
                    (column.name.clone(), value)
                })
                .collect::<serde_json::Map<_, _>>()
                .into()
        };
        let table = &mut tables[step.source];
        let old = table.get(&step.id).cloned();
        let (op, before, after) = match (&step.edit, old) {
            (Edit::Put(rest), old) => {
                let mut row = vec![Value::Int64(step.id)];
                row.extend(rest.iter().cloned());
                let after = image(&row, false);
                table.insert(step.id, row);
                match old {
                    None => ("c", None, Some(after)),
                    Some(old) if identity == ReplicaIdentity::Full => {
                        ("u", Some(image(&old, false)), Some(after))
                    }
                    Some(_) => ("u", None, Some(after)),
                }
            }
            (Edit::Delete, Some(old)) => {
                table.remove(&step.id);
                let key_only = identity == ReplicaIdentity::Default;
                ("d", Some(image(&old, key_only)), None)
            }
            (Edit::Delete, None) => continue,
            (Edit::Truncate, _) => {
                table.clear();
                ("t", None, None)
            }
        };
        events.push(Event {
            source: step.source,
            envelope: serde_json::json!({
                "op": op,
                "before": before,
                "after": after,
                "source": {"ts_ms": EPOCH_MS + index as i64},
            }),
        });
    }
    let rows = tables
        .into_iter()
        .map(|table| table.into_values().collect())
        .collect();
    (events, rows)
}

/// The sink table equals the oracle's rows (as Cassandra would store them: converted to the
/// sink's column types, rows with a NULL key left out), floats within a relative 1e-9.
fn assert_same_table(
    sink: &SinkTable,
    walflow: &HashMap<Row, Row>,
    oracle: Vec<Row>,
) -> Result<(), TestCaseError> {
    let mut expected: BTreeMap<Row, Row> = BTreeMap::new();
    for row in oracle {
        let row: Row = row
            .iter()
            .zip(&sink.columns)
            .map(|(value, column)| value.convert(column.column_type).unwrap_or(Value::Null))
            .collect();
        let key = sink.key_of(&row);
        if key.iter().any(Value::is_null) {
            continue;
        }
        let repeated = expected.insert(key.clone(), row);
        assert!(
            repeated.is_none(),
            "the oracle gives two rows for {} key {key:?}: the test's sink key is wrong",
            sink.name
        );
    }
    let actual: BTreeMap<&Row, &Row> = walflow.iter().collect();
    let render = |rows: &mut dyn Iterator<Item = &Row>| -> String {
        rows.map(|row| {
            let values: Vec<String> = row.iter().map(ToString::to_string).collect();
            format!("  {}\n", values.join(" | "))
        })
        .collect()
    };
    let same = actual.len() == expected.len()
        && actual
            .iter()
            .zip(&expected)
            .all(|((key, row), (oracle_key, oracle_row))| {
                *key == oracle_key
                    && row.len() == oracle_row.len()
                    && row.iter().zip(oracle_row).all(|(a, b)| nearly_equal(a, b))
            });
    if same {
        Ok(())
    } else {
        Err(TestCaseError::fail(format!(
            "{} differs from DataFusion's result\n walflow:\n{} DataFusion:\n{}",
            sink.name,
            render(&mut actual.values().copied()),
            render(&mut expected.values())
        )))
    }
}

fn nearly_equal(a: &Value, b: &Value) -> bool {
    match (a, b) {
        (Value::Float64(a), Value::Float64(b)) => {
            (a - b).abs() <= 1e-9 * a.abs().max(b.abs()).max(1.0)
        }
        _ => a == b,
    }
}
