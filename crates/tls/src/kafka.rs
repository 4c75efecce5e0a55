//! How walflow's Kafka clients connect: the bootstrap brokers and librdkafka properties
//! passed through as given, so that whatever librdkafka can do (`security.protocol` SSL,
//! SASL_PLAINTEXT or SASL_SSL; `sasl.mechanism` PLAIN, SCRAM-SHA-256 or SCRAM-SHA-512;
//! `ssl.ca.location`, `ssl.certificate.location`, `ssl.key.location` ...) every client does:
//! cdc's producer and admin client, process's consumers and producer, lag's consumer,
//! doctor's admin client and the benchmarks'. Properties come from walflow.toml's
//! `[kafka.properties]` and from `WALFLOW_KAFKA_PROPERTY_<NAME>` variables (the name upper
//! case, dots as underscores), a `..._FILE` variable giving a file to read the value from
//! (the Docker secrets convention). Values of secret properties never appear in `Debug`
//! output or in [`KafkaConnection::shown`].

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use rdkafka::client::ClientContext;
use rdkafka::config::RDKafkaLogLevel;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::ClientConfig;

/// The prefix of the variables that set librdkafka properties.
pub const PROPERTY_VARIABLE_PREFIX: &str = "WALFLOW_KAFKA_PROPERTY_";

/// Brokers and the librdkafka properties every client gets.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct KafkaConnection {
    pub brokers: String,
    pub properties: BTreeMap<String, String>,
}

/// A property variable that cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum KafkaPropertyError {
    #[error("cannot read {variable}={}: {source}", file.display())]
    File {
        variable: String,
        file: std::path::PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{variable} names no property: write it as {PROPERTY_VARIABLE_PREFIX}SECURITY_PROTOCOL=SASL_SSL for security.protocol")]
    Empty { variable: String },
}

impl KafkaConnection {
    pub fn new(brokers: impl Into<String>) -> KafkaConnection {
        KafkaConnection {
            brokers: brokers.into(),
            properties: BTreeMap::new(),
        }
    }

    /// The same brokers and properties, with `properties` added (later ones win).
    pub fn with_properties(
        mut self,
        properties: impl IntoIterator<Item = (String, String)>,
    ) -> KafkaConnection {
        self.properties.extend(properties);
        self
    }

    /// A librdkafka configuration with the brokers and every property; the caller adds its
    /// client's own settings (a property given here is overridden only by what the caller
    /// sets after).
    pub fn client_config(&self) -> ClientConfig {
        let mut config = ClientConfig::new();
        config.set("bootstrap.servers", &self.brokers);
        for (name, value) in &self.properties {
            config.set(name, value);
        }
        config
    }

    /// The security protocol the properties ask for (librdkafka's default: PLAINTEXT).
    pub fn security_protocol(&self) -> &str {
        self.properties
            .get("security.protocol")
            .map_or("PLAINTEXT", String::as_str)
    }

    /// The brokers and the properties, secrets hidden: for logs, errors and reports.
    pub fn shown(&self) -> String {
        if self.properties.is_empty() {
            return self.brokers.clone();
        }
        let properties: Vec<String> = self
            .properties
            .iter()
            .map(|(name, value)| format!("{name}={}", shown_value(name, value)))
            .collect();
        format!("{} ({})", self.brokers, properties.join(", "))
    }
}

impl std::fmt::Debug for KafkaConnection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.shown())
    }
}

/// The authentication and TLS failures a client met, as librdkafka reported them: a refused
/// login or a broker certificate that does not verify otherwise looks like brokers out of
/// reach (librdkafka retries them as it retries everything).
#[derive(Clone, Default)]
pub struct SecurityFailures(Arc<Mutex<Option<String>>>);

impl SecurityFailures {
    /// The first failure met, if any.
    pub fn first(&self) -> Option<String> {
        self.0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }

    fn record(&self, reason: &str) {
        let mut kept = self
            .0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        kept.get_or_insert_with(|| reason.to_owned());
    }
}

/// A client context that keeps [`SecurityFailures`] and logs librdkafka's logs and errors
/// as the default context does. Failures are taken from the log as well as from the error
/// callback: librdkafka logs them from its own threads, while it hands errors over only to
/// a client that polls its main queue (an admin client does not).
#[derive(Clone, Default)]
pub struct RecordingContext {
    pub failures: SecurityFailures,
}

impl ClientContext for RecordingContext {
    fn log(&self, level: RDKafkaLogLevel, fac: &str, log_message: &str) {
        if fac == "FAIL" && is_security_message(log_message) {
            self.failures.record(log_message);
        }
        log_as_default(level, fac, log_message);
    }

    fn error(&self, error: KafkaError, reason: &str) {
        if is_security_failure(&error) {
            self.failures.record(reason);
        }
        tracing::error!("librdkafka: {error}: {reason}");
    }
}

/// What a connection failure logged by librdkafka says when a login was refused or a TLS
/// handshake failed.
pub fn is_security_message(message: &str) -> bool {
    [
        "SASL authentication error",
        "SSL handshake failed",
        "certificate verify failed",
        "Authentication failed",
    ]
    .iter()
    .any(|pattern| message.contains(pattern))
}

