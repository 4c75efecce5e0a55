//! Event time in pipeline files: INTERVAL literals (`INTERVAL '1' MINUTE`, `'90 seconds'`),
//! and the `WATERMARK FOR column AS column - INTERVAL ...` clause of a source's CREATE TABLE.
//! sqlparser does not know that clause: it is found with sqlparser's tokenizer, blanked out
//! of the text (spaces, newlines kept, so every later position is unchanged) and read here.

use datafusion::sql::sqlparser::ast::{BinaryOperator, Expr};
use datafusion::sql::sqlparser::dialect::GenericDialect;
use datafusion::sql::sqlparser::parser::Parser;
use datafusion::sql::sqlparser::tokenizer::{Token, Tokenizer};

use crate::definition::Position;

pub const MICROS_PER_SECOND: i64 = 1_000_000;

/// Why a duration in a pipeline file is not one walflow reads.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IntervalError {
    #[error("'{text}' is not an interval like '5 seconds' or '1 minute'")]
    NotANumber { text: String },
    #[error("'{text}' has no unit: write '{text} seconds', '{text} minutes', ...")]
    NoUnit { text: String },
    #[error("'{text}': unknown unit '{unit}'; use milliseconds, seconds, minutes, hours or days")]
    UnknownUnit { text: String, unit: String },
    #[error("'{text}' is not a positive interval")]
    NotPositive { text: String },
    #[error("{expr} is not an interval; write INTERVAL '5' SECOND or INTERVAL '1 minute'")]
    NotAnInterval { expr: String },
}

/// `value` with an optional separate `unit` (`'5' SECOND`), or with the unit inside
/// (`'5 seconds'`, `'1.5 hours'`), in microseconds. Positive durations only.
pub fn interval_micros(value: &str, unit: Option<&str>) -> Result<i64, IntervalError> {
    let text = match unit {
        Some(unit) => format!("{} {unit}", value.trim()),
        None => value.trim().to_owned(),
    };
    let split = text
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    // The number's own parse error says nothing the message does not.
    let Ok(number) = number.parse::<f64>() else {
        return Err(IntervalError::NotANumber { text });
    };
    let per_unit: f64 = match unit.trim().to_lowercase().as_str() {
        "" => return Err(IntervalError::NoUnit { text }),
        "microsecond" | "microseconds" | "us" => 1.0,
        "millisecond" | "milliseconds" | "ms" => 1e3,
        "second" | "seconds" | "sec" | "secs" | "s" => 1e6,
        "minute" | "minutes" | "min" | "mins" => 60e6,
        "hour" | "hours" | "h" => 3_600e6,
        "day" | "days" | "d" => 86_400e6,
        other => {
            return Err(IntervalError::UnknownUnit {
                unit: other.to_owned(),
                text,
            })
        }
    };
    let micros = (number * per_unit).round();
    if micros <= 0.0 {
        return Err(IntervalError::NotPositive { text });
    }
    Ok(micros as i64)
}

/// A duration for people: `5 s`, `1 min`, `10 min`, `1 h`, `250 ms`.
pub fn human_micros(micros: i64) -> String {
    for (unit, size) in [
        ("d", 86_400_000_000),
        ("h", 3_600_000_000),
        ("min", 60_000_000),
        ("s", 1_000_000),
        ("ms", 1_000),
    ] {
        if micros >= size && micros % size == 0 {
            return format!("{} {unit}", micros / size);
        }
    }
    format!("{micros} us")
}

/// An interval expression as sqlparser reads it: `INTERVAL '5' SECOND`, `INTERVAL '5 seconds'`.
pub fn interval_expr_micros(expr: &Expr) -> Result<i64, IntervalError> {
    match expr {
        Expr::Interval(interval) => {
            let value = interval.value.to_string();
            let value = value.trim_matches('\'');
            interval_micros(
                value,
                interval
                    .leading_field
                    .as_ref()
                    .map(ToString::to_string)
                    .as_deref(),
            )
        }
        Expr::Nested(inner) => interval_expr_micros(inner),
        other => Err(IntervalError::NotAnInterval {
            expr: other.to_string(),
        }),
    }
}

