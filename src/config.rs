//! Configuration: `walflow.toml`, overridden by `WALFLOW_*` environment variables,
//! overridden by flags. clap reads a flag or, failing that, its environment variable; the
//! file fills in what neither gave; defaults match the services of `scripts/services`.

use std::fmt;
use std::path::{Path, PathBuf};
use walflow_tls::kafka::KafkaConnection;

use clap::Args;
use serde::Deserialize;

use crate::logging::LogFormat;

pub const DEFAULT_CONFIG_FILE: &str = "walflow.toml";
pub const DEFAULT_POSTGRES_URL: &str = "postgres://walflow:walflow@127.0.0.1:5432/walflow";
pub const DEFAULT_KAFKA_BROKERS: &str = "127.0.0.1:9092";
pub const DEFAULT_CASSANDRA_NODES: &str = "127.0.0.1:9042";

/// Flags every subcommand accepts.
#[derive(Debug, Clone, Args)]
pub struct GlobalArgs {
    /// Configuration file. Without this flag, ./walflow.toml is read when it exists.
    #[arg(long, global = true, env = "WALFLOW_CONFIG", value_name = "PATH")]
    pub config: Option<PathBuf>,

    /// Postgres connection URL, libpq's TLS parameters included (sslmode=verify-full,
    /// sslrootcert=...); WALFLOW_POSTGRES_URL_FILE names a file holding it
    /// [default: postgres://walflow:***@127.0.0.1:5432/walflow]
    #[arg(
        long,
        global = true,
        env = "WALFLOW_POSTGRES_URL",
        hide_env_values = true,
        value_name = "URL"
    )]
    pub postgres_url: Option<String>,

    /// Kafka bootstrap brokers, comma-separated [default: 127.0.0.1:9092]
    #[arg(
        long,
        global = true,
        env = "WALFLOW_KAFKA_BROKERS",
        value_name = "HOST:PORT,..."
    )]
    pub kafka_brokers: Option<String>,

    /// Cassandra contact points, comma-separated [default: 127.0.0.1:9042]
    #[arg(
        long,
        global = true,
        env = "WALFLOW_CASSANDRA_NODES",
        value_name = "HOST:PORT,..."
    )]
    pub cassandra_nodes: Option<String>,

    /// Schema registry's Confluent-compatible API, for Avro change events (checked by doctor
    /// when given), e.g. http://127.0.0.1:8081/apis/ccompat/v7; WALFLOW_SCHEMA_REGISTRY_URL_FILE
    /// names a file holding it
    #[arg(
        long,
        global = true,
        env = "WALFLOW_SCHEMA_REGISTRY_URL",
        hide_env_values = true,
        value_name = "URL"
    )]
    pub schema_registry_url: Option<String>,

    /// Log format on stderr
    #[arg(long, global = true, env = "WALFLOW_LOG_FORMAT", value_enum, default_value_t = LogFormat::Human)]
    pub log_format: LogFormat,

    /// Log filter such as `debug` or `walflow=debug,info` [default: RUST_LOG, else info]
    #[arg(long, global = true, env = "WALFLOW_LOG_LEVEL", value_name = "FILTER")]
    pub log_level: Option<String>,
}

/// The configuration every command works from, after file, environment and flags.
#[derive(Debug, Clone)]
pub struct Config {
    pub postgres_url: SecretUrl,
    /// Kafka's brokers and the librdkafka properties every client gets: walflow.toml's
    /// `[kafka.properties]`, then `WALFLOW_KAFKA_PROPERTY_*` variables.
    pub kafka: KafkaConnection,
    pub cassandra_nodes: Vec<String>,
    pub schema_registry_url: Option<SecretUrl>,
}

