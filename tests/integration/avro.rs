//! Avro change-event schemas against the real schema registry (Apicurio Registry's
//! Confluent-compatible API, from scripts/services): registered once and cached, a compatible
//! evolution accepted, a breaking one refused under the registry's rule with the column named.

use bytestring::ByteString;
use walflow_cdc::avro::schemas;
use walflow_pgoutput::{Relation, RelationColumn, ReplicaIdentity};
use walflow_wire::avro::schema::column_changes;
use walflow_wire::registry::{Compatibility, SchemaRegistry};

use crate::harness::{services, unique_name};

fn relation(columns: &[(&str, u32, bool)]) -> Relation {
    Relation {
        xid: None,
        oid: 1,
        namespace: ByteString::from("public"),
        name: ByteString::from("people"),
        replica_identity: ReplicaIdentity::Default,
        columns: columns
            .iter()
            .map(|(name, type_oid, is_key)| RelationColumn {
                is_key: *is_key,
                name: ByteString::from(*name),
                type_oid: *type_oid,
                type_modifier: -1,
            })
            .collect(),
    }
}

const INT8: u32 = 20;
const INT4: u32 = 23;
const TEXT: u32 = 25;

#[tokio::test]
async fn table_schemas_register_evolve_and_a_breaking_change_is_refused_naming_the_column() {
    let registry = SchemaRegistry::new(&services().schema_registry_url).unwrap();
    let topic = format!("{}.public.people", unique_name("walflow_avro"));
    let subject = format!("{topic}-value");

    let v1 = schemas(
        &relation(&[("id", INT8, true), ("age", INT4, false)]),
        &topic,
    );
    v1.parse().expect("valid Avro");
    assert_eq!(
        registry.check(&subject, &v1.value).await.unwrap(),
        Compatibility::NewSubject
    );
    let first = registry.register(&subject, &v1.value).await.unwrap();
    assert_eq!(registry.register(&subject, &v1.value).await.unwrap(), first);
    assert_eq!(
        registry.cached(),
        1,
        "the second registration came from the cache"
    );
    let key_id = registry
        .register(&format!("{topic}-key"), v1.key.as_ref().unwrap())
        .await
        .unwrap();
    assert!(key_id > 0);

    // A column added (every value column is optional, default null): compatible.
    let v2 = schemas(
        &relation(&[
            ("id", INT8, true),
            ("age", INT4, false),
            ("name", TEXT, false),
        ]),
        &topic,
    );
    assert_eq!(
        registry.check(&subject, &v2.value).await.unwrap(),
        Compatibility::Compatible
    );
    let second = registry.register(&subject, &v2.value).await.unwrap();
    assert_ne!(second, first);

    // A column's type changed: refused under the registry's BACKWARD rule, and walflow can
    // say which column.
    let v3 = schemas(
        &relation(&[
            ("id", INT8, true),
            ("age", TEXT, false),
            ("name", TEXT, false),
        ]),
        &topic,
    );
    match registry.check(&subject, &v3.value).await.unwrap() {
        Compatibility::Incompatible { level, .. } => assert_eq!(level, "BACKWARD"),
        other => panic!("a type change was not refused: {other:?}"),
    }
    assert_eq!(
        column_changes(&v2.value, &v3.value),
        vec!["column age changed from int to string".to_owned()]
    );
    assert!(registry.register(&subject, &v3.value).await.is_err());

    // Allowed explicitly: the subject's rule set to NONE lets it through.
    registry.set_level(&subject, "NONE").await.unwrap();
    assert!(registry.register(&subject, &v3.value).await.is_ok());
}

/// A GET of the registry's API, its JSON answer read as `T`.
async fn registry_get<T: serde::de::DeserializeOwned>(url: &str) -> T {
    reqwest::get(url).await.unwrap().json().await.unwrap()
}

/// `walflow cdc --format avro` with the test registry, streaming.
async fn avro_cdc(
    database: &crate::harness::TestDatabase,
    slot: &str,
    topics: &crate::harness::TestTopics,
    tables: &str,
    more: &[&str],
) -> crate::cdc::Cdc {
    let url = services().schema_registry_url;
    let mut args = vec!["--format", "avro", "--schema-registry-url", &url];
    args.extend(more);
    let cdc = crate::cdc::Cdc::start_with(database, slot, topics, tables, &args);
    cdc.wait_until_streaming(database).await;
    cdc
}

