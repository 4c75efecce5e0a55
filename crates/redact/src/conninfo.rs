//! libpq's TLS parameters in a Postgres connection string. tokio-postgres reads `sslmode`
//! only as disable, prefer or require and refuses `sslrootcert`, `sslcert`, `sslkey` and
//! `sslpassword`; walflow reads them all as libpq does (walflow-tls), so they are taken out
//! of the string first and the rest goes to tokio-postgres unchanged.

use std::borrow::Cow;

use percent_encoding::percent_decode_str;

/// The parameters taken out, as libpq names them.
pub const TLS_PARAMETERS: [&str; 5] =
    ["sslmode", "sslrootcert", "sslcert", "sslkey", "sslpassword"];

/// A connection string without its TLS parameters, and those parameters in their order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SplitConninfo {
    /// The string as given, less the TLS parameters (what tokio-postgres parses).
    pub rest: String,
    /// Each TLS parameter with its value, decoded.
    pub tls: Vec<(String, String)>,
}

impl SplitConninfo {
    /// The last value given for `parameter`, as libpq takes it.
    pub fn get(&self, parameter: &str) -> Option<&str> {
        self.tls
            .iter()
            .rev()
            .find(|(name, _)| name == parameter)
            .map(|(_, value)| value.as_str())
    }
}

/// Splits a `postgres://` / `postgresql://` URL or a libpq `key=value` string.
pub fn split_tls_parameters(connection: &str) -> SplitConninfo {
    let is_url = ["postgres://", "postgresql://"]
        .iter()
        .any(|scheme| connection.starts_with(scheme));
    if is_url {
        split_url(connection)
    } else {
        split_key_value(connection)
    }
}

fn is_tls_parameter(name: &str) -> bool {
    TLS_PARAMETERS.contains(&name)
}

fn split_url(url: &str) -> SplitConninfo {
    let Some((base, query)) = url.split_once('?') else {
        return SplitConninfo {
            rest: url.to_owned(),
            tls: Vec::new(),
        };
    };
    let decode =
        |text: &str| -> String { percent_decode_str(text).decode_utf8_lossy().into_owned() };
    let mut kept: Vec<&str> = Vec::new();
    let mut tls = Vec::new();
    for pair in query.split('&').filter(|pair| !pair.is_empty()) {
        let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
        let key = decode(key);
        if is_tls_parameter(&key) {
            tls.push((key, decode(value)));
        } else {
            kept.push(pair);
        }
    }
    let rest = if kept.is_empty() {
        base.to_owned()
    } else {
        format!("{base}?{}", kept.join("&"))
    };
    SplitConninfo { rest, tls }
}

/// `key = value` pairs separated by spaces; a value may be single-quoted, with `\'` and `\\`
/// escapes. What does not scan is left in place for tokio-postgres to report.
fn split_key_value(connection: &str) -> SplitConninfo {
    let mut kept: Vec<&str> = Vec::new();
    let mut tls = Vec::new();
    let mut rest = connection.trim_start();
    while !rest.is_empty() {
        let Some((pair, value, after)) = next_pair(rest) else {
            kept.push(rest);
            break;
        };
        let key = pair.split('=').next().unwrap_or_default().trim();
        if is_tls_parameter(key) {
            tls.push((key.to_owned(), value.into_owned()));
        } else {
            kept.push(pair);
        }
        rest = after.trim_start();
    }
    SplitConninfo {
        rest: kept.join(" "),
        tls,
    }
}

/// The first `key = value` pair of `text`: its text, its value unquoted, and what follows.
fn next_pair(text: &str) -> Option<(&str, Cow<'_, str>, &str)> {
    let equals = text.find('=')?;
    let key = text[..equals].trim();
    if key.is_empty() || key.contains(char::is_whitespace) {
        return None;
    }
    let after_equals = &text[equals + 1..];
    let value_start = equals + 1 + (after_equals.len() - after_equals.trim_start().len());
    let value_text = &text[value_start..];
    if let Some(quoted) = value_text.strip_prefix('\'') {
        let mut value = String::new();
        let mut chars = quoted.char_indices();
        while let Some((index, character)) = chars.next() {
            match character {
                '\\' => value.push(chars.next()?.1),
                '\'' => {
                    let end = value_start + 1 + index + 1;
                    return Some((&text[..end], Cow::Owned(value), &text[end..]));
                }
                other => value.push(other),
            }
        }
        None
    } else {
        let length = value_text
            .find(char::is_whitespace)
            .unwrap_or(value_text.len());
        let end = value_start + length;
        Some((
            &text[..end],
            Cow::Borrowed(&text[value_start..end]),
            &text[end..],
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_url_keeps_everything_but_its_tls_parameters() {
        let split = split_tls_parameters(
            "postgres://u:p%40ss@db.example.com:5433/app?sslmode=verify-full&connect_timeout=5\
             &sslrootcert=%2Fetc%2Fca%20file.crt&application_name=x",
        );
        assert_eq!(
            split.rest,
            "postgres://u:p%40ss@db.example.com:5433/app?connect_timeout=5&application_name=x"
        );
        assert_eq!(split.get("sslmode"), Some("verify-full"));
        assert_eq!(split.get("sslrootcert"), Some("/etc/ca file.crt"));
        assert_eq!(split.get("sslcert"), None);
    }

    #[test]
    fn a_url_with_only_tls_parameters_loses_its_question_mark() {
        let split = split_tls_parameters("postgresql://h/db?sslmode=require");
        assert_eq!(split.rest, "postgresql://h/db");
        assert_eq!(split.get("sslmode"), Some("require"));
        assert_eq!(
            split_tls_parameters("postgres://h/db").rest,
            "postgres://h/db"
        );
    }

    #[test]
    fn a_key_value_string_keeps_its_other_pairs_and_unquotes_values() {
        let split = split_tls_parameters(
            "host=localhost  sslmode = verify-ca user=walflow sslkey='/k ey\\'s.pem' dbname=app",
        );
        assert_eq!(split.rest, "host=localhost user=walflow dbname=app");
        assert_eq!(split.get("sslmode"), Some("verify-ca"));
        assert_eq!(split.get("sslkey"), Some("/k ey's.pem"));
    }

    #[test]
    fn the_last_value_given_wins_and_what_does_not_scan_stays() {
        let split = split_tls_parameters("sslmode=require sslmode=disable host='unterminated");
        assert_eq!(split.get("sslmode"), Some("disable"));
        assert_eq!(split.rest, "host='unterminated");
    }
}
