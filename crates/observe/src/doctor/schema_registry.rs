//! Is the schema registry fit for Avro change events: it answers the Confluent-compatible
//! API, refuses breaking changes by default (a compatibility level other than NONE), and
//! lets walflow register a schema (a scratch subject, deleted again). It is asked through
//! the same client cdc and process use.

use serde_json::json;
use walflow_wire::registry::SchemaRegistry;

use super::{scratch_name, Check, DoctorTargets, ServiceReport};

pub(super) async fn check(targets: &DoctorTargets, url: &str) -> ServiceReport {
    let registry = match SchemaRegistry::with_timeout(url, targets.timeout) {
        Ok(registry) => registry,
        Err(error) => {
            let shown = walflow_redact::url(url.trim_end_matches('/'));
            let mut report = ServiceReport::new("schema registry", shown);
            report.checks.push(unreachable(error.to_string()));
            return report;
        }
    };
    // The URL's userinfo is how the registry authenticates walflow: reports show it hidden.
    let shown = registry.shown().to_owned();
    let mut report = ServiceReport::new("schema registry", shown.clone());

    match registry.subjects().await {
        Ok(subjects) => report.checks.push(Check::ok(
            "connect",
            format!("answers the Confluent API, {} subjects", subjects.len()),
        )),
        Err(error) => {
            report.checks.push(unreachable(error.to_string()));
            return report;
        }
    }

    match registry.default_level().await {
        Ok(level) => {
            let level = level.unwrap_or_else(|| "unknown".to_owned());
            report.version = None;
            report.checks.push(if level == "NONE" {
                Check::warn(
                    "compatibility",
                    "the default compatibility is NONE: a schema change that breaks readers \
                     would not be refused",
                    format!(
                        "curl -X PUT -H 'Content-Type: application/vnd.schemaregistry.v1+json' \
                         -d '{{\"compatibility\":\"BACKWARD\"}}' {shown}/config"
                    ),
                )
            } else {
                Check::ok("compatibility", format!("default {level}"))
            });
        }
        Err(error) => report.checks.push(Check::warn(
            "compatibility",
            format!("cannot read the default compatibility: {error}"),
            "check that the URL ends with the Confluent-compatible API's base (for Apicurio \
             Registry, /apis/ccompat/v7)",
        )),
    }

    report.checks.push(register_check(&registry).await);
    report
}

/// Registers a one-field record under a scratch subject, then deletes the subject.
async fn register_check(registry: &SchemaRegistry) -> Check {
    let subject = format!("{}-value", scratch_name("walflow_doctor"));
    let schema = json!({
        "type": "record",
        "name": "DoctorCheck",
        "namespace": "walflow",
        "fields": [{"name": "id", "type": "long"}],
    });
    let check = match registry.register(&subject, &schema).await {
        Ok(id) => Check::ok(
            "register",
            format!("registered a schema (id {id}) and removed it"),
        ),
        Err(error) if error.is_transient() => Check::fail(
            "register",
            format!("registering a schema: {error}"),
            "check the registry's log",
        ),
        Err(error) => Check::fail(
            "register",
            format!("registering a schema under {subject}: {error}"),
            "give walflow's credentials the right to register schemas, and check that the URL \
             is the registry's Confluent-compatible API",
        ),
    };
    // The scratch subject goes whatever the outcome; a failure to delete it changes nothing
    // of the verdict.
    let _ = registry.delete_subject(&subject).await;
    check
}

fn unreachable(detail: String) -> Check {
    Check::fail(
        "connect",
        detail,
        "start the schema registry (scripts/services up) or point WALFLOW_SCHEMA_REGISTRY_URL / \
         --schema-registry-url at its Confluent-compatible API (Apicurio Registry: \
         http://HOST:8080/apis/ccompat/v7)",
    )
}
