//! Pipeline files: what they declare (Kafka sources, Cassandra sinks, the `INSERT INTO ...
//! SELECT` queries between them), parsed with DataFusion's SQL front end (sqlparser), with
//! every error naming file, line and column.
//!
//! ```sql
//! CREATE TABLE users (id TEXT, country TEXT, PRIMARY KEY (id))
//!   WITH (connector = 'kafka', topic = 'walflow.public.users', format = 'debezium_json');
//! CREATE TABLE users_by_country (country TEXT PRIMARY KEY, users BIGINT)
//!   WITH (connector = 'cassandra', keyspace = 'walflow', table = 'users_by_country');
//! INSERT INTO users_by_country SELECT country, count(*) FROM users GROUP BY country;
//! ```

use std::path::{Path, PathBuf};

use datafusion::sql::sqlparser::ast::{Ident, ObjectName, Query, Statement, TableObject};
use datafusion::sql::sqlparser::dialect::GenericDialect;
use datafusion::sql::sqlparser::parser::Parser;
use datafusion::sql::sqlparser::tokenizer::{Location, Token, Tokenizer};

use crate::value::{ColumnType, Row};

mod options;
mod table;
#[cfg(test)]
mod tests;

/// An error about a table: where (when more precise than the statement) and what.
type TableError = (Option<Position>, String);

/// An error in a pipeline file: `file:line:col: message`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{}:{line}:{column}: {message}", file.display())]
pub struct DefinitionError {
    pub file: PathBuf,
    pub line: u64,
    pub column: u64,
    pub message: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Position {
    pub line: u64,
    pub column: u64,
}

impl From<Location> for Position {
    fn from(location: Location) -> Position {
        Position {
            line: location.line,
            column: location.column,
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct Column {
    pub name: String,
    pub column_type: ColumnType,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SourceFormat {
    /// Debezium's JSON envelope (schemas off), what `walflow cdc` writes.
    DebeziumJson,
    /// Debezium's envelope in Avro, Confluent wire format, writer schemas from the schema
    /// registry (`walflow cdc --format avro`).
    DebeziumAvro,
}

/// How a source's change events are read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SourceMode {
    /// The table the events describe: an insert adds a row, an update replaces it, a delete
    /// removes it (the default).
    Updating,
    /// The events themselves, append-only: one row per change, with the after image (the
    /// before image for a delete) and the metadata columns `_op` and `_commit_time`. What
    /// event-time windows read.
    Changelog,
}

/// The change's operation (`c`, `r`, `u`, `d`, `t`), in a changelog source.
pub const OP_COLUMN: &str = "_op";
/// The change's Postgres commit time, in a changelog source.
pub const COMMIT_TIME_COLUMN: &str = "_commit_time";

/// Event time and how far behind it the watermark trails.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Watermark {
    /// The TIMESTAMP column that holds event time (index into `columns`).
    pub column: usize,
    /// The watermark is the newest event time seen minus this.
    pub delay_us: i64,
    /// A partition without events for this long stops holding the watermark back.
    pub idle_timeout_us: i64,
}

/// A Kafka topic of change events, read as an updating table or as a changelog.
#[derive(Debug, Clone, PartialEq)]
pub struct SourceTable {
    pub name: String,
    pub columns: Vec<Column>,
    /// Indexes into `columns`.
    pub primary_key: Vec<usize>,
    pub topic: String,
    pub format: SourceFormat,
    pub mode: SourceMode,
    pub watermark: Option<Watermark>,
    pub position: Position,
}

/// When a windowed query writes a window's row.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EmitMode {
    /// Once, when the watermark passes the window's end (the default).
    OnClose,
    /// As the window grows: its row is upserted with every batch that changes it.
    Updating,
}

/// What happens to an event whose window the watermark has already closed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LateEvents {
    /// Counted and sent to the late-events topic (the default).
    Topic,
    /// Applied to its window, whose row is written again, while the window is within
    /// `allowed_lateness` of the watermark; later still, sent to the topic.
    Update,
}

/// A Cassandra table kept equal to a query's result.
#[derive(Debug, Clone, PartialEq)]
pub struct SinkTable {
    pub name: String,
    pub columns: Vec<Column>,
    /// Indexes into `columns`; the first is Cassandra's partition key.
    pub primary_key: Vec<usize>,
    pub keyspace: String,
    pub table: String,
    /// For a windowed query into this sink.
    pub emit: EmitMode,
    pub late_events: LateEvents,
    pub allowed_lateness_us: i64,
    /// Whether any of `emit`, `late_events` or `allowed_lateness` was written (they mean
    /// something for a windowed query only).
    pub window_options_given: bool,
    pub position: Position,
}

impl SinkTable {
    /// The primary-key columns of one of the sink's rows (in its columns' order).
    pub fn key_of(&self, row: &Row) -> Row {
        self.primary_key
            .iter()
            .map(|&index| row[index].clone())
            .collect()
    }
}

/// `INSERT INTO sink [(columns)] SELECT ...`.
#[derive(Debug, Clone)]
pub struct QueryDefinition {
    pub sink: String,
    /// Sink columns named in the INSERT, in order; empty: all, in declaration order.
    pub columns: Vec<String>,
    pub query: Query,
    pub position: Position,
}

/// One parsed pipeline file.
#[derive(Debug, Clone)]
pub struct PipelineDefinition {
    pub path: PathBuf,
    /// The file name without `.sql`: names the pipeline's checkpoint and consumer group.
    pub name: String,
    pub text: String,
    pub sources: Vec<SourceTable>,
    pub sinks: Vec<SinkTable>,
    pub queries: Vec<QueryDefinition>,
}

impl PipelineDefinition {
    /// The Kafka topics the sources read, each once, sorted.
    pub fn topics(&self) -> Vec<String> {
        let mut topics: Vec<String> = self
            .sources
            .iter()
            .map(|source| source.topic.clone())
            .collect();
        topics.sort();
        topics.dedup();
        topics
    }

