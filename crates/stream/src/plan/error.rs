//! Why a planned query cannot be built into walflow's operators. The pipeline file's error
//! at the query ([`DefinitionError`](crate::definition::DefinitionError)) shows its Display.

use datafusion::error::DataFusionError;

use crate::windows::WindowError;

#[derive(Debug, thiserror::Error)]
pub enum PlanError {
    #[error(
        "{expr} changes from one evaluation to the next (like now() or random()): a retraction \
         would not remove what was added; use columns of the row instead"
    )]
    Volatile { expr: String },
    /// DataFusion could not simplify or compile an expression.
    #[error("{0}")]
    Expression(#[source] DataFusionError),
    #[error(transparent)]
    Window(#[from] WindowError),
    #[error("a window reads one changelog source directly (not a join or an aggregate)")]
    WindowInput,
    #[error(
        "a window needs event time: declare WATERMARK FOR <timestamp column> AS <column> - \
         INTERVAL '...' in source {source_table} (with mode = 'changelog')"
    )]
    NoEventTime { source_table: String },
    #[error(
        "the window's time must be {source_table}'s event time {event_time} (its WATERMARK \
         column), not {time}"
    )]
    WindowTimeNotEventTime {
        source_table: String,
        event_time: String,
        time: String,
    },
    #[error("one window per GROUP BY")]
    SecondWindow,
    #[error("GROUPING SETS, CUBE and ROLLUP are not supported")]
    GroupingSets,
    #[error("the table scan carries filters or a limit walflow cannot stream")]
    FilteredScan,
    #[error("{name} is not a Kafka source of this file (a sink cannot be read)")]
    NotASource { name: String },
    #[error("ORDER BY has no meaning for a table kept up to date in Cassandra; remove it")]
    OrderBy,
    #[error("LIMIT over an updating table is not supported; remove it")]
    Limit,
    #[error("window functions (OVER) are not supported in a streaming pipeline")]
    WindowFunction,
    #[error("the SELECT reads no source table: add FROM <source>")]
    NoSource,
    #[error("{plan} is not supported in a streaming pipeline")]
    UnsupportedPlan { plan: String },
    #[error("{join_type} joins are not supported yet; use an inner JOIN ... ON")]
    OuterJoin { join_type: String },
    #[error(
        "a join needs an equality between columns of its two sides, like JOIN countries c ON \
         u.country = c.name (cross joins are not supported)"
    )]
    NoJoinEquality,
    #[error("{expr} is not an aggregate walflow knows")]
    NotAnAggregate { expr: String },
    #[error(
        "aggregate {function}() cannot retract rows yet; use count, sum, avg, min, max or \
         count(DISTINCT ...)"
    )]
    NotRetractable { function: String },
    #[error("{function}() takes one argument here")]
    TooManyArguments { function: String },
    #[error(
        "{function}() gives {data_type} here, which walflow does not keep; CAST the argument to \
         BIGINT or DOUBLE"
    )]
    UnkeptType { function: String, data_type: String },
}
