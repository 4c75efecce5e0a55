//! The HTTP side of ingest: one page of users per request, retried on rate limits, server
//! errors, timeouts and garbled bodies, and paced by an optional request rate.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use rand::Rng;
use serde::Deserialize;
use serde_json::value::RawValue;
use tokio::sync::Mutex;
use tokio::time::Instant;

use crate::retry::{is_retryable_status, parse_retry_after, RetryPolicy};

/// The API's documented maximum per request.
pub const MAX_RESULTS_PER_REQUEST: u32 = 5000;

/// The most bytes one response may have: a full page at 8 KiB per user, about seven times
/// what a randomuser record takes. A body past it is refused before it fills memory.
pub const MAX_BODY_BYTES: u64 = MAX_RESULTS_PER_REQUEST as u64 * 8 * 1024;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PageRequest {
    pub results: u32,
    pub page: u32,
    pub seed: Option<String>,
    pub nat: Option<String>,
}

#[derive(Debug)]
pub struct ApiPage {
    /// Each record's JSON text, validated later (and kept as sent when it is rejected).
    pub records: Vec<Box<RawValue>>,
    /// The seed the API used (it picks one when the request had none).
    pub seed: Option<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    #[error("{url} answered {status}, which retrying cannot fix: {body}")]
    Rejected {
        url: String,
        status: u16,
        body: String,
    },
    #[error("{url} still failing after {attempts} attempts; last failure: {last_failure}")]
    GaveUp {
        url: String,
        attempts: u32,
        last_failure: String,
    },
    #[error(
        "{url} sent a body of more than {limit_bytes} bytes, the limit for a page of \
         {MAX_RESULTS_PER_REQUEST} users; check that the source is a randomuser-compatible API"
    )]
    TooLarge { url: String, limit_bytes: u64 },
    #[error("cannot build the HTTP client: {0}")]
    Client(String),
}

/// Why a response's body was not read.
enum BodyError {
    Transport(reqwest::Error),
    TooLarge,
}

#[derive(Debug, Deserialize)]
struct ApiBody {
    results: Option<Vec<Box<RawValue>>>,
    info: Option<ApiInfo>,
    error: Option<String>,
}

#[derive(Debug, Deserialize)]
struct ApiInfo {
    seed: Option<String>,
}

pub struct ApiClient {
    http: reqwest::Client,
    source: String,
    /// `source` as errors show it: an API key in its userinfo or query string hidden.
    shown_source: String,
    policy: RetryPolicy,
    min_interval: Option<Duration>,
    next_request_at: Mutex<Instant>,
    retries: AtomicU64,
    max_body_bytes: u64,
}

