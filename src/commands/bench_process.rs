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
use std::time::{Duration, Instant};

use anyhow::Context;
use clap::Args;
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::Message;
use rdkafka::producer::{BaseRecord, Producer, ThreadedProducer};
use rdkafka::util::DefaultRuntime;
use rdkafka::ClientConfig;
use serde::Serialize;
use serde_json::json;
use walflow_pgoutput::{Column, TupleData};
use walflow_stream::definition::PipelineDefinition;
use walflow_stream::runner::{self, Pipeline, ProcessMetrics, ProcessOptions};

use super::bench::{
    connect, create_scratch_database, drop_scratch_database, peak_rss_mb, percentile,
};
use crate::config::Config;

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

pub async fn bench_process(
    args: ProcessBenchArgs,
    config: &Config,
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
            let mut events = walflow_cdc::avro_events::AvroEvents::new(registry.expose(), false)?;
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
        &config.kafka_brokers,
        &topic,
        args.events,
        args.users.max(1),
        avro.as_ref(),
    )?;
    let produced = backlog.events;

    // The join's other side: a handful of countries with their regions.
    let countries_topic = walflow_wire::topic::topic_name(&run_id, "public", "countries");
    let countries = produce_countries(&config.kafka_brokers, &countries_topic)?;

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
                .map(|url| url.expose().to_owned());
            let ceiling =
                consume_and_decode(&config.kafka_brokers, &topic, &source, registry.as_deref())
                    .await?;

            eprintln!("bench process: {name} ({format}): the pipeline");
            let mut options =
                ProcessOptions::new(&config.kafka_brokers, config.cassandra_nodes.clone());
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

const COUNTRIES: [&str; 10] = [
    "Brazil",
    "Canada",
    "France",
    "Germany",
    "India",
    "Japan",
    "Norway",
    "Spain",
    "United Kingdom",
    "United States",
];

/// One insert per country of [`COUNTRIES`], with a region, as cdc would send the rows of
/// sql/schema/0002_countries.sql.
fn produce_countries(brokers: &str, topic: &str) -> anyhow::Result<u64> {
    let producer: ThreadedProducer<rdkafka::producer::DefaultProducerContext> = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .create()?;
    for (index, name) in COUNTRIES.iter().enumerate() {
        let region = ["Americas", "Europe", "Asia"][index % 3];
        let key = json!({ "name": name }).to_string();
        let value = json!({
            "before": null,
            "after": {"name": name, "region": region, "continent": region},
            "source": {"ts_ms": 1_795_000_000_000u64, "table": "countries"},
            "op": "c",
        })
        .to_string();
        producer
            .send(BaseRecord::to(topic).key(&key).payload(&value))
            .map_err(|(error, _)| error)?;
    }
    producer.flush(Duration::from_secs(30))?;
    Ok(COUNTRIES.len() as u64)
}

/// A users row as cdc would send it (the columns of sql/schema/0001_users.sql), varied by
/// `version` so updates change something.
fn user_row(user: u64, version: u64) -> serde_json::Value {
    let mix = user.wrapping_mul(0x9e3779b97f4a7c15) ^ version.wrapping_mul(0xbf58476d1ce4e5b9);
    let birth_year = 1950 + mix % 50;
    let signup_year = 2005 + (mix >> 8) % 15;
    json!({
        "id": format!("00000000-0000-4000-8000-{user:012x}"),
        "gender": if mix.is_multiple_of(2) { "female" } else { "male" },
        "title": "Mx",
        "first_name": format!("First{}", mix % 1000),
        "last_name": format!("Last{}", (mix >> 10) % 1000),
        "street_number": (mix % 9000) as i64 + 1,
        "street_name": "Main Street",
        "city": "Springfield",
        "state": "State",
        "country": COUNTRIES[((mix >> 20) % 10) as usize],
        "postcode": format!("{:05}", mix % 100_000),
        "latitude": 12.5,
        "longitude": -45.25,
        "timezone_offset": "+1:00",
        "timezone_name": "Europe",
        "email": format!("user{user}.v{version}@example.com"),
        "username": format!("user{user}"),
        "dob": format!("{birth_year}-03-04T05:06:07.123Z"),
        "registered_at": format!("{signup_year}-07-08T09:10:11.456Z"),
        "phone": "555-0100",
        "cell": "555-0101",
        "picture_large": "https://example.com/large.jpg",
        "picture_medium": "https://example.com/medium.jpg",
        "picture_thumbnail": "https://example.com/thumb.jpg",
        "nat": "US",
        "ingested_at": "2026-11-25T00:00:00Z",
        "updated_at": format!("2026-11-25T00:00:{:02}Z", version % 60),
    })
}