/// What `walflow.toml` may contain. Unknown keys are errors, so a typo never silently
/// falls back to a default.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct ConfigFile {
    #[serde(default)]
    postgres: PostgresSection,
    #[serde(default)]
    kafka: KafkaSection,
    #[serde(default)]
    cassandra: CassandraSection,
    #[serde(default)]
    schema_registry: SchemaRegistrySection,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct SchemaRegistrySection {
    url: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct PostgresSection {
    url: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct KafkaSection {
    brokers: Option<String>,
    /// librdkafka properties for every Kafka client (security.protocol, sasl.*, ssl.*).
    #[serde(default)]
    properties: std::collections::BTreeMap<String, toml::Value>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct CassandraSection {
    nodes: Option<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read configuration file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("invalid configuration file {path}: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("{what} is empty: give at least one HOST:PORT")]
    Empty { what: &'static str },
    #[error(transparent)]
    KafkaProperty(#[from] walflow_tls::kafka::KafkaPropertyError),
    #[error("cannot read {variable}={}: {source}", path.display())]
    SecretFile {
        variable: String,
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("invalid configuration file {path}: [kafka.properties] {name} must be a string, number or boolean")]
    KafkaPropertyValue { path: PathBuf, name: String },
}

impl Config {
    pub fn load(args: &GlobalArgs) -> Result<Config, ConfigError> {
        let file = match &args.config {
            Some(path) => read_config_file(path)?,
            None if Path::new(DEFAULT_CONFIG_FILE).exists() => {
                read_config_file(Path::new(DEFAULT_CONFIG_FILE))?
            }
            None => ConfigFile::default(),
        };
        let postgres_url = args
            .postgres_url
            .clone()
            .map(Ok)
            .or_else(|| secret_file("WALFLOW_POSTGRES_URL_FILE"))
            .transpose()?
            .or(file.postgres.url)
            .unwrap_or_else(|| DEFAULT_POSTGRES_URL.to_owned());
        let kafka_brokers = args
            .kafka_brokers
            .clone()
            .or(file.kafka.brokers)
            .unwrap_or_else(|| DEFAULT_KAFKA_BROKERS.to_owned());
        let cassandra_nodes = args
            .cassandra_nodes
            .clone()
            .or(file.cassandra.nodes)
            .unwrap_or_else(|| DEFAULT_CASSANDRA_NODES.to_owned());
        let mut kafka_properties = std::collections::BTreeMap::new();
        for (name, value) in file.kafka.properties {
            let text = match value {
                toml::Value::String(text) => text,
                toml::Value::Integer(number) => number.to_string(),
                toml::Value::Float(number) => number.to_string(),
                toml::Value::Boolean(flag) => flag.to_string(),
                _ => {
                    return Err(ConfigError::KafkaPropertyValue {
                        path: args
                            .config
                            .clone()
                            .unwrap_or_else(|| PathBuf::from(DEFAULT_CONFIG_FILE)),
                        name,
                    })
                }
            };
            kafka_properties.insert(name, text);
        }
        kafka_properties.extend(walflow_tls::kafka::properties_from_variables(
            std::env::vars(),
        )?);
        let config = Config {
            postgres_url: SecretUrl::postgres(postgres_url),
            kafka: KafkaConnection::new(
                non_empty_list(&kafka_brokers, "the Kafka broker list")?.join(","),
            )
            .with_properties(kafka_properties),
            cassandra_nodes: non_empty_list(&cassandra_nodes, "the Cassandra node list")?,
            schema_registry_url: args
                .schema_registry_url
                .clone()
                .map(Ok)
                .or_else(|| secret_file("WALFLOW_SCHEMA_REGISTRY_URL_FILE"))
                .transpose()?
                .or(file.schema_registry.url)
                .filter(|url| !url.trim().is_empty())
                .map(SecretUrl::http),
        };
        tracing::debug!(?config, "configuration loaded");
        Ok(config)
    }
}

/// The value of a secret given as a file (the Docker secrets convention): `variable` names
/// the file; its content without the final newline is the value. None when not set.
fn secret_file(variable: &str) -> Option<Result<String, ConfigError>> {
    let path = PathBuf::from(std::env::var_os(variable)?);
    Some(
        std::fs::read_to_string(&path)
            .map(|text| text.trim_end_matches(['\n', '\r']).to_owned())
            .map_err(|source| ConfigError::SecretFile {
                variable: variable.to_owned(),
                path,
                source,
            }),
    )
}

fn read_config_file(path: &Path) -> Result<ConfigFile, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
        path: path.to_owned(),
        source,
    })?;
    parse_config_file(path, &text)
}

fn parse_config_file(path: &Path, text: &str) -> Result<ConfigFile, ConfigError> {
    // toml's message already names the key and shows the line it is on.
    toml::from_str(text).map_err(|error| ConfigError::Parse {
        path: path.to_owned(),
        message: error.to_string().trim_end().to_owned(),
    })
}

fn non_empty_list(list: &str, what: &'static str) -> Result<Vec<String>, ConfigError> {
    let items: Vec<String> = list
        .split(',')
        .map(str::trim)
        .filter(|item| !item.is_empty())
        .map(str::to_owned)
        .collect();
    if items.is_empty() {
        return Err(ConfigError::Empty { what });
    }
    Ok(items)
}

/// A connection URL whose password never reaches a log line, an error or `Debug`.
#[derive(Clone)]
pub struct SecretUrl {
    url: String,
    kind: UrlKind,
}

/// Which grammar the URL follows, so that redaction can parse it.
#[derive(Clone, Copy)]
enum UrlKind {
    /// A Postgres URL or libpq key/value string.
    Postgres,
    /// An HTTP(S) URL, whose userinfo and query values are hidden.
    Http,
}

impl SecretUrl {
    pub fn postgres(url: String) -> Self {
        SecretUrl {
            url,
            kind: UrlKind::Postgres,
        }
    }

    pub fn http(url: String) -> Self {
        SecretUrl {
            url,
            kind: UrlKind::Http,
        }
    }

    /// The URL with its password, only for handing to a client library.
    pub fn expose(&self) -> &str {
        &self.url
    }

    /// The URL rebuilt without its secrets, or `***` when it cannot be parsed.
    pub fn redacted(&self) -> String {
        match self.kind {
            UrlKind::Postgres => walflow_redact::postgres(&self.url),
            UrlKind::Http => walflow_redact::url(&self.url),
        }
    }
}

impl fmt::Debug for SecretUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}", self.redacted())
    }
}

