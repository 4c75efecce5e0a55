//! Connection strings and URLs as walflow shows them: in errors, logs, `doctor` and the
//! dashboard. Both functions fail closed: what they cannot parse is shown as [`HIDDEN`],
//! never as it was given, because a string that does not parse may still carry a password.

use std::borrow::Cow;

use percent_encoding::{utf8_percent_encode, AsciiSet, NON_ALPHANUMERIC};
use tokio_postgres::config::Host;

pub mod conninfo;

/// An error and its causes on one line, as walflow shows them: each cause once (many
/// errors already print their cause in their own message, and it is not repeated).
pub fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        let cause_text = cause.to_string();
        if !text.contains(&cause_text) {
            text.push_str(": ");
            text.push_str(&cause_text);
        }
        source = cause.source();
    }
    text
}

/// What stands in for a secret, or for a whole string that cannot be parsed.
pub const HIDDEN: &str = "***";

/// Everything but RFC 3986's unreserved characters is escaped in a rebuilt URL.
const COMPONENT: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'.')
    .remove(b'_')
    .remove(b'~');

/// A Postgres connection string (URL or libpq key/value form, as tokio-postgres reads it)
/// rebuilt from what it means, without its password: hosts, ports, user, database and the
/// TLS parameters (libpq's, `sslpassword` hidden), in the form it was given. `***` when
/// tokio-postgres cannot parse it.
pub fn postgres(connection: &str) -> String {
    let split = conninfo::split_tls_parameters(connection);
    let Ok(config) = split.rest.parse::<tokio_postgres::Config>() else {
        return HIDDEN.to_owned();
    };
    let mut shown = ShownPostgres::of(&config);
    // The last value of each parameter, in the order first given.
    for (name, _) in &split.tls {
        if shown.tls.iter().any(|(shown_name, _)| shown_name == name) {
            continue;
        }
        let value = match split.get(name) {
            Some(_) if name == "sslpassword" => HIDDEN.to_owned(),
            Some(value) => value.to_owned(),
            None => continue,
        };
        shown.tls.push((name.clone(), value));
    }
    ["postgres://", "postgresql://"]
        .into_iter()
        .find(|scheme| connection.starts_with(scheme))
        .map_or_else(|| shown.key_value(), |scheme| shown.url(scheme))
}

/// An HTTP(S) URL with the password of its userinfo and every query value replaced by `***`
/// (query keys are kept) and no fragment. `***` when it is not a URL.
pub fn url(text: &str) -> String {
    let Ok(mut url) = url::Url::parse(text) else {
        return HIDDEN.to_owned();
    };
    if url.password().is_some() && url.set_password(Some(HIDDEN)).is_err() {
        return HIDDEN.to_owned();
    }
    if url.query().is_some() {
        let keys: Vec<String> = url.query_pairs().map(|(key, _)| key.into_owned()).collect();
        url.query_pairs_mut()
            .clear()
            .extend_pairs(keys.iter().map(|key| (key, HIDDEN)));
    }
    url.set_fragment(None);
    url.to_string()
}

/// The parts of a parsed Postgres configuration that are safe to show.
struct ShownPostgres<'a> {
    hosts: Vec<Cow<'a, str>>,
    ports: &'a [u16],
    hostaddrs: Vec<String>,
    user: Option<&'a str>,
    has_password: bool,
    dbname: Option<&'a str>,
    application_name: Option<&'a str>,
    /// libpq's TLS parameters as given, `sslpassword` hidden.
    tls: Vec<(String, String)>,
}