/// The users table (sql/schema/0001_users.sql) as cdc's Relation message describes it: each
/// column's name and type oid, `id` the key, replica identity full.
fn users_relation() -> walflow_pgoutput::Relation {
    use walflow_cdc::types::oid::{FLOAT8, INT4, TEXT, TIMESTAMPTZ, UUID};
    let columns = [
        ("id", UUID),
        ("gender", TEXT),
        ("title", TEXT),
        ("first_name", TEXT),
        ("last_name", TEXT),
        ("street_number", INT4),
        ("street_name", TEXT),
        ("city", TEXT),
        ("state", TEXT),
        ("country", TEXT),
        ("postcode", TEXT),
        ("latitude", FLOAT8),
        ("longitude", FLOAT8),
        ("timezone_offset", TEXT),
        ("timezone_name", TEXT),
        ("email", TEXT),
        ("username", TEXT),
        ("dob", TIMESTAMPTZ),
        ("registered_at", TIMESTAMPTZ),
        ("phone", TEXT),
        ("cell", TEXT),
        ("picture_large", TEXT),
        ("picture_medium", TEXT),
        ("picture_thumbnail", TEXT),
        ("nat", TEXT),
        ("ingested_at", TIMESTAMPTZ),
        ("updated_at", TIMESTAMPTZ),
    ];
    walflow_pgoutput::Relation {
        xid: None,
        oid: 16_384,
        namespace: "public".into(),
        name: "users".into(),
        replica_identity: walflow_pgoutput::ReplicaIdentity::Full,
        columns: columns
            .iter()
            .map(|(name, type_oid)| walflow_pgoutput::RelationColumn {
                is_key: *name == "id",
                name: (*name).into(),
                type_oid: *type_oid,
                type_modifier: -1,
            })
            .collect(),
    }
}

/// A row of [`user_row`] as pgoutput carries it: each column in Postgres's text output
/// (timestamps as `2026-11-25 00:00:00+00`).
fn users_tuple(relation: &walflow_pgoutput::Relation, row: &serde_json::Value) -> TupleData {
    let columns: Vec<Column> = relation
        .columns
        .iter()
        .map(|column| match &row[&*column.name] {
            serde_json::Value::Null => Column::Null,
            serde_json::Value::String(text)
                if column.type_oid == walflow_cdc::types::oid::TIMESTAMPTZ =>
            {
                Column::Text(
                    text.replace('T', " ")
                        .replace('Z', "+00")
                        .into_bytes()
                        .into(),
                )
            }
            serde_json::Value::String(text) => Column::Text(text.clone().into_bytes().into()),
            other => Column::Text(other.to_string().into_bytes().into()),
        })
        .collect();
    walflow_pgoutput::encode::tuple(&columns)
}

/// The Avro twin of the JSON backlog: cdc's Avro encoder with the users table registered.
struct AvroBacklog {
    events: walflow_cdc::avro_events::AvroEvents,
    prefix: String,
    relation: walflow_pgoutput::Relation,
}

struct Backlog {
    events: u64,
    json_bytes: u64,
    avro_bytes: u64,
}

