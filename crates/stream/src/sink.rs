//! The Cassandra sink: a query's output changes folded into one write per sink key (the
//! newest wins), written as prepared INSERTs and DELETEs with bounded concurrency. Writes
//! are absolute (the row as it is now, or its absence), so writing a batch again after a
//! crash or an error is harmless: that is what lets the pipeline replay from a checkpoint.

use std::collections::HashMap;
use std::sync::Arc;

use futures_util::stream::{self, StreamExt, TryStreamExt};
use scylla::client::session::Session;
use scylla::client::session_builder::SessionBuilder;
use scylla::errors::{
    DeserializationError, ExecutionError, IntoRowsResultError, NewSessionError, PrepareError,
    RowsError,
};
use scylla::policies::timestamp_generator::MonotonicTimestampGenerator;
use scylla::statement::prepared::PreparedStatement;
use scylla::value::{CqlDate, CqlTimestamp, CqlValue, MaybeUnset};

use crate::decode::is_unavailable;
use crate::definition::SinkTable;
use crate::plan::CompiledQuery;
use crate::value::{Row, Value};

#[derive(Debug, thiserror::Error)]
pub enum SinkError {
    #[error("cannot reach Cassandra at {nodes}: {source}")]
    Connect {
        nodes: String,
        #[source]
        source: Box<NewSessionError>,
    },
    #[error("Cassandra table {keyspace}.{table} exists with another shape: {difference}; drop it (its rows are rebuilt from Kafka) or change the pipeline's declaration")]
    Shape {
        keyspace: String,
        table: String,
        difference: String,
    },
    /// A statement Cassandra did not run: a write, a schema change, a read of the schema.
    // The driver's errors are large: boxed, so every Result of the sink stays small.
    #[error("Cassandra: {0}")]
    Execution(#[source] Box<ExecutionError>),
    #[error("Cassandra: {0}")]
    Prepare(#[source] Box<PrepareError>),
    /// An existing table's columns, as `system_schema` gives them, could not be read.
    #[error("Cassandra: {0}")]
    SchemaResult(#[source] Box<IntoRowsResultError>),
    #[error("Cassandra: {0}")]
    SchemaRows(#[source] Box<RowsError>),
    #[error("Cassandra: {0}")]
    SchemaRow(#[source] Box<DeserializationError>),
    #[error("Cassandra: sink {sink} is not prepared")]
    NotPrepared { sink: String },
    /// The memory sink of the run loop's tests, told to refuse writes.
    #[error("Cassandra: the memory sink refused a write to {table}")]
    Refused { table: String },
}

macro_rules! boxed_from {
    ($($error:ty => $variant:ident),* $(,)?) => {
        $(impl From<$error> for SinkError {
            fn from(error: $error) -> SinkError {
                SinkError::$variant(Box::new(error))
            }
        })*
    };
}

boxed_from! {
    ExecutionError => Execution,
    PrepareError => Prepare,
    IntoRowsResultError => SchemaResult,
    RowsError => SchemaRows,
    DeserializationError => SchemaRow,
}

/// The pending writes of one sink: per key, the row to write or `None` to delete.
#[derive(Debug, Default)]
pub struct SinkDelta {
    pending: HashMap<Row, Option<Row>>,
    /// Empty the table before writing `pending` (a truncated source).
    pub truncate_first: bool,
    /// Rows whose key had a NULL (Cassandra cannot store them).
    pub null_keys: u64,
}

impl SinkDelta {
    pub fn len(&self) -> usize {
        self.pending.len()
    }

    pub fn is_empty(&self) -> bool {
        self.pending.is_empty() && !self.truncate_first
    }

    pub fn truncate(&mut self) {
        self.pending.clear();
        self.truncate_first = true;
    }

    /// The same writes, applied to a table held in memory (rows by key), as Cassandra would
    /// apply them.
    pub fn apply_to(&self, table: &mut HashMap<Row, Row>) {
        if self.truncate_first {
            table.clear();
        }
        for (key, row) in &self.pending {
            match row {
                Some(row) => {
                    let mut row = row.clone();
                    match table.get(key) {
                        Some(existing) => fill_unavailable(&mut row, existing),
                        // Unset columns of a new row read as null in Cassandra.
                        None => {
                            for value in &mut row {
                                if is_unavailable(value) {
                                    *value = Value::Null;
                                }
                            }
                        }
                    }
                    table.insert(key.clone(), row);
                }
                None => {
                    table.remove(key);
                }
            }
        }
    }

    /// Folds a query's output changes in, in order.
    pub fn add(&mut self, query: &CompiledQuery, changes: Vec<(Row, i8)>) {
        let sink = &query.sink;
        for (output, weight) in changes {
            let row: Row = sink
                .columns
                .iter()
                .zip(&query.sink_columns_from_output)
                .map(|(column, &from)| {
                    output
                        .get(from)
                        .and_then(|value| value.convert(column.column_type))
                        .unwrap_or(Value::Null)
                })
                .collect();
            let key = sink.key_of(&row);
            if key.iter().any(Value::is_null) {
                self.null_keys += 1;
                continue;
            }
            if weight > 0 {
                let mut row = row;
                // A newer image with unchanged TOAST values keeps what this batch already
                // knows of them.
                if let Some(Some(pending)) = self.pending.get(&key) {
                    fill_unavailable(&mut row, pending);
                }
                self.pending.insert(key, Some(row));
            } else {
                // A retraction removes the key unless a newer row for it came in this batch.
                match self.pending.get(&key) {
                    Some(Some(pending)) if pending != &row => {}
                    _ => {
                        self.pending.insert(key, None);
                    }
                }
            }
        }
    }
}

/// Replaces the unavailable values of `row` with `known`'s.
fn fill_unavailable(row: &mut Row, known: &Row) {
    for (value, known) in row.iter_mut().zip(known) {
        if is_unavailable(value) && !is_unavailable(known) {
            *value = known.clone();
        }
    }
}

/// One sink table's prepared statements.
struct PreparedSink {
    upsert: PreparedStatement,
    delete: PreparedStatement,
    truncate: String,
}

/// The replication of the keyspaces process creates unless told otherwise: one copy, which
/// suits one node (the demo, the tests), never a cluster.
pub const DEFAULT_KEYSPACE_REPLICATION: &str =
    "{'class': 'SimpleStrategy', 'replication_factor': 1}";

pub struct CassandraSink {
    session: Arc<Session>,
    prepared: HashMap<String, Arc<PreparedSink>>,
    concurrency: usize,
    keyspace_replication: String,
}

impl CassandraSink {
    pub async fn connect(
        nodes: &[String],
        concurrency: usize,
        keyspace_replication: &str,
    ) -> Result<CassandraSink, SinkError> {
        let session = SessionBuilder::new()
            .known_nodes(nodes)
            .connection_timeout(std::time::Duration::from_secs(5))
            // Later writes of a key always win, even within one microsecond.
            .timestamp_generator(Arc::new(MonotonicTimestampGenerator::new()))
            .build()
            .await
            .map_err(|source| SinkError::Connect {
                nodes: nodes.join(","),
                source: Box::new(source),
            })?;
        Ok(CassandraSink {
            session: Arc::new(session),
            prepared: HashMap::new(),
            concurrency: concurrency.max(1),
            keyspace_replication: keyspace_replication.to_owned(),
        })
    }

    pub fn session(&self) -> &Session {
        &self.session
    }

    /// Creates the keyspace and table when missing, checks the shape when present, and
    /// prepares the statements.
    pub async fn prepare(&mut self, sink: &SinkTable) -> Result<(), SinkError> {
        self.session
            .query_unpaged(
                format!(
                    "CREATE KEYSPACE IF NOT EXISTS {} WITH replication = {}",
                    sink.keyspace, self.keyspace_replication
                ),
                (),
            )
            .await?;
        let existing = self.existing_columns(sink).await?;
        if existing.is_empty() {
            self.session
                .query_unpaged(create_table_cql(sink), ())
                .await?;
        } else {
            check_shape(sink, &existing)?;
        }
        let names: Vec<&str> = sink
            .columns
            .iter()
            .map(|column| column.name.as_str())
            .collect();
        let upsert = format!(
            "INSERT INTO {}.{} ({}) VALUES ({})",
            sink.keyspace,
            sink.table,
            names
                .iter()
                .map(|name| quote(name))
                .collect::<Vec<_>>()
                .join(", "),
            vec!["?"; names.len()].join(", ")
        );
        let delete = format!(
            "DELETE FROM {}.{} WHERE {}",
            sink.keyspace,
            sink.table,
            sink.primary_key
                .iter()
                .map(|&index| format!("{} = ?", quote(&sink.columns[index].name)))
                .collect::<Vec<_>>()
                .join(" AND ")
        );
        let prepared = PreparedSink {
            upsert: self.session.prepare(upsert).await?,
            delete: self.session.prepare(delete).await?,
            truncate: format!("TRUNCATE {}.{}", sink.keyspace, sink.table),
        };
        self.prepared.insert(sink.name.clone(), Arc::new(prepared));
        Ok(())
    }

    /// Column name -> (CQL type, key kind) of an existing table; empty when it is missing.
    async fn existing_columns(
        &self,
        sink: &SinkTable,
    ) -> Result<HashMap<String, (String, String)>, SinkError> {
        let result = self
            .session
            .query_unpaged(
                "SELECT column_name, type, kind FROM system_schema.columns \
                 WHERE keyspace_name = ? AND table_name = ?",
                (sink.keyspace.as_str(), sink.table.as_str()),
            )
            .await?
            .into_rows_result()?;
        let mut columns = HashMap::new();
        for row in result.rows::<(String, String, String)>()? {
            let (name, cql_type, kind) = row?;
            columns.insert(name, (cql_type, kind));
        }
        Ok(columns)
    }

    /// Writes one sink's delta; every write is tried, the first error is returned (the
    /// caller retries the whole delta, which is harmless).
    pub async fn write(&self, sink: &SinkTable, delta: &SinkDelta) -> Result<(), SinkError> {
        let prepared =
            self.prepared
                .get(&sink.name)
                .cloned()
                .ok_or_else(|| SinkError::NotPrepared {
                    sink: sink.name.clone(),
                })?;
        if delta.truncate_first {
            self.session
                .query_unpaged(prepared.truncate.as_str(), ())
                .await?;
        }
        let writes: Vec<(bool, Vec<MaybeUnset<Option<CqlValue>>>)> = delta
            .pending
            .iter()
            .map(|(key, row)| match row {
                Some(row) => (
                    true,
                    row.iter()
                        .map(|value| {
                            if is_unavailable(value) {
                                MaybeUnset::Unset
                            } else {
                                MaybeUnset::Set(cql_value(value))
                            }
                        })
                        .collect(),
                ),
                None => (
                    false,
                    key.iter()
                        .map(|value| MaybeUnset::Set(cql_value(value)))
                        .collect(),
                ),
            })
            .collect();
        stream::iter(writes)
            .map(|(upsert, values)| {
                let session = self.session.clone();
                let prepared = prepared.clone();
                async move {
                    let statement = if upsert {
                        &prepared.upsert
                    } else {
                        &prepared.delete
                    };
                    session
                        .execute_unpaged(statement, values)
                        .await
                        .map(|_| ())
                        .map_err(SinkError::from)
                }
            })
            .buffer_unordered(self.concurrency)
            .try_collect::<()>()
            .await
    }
}

fn quote(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

pub fn create_table_cql(sink: &SinkTable) -> String {
    let columns: Vec<String> = sink
        .columns
        .iter()
        .map(|column| format!("{} {}", quote(&column.name), column.column_type.cql()))
        .collect();
    let partition = quote(&sink.columns[sink.primary_key[0]].name);
    let clustering: Vec<String> = sink.primary_key[1..]
        .iter()
        .map(|&index| quote(&sink.columns[index].name))
        .collect();
    let key = if clustering.is_empty() {
        format!("({partition})")
    } else {
        format!("(({partition}), {})", clustering.join(", "))
    };
    format!(
        "CREATE TABLE IF NOT EXISTS {}.{} ({}, PRIMARY KEY {key})",
        sink.keyspace,
        sink.table,
        columns.join(", ")
    )
}

fn check_shape(
    sink: &SinkTable,
    existing: &HashMap<String, (String, String)>,
) -> Result<(), SinkError> {
    let shape_error = |difference: String| SinkError::Shape {
        keyspace: sink.keyspace.clone(),
        table: sink.table.clone(),
        difference,
    };
    for (index, column) in sink.columns.iter().enumerate() {
        let Some((cql_type, kind)) = existing.get(&column.name) else {
            return Err(shape_error(format!("it has no column {}", column.name)));
        };
        if cql_type != column.column_type.cql() {
            return Err(shape_error(format!(
                "column {} is {cql_type} there, {} in the pipeline",
                column.name,
                column.column_type.cql()
            )));
        }
        let expected_kind = match sink.primary_key.iter().position(|&key| key == index) {
            Some(0) => "partition_key",
            Some(_) => "clustering",
            None => "regular",
        };
        if kind != expected_kind {
            return Err(shape_error(format!(
                "column {} is a {kind} column there, a {expected_kind} column in the pipeline",
                column.name
            )));
        }
    }
    if let Some(extra) = existing
        .keys()
        .find(|name| !sink.columns.iter().any(|column| &column.name == *name))
    {
        return Err(shape_error(format!(
            "it has a column {extra} the pipeline does not declare"
        )));
    }
    Ok(())
}

fn cql_value(value: &Value) -> Option<CqlValue> {
    Some(match value {
        Value::Null => return None,
        Value::Boolean(flag) => CqlValue::Boolean(*flag),
        Value::Int32(number) => CqlValue::Int(*number),
        Value::Int64(number) => CqlValue::BigInt(*number),
        Value::Float64(number) => CqlValue::Double(*number),
        Value::Text(text) => CqlValue::Text(text.clone()),
        Value::Timestamp(micros) => CqlValue::Timestamp(CqlTimestamp(micros.div_euclid(1000))),
        Value::Date(days) => CqlValue::Date(CqlDate((1u32 << 31).wrapping_add_signed(*days))),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::definition::{Column, Position};
    use crate::value::ColumnType;

    fn sink() -> SinkTable {
        SinkTable {
            name: "by_country".into(),
            columns: vec![
                Column {
                    name: "country".into(),
                    column_type: ColumnType::Text,
                },
                Column {
                    name: "n".into(),
                    column_type: ColumnType::Int64,
                },
            ],
            primary_key: vec![0],
            keyspace: "ks".into(),
            table: "by_country".into(),
            emit: crate::definition::EmitMode::OnClose,
            late_events: crate::definition::LateEvents::Topic,
            allowed_lateness_us: 0,
            window_options_given: false,
            position: Position::default(),
        }
    }

    #[test]
    fn tables_are_created_with_quoted_columns_and_the_declared_key() {
        assert_eq!(
            create_table_cql(&sink()),
            "CREATE TABLE IF NOT EXISTS ks.by_country (\"country\" text, \"n\" bigint, PRIMARY KEY (\"country\"))"
        );
    }

    #[test]
    fn a_table_of_another_shape_is_named_with_the_difference() {
        let mut existing = HashMap::new();
        existing.insert(
            "country".to_owned(),
            ("text".to_owned(), "partition_key".to_owned()),
        );
        existing.insert("n".to_owned(), ("int".to_owned(), "regular".to_owned()));
        let error = check_shape(&sink(), &existing).unwrap_err().to_string();
        assert!(
            error.contains("column n is int there, bigint in the pipeline"),
            "{error}"
        );
        existing.insert("n".to_owned(), ("bigint".to_owned(), "regular".to_owned()));
        assert!(check_shape(&sink(), &existing).is_ok());
    }
}
