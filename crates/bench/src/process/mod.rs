//! `walflow bench process`: the shipped pipelines draining a backlog of change events,
//! beside two ceilings measured in the same run: consuming and decoding the same topic with
//! no processing, and writing the same number of rows to Cassandra with the driver directly.
//! With `--steady-rate`: commit-to-Cassandra latency end to end (Postgres commit -> cdc ->
//! Kafka -> process -> Cassandra) at a steady rate of single-row transactions.
//!
//! With a schema registry configured, the same backlog is also written in Avro (encoded by
//! cdc's own Avro encoder, registered like `walflow cdc --format avro` does) and two pipelines
//! run again over it with `format = 'debezium_avro'`, so Avro's bytes per event and events/s
//! stand beside JSON's from the same run.

use std::path::Path;
use std::sync::Arc;
use std::time::Instant;

use anyhow::Context;
use clap::Args;
use serde::Serialize;
use walflow_stream::definition::PipelineDefinition;
use walflow_stream::runner::{self, Pipeline, ProcessMetrics, ProcessOptions};

use crate::support::peak_rss_mb;
use crate::Services;

mod backlog;
mod ceilings;
mod latency;

use backlog::*;
use ceilings::*;
use latency::*;
/// The shipped pipelines the benchmark runs, in order.
const PIPELINES: [&str; 6] = [
    "users",
    "users_by_country",
    "users_by_region",
    "changes_per_minute",
    "signups_last_10_minutes",
    "editing_sessions",
];

#[derive(Debug, Args)]
pub struct ProcessBenchArgs {
    /// Change events in the backlog (inserts, then updates and deletes with their tombstones)
    #[arg(long, default_value_t = 1_000_000)]
    events: u64,

    /// Distinct users the events are about
    #[arg(long, default_value_t = 100_000)]
    users: u64,

    /// Instead of a backlog: commit single-row transactions at this steady rate through cdc
    /// and the users pipeline, and report commit-to-Cassandra latency percentiles
    #[arg(long, value_name = "CHANGES_PER_SECOND")]
    steady_rate: Option<u64>,

    /// How long the steady run lasts
    #[arg(long, default_value_t = 10, value_name = "SECONDS")]
    steady_seconds: u64,

    /// Only these shipped pipelines (names of sql/pipelines/*.sql, comma-separated); all by
    /// default
    #[arg(long, value_delimiter = ',', value_name = "NAME,...")]
    pipelines: Vec<String>,

    /// Print one JSON object
    #[arg(long)]
    json: bool,
}

#[derive(Debug, Serialize)]
struct PipelineFigures {
    pipeline: String,
    /// The source's format: "json" or "avro".
    format: &'static str,
    events: u64,
    seconds: f64,
    events_per_second: f64,
    consume_decode_events_per_second: f64,
    ratio_to_consume_decode: f64,
    rows_written: u64,
    rows_written_per_second: f64,
    cassandra_direct_rows_per_second: f64,
    ratio_to_cassandra_direct: f64,
    /// Kept state at the end: its checkpoint's size, the groups (windows times keys,
    /// sessions) it holds, and the rows it keeps (each keyed source's current rows, both
    /// sides of each join).
    checkpoint_bytes: u64,
    state_groups: u64,
    state_rows: u64,
}

#[derive(Debug, Serialize)]
struct ProcessBenchReport {
    events: u64,
    users: u64,
    /// Key and value bytes per event in the JSON backlog, and in the Avro one when measured.
    json_bytes_per_event: f64,
    avro_bytes_per_event: Option<f64>,
    pipelines: Vec<PipelineFigures>,
    peak_rss_mb: f64,
}