/// `scripts/avro-consumer`: confluent-kafka's AvroDeserializer, sharing no code with walflow.
fn avro_messages(topic: &str, count: usize) -> Vec<serde_json::Value> {
    // A hung reader fails the test instead of stalling the suite.
    let output = std::process::Command::new("timeout")
        .args(["300", "bash", "scripts/avro-consumer"])
        .args([topic, &count.to_string()])
        .current_dir(crate::harness::repo_root())
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "avro-consumer: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout)
        .lines()
        .map(|line| serde_json::from_str(line).unwrap())
        .collect()
}

#[tokio::test]
async fn cdc_writes_avro_that_an_independent_consumer_decodes_through_schema_versions() {
    use crate::harness::{TestDatabase, TestTopics};

    let database = TestDatabase::create().await;
    let topics = TestTopics::new();
    let slot = unique_name("walflow_slot");
    let client = database.client().await;
    client
        .batch_execute(
            "CREATE TABLE zoo (id bigint PRIMARY KEY, flag boolean, small smallint,
                               ratio double precision, price numeric, blob bytea, born date,
                               seen timestamp, at timestamptz, uid uuid, note text);
             INSERT INTO zoo (id, note) VALUES (0, 'before cdc');",
        )
        .await
        .unwrap();
    let url = services().schema_registry_url;
    let cdc = avro_cdc(&database, &slot, &topics, "public.zoo", &[]).await;
    client
        .batch_execute(
            "INSERT INTO zoo VALUES (1, true, -3, 'NaN', 12345678901234567890.5, '\\x48656c6c6f',
                                     '2026-01-02', '2026-01-02 03:04:05.5', '2026-01-02 03:04:05.5+02',
                                     '7a0eed16-9430-4d68-901f-c0d4c1c3bf00', 'first');
             UPDATE zoo SET note = 'second' WHERE id = 1;
             ALTER TABLE zoo ADD COLUMN extra int;
             INSERT INTO zoo (id, extra) VALUES (2, 42);
             DELETE FROM zoo WHERE id = 2;
             TRUNCATE zoo;",
        )
        .await
        .unwrap();
    let topic = format!("{}.public.zoo", topics.prefix);
    let mut messages = avro_messages(&topic, 7);
    // The row that was there first, from the snapshot.
    let snapshot = messages.remove(0);
    assert_eq!(snapshot["value"]["op"], "r", "{snapshot}");
    assert_eq!(snapshot["value"]["source"]["snapshot"], "true");
    assert_eq!(snapshot["value"]["after"]["note"], "before cdc");
    let after = &messages[0]["value"]["after"];
    assert_eq!(
        messages[0]["key"],
        serde_json::json!({"id": 1}),
        "{messages:?}"
    );
    assert_eq!(messages[0]["value"]["op"], "c");
    assert_eq!(after["flag"], true);
    assert_eq!(after["small"], -3);
    assert_eq!(after["ratio"], serde_json::json!({"float": "NaN"}));
    assert_eq!(after["price"], "12345678901234567890.5");
    assert_eq!(after["blob"], serde_json::json!({"bytes": "SGVsbG8="}));
    assert_eq!(after["born"], serde_json::json!({"date": "2026-01-02"}));
    assert_eq!(
        after["seen"],
        serde_json::json!({"datetime": "2026-01-02 03:04:05.500000"})
    );
    assert_eq!(
        after["at"],
        serde_json::json!({"datetime": "2026-01-02 01:04:05.500000+00:00"})
    );
    assert_eq!(
        after["uid"],
        serde_json::json!({"UUID": "7a0eed16-9430-4d68-901f-c0d4c1c3bf00"})
    );
    assert_eq!(messages[1]["value"]["op"], "u");
    assert_eq!(messages[1]["value"]["after"]["note"], "second");
    // After the ALTER: a second schema version, decoded just the same.
    assert_eq!(messages[2]["value"]["after"]["extra"], 42);
    assert_eq!(messages[3]["value"]["op"], "d");
    assert_eq!(
        messages[4]["value"],
        serde_json::Value::Null,
        "the tombstone"
    );
    assert_eq!(messages[5]["value"]["op"], "t");
    assert_eq!(messages[5]["key"], serde_json::Value::Null);
    let versions: Vec<u64> = registry_get(&format!("{url}/subjects/{topic}-value/versions")).await;
    assert_eq!(versions.len(), 2, "{versions:?}");

    // A breaking change stops cdc, naming the table, the column and the rule.
    client
        .batch_execute(
            "ALTER TABLE zoo ALTER COLUMN small TYPE text; INSERT INTO zoo (id, small) VALUES (3, 'x')",
        )
        .await
        .unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    while !cdc.log_so_far().contains("breaks its readers") {
        assert!(
            std::time::Instant::now() < deadline,
            "cdc did not refuse the breaking change: {}",
            cdc.log_so_far()
        );
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
    let (code, log) = cdc.stop();
    assert_ne!(code, Some(0), "{log}");
    assert!(log.contains("table public.zoo"), "{log}");
    assert!(
        log.contains("column small changed from int to string"),
        "{log}"
    );
    assert!(log.contains("BACKWARD"), "{log}");

    // Told to allow it, cdc registers the change (the subject's rule set to NONE) and the
    // refused insert arrives: it was never confirmed to the slot, so nothing was lost.
    let cdc = avro_cdc(
        &database,
        &slot,
        &topics,
        "public.zoo",
        &["--allow-incompatible-schemas"],
    )
    .await;
    crate::cdc::wait_until_caught_up(&client, &slot).await;
    let count = crate::cdc::kcat_all(&topic).len();
    let messages = avro_messages(&topic, count);
    let last = messages.last().unwrap();
    assert_eq!(last["key"], serde_json::json!({"id": 3}), "{messages:?}");
    assert_eq!(last["value"]["after"]["small"], "x");
    let versions: Vec<u64> = registry_get(&format!("{url}/subjects/{topic}-value/versions")).await;
    assert_eq!(versions.len(), 3, "{versions:?}");
    let level: serde_json::Value = registry_get(&format!("{url}/config/{topic}-value")).await;
    assert_eq!(level["compatibilityLevel"], "NONE", "{level}");
    let (code, log) = cdc.stop();
    assert_eq!(code, Some(0), "{log}");
    assert!(log.contains("registering an incompatible schema"), "{log}");
}

