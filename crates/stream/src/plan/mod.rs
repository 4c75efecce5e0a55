//! From a query's SQL to what runs per micro-batch. DataFusion plans the SELECT against the
//! declared sources; walflow then splits the logical plan into the stateless steps below an
//! aggregate (filters and projections, evaluated by DataFusion over record batches), the
//! changelog aggregate itself (ours: it retracts as well as adds), and the stateless steps
//! above it. Anything else (ORDER BY, LIMIT, window functions, volatile functions) is refused
//! with the reason, since it has no meaning over an updating table.

use std::sync::Arc;

use datafusion::arrow::datatypes::SchemaRef;
use datafusion::physical_expr::PhysicalExpr;

use crate::definition::{EmitMode, SinkTable};
use crate::value::ColumnType;

mod builder;
mod compile;
mod error;
#[cfg(test)]
mod tests;

pub use compile::{compile, source_schema};
pub use error::PlanError;

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
    /// How many times the tree reads the source `name` (twice for a join of it with itself).
    pub fn reads_of(&self, name: &str) -> usize {
        match self {
            Node::Source { name: source, .. } => usize::from(source == name),
            Node::Step { input, .. }
            | Node::Aggregate { input, .. }
            | Node::Session { input, .. } => input.reads_of(name),
            Node::Join { left, right, .. } => left.reads_of(name) + right.reads_of(name),
        }
    }

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

    /// Whether the query's sources must be kept per key: a stateful query needs it, and so
    /// does one that filters. A row an update moves out of the WHERE must leave the sink,
    /// and under the default replica identity the update's event does not carry the old row
    /// to retract: only the source's own copy of it does.
    pub fn keeps_sources_keyed(&self) -> bool {
        if self.is_stateful() {
            return true;
        }
        let mut filters = false;
        self.root.visit(&mut |node| {
            filters |= matches!(
                node,
                Node::Step {
                    step: Step::Filter(_),
                    ..
                }
            );
        });
        filters
    }

    pub fn reads(&self, source: &str) -> bool {
        self.sources.iter().any(|name| name == source)
    }
}
