//! The one client of a Confluent-compatible schema registry (Confluent's own, Apicurio
//! Registry's `/apis/ccompat/v7`, Redpanda's), for every part of walflow that talks to one:
//! cdc checks and registers its tables' schemas, process fetches writer schemas by id, doctor
//! checks that the registry is fit. Ids of registered schemas are cached per subject and
//! schema, so a table's events cost no registry call once its schema is known. Credentials in
//! the URL's userinfo never reach an error or a log: the registry is named by its redacted
//! address.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use serde_json::{json, Value as Json};

const CONTENT_TYPE: &str = "application/vnd.schemaregistry.v1+json";

/// How long one registry call may take, unless told otherwise.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(30);

#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    /// No answer: the registry is down, unreachable, or too slow.
    #[error("cannot reach the schema registry at {url}: {message}")]
    Unreachable { url: String, message: String },
    /// An answer that is not what was asked for.
    #[error("the schema registry answered {status} to {what}: {body}")]
    Refused {
        what: String,
        status: u16,
        body: String,
    },
}

impl RegistryError {
    /// Whether waiting may mend it: no answer, or a server error (5xx). A 4xx answer (an
    /// unknown id, a schema refused) stays the same however long one waits.
    pub fn is_transient(&self) -> bool {
        match self {
            RegistryError::Unreachable { .. } => true,
            RegistryError::Refused { status, .. } => *status >= 500,
        }
    }
}

/// What the registry says of a schema for a subject.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Compatibility {
    /// The subject has no schema yet: anything goes.
    NewSubject,
    Compatible,
    /// Refused under `level`; `reasons` as the registry gave them.
    Incompatible {
        level: String,
        reasons: Vec<String>,
    },
}

pub struct SchemaRegistry {
    base: String,
    /// `base` as errors show it: its credentials hidden.
    shown: String,
    client: reqwest::Client,
    ids: Mutex<HashMap<(String, String), u32>>,
}

impl SchemaRegistry {
    /// A client of the registry at `url` (the base of its Confluent-compatible API, with
    /// credentials in the userinfo if it wants them).
    pub fn new(url: &str) -> Result<SchemaRegistry, RegistryError> {
        SchemaRegistry::with_timeout(url, DEFAULT_TIMEOUT)
    }

    pub fn with_timeout(url: &str, timeout: Duration) -> Result<SchemaRegistry, RegistryError> {
        let client = reqwest::Client::builder()
            .timeout(timeout)
            .build()
            .map_err(|error| RegistryError::Unreachable {
                url: walflow_redact::url(url),
                message: format!(
                    "cannot build an HTTP client: {}",
                    walflow_redact::error_chain(&error)
                ),
            })?;
        let base = url.trim_end_matches('/').to_owned();
        Ok(SchemaRegistry {
            shown: walflow_redact::url(&base).trim_end_matches('/').to_owned(),
            base,
            client,
            ids: Mutex::new(HashMap::new()),
        })
    }

    /// The registry's address as messages show it: without the userinfo password.
    pub fn shown(&self) -> &str {
        &self.shown
    }

    /// One call: the status and the body (JSON, or the text as a JSON string).
    async fn call(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<Json>,
    ) -> Result<(u16, Json), RegistryError> {
        let what = format!("{method} {path}");
        let mut request = self
            .client
            .request(method, format!("{}{path}", self.base))
            .header("Accept", CONTENT_TYPE);
        if let Some(body) = body {
            request = request
                .header("Content-Type", CONTENT_TYPE)
                .body(body.to_string());
        }
        let unreachable = |error: reqwest::Error| RegistryError::Unreachable {
            url: self.shown.clone(),
            message: format!(
                "{what}: {}",
                walflow_redact::error_chain(&error.without_url())
            ),
        };
        let response = request.send().await.map_err(unreachable)?;
        let status = response.status().as_u16();
        let body = response.text().await.map_err(unreachable)?;
        let json = serde_json::from_str(&body).unwrap_or(Json::String(body));
        Ok((status, json))
    }