#[tokio::test]
async fn process_reads_avro_topics_into_the_same_rows_as_postgres() {
    use crate::harness::{
        cassandra_session, run, stderr, walflow, TestDatabase, TestKeyspace, TestTopics,
    };
    use scylla::value::{CqlDate, CqlTimestamp};

    let database = TestDatabase::create().await;
    let topics = TestTopics::new();
    let keyspace = TestKeyspace::create().await;
    let slot = unique_name("walflow_slot");
    let client = database.client().await;
    client
        .batch_execute(
            "CREATE TABLE items (id int PRIMARY KEY, price double precision, name text,
                                 born date, seen timestamp)",
        )
        .await
        .unwrap();
    let url = services().schema_registry_url;
    let cdc = avro_cdc(&database, &slot, &topics, "public.items", &[]).await;
    client
        .batch_execute(
            "INSERT INTO items SELECT g, g * 1.5, 'item ' || g, DATE '2026-01-01' + g,
                                      TIMESTAMP '2026-01-01 00:00:00.25' + g * INTERVAL '1 hour'
               FROM generate_series(1, 20) g;
             UPDATE items SET price = 'NaN', name = NULL WHERE id = 3;
             DELETE FROM items WHERE id IN (4, 5);",
        )
        .await
        .unwrap();
    crate::cdc::wait_until_caught_up(&client, &slot).await;
    let (code, log) = cdc.stop();
    assert_eq!(code, Some(0), "{log}");

    let directory = tempfile::tempdir().unwrap();
    let pipeline = directory.path().join("items.sql");
    std::fs::write(
        &pipeline,
        format!(
            "CREATE TABLE items (id INT, price DOUBLE, name TEXT, born DATE, seen TIMESTAMP,
                                 PRIMARY KEY (id))
               WITH (connector = 'kafka', topic = '{}.public.items', format = 'debezium_avro');
             CREATE TABLE item_copies (id INT PRIMARY KEY, price DOUBLE, name TEXT, born DATE,
                                       seen TIMESTAMP)
               WITH (connector = 'cassandra', keyspace = '{}');
             INSERT INTO item_copies SELECT id, price, name, born, seen FROM items;",
            topics.prefix, keyspace.name
        ),
    )
    .unwrap();
    let output = run(walflow(&database.url)
        .args([
            "process",
            "--until-caught-up",
            "--schema-registry-url",
            &url,
        ])
        .arg("--checkpoint-dir")
        .arg(directory.path().join("checkpoints"))
        .args([
            "--dead-letter-prefix",
            &format!("{}.dead_letter", topics.prefix),
        ])
        .arg(&pipeline));
    assert!(output.status.success(), "{}", stderr(&output));
    assert!(
        stderr(&output).contains("dead_letters=0"),
        "{}",
        stderr(&output)
    );

    type Row = (
        i32,
        Option<String>,
        Option<String>,
        Option<i64>,
        Option<i64>,
    );
    let mut expected: Vec<Row> = client
        .query(
            "SELECT id, price::text, name, born - DATE '1970-01-01',
                    (extract(epoch FROM seen) * 1000)::bigint
               FROM items ORDER BY id",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|row| {
            let price: Option<String> = row.get(1);
            let born: Option<i32> = row.get(3);
            (
                row.get(0),
                price.map(|price| if price == "NaN" { "NaN".into() } else { price }),
                row.get(2),
                born.map(i64::from),
                row.get(4),
            )
        })
        .collect();
    expected.sort();
    let session = cassandra_session(&services().cassandra_nodes).await;
    let mut actual: Vec<Row> = session
        .query_unpaged(
            format!(
                "SELECT id, price, name, born, seen FROM {}.item_copies",
                keyspace.name
            ),
            (),
        )
        .await
        .unwrap()
        .into_rows_result()
        .unwrap()
        .rows::<(
            i32,
            Option<f64>,
            Option<String>,
            Option<CqlDate>,
            Option<CqlTimestamp>,
        )>()
        .unwrap()
        .map(|row| {
            let (id, price, name, born, seen) = row.unwrap();
            (
                id,
                price.map(|price| {
                    if price.is_nan() {
                        "NaN".into()
                    } else {
                        price.to_string()
                    }
                }),
                name,
                born.map(|date| i64::from(date.0) - (1i64 << 31)),
                seen.map(|timestamp| timestamp.0),
            )
        })
        .collect();
    actual.sort();
    assert_eq!(actual, expected);
    assert_eq!(actual.len(), 18);
}

