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
use datafusion::execution::context::{SessionConfig, SessionContext, SessionState};
use datafusion::logical_expr::utils::{conjunction, split_conjunction};
use datafusion::logical_expr::{
    BinaryExpr, Distinct, Expr, JoinType, LogicalPlan, Operator, Volatility,
};
use datafusion::physical_expr::PhysicalExpr;
use datafusion::sql::parser::Statement as DFStatement;
use datafusion::sql::sqlparser::ast::Statement;

use std::ops::ControlFlow;

use datafusion::sql::sqlparser::ast::{visit_relations, ObjectName, Spanned};

use crate::definition::{
    DefinitionError, EmitMode, LateEvents, PipelineDefinition, Position, QueryDefinition, SinkTable,
};
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
    /// Gives each row of a changelog source its event-time window(s): the row once per
    /// window, with the window's start appended as the last column.
    AssignWindows(WindowAssign),
}

#[derive(Debug, Clone)]
pub struct WindowAssign {
    /// The source whose watermark decides lateness.
    pub source: String,
    /// Event time, evaluated over the input rows.
    pub time: Arc<dyn PhysicalExpr>,
    pub size_us: i64,
    pub slide_us: i64,
    /// How long after its end a window still takes late events (0: none).
    pub allowed_lateness_us: i64,
    /// The input's columns, then `window_start`.
    pub schema: SchemaRef,
}

/// A session-window aggregate: the group column `start_group` is the session (event time
/// in, the session's start out).
#[derive(Debug, Clone)]
pub struct SessionWindow {
    pub source: String,
    pub start_group: usize,
    pub gap_us: i64,
    pub emit: EmitMode,
    pub allowed_lateness_us: i64,
}

/// An aggregate over windows: what tells it when a window is complete and can be freed.
#[derive(Debug, Clone)]
pub struct WindowedAggregate {
    pub source: String,
    /// Which group column holds the window's start.
    pub start_group: usize,
    pub size_us: i64,
    pub emit: EmitMode,
    pub allowed_lateness_us: i64,
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
    /// Set when the groups are event-time windows.
    pub window: Option<WindowedAggregate>,
}

/// An inner equi-join of two updating inputs.
#[derive(Debug, Clone)]
pub struct JoinPlan {
    /// Evaluated over the left input's batch; pairs with `right_keys` by position.
    pub left_keys: Vec<Arc<dyn PhysicalExpr>>,
    pub right_keys: Vec<Arc<dyn PhysicalExpr>>,
    /// The left input's columns, then the right input's.
    pub output_schema: SchemaRef,
}

/// The dataflow of one query: a tree whose leaves are sources. Every node turns a batch of
/// changes into a batch of changes; stateful nodes own one slot of the query's state.
#[derive(Debug, Clone)]
pub enum Node {
    /// A declared source's changes, in its declared columns.
    Source {
        name: String,
        schema: SchemaRef,
    },
    Step {
        input: Box<Node>,
        step: Step,
    },
    /// `state`: the index of its [`crate::operators::QueryState::aggregates`] entry.
    Aggregate {
        input: Box<Node>,
        plan: AggregatePlan,
        state: usize,
    },
    /// GROUP BY session(time, gap), ...: `state` indexes
    /// [`crate::operators::QueryState::sessions`].
    Session {
        input: Box<Node>,
        plan: AggregatePlan,
        session: SessionWindow,
        state: usize,
    },
    /// `state`: the index of its [`crate::operators::QueryState::joins`] entry.
    Join {
        left: Box<Node>,
        right: Box<Node>,
        plan: JoinPlan,
        state: usize,
    },
}