/// Inserts for every user first, then updates (80%) and deletes (20%, each with its
/// tombstone, and the user inserted again later), as cdc would write them; with `avro`, each
/// event also in Avro to that backlog's topic.
fn produce_backlog(
    brokers: &str,
    topic: &str,
    events: u64,
    users: u64,
    avro: Option<&AvroBacklog>,
) -> anyhow::Result<Backlog> {
    let producer: ThreadedProducer<rdkafka::producer::DefaultProducerContext> = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("linger.ms", "20")
        .set("compression.type", "lz4")
        .set("queue.buffering.max.kbytes", "65536")
        .create()?;
    let mut versions: Vec<Option<u64>> = vec![None; users as usize];
    let mut produced = 0u64;
    let mut step = 0u64;
    // Commit times 10 ms apart (100 changes/s of event time), so windows open and close
    // through the run: 1,000,000 events span 2.8 hours.
    let envelope = |before: Option<serde_json::Value>,
                    after: Option<serde_json::Value>,
                    op: &str,
                    produced: u64| {
        json!({
                "before": before, "after": after,
                "source": {"version": "walflow-bench", "connector": "postgresql", "name": "bench",
                           "ts_ms": 1_795_000_000_000u64 + produced * 10, "snapshot": "false", "db": "bench",
                           "schema": "public", "table": "users", "txId": 1, "lsn": 1},
                "op": op, "ts_ms": 1_795_000_000_000u64, "transaction": null
            })
            .to_string()
    };
    let json_bytes = std::cell::Cell::new(0u64);
    let avro_bytes = std::cell::Cell::new(0u64);
    let send_bytes = |topic: &str, key: &[u8], value: Option<&[u8]>| -> anyhow::Result<()> {
        loop {
            let mut record: BaseRecord<'_, [u8], [u8]> = BaseRecord::to(topic).key(key);
            if let Some(value) = value {
                record = record.payload(value);
            }
            match producer.send(record) {
                Ok(()) => return Ok(()),
                Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), _)) => {
                    std::thread::sleep(Duration::from_millis(2));
                }
                Err((error, _)) => return Err(error.into()),
            }
        }
    };
    let send = |key: &str, value: Option<&str>| -> anyhow::Result<()> {
        json_bytes.set(json_bytes.get() + (key.len() + value.map_or(0, str::len)) as u64);
        send_bytes(topic, key.as_bytes(), value.map(str::as_bytes))
    };
    // The same change in Avro, with its tombstone after a delete.
    let send_avro = |operation: walflow_cdc::envelope::Operation,
                     before: Option<&serde_json::Value>,
                     after: Option<&serde_json::Value>,
                     produced: u64|
     -> anyhow::Result<()> {
        let Some(avro) = avro else {
            return Ok(());
        };
        let before = before.map(|row| users_tuple(&avro.relation, row));
        let after = after.map(|row| users_tuple(&avro.relation, row));
        let commit_ms = 1_795_000_000_000i64 + produced as i64 * 10;
        let source = walflow_cdc::envelope::Source {
            name: &avro.prefix,
            database: "bench",
            commit_time: walflow_pgoutput::PgTimestamp::from_unix_micros(commit_ms * 1000),
            xid: 1,
            lsn: walflow_pgoutput::Lsn(1),
            snapshot: false,
            position: None,
        };
        let event = avro.events.row_event(&walflow_cdc::envelope::Change {
            relation: &avro.relation,
            operation,
            before: before.as_ref(),
            after: after.as_ref(),
            source,
            topic_prefix: &avro.prefix,
            ts_ms: 1_795_000_000_000,
        })?;
        let tombstone = if operation == walflow_cdc::envelope::Operation::Delete {
            walflow_cdc::envelope::tombstone(&event)
        } else {
            None
        };
        for event in std::iter::once(event).chain(tombstone) {
            let key = event.key.unwrap_or_default();
            avro_bytes.set(
                avro_bytes.get() + (key.len() + event.value.as_ref().map_or(0, Vec::len)) as u64,
            );
            send_bytes(&event.topic, &key, event.value.as_deref())?;
        }
        Ok(())
    };
    while produced < events {
        let user = if step < users {
            step
        } else {
            step.wrapping_mul(0x2545f4914f6cdd1d) % users
        };
        step += 1;
        let key = json!({ "id": format!("00000000-0000-4000-8000-{user:012x}") }).to_string();
        let slot = &mut versions[user as usize];
        match *slot {
            None => {
                let row = user_row(user, 0);
                send_avro(
                    walflow_cdc::envelope::Operation::Create,
                    None,
                    Some(&row),
                    produced,
                )?;
                let value = envelope(None, Some(row), "c", produced);
                send(&key, Some(&value))?;
                *slot = Some(0);
                produced += 1;
            }
            Some(version) if !step.is_multiple_of(5) => {
                let (before, after) = (user_row(user, version), user_row(user, version + 1));
                send_avro(
                    walflow_cdc::envelope::Operation::Update,
                    Some(&before),
                    Some(&after),
                    produced,
                )?;
                let value = envelope(Some(before), Some(after), "u", produced);
                send(&key, Some(&value))?;
                *slot = Some(version + 1);
                produced += 1;
            }
            Some(version) => {
                let before = user_row(user, version);
                send_avro(
                    walflow_cdc::envelope::Operation::Delete,
                    Some(&before),
                    None,
                    produced,
                )?;
                let value = envelope(Some(before), None, "d", produced);
                send(&key, Some(&value))?;
                send(&key, None)?;
                *slot = None;
                produced += 2;
            }
        }
    }
    producer.flush(Duration::from_secs(120))?;
    Ok(Backlog {
        events: produced,
        json_bytes: json_bytes.get(),
        avro_bytes: avro_bytes.get(),
    })
}

