//! `walflow ingest`: users from a randomuser-compatible API into Postgres.

use std::io::IsTerminal;
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use clap::Args;
use indicatif::{ProgressBar, ProgressStyle};
use walflow_ingest::retry::RetryPolicy;
use walflow_ingest::run::{self, IngestError, IngestOptions, IngestSummary};

use crate::config::{Config, GlobalArgs};
use crate::exit::Failure;

pub const DEFAULT_SOURCE: &str = "https://randomuser.me/api/1.4/";
/// The conventional exit code of a process stopped by SIGINT.
const EXIT_INTERRUPTED: u8 = 130;

#[derive(Debug, Args)]
#[command(
    long_about = "Fetches users from a randomuser-compatible API and upserts them into the \
        `users` table (run `walflow migrate` first).\n\n\
        Records that do not validate (a missing uuid, a bad date, a field of the wrong type, \
        a NUL character, which Postgres cannot store) \
        go to `ingest_rejects` with the reason; the rest are written. Each batch is one \
        transaction. Re-running with the same --seed changes nothing. 429s, 5xx, timeouts \
        and garbled bodies are retried with exponential backoff and jitter, honouring \
        Retry-After. Ctrl-C stops after the current batch.\n\n\
        Offline: run `walflow fake-api` and pass --source http://127.0.0.1:8080/api/.",
    after_help = "Examples:\n  walflow ingest --count 10000 --seed demo\n  \
        walflow ingest --source http://127.0.0.1:8080/api/ --count 50000 --churn 0.1 --json"
)]
pub struct IngestArgs {
    /// How many users to fetch
    #[arg(long, default_value_t = 1000)]
    count: u64,

    /// The API to fetch from (an API key may sit in its query string or userinfo: it is
    /// shown as ***)
    #[arg(
        long,
        env = "WALFLOW_INGEST_SOURCE",
        hide_env_values = true,
        default_value = DEFAULT_SOURCE,
        value_name = "URL"
    )]
    source: String,

    /// Seed passed to the API: the same seed gives the same users
    #[arg(long)]
    seed: Option<String>,

    /// Nationalities passed to the API, comma-separated (for example us,gb,fr)
    #[arg(long, value_name = "LIST")]
    nat: Option<String>,

    /// Users per request and per transaction (the API allows at most 5000)
    #[arg(long, default_value_t = 5000, value_name = "N")]
    batch_size: u32,

    /// After ingesting, change this share of the fetched count among existing users: moves,
    /// new emails and deletions (2 : 2 : 1), so downstream sees every kind of change
    #[arg(long, default_value_t = 0.0, value_name = "FRACTION")]
    churn: f64,

    /// Retries per request before giving up
    #[arg(long, default_value_t = 8)]
    max_retries: u32,

    /// Seconds before a request is abandoned (and retried)
    #[arg(long, default_value_t = 30, value_name = "SECONDS")]
    request_timeout_secs: u64,

    /// At most this many requests per second (no limit by default)
    #[arg(long, value_name = "RATE")]
    max_requests_per_second: Option<f64>,

    /// Print the summary as one JSON object
    #[arg(long)]
    json: bool,
}

pub async fn run(args: IngestArgs, global: &GlobalArgs) -> Result<ExitCode, Failure> {
    let config = Config::load(global)?;
    let options = IngestOptions {
        postgres_url: config.postgres_url.expose().to_owned(),
        source: args.source.clone(),
        count: args.count,
        seed: args.seed.clone(),
        nat: args.nat.clone(),
        batch_size: args.batch_size,
        churn: args.churn,
        retry: RetryPolicy {
            max_retries: args.max_retries,
            ..RetryPolicy::default()
        },
        request_timeout: Duration::from_secs(args.request_timeout_secs.max(1)),
        max_requests_per_second: args.max_requests_per_second,
    };

    let stop = Arc::new(AtomicBool::new(false));
    spawn_stop_on_signal(stop.clone());
    let progress = progress_bar(args.count);
    let on_written = {
        let progress = progress.clone();
        move |handled: u64| progress.inc(handled)
    };
    tracing::info!(source = %walflow_redact::url(&options.source), count = options.count, seed = ?options.seed, "ingest starting");
    let outcome = run::run(&options, stop, &on_written).await;
    progress.finish_and_clear();

    match outcome {
        Ok(summary) => {
            print_summary(&summary, args.json)?;
            Ok(if summary.interrupted {
                ExitCode::from(EXIT_INTERRUPTED)
            } else {
                ExitCode::SUCCESS
            })
        }
        Err(failure) => {
            print_summary(&failure.summary, args.json)?;
            let error = anyhow::Error::new(failure.error);
            Err(match error.downcast_ref::<IngestError>() {
                Some(IngestError::Options(_)) => Failure::Usage(error),
                _ => Failure::Runtime(error),
            })
        }
    }
}

fn print_summary(summary: &IngestSummary, json: bool) -> Result<(), Failure> {
    if json {
        let text =
            serde_json::to_string(summary).map_err(|error| Failure::Runtime(error.into()))?;
        println!("{text}");
    } else {
        println!("{}", summary.one_line());
    }
    Ok(())
}

/// Ctrl-C or SIGTERM (what Airflow and Docker send) asks for a stop after the current batch;
/// a second signal ends the process at once, which a batch's transaction also survives.
fn spawn_stop_on_signal(stop: Arc<AtomicBool>) {
    tokio::spawn(async move {
        let mut terminate =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(signal) => signal,
                Err(error) => {
                    tracing::warn!(%error, "cannot listen for SIGTERM");
                    return;
                }
            };
        for _ in 0..2 {
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = terminate.recv() => {}
            }
            if stop.swap(true, Ordering::SeqCst) {
                eprintln!("ingest: stopping now");
                std::process::exit(i32::from(EXIT_INTERRUPTED));
            }
            eprintln!("ingest: stopping after the current batch (signal again to stop now)");
        }
    });
}

fn progress_bar(count: u64) -> ProgressBar {
    if !std::io::stderr().is_terminal() {
        return ProgressBar::hidden();
    }
    let bar = ProgressBar::new(count);
    if let Ok(style) = ProgressStyle::with_template(
        "{spinner} ingest [{elapsed_precise}] {wide_bar} {pos}/{len} users ({per_sec}, eta {eta})",
    ) {
        bar.set_style(style);
    }
    bar
}