/// One `WATERMARK FOR column AS column [- INTERVAL ...]` clause.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WatermarkClause {
    /// Where the word WATERMARK is.
    pub position: Position,
    pub column: String,
    /// How far the watermark trails the newest event time seen (0 without an interval).
    pub delay_us: i64,
}

/// The clauses of `text`, and `text` with each clause (and the comma that separated it from
/// the columns) blanked.
pub fn extract_watermarks(
    text: &str,
) -> Result<(String, Vec<WatermarkClause>), (Position, String)> {
    let dialect = GenericDialect {};
    let tokens = Tokenizer::new(&dialect, text)
        .tokenize_with_location()
        .map_err(|error| (Position::from(error.location), error.message.clone()))?;
    let significant: Vec<usize> = (0..tokens.len())
        .filter(|&index| !matches!(tokens[index].token, Token::Whitespace(_)))
        .collect();
    let is_word = |index: usize, word: &str| matches!(&tokens[index].token, Token::Word(w) if w.value.eq_ignore_ascii_case(word));
    let line_starts: Vec<usize> = std::iter::once(0)
        .chain(text.match_indices('\n').map(|(at, _)| at + 1))
        .collect();
    // Locations count lines and characters from 1.
    let offset = |line: u64, column: u64| -> usize {
        let start = line_starts[(line.max(1) - 1) as usize];
        text[start..]
            .char_indices()
            .nth((column.max(1) - 1) as usize)
            .map_or(text.len(), |(at, _)| start + at)
    };
    // Blanked from the end, so the offsets of earlier ranges stay right whatever the width of
    // the characters replaced.
    let mut ranges: Vec<std::ops::Range<usize>> = Vec::new();
    let mut clauses = Vec::new();
    let mut position = 0;
    while position + 1 < significant.len() {
        let (watermark, next) = (significant[position], significant[position + 1]);
        if !(is_word(watermark, "WATERMARK") && is_word(next, "FOR")) {
            position += 1;
            continue;
        }
        let at = Position::from(tokens[watermark].span.start);
        // The clause runs to the comma or closing parenthesis of the column list.
        let mut depth = 0;
        let mut end = position + 2;
        while end < significant.len() {
            match tokens[significant[end]].token {
                Token::LParen => depth += 1,
                Token::RParen if depth == 0 => break,
                Token::RParen => depth -= 1,
                Token::Comma if depth == 0 => break,
                _ => {}
            }
            end += 1;
        }
        if end >= significant.len() {
            return Err((at, "WATERMARK FOR ... is not closed by ) or ,".into()));
        }
        let clause_start = offset(at.line, at.column);
        let clause_end = {
            let location = tokens[significant[end]].span.start;
            offset(location.line, location.column)
        };
        let clause = &text[clause_start..clause_end];
        // Blank the separating comma too: the one before the clause, or else the one after.
        let before = significant[..position]
            .last()
            .filter(|&&index| tokens[index].token == Token::Comma);
        let (blank_start, blank_end) = match before {
            Some(&comma) => {
                let location = tokens[comma].span.start;
                (offset(location.line, location.column), clause_end)
            }
            None if tokens[significant[end]].token == Token::Comma => {
                (clause_start, clause_end + 1)
            }
            None => (clause_start, clause_end),
        };
        ranges.push(blank_start..blank_end);
        clauses.push(read_clause(clause, at)?);
        position = end;
    }
    let mut blanked = text.to_owned();
    for range in ranges.into_iter().rev() {
        let replacement: String = text[range.clone()]
            .chars()
            .map(|c| if c == '\n' { '\n' } else { ' ' })
            .collect();
        blanked.replace_range(range, &replacement);
    }
    Ok((blanked, clauses))
}