impl Node {
    /// A compact picture of the tree, leaves last: `filter(aggregate(scan users))`.
    pub fn describe(&self) -> String {
        match self {
            Node::Source { name, .. } => format!("scan {name}"),
            Node::Step {
                input,
                step: Step::Filter(_),
            } => format!("filter({})", input.describe()),
            Node::Step {
                input,
                step: Step::Project { .. },
            } => format!("project({})", input.describe()),
            Node::Step {
                input,
                step: Step::AssignWindows(assign),
            } => {
                let kind = if assign.size_us == assign.slide_us {
                    format!("tumble {}", crate::time::human_micros(assign.size_us))
                } else {
                    format!(
                        "hop {} every {}",
                        crate::time::human_micros(assign.size_us),
                        crate::time::human_micros(assign.slide_us)
                    )
                };
                format!("windows[{kind}]({})", input.describe())
            }
            Node::Aggregate { input, .. } => format!("aggregate({})", input.describe()),
            Node::Session { input, session, .. } => format!(
                "sessions[gap {}]({})",
                crate::time::human_micros(session.gap_us),
                input.describe()
            ),
            Node::Join { left, right, .. } => {
                format!("join({}, {})", left.describe(), right.describe())
            }
        }
    }

    /// What each stateful node of the tree keeps, one line each (for `walflow sql explain`).
    pub fn state_description(&self) -> Vec<String> {
        let mut lines = Vec::new();
        self.visit(&mut |node| match node {
            Node::Aggregate { plan, .. } => {
                let groups: Vec<String> = plan
                    .group_exprs
                    .iter()
                    .map(|expr| expr.to_string())
                    .collect();
                let calls: Vec<String> = plan
                    .calls
                    .iter()
                    .map(|call| {
                        let name = format!("{:?}", call.kind).to_lowercase();
                        let kept = match (call.kind, call.distinct) {
                            (_, true) => "a count per distinct value",
                            (AggregateKind::Count, false) => "a count",
                            (AggregateKind::Sum, false) => "a sum and a count",
                            (AggregateKind::Avg, false) => "a sum and a count",
                            (AggregateKind::Min | AggregateKind::Max, false) => {
                                "a count per value (so a retraction can find the next one)"
                            }
                        };
                        let distinct = if call.distinct { "distinct " } else { "" };
                        format!("{name}({distinct}...): {kept}")
                    })
                    .collect();
                if let Some(window) = &plan.window {
                    lines.push(format!(
                        "windows of {}: each window's groups are kept until the watermark of \
                         {} passes its end{}; then {}",
                        crate::time::human_micros(window.size_us),
                        window.source,
                        if window.allowed_lateness_us > 0 {
                            format!(
                                " plus {} of allowed lateness",
                                crate::time::human_micros(window.allowed_lateness_us)
                            )
                        } else {
                            String::new()
                        },
                        match window.emit {
                            EmitMode::OnClose => "its final row is written and its state freed",
                            EmitMode::Updating =>
                                "its state is freed (its row was written as it grew)",
                        }
                    ));
                }
                lines.push(if plan.global {
                    format!("aggregate, one row over everything: {}", calls.join("; "))
                } else {
                    format!(
                        "aggregate per group of [{}]: {}",
                        groups.join(", "),
                        calls.join("; ")
                    )
                });
            }
            Node::Join { plan, .. } => {
                let keys: Vec<String> = plan
                    .left_keys
                    .iter()
                    .zip(&plan.right_keys)
                    .map(|(left, right)| format!("{left} = {right}"))
                    .collect();
                lines.push(format!(
                    "join on [{}]: both sides' current rows, per join key",
                    keys.join(", ")
                ));
            }
            Node::Session { session, .. } => lines.push(format!(
                "sessions per key of {}: each session's accumulators (merged when an event \
                 joins two), kept until the watermark passes its last event + {}{}",
                session.source,
                crate::time::human_micros(session.gap_us),
                if session.allowed_lateness_us > 0 {
                    format!(
                        " + {} of allowed lateness",
                        crate::time::human_micros(session.allowed_lateness_us)
                    )
                } else {
                    String::new()
                }
            )),
            Node::Source { .. } | Node::Step { .. } => {}
        });
        lines
    }

    fn visit<'a>(&'a self, found: &mut impl FnMut(&'a Node)) {
        found(self);
        match self {
            Node::Source { .. } => {}
            Node::Step { input, .. }
            | Node::Aggregate { input, .. }
            | Node::Session { input, .. } => input.visit(found),
            Node::Join { left, right, .. } => {
                left.visit(found);
                right.visit(found);
            }
        }
    }
}

