//! `walflow bench ingest`: users/s from the fake API into Postgres, beside psql COPY.

use std::process::ExitCode;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::bail;
use clap::Args;
use serde::Serialize;

use crate::support::*;
use crate::Services;
use walflow_ingest::fake_api::{self, Faults};
use walflow_ingest::retry::RetryPolicy;
use walflow_ingest::run::{self as ingest_run, IngestOptions};
use walflow_ingest::schema;

#[derive(Debug, Args)]
pub struct IngestBenchArgs {
    /// Users per round
    #[arg(long, default_value_t = 200_000)]
    users: u64,

    /// Rounds of each; medians are reported
    #[arg(long, default_value_t = 3)]
    rounds: u32,

    /// Users per request and per transaction
    #[arg(long, default_value_t = 5000)]
    batch_size: u32,

    /// Print one JSON object
    #[arg(long)]
    json: bool,
}

#[derive(Debug, Serialize)]
struct IngestBenchReport {
    users: u64,
    rounds: u32,
    ingest_users_per_second: f64,
    copy_users_per_second: f64,
    ratio_to_copy: f64,
    ingest_seconds: Vec<f64>,
    copy_seconds: Vec<f64>,
    goal_users_per_second: f64,
    goal_ratio: f64,
    goals_met: bool,
}

const GOAL_USERS_PER_SECOND: f64 = 20_000.0;
const GOAL_RATIO: f64 = 0.5;

pub(crate) async fn bench_ingest(
    args: IngestBenchArgs,
    config: &Services,
) -> anyhow::Result<ExitCode> {
    which_psql()?;
    let admin = connect(config.postgres_url.as_str()).await?;
    let database = create_scratch_database(&admin, "walflow_bench").await?;
    let outcome = bench_in_database(&args, config, &database).await;
    drop_scratch_database(&admin, &database).await?;
    let report = outcome?;
    if args.json {
        println!("{}", serde_json::to_string(&report)?);
    } else {
        println!(
            "bench ingest: {} users x {} rounds (median)\n  walflow ingest: {:>9.0} users/s\n  psql COPY:      {:>9.0} users/s\n  ratio:          {:>9.2}\n  goals (>= {:.0} users/s, >= {:.1} of COPY): {}",
            report.users,
            report.rounds,
            report.ingest_users_per_second,
            report.copy_users_per_second,
            report.ratio_to_copy,
            GOAL_USERS_PER_SECOND,
            GOAL_RATIO,
            if report.goals_met { "met" } else { "MISSED" },
        );
    }
    Ok(ExitCode::SUCCESS)
}

async fn bench_in_database(
    args: &IngestBenchArgs,
    config: &Services,
    database: &str,
) -> anyhow::Result<IngestBenchReport> {
    let url = config.database_url(database)?;
    let mut client = connect(url.as_str()).await?;
    schema::migrate(&mut client).await?;

    let (api_address, server) =
        fake_api::bind("127.0.0.1:0".parse()?, Faults::default(), 1).await?;
    let server = tokio::spawn(server);
    let options = IngestOptions {
        postgres_url: url.to_string(),
        source: format!("http://{api_address}/api/"),
        count: args.users,
        seed: Some("bench".to_owned()),
        nat: None,
        batch_size: args.batch_size,
        churn: 0.0,
        retry: RetryPolicy::default(),
        request_timeout: Duration::from_secs(60),
        max_requests_per_second: None,
    };
    let csv = tempfile_path("walflow-bench-users.csv");
    let columns =
        "id, gender, title, first_name, last_name, street_number, street_name, city, state, \
                   country, postcode, latitude, longitude, timezone_offset, timezone_name, email, \
                   username, dob, registered_at, phone, cell, picture_large, picture_medium, \
                   picture_thumbnail, nat";
    let mut ingest_seconds = Vec::new();
    let mut copy_seconds = Vec::new();
    for round in 1..=args.rounds.max(1) {
        client.batch_execute("TRUNCATE users").await?;
        let summary = ingest_run::run(&options, Arc::new(AtomicBool::new(false)), &|_| {})
            .await
            .map_err(|failure| anyhow::anyhow!("{}", failure.error))?;
        if summary.inserted != args.users {
            bail!(
                "round {round}: ingest inserted {} of {} users",
                summary.inserted,
                args.users
            );
        }
        ingest_seconds.push(summary.seconds);
        if round == 1 {
            psql(
                url.as_str(),
                &format!(
                    "\\copy (SELECT {columns} FROM users) TO '{}' CSV",
                    csv.display()
                ),
            )?;
        }
        client.batch_execute("TRUNCATE users").await?;
        let started = Instant::now();
        psql(
            url.as_str(),
            &format!("\\copy users ({columns}) FROM '{}' CSV", csv.display()),
        )?;
        copy_seconds.push(started.elapsed().as_secs_f64());
        tracing::info!(
            round,
            ingest_s = summary.seconds,
            copy_s = copy_seconds[copy_seconds.len() - 1],
            "round done"
        );
    }
    server.abort();
    let _ = std::fs::remove_file(&csv);
    let ingest_users_per_second = args.users as f64 / median(&ingest_seconds);
    let copy_users_per_second = args.users as f64 / median(&copy_seconds);
    let ratio_to_copy = ingest_users_per_second / copy_users_per_second;
    Ok(IngestBenchReport {
        users: args.users,
        rounds: args.rounds.max(1),
        ingest_users_per_second,
        copy_users_per_second,
        ratio_to_copy,
        ingest_seconds,
        copy_seconds,
        goal_users_per_second: GOAL_USERS_PER_SECOND,
        goal_ratio: GOAL_RATIO,
        goals_met: ingest_users_per_second >= GOAL_USERS_PER_SECOND && ratio_to_copy >= GOAL_RATIO,
    })
}
