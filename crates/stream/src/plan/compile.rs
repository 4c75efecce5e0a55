//! A pipeline's queries planned by DataFusion against its declared sources, then built into
//! walflow's nodes; planning errors placed where DataFusion's diagnostics point.

use std::ops::ControlFlow;
use std::sync::Arc;

use datafusion::arrow::datatypes::{Field, Schema, SchemaRef};
use datafusion::datasource::MemTable;
use datafusion::execution::context::{SessionConfig, SessionContext, SessionState};
use datafusion::sql::parser::Statement as DFStatement;
use datafusion::sql::sqlparser::ast::{visit_relations, ObjectName, Spanned, Statement};

use datafusion::common::SchemaError;
use datafusion::error::DataFusionError;

use super::builder::PlanBuilder;
use super::{CompiledQuery, Node};
use crate::definition::{DefinitionError, PipelineDefinition, Position, QueryDefinition};
use crate::value::ColumnType;

pub fn source_schema(definition: &PipelineDefinition, source: &str) -> Option<SchemaRef> {
    let source = definition.source(source)?;
    Some(Arc::new(Schema::new(
        source
            .columns
            .iter()
            .map(|column| Field::new(&column.name, column.column_type.arrow(), true))
            .collect::<Vec<_>>(),
    )))
}

/// Plans every query of the file; the first error names file, line and column.
pub async fn compile(
    definition: &PipelineDefinition,
) -> Result<Vec<CompiledQuery>, DefinitionError> {
    // Spans let DataFusion's diagnostics say where in the file a name it refuses is.
    let mut config = SessionConfig::new();
    config.options_mut().sql_parser.collect_spans = true;
    let context = SessionContext::new_with_config(config);
    for function in crate::windows::functions() {
        context.register_udf(function);
    }
    for source in &definition.sources {
        let schema = source_schema(definition, &source.name).expect("declared source");
        let table = MemTable::try_new(schema, vec![vec![]])
            .map_err(|error| definition.error_at(source.position, error.to_string()))?;
        context
            .register_table(source.name.as_str(), Arc::new(table))
            .map_err(|error| definition.error_at(source.position, error.to_string()))?;
    }
    let state = context.state();
    let mut compiled = Vec::new();
    for query in &definition.queries {
        compiled.push(compile_query(definition, query, &state).await?);
    }
    Ok(compiled)
}