/// One `INSERT INTO sink SELECT ...`, ready to run.
#[derive(Debug, Clone)]
pub struct CompiledQuery {
    pub sink: SinkTable,
    pub root: Node,
    /// The source tables the query reads, each once, in the order first met.
    pub sources: Vec<String>,
    /// How many aggregate, join and session nodes the tree has (their state slots).
    pub aggregates: usize,
    pub joins: usize,
    pub sessions: usize,
    /// Some aggregate has no GROUP BY: it has its one row even before any input.
    pub has_global_aggregate: bool,
    /// For each sink column, the query output column that fills it.
    pub sink_columns_from_output: Vec<usize>,
    /// The logical plan, for `explain` and messages.
    pub logical_plan: String,
}

impl CompiledQuery {
    /// A stateful query keeps operator state, so its sources must be kept per key too
    /// (keyed mode): a retraction has to remove exactly the row that was added.
    pub fn is_stateful(&self) -> bool {
        self.aggregates + self.joins + self.sessions > 0
    }

    pub fn reads(&self, source: &str) -> bool {
        self.sources.iter().any(|name| name == source)
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
    crate::windows::rewrite_window_columns(&mut sql_query).map_err(fail)?;
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
    let root = builder.build(&plan).map_err(fail)?;
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

struct PlanBuilder<'a> {
    state: &'a SessionState,
    definition: &'a PipelineDefinition,
    /// Where the query writes: its emit and lateness options govern windows.
    sink: &'a SinkTable,
    /// State slots handed out so far.
    aggregates: usize,
    joins: usize,
    sessions: usize,
    windows: usize,
}

impl PlanBuilder<'_> {
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
        // Some functions (coalesce, nvl, ...) exist only to be rewritten by DataFusion's
        // simplifier before execution.
        let context = datafusion::optimizer::simplify_expressions::SimplifyContext::builder()
            .with_schema(Arc::new(schema.clone()))
            .build();
        let simplified = datafusion::optimizer::simplify_expressions::ExprSimplifier::new(context)
            .simplify(expr.clone())
            .map_err(|error| error.to_string())?;
        self.state
            .create_physical_expr(simplified, schema)
            .map_err(|error| error.to_string())
    }

    /// The changelog source a window reads, checking that its time is that source's
    /// event time (the column its WATERMARK is on).
    fn window_source(
        &self,
        input: &Node,
        call: &crate::windows::WindowCall,
        input_schema: &DFSchema,
    ) -> Result<String, String> {
        let mut sources = Vec::new();
        let mut joined = false;
        input.visit(&mut |node| match node {
            Node::Source { name, .. } => sources.push(name.clone()),
            Node::Join { .. } | Node::Aggregate { .. } | Node::Session { .. } => joined = true,
            Node::Step { .. } => {}
        });
        if joined || sources.len() != 1 {
            return Err(
                "a window reads one changelog source directly (not a join or an aggregate)".into(),
            );
        }
        let source = self
            .definition
            .source(&sources[0])
            .expect("a planned source is declared");
        let Some(watermark) = source.watermark else {
            return Err(format!(
                "a window needs event time: declare WATERMARK FOR <timestamp column> AS \
                 <column> - INTERVAL '...' in source {} (with mode = 'changelog')",
                source.name
            ));
        };
        let event_time = &source.columns[watermark.column].name;
        let names_event_time = match &call.time {
            Expr::Column(column) => &column.name == event_time,
            _ => false,
        };
        if !names_event_time {
            return Err(format!(
                "the window's time must be {}'s event time {event_time} (its WATERMARK column), \
                 not {}",
                source.name, call.time
            ));
        }
        let _ = input_schema;
        Ok(source.name.clone())
    }

    fn step(input: Node, step: Step) -> Node {
        Node::Step {
            input: Box::new(input),
            step,
        }
    }

    fn aggregate_node(&mut self, input: Node, plan: AggregatePlan) -> Node {
        self.aggregates += 1;
        Node::Aggregate {
            input: Box::new(input),
            plan,
            state: self.aggregates - 1,
        }
    }

    fn build(&mut self, plan: &LogicalPlan) -> Result<Node, String> {
        match plan {
            LogicalPlan::Projection(projection) => {
                let exprs = projection
                    .expr
                    .iter()
                    .map(|expr| self.physical(expr, projection.input.schema()))
                    .collect::<Result<Vec<_>, _>>()?;
                let schema = Arc::new(projection.schema.as_arrow().clone());
                let input = self.build(&projection.input)?;
                Ok(Self::step(input, Step::Project { exprs, schema }))
            }
            LogicalPlan::Filter(filter) => {
                let predicate = self.physical(&filter.predicate, filter.input.schema())?;
                let input = self.build(&filter.input)?;
                Ok(Self::step(input, Step::Filter(predicate)))
            }
            LogicalPlan::SubqueryAlias(alias) => self.build(&alias.input),
            LogicalPlan::Aggregate(aggregate) => {
                let input_schema = aggregate.input.schema();
                let mut window = None;
                for (index, expr) in aggregate.group_expr.iter().enumerate() {
                    if let Some(call) = crate::windows::window_call(expr)? {
                        if window.is_some() {
                            return Err("one window per GROUP BY".into());
                        }
                        window = Some((index, call));
                    }
                }
                let group_exprs = aggregate
                    .group_expr
                    .iter()
                    .enumerate()
                    .map(|(index, expr)| match expr {
                        Expr::GroupingSet(_) => {
                            Err("GROUPING SETS, CUBE and ROLLUP are not supported".to_owned())
                        }
                        // A session groups by event time itself (the operator turns it into
                        // the session's start).
                        _ if window
                            .as_ref()
                            .is_some_and(|(at, call)| *at == index && call.session) =>
                        {
                            self.physical(&window.as_ref().expect("checked").1.time, input_schema)
                        }
                        // The window operator appends the window's start after the input's
                        // columns.
                        _ if window.as_ref().is_some_and(|(at, _)| *at == index) => Ok(Arc::new(
                            datafusion::physical_expr::expressions::Column::new(
                                crate::windows::WINDOW_START,
                                input_schema.fields().len(),
                            ),
                        )
                            as Arc<dyn PhysicalExpr>),
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
                let mut input = self.build(&aggregate.input)?;
                let mut windowed = None;
                if let Some((start_group, call)) = window.as_ref().filter(|(_, call)| call.session)
                {
                    let source = self.window_source(&input, call, input_schema)?;
                    self.windows += 1;
                    self.sessions += 1;
                    return Ok(Node::Session {
                        input: Box::new(input),
                        plan: AggregatePlan {
                            global: false,
                            group_exprs,
                            calls,
                            output_schema,
                            window: None,
                        },
                        session: SessionWindow {
                            source,
                            start_group: *start_group,
                            gap_us: call.size_us,
                            emit: self.sink.emit,
                            allowed_lateness_us: match self.sink.late_events {
                                LateEvents::Topic => 0,
                                LateEvents::Update => self.sink.allowed_lateness_us,
                            },
                        },
                        state: self.sessions - 1,
                    });
                }
                if let Some((start_group, call)) = window {
                    let source = self.window_source(&input, &call, input_schema)?;
                    let allowed_lateness_us = match self.sink.late_events {
                        LateEvents::Topic => 0,
                        LateEvents::Update => self.sink.allowed_lateness_us,
                    };
                    let mut fields: Vec<Field> = input_schema
                        .fields()
                        .iter()
                        .map(|field| field.as_ref().clone())
                        .collect();
                    fields.push(Field::new(
                        crate::windows::WINDOW_START,
                        ColumnType::Timestamp.arrow(),
                        false,
                    ));
                    input = Self::step(
                        input,
                        Step::AssignWindows(WindowAssign {
                            source: source.clone(),
                            time: self.physical(&call.time, input_schema)?,
                            size_us: call.size_us,
                            slide_us: call.slide_us,
                            allowed_lateness_us,
                            schema: Arc::new(Schema::new(fields)),
                        }),
                    );
                    self.windows += 1;
                    windowed = Some(WindowedAggregate {
                        source,
                        start_group,
                        size_us: call.size_us,
                        emit: self.sink.emit,
                        allowed_lateness_us,
                    });
                }
                Ok(self.aggregate_node(
                    input,
                    AggregatePlan {
                        global: group_exprs.is_empty(),
                        group_exprs,
                        calls,
                        output_schema,
                        window: windowed,
                    },
                ))
            }
            LogicalPlan::Distinct(Distinct::All(input)) => {
                let schema = input.schema();
                let group_exprs = schema
                    .columns()
                    .into_iter()
                    .map(|column| self.physical(&Expr::Column(column), schema))
                    .collect::<Result<Vec<_>, _>>()?;
                let built = self.build(input)?;
                Ok(self.aggregate_node(
                    built,
                    AggregatePlan {
                        global: false,
                        group_exprs,
                        calls: Vec::new(),
                        output_schema: Arc::new(schema.as_arrow().clone()),
                        window: None,
                    },
                ))
            }
            LogicalPlan::Join(join) => self.join(join),
            LogicalPlan::TableScan(scan) => {
                if !scan.filters.is_empty() || scan.fetch.is_some() {
                    return Err(
                        "the table scan carries filters or a limit walflow cannot stream".into(),
                    );
                }
                let name = scan.table_name.table().to_owned();
                let schema = source_schema(self.definition, &name).ok_or_else(|| {
                    format!("{name} is not a Kafka source of this file (a sink cannot be read)")
                })?;
                let mut node = Node::Source {
                    name,
                    schema: schema.clone(),
                };
                if let Some(projection) = &scan.projection {
                    let exprs = projection
                        .iter()
                        .map(|&index| {
                            Arc::new(datafusion::physical_expr::expressions::Column::new(
                                schema.field(index).name(),
                                index,
                            )) as Arc<dyn PhysicalExpr>
                        })
                        .collect();
                    let schema = Arc::new(scan.projected_schema.as_arrow().clone());
                    node = Self::step(node, Step::Project { exprs, schema });
                }
                Ok(node)
            }
            LogicalPlan::Sort(_) => Err(
                "ORDER BY has no meaning for a table kept up to date in Cassandra; remove it"
                    .into(),
            ),
            LogicalPlan::Limit(_) => {
                Err("LIMIT over an updating table is not supported; remove it".into())
            }
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

    /// An inner join on equalities between the two sides; any other condition of its ON
    /// becomes a filter over the joined rows (the same thing for an inner join).
    fn join(&mut self, join: &datafusion::logical_expr::Join) -> Result<Node, String> {
        if join.join_type != JoinType::Inner {
            return Err(format!(
                "{} joins are not supported yet; use an inner JOIN ... ON",
                join.join_type
            ));
        }
        let (left_schema, right_schema) = (join.left.schema(), join.right.schema());
        let mut pairs: Vec<(Expr, Expr)> = join.on.clone();
        let mut residual: Vec<Expr> = Vec::new();
        let side_of = |expr: &Expr| -> Option<bool> {
            let columns = expr.column_refs();
            if columns.is_empty() {
                None
            } else if columns.iter().all(|column| left_schema.has_column(column)) {
                Some(true)
            } else if columns.iter().all(|column| right_schema.has_column(column)) {
                Some(false)
            } else {
                None
            }
        };
        for conjunct in join.filter.iter().flat_map(split_conjunction) {
            if let Expr::BinaryExpr(BinaryExpr {
                left,
                op: Operator::Eq,
                right,
            }) = conjunct
            {
                match (side_of(left), side_of(right)) {
                    (Some(true), Some(false)) => {
                        pairs.push((left.as_ref().clone(), right.as_ref().clone()));
                        continue;
                    }
                    (Some(false), Some(true)) => {
                        pairs.push((right.as_ref().clone(), left.as_ref().clone()));
                        continue;
                    }
                    _ => {}
                }
            }
            residual.push(conjunct.clone());
        }
        if pairs.is_empty() {
            return Err(
                "a join needs an equality between columns of its two sides, like \
                 JOIN countries c ON u.country = c.name (cross joins are not supported)"
                    .into(),
            );
        }
        let left_keys = pairs
            .iter()
            .map(|(left, _)| self.physical(left, left_schema))
            .collect::<Result<Vec<_>, _>>()?;
        let right_keys = pairs
            .iter()
            .map(|(_, right)| self.physical(right, right_schema))
            .collect::<Result<Vec<_>, _>>()?;
        let residual = conjunction(residual)
            .map(|predicate| self.physical(&predicate, &join.schema))
            .transpose()?;
        let left = self.build(&join.left)?;
        let right = self.build(&join.right)?;
        self.joins += 1;
        let node = Node::Join {
            left: Box::new(left),
            right: Box::new(right),
            plan: JoinPlan {
                left_keys,
                right_keys,
                output_schema: Arc::new(join.schema.as_arrow().clone()),
            },
            state: self.joins - 1,
        };
        Ok(match residual {
            Some(predicate) => Self::step(node, Step::Filter(predicate)),
            None => node,
        })
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

/// A planning error at the place DataFusion's diagnostic points to (the name it refused),
/// else at the query; with the diagnostic's help where the message lacks it.
fn located_error(
    definition: &PipelineDefinition,
    query: &QueryDefinition,
    error: datafusion::error::DataFusionError,
) -> DefinitionError {
    let diagnostic = error.diagnostic();
    let position = diagnostic
        .and_then(|diagnostic| diagnostic.span)
        .map(|span| Position {
            line: span.start.line,
            column: span.start.column,
        })
        .filter(|position| position.line > 0)
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

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    fn definition(query: &str) -> PipelineDefinition {
        let text = format!(
            "CREATE TABLE users (id TEXT PRIMARY KEY, country TEXT, age INT, dob TIMESTAMP)
               WITH (connector = 'kafka', topic = 't'); CREATE TABLE countries (name TEXT PRIMARY KEY, region TEXT) WITH (connector = 'kafka', topic = 'c');
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
        assert_eq!(query.sources, vec!["users".to_owned()]);
        assert_eq!(
            query.root.describe(),
            "project(filter(aggregate(filter(scan users))))"
        );
        let Node::Step { input, .. } = &query.root else {
            panic!()
        };
        let Node::Step { input, .. } = input.as_ref() else {
            panic!()
        };
        let Node::Aggregate { plan, state, .. } = input.as_ref() else {
            panic!()
        };
        assert_eq!(*state, 0);
        assert_eq!(plan.group_exprs.len(), 1);
        assert_eq!(plan.calls.len(), 2);
        assert_eq!(plan.calls[0].kind, AggregateKind::Count);
        assert!(plan.calls[0].argument.is_none());
        assert_eq!(plan.calls[1].kind, AggregateKind::Avg);
        assert!(query.is_stateful());
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

    #[tokio::test]
    async fn a_join_keeps_its_equalities_as_keys_and_the_rest_as_a_filter() {
        let query = compile_one(
            "INSERT INTO out SELECT c.region, count(*), avg(u.age) FROM users u \
             JOIN countries c ON u.country = c.name AND u.age > 17 GROUP BY c.region",
        )
        .await
        .unwrap();
        assert_eq!(
            query.sources,
            vec!["users".to_owned(), "countries".to_owned()]
        );
        assert_eq!((query.aggregates, query.joins), (1, 1));
        let mut joins = Vec::new();
        query.root.visit(&mut |node| {
            if let Node::Join { plan, .. } = node {
                joins.push(plan.left_keys.len());
            }
        });
        assert_eq!(joins, vec![1]);
        assert!(
            query
                .root
                .describe()
                .contains("filter(join(scan users, scan countries))"),
            "{}",
            query.root.describe()
        );
    }

    #[tokio::test]
    async fn joins_that_cannot_stream_yet_are_refused_with_the_reason() {
        let error = compile_one(
            "INSERT INTO out SELECT u.id, 1, 2.0 FROM users u LEFT JOIN countries c \
             ON u.country = c.name",
        )
        .await
        .unwrap_err();
        assert!(
            error.message.contains("Left joins are not supported"),
            "{error}"
        );

        let error = compile_one(
            "INSERT INTO out SELECT u.id, 1, 2.0 FROM users u JOIN countries c ON u.age > 3",
        )
        .await
        .unwrap_err();
        assert!(error.message.contains("needs an equality"), "{error}");
    }
}
