//! The backlog every run drains: users and countries change events, in JSON and (with a
//! schema registry) in Avro, as cdc writes them.

use std::time::Duration;
use walflow_tls::kafka::KafkaConnection;

use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::producer::{BaseRecord, Producer, ThreadedProducer};
use serde_json::json;
use walflow_pgoutput::{Column, TupleData};

pub(super) const COUNTRIES: [&str; 10] = [
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
pub(super) fn produce_countries(kafka: &KafkaConnection, topic: &str) -> anyhow::Result<u64> {
    let producer: ThreadedProducer<rdkafka::producer::DefaultProducerContext> =
        kafka.client_config().create()?;
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
pub(super) fn user_row(user: u64, version: u64) -> serde_json::Value {
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
pub(super) fn users_relation() -> walflow_pgoutput::Relation {
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
pub(super) fn users_tuple(
    relation: &walflow_pgoutput::Relation,
    row: &serde_json::Value,
) -> TupleData {
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
pub(super) struct AvroBacklog {
    pub(super) events: walflow_cdc::avro_events::AvroEvents,
    pub(super) prefix: String,
    pub(super) relation: walflow_pgoutput::Relation,
}

pub(super) struct Backlog {
    pub(super) events: u64,
    pub(super) json_bytes: u64,
    pub(super) avro_bytes: u64,
}

/// Inserts for every user first, then updates (80%) and deletes (20%, each with its
/// tombstone, and the user inserted again later), as cdc would write them; with `avro`, each
/// event also in Avro to that backlog's topic.
pub(super) fn produce_backlog(
    kafka: &KafkaConnection,
    topic: &str,
    events: u64,
    users: u64,
    avro: Option<&AvroBacklog>,
) -> anyhow::Result<Backlog> {
    let producer: ThreadedProducer<rdkafka::producer::DefaultProducerContext> = kafka
        .client_config()
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
