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

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use datafusion::sql::sqlparser::ast::{
    ColumnOption, CreateTable, CreateTableOptions, Ident, ObjectName, Query, SqlOption, Statement,
    TableConstraint, TableObject,
};
use datafusion::sql::sqlparser::dialect::GenericDialect;
use datafusion::sql::sqlparser::parser::Parser;
use datafusion::sql::sqlparser::tokenizer::{Location, Token, Tokenizer};

use crate::value::ColumnType;

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

    fn add_table(
        &mut self,
        create: CreateTable,
        position: Position,
        watermarks: &[&crate::time::WatermarkClause],
    ) -> Result<(), (Option<Position>, String)> {
        let name = object_name(&create.name);
        if self.sources.iter().any(|source| source.name == name)
            || self.sinks.iter().any(|sink| sink.name == name)
        {
            return Err((None, format!("table {name} is declared twice")));
        }
        let options = table_options(&create)?;
        let mut columns = Vec::new();
        let mut primary_key = Vec::new();
        for definition in &create.columns {
            let column_name = definition.name.value.clone();
            if columns
                .iter()
                .any(|column: &Column| column.name == column_name)
            {
                return Err((
                    Some(ident_position(&definition.name)),
                    format!("column {column_name} is declared twice"),
                ));
            }
            let column_type = column_type(&definition.data_type.to_string()).ok_or_else(|| {
                (
                    Some(ident_position(&definition.name)),
                    format!(
                        "column {column_name}: type {} is not one walflow processes; use \
                         BOOLEAN, INT, BIGINT, DOUBLE, TEXT (also for uuid, numeric as text), \
                         TIMESTAMP or DATE",
                        definition.data_type
                    ),
                )
            })?;
            if definition
                .options
                .iter()
                .any(|option| matches!(option.option, ColumnOption::PrimaryKey(_)))
            {
                primary_key.push(columns.len());
            }
            columns.push(Column {
                name: column_name,
                column_type,
            });
        }
        for constraint in &create.constraints {
            if let TableConstraint::PrimaryKey(key) = constraint {
                if !primary_key.is_empty() {
                    return Err((None, format!("table {name} has two primary keys")));
                }
                for key_column in &key.columns {
                    let key_name = key_column.column.expr.to_string();
                    let key_name = key_name.trim_matches('"');
                    let index = columns
                        .iter()
                        .position(|column| column.name == key_name)
                        .ok_or_else(|| {
                            (
                                None,
                                format!(
                                    "PRIMARY KEY ({key_name}): table {name} has no column \
                                     {key_name}{}",
                                    hint_names(key_name, columns.iter().map(|c| &c.name))
                                ),
                            )
                        })?;
                    primary_key.push(index);
                }
            }
        }
        let connector = required_option(&options, "connector", &name)?;
        let changelog =
            connector == "kafka" && options.get("mode").map(String::as_str) == Some("changelog");
        if primary_key.is_empty() && !changelog {
            return Err((
                None,
                format!(
                    "table {name} needs a PRIMARY KEY: for a source, the key of the change \
                     events; for a sink, the Cassandra primary key"
                ),
            ));
        }
        if let Some(clause) = watermarks.get(1) {
            return Err((
                Some(clause.position),
                format!("table {name} has two WATERMARK clauses"),
            ));
        }
        if let Some(clause) = watermarks.first() {
            if connector != "kafka" {
                return Err((
                    Some(clause.position),
                    format!("table {name}: a WATERMARK belongs to a Kafka source, not a sink"),
                ));
            }
        }
        for (index, column) in columns.iter().enumerate() {
            let expected = match column.name.as_str() {
                OP_COLUMN => ColumnType::Text,
                COMMIT_TIME_COLUMN => ColumnType::Timestamp,
                _ => continue,
            };
            if !changelog {
                return Err((
                    Some(ident_position(&create.columns[index].name)),
                    format!(
                        "column {} is metadata of a changelog source: add mode = 'changelog' to \
                         table {name}'s WITH options, or rename the column",
                        column.name
                    ),
                ));
            }
            if column.column_type != expected {
                return Err((
                    Some(ident_position(&create.columns[index].name)),
                    format!("column {} must be {}", column.name, expected.sql()),
                ));
            }
        }
        match connector.as_str() {
            "kafka" => {
                let topic = required_option(&options, "topic", &name)?;
                let format = match options.get("format").map(String::as_str) {
                    None | Some("debezium_json") => SourceFormat::DebeziumJson,
                    Some("debezium_avro") => SourceFormat::DebeziumAvro,
                    Some(other) => {
                        return Err((
                            None,
                            format!("table {name}: format '{other}' is not known; use 'debezium_json' or 'debezium_avro'"),
                        ))
                    }
                };
                let mode = match options.get("mode").map(String::as_str) {
                    None | Some("updating") => SourceMode::Updating,
                    Some("changelog") => SourceMode::Changelog,
                    Some(other) => {
                        return Err((
                            None,
                            format!("table {name}: mode '{other}' is not known; use 'updating' (the table) or 'changelog' (the events)"),
                        ))
                    }
                };
                let idle_timeout_us = match options.get("watermark_idle_timeout") {
                    Some(text) => crate::time::interval_micros(text, None)
                        .map_err(|message| (None, format!("table {name}: watermark_idle_timeout {message}")))?,
                    None => 30 * crate::time::MICROS_PER_SECOND,
                };
                let watermark = match watermarks.first() {
                    Some(clause) => {
                        if mode != SourceMode::Changelog {
                            return Err((
                                Some(clause.position),
                                format!(
                                    "table {name}: a WATERMARK needs mode = 'changelog' (windows \
                                     count the change events, which only a changelog source reads)"
                                ),
                            ));
                        }
                        let column = columns
                            .iter()
                            .position(|column| column.name == clause.column)
                            .ok_or_else(|| {
                                (
                                    Some(clause.position),
                                    format!(
                                        "WATERMARK FOR {}: table {name} has no such column{}",
                                        clause.column,
                                        hint_names(&clause.column, columns.iter().map(|c| &c.name))
                                    ),
                                )
                            })?;
                        if columns[column].column_type != ColumnType::Timestamp {
                            return Err((
                                Some(clause.position),
                                format!(
                                    "WATERMARK FOR {}: event time must be a TIMESTAMP column \
                                     (declare {COMMIT_TIME_COLUMN} TIMESTAMP for the commit time)",
                                    clause.column
                                ),
                            ));
                        }
                        Some(Watermark {
                            column,
                            delay_us: clause.delay_us,
                            idle_timeout_us,
                        })
                    }
                    None => None,
                };
                reject_unknown_options(
                    &options,
                    &["connector", "topic", "format", "mode", "watermark_idle_timeout"],
                    &name,
                )?;
                self.sources.push(SourceTable {
                    name,
                    columns,
                    primary_key,
                    topic,
                    format,
                    mode,
                    watermark,
                    position,
                });
            }
            "cassandra" => {
                let keyspace = required_option(&options, "keyspace", &name)?;
                let table = options.get("table").cloned().unwrap_or_else(|| name.clone());
                reject_unknown_options(
                    &options,
                    &[
                        "connector",
                        "keyspace",
                        "table",
                        "emit",
                        "late_events",
                        "allowed_lateness",
                    ],
                    &name,
                )?;
                let emit = match options.get("emit").map(String::as_str) {
                    None | Some("on_close") => EmitMode::OnClose,
                    Some("updating") => EmitMode::Updating,
                    Some(other) => {
                        return Err((
                            None,
                            format!("table {name}: emit '{other}' is not known; use 'on_close' or 'updating'"),
                        ))
                    }
                };
                let late_events = match options.get("late_events").map(String::as_str) {
                    None | Some("topic") => LateEvents::Topic,
                    Some("update") => LateEvents::Update,
                    Some(other) => {
                        return Err((
                            None,
                            format!("table {name}: late_events '{other}' is not known; use 'topic' or 'update'"),
                        ))
                    }
                };
                let allowed_lateness_us = match options.get("allowed_lateness") {
                    Some(_) if late_events == LateEvents::Topic => {
                        return Err((
                            None,
                            format!("table {name}: allowed_lateness needs late_events = 'update' (with 'topic', every late event goes to the topic)"),
                        ))
                    }
                    Some(text) => crate::time::interval_micros(text, None)
                        .map_err(|message| (None, format!("table {name}: allowed_lateness {message}")))?,
                    None if late_events == LateEvents::Update => 3_600 * crate::time::MICROS_PER_SECOND,
                    None => 0,
                };
                let window_options_given = ["emit", "late_events", "allowed_lateness"]
                    .iter()
                    .any(|key| options.contains_key(*key));
                for identifier in [&keyspace, &table] {
                    if !is_plain_identifier(identifier) {
                        return Err((
                            None,
                            format!(
                                "table {name}: '{identifier}' is not a plain Cassandra name \
                                 (letters, digits and _, starting with a letter)"
                            ),
                        ));
                    }
                }
                // Cassandra folds unquoted names to lower case; the shape check looks the
                // table up in system_schema by the name as Cassandra keeps it.
                self.sinks.push(SinkTable {
                    name,
                    columns,
                    primary_key,
                    keyspace: keyspace.to_ascii_lowercase(),
                    table: table.to_ascii_lowercase(),
                    emit,
                    late_events,
                    allowed_lateness_us,
                    window_options_given,
                    position,
                });
            }
            other => {
                return Err((
                    None,
                    format!("table {name}: connector '{other}' is not known; use 'kafka' for a source or 'cassandra' for a sink"),
                ))
            }
        }
        Ok(())
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

fn table_options(
    create: &CreateTable,
) -> Result<BTreeMap<String, String>, (Option<Position>, String)> {
    let name = object_name(&create.name);
    let CreateTableOptions::With(options) = &create.table_options else {
        return Err((
            None,
            format!(
                "table {name} needs WITH (connector = 'kafka', topic = '...') for a source \
                 or WITH (connector = 'cassandra', keyspace = '...') for a sink"
            ),
        ));
    };
    let mut map = BTreeMap::new();
    for option in options {
        let SqlOption::KeyValue { key, value } = option else {
            return Err((
                None,
                format!("table {name}: write options as key = 'value'"),
            ));
        };
        let text = value.to_string();
        let text = text
            .strip_prefix('\'')
            .and_then(|inner| inner.strip_suffix('\''))
            .map(|inner| inner.replace("''", "'"))
            .unwrap_or(text);
        map.insert(key.value.to_lowercase(), text);
    }
    Ok(map)
}

fn required_option(
    options: &BTreeMap<String, String>,
    key: &str,
    table: &str,
) -> Result<String, (Option<Position>, String)> {
    options.get(key).cloned().ok_or_else(|| {
        (
            None,
            format!("table {table} needs the option {key} = '...'"),
        )
    })
}

fn reject_unknown_options(
    options: &BTreeMap<String, String>,
    known: &[&str],
    table: &str,
) -> Result<(), (Option<Position>, String)> {
    match options.keys().find(|key| !known.contains(&key.as_str())) {
        Some(unknown) => Err((
            None,
            format!(
                "table {table}: unknown option {unknown}; this connector takes {}",
                known.join(", ")
            ),
        )),
        None => Ok(()),
    }
}

fn is_plain_identifier(name: &str) -> bool {
    let mut chars = name.chars();
    chars.next().is_some_and(|c| c.is_ascii_alphabetic())
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
        && name.len() <= 48
}

/// The column type for a SQL type name as written (`VARCHAR(20)`, `DOUBLE PRECISION`, ...).
fn column_type(sql_type: &str) -> Option<ColumnType> {
    let upper = sql_type.to_uppercase();
    let base = upper.split('(').next().unwrap_or("").trim();
    Some(match base {
        "BOOLEAN" | "BOOL" => ColumnType::Boolean,
        "TINYINT" | "SMALLINT" | "INT" | "INTEGER" | "INT2" | "INT4" => ColumnType::Int32,
        "BIGINT" | "INT8" => ColumnType::Int64,
        "REAL" | "FLOAT" | "FLOAT4" | "FLOAT8" | "DOUBLE" | "DOUBLE PRECISION" => {
            ColumnType::Float64
        }
        "TEXT" | "VARCHAR" | "CHARACTER VARYING" | "CHAR" | "CHARACTER" | "STRING" | "UUID" => {
            ColumnType::Text
        }
        "TIMESTAMP"
        | "TIMESTAMPTZ"
        | "TIMESTAMP WITH TIME ZONE"
        | "TIMESTAMP WITHOUT TIME ZONE" => ColumnType::Timestamp,
        "DATE" => ColumnType::Date,
        _ => return None,
    })
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

#[cfg(test)]
mod tests {
    use super::*;

    const FILE: &str = "\
-- users per country
CREATE TABLE users (
    id TEXT,
    country VARCHAR(40),
    age INT,
    PRIMARY KEY (id)
) WITH (connector = 'kafka', topic = 'walflow.public.users', format = 'debezium_json');

CREATE TABLE by_country (country TEXT PRIMARY KEY, users BIGINT)
  WITH (connector = 'cassandra', keyspace = 'walflow', table = 'users_by_country');

INSERT INTO by_country SELECT country, count(*) FROM users GROUP BY country;
";

    fn parse(text: &str) -> Result<PipelineDefinition, DefinitionError> {
        PipelineDefinition::parse(Path::new("sql/pipelines/p.sql"), text)
    }

    #[test]
    fn sources_sinks_and_queries_are_read_with_their_positions() {
        let definition = parse(FILE).unwrap();
        assert_eq!(definition.name, "p");
        let source = &definition.sources[0];
        assert_eq!(source.topic, "walflow.public.users");
        assert_eq!(source.primary_key, vec![0]);
        assert_eq!(source.columns[1].column_type, ColumnType::Text);
        assert_eq!(source.position, Position { line: 2, column: 1 });
        let sink = &definition.sinks[0];
        assert_eq!(
            (sink.keyspace.as_str(), sink.table.as_str()),
            ("walflow", "users_by_country")
        );
        assert_eq!(sink.primary_key, vec![0]);
        assert_eq!(definition.queries[0].sink, "by_country");
        assert_eq!(
            definition.queries[0].position,
            Position {
                line: 12,
                column: 1
            }
        );
    }

    #[test]
    fn sink_names_in_mixed_case_are_the_lower_case_names_cassandra_keeps() {
        let mixed = FILE
            .replace("keyspace = 'walflow'", "keyspace = 'WalFlow'")
            .replace("table = 'users_by_country'", "table = 'Users_By_Country'");
        assert_ne!(mixed, FILE);
        let sink = &parse(&mixed).unwrap().sinks[0];
        assert_eq!(
            (sink.keyspace.as_str(), sink.table.as_str()),
            ("walflow", "users_by_country")
        );
    }

    #[test]
    fn errors_name_file_line_and_column() {
        let broken = FILE.replace("GROUP BY country;", "GROUP BY country FROM;");
        let error = parse(&broken).unwrap_err();
        assert_eq!(error.file, Path::new("sql/pipelines/p.sql"));
        assert_eq!((error.line, error.column), (12, 77), "{error}");
        assert!(
            error.to_string().starts_with("sql/pipelines/p.sql:12:77: "),
            "{error}"
        );

        let bad_type = FILE.replace("age INT", "age INTERVAL");
        let error = parse(&bad_type).unwrap_err();
        assert_eq!((error.line, error.column), (5, 5), "{error}");
        assert!(error.message.contains("type INTERVAL"), "{error}");

        let unknown_sink = FILE.replace("INSERT INTO by_country", "INSERT INTO by_contry");
        let error = parse(&unknown_sink).unwrap_err();
        assert_eq!(error.line, 12);
        assert!(
            error.message.contains("did you mean by_country?"),
            "{error}"
        );

        let no_key = FILE.replace(",\n    PRIMARY KEY (id)", "");
        let error = parse(&no_key).unwrap_err();
        assert_eq!(error.line, 2);
        assert!(error.message.contains("needs a PRIMARY KEY"), "{error}");

        let unknown_option = FILE.replace("format = 'debezium_json'", "fromat = 'debezium_json'");
        assert!(parse(&unknown_option)
            .unwrap_err()
            .message
            .contains("unknown option fromat"));
    }
}
