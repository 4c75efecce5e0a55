//! The baselines a pipeline is measured against, in the same run: consuming and decoding the
//! topic with no processing, and writing the same rows to Cassandra with the driver.

use std::sync::Arc;
use std::time::{Duration, Instant};
use walflow_tls::kafka::KafkaConnection;

use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::message::Message;
use rdkafka::util::DefaultRuntime;
use walflow_stream::runner::{self};

use crate::Services;

/// The ceiling: reading the topic and decoding each event for `source`, nothing else.
pub(super) async fn consume_and_decode(
    kafka: &KafkaConnection,
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
        runner::consumer_config(kafka, &format!("{topic}-ceiling")).create()?;
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
pub(super) async fn cassandra_direct(
    nodes: &[String],
    keyspace: &str,
    rows: u64,
) -> anyhow::Result<f64> {
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

pub(super) async fn cleanup(config: &Services, topics: &[&str], keyspaces: &[&str]) {
    if let Err(error) = walflow_cdc::sink::delete_topics(&config.kafka, topics).await {
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
