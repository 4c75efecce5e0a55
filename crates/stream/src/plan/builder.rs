//! A DataFusion logical plan turned into walflow's tree of nodes: stateless steps evaluated
//! by DataFusion, and the stateful operators (aggregate, join, windows) that are walflow's.

use std::sync::Arc;

use datafusion::arrow::datatypes::{Field, Schema};
use datafusion::common::tree_node::TreeNode;
use datafusion::common::DFSchema;
use datafusion::execution::context::SessionState;
use datafusion::logical_expr::utils::{conjunction, split_conjunction};
use datafusion::logical_expr::{
    BinaryExpr, Distinct, Expr, JoinType, LogicalPlan, Operator, Volatility,
};
use datafusion::physical_expr::PhysicalExpr;

use super::*;
use crate::definition::{LateEvents, PipelineDefinition, SinkTable};
use crate::value::ColumnType;

pub(super) struct PlanBuilder<'a> {
    pub(super) state: &'a SessionState,
    pub(super) definition: &'a PipelineDefinition,
    /// Where the query writes: its emit and lateness options govern windows.
    pub(super) sink: &'a SinkTable,
    /// State slots handed out so far.
    pub(super) aggregates: usize,
    pub(super) joins: usize,
    pub(super) sessions: usize,
    pub(super) windows: usize,
}

impl PlanBuilder<'_> {
    fn physical(&self, expr: &Expr, schema: &DFSchema) -> Result<Arc<dyn PhysicalExpr>, PlanError> {
        let volatile = expr
            .exists(|node| {
                Ok(matches!(node, Expr::ScalarFunction(function)
                    if function.func.signature().volatility != Volatility::Immutable))
            })
            .unwrap_or(false);
        if volatile {
            return Err(PlanError::Volatile {
                expr: expr.to_string(),
            });
        }
        // Some functions (coalesce, nvl, ...) exist only to be rewritten by DataFusion's
        // simplifier before execution.
        let context = datafusion::optimizer::simplify_expressions::SimplifyContext::builder()
            .with_schema(Arc::new(schema.clone()))
            .build();
        let simplified = datafusion::optimizer::simplify_expressions::ExprSimplifier::new(context)
            .simplify(expr.clone())
            .map_err(PlanError::Expression)?;
        self.state
            .create_physical_expr(simplified, schema)
            .map_err(PlanError::Expression)
    }

    /// The changelog source a window reads, checking that its time is that source's
    /// event time (the column its WATERMARK is on).
    fn window_source(
        &self,
        input: &Node,
        call: &crate::windows::WindowCall,
        input_schema: &DFSchema,
    ) -> Result<String, PlanError> {
        let mut sources = Vec::new();
        let mut joined = false;
        input.visit(&mut |node| match node {
            Node::Source { name, .. } => sources.push(name.clone()),
            Node::Join { .. } | Node::Aggregate { .. } | Node::Session { .. } => joined = true,
            Node::Step { .. } => {}
        });
        if joined || sources.len() != 1 {
            return Err(PlanError::WindowInput);
        }
        let source = self
            .definition
            .source(&sources[0])
            .expect("a planned source is declared");
        let Some(watermark) = source.watermark else {
            return Err(PlanError::NoEventTime {
                source_table: source.name.clone(),
            });
        };
        let event_time = &source.columns[watermark.column].name;
        let names_event_time = match &call.time {
            Expr::Column(column) => &column.name == event_time,
            _ => false,
        };
        if !names_event_time {
            return Err(PlanError::WindowTimeNotEventTime {
                source_table: source.name.clone(),
                event_time: event_time.clone(),
                time: call.time.to_string(),
            });
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

    pub(super) fn build(&mut self, plan: &LogicalPlan) -> Result<Node, PlanError> {
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
                            return Err(PlanError::SecondWindow);
                        }
                        window = Some((index, call));
                    }
                }
                let group_exprs = aggregate
                    .group_expr
                    .iter()
                    .enumerate()
                    .map(|(index, expr)| match expr {
                        Expr::GroupingSet(_) => Err(PlanError::GroupingSets),
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
                    return Err(PlanError::FilteredScan);
                }
                let name = scan.table_name.table().to_owned();
                let Some(schema) = source_schema(self.definition, &name) else {
                    return Err(PlanError::NotASource { name });
                };
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
            LogicalPlan::Sort(_) => Err(PlanError::OrderBy),
            LogicalPlan::Limit(_) => Err(PlanError::Limit),
            LogicalPlan::Window(_) => Err(PlanError::WindowFunction),
            LogicalPlan::EmptyRelation(_) | LogicalPlan::Values(_) => Err(PlanError::NoSource),
            other => Err(PlanError::UnsupportedPlan {
                plan: other.display().to_string(),
            }),
        }
    }

    /// An inner join on equalities between the two sides; any other condition of its ON
    /// becomes a filter over the joined rows (the same thing for an inner join).
    fn join(&mut self, join: &datafusion::logical_expr::Join) -> Result<Node, PlanError> {
        if join.join_type != JoinType::Inner {
            return Err(PlanError::OuterJoin {
                join_type: join.join_type.to_string(),
            });
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
            return Err(PlanError::NoJoinEquality);
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
    ) -> Result<AggregateCall, PlanError> {
        let expr = match expr {
            Expr::Alias(alias) => alias.expr.as_ref(),
            other => other,
        };
        let Expr::AggregateFunction(function) = expr else {
            return Err(PlanError::NotAnAggregate {
                expr: expr.to_string(),
            });
        };
        let name = function.func.name().to_lowercase();
        let kind = match name.as_str() {
            "count" => AggregateKind::Count,
            "sum" => AggregateKind::Sum,
            "avg" | "mean" => AggregateKind::Avg,
            "min" => AggregateKind::Min,
            "max" => AggregateKind::Max,
            other => {
                return Err(PlanError::NotRetractable {
                    function: other.to_owned(),
                })
            }
        };
        let params = &function.params;
        if params.args.len() > 1 {
            return Err(PlanError::TooManyArguments { function: name });
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
            PlanError::UnkeptType {
                function: name.clone(),
                data_type: output_field.data_type().to_string(),
            }
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
