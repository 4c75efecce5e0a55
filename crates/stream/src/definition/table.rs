//! `CREATE TABLE` in a pipeline file: its columns and primary key, then by its connector a
//! Kafka source (format, mode, watermark) or a Cassandra sink (keyspace, table, how windows
//! are written).

use datafusion::sql::sqlparser::ast::{ColumnOption, CreateTable, TableConstraint};

use super::options::TableOptions;
use super::{
    hint_names, ident_position, object_name, Column, EmitMode, LateEvents, PipelineDefinition,
    Position, SinkTable, SourceFormat, SourceMode, SourceTable, TableError, Watermark,
    COMMIT_TIME_COLUMN, OP_COLUMN,
};
use crate::time::WatermarkClause;
use crate::value::ColumnType;

/// What every table declares, whatever its connector.
struct DeclaredTable {
    name: String,
    columns: Vec<Column>,
    /// Indexes into `columns`.
    primary_key: Vec<usize>,
    options: TableOptions,
    position: Position,
}

impl PipelineDefinition {
    pub(super) fn add_table(
        &mut self,
        create: CreateTable,
        position: Position,
        watermarks: &[&WatermarkClause],
    ) -> Result<(), TableError> {
        let name = object_name(&create.name);
        if self.sources.iter().any(|source| source.name == name)
            || self.sinks.iter().any(|sink| sink.name == name)
        {
            return Err((None, format!("table {name} is declared twice")));
        }
        let options = TableOptions::of(&create)?;
        let (columns, primary_key) = declared_columns(&create, &name)?;
        let connector = options.required("connector")?.to_owned();
        let changelog = connector == "kafka" && options.get("mode") == Some("changelog");
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
        check_metadata_columns(&create, &columns, &name, changelog)?;
        let table = DeclaredTable {
            name,
            columns,
            primary_key,
            options,
            position,
        };
        match connector.as_str() {
            "kafka" => self
                .sources
                .push(kafka_source(table, watermarks.first().copied())?),
            "cassandra" => self.sinks.push(cassandra_sink(table)?),
            other => {
                return Err(table.options.error(
                    "connector",
                    format!(
                        "connector '{other}' is not known; use 'kafka' for a source or \
                         'cassandra' for a sink"
                    ),
                ))
            }
        }
        Ok(())
    }
}

/// The column list and the primary key (on a column or as a table constraint).
fn declared_columns(
    create: &CreateTable,
    name: &str,
) -> Result<(Vec<Column>, Vec<usize>), TableError> {
    let mut columns = Vec::new();
    let mut primary_key = Vec::new();
    for definition in &create.columns {
        let column_name = definition.name.value.clone();
        let at = Some(ident_position(&definition.name));
        if columns
            .iter()
            .any(|column: &Column| column.name == column_name)
        {
            return Err((at, format!("column {column_name} is declared twice")));
        }
        let column_type = column_type(&definition.data_type.to_string()).ok_or_else(|| {
            (
                at,
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
        let TableConstraint::PrimaryKey(key) = constraint else {
            continue;
        };
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
                            "PRIMARY KEY ({key_name}): table {name} has no column {key_name}{}",
                            hint_names(key_name, columns.iter().map(|c| &c.name))
                        ),
                    )
                })?;
            primary_key.push(index);
        }
    }
    Ok((columns, primary_key))
}

/// `_op` and `_commit_time` are a changelog source's metadata, of their fixed types.
fn check_metadata_columns(
    create: &CreateTable,
    columns: &[Column],
    name: &str,
    changelog: bool,
) -> Result<(), TableError> {
    for (index, column) in columns.iter().enumerate() {
        let expected = match column.name.as_str() {
            OP_COLUMN => ColumnType::Text,
            COMMIT_TIME_COLUMN => ColumnType::Timestamp,
            _ => continue,
        };
        let at = Some(ident_position(&create.columns[index].name));
        if !changelog {
            return Err((
                at,
                format!(
                    "column {} is metadata of a changelog source: add mode = 'changelog' to \
                     table {name}'s WITH options, or rename the column",
                    column.name
                ),
            ));
        }
        if column.column_type != expected {
            return Err((
                at,
                format!("column {} must be {}", column.name, expected.sql()),
            ));
        }
    }
    Ok(())
}