impl<'a> ShownPostgres<'a> {
    fn of(config: &'a tokio_postgres::Config) -> ShownPostgres<'a> {
        ShownPostgres {
            hosts: config
                .get_hosts()
                .iter()
                .map(|host| match host {
                    Host::Tcp(name) => Cow::Borrowed(name.as_str()),
                    Host::Unix(path) => path.to_string_lossy(),
                })
                .collect(),
            ports: config.get_ports(),
            hostaddrs: config
                .get_hostaddrs()
                .iter()
                .map(ToString::to_string)
                .collect(),
            user: config.get_user(),
            has_password: config.get_password().is_some(),
            dbname: config.get_dbname(),
            application_name: config.get_application_name(),
            tls: Vec::new(),
        }
    }

    /// The port of the `index`th host: tokio-postgres keeps one port for all hosts or one
    /// per host.
    fn port(&self, index: usize) -> Option<u16> {
        match self.ports {
            [port] => Some(*port),
            ports => ports.get(index).copied(),
        }
    }

    fn url(&self, scheme: &str) -> String {
        let mut url = scheme.to_owned();
        if self.user.is_some() || self.has_password {
            url.push_str(&encode(self.user.unwrap_or_default()));
            if self.has_password {
                url.push(':');
                url.push_str(HIDDEN);
            }
            url.push('@');
        }
        let hosts: Vec<String> = self
            .hosts
            .iter()
            .enumerate()
            .map(|(index, host)| {
                let host = if host.contains(':') {
                    format!("[{host}]")
                } else {
                    encode(host)
                };
                match self.port(index) {
                    Some(port) => format!("{host}:{port}"),
                    None => host,
                }
            })
            .collect();
        url.push_str(&hosts.join(","));
        url.push('/');
        url.push_str(&encode(self.dbname.unwrap_or_default()));
        let parameters: Vec<String> = self
            .parameters()
            .into_iter()
            .map(|(key, value)| match value.as_str() {
                HIDDEN => format!("{key}={HIDDEN}"),
                value => format!("{key}={}", encode(value)),
            })
            .collect();
        if !parameters.is_empty() {
            url.push('?');
            url.push_str(&parameters.join("&"));
        }
        url
    }

    fn key_value(&self) -> String {
        let mut pairs: Vec<(&str, String)> = Vec::new();
        if !self.hosts.is_empty() {
            pairs.push(("host", self.hosts.join(",")));
        }
        if !self.ports.is_empty() {
            let ports: Vec<String> = self.ports.iter().map(u16::to_string).collect();
            pairs.push(("port", ports.join(",")));
        }
        if let Some(user) = self.user {
            pairs.push(("user", user.to_owned()));
        }
        if self.has_password {
            pairs.push(("password", HIDDEN.to_owned()));
        }
        if let Some(dbname) = self.dbname {
            pairs.push(("dbname", dbname.to_owned()));
        }
        pairs.extend(self.parameters());
        pairs
            .into_iter()
            .map(|(key, value)| format!("{key}={}", quote_libpq(&value)))
            .collect::<Vec<_>>()
            .join(" ")
    }

    /// What the URL form carries in its query string.
    fn parameters(&self) -> Vec<(&str, String)> {
        let mut parameters = Vec::new();
        if !self.hostaddrs.is_empty() {
            parameters.push(("hostaddr", self.hostaddrs.join(",")));
        }
        if let Some(name) = self.application_name {
            parameters.push(("application_name", name.to_owned()));
        }
        for (name, value) in &self.tls {
            parameters.push((name.as_str(), value.clone()));
        }
        parameters
    }
}

fn encode(text: &str) -> String {
    utf8_percent_encode(text, COMPONENT).to_string()
}

/// A libpq key/value value, quoted when it is empty or holds a space, a quote or a backslash.
fn quote_libpq(value: &str) -> Cow<'_, str> {
    if !value.is_empty() && !value.contains([' ', '\'', '\\']) {
        return Cow::Borrowed(value);
    }
    Cow::Owned(format!(
        "'{}'",
        value.replace('\\', "\\\\").replace('\'', "\\'")
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn multi_host_urls_keep_every_host_and_lose_the_password() {
        assert_eq!(
            postgres("postgres://walflow:s3cret@pg1:5432,pg2:5433/walflow"),
            "postgres://walflow:***@pg1:5432,pg2:5433/walflow"
        );
        assert_eq!(
            postgres("postgresql://u:s3cret@[::1]:5432/db?sslmode=require&application_name=a b"),
            "postgresql://u:***@[::1]:5432/db?application_name=a%20b&sslmode=require"
        );
    }

    #[test]
    fn a_password_in_the_query_string_is_shown_as_one() {
        assert_eq!(
            postgres("postgres://walflow@db/walflow?password=s3cret"),
            "postgres://walflow:***@db:5432/walflow"
        );
    }

    #[test]
    fn unix_socket_hosts_are_escaped_in_urls_and_quoted_in_key_value_strings() {
        assert_eq!(
            postgres("postgres://walflow@%2Fvar%2Frun%2Fpostgresql/walflow"),
            "postgres://walflow@%2Fvar%2Frun%2Fpostgresql:5432/walflow"
        );
        assert_eq!(
            postgres("host='/tmp/with space' user=it's password=x"),
            "host='/tmp/with space' user='it\\'s' password=***"
        );
    }

    #[test]
    fn tls_parameters_are_shown_as_libpq_reads_them_but_the_key_password() {
        assert_eq!(
            postgres(
                "postgres://u:pw@h/db?sslmode=verify-full&sslrootcert=/etc/ca.crt\
                 &sslpassword=t0psecret&connect_timeout=5"
            ),
            "postgres://u:***@h:5432/db?sslmode=verify-full&sslrootcert=%2Fetc%2Fca.crt&sslpassword=***"
        );
        assert_eq!(
            postgres("host=h sslmode=verify-ca sslkey='/k.pem' sslpassword=t0psecret"),
            "host=h sslmode=verify-ca sslkey=/k.pem sslpassword=***"
        );
    }

    #[test]
    fn key_value_strings_keep_their_form() {
        assert_eq!(
            postgres("host=pg1,pg2 port=5432,5433 user=a password = 's3 cret' dbname=walflow"),
            "host=pg1,pg2 port=5432,5433 user=a password=*** dbname=walflow"
        );
    }

    #[test]
    fn what_tokio_postgres_cannot_parse_is_hidden_whole() {
        for connection in [
            "postgres://walflow:s3cret@db:notaport/walflow",
            "host=db password='s3cret",
            "s3cret",
        ] {
            assert_eq!(postgres(connection), HIDDEN, "{connection}");
        }
    }

    #[test]
    fn urls_lose_their_password_and_query_values() {
        assert_eq!(
            url("https://user:s3cret@registry:8080/apis/ccompat/v7"),
            "https://user:***@registry:8080/apis/ccompat/v7"
        );
        assert_eq!(
            url("https://api.example.com/users/?apikey=s3cret&results=10#s3cret"),
            "https://api.example.com/users/?apikey=***&results=***"
        );
        assert_eq!(
            url("http://127.0.0.1:8080/api/"),
            "http://127.0.0.1:8080/api/"
        );
        assert_eq!(url("http://user:s3cret@[::1/"), HIDDEN);
        assert_eq!(url("not a url with s3cret"), HIDDEN);
    }
}
