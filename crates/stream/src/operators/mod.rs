//! The streaming operators, one per file. Every operator consumes and produces *changes*:
//! rows with a weight, +1 for a row that enters the result and -1 for one that leaves it.
//! An update is a -1 of the old row followed by a +1 of the new one.

pub mod accumulator;
pub mod aggregate;
pub mod join;
pub mod normalize;
pub mod session;
pub mod stateless;
pub mod watermark;
pub mod window;

#[cfg(test)]
mod proptests;

use std::collections::HashMap;

use datafusion::arrow::datatypes::SchemaRef;
use datafusion::arrow::record_batch::RecordBatch;
use datafusion::error::DataFusionError;
use serde::{Deserialize, Serialize};

use self::aggregate::AggregateState;
use self::join::JoinState;
use crate::plan::{CompiledQuery, Node};
use crate::value::{column_to_array, ColumnType, Row};

/// The state of one query's stateful nodes, by the slots the plan gave them.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct QueryState {
    pub aggregates: Vec<AggregateState>,
    pub joins: Vec<JoinState>,
    pub sessions: Vec<session::SessionState>,
}

impl QueryState {
    pub fn new(query: &CompiledQuery) -> QueryState {
        QueryState {
            aggregates: vec![AggregateState::default(); query.aggregates],
            joins: vec![JoinState::default(); query.joins],
            sessions: vec![session::SessionState::default(); query.sessions],
        }
    }

    /// Whether the query must run although no source changed: a global aggregate has its
    /// one row before any input.
    pub fn awaits_first_row(&self, query: &CompiledQuery) -> bool {
        query.has_global_aggregate && self.aggregates.iter().any(|state| state.groups() == 0)
    }
}

/// Whether a batch replays events that a crashed run may already have written.
///
/// A batch normally writes only what changed since the batch before it: the sink holds the
/// results of every earlier batch. After a crash that is not so. The run restarts from its
/// last checkpoint, but the killed run may have written batches past it, cut elsewhere. An
/// aggregate writes a group only when the batch changed it, so a group the killed run wrote
/// mid-way (a count that went up and came back, a region whose last user moved away) would
/// keep that stale row. A replay therefore writes every result the events pass through, in
/// their order: the queries run over each run of consecutive changes of one source (a join
/// meets its two sides' changes in the order they happened), and an aggregate writes its
/// groups after every row it takes ([`aggregate`]), a session window takes
/// back every session it merges. Whatever the killed run wrote, the replay writes that key
/// again, last with its current result. The runner replays until it has read past where the
/// topics ended when it started, beyond which no killed run can have read.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Replay {
    /// The sink holds the results of the batches before this one.
    #[default]
    No,
    /// The batch may hold events a killed run wrote results of.
    AfterCrash,
}

/// What one batch gives a query's dataflow.
#[derive(Debug, Default)]
pub struct BatchInput<'a> {
    /// Each source's changes (absent: none).
    pub changes: HashMap<&'a str, &'a [(Row, i8)]>,
    /// For a source with a watermark: per change, the watermark when it arrived.
    pub arrivals: HashMap<&'a str, &'a [i64]>,
    /// For a source with a watermark: its watermark after the batch (Unix microseconds).
    pub watermarks: HashMap<&'a str, i64>,
    pub replay: Replay,
}

impl<'a> BatchInput<'a> {
    pub fn of_changes(changes: HashMap<&'a str, &'a [(Row, i8)]>) -> BatchInput<'a> {
        BatchInput {
            changes,
            ..BatchInput::default()
        }
    }
}

/// Runs a query's dataflow over one batch. Returns the changes of the query's result;
/// events that came too late for their window are added to `late`.
pub fn evaluate(
    node: &Node,
    input: &BatchInput<'_>,
    state: &mut QueryState,
    late: &mut Vec<window::LateEvent>,
) -> Result<Changes, DataFusionError> {
    Ok(match node {
        Node::Source { name, schema } => {
            let rows = input
                .changes
                .get(name.as_str())
                .copied()
                .unwrap_or_default();
            let mut changes = Changes::from_rows(schema.clone(), rows)?;
            changes.arrivals = input
                .arrivals
                .get(name.as_str())
                .filter(|arrivals| arrivals.len() == rows.len())
                .map(|arrivals| arrivals.to_vec());
            changes
        }
        Node::Step { input: inner, step } => stateless::apply(
            std::slice::from_ref(step),
            evaluate(inner, input, state, late)?,
            late,
        )?,
        Node::Aggregate {
            input: inner,
            plan,
            state: slot,
        } => {
            let changes = evaluate(inner, input, state, late)?;
            let watermark = plan
                .window
                .as_ref()
                .and_then(|window| input.watermarks.get(window.source.as_str()).copied());
            state.aggregates[*slot].apply(plan, &changes, watermark, input.replay)?
        }
        Node::Session {
            input: inner,
            plan,
            session,
            state: slot,
        } => {
            let changes = evaluate(inner, input, state, late)?;
            let watermark = input.watermarks.get(session.source.as_str()).copied();
            state.sessions[*slot].apply(plan, session, &changes, watermark, input.replay, late)?
        }
        Node::Join {
            left,
            right,
            plan,
            state: slot,
        } => {
            let left = evaluate(left, input, state, late)?;
            let right = evaluate(right, input, state, late)?;
            state.joins[*slot].apply(plan, &left, &right)?
        }
    })
}