/// Every type of the cdc type zoo (`every_type_arrives_as_documented_in_docs_events`), plus
/// dates and times Python cannot hold (BC, year 5874897, infinities) and a local mean time
/// offset, written as Avro by cdc and read by confluent-kafka's deserializer; days and
/// microseconds are checked against Postgres's own arithmetic on the same row.
#[tokio::test]
async fn every_type_of_the_zoo_reads_back_through_an_independent_avro_reader() {
    use crate::harness::{TestDatabase, TestTopics};
    use serde_json::json;

    let database = TestDatabase::create().await;
    let topics = TestTopics::new();
    let slot = unique_name("walflow_slot");
    let client = database.client().await;
    // Timestamps before 1911 in Paris print with a +00:09:21 offset.
    client
        .batch_execute(&format!(
            "ALTER DATABASE \"{}\" SET TimeZone = 'Europe/Paris'",
            database.name
        ))
        .await
        .unwrap();
    let client = database.client().await;
    client
        .batch_execute(&format!(
            "{}; ALTER TABLE typed ADD COLUMN ancient date, ADD COLUMN last_day date,
                 ADD COLUMN ancient_moment timestamp, ADD COLUMN paris_1900 timestamptz,
                 ADD COLUMN day_infinite date",
            crate::cdc::TYPE_ZOO
        ))
        .await
        .unwrap();
    let cdc = avro_cdc(&database, &slot, &topics, "public.typed", &[]).await;
    client
        .batch_execute(
            "INSERT INTO typed VALUES (1, -32768, 9223372036854775807, 12345678901234567890.123456789, 'NaN',
                 1.5, 'NaN', '-Infinity', true, 'héllo \"quoted\"', '\\x48656c6c6f', '7a0eed16-9430-4d68-901f-c0d4c1c3bf00',
                 '{\"a\": [1, 2]}', '2000-01-02', '1970-01-01 00:00:01.5', '2026-11-25 05:30:00+05:30', 'infinity',
                 '1 day 02:00:00', '192.168.0.1/24', '{1,2,3}', 'happy', 5, NULL,
                 '0044-03-15 BC', '5874897-12-31', '0044-03-15 12:00:00.25 BC', '1900-01-01 00:00:00 Europe/Paris',
                 '-infinity')",
        )
        .await
        .unwrap();
    let oracle = client
        .query_one(
            "SELECT ancient - date '1970-01-01', last_day - date '1970-01-01',
                    (extract(epoch FROM ancient_moment) * 1000000)::bigint,
                    (extract(epoch FROM paris_1900) * 1000000)::bigint,
                    paris_1900::text
             FROM typed WHERE id = 1",
            &[],
        )
        .await
        .unwrap();
    let (ancient, last_day, ancient_moment, paris_1900, paris_text): (i32, i32, i64, i64, String) = (
        oracle.get(0),
        oracle.get(1),
        oracle.get(2),
        oracle.get(3),
        oracle.get(4),
    );
    assert!(paris_text.ends_with("+00:09:21"), "{paris_text}");

    let topic = format!("{}.public.typed", topics.prefix);
    let messages = avro_messages(&topic, 1);
    assert_eq!(messages[0]["key"], json!({"id": 1}));
    let after = &messages[0]["value"]["after"];
    let expected = json!({
        "id": 1, "small": -32768, "big": 9223372036854775807i64,
        "exact": "12345678901234567890.123456789", "exact_nan": "NaN",
        "real_value": 1.5, "double_nan": {"float": "NaN"}, "double_infinite": {"float": "-Infinity"},
        "flag": true, "words": "héllo \"quoted\"", "raw": {"bytes": "SGVsbG8="},
        "uid": {"UUID": "7a0eed16-9430-4d68-901f-c0d4c1c3bf00"}, "document": "{\"a\": [1, 2]}",
        "day": {"date": "2000-01-02"},
        "moment": {"datetime": "1970-01-01 00:00:01.500000"},
        "instant": {"datetime": "2026-11-25 00:00:00+00:00"},
        "instant_infinite": {"micros": i64::MAX},
        "span": "1 day 02:00:00", "address": "192.168.0.1/24", "numbers": "{1,2,3}", "feeling": "happy",
        "count": 5, "nothing": null,
        "ancient": {"days": ancient},
        "last_day": {"days": last_day},
        "ancient_moment": {"micros": ancient_moment},
        "paris_1900": {"datetime": "1899-12-31 23:50:39+00:00"},
        "day_infinite": {"days": i32::MIN},
    });
    for (column, value) in expected.as_object().unwrap() {
        assert_eq!(&after[column], value, "column {column}: {after}");
    }
    assert_eq!(
        paris_1900, -2_208_989_361_000_000,
        "1900-01-01 00:00 Paris mean time is 23:50:39 UTC the day before"
    );
    let (code, log) = cdc.stop();
    assert_eq!(code, Some(0), "{log}");
}

