//! Event-time windows in a pipeline's SQL: `GROUP BY tumble(time, size)`, `hop(time, slide,
//! size)` or `session(time, gap)`, with `window_start` and `window_end` usable in the SELECT
//! (a session's end is its last event plus the gap: `max(time) + gap`).
//!
//! DataFusion plans the query with `tumble` and `hop` as scalar functions (registered here:
//! their value is a window's start), after `window_start` and `window_end` are rewritten
//! into the window call (and the call plus its size). walflow's planner then replaces the
//! call by its window operator, which gives every row its window(s), and makes the
//! aggregate above it emit and free windows as the watermark passes them.

use std::sync::Arc;

use datafusion::arrow::datatypes::{DataType, TimeUnit};
use datafusion::common::ScalarValue;
use datafusion::error::{DataFusionError, Result as DataFusionResult};
use datafusion::logical_expr::{
    ColumnarValue, Expr, ScalarFunctionArgs, ScalarUDF, ScalarUDFImpl, Signature, Volatility,
};
use datafusion::sql::sqlparser::ast::{
    self as sql, BinaryOperator, FunctionArg, FunctionArgExpr, FunctionArguments, GroupByExpr,
    Ident, SetExpr,
};

pub const TUMBLE: &str = "tumble";
pub const HOP: &str = "hop";
pub const SESSION: &str = "session";
pub const WINDOW_START: &str = "window_start";
pub const WINDOW_END: &str = "window_end";

/// `tumble(time, size)` / `hop(time, slide, size)`: a window's start. Planned by
/// DataFusion, run by walflow's window operator (never evaluated as a function).
#[derive(Debug, PartialEq, Eq, Hash)]
struct WindowFunction {
    name: &'static str,
    signature: Signature,
}

impl ScalarUDFImpl for WindowFunction {
    fn name(&self) -> &str {
        self.name
    }

    fn signature(&self) -> &Signature {
        &self.signature
    }

    fn return_type(&self, _: &[DataType]) -> DataFusionResult<DataType> {
        Ok(DataType::Timestamp(
            TimeUnit::Microsecond,
            Some(Arc::from("UTC")),
        ))
    }

    fn invoke_with_args(&self, _: ScalarFunctionArgs) -> DataFusionResult<ColumnarValue> {
        Err(DataFusionError::Plan(format!(
            "{}() is a window: it belongs in GROUP BY, directly over a source",
            self.name
        )))
    }
}

/// The window functions, to register with the planner's session.
pub fn functions() -> Vec<ScalarUDF> {
    vec![
        ScalarUDF::new_from_impl(WindowFunction {
            name: TUMBLE,
            signature: Signature::any(2, Volatility::Immutable),
        }),
        ScalarUDF::new_from_impl(WindowFunction {
            name: HOP,
            signature: Signature::any(3, Volatility::Immutable),
        }),
        ScalarUDF::new_from_impl(WindowFunction {
            name: SESSION,
            signature: Signature::any(2, Volatility::Immutable),
        }),
    ]
}

/// Why a window in a query cannot be planned.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WindowError {
    #[error("{function}(): months vary in length; give the window in days or less")]
    Months { function: String },
    #[error("{function}(): a window must be longer than zero")]
    NotPositive { function: String },
    #[error("{function}(): {expr} is not a constant interval; write INTERVAL '1' MINUTE")]
    NotAConstantInterval { function: String, expr: String },
    #[error(
        "hop(): the size must be a whole number of slides (every event then belongs to size / \
         slide windows)"
    )]
    HopSizeNotSlides,
    #[error(
        "window_start and window_end need a window in GROUP BY: tumble(time, size), hop(time, \
         slide, size) or session(time, gap)"
    )]
    WindowColumnWithoutWindow,
    #[error("{function}() needs arguments")]
    NoArguments { function: String },
    #[error("{function}(): the last argument is the window's size")]
    NoSize { function: String },
    #[error("session(): the first argument is event time")]
    NoSessionTime,
}

/// A window call as planned: its kind, event-time expression and sizes.
#[derive(Debug, Clone, PartialEq)]
pub struct WindowCall {
    pub time: Expr,
    /// The window's size; a session's gap.
    pub size_us: i64,
    /// Equal to `size_us` for a tumbling window.
    pub slide_us: i64,
    pub session: bool,
}

/// The window of a planned group expression, if it is one.
pub fn window_call(expr: &Expr) -> Result<Option<WindowCall>, WindowError> {
    let Expr::ScalarFunction(function) = expr else {
        return Ok(None);
    };
    let name = function.func.name();
    let function_name = || name.to_owned();
    let interval = |expr: &Expr| -> Result<i64, WindowError> {
        match expr {
            Expr::Literal(ScalarValue::IntervalMonthDayNano(Some(value)), _) => {
                if value.months != 0 {
                    return Err(WindowError::Months {
                        function: function_name(),
                    });
                }
                let micros = i64::from(value.days) * 86_400_000_000 + value.nanoseconds / 1_000;
                if micros <= 0 {
                    return Err(WindowError::NotPositive {
                        function: function_name(),
                    });
                }
                Ok(micros)
            }
            Expr::Literal(ScalarValue::IntervalDayTime(Some(value)), _) => {
                Ok(i64::from(value.days) * 86_400_000_000 + i64::from(value.milliseconds) * 1_000)
            }
            other => Err(WindowError::NotAConstantInterval {
                function: function_name(),
                expr: other.to_string(),
            }),
        }
    };
    match (name, function.args.as_slice()) {
        (TUMBLE, [time, size]) => {
            let size_us = interval(size)?;
            Ok(Some(WindowCall {
                time: time.clone(),
                size_us,
                slide_us: size_us,
                session: false,
            }))
        }
        (HOP, [time, slide, size]) => {
            let (slide_us, size_us) = (interval(slide)?, interval(size)?);
            if size_us % slide_us != 0 {
                return Err(WindowError::HopSizeNotSlides);
            }
            Ok(Some(WindowCall {
                time: time.clone(),
                size_us,
                slide_us,
                session: false,
            }))
        }
        (SESSION, [time, gap]) => {
            let gap_us = interval(gap)?;
            Ok(Some(WindowCall {
                time: time.clone(),
                size_us: gap_us,
                slide_us: gap_us,
                session: true,
            }))
        }
        _ => Ok(None),
    }
}