/// The ceiling: reading the topic and decoding each event for `source`, nothing else.
async fn consume_and_decode(
    brokers: &str,
    topic: &str,
    source: &walflow_stream::definition::SourceTable,
    registry: Option<&str>,
) -> anyhow::Result<f64> {
    let avro = source.format == walflow_stream::definition::SourceFormat::DebeziumAvro;
    let mut schemas = match (avro, registry) {
        (true, Some(url)) => Some(
            walflow_stream::avro::WriterSchemas::new(url)
                .map_err(|error| anyhow::anyhow!(error))?,
        ),
        (true, None) => anyhow::bail!("an Avro source needs the schema registry"),
        (false, _) => None,
    };
    let consumer: StreamConsumer<rdkafka::consumer::DefaultConsumerContext, DefaultRuntime> =
        runner::consumer_config(brokers, &format!("{topic}-ceiling")).create()?;
    let mut assignment = rdkafka::TopicPartitionList::new();
    assignment.add_partition_offset(topic, 0, rdkafka::Offset::Beginning)?;
    consumer.assign(&assignment)?;
    let (_, high) = tokio::task::block_in_place(|| {
        consumer.fetch_watermarks(topic, 0, Duration::from_secs(10))
    })?;
    let started = Instant::now();
    let mut read = 0i64;
    let mut decoded = 0u64;
    while read < high {
        let message = consumer.recv().await?;
        read = message.offset() + 1;
        let event = match (&mut schemas, message.payload()) {
            (Some(schemas), Some(payload)) => {
                let id = walflow_stream::avro::WriterSchemas::schema_id(payload)
                    .map_err(|error| anyhow::anyhow!(error))?;
                schemas
                    .fetch(id)
                    .await
                    .map_err(|error| anyhow::anyhow!(error))?;
                schemas.decode(source, payload).map(Some)
            }
            (_, payload) => walflow_stream::decode::decode(source, payload),
        };
        if let Ok(Some(_)) = event {
            decoded += 1;
        }
    }
    anyhow::ensure!(decoded > 0, "nothing decoded from {topic}");
    Ok(high as f64 / started.elapsed().as_secs_f64())
}