    /// The consumer group whose committed offsets follow the pipeline's checkpoints.
    pub fn consumer_group(&self) -> String {
        format!("walflow-process-{}", self.name)
    }

    pub fn load(path: &Path) -> Result<PipelineDefinition, DefinitionError> {
        let text = std::fs::read_to_string(path).map_err(|error| DefinitionError {
            file: path.to_owned(),
            line: 1,
            column: 1,
            message: format!("cannot read the pipeline file: {error}"),
        })?;
        PipelineDefinition::parse(path, &text)
    }

    pub fn parse(path: &Path, text: &str) -> Result<PipelineDefinition, DefinitionError> {
        let name = path
            .file_stem()
            .map(|stem| stem.to_string_lossy().into_owned())
            .unwrap_or_else(|| "pipeline".to_owned());
        let error = |position: Position, message: String| DefinitionError {
            file: path.to_owned(),
            line: position.line.max(1),
            column: position.column.max(1),
            message,
        };
        let dialect = GenericDialect {};
        let (parsed_text, watermarks) = crate::time::extract_watermarks(text)
            .map_err(|(position, message)| error(position, message))?;
        let text_for_parser = parsed_text.as_str();
        let starts = statement_starts(text_for_parser, &dialect)
            .map_err(|(position, message)| error(position, message))?;
        let statements = Parser::new(&dialect)
            .try_with_sql(text_for_parser)
            .and_then(|mut parser| parser.parse_statements())
            .map_err(|parse_error| {
                let (position, message) = split_parser_message(&parse_error.to_string());
                error(position, message)
            })?;
        let mut definition = PipelineDefinition {
            path: path.to_owned(),
            name,
            text: text.to_owned(),
            sources: Vec::new(),
            sinks: Vec::new(),
            queries: Vec::new(),
        };
        for (index, statement) in statements.into_iter().enumerate() {
            let position = starts.get(index).copied().unwrap_or_default();
            let next_start = starts.get(index + 1).copied();
            let statement_watermarks: Vec<&crate::time::WatermarkClause> = watermarks
                .iter()
                .filter(|clause| {
                    (clause.position.line, clause.position.column)
                        >= (position.line, position.column)
                        && next_start.is_none_or(|next| {
                            (clause.position.line, clause.position.column)
                                < (next.line, next.column)
                        })
                })
                .collect();
            if !statement_watermarks.is_empty() && !matches!(statement, Statement::CreateTable(_)) {
                return Err(error(
                    statement_watermarks[0].position,
                    "WATERMARK FOR belongs in the column list of a source's CREATE TABLE".into(),
                ));
            }
            match statement {
                Statement::CreateTable(create) => definition
                    .add_table(create, position, &statement_watermarks)
                    .map_err(|(at, message)| {
                        error(at.filter(|at| at.line > 0).unwrap_or(position), message)
                    })?,
                Statement::Insert(insert) => {
                    let TableObject::TableName(table) = &insert.table else {
                        return Err(error(
                            position,
                            "INSERT INTO needs a sink table's name".into(),
                        ));
                    };
                    let sink = object_name(table);
                    if !definition
                        .sinks
                        .iter()
                        .any(|declared| declared.name == sink)
                    {
                        return Err(error(
                            position,
                            format!(
                                "INSERT INTO {sink}: no sink table of that name is declared \
                                 above (declare it with CREATE TABLE {sink} (...) WITH \
                                 (connector = 'cassandra', ...)){}",
                                hint_names(&sink, definition.sinks.iter().map(|s| &s.name))
                            ),
                        ));
                    }
                    let Some(query) = insert.source else {
                        return Err(error(
                            position,
                            format!("INSERT INTO {sink} needs a SELECT"),
                        ));
                    };
                    definition.queries.push(QueryDefinition {
                        sink,
                        columns: insert.columns.iter().map(object_name).collect(),
                        query: *query,
                        position,
                    });
                }
                other => {
                    let kind = other.to_string();
                    let kind: String = kind
                        .split_whitespace()
                        .take(2)
                        .collect::<Vec<_>>()
                        .join(" ");
                    return Err(error(
                        position,
                        format!(
                            "a pipeline file holds CREATE TABLE and INSERT INTO ... SELECT \
                             statements, not `{kind} ...`"
                        ),
                    ));
                }
            }
        }
        if definition.queries.is_empty() {
            return Err(error(
                Position { line: 1, column: 1 },
                "the file has no INSERT INTO ... SELECT: nothing would run".into(),
            ));
        }
        Ok(definition)
    }

