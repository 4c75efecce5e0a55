//! `walflow fake-api`: a randomuser-compatible API on this machine.

use std::io::Write;
use std::net::SocketAddr;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use clap::Args;
use walflow_ingest::fake_api::{self, Faults};

use crate::exit::Failure;

#[derive(Debug, Args)]
#[command(
    long_about = "Serves randomuser-compatible users at /api/ and /api/1.4/ (parameters \
        results (at most 5000), seed, page, nat, inc, exc), deterministic per seed and page, so \
        the demo and the tests need no internet.\n\n\
        Faults can be injected to see retries and rejects at work. The first line on stdout \
        names the address, which helps with --listen 127.0.0.1:0.",
    after_help = "Example:\n  walflow fake-api --listen 127.0.0.1:8080 --fail-429-rate 0.1 --bad-record-rate 0.01\n  \
        walflow ingest --source http://127.0.0.1:8080/api/ --count 20000"
)]
pub struct FakeApiArgs {
    /// Address to listen on (port 0 picks a free port)
    #[arg(long, default_value = "127.0.0.1:8080", value_name = "ADDRESS")]
    listen: SocketAddr,

    /// Share of requests answered 429 Too Many Requests, with Retry-After
    #[arg(long, default_value_t = 0.0, value_name = "FRACTION")]
    fail_429_rate: f64,

    /// The Retry-After sent with a 429, in seconds
    #[arg(long, default_value_t = 1, value_name = "SECONDS")]
    retry_after_secs: u64,

    /// Share of requests answered 500 Internal Server Error
    #[arg(long, default_value_t = 0.0, value_name = "FRACTION")]
    fail_500_rate: f64,

    /// Share of requests answered with a body cut in half (malformed JSON)
    #[arg(long, default_value_t = 0.0, value_name = "FRACTION")]
    malformed_json_rate: f64,

    /// Share of records with a missing uuid, a bad date or a field of the wrong type (the
    /// same records for the same seed)
    #[arg(long, default_value_t = 0.0, value_name = "FRACTION")]
    bad_record_rate: f64,

    /// Delay added to every response, in milliseconds
    #[arg(long, default_value_t = 0, value_name = "MS")]
    latency_ms: u64,

    /// Seed of the request faults' draws, to repeat a run's sequence of faults
    #[arg(long, default_value_t = 1)]
    fault_seed: u64,
}

pub async fn run(args: FakeApiArgs) -> Result<ExitCode, Failure> {
    for (flag, rate) in [
        ("--fail-429-rate", args.fail_429_rate),
        ("--fail-500-rate", args.fail_500_rate),
        ("--malformed-json-rate", args.malformed_json_rate),
        ("--bad-record-rate", args.bad_record_rate),
    ] {
        if !(0.0..=1.0).contains(&rate) {
            return Err(Failure::Usage(anyhow::anyhow!(
                "{flag} must be between 0 and 1, got {rate}"
            )));
        }
    }
    if args.fail_429_rate + args.fail_500_rate + args.malformed_json_rate >= 1.0 {
        return Err(Failure::Usage(anyhow::anyhow!(
            "--fail-429-rate + --fail-500-rate + --malformed-json-rate must stay below 1, or no request succeeds"
        )));
    }
    let faults = Faults {
        rate_429: args.fail_429_rate,
        retry_after_secs: args.retry_after_secs,
        rate_500: args.fail_500_rate,
        malformed_json_rate: args.malformed_json_rate,
        bad_record_rate: args.bad_record_rate,
        latency: Duration::from_millis(args.latency_ms),
    };
    let (address, server) = fake_api::bind(args.listen, faults, args.fault_seed)
        .await
        .with_context(|| format!("cannot listen on {}", args.listen))?;
    println!("fake-api: serving http://{address}/api/");
    let _ = std::io::stdout().flush();
    tokio::select! {
        served = server => served.context("the fake API server stopped")?,
        _ = tokio::signal::ctrl_c() => tracing::info!("fake-api: stopping"),
    }
    Ok(ExitCode::SUCCESS)
}
