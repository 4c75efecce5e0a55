//! One ingest run: fetch pages while the previous page is being written, validate each
//! record, write each page as one transaction, then churn if asked. A stop request (Ctrl-C)
//! is honoured between batches, so nothing is ever half-written.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::Serialize;
use serde_json::value::RawValue;
use tokio::sync::mpsc;

use crate::churn::churn;
use crate::client::{
    request_interval, ApiClient, ApiPage, FetchError, PageRequest, MAX_RESULTS_PER_REQUEST,
};
use crate::model::User;
use crate::retry::RetryPolicy;
use crate::writer::{Reject, UserWriter, WriteError};

/// Pages fetched ahead of the writer: enough to overlap HTTP with Postgres, few enough to
/// bound memory.
const PAGES_IN_FLIGHT: usize = 2;

#[derive(Debug, Clone)]
pub struct IngestOptions {
    pub postgres_url: String,
    pub source: String,
    pub count: u64,
    pub seed: Option<String>,
    pub nat: Option<String>,
    pub batch_size: u32,
    /// Share of the users fetched in this run to change afterwards (moves, new emails,
    /// deletions), 0 to 1.
    pub churn: f64,
    pub retry: RetryPolicy,
    pub request_timeout: Duration,
    pub max_requests_per_second: Option<f64>,
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct IngestSummary {
    pub source: String,
    pub seed: Option<String>,
    pub requested: u64,
    pub fetched: u64,
    pub inserted: u64,
    pub updated: u64,
    pub unchanged: u64,
    pub deleted: u64,
    pub rejected: u64,
    pub retries: u64,
    pub batches: u64,
    pub seconds: f64,
    pub rows_per_second: f64,
    pub interrupted: bool,
}

impl IngestSummary {
    pub fn one_line(&self) -> String {
        format!(
            "ingest: fetched {} (of {} requested), inserted {}, updated {}, unchanged {}, deleted {}, \
             rejected {}, retries {}, {:.2} s, {:.0} rows/s{}",
            self.fetched,
            self.requested,
            self.inserted,
            self.updated,
            self.unchanged,
            self.deleted,
            self.rejected,
            self.retries,
            self.seconds,
            self.rows_per_second,
            if self.interrupted { " (interrupted: every batch written so far is complete)" } else { "" },
        )
    }
}

#[derive(Debug, thiserror::Error)]
pub enum IngestError {
    #[error("fetching users failed: {0}")]
    Fetch(#[from] FetchError),
    #[error("writing users failed: {0}")]
    Write(#[from] WriteError),
    #[error("cannot connect to Postgres: {0}")]
    Connect(#[from] walflow_tls::postgres::ConnectError),
    #[error("invalid option: {0}")]
    Options(String),
}

/// What was done before a failure: batches already committed stay committed.
#[derive(Debug, thiserror::Error)]
#[error("{error}")]
pub struct IngestFailure {
    pub error: IngestError,
    pub summary: IngestSummary,
}

/// Runs the ingest. `stop` asks for a clean stop after the current batch; `on_written` is
/// called with the number of records handled after each batch (for a progress bar).
pub async fn run(
    options: &IngestOptions,
    stop: Arc<AtomicBool>,
    on_written: &(dyn Fn(u64) + Sync),
) -> Result<IngestSummary, IngestFailure> {
    let started = Instant::now();
    let mut summary = IngestSummary {
        // The summary goes to Airflow's task log: an API key in the URL stays out of it.
        source: walflow_redact::url(&options.source),
        seed: options.seed.clone(),
        requested: options.count,
        ..IngestSummary::default()
    };
    let outcome = ingest(options, &stop, on_written, &mut summary).await;
    summary.seconds = started.elapsed().as_secs_f64();
    summary.rows_per_second = if summary.seconds > 0.0 {
        summary.fetched as f64 / summary.seconds
    } else {
        0.0
    };
    match outcome {
        Ok(()) => Ok(summary),
        Err(error) => Err(IngestFailure { error, summary }),
    }
}

async fn ingest(
    options: &IngestOptions,
    stop: &Arc<AtomicBool>,
    on_written: &(dyn Fn(u64) + Sync),
    summary: &mut IngestSummary,
) -> Result<(), IngestError> {
    if options.batch_size == 0 || options.batch_size > MAX_RESULTS_PER_REQUEST {
        return Err(IngestError::Options(format!(
            "--batch-size must be between 1 and {MAX_RESULTS_PER_REQUEST}, got {}",
            options.batch_size
        )));
    }
    if !(0.0..=1.0).contains(&options.churn) {
        return Err(IngestError::Options(format!(
            "--churn must be between 0 and 1, got {}",
            options.churn
        )));
    }
    if let Some(rate) = options.max_requests_per_second {
        if request_interval(rate).is_none() {
            return Err(IngestError::Options(format!(
                "--max-requests-per-second must be a positive number of requests per second \
                 that gives an interval between them (for example 0.5 or 20), got {rate}"
            )));
        }
    }
    let mut writer =
        UserWriter::connect(&options.postgres_url, &walflow_redact::url(&options.source)).await?;
    let client = Arc::new(ApiClient::new(
        &options.source,
        options.retry,
        options.request_timeout,
        options.max_requests_per_second,
    )?);

    let (pages_sender, mut pages) =
        mpsc::channel::<Result<ValidatedPage, FetchError>>(PAGES_IN_FLIGHT);
    let fetcher = tokio::spawn(fetch_pages(
        options.clone(),
        client.clone(),
        stop.clone(),
        pages_sender,
    ));

    while let Some(page) = pages.recv().await {
        let page = match page {
            Ok(page) => page,
            Err(error) => {
                summary.retries = client.retries();
                return Err(error.into());
            }
        };
        if summary.seed.is_none() {
            summary.seed = page.seed.clone();
        }
        let handled = (page.users.len() + page.rejects.len()) as u64;
        let write_started = Instant::now();
        let outcome = writer.write_batch(&page.users, &page.rejects).await?;
        summary.fetched += handled;
        summary.inserted += outcome.inserted;
        summary.updated += outcome.updated;
        summary.unchanged += outcome.unchanged;
        summary.rejected += outcome.rejected;
        summary.batches += 1;
        summary.retries = client.retries();
        tracing::debug!(
            batch = summary.batches,
            write_ms = write_started.elapsed().as_millis() as u64,
            ?outcome,
            "batch committed"
        );
        on_written(handled);
        if stop.load(Ordering::SeqCst) {
            summary.interrupted = true;
            break;
        }
    }
    drop(pages);
    let _ = fetcher.await;
    summary.retries = client.retries();

    if options.churn > 0.0 && !summary.interrupted && summary.fetched > 0 {
        let count = (summary.fetched as f64 * options.churn).ceil() as u64;
        let changed = churn(writer.client_mut(), count).await?;
        summary.updated += changed.moved + changed.new_emails;
        summary.deleted += changed.deleted;
        tracing::info!(
            moved = changed.moved,
            new_emails = changed.new_emails,
            deleted = changed.deleted,
            "churn applied"
        );
    }
    Ok(())
}

/// A page of records, validated: what the writer writes as one batch.
struct ValidatedPage {
    users: Vec<User>,
    rejects: Vec<Reject>,
    seed: Option<String>,
}

/// Requests page after page until `count` records are fetched, the writer goes away, or a
/// stop is asked for, and validates each page while the writer writes the previous one.
/// Every page asks for the same number of results, so a given seed always yields the same
/// users in the same pages.
async fn fetch_pages(
    options: IngestOptions,
    client: Arc<ApiClient>,
    stop: Arc<AtomicBool>,
    pages: mpsc::Sender<Result<ValidatedPage, FetchError>>,
) {
    let per_page = u64::from(options.batch_size).min(options.count.max(1));
    let mut remaining = options.count;
    let mut page_number = 1;
    while remaining > 0 && !stop.load(Ordering::SeqCst) {
        let request = PageRequest {
            results: per_page as u32,
            page: page_number,
            seed: options.seed.clone(),
            nat: options.nat.clone(),
        };
        let wanted = remaining.min(per_page);
        let fetch_started = Instant::now();
        let validated = client.fetch(&request).await.map(|page: ApiPage| {
            let validate_started = Instant::now();
            let (users, rejects) = validate(page.records.into_iter().take(wanted as usize));
            tracing::debug!(
                page = page_number,
                fetch_ms = (validate_started - fetch_started).as_millis() as u64,
                validate_ms = validate_started.elapsed().as_millis() as u64,
                "page fetched and validated"
            );
            ValidatedPage {
                users,
                rejects,
                seed: page.seed,
            }
        });
        let failed = validated.is_err();
        if pages.send(validated).await.is_err() || failed {
            return;
        }
        remaining -= wanted;
        page_number += 1;
    }
}

fn validate(records: impl Iterator<Item = Box<RawValue>>) -> (Vec<User>, Vec<Reject>) {
    let mut users = Vec::new();
    let mut rejects = Vec::new();
    for record in records {
        match User::from_api_json(record.get()) {
            Ok(user) => users.push(user),
            Err(reason) => {
                // The raw text came out of a JSON array, so it parses; kept as a string if not.
                let payload = serde_json::from_str(record.get())
                    .unwrap_or_else(|_| serde_json::Value::String(record.get().to_owned()));
                rejects.push(Reject {
                    payload,
                    reason: reason.to_string(),
                });
            }
        }
    }
    (users, rejects)
}
