//! From a query's SQL to what runs per micro-batch. DataFusion plans the SELECT against the
//! declared sources; walflow then splits the logical plan into the stateless steps below an
//! aggregate (filters and projections, evaluated by DataFusion over record batches), the
//! changelog aggregate itself (ours: it retracts as well as adds), and the stateless steps
//! above it. Anything else (ORDER BY, LIMIT, window functions, volatile functions) is refused
//! with the reason, since it has no meaning over an updating table.

use std::sync::Arc;

use datafusion::arrow::datatypes::{Field, Schema, SchemaRef};
use datafusion::common::tree_node::TreeNode;
use datafusion::common::DFSchema;
use datafusion::datasource::MemTable;
use datafusion::execution::context::{SessionContext, SessionState};
use datafusion::logical_expr::{Distinct, Expr, LogicalPlan, Volatility};
use datafusion::physical_expr::PhysicalExpr;
use datafusion::sql::parser::Statement as DFStatement;
use datafusion::sql::sqlparser::ast::Statement;

use crate::definition::{DefinitionError, PipelineDefinition, QueryDefinition, SinkTable};
use crate::value::ColumnType;

/// A stateless step over a batch of changes.
#[derive(Debug, Clone)]
pub enum Step {
    /// Keeps the rows where the predicate is true (SQL: NULL drops the row).
    Filter(Arc<dyn PhysicalExpr>),
    /// Computes new columns.
    Project {
        exprs: Vec<Arc<dyn PhysicalExpr>>,
        schema: SchemaRef,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AggregateKind {
    Count,
    Sum,
    Avg,
    Min,
    Max,
}

#[derive(Debug, Clone)]
pub struct AggregateCall {
    pub kind: AggregateKind,
    /// `None` for `count(*)`.
    pub argument: Option<Arc<dyn PhysicalExpr>>,
    pub distinct: bool,
    /// `FILTER (WHERE ...)`.
    pub filter: Option<Arc<dyn PhysicalExpr>>,
    /// The type DataFusion gives the result.
    pub output_type: ColumnType,
}

#[derive(Debug, Clone)]
pub struct AggregatePlan {
    pub group_exprs: Vec<Arc<dyn PhysicalExpr>>,
    pub calls: Vec<AggregateCall>,
    /// Group columns, then one column per call.
    pub output_schema: SchemaRef,
    /// Without GROUP BY there is always exactly one row, even over no input.
    pub global: bool,
}

/// One `INSERT INTO sink SELECT ...`, ready to run.
#[derive(Debug, Clone)]
pub struct CompiledQuery {
    pub sink: SinkTable,
    /// The source table the query reads.
    pub source: String,
    /// The source's schema: what [`Self::lower`] starts from.
    pub source_schema: SchemaRef,
    pub lower: Vec<Step>,
    pub aggregate: Option<AggregatePlan>,
    pub upper: Vec<Step>,
    /// For each sink column, the query output column that fills it.
    pub sink_columns_from_output: Vec<usize>,
    /// The logical plan, for `explain` and messages.
    pub logical_plan: String,
}

impl CompiledQuery {
    pub fn is_stateful(&self) -> bool {
        self.aggregate.is_some()
    }
}

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
    let context = SessionContext::new();
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
    let planning_error = |error: datafusion::error::DataFusionError| {
        let message = error.to_string();
        // DataFusion names the unknown column or table but not where it is.
        let position = ["No field named ", "table '"]
            .iter()
            .find_map(|marker| {
                let start = message.find(marker)? + marker.len();
                let name: String = message[start..]
                    .trim_start_matches(['"', '\'', '`'])
                    .chars()
                    .take_while(|c| c.is_alphanumeric() || *c == '_' || *c == '.')
                    .collect();
                let name = name.trim_end_matches('.').rsplit('.').next()?.to_owned();
                definition.find_word(query.position, &name)
            })
            .unwrap_or(query.position);
        definition.error_at(position, message)
    };
    let statement =
        DFStatement::Statement(Box::new(Statement::Query(Box::new(query.query.clone()))));
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
        upper: Vec::new(),
        lower: Vec::new(),
        aggregate: None,
        source: None,
    };
    builder.walk(&plan).map_err(fail)?;
    let source = builder
        .source
        .ok_or_else(|| fail("the SELECT reads no source table: add FROM <source>".into()))?;
    let source_schema = source_schema(definition, &source).ok_or_else(|| {
        fail(format!(
            "{source} is not a Kafka source of this file (a sink cannot be read)"
        ))
    })?;

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
    builder.lower.reverse();
    builder.upper.reverse();
    Ok(CompiledQuery {
        sink,
        source,
        source_schema,
        lower: builder.lower,
        aggregate: builder.aggregate,
        upper: builder.upper,
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

struct PlanBuilder<'a> {
    state: &'a SessionState,
    /// Steps above the aggregate (or all steps when there is none), top first.
    upper: Vec<Step>,
    /// Steps below the aggregate, top first.
    lower: Vec<Step>,
    aggregate: Option<AggregatePlan>,
    source: Option<String>,
}

impl PlanBuilder<'_> {
    fn steps(&mut self) -> &mut Vec<Step> {
        if self.aggregate.is_some() {
            &mut self.lower
        } else {
            &mut self.upper
        }
    }

    fn physical(&self, expr: &Expr, schema: &DFSchema) -> Result<Arc<dyn PhysicalExpr>, String> {
        let volatile = expr
            .exists(|node| {
                Ok(matches!(node, Expr::ScalarFunction(function)
                    if function.func.signature().volatility != Volatility::Immutable))
            })
            .unwrap_or(false);
        if volatile {
            return Err(format!(
                "{expr} changes from one evaluation to the next (like now() or random()): \
                 a retraction would not remove what was added; use columns of the row instead"
            ));
        }
        self.state
            .create_physical_expr(expr.clone(), schema)
            .map_err(|error| error.to_string())
    }

    fn walk(&mut self, plan: &LogicalPlan) -> Result<(), String> {
        match plan {
            LogicalPlan::Projection(projection) => {
                let exprs = projection
                    .expr
                    .iter()
                    .map(|expr| self.physical(expr, projection.input.schema()))
                    .collect::<Result<Vec<_>, _>>()?;
                let schema = Arc::new(projection.schema.as_arrow().clone());
                self.steps().push(Step::Project { exprs, schema });
                self.walk(&projection.input)
            }
            LogicalPlan::Filter(filter) => {
                let predicate = self.physical(&filter.predicate, filter.input.schema())?;
                self.steps().push(Step::Filter(predicate));
                self.walk(&filter.input)
            }
            LogicalPlan::SubqueryAlias(alias) => self.walk(&alias.input),
            LogicalPlan::Aggregate(aggregate) => {
                if self.aggregate.is_some() {
                    return Err("an aggregate over an aggregate is not supported yet".into());
                }
                let input_schema = aggregate.input.schema();
                let group_exprs = aggregate
                    .group_expr
                    .iter()
                    .map(|expr| match expr {
                        Expr::GroupingSet(_) => {
                            Err("GROUPING SETS, CUBE and ROLLUP are not supported".to_owned())
                        }
                        expr => self.physical(expr, input_schema),
                    })
                    .collect::<Result<Vec<_>, _>>()?;
                let output_schema = Arc::new(aggregate.schema.as_arrow().clone());
                let calls = aggregate
                    .aggr_expr
                    .iter()
                    .enumerate()
                    .map(|(index, expr)| {
                        let field = output_schema.field(group_exprs.len() + index);
                        self.aggregate_call(expr, input_schema, field)
                    })
                    .collect::<Result<Vec<_>, _>>()?;
                self.aggregate = Some(AggregatePlan {
                    global: group_exprs.is_empty(),
                    group_exprs,
                    calls,
                    output_schema,
                });
                self.walk(&aggregate.input)
            }
            LogicalPlan::Distinct(Distinct::All(input)) => {
                if self.aggregate.is_some() {
                    return Err("DISTINCT under an aggregate is not supported yet".into());
                }
                let schema = input.schema();
                let group_exprs = schema
                    .columns()
                    .into_iter()
                    .map(|column| self.physical(&Expr::Column(column), schema))
                    .collect::<Result<Vec<_>, _>>()?;
                self.aggregate = Some(AggregatePlan {
                    global: false,
                    group_exprs,
                    calls: Vec::new(),
                    output_schema: Arc::new(schema.as_arrow().clone()),
                });
                self.walk(input)
            }
            LogicalPlan::TableScan(scan) => {
                if self.source.is_some() {
                    return Err("a query reads one source table for now (joins come later)".into());
                }
                if let Some(projection) = &scan.projection {
                    let source_schema = scan.source.schema();
                    let exprs = projection
                        .iter()
                        .map(|&index| {
                            Arc::new(datafusion::physical_expr::expressions::Column::new(
                                source_schema.field(index).name(),
                                index,
                            )) as Arc<dyn PhysicalExpr>
                        })
                        .collect();
                    let schema = Arc::new(scan.projected_schema.as_arrow().clone());
                    self.steps().push(Step::Project { exprs, schema });
                }
                if !scan.filters.is_empty() || scan.fetch.is_some() {
                    return Err(
                        "the table scan carries filters or a limit walflow cannot stream".into(),
                    );
                }
                self.source = Some(scan.table_name.table().to_owned());
                Ok(())
            }
            LogicalPlan::Sort(_) => Err(
                "ORDER BY has no meaning for a table kept up to date in Cassandra; remove it"
                    .into(),
            ),
            LogicalPlan::Limit(_) => {
                Err("LIMIT over an updating table is not supported; remove it".into())
            }
            LogicalPlan::Join(_) => Err("joins are not supported yet".into()),
            LogicalPlan::Window(_) => {
                Err("window functions (OVER) are not supported in a streaming pipeline".into())
            }
            LogicalPlan::EmptyRelation(_) | LogicalPlan::Values(_) => {
                Err("the SELECT reads no source table: add FROM <source>".into())
            }
            other => Err(format!(
                "{} is not supported in a streaming pipeline",
                other.display()
            )),
        }
    }

    fn aggregate_call(
        &self,
        expr: &Expr,
        input_schema: &DFSchema,
        output_field: &Field,
    ) -> Result<AggregateCall, String> {
        let expr = match expr {
            Expr::Alias(alias) => alias.expr.as_ref(),
            other => other,
        };
        let Expr::AggregateFunction(function) = expr else {
            return Err(format!("{expr} is not an aggregate walflow knows"));
        };
        let name = function.func.name().to_lowercase();
        let kind = match name.as_str() {
            "count" => AggregateKind::Count,
            "sum" => AggregateKind::Sum,
            "avg" | "mean" => AggregateKind::Avg,
            "min" => AggregateKind::Min,
            "max" => AggregateKind::Max,
            other => {
                return Err(format!(
                    "aggregate {other}() cannot retract rows yet; use count, sum, avg, min, max \
                     or count(DISTINCT ...)"
                ))
            }
        };
        let params = &function.params;
        if params.args.len() > 1 {
            return Err(format!("{name}() takes one argument here"));
        }
        // count(*) arrives as count(1): a literal counts every row.
        let argument = match params.args.first() {
            Some(Expr::Literal(value, _)) if kind == AggregateKind::Count && !value.is_null() => {
                None
            }
            Some(argument) => Some(self.physical(argument, input_schema)?),
            None => None,
        };
        let filter = params
            .filter
            .as_ref()
            .map(|filter| self.physical(filter, input_schema))
            .transpose()?;
        let output_type = ColumnType::from_arrow(output_field.data_type()).ok_or_else(|| {
            format!(
                "{name}() gives {} here, which walflow does not keep; CAST the argument to \
                 BIGINT or DOUBLE",
                output_field.data_type()
            )
        })?;
        Ok(AggregateCall {
            kind,
            argument,
            distinct: params.distinct,
            filter,
            output_type,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    fn definition(query: &str) -> PipelineDefinition {
        let text = format!(
            "CREATE TABLE users (id TEXT PRIMARY KEY, country TEXT, age INT, dob TIMESTAMP)
               WITH (connector = 'kafka', topic = 't');
             CREATE TABLE out (k TEXT PRIMARY KEY, n BIGINT, a DOUBLE)
               WITH (connector = 'cassandra', keyspace = 'ks');
             {query}"
        );
        PipelineDefinition::parse(Path::new("p.sql"), &text).unwrap()
    }

    async fn compile_one(query: &str) -> Result<CompiledQuery, DefinitionError> {
        compile(&definition(query))
            .await
            .map(|mut all| all.remove(0))
    }

    #[tokio::test]
    async fn an_aggregate_splits_into_lower_steps_the_aggregate_and_upper_steps() {
        let query = compile_one(
            "INSERT INTO out SELECT country, count(*), avg(age) FROM users \
             WHERE age > 17 GROUP BY country HAVING count(*) > 1",
        )
        .await
        .unwrap();
        assert_eq!(query.source, "users");
        let aggregate = query.aggregate.as_ref().unwrap();
        assert_eq!(aggregate.group_exprs.len(), 1);
        assert_eq!(aggregate.calls.len(), 2);
        assert_eq!(aggregate.calls[0].kind, AggregateKind::Count);
        assert!(aggregate.calls[0].argument.is_none());
        assert_eq!(aggregate.calls[1].kind, AggregateKind::Avg);
        assert!(matches!(query.lower.as_slice(), [Step::Filter(_)]));
        assert!(matches!(
            query.upper.as_slice(),
            [Step::Filter(_), Step::Project { .. }]
        ));
        assert_eq!(query.sink_columns_from_output, vec![0, 1, 2]);
    }

    #[tokio::test]
    async fn what_cannot_stream_is_refused_with_the_reason_and_place() {
        let error = compile_one("INSERT INTO out SELECT id, 1, 2.0 FROM users ORDER BY id")
            .await
            .unwrap_err();
        assert!(error.message.contains("ORDER BY"), "{error}");
        assert_eq!(error.line, 5);

        let error = compile_one("INSERT INTO out SELECT contry, 1, 2.0 FROM users")
            .await
            .unwrap_err();
        assert!(error.message.contains("contry"), "{error}");
        assert_eq!((error.line, error.column), (5, 37), "{error}");

        let error = compile_one("INSERT INTO out SELECT id, 1, 2.0 FROM users WHERE dob < now()")
            .await
            .unwrap_err();
        assert!(error.message.contains("now()"), "{error}");

        let error = compile_one("INSERT INTO out SELECT id, country, 2.0 FROM users")
            .await
            .unwrap_err();
        assert!(error.message.contains("CAST"), "{error}");

        let error = compile_one("INSERT INTO out SELECT id, 1 FROM users")
            .await
            .unwrap_err();
        assert!(error.message.contains("gives 2 columns"), "{error}");
    }
}
