//! A client of a Confluent-compatible schema registry (Confluent's own, Apicurio Registry's
//! `/apis/ccompat/v7`, Redpanda's): checking a schema against a subject's compatibility rule
//! before it is used, and registering it. Ids are cached per subject and schema, so a table's
//! events cost no registry call once its schema is known.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use serde_json::{json, Value as Json};

const CONTENT_TYPE: &str = "application/vnd.schemaregistry.v1+json";

#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    #[error("cannot reach the schema registry at {url}: {message}")]
    Unreachable { url: String, message: String },
    #[error("the schema registry answered {status} to {what}: {body}")]
    Refused {
        what: String,
        status: u16,
        body: String,
    },
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
    pub fn new(url: &str) -> Result<SchemaRegistry, RegistryError> {
        let client = reqwest::Client::builder()
            .timeout(Duration::from_secs(30))
            .build()
            .map_err(|error| RegistryError::Unreachable {
                url: walflow_redact::url(url),
                message: error.to_string(),
            })?;
        let base = url.trim_end_matches('/').to_owned();
        Ok(SchemaRegistry {
            shown: walflow_redact::url(&base).trim_end_matches('/').to_owned(),
            base,
            client,
            ids: Mutex::new(HashMap::new()),
        })
    }

    async fn call(
        &self,
        what: String,
        request: reqwest::RequestBuilder,
    ) -> Result<(u16, Json), RegistryError> {
        let response = request
            .header("Content-Type", CONTENT_TYPE)
            .header("Accept", CONTENT_TYPE)
            .send()
            .await
            .map_err(|error| RegistryError::Unreachable {
                url: self.shown.clone(),
                message: format!("{what}: {error}"),
            })?;
        let status = response.status().as_u16();
        let body = response.text().await.unwrap_or_default();
        let json = serde_json::from_str(&body).unwrap_or(Json::String(body));
        Ok((status, json))
    }

    /// The compatibility level that applies to `subject` (its own, else the global one).
    pub async fn level(&self, subject: &str) -> Result<String, RegistryError> {
        for path in [
            format!("/config/{}", path_segment(subject)),
            "/config".to_owned(),
        ] {
            let (status, body) = self
                .call(
                    format!("GET {path}"),
                    self.client.get(format!("{}{path}", self.base)),
                )
                .await?;
            if status == 200 {
                if let Some(level) = body["compatibilityLevel"]
                    .as_str()
                    .or(body["compatibility"].as_str())
                {
                    return Ok(level.to_owned());
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
        let (status, _) = self
            .call(
                format!("GET {latest}"),
                self.client.get(format!("{}{latest}", self.base)),
            )
            .await?;
        if status == 404 {
            return Ok(Compatibility::NewSubject);
        }
        let path = format!(
            "/compatibility/subjects/{}/versions/latest?verbose=true",
            path_segment(subject)
        );
        let (status, body) = self
            .call(
                format!("POST {path}"),
                self.client
                    .post(format!("{}{path}", self.base))
                    .json(&json!({ "schema": schema.to_string() })),
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
                body: body.to_string(),
            }),
        }
    }

    /// Registers `schema` under `subject` (a schema already there gets its id back); ids
    /// are cached.
    pub async fn register(&self, subject: &str, schema: &Json) -> Result<u32, RegistryError> {
        let text = schema.to_string();
        let cache_key = (subject.to_owned(), text.clone());
        if let Some(id) = self
            .ids
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .get(&cache_key)
        {
            return Ok(*id);
        }
        let path = format!("/subjects/{}/versions", path_segment(subject));
        let (status, body) = self
            .call(
                format!("POST {path}"),
                self.client
                    .post(format!("{}{path}", self.base))
                    .json(&json!({ "schema": text })),
            )
            .await?;
        let id = match (status, body["id"].as_u64()) {
            (200, Some(id)) => id as u32,
            _ => {
                return Err(RegistryError::Refused {
                    what: format!("registering a schema under {subject}"),
                    status,
                    body: body.to_string(),
                })
            }
        };
        self.ids
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .insert(cache_key, id);
        Ok(id)
    }

    /// Sets a subject's compatibility level (NONE lets a breaking change through).
    pub async fn set_level(&self, subject: &str, level: &str) -> Result<(), RegistryError> {
        let path = format!("/config/{}", path_segment(subject));
        let (status, body) = self
            .call(
                format!("PUT {path}"),
                self.client
                    .put(format!("{}{path}", self.base))
                    .json(&json!({ "compatibility": level })),
            )
            .await?;
        if status != 200 {
            return Err(RegistryError::Refused {
                what: format!("setting {subject}'s compatibility to {level}"),
                status,
                body: body.to_string(),
            });
        }
        Ok(())
    }

    /// How many registry calls `register` saved: for tests and metrics.
    pub fn cached(&self) -> usize {
        self.ids
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .len()
    }
}

/// What changed between two versions of a table's value schema, column by column, in the
/// words a user needs: `column age (int) added without a default`, `column name removed`,
/// `column price changed from double to string`.
pub fn column_changes(old: &Json, new: &Json) -> Vec<String> {
    let columns = |schema: &Json| -> Vec<(String, String)> {
        // Envelope -> before -> ["null", Value record] -> fields.
        let fields = &schema["fields"];
        let value = fields
            .as_array()
            .and_then(|fields| fields.iter().find(|field| field["name"] == "before"))
            .and_then(|before| before["type"].as_array())
            .and_then(|branches| branches.iter().find(|branch| branch.is_object()))
            .map(|record| record["fields"].clone())
            .unwrap_or(Json::Null);
        value
            .as_array()
            .map(|fields| {
                fields
                    .iter()
                    .map(|field| {
                        let kind = field["type"]
                            .as_array()
                            .map(|branches| {
                                branches
                                    .iter()
                                    .filter(|branch| *branch != "null")
                                    .map(|branch| match branch {
                                        Json::String(name) => name.clone(),
                                        other => other["logicalType"]
                                            .as_str()
                                            .or(other["type"].as_str())
                                            .unwrap_or("?")
                                            .to_owned(),
                                    })
                                    .collect::<Vec<_>>()
                                    .join("|")
                            })
                            .unwrap_or_else(|| field["type"].to_string());
                        (field["name"].as_str().unwrap_or("?").to_owned(), kind)
                    })
                    .collect()
            })
            .unwrap_or_default()
    };
    let (before, after) = (columns(old), columns(new));
    let mut changes = Vec::new();
    for (name, kind) in &after {
        match before.iter().find(|(old_name, _)| old_name == name) {
            None => changes.push(format!("column {name} ({kind}) added")),
            Some((_, old_kind)) if old_kind != kind => {
                changes.push(format!("column {name} changed from {old_kind} to {kind}"))
            }
            Some(_) => {}
        }
    }
    for (name, _) in &before {
        if !after.iter().any(|(new_name, _)| new_name == name) {
            changes.push(format!("column {name} removed"));
        }
    }
    changes
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
        let error = registry
            .level("walflow.public.users-value")
            .await
            .expect_err("nothing listens on port 1")
            .to_string();
        assert!(!error.contains("s3cret"), "{error}");
        assert!(
            error.contains("http://user:***@127.0.0.1:1/apis/ccompat/v7"),
            "{error}"
        );
    }
}
