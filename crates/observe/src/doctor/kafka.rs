//! Is Kafka fit to carry walflow's change events: brokers answer metadata requests, speak a
//! recent enough protocol, and let walflow create (and delete) a topic.

use std::time::Duration;

use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};

use walflow_tls::kafka::{KafkaConnection, RecordingContext};

use super::{scratch_name, Check, DoctorTargets, ServiceReport};
use crate::kafka_api_versions::{self, BrokerApiVersions};

/// InitProducerId (API key 22), which transactions and idempotent producers need.
const INIT_PRODUCER_ID_API_KEY: i16 = 22;

pub(super) async fn check(targets: &DoctorTargets) -> ServiceReport {
    let mut report = ServiceReport::new("kafka", targets.kafka.shown());
    let context = RecordingContext::default();
    let failures = context.failures.clone();
    let admin: AdminClient<RecordingContext> = match targets
        .kafka
        .client_config()
        .set(
            "socket.connection.setup.timeout.ms",
            timeout_ms(targets.timeout),
        )
        .set("log_level", "3")
        .create_with_context(context)
    {
        Ok(admin) => admin,
        Err(error) => {
            report.checks.push(Check::fail(
                "connect",
                format!("cannot configure a Kafka client: {error}"),
                "check WALFLOW_KAFKA_BROKERS / --kafka-brokers (HOST:PORT,...)",
            ));
            return report;
        }
    };
    let admin = std::sync::Arc::new(admin);

    let metadata_admin = admin.clone();
    let timeout = targets.timeout;
    let metadata = tokio::task::spawn_blocking(move || {
        metadata_admin
            .inner()
            .fetch_metadata(None, timeout)
            .map(|metadata| {
                (
                    metadata.brokers().len(),
                    metadata.topics().len(),
                    metadata.orig_broker_name().to_owned(),
                )
            })
    })
    .await;
    match metadata {
        Ok(Ok((brokers, topics, answered_by))) => report.checks.push(Check::ok(
            "connect",
            format!("{brokers} broker(s), {topics} topic(s), answered by {answered_by}"),
        )),
        Ok(Err(error)) => {
            report.checks.push(match failures.first() {
                Some(reason) => Check::fail(
                    "connect",
                    format!("Kafka refused the connection: {reason}"),
                    "check security.protocol, sasl.mechanism, sasl.username, sasl.password and \
                     ssl.ca.location (walflow.toml's [kafka.properties] or \
                     WALFLOW_KAFKA_PROPERTY_* variables)",
                ),
                None => Check::fail(
                    "connect",
                    format!("no metadata within {timeout:?}: {error}"),
                    "start Kafka (scripts/services up) or point WALFLOW_KAFKA_BROKERS / \
                     --kafka-brokers at a reachable broker",
                ),
            });
            return report;
        }
        Err(error) => {
            report.checks.push(Check::fail(
                "connect",
                format!("metadata task failed: {error}"),
                "retry",
            ));
            return report;
        }
    }

    let protocol = targets.kafka.security_protocol();
    report.checks.push(security_check(&targets.kafka));
    report
        .checks
        .push(match first_broker(&targets.kafka.brokers) {
            // The ApiVersions probe speaks plain text; the admin client's metadata above
            // already answered over the configured protocol.
            Some(_) if protocol != "PLAINTEXT" => Check::ok(
                "protocol",
                format!("not probed over {protocol} (the version probe speaks plain text only)"),
            ),
            Some(broker) => match kafka_api_versions::request(broker, targets.timeout).await {
                Ok(versions) => {
                    report.version = Some(describe_version(&versions));
                    protocol_check(&versions)
                }
                Err(error) => Check::fail(
                    "protocol",
                    format!("ApiVersions request to {broker} failed: {error}"),
                    "use Apache Kafka 2.4 or newer (walflow is tested on 4.x)",
                ),
            },
            None => Check::fail(
                "protocol",
                "no broker address given",
                "set WALFLOW_KAFKA_BROKERS",
            ),
        });

    report
        .checks
        .push(create_topic_check(&admin, targets.timeout).await);
    report
}

