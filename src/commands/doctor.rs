//! `walflow doctor`: the preflight to run before anything else.

use std::process::ExitCode;
use std::time::Duration;

use clap::Args;
use walflow_observe::doctor::{self, DoctorTargets};

use crate::config::{Config, GlobalArgs};
use crate::exit::{Failure, EXIT_UNHEALTHY};

#[derive(Debug, Args)]
#[command(
    long_about = "Checks each service walflow uses and names the fix for anything unfit.\n\n\
        Postgres: connection, version, wal_level = logical, REPLICATION privilege, a free \
        replication slot and WAL sender, max_slot_wal_keep_size.\n\
        Kafka: metadata from the brokers, protocol (ApiVersions, KRaft metadata.version), \
        creating and deleting a topic.\n\
        Cassandra: connection, release version, creating and dropping a keyspace.\n\
        Schema registry (when WALFLOW_SCHEMA_REGISTRY_URL or --schema-registry-url is given): \
        the Confluent-compatible API answers, the default compatibility refuses breaking \
        changes, a schema can be registered (and is removed again).\n\n\
        Exits 0 when every check passes or only warns, 3 when a check fails."
)]
pub struct DoctorArgs {
    /// Print one JSON object instead of the table
    #[arg(long)]
    json: bool,

    /// Seconds to wait for each service to connect and answer
    #[arg(long, default_value_t = 10, value_name = "SECONDS")]
    timeout_secs: u64,
}

pub async fn run(args: DoctorArgs, global: &GlobalArgs) -> Result<ExitCode, Failure> {
    let config = Config::load(global)?;
    let targets = DoctorTargets {
        postgres_url: config.postgres_url.expose().to_owned(),
        postgres_display: config.postgres_url.redacted(),
        kafka: config.kafka.clone(),
        cassandra_nodes: config.cassandra_nodes.clone(),
        schema_registry_url: config
            .schema_registry_url
            .as_ref()
            .map(|url| url.expose().to_owned()),
        timeout: Duration::from_secs(args.timeout_secs.max(1)),
    };
    let report = doctor::run(&targets).await;
    if args.json {
        let json = serde_json::to_string_pretty(&report)
            .map_err(|error| Failure::Runtime(error.into()))?;
        println!("{json}");
    } else {
        print!("{}", doctor::render_table(&report));
    }
    Ok(if report.healthy() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(EXIT_UNHEALTHY)
    })
}