impl fmt::Display for SecretUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.redacted())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn redact_password(connection: &str) -> String {
        SecretUrl::postgres(connection.to_owned()).to_string()
    }

    #[test]
    fn a_secret_file_gives_the_value_and_a_missing_one_is_named() {
        let path = std::env::temp_dir().join(format!("walflow-secret-{}", std::process::id()));
        std::fs::write(&path, "postgres://u:s3cret@db/app\n").unwrap();
        let variable = format!("WALFLOW_TEST_SECRET_{}", std::process::id());
        std::env::set_var(&variable, &path);
        let value = secret_file(&variable).unwrap().unwrap();
        assert_eq!(value, "postgres://u:s3cret@db/app");
        std::fs::remove_file(&path).unwrap();
        let error = secret_file(&variable).unwrap().unwrap_err().to_string();
        assert!(
            error.contains(&variable) && error.contains("walflow-secret-"),
            "{error}"
        );
        std::env::remove_var(&variable);
        assert!(secret_file(&variable).is_none());
    }

    #[test]
    fn url_passwords_are_redacted() {
        let url = SecretUrl::postgres("postgres://walflow:s3cret@db:5432/walflow".into());
        assert_eq!(url.to_string(), "postgres://walflow:***@db:5432/walflow");
        assert!(!format!("{url:?}").contains("s3cret"));
        assert_eq!(url.expose(), "postgres://walflow:s3cret@db:5432/walflow");
    }

    #[test]
    fn query_and_key_value_passwords_are_redacted() {
        let query = redact_password("postgres://db/walflow?user=a&password=s3cret&sslmode=require");
        assert!(!query.contains("s3cret"), "{query}");
        assert!(query.contains("sslmode=require"), "{query}");
        let key_value = redact_password("host=db user=a password=s3cret dbname=walflow");
        assert_eq!(key_value, "host=db user=a password=*** dbname=walflow");
    }

    /// Each of these once came back with its password (`redact_password` failed open).
    #[test]
    fn passwords_are_hidden_in_every_connection_string_form() {
        let leaks = [
            "postgres://walflow:s3cret@pg1:5432,pg2:5432/walflow",
            "postgresql://walflow:s3cret@pg1,pg2:6432/walflow?sslmode=disable",
            "postgres://walflow:s3cret/x@db:5432/walflow",
            "host=db user=a password = s3cret dbname=walflow",
            "host=db user=a password='s3cret and more' dbname=walflow",
            "host=db user=a password=s3cret\\ more dbname=walflow",
            "postgres://walflow:s3cret@db:5432/walflow?password=s3cret",
        ]
        .into_iter()
        .map(|connection| (connection, redact_password(connection)))
        .filter(|(_, shown)| shown.contains("s3cret") || shown.contains("more"))
        .collect::<Vec<_>>();
        assert!(leaks.is_empty(), "passwords shown: {leaks:#?}");
    }

    #[test]
    fn unparsable_connection_strings_are_hidden_whole() {
        let shown = [
            "postgres://walflow:s3cret@db:notaport/walflow",
            "host=db password='s3cret",
            "s3cret",
            "postgres://walflow:s3cret@[::1/walflow",
        ]
        .into_iter()
        .map(|connection| (connection, redact_password(connection)))
        .filter(|(_, shown)| shown != "***")
        .collect::<Vec<_>>();
        assert!(shown.is_empty(), "shown although unparsable: {shown:#?}");
    }

    #[test]
    fn redacted_connection_strings_keep_what_locates_the_server() {
        assert_eq!(
            redact_password("postgres://walflow:s3cret@pg1:5432,pg2:5433/walflow"),
            "postgres://walflow:***@pg1:5432,pg2:5433/walflow"
        );
        assert_eq!(
            redact_password("host=pg1,pg2 port=5432 user=a password='a b' dbname=walflow"),
            "host=pg1,pg2 port=5432 user=a password=*** dbname=walflow"
        );
        assert_eq!(
            redact_password("postgres://walflow@db/walflow"),
            "postgres://walflow@db:5432/walflow"
        );
    }

    #[test]
    fn unknown_keys_are_named_with_the_file() {
        let error = parse_config_file(Path::new("conf/walflow.toml"), "[postgres]\nurll = \"x\"\n")
            .unwrap_err()
            .to_string();
        assert!(error.contains("conf/walflow.toml"), "{error}");
        assert!(error.contains("urll"), "{error}");
        assert!(error.contains("line 2"), "{error}");
    }

    #[test]
    fn unknown_sections_are_rejected() {
        let error = parse_config_file(Path::new("walflow.toml"), "[kafkaa]\nbrokers = \"x\"\n")
            .unwrap_err()
            .to_string();
        assert!(error.contains("kafkaa"), "{error}");
    }

    #[test]
    fn empty_lists_are_rejected() {
        assert!(non_empty_list(" , ", "the Kafka broker list").is_err());
        assert_eq!(non_empty_list("a:1, b:2", "x").unwrap(), vec!["a:1", "b:2"]);
    }
}
