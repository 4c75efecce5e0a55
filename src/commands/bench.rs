//! `walflow bench`: the harness lives in crates/bench (walflow-bench); this command hands it
//! the services walflow's configuration names.

use std::process::ExitCode;

use crate::config::{Config, GlobalArgs};
use crate::exit::Failure;

pub async fn run(args: walflow_bench::BenchArgs, global: &GlobalArgs) -> Result<ExitCode, Failure> {
    let config = Config::load(global)?;
    let services = walflow_bench::Services {
        postgres_url: config.postgres_url.expose().to_owned(),
        kafka: config.kafka.clone(),
        cassandra_nodes: config.cassandra_nodes.clone(),
        schema_registry_url: config
            .schema_registry_url
            .as_ref()
            .map(|url| url.expose().to_owned()),
    };
    walflow_bench::run(args, &services)
        .await
        .map_err(Failure::Runtime)
}