/// An event whose writer schema id the registry does not have (`\x00\xff\xff\xff\xff...`, a
/// foreign message or a hard-deleted schema) is of no use however long one waits: it goes to
/// the dead-letter topic with the registry's answer, and the valid events around it are
/// applied.
#[tokio::test]
async fn an_avro_event_of_an_unknown_schema_id_is_a_dead_letter_and_the_rest_flows_on() {
    use crate::harness::{cassandra_session, walflow, TestDatabase, TestKeyspace, TestTopics};
    use std::io::Write;

    let database = TestDatabase::create().await;
    let topics = TestTopics::new();
    let keyspace = TestKeyspace::create().await;
    let slot = unique_name("walflow_slot");
    let client = database.client().await;
    client
        .batch_execute("CREATE TABLE items (id int PRIMARY KEY, price double precision)")
        .await
        .unwrap();
    let cdc = avro_cdc(&database, &slot, &topics, "public.items", &[]).await;
    client
        .batch_execute("INSERT INTO items SELECT g, g * 1.5 FROM generate_series(1, 3) g")
        .await
        .unwrap();
    crate::cdc::wait_until_caught_up(&client, &slot).await;
    let topic = format!("{}.public.items", topics.prefix);
    let mut kcat = std::process::Command::new("kcat")
        .args(["-P", "-b", &services().kafka_brokers, "-t", &topic])
        .stdin(std::process::Stdio::piped())
        .spawn()
        .expect("kcat");
    kcat.stdin
        .as_mut()
        .unwrap()
        .write_all(b"\x00\xff\xff\xff\xff{\"id\":99}\n")
        .unwrap();
    assert!(kcat.wait().unwrap().success());
    client
        .batch_execute("INSERT INTO items SELECT g, g * 1.5 FROM generate_series(4, 5) g")
        .await
        .unwrap();
    crate::cdc::wait_until_caught_up(&client, &slot).await;
    let (code, log) = cdc.stop();
    assert_eq!(code, Some(0), "{log}");

    let directory = tempfile::tempdir().unwrap();
    let pipeline = directory.path().join("items.sql");
    std::fs::write(
        &pipeline,
        format!(
            "CREATE TABLE items (id INT PRIMARY KEY, price DOUBLE)
               WITH (connector = 'kafka', topic = '{topic}', format = 'debezium_avro');
             CREATE TABLE item_prices (id INT PRIMARY KEY, price DOUBLE)
               WITH (connector = 'cassandra', keyspace = '{}');
             INSERT INTO item_prices SELECT id, price FROM items;",
            keyspace.name
        ),
    )
    .unwrap();
    let dead_letter_prefix = format!("{}.dead_letter", topics.prefix);
    let log = directory.path().join("process.log");
    let status = crate::process::run_within(
        walflow(&database.url)
            .args(["process", "--until-caught-up", "--schema-registry-url"])
            .arg(services().schema_registry_url)
            .arg("--checkpoint-dir")
            .arg(directory.path().join("checkpoints"))
            .args(["--dead-letter-prefix", &dead_letter_prefix])
            .arg(&pipeline),
        &log,
        std::time::Duration::from_secs(120),
    );
    let log = std::fs::read_to_string(&log).unwrap();
    let status =
        status.unwrap_or_else(|| panic!("walflow process did not catch up within 120 s:\n{log}"));
    assert!(status.success(), "{log}");

    let session = cassandra_session(&services().cassandra_nodes).await;
    let mut ids: Vec<i32> = session
        .query_unpaged(format!("SELECT id FROM {}.item_prices", keyspace.name), ())
        .await
        .unwrap()
        .into_rows_result()
        .unwrap()
        .rows::<(i32,)>()
        .unwrap()
        .map(|row| row.unwrap().0)
        .collect();
    ids.sort();
    assert_eq!(ids, vec![1, 2, 3, 4, 5], "the valid events were applied");

    let letters = crate::cdc::kcat_all(&format!("{dead_letter_prefix}.items"));
    assert_eq!(letters.len(), 1, "{letters:?}");
    let headers = letters[0]["headers"].as_array().unwrap();
    let position = headers.iter().position(|h| h == "walflow.error").unwrap();
    let reason = headers[position + 1].as_str().unwrap();
    assert!(
        reason.contains("4294967295") && reason.contains("404"),
        "{reason}"
    );
}

