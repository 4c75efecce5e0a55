//! Is the schema registry fit for Avro change events: it answers the Confluent-compatible
//! API, refuses breaking changes by default (a compatibility level other than NONE), and
//! lets walflow register a schema (a scratch subject, deleted again).

use serde_json::{json, Value};

use super::{scratch_name, Check, DoctorTargets, ServiceReport};

pub(super) async fn check(targets: &DoctorTargets, url: &str) -> ServiceReport {
    let url = url.trim_end_matches('/');
    // The URL's userinfo is how the registry authenticates walflow: reports show it hidden.
    let shown = walflow_redact::url(url);
    let shown = shown.trim_end_matches('/');
    let mut report = ServiceReport::new("schema registry", shown.to_owned());
    let client = match reqwest::Client::builder().timeout(targets.timeout).build() {
        Ok(client) => client,
        Err(error) => {
            report
                .checks
                .push(unreachable(format!("cannot build an HTTP client: {error}")));
            return report;
        }
    };
    let get = |path: &str| {
        let client = client.clone();
        let address = format!("{url}{path}");
        let shown = format!("{shown}{path}");
        async move {
            let response = client
                .get(&address)
                .send()
                .await
                .map_err(|error| format!("GET {shown}: {}", super::error_chain(&error)))?;
            let status = response.status();
            let body = response
                .text()
                .await
                .map_err(|error| format!("GET {shown}: {error}"))?;
            if !status.is_success() {
                return Err(format!("GET {shown}: HTTP {status}: {body}"));
            }
            serde_json::from_str::<Value>(&body)
                .map_err(|error| format!("GET {shown}: not JSON ({error}): {body}"))
        }
    };

    match get("/subjects").await {
        Ok(Value::Array(subjects)) => report.checks.push(Check::ok(
            "connect",
            format!("answers the Confluent API, {} subjects", subjects.len()),
        )),
        Ok(other) => {
            report.checks.push(unreachable(format!(
                "GET {shown}/subjects did not give a list of subjects: {other}"
            )));
            return report;
        }
        Err(error) => {
            report.checks.push(unreachable(error));
            return report;
        }
    }

    match get("/config").await {
        Ok(config) => {
            let level = config["compatibilityLevel"]
                .as_str()
                .or(config["compatibility"].as_str())
                .unwrap_or("unknown")
                .to_owned();
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

    report.checks.push(register_check(&client, url).await);
    report
}

/// Registers a one-field record under a scratch subject, then deletes the subject.
async fn register_check(client: &reqwest::Client, url: &str) -> Check {
    let subject = format!("{}-value", scratch_name("walflow_doctor"));
    let schema = json!({
        "type": "record",
        "name": "DoctorCheck",
        "namespace": "walflow",
        "fields": [{"name": "id", "type": "long"}],
    });
    let registered = client
        .post(format!("{url}/subjects/{subject}/versions"))
        .header("Content-Type", "application/vnd.schemaregistry.v1+json")
        .json(&json!({ "schema": schema.to_string() }))
        .send()
        .await;
    let check = match registered {
        Ok(response) if response.status().is_success() => {
            let body: Value = response.json().await.unwrap_or(Value::Null);
            match body["id"].as_i64() {
                Some(id) => Check::ok(
                    "register",
                    format!("registered a schema (id {id}) and removed it"),
                ),
                None => Check::fail(
                    "register",
                    format!("registering a schema gave no id: {body}"),
                    "check that the URL is the registry's Confluent-compatible API",
                ),
            }
        }
        Ok(response) => {
            let status = response.status();
            let body = response.text().await.unwrap_or_default();
            Check::fail(
                "register",
                format!("registering a schema under {subject}: HTTP {status}: {body}"),
                "give walflow's credentials the right to register schemas",
            )
        }
        Err(error) => Check::fail(
            "register",
            format!("registering a schema: {}", super::error_chain(&error)),
            "check the registry's log",
        ),
    };
    // Soft delete, then permanent, as the Confluent API asks.
    for permanent in ["", "?permanent=true"] {
        let _ = client
            .delete(format!("{url}/subjects/{subject}{permanent}"))
            .send()
            .await;
    }
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