/// How the clients reach Kafka: plain text, or TLS and/or SASL.
fn security_check(kafka: &KafkaConnection) -> Check {
    let protocol = kafka.security_protocol().to_ascii_uppercase();
    let mechanism = kafka
        .properties
        .get("sasl.mechanism")
        .or_else(|| kafka.properties.get("sasl.mechanisms"))
        .map_or("GSSAPI", String::as_str);
    let verified = kafka
        .properties
        .get("enable.ssl.certificate.verification")
        .is_none_or(|value| value != "false");
    match protocol.as_str() {
        "SASL_SSL" | "SSL" if verified => {
            let login = if protocol == "SASL_SSL" {
                format!(", login {mechanism}")
            } else {
                String::new()
            };
            Check::ok(
                "security",
                format!("{protocol}: encrypted, the brokers' certificates verified{login}"),
            )
        }
        "SASL_SSL" | "SSL" => Check::warn(
            "security",
            format!("{protocol} with enable.ssl.certificate.verification=false"),
            "give the brokers' CA (ssl.ca.location) and remove \
             enable.ssl.certificate.verification=false",
        ),
        "SASL_PLAINTEXT" => Check::warn(
            "security",
            format!("SASL_PLAINTEXT: login {mechanism}, but the traffic is not encrypted"),
            "use security.protocol=SASL_SSL",
        ),
        _ => Check::ok("security", "PLAINTEXT (not encrypted)"),
    }
}

fn first_broker(brokers: &str) -> Option<&str> {
    brokers
        .split(',')
        .map(str::trim)
        .find(|broker| !broker.is_empty())
}

fn timeout_ms(timeout: Duration) -> String {
    timeout.as_millis().max(1000).to_string()
}

fn describe_version(versions: &BrokerApiVersions) -> String {
    match versions.finalized_feature("metadata.version") {
        Some(level) => format!("KRaft, metadata.version level {level}"),
        None => format!(
            "ApiVersions {} APIs (no KRaft metadata.version)",
            versions.apis.len()
        ),
    }
}

fn protocol_check(versions: &BrokerApiVersions) -> Check {
    match versions.max_version(INIT_PRODUCER_ID_API_KEY) {
        Some(_) => Check::ok(
            "protocol",
            format!(
                "{} APIs; idempotent and transactional producers supported",
                versions.apis.len()
            ),
        ),
        None => Check::fail(
            "protocol",
            "the broker has no InitProducerId API: no idempotent or transactional producer",
            "use Apache Kafka 2.4 or newer (walflow is tested on 4.x)",
        ),
    }
}

/// Creates a one-partition scratch topic and deletes it again: the same admin rights that
/// `walflow cdc` needs for its topics.
async fn create_topic_check(admin: &AdminClient<RecordingContext>, timeout: Duration) -> Check {
    let topic = scratch_name("walflow_doctor");
    let options = AdminOptions::new()
        .operation_timeout(Some(timeout))
        .request_timeout(Some(timeout));
    let created = admin
        .create_topics(
            &[NewTopic::new(&topic, 1, TopicReplication::Fixed(1))],
            &options,
        )
        .await;
    let outcome = match created {
        Ok(results) => results.into_iter().find_map(|result| result.err()),
        Err(error) => Some((topic.clone(), error_code_of(&error))),
    };
    if let Some((_, code)) = outcome {
        return Check::fail(
            "create topic",
            format!("could not create topic {topic}: {code}"),
            "allow walflow's principal to create topics (ACL CREATE on the cluster), or \
             create its topics beforehand",
        );
    }
    match admin.delete_topics(&[&topic], &options).await {
        Ok(_) => Check::ok("create topic", format!("created and deleted {topic}")),
        Err(error) => Check::warn(
            "create topic",
            format!("created {topic} but could not delete it: {error}"),
            format!("delete topic {topic} by hand; allow walflow's principal to delete topics"),
        ),
    }
}

fn error_code_of(error: &rdkafka::error::KafkaError) -> rdkafka::types::RDKafkaErrorCode {
    error
        .rdkafka_error_code()
        .unwrap_or(rdkafka::types::RDKafkaErrorCode::Fail)
}