/// Avro change events of a REPLICA IDENTITY FULL table: the key schema is the primary key's,
/// registered once by the snapshot and kept by the stream, so updates (with NULLs in other
/// columns) flow on instead of cdc refusing a key schema of every column.
#[tokio::test]
async fn avro_events_of_a_replica_identity_full_table_keep_the_primary_key_schema() {
    use crate::harness::{TestDatabase, TestTopics};

    let database = TestDatabase::create().await;
    let topics = TestTopics::new();
    let slot = unique_name("walflow_slot");
    let client = database.client().await;
    client
        .batch_execute(
            "CREATE TABLE members (id int PRIMARY KEY, email text, city text, updated_at timestamptz);
             ALTER TABLE members REPLICA IDENTITY FULL;
             INSERT INTO members VALUES (1, 'a@example.com', NULL, now());",
        )
        .await
        .unwrap();
    let url = services().schema_registry_url;
    let cdc = avro_cdc(&database, &slot, &topics, "public.members", &[]).await;
    client
        .batch_execute(
            "INSERT INTO members VALUES (2, NULL, 'Oslo', NULL);
             UPDATE members SET city = 'Lima', updated_at = now() WHERE id = 1;
             DELETE FROM members WHERE id = 2;",
        )
        .await
        .unwrap();
    crate::cdc::wait_until_caught_up(&client, &slot).await;
    let topic = format!("{}.public.members", topics.prefix);
    let messages = avro_messages(&topic, 5);
    let keys: Vec<&serde_json::Value> = messages.iter().map(|message| &message["key"]).collect();
    assert_eq!(
        keys,
        [
            &serde_json::json!({"id": 1}),
            &serde_json::json!({"id": 2}),
            &serde_json::json!({"id": 1}),
            &serde_json::json!({"id": 2}),
            &serde_json::json!({"id": 2}),
        ],
        "{messages:?}"
    );
    let ops: Vec<&serde_json::Value> = messages[..4]
        .iter()
        .map(|message| &message["value"]["op"])
        .collect();
    assert_eq!(ops, ["r", "c", "u", "d"]);
    assert_eq!(messages[2]["value"]["after"]["city"], "Lima");
    let versions: Vec<u64> = registry_get(&format!("{url}/subjects/{topic}-key/versions")).await;
    assert_eq!(versions.len(), 1, "one key schema: {versions:?}");
    let (code, log) = cdc.stop();
    assert_eq!(code, Some(0), "{log}");
}