fn kafka_source(
    table: DeclaredTable,
    watermark: Option<&WatermarkClause>,
) -> Result<SourceTable, TableError> {
    let DeclaredTable {
        name,
        columns,
        primary_key,
        options,
        position,
    } = table;
    let topic = options.required("topic")?.to_owned();
    let format = options.choice(
        "format",
        &[
            ("debezium_json", SourceFormat::DebeziumJson),
            ("debezium_avro", SourceFormat::DebeziumAvro),
        ],
        "use 'debezium_json' or 'debezium_avro'",
    )?;
    let mode = options.choice(
        "mode",
        &[
            ("updating", SourceMode::Updating),
            ("changelog", SourceMode::Changelog),
        ],
        "use 'updating' (the table) or 'changelog' (the events)",
    )?;
    let idle_timeout_us = match options.get("watermark_idle_timeout") {
        Some(text) => crate::time::interval_micros(text, None).map_err(|message| {
            options.error(
                "watermark_idle_timeout",
                format!("watermark_idle_timeout {message}"),
            )
        })?,
        None => 30 * crate::time::MICROS_PER_SECOND,
    };
    let watermark = match watermark {
        Some(clause) => Some(source_watermark(
            clause,
            &columns,
            &name,
            mode,
            idle_timeout_us,
        )?),
        None => None,
    };
    options.reject_unknown(&[
        "connector",
        "topic",
        "format",
        "mode",
        "watermark_idle_timeout",
    ])?;
    Ok(SourceTable {
        name,
        columns,
        primary_key,
        topic,
        format,
        mode,
        watermark,
        position,
    })
}

/// `WATERMARK FOR column AS column - INTERVAL ...`: only on a changelog source, over one of
/// its TIMESTAMP columns.
fn source_watermark(
    clause: &WatermarkClause,
    columns: &[Column],
    name: &str,
    mode: SourceMode,
    idle_timeout_us: i64,
) -> Result<Watermark, TableError> {
    let at = Some(clause.position);
    if mode != SourceMode::Changelog {
        return Err((
            at,
            format!(
                "table {name}: a WATERMARK needs mode = 'changelog' (windows count the change \
                 events, which only a changelog source reads)"
            ),
        ));
    }
    let column = columns
        .iter()
        .position(|column| column.name == clause.column)
        .ok_or_else(|| {
            (
                at,
                format!(
                    "WATERMARK FOR {}: table {name} has no such column{}",
                    clause.column,
                    hint_names(&clause.column, columns.iter().map(|c| &c.name))
                ),
            )
        })?;
    if columns[column].column_type != ColumnType::Timestamp {
        return Err((
            at,
            format!(
                "WATERMARK FOR {}: event time must be a TIMESTAMP column (declare \
                 {COMMIT_TIME_COLUMN} TIMESTAMP for the commit time)",
                clause.column
            ),
        ));
    }
    Ok(Watermark {
        column,
        delay_us: clause.delay_us,
        idle_timeout_us,
    })
}

fn cassandra_sink(table: DeclaredTable) -> Result<SinkTable, TableError> {
    let DeclaredTable {
        name,
        columns,
        primary_key,
        options,
        position,
    } = table;
    let keyspace = options.required("keyspace")?.to_owned();
    let cassandra_table = options.get("table").unwrap_or(&name).to_owned();
    options.reject_unknown(&[
        "connector",
        "keyspace",
        "table",
        "emit",
        "late_events",
        "allowed_lateness",
    ])?;
    let emit = options.choice(
        "emit",
        &[
            ("on_close", EmitMode::OnClose),
            ("updating", EmitMode::Updating),
        ],
        "use 'on_close' or 'updating'",
    )?;
    let late_events = options.choice(
        "late_events",
        &[("topic", LateEvents::Topic), ("update", LateEvents::Update)],
        "use 'topic' or 'update'",
    )?;
    let allowed_lateness_us = match options.get("allowed_lateness") {
        Some(_) if late_events == LateEvents::Topic => {
            return Err(options.error(
                "allowed_lateness",
                "allowed_lateness needs late_events = 'update' (with 'topic', every late \
                 event goes to the topic)"
                    .into(),
            ))
        }
        Some(text) => crate::time::interval_micros(text, None).map_err(|message| {
            options.error("allowed_lateness", format!("allowed_lateness {message}"))
        })?,
        None if late_events == LateEvents::Update => 3_600 * crate::time::MICROS_PER_SECOND,
        None => 0,
    };
    let window_options_given = ["emit", "late_events", "allowed_lateness"]
        .iter()
        .any(|key| options.contains(key));
    for (key, identifier) in [("keyspace", &keyspace), ("table", &cassandra_table)] {
        if !is_plain_identifier(identifier) {
            return Err(options.error(
                key,
                format!(
                    "'{identifier}' is not a plain Cassandra name (letters, digits and _, \
                     starting with a letter)"
                ),
            ));
        }
    }
    // Cassandra folds unquoted names to lower case; the shape check looks the table up in
    // system_schema by the name as Cassandra keeps it.
    Ok(SinkTable {
        name,
        columns,
        primary_key,
        keyspace: keyspace.to_ascii_lowercase(),
        table: cassandra_table.to_ascii_lowercase(),
        emit,
        late_events,
        allowed_lateness_us,
        window_options_given,
        position,
    })
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
        | "TIMESTAMP WITH TIME ZONE"
        | "TIMESTAMPTZ"
        | "TIMESTAMP WITHOUT TIME ZONE" => ColumnType::Timestamp,
        "DATE" => ColumnType::Date,
        _ => return None,
    })
}