pub(crate) async fn bench_process(
    args: ProcessBenchArgs,
    config: &Services,
) -> anyhow::Result<std::process::ExitCode> {
    if let Some(rate) = args.steady_rate {
        return steady(rate, args.steady_seconds, args.json, config).await;
    }
    if let Some(unknown) = args
        .pipelines
        .iter()
        .find(|name| !PIPELINES.contains(&name.as_str()))
    {
        anyhow::bail!(
            "--pipelines: no shipped pipeline {unknown:?} (the benchmark runs {})",
            PIPELINES.join(", ")
        );
    }
    let run_id = format!("walflow_bench_{}", std::process::id());
    let topic = walflow_wire::topic::topic_name(&run_id, "public", "users");
    let keyspace = run_id.clone();
    let checkpoints = std::env::temp_dir().join(format!("{run_id}_checkpoints"));

    // The Avro backlog, when a registry is configured: the same events, in their own topic.
    let avro_prefix = format!("{run_id}_avro");
    let avro_topic = walflow_wire::topic::topic_name(&avro_prefix, "public", "users");
    let avro = match &config.schema_registry_url {
        Some(registry) => {
            let mut events = walflow_cdc::avro_events::AvroEvents::new(registry.as_str(), false)?;
            let relation = users_relation();
            events.prepare(&relation, &avro_prefix).await?;
            Some(AvroBacklog {
                events,
                prefix: avro_prefix.clone(),
                relation,
            })
        }
        None => None,
    };
    eprintln!(
        "bench process: producing {} change events about {} users into {topic}{}",
        args.events,
        args.users,
        if avro.is_some() {
            format!(" (JSON) and {avro_topic} (Avro)")
        } else {
            String::new()
        }
    );
    let backlog = produce_backlog(
        &config.kafka,
        &topic,
        args.events,
        args.users.max(1),
        avro.as_ref(),
    )?;
    let produced = backlog.events;

    // The join's other side: a handful of countries with their regions.
    let countries_topic = walflow_wire::topic::topic_name(&run_id, "public", "countries");
    let countries = produce_countries(&config.kafka, &countries_topic)?;

    let mut figures = Vec::new();
    let result: anyhow::Result<()> = async {
        let mut runs: Vec<(&str, &'static str)> =
            PIPELINES.iter().map(|name| (*name, "json")).collect();
        if avro.is_some() {
            // A stateless pipeline (Cassandra-bound) and an aggregate (decode-bound).
            runs.extend([("users", "avro"), ("users_by_country", "avro")]);
        }
        if !args.pipelines.is_empty() {
            runs.retain(|(name, _)| args.pipelines.iter().any(|wanted| wanted == name));
        }
        for (name, format) in runs {
            let (topic, keyspace, checkpoints) = if format == "avro" {
                (
                    avro_topic.clone(),
                    format!("{keyspace}_avro"),
                    checkpoints.join("avro"),
                )
            } else {
                (topic.clone(), keyspace.clone(), checkpoints.clone())
            };
            let path = Path::new("sql/pipelines").join(format!("{name}.sql"));
            let text = std::fs::read_to_string(&path).with_context(|| {
                format!(
                    "cannot read {} (run bench from the repository)",
                    path.display()
                )
            })?;
            let text = text
                .replace("'walflow.public.users'", &format!("'{topic}'"))
                .replace(
                    "'walflow.public.countries'",
                    &format!("'{countries_topic}'"),
                )
                .replace("keyspace = 'walflow'", &format!("keyspace = '{keyspace}'"));
            let text = if format == "avro" {
                text.replace("format = 'debezium_json'", "format = 'debezium_avro'")
            } else {
                text
            };
            let definition = PipelineDefinition::parse(&path, &text)?;
            let queries = walflow_stream::plan::compile(&definition).await?;
            let pipeline = Pipeline {
                definition,
                queries,
            };

            let source = pipeline
                .definition
                .sources
                .iter()
                .find(|source| source.topic == topic)
                .context("the pipeline reads the users topic")?
                .clone();
            let expected = if pipeline
                .definition
                .sources
                .iter()
                .any(|source| source.topic == countries_topic)
            {
                produced + countries
            } else {
                produced
            };
            eprintln!("bench process: {name} ({format}): consume + decode ceiling");
            let registry = config
                .schema_registry_url
                .as_ref()
                .map(|url| url.as_str().to_owned());
            let ceiling =
                consume_and_decode(&config.kafka, &topic, &source, registry.as_deref()).await?;

            eprintln!("bench process: {name} ({format}): the pipeline");
            let mut options =
                ProcessOptions::new(config.kafka.clone(), config.cassandra_nodes.clone());
            options.schema_registry_url = registry;
            options.checkpoint_dir = checkpoints.clone();
            options.stop_when_caught_up = true;
            options.dead_letter_topic = Some(format!("{run_id}.dead_letter.{name}_{format}"));
            let metrics = Arc::new(ProcessMetrics::default());
            let (_stop_sender, stop) = tokio::sync::watch::channel(false);
            let started = Instant::now();
            let summary = runner::run(&pipeline, &options, metrics.clone(), stop).await?;
            let seconds = started.elapsed().as_secs_f64();
            let checkpoint_bytes = metrics.last_checkpoint_bytes.get().max(0) as u64;
            let (state_groups, state_rows) = walflow_stream::checkpoint::load(
                &walflow_stream::checkpoint::path_for(&checkpoints, name),
            )?
            .map_or((0, 0), |state| {
                let groups: usize = state
                    .queries
                    .iter()
                    .map(|query| {
                        query.aggregates.iter().map(|a| a.groups()).sum::<usize>()
                            + query.sessions.iter().map(|s| s.sessions()).sum::<usize>()
                    })
                    .sum();
                let rows: usize = state
                    .sources
                    .values()
                    .map(|source| source.rows())
                    .sum::<usize>()
                    + state
                        .queries
                        .iter()
                        .flat_map(|query| &query.joins)
                        .map(|join| {
                            let (left, right) = join.rows();
                            left + right
                        })
                        .sum::<usize>();
                (groups as u64, rows as u64)
            });
            anyhow::ensure!(
                summary.events == expected,
                "{name} read {} events of {expected}",
                summary.events
            );

            eprintln!(
                "bench process: {name}: Cassandra write ceiling ({} rows)",
                summary.rows_written
            );
            let direct = cassandra_direct(
                &config.cassandra_nodes,
                &keyspace,
                summary.rows_written.max(1),
            )
            .await?;
            let events_per_second = summary.events as f64 / seconds;
            let rows_written_per_second = summary.rows_written as f64 / seconds;
            figures.push(PipelineFigures {
                pipeline: name.to_owned(),
                format,
                events: summary.events,
                seconds,
                events_per_second,
                consume_decode_events_per_second: ceiling,
                ratio_to_consume_decode: events_per_second / ceiling,
                rows_written: summary.rows_written,
                rows_written_per_second,
                cassandra_direct_rows_per_second: direct,
                ratio_to_cassandra_direct: rows_written_per_second / direct,
                checkpoint_bytes,
                state_groups,
                state_rows,
            });
        }
        Ok(())
    }
    .await;
    cleanup(
        config,
        &[
            topic.as_str(),
            countries_topic.as_str(),
            avro_topic.as_str(),
        ],
        &[keyspace.as_str(), format!("{keyspace}_avro").as_str()],
    )
    .await;
    let _ = std::fs::remove_dir_all(&checkpoints);
    result?;

    let report = ProcessBenchReport {
        events: produced,
        users: args.users,
        json_bytes_per_event: backlog.json_bytes as f64 / produced.max(1) as f64,
        avro_bytes_per_event: avro
            .is_some()
            .then(|| backlog.avro_bytes as f64 / produced.max(1) as f64),
        pipelines: figures,
        peak_rss_mb: peak_rss_mb(),
    };
    if args.json {
        println!("{}", serde_json::to_string(&report)?);
    } else {
        println!(
            "bench process: {} change events about {} users (one Kafka partition)",
            report.events, report.users
        );
        for figure in &report.pipelines {
            println!(
                "  {:<30} {:>9.0} events/s in {:>6.2} s = {:.2} of consume+decode ({:.0} events/s); \
                 {} rows written, {:.0} rows/s = {:.2} of direct Cassandra writes ({:.0} rows/s); \
                 state {} groups and {} kept rows, {:.1} MB checkpoint ({:.0} bytes each)",
                format!("{} ({})", figure.pipeline, figure.format),
                figure.events_per_second,
                figure.seconds,
                figure.ratio_to_consume_decode,
                figure.consume_decode_events_per_second,
                figure.rows_written,
                figure.rows_written_per_second,
                figure.ratio_to_cassandra_direct,
                figure.cassandra_direct_rows_per_second,
                figure.state_groups,
                figure.state_rows,
                figure.checkpoint_bytes as f64 / 1e6,
                figure.checkpoint_bytes as f64
                    / (figure.state_groups + figure.state_rows).max(1) as f64,
            );
        }
        match report.avro_bytes_per_event {
            Some(avro_bytes) => {
                println!(
                    "  bytes per event (key + value): JSON {:.0}, Avro {:.0} ({:.2} of JSON's size)",
                    report.json_bytes_per_event,
                    avro_bytes,
                    avro_bytes / report.json_bytes_per_event.max(1.0)
                );
                for avro_figure in report.pipelines.iter().filter(|f| f.format == "avro") {
                    if let Some(json_figure) = report
                        .pipelines
                        .iter()
                        .find(|f| f.format == "json" && f.pipeline == avro_figure.pipeline)
                    {
                        println!(
                            "  {} from Avro: {:.2} of JSON's events/s (consume+decode ceiling {:.2} of JSON's)",
                            avro_figure.pipeline,
                            avro_figure.events_per_second / json_figure.events_per_second,
                            avro_figure.consume_decode_events_per_second
                                / json_figure.consume_decode_events_per_second,
                        );
                    }
                }
            }
            None => println!(
                "  bytes per event (key + value): JSON {:.0} (no schema registry configured: Avro not measured)",
                report.json_bytes_per_event
            ),
        }
        println!("  peak RSS {:.1} MB", report.peak_rss_mb);
    }
    Ok(std::process::ExitCode::SUCCESS)
}
