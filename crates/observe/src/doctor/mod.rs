//! `walflow doctor`: one report per service, each a list of named checks with a status,
//! a detail and, when a check does not pass, the fix.

mod cassandra;
mod kafka;
mod postgres;
mod report;
mod schema_registry;

use std::time::Duration;

use serde::Serialize;
use walflow_redact::error_chain;

pub use report::render_table;

/// Where the services are. The Postgres URL may carry a password: it is only handed to the
/// client, and `postgres_display` is what reports show.
#[derive(Debug, Clone)]
pub struct DoctorTargets {
    pub postgres_url: String,
    pub postgres_display: String,
    /// Kafka's brokers and the librdkafka properties (TLS, SASL) every client gets.
    pub kafka: walflow_tls::kafka::KafkaConnection,
    pub cassandra_nodes: Vec<String>,
    /// Checked only when configured (Avro change events need it).
    pub schema_registry_url: Option<String>,
    /// Upper bound for connecting to each service and for each round trip.
    pub timeout: Duration,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    Ok,
    /// Works now, but is a risk worth fixing (for example unbounded WAL retention).
    Warn,
    Fail,
}

#[derive(Debug, Clone, Serialize)]
pub struct Check {
    pub name: &'static str,
    pub status: Status,
    pub detail: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fix: Option<String>,
}

impl Check {
    pub fn ok(name: &'static str, detail: impl Into<String>) -> Check {
        Check {
            name,
            status: Status::Ok,
            detail: detail.into(),
            fix: None,
        }
    }

    pub fn warn(name: &'static str, detail: impl Into<String>, fix: impl Into<String>) -> Check {
        Check {
            name,
            status: Status::Warn,
            detail: detail.into(),
            fix: Some(fix.into()),
        }
    }

    pub fn fail(name: &'static str, detail: impl Into<String>, fix: impl Into<String>) -> Check {
        Check {
            name,
            status: Status::Fail,
            detail: detail.into(),
            fix: Some(fix.into()),
        }
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct ServiceReport {
    pub service: &'static str,
    pub address: String,
    pub version: Option<String>,
    pub checks: Vec<Check>,
}

impl ServiceReport {
    fn new(service: &'static str, address: String) -> ServiceReport {
        ServiceReport {
            service,
            address,
            version: None,
            checks: Vec::new(),
        }
    }

    pub fn status(&self) -> Status {
        worst(self.checks.iter().map(|check| check.status))
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct DoctorReport {
    pub status: Status,
    pub services: Vec<ServiceReport>,
}

impl DoctorReport {
    pub fn healthy(&self) -> bool {
        self.status != Status::Fail
    }
}

fn worst(statuses: impl Iterator<Item = Status>) -> Status {
    statuses.fold(Status::Ok, |worst, status| match (worst, status) {
        (Status::Fail, _) | (_, Status::Fail) => Status::Fail,
        (Status::Warn, _) | (_, Status::Warn) => Status::Warn,
        _ => Status::Ok,
    })
}

/// Runs the checks of all three services at once; a service that cannot be reached fails
/// its own checks and never stops the others from being checked.
pub async fn run(targets: &DoctorTargets) -> DoctorReport {
    let registry = async {
        match &targets.schema_registry_url {
            Some(url) => Some(schema_registry::check(targets, url).await),
            None => None,
        }
    };
    let (postgres, kafka, cassandra, registry) = tokio::join!(
        postgres::check(targets),
        kafka::check(targets),
        cassandra::check(targets),
        registry,
    );
    let mut services = vec![postgres, kafka, cassandra];
    services.extend(registry);
    let status = worst(services.iter().map(ServiceReport::status));
    DoctorReport { status, services }
}

/// A name for a scratch topic or keyspace that no other doctor run picks at the same time.
fn scratch_name(prefix: &str) -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|elapsed| elapsed.subsec_nanos())
        .unwrap_or_default();
    format!("{prefix}_{}_{nanos}", std::process::id())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_worst_status_wins() {
        assert_eq!(worst([Status::Ok, Status::Ok].into_iter()), Status::Ok);
        assert_eq!(worst([Status::Ok, Status::Warn].into_iter()), Status::Warn);
        assert_eq!(
            worst([Status::Fail, Status::Warn, Status::Ok].into_iter()),
            Status::Fail
        );
        assert_eq!(worst(std::iter::empty()), Status::Ok);
    }
}