/// A batch of changes in Arrow form, each row with its weight.
#[derive(Debug, Clone)]
pub struct Changes {
    pub batch: RecordBatch,
    pub weights: Vec<i8>,
    /// Per row, the watermark of its source when it arrived (rows of a source with a
    /// watermark, until the window operator has used it).
    pub arrivals: Option<Vec<i64>>,
}

impl Changes {
    /// Builds the record batch of `schema` from rows (every column of a type
    /// [`ColumnType::from_arrow`] knows).
    pub fn from_rows(schema: SchemaRef, rows: &[(Row, i8)]) -> Result<Changes, DataFusionError> {
        let columns = schema
            .fields()
            .iter()
            .enumerate()
            .map(|(index, field)| {
                let column_type = ColumnType::from_arrow(field.data_type()).ok_or_else(|| {
                    DataFusionError::Internal(format!(
                        "column {} has type {}, which walflow does not keep",
                        field.name(),
                        field.data_type()
                    ))
                })?;
                let array = column_to_array(rows.iter().map(|(row, _)| row), index, column_type);
                // Arrow types that map to one column type (Int16 -> Int32, ...) are cast back.
                if array.data_type() != field.data_type() {
                    datafusion::arrow::compute::cast(&array, field.data_type()).map_err(Into::into)
                } else {
                    Ok(array)
                }
            })
            .collect::<Result<Vec<_>, DataFusionError>>()?;
        let options = datafusion::arrow::record_batch::RecordBatchOptions::new()
            .with_row_count(Some(rows.len()));
        let batch = RecordBatch::try_new_with_options(schema, columns, &options)?;
        Ok(Changes {
            batch,
            weights: rows.iter().map(|(_, weight)| *weight).collect(),
            arrivals: None,
        })
    }

    pub fn len(&self) -> usize {
        self.weights.len()
    }

    pub fn is_empty(&self) -> bool {
        self.weights.is_empty()
    }

    /// The rows back, with their weights.
    pub fn to_rows(&self) -> Result<Vec<(Row, i8)>, DataFusionError> {
        let columns = self.batch.columns();
        (0..self.len())
            .map(|row| {
                let values = columns
                    .iter()
                    .map(|array| {
                        crate::value::value_at(array.as_ref(), row).ok_or_else(|| {
                            DataFusionError::Internal(format!(
                                "a result column has type {}, which walflow does not keep",
                                array.data_type()
                            ))
                        })
                    })
                    .collect::<Result<Row, _>>()?;
                Ok((values, self.weights[row]))
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::definition::PipelineDefinition;
    use crate::value::Value;

    /// A histogram of group sizes: an aggregate over an aggregate, where the inner one's
    /// retractions must move rows between the outer one's groups.
    #[tokio::test]
    async fn an_aggregate_over_an_aggregate_follows_retractions() {
        let definition = PipelineDefinition::parse(
            std::path::Path::new("p.sql"),
            "CREATE TABLE users (id TEXT PRIMARY KEY, country TEXT)
               WITH (connector = 'kafka', topic = 't');
             CREATE TABLE sizes (size BIGINT PRIMARY KEY, countries BIGINT)
               WITH (connector = 'cassandra', keyspace = 'ks');
             INSERT INTO sizes SELECT n, count(*) FROM
               (SELECT country, count(*) AS n FROM users GROUP BY country) GROUP BY n;",
        )
        .unwrap();
        let query = crate::plan::compile(&definition).await.unwrap().remove(0);
        assert_eq!(query.aggregates, 2);
        let mut state = QueryState::new(&query);
        let user =
            |id: &str, country: &str| vec![Value::Text(id.into()), Value::Text(country.into())];
        let mut run = |rows: Vec<(Row, i8)>| {
            let input = BatchInput::of_changes(HashMap::from([("users", rows.as_slice())]));
            let mut out = evaluate(&query.root, &input, &mut state, &mut Vec::new())
                .unwrap()
                .to_rows()
                .unwrap();
            out.sort_by_key(|(row, weight)| (format!("{row:?}"), *weight));
            out
        };
        let first = run(vec![
            (user("a", "FR"), 1),
            (user("b", "FR"), 1),
            (user("c", "DE"), 1),
        ]);
        assert_eq!(
            first,
            vec![
                (vec![Value::Int64(1), Value::Int64(1)], 1),
                (vec![Value::Int64(2), Value::Int64(1)], 1),
            ]
        );
        // b moves to DE: FR has 1, DE has 2; the histogram keeps its shape.
        let second = run(vec![(user("b", "FR"), -1), (user("b", "DE"), 1)]);
        assert!(second.is_empty(), "{second:?}");
        // c leaves: DE has 1, FR has 1.
        let third = run(vec![(user("c", "DE"), -1)]);
        assert_eq!(
            third,
            vec![
                (vec![Value::Int64(1), Value::Int64(1)], -1),
                (vec![Value::Int64(1), Value::Int64(2)], 1),
                (vec![Value::Int64(2), Value::Int64(1)], -1),
            ]
        );
    }
}