impl ApiClient {
    pub fn new(
        source: &str,
        policy: RetryPolicy,
        request_timeout: Duration,
        max_requests_per_second: Option<f64>,
    ) -> Result<ApiClient, FetchError> {
        let http = reqwest::Client::builder()
            .timeout(request_timeout)
            .user_agent(concat!("walflow/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|error| FetchError::Client(error.to_string()))?;
        Ok(ApiClient {
            http,
            source: source.to_owned(),
            shown_source: walflow_redact::url(source),
            policy,
            min_interval: match max_requests_per_second {
                Some(rate) => Some(request_interval(rate).ok_or_else(|| {
                    FetchError::Client(format!("{rate} requests per second give no interval"))
                })?),
                None => None,
            },
            next_request_at: Mutex::new(Instant::now()),
            retries: AtomicU64::new(0),
            max_body_bytes: MAX_BODY_BYTES,
        })
    }

    /// Retries made so far, across all pages.
    pub fn retries(&self) -> u64 {
        self.retries.load(Ordering::Relaxed)
    }

    pub async fn fetch(&self, request: &PageRequest) -> Result<ApiPage, FetchError> {
        let mut query: Vec<(&str, String)> = vec![
            ("results", request.results.to_string()),
            ("page", request.page.to_string()),
        ];
        if let Some(seed) = &request.seed {
            query.push(("seed", seed.clone()));
        }
        if let Some(nat) = &request.nat {
            query.push(("nat", nat.clone()));
        }
        let url = describe(&self.shown_source, &query);
        let mut attempt = 0;
        loop {
            attempt += 1;
            self.pace().await;
            let (failure, retry_after) =
                match self.http.get(&self.source).query(&query).send().await {
                    Err(error) => (describe_transport_error(error), None),
                    Ok(response) => {
                        let status = response.status().as_u16();
                        let retry_after = response
                            .headers()
                            .get(reqwest::header::RETRY_AFTER)
                            .and_then(|value| value.to_str().ok())
                            .and_then(parse_retry_after);
                        match read_body(response, self.max_body_bytes).await {
                            Err(BodyError::TooLarge) => {
                                return Err(FetchError::TooLarge {
                                    url,
                                    limit_bytes: self.max_body_bytes,
                                });
                            }
                            Err(BodyError::Transport(error)) => {
                                (describe_transport_error(error), retry_after)
                            }
                            Ok(body) if status == 200 => match parse_body(&body) {
                                Ok(page) => return Ok(page),
                                Err(problem) => (problem, None),
                            },
                            Ok(body) if is_retryable_status(status) => {
                                (format!("HTTP {status}: {}", snippet(&body)), retry_after)
                            }
                            Ok(body) => {
                                return Err(FetchError::Rejected {
                                    url,
                                    status,
                                    body: snippet(&body),
                                });
                            }
                        }
                    }
                };
            if attempt > self.policy.max_retries {
                return Err(FetchError::GaveUp {
                    url,
                    attempts: attempt,
                    last_failure: failure,
                });
            }
            let delay = self
                .policy
                .delay(attempt, rand::rng().random::<f64>(), retry_after);
            self.retries.fetch_add(1, Ordering::Relaxed);
            tracing::warn!(
                page = request.page,
                attempt,
                max_retries = self.policy.max_retries,
                delay_ms = delay.as_millis() as u64,
                retry_after_s = retry_after.map(|after| after.as_secs()),
                %failure,
                "retrying the API request"
            );
            tokio::time::sleep(delay).await;
        }
    }

    /// Waits until the request rate allows one more request.
    async fn pace(&self) {
        let Some(interval) = self.min_interval else {
            return;
        };
        let wait_until = {
            let mut next = self.next_request_at.lock().await;
            let now = Instant::now();
            let slot = (*next).max(now);
            *next = slot + interval;
            slot
        };
        tokio::time::sleep_until(wait_until).await;
    }
}

/// The pause between requests at `rate` requests per second: none for a rate that is not a
/// positive number or so small that the interval does not fit a `Duration`.
pub fn request_interval(rate: f64) -> Option<Duration> {
    if !(rate.is_finite() && rate > 0.0) {
        return None;
    }
    Duration::try_from_secs_f64(1.0 / rate).ok()
}

/// The body, read chunk by chunk so that one past `limit` bytes is dropped as soon as it
/// is known to be (from its Content-Length, or while it streams).
async fn read_body(mut response: reqwest::Response, limit: u64) -> Result<Vec<u8>, BodyError> {
    if response
        .content_length()
        .is_some_and(|length| length > limit)
    {
        return Err(BodyError::TooLarge);
    }
    let mut body = Vec::new();
    while let Some(chunk) = response.chunk().await.map_err(BodyError::Transport)? {
        if (body.len() + chunk.len()) as u64 > limit {
            return Err(BodyError::TooLarge);
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body)
}

fn parse_body(body: &[u8]) -> Result<ApiPage, String> {
    let parsed: ApiBody = serde_json::from_slice(body)
        .map_err(|error| format!("malformed JSON ({error}) in a {}-byte body", body.len()))?;
    if let Some(error) = parsed.error {
        return Err(format!("the API reported an error: {error}"));
    }
    let records = parsed
        .results
        .ok_or_else(|| "the body has no `results` array".to_owned())?;
    Ok(ApiPage {
        records,
        seed: parsed.info.and_then(|info| info.seed),
    })
}

/// The request as errors name it: `shown_source` (already redacted) with walflow's own
/// parameters, which carry nothing secret.
fn describe(shown_source: &str, query: &[(&str, String)]) -> String {
    let parameters: Vec<String> = query
        .iter()
        .map(|(key, value)| format!("{key}={value}"))
        .collect();
    let separator = if shown_source.contains('?') { '&' } else { '?' };
    format!("{shown_source}{separator}{}", parameters.join("&"))
}

/// The error and its causes, without the request's URL (its query string may hold an API
/// key; the caller names the request with [`describe`]).
fn describe_transport_error(error: reqwest::Error) -> String {
    if error.is_timeout() {
        return "timed out".to_owned();
    }
    walflow_redact::error_chain(&error.without_url())
}

fn snippet(body: &[u8]) -> String {
    let text = String::from_utf8_lossy(body);
    let mut snippet: String = text.chars().take(200).collect();
    if text.chars().count() > 200 {
        snippet.push('…');
    }
    snippet
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_are_described_without_the_sources_credentials() {
        let client = ApiClient::new(
            "https://user:s3cret@api.example.com/api/?apikey=s3cret",
            RetryPolicy::default(),
            Duration::from_secs(1),
            None,
        )
        .unwrap();
        let described = describe(&client.shown_source, &[("page", "3".to_owned())]);
        assert_eq!(
            described,
            "https://user:***@api.example.com/api/?apikey=***&page=3"
        );
    }

    #[tokio::test]
    async fn a_failing_request_is_reported_without_the_sources_credentials() {
        let client = ApiClient::new(
            "http://user:s3cret@127.0.0.1:1/api/?apikey=s3cret",
            RetryPolicy {
                max_retries: 0,
                ..RetryPolicy::default()
            },
            Duration::from_secs(5),
            None,
        )
        .unwrap();
        let request = PageRequest {
            results: 10,
            page: 1,
            seed: Some("demo".into()),
            nat: None,
        };
        let error = client.fetch(&request).await.unwrap_err().to_string();
        assert!(!error.contains("s3cret"), "{error}");
        assert!(error.contains("127.0.0.1:1/api/?apikey=***"), "{error}");
    }

    #[test]
    fn bodies_are_parsed_or_explained() {
        let page = parse_body(br#"{"results":[{"a":1}],"info":{"seed":"abc","page":1}}"#).unwrap();
        assert_eq!(page.records.len(), 1);
        assert_eq!(page.seed.as_deref(), Some("abc"));
        assert!(parse_body(b"{\"results\": [")
            .unwrap_err()
            .contains("malformed JSON"));
        assert!(parse_body(br#"{"error":"Uh oh"}"#)
            .unwrap_err()
            .contains("Uh oh"));
        assert!(parse_body(br#"{"info":{}}"#)
            .unwrap_err()
            .contains("results"));
    }
}