    /// A call that must answer 200; `what` names it in the error.
    async fn call_ok(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<Json>,
        what: impl FnOnce() -> String,
    ) -> Result<Json, RegistryError> {
        let (status, body) = self.call(method, path, body).await?;
        if status != 200 {
            return Err(RegistryError::Refused {
                what: what(),
                status,
                body: body_text(&body),
            });
        }
        Ok(body)
    }

    /// Every subject the registry holds.
    pub async fn subjects(&self) -> Result<Vec<String>, RegistryError> {
        let body = self
            .call_ok(reqwest::Method::GET, "/subjects", None, || {
                "GET /subjects".to_owned()
            })
            .await?;
        match body.as_array() {
            Some(subjects) => Ok(subjects
                .iter()
                .filter_map(|subject| subject.as_str().map(str::to_owned))
                .collect()),
            None => Err(RegistryError::Refused {
                what: "GET /subjects (a list of subjects was expected)".into(),
                status: 200,
                body: body_text(&body),
            }),
        }
    }

    /// The registry's default compatibility level; `None` when it answers without one.
    pub async fn default_level(&self) -> Result<Option<String>, RegistryError> {
        let body = self
            .call_ok(reqwest::Method::GET, "/config", None, || {
                "GET /config".to_owned()
            })
            .await?;
        Ok(level_of(&body))
    }

    /// The compatibility level that applies to `subject` (its own, else the global one).
    pub async fn level(&self, subject: &str) -> Result<String, RegistryError> {
        for path in [
            format!("/config/{}", path_segment(subject)),
            "/config".to_owned(),
        ] {
            let (status, body) = self.call(reqwest::Method::GET, &path, None).await?;
            if status == 200 {
                if let Some(level) = level_of(&body) {
                    return Ok(level);
                }
            }
        }
        Ok("unknown".into())
    }

    /// Checks `schema` against the subject's latest version under its compatibility rule.
    pub async fn check(
        &self,
        subject: &str,
        schema: &Json,
    ) -> Result<Compatibility, RegistryError> {
        // Some registries answer "compatible" for a subject that does not exist: ask first.
        let latest = format!("/subjects/{}/versions/latest", path_segment(subject));
        let (status, _) = self.call(reqwest::Method::GET, &latest, None).await?;
        if status == 404 {
            return Ok(Compatibility::NewSubject);
        }
        let path = format!(
            "/compatibility/subjects/{}/versions/latest?verbose=true",
            path_segment(subject)
        );
        let (status, body) = self
            .call(
                reqwest::Method::POST,
                &path,
                Some(json!({ "schema": schema.to_string() })),
            )
            .await?;
        match status {
            200 if body["is_compatible"] == true => Ok(Compatibility::Compatible),
            200 => Ok(Compatibility::Incompatible {
                level: self.level(subject).await?,
                reasons: body["messages"]
                    .as_array()
                    .map(|messages| {
                        messages
                            .iter()
                            .filter_map(|message| message.as_str().map(str::to_owned))
                            .collect()
                    })
                    .unwrap_or_default(),
            }),
            // Confluent: 40401 subject not found, 40402 version not found.
            404 => Ok(Compatibility::NewSubject),
            _ => Err(RegistryError::Refused {
                what: format!("the compatibility check of {subject}"),
                status,
                body: body_text(&body),
            }),
        }
    }

    /// Registers `schema` under `subject` (a schema already there gets its id back); ids
    /// are cached.
    pub async fn register(&self, subject: &str, schema: &Json) -> Result<u32, RegistryError> {
        let text = schema.to_string();
        let cache_key = (subject.to_owned(), text.clone());
        if let Some(id) = self.ids_locked().get(&cache_key) {
            return Ok(*id);
        }
        let path = format!("/subjects/{}/versions", path_segment(subject));
        let (status, body) = self
            .call(
                reqwest::Method::POST,
                &path,
                Some(json!({ "schema": text })),
            )
            .await?;
        let id = match (status, body["id"].as_u64().map(u32::try_from)) {
            (200, Some(Ok(id))) => id,
            _ => {
                return Err(RegistryError::Refused {
                    what: format!("registering a schema under {subject}"),
                    status,
                    body: body_text(&body),
                })
            }
        };
        self.ids_locked().insert(cache_key, id);
        Ok(id)
    }