async fn compile_query(
    definition: &PipelineDefinition,
    query: &QueryDefinition,
    state: &SessionState,
) -> Result<CompiledQuery, DefinitionError> {
    let fail = |message: String| definition.error_at(query.position, message);
    let planning_error = |error| located_error(definition, query, error);
    refuse_undeclared_tables(definition, query)?;
    let mut sql_query = query.query.clone();
    crate::windows::rewrite_window_columns(&mut sql_query)
        .map_err(|error| fail(error.to_string()))?;
    let statement = DFStatement::Statement(Box::new(Statement::Query(Box::new(sql_query))));
    let plan = state
        .statement_to_plan(statement)
        .await
        .map_err(planning_error)?;
    let plan = state
        .analyzer()
        .execute_and_check(plan, state.config_options(), |_, _| {})
        .map_err(planning_error)?;
    let logical_plan = plan.display_indent_schema().to_string();

    let sink = definition
        .sink(&query.sink)
        .expect("checked when parsed")
        .clone();
    let mut builder = PlanBuilder {
        state,
        definition,
        sink: &sink,
        aggregates: 0,
        joins: 0,
        sessions: 0,
        windows: 0,
    };
    let root = builder
        .build(&plan)
        .map_err(|error| fail(error.to_string()))?;
    let (aggregates, joins, sessions, windows) = (
        builder.aggregates,
        builder.joins,
        builder.sessions,
        builder.windows,
    );
    if windows == 0 && sink.window_options_given {
        return Err(fail(format!(
            "sink {} sets emit, late_events or allowed_lateness, which only a windowed query \
             uses (GROUP BY tumble(...) or hop(...))",
            sink.name
        )));
    }
    let mut sources: Vec<String> = Vec::new();
    let mut has_global_aggregate = false;
    root.visit(&mut |node| match node {
        Node::Source { name, .. } if !sources.contains(name) => sources.push(name.clone()),
        Node::Aggregate { plan, .. } => has_global_aggregate |= plan.global,
        _ => {}
    });
    if sources.is_empty() {
        return Err(fail(
            "the SELECT reads no source table: add FROM <source>".into(),
        ));
    }

    // Output columns fill the sink's columns by position, or by the names listed in INSERT.
    let output_fields: Vec<Field> = plan
        .schema()
        .fields()
        .iter()
        .map(|field| field.as_ref().clone())
        .collect();
    let targets: Vec<usize> = if query.columns.is_empty() {
        (0..sink.columns.len()).collect()
    } else {
        query
            .columns
            .iter()
            .map(|name| {
                sink.columns
                    .iter()
                    .position(|column| &column.name == name)
                    .ok_or_else(|| fail(format!("sink {} has no column {name}", sink.name)))
            })
            .collect::<Result<_, _>>()?
    };
    if targets.len() != output_fields.len() {
        return Err(fail(format!(
            "the SELECT gives {} columns but sink {} takes {} ({})",
            output_fields.len(),
            sink.name,
            targets.len(),
            targets
                .iter()
                .map(|&index| sink.columns[index].name.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        )));
    }
    let mut sink_columns_from_output = vec![usize::MAX; sink.columns.len()];
    for (output_index, &sink_index) in targets.iter().enumerate() {
        let column = &sink.columns[sink_index];
        let field = &output_fields[output_index];
        let produced = ColumnType::from_arrow(field.data_type()).ok_or_else(|| {
            fail(format!(
                "output column {} ({}) has type {}, which walflow cannot write to Cassandra",
                output_index + 1,
                field.name(),
                field.data_type()
            ))
        })?;
        if !convertible(produced, column.column_type) {
            return Err(fail(format!(
                "output column {} ({}) is {} but sink column {}.{} is {}: CAST it in the SELECT",
                output_index + 1,
                field.name(),
                produced.sql(),
                sink.name,
                column.name,
                column.column_type.sql()
            )));
        }
        sink_columns_from_output[sink_index] = output_index;
    }
    if let Some(missing) = sink
        .primary_key
        .iter()
        .find(|&&index| sink_columns_from_output[index] == usize::MAX)
    {
        return Err(fail(format!(
            "the SELECT does not fill the sink's key column {}",
            sink.columns[*missing].name
        )));
    }
    Ok(CompiledQuery {
        sink,
        root,
        sources,
        aggregates,
        joins,
        sessions,
        has_global_aggregate,
        sink_columns_from_output,
        logical_plan,
    })
}

fn convertible(from: ColumnType, to: ColumnType) -> bool {
    from == to
        || matches!(
            (from, to),
            (ColumnType::Int32, ColumnType::Int64)
                | (ColumnType::Int64, ColumnType::Int32)
                | (ColumnType::Int32 | ColumnType::Int64, ColumnType::Float64)
        )
}

/// A planning error at the place DataFusion's diagnostic points to (the name it refused),
/// else at the query; with the diagnostic's help where the message lacks it.
fn located_error(
    definition: &PipelineDefinition,
    query: &QueryDefinition,
    error: DataFusionError,
) -> DefinitionError {
    let diagnostic = error.diagnostic();
    // Where DataFusion says, else (a name it refused without a span, as in GROUP BY) the
    // first place the query names that column.
    let position = diagnostic
        .and_then(|diagnostic| diagnostic.span)
        .map(|span| Position {
            line: span.start.line,
            column: span.start.column,
        })
        .filter(|position| position.line > 0)
        .or_else(|| match error.find_root() {
            DataFusionError::SchemaError(schema_error, _) => match schema_error.as_ref() {
                SchemaError::FieldNotFound { field, .. } => {
                    definition.find_word(query.position, &field.name)
                }
                _ => None,
            },
            _ => None,
        })
        .unwrap_or(query.position);
    let mut message = error.strip_backtrace();
    for help in diagnostic.iter().flat_map(|diagnostic| &diagnostic.helps) {
        if !message.contains(&help.message) {
            message.push_str(&format!("; {}", help.message));
        }
    }
    definition.error_at(position, message)
}

/// Refuses a query that reads a table the file does not declare as a source, naming the
/// sources it does declare (a CTE's name is the query's own).
fn refuse_undeclared_tables(
    definition: &PipelineDefinition,
    query: &QueryDefinition,
) -> Result<(), DefinitionError> {
    let own_names: Vec<String> = query
        .query
        .with
        .iter()
        .flat_map(|with| &with.cte_tables)
        .map(|cte| cte.alias.name.value.to_lowercase())
        .collect();
    let undeclared = visit_relations(&query.query, |relation: &ObjectName| {
        let name = crate::definition::object_name(relation);
        let known = own_names.contains(&name.to_lowercase())
            || definition
                .sources
                .iter()
                .any(|source| source.name.eq_ignore_ascii_case(&name));
        if known {
            ControlFlow::Continue(())
        } else {
            ControlFlow::Break((name, relation.span().start))
        }
    });
    let ControlFlow::Break((name, start)) = undeclared else {
        return Ok(());
    };
    let declared: Vec<&str> = definition
        .sources
        .iter()
        .map(|source| source.name.as_str())
        .collect();
    let position = Some(Position::from(start))
        .filter(|position| position.line > 0)
        .unwrap_or(query.position);
    Err(definition.error_at(
        position,
        format!(
            "table '{name}' not found; the sources this file declares (CREATE TABLE ... WITH \
             (connector = 'kafka')) are: {}",
            declared.join(", ")
        ),
    ))
}