    pub fn source(&self, name: &str) -> Option<&SourceTable> {
        self.sources.iter().find(|source| source.name == name)
    }

    pub fn sink(&self, name: &str) -> Option<&SinkTable> {
        self.sinks.iter().find(|sink| sink.name == name)
    }

    /// An error at `position` of this file.
    pub fn error_at(&self, position: Position, message: impl Into<String>) -> DefinitionError {
        DefinitionError {
            file: self.path.clone(),
            line: position.line.max(1),
            column: position.column.max(1),
            message: message.into(),
        }
    }

    /// Where `word` first appears as a whole word at or after `from`, for errors about a
    /// name the SQL planner rejected without saying where.
    pub fn find_word(&self, from: Position, word: &str) -> Option<Position> {
        let lower_word = word.to_lowercase();
        if lower_word.is_empty() {
            return None;
        }
        for (line_index, line) in self.text.lines().enumerate() {
            let line_number = line_index as u64 + 1;
            if line_number < from.line {
                continue;
            }
            let lower = line.to_lowercase();
            let mut search_from = 0;
            while let Some(found) = lower[search_from..].find(&lower_word) {
                let start = search_from + found;
                let end = start + lower_word.len();
                let before_ok = !lower[..start]
                    .chars()
                    .next_back()
                    .is_some_and(|c| c.is_alphanumeric() || c == '_');
                let after_ok = !lower[end..]
                    .chars()
                    .next()
                    .is_some_and(|c| c.is_alphanumeric() || c == '_');
                let column = lower[..start].chars().count() as u64 + 1;
                if before_ok && after_ok && (line_number > from.line || column >= from.column) {
                    return Some(Position {
                        line: line_number,
                        column,
                    });
                }
                search_from = end;
            }
        }
        None
    }
}

/// The line and column where each statement starts (its first token).
fn statement_starts(
    text: &str,
    dialect: &GenericDialect,
) -> Result<Vec<Position>, (Position, String)> {
    let tokens = Tokenizer::new(dialect, text)
        .tokenize_with_location()
        .map_err(|error| (Position::from(error.location), error.message.clone()))?;
    let mut starts = Vec::new();
    let mut in_statement = false;
    for token in tokens {
        match token.token {
            Token::Whitespace(_) | Token::EOF => {}
            Token::SemiColon => in_statement = false,
            _ if !in_statement => {
                starts.push(Position::from(token.span.start));
                in_statement = true;
            }
            _ => {}
        }
    }
    Ok(starts)
}

/// sqlparser ends its messages with " at Line: L, Column: C".
fn split_parser_message(message: &str) -> (Position, String) {
    let message = message
        .strip_prefix("sql parser error: ")
        .unwrap_or(message);
    if let Some(at) = message.rfind(" at Line: ") {
        let tail = &message[at + " at Line: ".len()..];
        let mut parts = tail.split(", Column: ");
        let line = parts.next().and_then(|line| line.trim().parse().ok());
        let column = parts.next().and_then(|column| {
            column
                .trim()
                .trim_end_matches(|c: char| !c.is_ascii_digit())
                .parse()
                .ok()
        });
        if let (Some(line), Some(column)) = (line, column) {
            return (Position { line, column }, message[..at].to_owned());
        }
    }
    (Position { line: 1, column: 1 }, message.to_owned())
}

fn ident_position(ident: &Ident) -> Position {
    Position::from(ident.span.start)
}

pub fn object_name(name: &ObjectName) -> String {
    name.0
        .iter()
        .map(|part| match part.as_ident() {
            Some(ident) => ident.value.clone(),
            None => part.to_string(),
        })
        .collect::<Vec<_>>()
        .join(".")
}

/// ", did you mean x?" when a known name is close to `name`.
pub fn hint_names<'a>(name: &str, known: impl Iterator<Item = &'a String>) -> String {
    let mut best: Option<(usize, &String)> = None;
    for candidate in known {
        let distance = strsim::levenshtein(&name.to_lowercase(), &candidate.to_lowercase());
        if distance <= 2.max(name.len() / 3) && best.is_none_or(|(d, _)| distance < d) {
            best = Some((distance, candidate));
        }
    }
    best.map(|(_, candidate)| format!("; did you mean {candidate}?"))
        .unwrap_or_default()
}