/// rdkafka's own mapping of librdkafka's log levels.
pub fn log_as_default(level: RDKafkaLogLevel, fac: &str, log_message: &str) {
    match level {
        RDKafkaLogLevel::Emerg
        | RDKafkaLogLevel::Alert
        | RDKafkaLogLevel::Critical
        | RDKafkaLogLevel::Error => tracing::error!("librdkafka: {fac} {log_message}"),
        RDKafkaLogLevel::Warning => tracing::warn!("librdkafka: {fac} {log_message}"),
        RDKafkaLogLevel::Notice | RDKafkaLogLevel::Info => {
            tracing::info!("librdkafka: {fac} {log_message}")
        }
        RDKafkaLogLevel::Debug => tracing::debug!("librdkafka: {fac} {log_message}"),
    }
}

/// A refused login, a failed TLS handshake, or a missing right.
pub fn is_security_failure(error: &KafkaError) -> bool {
    matches!(
        error.rdkafka_error_code(),
        Some(
            RDKafkaErrorCode::Authentication
                | RDKafkaErrorCode::SaslAuthenticationFailed
                | RDKafkaErrorCode::SSL
                | RDKafkaErrorCode::ClusterAuthorizationFailed
        )
    )
}

/// Whether a property's value is a secret: passwords, secrets, inline keys, OAuth settings.
pub fn is_secret(name: &str) -> bool {
    let name = name.to_ascii_lowercase();
    name.contains("password")
        || name.contains("secret")
        || name == "ssl.key.pem"
        || name == "ssl_key"
        || name.starts_with("sasl.oauthbearer.config")
        || name.contains("token")
}

fn shown_value<'a>(name: &str, value: &'a str) -> &'a str {
    if is_secret(name) {
        "***"
    } else {
        value
    }
}

/// The properties the variables set: `WALFLOW_KAFKA_PROPERTY_SASL_MECHANISM=SCRAM-SHA-256`
/// sets `sasl.mechanism`; `WALFLOW_KAFKA_PROPERTY_SASL_PASSWORD_FILE=/run/secrets/kafka`
/// sets `sasl.password` to the file's content (without its final newline).
pub fn properties_from_variables(
    variables: impl IntoIterator<Item = (String, String)>,
) -> Result<BTreeMap<String, String>, KafkaPropertyError> {
    let mut properties = BTreeMap::new();
    for (variable, value) in variables {
        let Some(name) = variable.strip_prefix(PROPERTY_VARIABLE_PREFIX) else {
            continue;
        };
        let (name, value) = match name.strip_suffix("_FILE") {
            Some(name) => {
                let file = std::path::PathBuf::from(&value);
                let text =
                    std::fs::read_to_string(&file).map_err(|source| KafkaPropertyError::File {
                        variable: variable.clone(),
                        file,
                        source,
                    })?;
                (name, text.trim_end_matches(['\n', '\r']).to_owned())
            }
            None => (name, value),
        };
        if name.is_empty() {
            return Err(KafkaPropertyError::Empty { variable });
        }
        properties.insert(name.to_ascii_lowercase().replace('_', "."), value);
    }
    Ok(properties)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn variables_name_properties_and_files_give_secrets() {
        let secret = std::env::temp_dir().join(format!("walflow-kafka-{}", std::process::id()));
        std::fs::write(&secret, "s3cret\n").unwrap();
        let properties = properties_from_variables([
            (
                "WALFLOW_KAFKA_PROPERTY_SECURITY_PROTOCOL".to_owned(),
                "SASL_SSL".to_owned(),
            ),
            (
                "WALFLOW_KAFKA_PROPERTY_SASL_PASSWORD_FILE".to_owned(),
                secret.display().to_string(),
            ),
            ("WALFLOW_KAFKA_BROKERS".to_owned(), "ignored".to_owned()),
        ])
        .unwrap();
        std::fs::remove_file(&secret).unwrap();
        assert_eq!(
            properties,
            BTreeMap::from([
                ("sasl.password".to_owned(), "s3cret".to_owned()),
                ("security.protocol".to_owned(), "SASL_SSL".to_owned()),
            ])
        );
        let connection = KafkaConnection::new("b:9094").with_properties(properties);
        assert_eq!(connection.security_protocol(), "SASL_SSL");
        let shown = format!("{} {connection:?}", connection.shown());
        assert!(!shown.contains("s3cret"), "{shown}");
        assert!(shown.contains("sasl.password=***"), "{shown}");
        assert_eq!(
            connection.client_config().get("sasl.password"),
            Some("s3cret")
        );
    }

    #[test]
    fn a_missing_secret_file_is_named() {
        let error = properties_from_variables([(
            "WALFLOW_KAFKA_PROPERTY_SASL_PASSWORD_FILE".to_owned(),
            "/nonexistent/secret".to_owned(),
        )])
        .unwrap_err()
        .to_string();
        assert!(
            error.contains("WALFLOW_KAFKA_PROPERTY_SASL_PASSWORD_FILE=/nonexistent/secret"),
            "{error}"
        );
    }
}