/// The other ceiling: `rows` rows of the created_users shape written with the driver
/// directly (prepared INSERT, 64 in flight, as the sink does).
async fn cassandra_direct(nodes: &[String], keyspace: &str, rows: u64) -> anyhow::Result<f64> {
    use futures_util::stream::{self, StreamExt, TryStreamExt};
    let session = Arc::new(
        scylla::client::session_builder::SessionBuilder::new()
            .known_nodes(nodes)
            .build()
            .await?,
    );
    session
        .query_unpaged(
            format!(
                "CREATE TABLE IF NOT EXISTS {keyspace}.direct_ceiling (id text PRIMARY KEY, \
                 first_name text, last_name text, gender text, address text, postcode text, \
                 email text, username text, dob timestamp, registered_at timestamp, phone text, \
                 picture text, country text, updated_at timestamp)"
            ),
            (),
        )
        .await?;
    let insert = Arc::new(
        session
            .prepare(format!(
                "INSERT INTO {keyspace}.direct_ceiling (id, first_name, last_name, gender, address, \
                 postcode, email, username, dob, registered_at, phone, picture, country, updated_at) \
                 VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
            ))
            .await?,
    );
    let started = Instant::now();
    stream::iter(0..rows)
        .map(|row| {
            let session = session.clone();
            let insert = insert.clone();
            async move {
                use scylla::value::{CqlTimestamp, CqlValue};
                let text = |value: String| Some(CqlValue::Text(value));
                let values: Vec<Option<CqlValue>> = vec![
                    text(format!("00000000-0000-4000-8000-{row:012x}")),
                    text(format!("First{}", row % 1000)),
                    text(format!("Last{}", row % 997)),
                    text("female".into()),
                    text(format!(
                        "{} Main Street Springfield State Canada",
                        row % 9000
                    )),
                    text(format!("{:05}", row % 100_000)),
                    text(format!("user{row}@example.com")),
                    text(format!("user{row}")),
                    Some(CqlValue::Timestamp(CqlTimestamp(-500_000_000_000))),
                    Some(CqlValue::Timestamp(CqlTimestamp(1_500_000_000_000))),
                    text("555-0100".into()),
                    text("https://example.com/medium.jpg".into()),
                    text("Canada".into()),
                    Some(CqlValue::Timestamp(CqlTimestamp(1_795_000_000_000))),
                ];
                session.execute_unpaged(&insert, values).await.map(|_| ())
            }
        })
        .buffer_unordered(64)
        .try_collect::<()>()
        .await?;
    Ok(rows as f64 / started.elapsed().as_secs_f64())
}

async fn cleanup(config: &Config, topics: &[&str], keyspaces: &[&str]) {
    if let Err(error) = walflow_cdc::sink::delete_topics(&config.kafka_brokers, topics).await {
        tracing::warn!(%error, "could not delete the benchmark topics");
    }
    if let Ok(session) = scylla::client::session_builder::SessionBuilder::new()
        .known_nodes(&config.cassandra_nodes)
        .build()
        .await
    {
        for keyspace in keyspaces {
            let _ = session
                .query_unpaged(format!("DROP KEYSPACE IF EXISTS {keyspace}"), ())
                .await;
        }
    }
}

#[derive(Debug, Serialize)]
struct SteadyReport {
    rate: u64,
    seconds: u64,
    samples: usize,
    p50_ms: f64,
    p99_ms: f64,
    max_ms: f64,
    /// The first hop alone in the same run: Postgres commit -> Kafka acknowledgement.
    cdc_p99_ms: f64,
}