/// Rewrites `window_start` and `window_end` in the SELECT list and HAVING of a query whose
/// GROUP BY has a window call: `window_start` becomes the call, `window_end` the call plus
/// its size. Returns an error for `session()` (not supported yet) or a window name used
/// without a window in GROUP BY.
pub fn rewrite_window_columns(query: &mut sql::Query) -> Result<(), WindowError> {
    let SetExpr::Select(select) = query.body.as_mut() else {
        return Ok(());
    };
    let GroupByExpr::Expressions(groups, _) = &select.group_by else {
        return Ok(());
    };
    let call = groups.iter().find_map(|expr| match expr {
        sql::Expr::Function(function) => {
            let name = function.name.to_string().to_lowercase();
            [TUMBLE, HOP, SESSION]
                .contains(&name.as_str())
                .then(|| (name, function.clone()))
        }
        _ => None,
    });
    let Some((name, function)) = call else {
        let mut uses = false;
        let _ = sql::visit_expressions(&select.projection, |expr| {
            if is_window_column(expr).is_some() {
                uses = true;
            }
            std::ops::ControlFlow::<()>::Continue(())
        });
        if uses {
            return Err(WindowError::WindowColumnWithoutWindow);
        }
        return Ok(());
    };
    let FunctionArguments::List(arguments) = &function.args else {
        return Err(WindowError::NoArguments { function: name });
    };
    let size = arguments.args.last().and_then(|argument| match argument {
        FunctionArg::Unnamed(FunctionArgExpr::Expr(expr)) => Some(expr.clone()),
        _ => None,
    });
    let Some(size) = size else {
        return Err(WindowError::NoSize { function: name });
    };
    let start = sql::Expr::Function(function.clone());
    // A session ends a gap after its last event: max(time) + gap, an aggregate of the group.
    let end_base = if name == SESSION {
        let time = arguments.args.first().and_then(|argument| match argument {
            FunctionArg::Unnamed(FunctionArgExpr::Expr(expr)) => Some(expr.clone()),
            _ => None,
        });
        let Some(time) = time else {
            return Err(WindowError::NoSessionTime);
        };
        let mut max = function.clone();
        max.name = sql::ObjectName::from(vec![Ident::new("max")]);
        if let FunctionArguments::List(list) = &mut max.args {
            list.args = vec![FunctionArg::Unnamed(FunctionArgExpr::Expr(time))];
        }
        sql::Expr::Function(max)
    } else {
        start.clone()
    };
    let end = sql::Expr::Nested(Box::new(sql::Expr::BinaryOp {
        left: Box::new(end_base),
        op: BinaryOperator::Plus,
        right: Box::new(size),
    }));
    let replace = |expr: &mut sql::Expr| {
        match is_window_column(expr) {
            Some(WINDOW_START) => *expr = start.clone(),
            Some(_) => *expr = end.clone(),
            None => {}
        }
        std::ops::ControlFlow::<()>::Continue(())
    };
    let _ = sql::visit_expressions_mut(&mut select.projection, replace);
    if let Some(having) = &mut select.having {
        let _ = sql::visit_expressions_mut(having, replace);
    }
    Ok(())
}

fn is_window_column(expr: &sql::Expr) -> Option<&'static str> {
    let ident: &Ident = match expr {
        sql::Expr::Identifier(ident) => ident,
        _ => return None,
    };
    match ident.value.to_lowercase().as_str() {
        WINDOW_START => Some(WINDOW_START),
        WINDOW_END => Some(WINDOW_END),
        _ => None,
    }
}

/// The windows an event at `time_us` belongs to, by start: one for a tumbling window,
/// `size / slide` for a hopping one. Starts are multiples of the slide since the epoch.
pub fn window_starts(time_us: i64, size_us: i64, slide_us: i64) -> impl Iterator<Item = i64> {
    let last = time_us.div_euclid(slide_us) * slide_us;
    let count = size_us / slide_us;
    (0..count).map(move |index| last - index * slide_us)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_event_falls_in_one_tumbling_window_and_size_over_slide_hopping_ones() {
        let minute = 60_000_000;
        let at = 10 * minute + 5;
        assert_eq!(
            window_starts(at, minute, minute).collect::<Vec<_>>(),
            vec![10 * minute]
        );
        assert_eq!(
            window_starts(at, 10 * minute, minute).collect::<Vec<_>>(),
            (1..=10).rev().map(|m| m * minute).collect::<Vec<_>>()
        );
        // Before the epoch too.
        assert_eq!(
            window_starts(-1, minute, minute).collect::<Vec<_>>(),
            vec![-minute]
        );
        // On a boundary: the window starting there.
        assert_eq!(
            window_starts(minute, minute, minute).collect::<Vec<_>>(),
            vec![minute]
        );
    }
}