    /// Sets a subject's compatibility level (NONE lets a breaking change through).
    pub async fn set_level(&self, subject: &str, level: &str) -> Result<(), RegistryError> {
        let path = format!("/config/{}", path_segment(subject));
        self.call_ok(
            reqwest::Method::PUT,
            &path,
            Some(json!({ "compatibility": level })),
            || format!("setting {subject}'s compatibility to {level}"),
        )
        .await?;
        Ok(())
    }

    /// Deletes a subject and its schemas for good (a soft delete, then the permanent one, as
    /// the Confluent API asks).
    pub async fn delete_subject(&self, subject: &str) -> Result<(), RegistryError> {
        let path = format!("/subjects/{}", path_segment(subject));
        for path in [path.clone(), format!("{path}?permanent=true")] {
            self.call_ok(reqwest::Method::DELETE, &path, None, || {
                format!("deleting subject {subject}")
            })
            .await?;
        }
        Ok(())
    }

    /// The schema (its text) registered under `id`.
    pub async fn schema(&self, id: u32) -> Result<String, RegistryError> {
        let what = || format!("GET /schemas/ids/{id}");
        let body = self
            .call_ok(
                reqwest::Method::GET,
                &format!("/schemas/ids/{id}"),
                None,
                what,
            )
            .await?;
        match body["schema"].as_str() {
            Some(text) => Ok(text.to_owned()),
            None => Err(RegistryError::Refused {
                what: format!("{} (no schema in the answer)", what()),
                status: 200,
                body: body_text(&body),
            }),
        }
    }

    /// How many registry calls `register` saved: for tests and metrics.
    pub fn cached(&self) -> usize {
        self.ids_locked().len()
    }

    fn ids_locked(&self) -> std::sync::MutexGuard<'_, HashMap<(String, String), u32>> {
        self.ids
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

fn level_of(config: &Json) -> Option<String> {
    config["compatibilityLevel"]
        .as_str()
        .or(config["compatibility"].as_str())
        .map(str::to_owned)
}

/// An answer's body as an error shows it: text as it came, JSON as JSON.
fn body_text(body: &Json) -> String {
    match body {
        Json::String(text) => text.clone(),
        other => other.to_string(),
    }
}

/// A subject as one segment of a registry path: every byte but letters, digits and `-._~`
/// percent-encoded, so no subject can reach another path or add a query (subjects end in
/// `-key` or `-value`, never `.` or `..`).
fn path_segment(subject: &str) -> String {
    const SEGMENT: &percent_encoding::AsciiSet = &percent_encoding::NON_ALPHANUMERIC
        .remove(b'-')
        .remove(b'.')
        .remove(b'_')
        .remove(b'~');
    percent_encoding::utf8_percent_encode(subject, SEGMENT).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_subject_stays_one_path_segment() {
        assert_eq!(
            path_segment("walflow.public.users-value"),
            "walflow.public.users-value"
        );
        assert_eq!(
            path_segment("a/../b?c#d%e f-key"),
            "a%2F..%2Fb%3Fc%23d%25e%20f-key"
        );
        assert_eq!(path_segment("é-key"), "%C3%A9-key");
    }

    #[tokio::test]
    async fn an_unreachable_registry_is_named_without_its_credentials() {
        let registry = SchemaRegistry::new("http://user:s3cret@127.0.0.1:1/apis/ccompat/v7/")
            .expect("a client without TLS settings builds");
        for error in [
            registry
                .level("walflow.public.users-value")
                .await
                .expect_err("nothing listens on port 1"),
            registry
                .schema(7)
                .await
                .expect_err("nothing listens on port 1"),
        ] {
            assert!(error.is_transient(), "{error}");
            let error = error.to_string();
            assert!(!error.contains("s3cret"), "{error}");
            assert!(
                error.contains("http://user:***@127.0.0.1:1/apis/ccompat/v7"),
                "{error}"
            );
        }
    }

    #[test]
    fn only_no_answer_and_server_errors_are_worth_waiting_for() {
        let refused = |status| RegistryError::Refused {
            what: "GET /schemas/ids/1".into(),
            status,
            body: String::new(),
        };
        assert!(refused(503).is_transient());
        assert!(!refused(404).is_transient());
        assert!(!refused(422).is_transient());
    }
}