/// Single-row inserts into a scratch users table at a steady rate, through cdc and the users
/// pipeline (both in this process); each latency runs from the Postgres commit time in the
/// event to the moment Cassandra accepted the batch holding it.
async fn steady(
    rate: u64,
    seconds: u64,
    as_json: bool,
    config: &Config,
) -> anyhow::Result<std::process::ExitCode> {
    use walflow_cdc::pipeline::{self as cdc, CdcOptions, SnapshotMode};
    use walflow_cdc::sink::KafkaSink;

    let admin = connect(config.postgres_url.expose()).await?;
    let database = create_scratch_database(&admin, "walflow_bench_process").await?;
    let keyspace = database.clone();
    let result: anyhow::Result<SteadyReport> = async {
        let mut url = url::Url::parse(config.postgres_url.expose())?;
        url.set_path(&format!("/{database}"));
        let mut client = connect(url.as_str()).await?;
        walflow_ingest::schema::migrate(&mut client).await?;
        let options = CdcOptions {
        avro: None,
            postgres_url: url.to_string(),
            slot: format!("{database}_walflow"),
            publication: format!("{database}_pub"),
            tables: vec!["public.users".to_owned()],
            topic_prefix: database.clone(),
            tombstones: true,
            status_interval: Duration::from_millis(100),
            receive_timeout: walflow_cdc::pipeline::RECEIVE_TIMEOUT,
            snapshot: SnapshotMode::Never,
            stop_at: None,
            snapshot_progress: None,
        };
        let (stop_sender, stop) = tokio::sync::watch::channel(false);
        let sink = KafkaSink::new(&config.kafka_brokers)?;
        let cdc_task = tokio::spawn(async move { cdc::run(&options, sink, stop.clone()).await });
        let slot = format!("{database}_walflow");
        for _ in 0..200 {
            let active: Option<bool> = client
                .query_opt("SELECT active FROM pg_replication_slots WHERE slot_name = $1", &[&slot])
                .await?
                .map(|row| row.get(0));
            if active == Some(true) {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        // One row first so the topic exists when the pipeline starts.
        let insert = client
            .prepare(
                "INSERT INTO users (id, first_name, last_name, email, username, country, dob, registered_at) \
                 VALUES (gen_random_uuid(), 'Ada', 'Lovelace', 'ada@example.com', 'ada', 'France', \
                 '1990-01-01', '2020-01-01')",
            )
            .await?;
        client.execute(&insert, &[]).await?;

        let path = Path::new("sql/pipelines/users.sql");
        let text = std::fs::read_to_string(path)
            .context("cannot read sql/pipelines/users.sql (run bench from the repository)")?
            .replace("'walflow.public.users'", &format!("'{database}.public.users'"))
            .replace("keyspace = 'walflow'", &format!("keyspace = '{keyspace}'"));
        let definition = PipelineDefinition::parse(path, &text)?;
        let queries = walflow_stream::plan::compile(&definition).await?;
        let pipeline = Pipeline { definition, queries };
        let mut process_options = ProcessOptions::new(&config.kafka_brokers, config.cassandra_nodes.clone());
        process_options.checkpoint_dir = std::env::temp_dir().join(format!("{database}_checkpoints"));
        process_options.batch_max_wait = Duration::from_millis(5);
        let metrics = Arc::new(ProcessMetrics::default());
        let process_metrics = metrics.clone();
        let (process_stop_sender, process_stop) = tokio::sync::watch::channel(false);
        let process_task = tokio::spawn(async move {
            runner::run(&pipeline, &process_options, process_metrics, process_stop).await
        });
        // Let the pipeline connect and catch up with the first row before measuring.
        let deadline = Instant::now() + Duration::from_secs(60);
        while metrics.latencies_ms().is_empty() && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let warmup = metrics.latencies_ms().len();
        let mut ticker = tokio::time::interval(Duration::from_secs_f64(1.0 / rate.max(1) as f64));
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        for _ in 0..rate * seconds {
            ticker.tick().await;
            client.execute(&insert, &[]).await?;
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
        let _ = process_stop_sender.send(true);
        let _ = stop_sender.send(true);
        process_task.await??;
        let cdc_summary = cdc_task.await??;
        let mut cdc_latencies = cdc_summary.latencies_us;
        cdc_latencies.sort_unstable();
        let cdc_p99_ms = percentile(&cdc_latencies, 0.99) as f64 / 1000.0;
        let _ = std::fs::remove_dir_all(std::env::temp_dir().join(format!("{database}_checkpoints")));
        let mut latencies: Vec<u64> = metrics.latencies_ms().into_iter().skip(warmup).collect();
        latencies.sort_unstable();
        Ok(SteadyReport {
            rate,
            seconds,
            samples: latencies.len(),
            p50_ms: percentile(&latencies, 0.50) as f64,
            p99_ms: percentile(&latencies, 0.99) as f64,
            max_ms: latencies.last().copied().unwrap_or(0) as f64,
            cdc_p99_ms,
        })
    }
    .await;
    cleanup(
        config,
        &[walflow_wire::topic::topic_name(&database, "public", "users").as_str()],
        &[keyspace.as_str()],
    )
    .await;
    drop_scratch_database(&admin, &database).await?;
    let report = result?;
    if as_json {
        println!("{}", serde_json::to_string(&report)?);
    } else {
        println!(
            "bench process --steady-rate {}: {} changes over {} s, Postgres commit -> Cassandra: p50 {:.0} ms, p99 {:.0} ms, max {:.0} ms (of which cdc, commit -> Kafka ack: p99 {:.1} ms)",
            report.rate, report.samples, report.seconds, report.p50_ms, report.p99_ms, report.max_ms, report.cdc_p99_ms
        );
    }
    Ok(std::process::ExitCode::SUCCESS)
}