/// `WATERMARK FOR col AS col - INTERVAL '5' SECOND` (or `AS col`).
fn read_clause(clause: &str, at: Position) -> Result<WatermarkClause, (Position, String)> {
    let fail = |message: String| (at, message);
    let words: Vec<&str> = clause.split_whitespace().collect();
    if words.len() < 5 || !words[3].eq_ignore_ascii_case("AS") {
        return Err(fail(
            "write WATERMARK FOR <timestamp column> AS <column> - INTERVAL '5' SECOND".into(),
        ));
    }
    let column = words[2].trim_matches('"').to_owned();
    // The word AS, whatever whitespace is around it.
    let upper = clause.to_uppercase();
    let as_at = upper
        .match_indices("AS")
        .map(|(at, _)| at)
        .find(|&at| {
            let before = upper[..at].chars().next_back();
            let after = upper[at + 2..].chars().next();
            before.is_some_and(char::is_whitespace) && after.is_some_and(char::is_whitespace)
        })
        .map(|at| at + 2)
        .ok_or_else(|| fail("WATERMARK FOR <column> AS <expression>".into()))?;
    let dialect = GenericDialect {};
    let expression = Parser::new(&dialect)
        .try_with_sql(&clause[as_at..])
        .and_then(|mut parser| {
            let expression = parser.parse_expr()?;
            // Nothing may follow the expression.
            match parser.peek_token().token {
                Token::EOF => Ok(expression),
                other => Err(
                    datafusion::sql::sqlparser::parser::ParserError::ParserError(format!(
                        "unexpected {other} after the expression"
                    )),
                ),
            }
        })
        .map_err(|error| fail(format!("the watermark expression: {error}")))?;
    let names_column =
        |expr: &Expr| matches!(expr, Expr::Identifier(ident) if ident.value == column);
    let delay_us = match &expression {
        expr if names_column(expr) => 0,
        Expr::BinaryOp {
            left,
            op: BinaryOperator::Minus,
            right,
        } if names_column(left) => {
            interval_expr_micros(right).map_err(|error| fail(error.to_string()))?
        }
        other => {
            return Err(fail(format!(
                "the watermark must be {column} - INTERVAL '...' (how late events may arrive), not {other}"
            )))
        }
    };
    Ok(WatermarkClause {
        position: at,
        column,
        delay_us,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn intervals_read_with_the_unit_inside_or_beside() {
        assert_eq!(interval_micros("5", Some("SECOND")), Ok(5_000_000));
        assert_eq!(interval_micros("1 minute", None), Ok(60_000_000));
        assert_eq!(interval_micros("90 seconds", None), Ok(90_000_000));
        assert_eq!(interval_micros("1.5 hours", None), Ok(5_400_000_000));
        assert_eq!(interval_micros("250 milliseconds", None), Ok(250_000));
        assert!(interval_micros("5", None)
            .unwrap_err()
            .to_string()
            .contains("no unit"));
        assert!(interval_micros("5m", None)
            .unwrap_err()
            .to_string()
            .contains("unknown unit"));
        assert_eq!(interval_micros("5 ms", None), Ok(5_000));
        assert_eq!(interval_micros("2 min", None), Ok(120_000_000));
        assert!(interval_micros("5 fortnights", None)
            .unwrap_err()
            .to_string()
            .contains("unknown unit"));
        assert_eq!(
            interval_micros("5 fortnights", None),
            Err(IntervalError::UnknownUnit {
                text: "5 fortnights".into(),
                unit: "fortnights".into()
            })
        );
    }

    #[test]
    fn a_watermark_clause_is_read_and_blanked_keeping_positions() {
        let text = "CREATE TABLE t (\n  id TEXT,\n  at TIMESTAMP,\n  WATERMARK FOR at AS at - INTERVAL '5' SECOND\n) WITH (x = 'y');\nSELECT 1";
        let (blanked, clauses) = extract_watermarks(text).unwrap();
        assert_eq!(blanked.len(), text.len());
        assert_eq!(blanked.lines().count(), text.lines().count());
        assert!(!blanked.contains("WATERMARK"));
        assert!(blanked.contains("at TIMESTAMP \n"), "{blanked}");
        assert_eq!(
            clauses,
            vec![WatermarkClause {
                position: Position { line: 4, column: 3 },
                column: "at".into(),
                delay_us: 5_000_000,
            }]
        );
        let (_, first) =
            extract_watermarks("CREATE TABLE t (WATERMARK FOR at AS at, at TIMESTAMP)").unwrap();
        assert_eq!(first[0].delay_us, 0);
    }

    #[test]
    fn a_watermark_that_is_not_column_minus_interval_is_refused() {
        let (_, message) =
            extract_watermarks("CREATE TABLE t (at TIMESTAMP, WATERMARK FOR at AS now())")
                .unwrap_err();
        assert!(message.contains("at - INTERVAL"), "{message}");
    }
}
