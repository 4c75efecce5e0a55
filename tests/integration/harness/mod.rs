//! Per-test resources with unique names, cleaned up on drop, and a way to run the `walflow`
//! binary against them. Service addresses come from the environment that
//! `scripts/services env` prints.

#![allow(dead_code)] // each test module uses its own part of the harness

use std::process::{Command, Output};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use rdkafka::admin::{AdminClient, AdminOptions};
use rdkafka::client::DefaultClientContext;
use rdkafka::ClientConfig;
use tokio_postgres::Client;

mod fake_api;
mod fixed_http;
mod scratch_postgres;
mod silent_link;
pub use fake_api::FakeApi;
pub use fixed_http::FixedHttp;
pub use scratch_postgres::ScratchPostgres;
pub use silent_link::SilentLink;

/// The service addresses, from `eval "$(scripts/services env)"`.
#[derive(Debug, Clone)]
pub struct Services {
    pub postgres_url: String,
    pub kafka_brokers: String,
    pub cassandra_nodes: String,
    pub schema_registry_url: String,
}

pub fn services() -> Services {
    let variable = |name: &str| {
        std::env::var(name).unwrap_or_else(|_| {
            panic!(
                "{name} is not set: the integration tests need the real services. Run \
                 `scripts/services up && eval \"$(scripts/services env)\"` first, or use \
                 scripts/test, which does both"
            )
        })
    };
    Services {
        postgres_url: variable("WALFLOW_POSTGRES_URL"),
        kafka_brokers: variable("WALFLOW_KAFKA_BROKERS"),
        cassandra_nodes: variable("WALFLOW_CASSANDRA_NODES"),
        schema_registry_url: variable("WALFLOW_SCHEMA_REGISTRY_URL"),
    }
}

/// A lowercase name no other test (in this run or a parallel one) uses.
pub fn unique_name(prefix: &str) -> String {
    static COUNTER: AtomicU32 = AtomicU32::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|elapsed| elapsed.subsec_nanos())
        .unwrap_or_default();
    format!(
        "{prefix}_{}_{}_{nanos}",
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::Relaxed)
    )
}

/// A client of the Postgres at `url`, with TLS when the URL asks for it (as walflow reads
/// libpq's parameters).
pub async fn connect(url: &str) -> Client {
    walflow_tls::postgres::connect(url, "test")
        .await
        .unwrap_or_else(|error| panic!("cannot connect: {error}"))
}

/// `url` with its database replaced by `database`.
pub fn with_database(url: &str, database: &str) -> String {
    let mut parsed = url::Url::parse(url).expect("WALFLOW_POSTGRES_URL is a URL");
    parsed.set_path(&format!("/{database}"));
    parsed.to_string()
}

/// A database of its own for one test, dropped (with its connections) when the test ends.
pub struct TestDatabase {
    pub name: String,
    pub url: String,
    admin_url: String,
}

impl TestDatabase {
    pub async fn create() -> TestDatabase {
        TestDatabase::create_on(&services().postgres_url).await
    }

    /// A database of its own on the server `admin_url` reaches (the secure Postgres, say);
    /// its URL keeps the admin URL's parameters (TLS ones included).
    pub async fn create_on(admin_url: &str) -> TestDatabase {
        let admin_url = admin_url.to_owned();
        let name = unique_name("walflow_test");
        let admin = connect(&admin_url).await;
        admin
            .batch_execute(&format!("CREATE DATABASE \"{name}\""))
            .await
            .unwrap_or_else(|error| panic!("CREATE DATABASE {name}: {error}"));
        TestDatabase {
            url: with_database(&admin_url, &name),
            name,
            admin_url,
        }
    }

    /// A database with walflow's schema applied by `walflow migrate`.
    pub async fn migrated() -> TestDatabase {
        let database = TestDatabase::create().await;
        let output = run(walflow(&database.url).arg("migrate"));
        assert!(output.status.success(), "walflow migrate failed");
        database
    }

    pub async fn client(&self) -> Client {
        connect(&self.url).await
    }
}

impl Drop for TestDatabase {
    fn drop(&mut self) {
        let admin_url = self.admin_url.clone();
        let name = self.name.clone();
        // Drop runs inside the test's runtime, which cannot be blocked on: use a thread with
        // a runtime of its own.
        let dropped = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            runtime.block_on(async {
                let client = walflow_tls::postgres::connect(&admin_url, "test").await?;
                // A logical slot keeps its database from being dropped: slots go first.
                client
                    .execute(
                        "SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots \
                         WHERE database = $1 AND NOT active",
                        &[&name],
                    )
                    .await?;
                client
                    .batch_execute(&format!("DROP DATABASE IF EXISTS \"{name}\" WITH (FORCE)"))
                    .await?;
                Ok::<(), Box<dyn std::error::Error + Send + Sync>>(())
            })?;
            Ok::<(), Box<dyn std::error::Error + Send + Sync>>(())
        })
        .join();
        if !matches!(dropped, Ok(Ok(()))) {
            eprintln!(
                "warning: could not drop test database {}: {dropped:?}",
                self.name
            );
        }
    }
}

/// A topic prefix of its own for one test; every topic under it is deleted on drop.
pub struct TestTopics {
    pub prefix: String,
    brokers: String,
}

impl TestTopics {
    pub fn new() -> TestTopics {
        TestTopics {
            prefix: unique_name("walflow_test"),
            brokers: services().kafka_brokers,
        }
    }
}

impl Drop for TestTopics {
    fn drop(&mut self) {
        let brokers = self.brokers.clone();
        let prefix = format!("{}.", self.prefix);
        let _ = std::thread::spawn(move || {
            let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
                .set("bootstrap.servers", &brokers)
                .create()?;
            let metadata = admin
                .inner()
                .fetch_metadata(None, Duration::from_secs(10))?;
            let topics: Vec<String> = metadata
                .topics()
                .iter()
                .map(|topic| topic.name().to_owned())
                .filter(|name| name.starts_with(&prefix))
                .collect();
            if !topics.is_empty() {
                let names: Vec<&str> = topics.iter().map(String::as_str).collect();
                let runtime = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()?;
                runtime.block_on(admin.delete_topics(&names, &AdminOptions::new()))?;
            }
            Ok::<(), Box<dyn std::error::Error + Send + Sync>>(())
        })
        .join();
    }
}

/// A keyspace of its own for one test, dropped on drop.
pub struct TestKeyspace {
    pub name: String,
    nodes: String,
}

impl TestKeyspace {
    pub async fn create() -> TestKeyspace {
        let nodes = services().cassandra_nodes;
        let name = unique_name("walflow_test");
        let session = cassandra_session(&nodes).await;
        session
            .query_unpaged(
                format!(
                    "CREATE KEYSPACE {name} WITH replication = \
                     {{'class': 'SimpleStrategy', 'replication_factor': 1}}"
                ),
                (),
            )
            .await
            .unwrap_or_else(|error| panic!("CREATE KEYSPACE {name}: {error}"));
        TestKeyspace { name, nodes }
    }
}

impl TestKeyspace {
    /// A name of its own that walflow is to create, dropped on drop all the same.
    pub fn reserved() -> TestKeyspace {
        TestKeyspace {
            name: unique_name("walflow_test"),
            nodes: services().cassandra_nodes,
        }
    }
}

pub async fn cassandra_session(nodes: &str) -> scylla::client::session::Session {
    scylla::client::session_builder::SessionBuilder::new()
        .known_nodes(nodes.split(','))
        .build()
        .await
        .unwrap_or_else(|error| panic!("cannot connect to Cassandra at {nodes}: {error}"))
}

impl Drop for TestKeyspace {
    fn drop(&mut self) {
        let nodes = self.nodes.clone();
        let name = self.name.clone();
        let _ = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            runtime.block_on(async {
                let session = cassandra_session(&nodes).await;
                session
                    .query_unpaged(format!("DROP KEYSPACE IF EXISTS {name}"), ())
                    .await
            })?;
            Ok::<(), Box<dyn std::error::Error + Send + Sync>>(())
        })
        .join();
    }
}

/// The `walflow` binary with a clean environment: only the service addresses given here,
/// never whatever WALFLOW_* the developer's shell has.
pub fn walflow(postgres_url: &str) -> Command {
    let services = services();
    let mut command = Command::new(env!("CARGO_BIN_EXE_walflow"));
    for (key, _) in std::env::vars() {
        if key.starts_with("WALFLOW_") || key == "RUST_LOG" {
            command.env_remove(key);
        }
    }
    command
        .env("WALFLOW_POSTGRES_URL", postgres_url)
        .env("WALFLOW_KAFKA_BROKERS", services.kafka_brokers)
        .env("WALFLOW_CASSANDRA_NODES", services.cassandra_nodes)
        .current_dir(std::env::temp_dir());
    command
}

/// Runs a command, returning its output; stdout and stderr are printed when the test fails.
pub fn run(command: &mut Command) -> Output {
    let output = command
        .output()
        .unwrap_or_else(|error| panic!("cannot run {command:?}: {error}"));
    eprintln!(
        "$ {command:?}\n--- exit {:?}\n--- stdout\n{}--- stderr\n{}",
        output.status.code(),
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    output
}

pub fn stdout(output: &Output) -> String {
    String::from_utf8_lossy(&output.stdout).into_owned()
}

pub fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

pub fn repo_root() -> &'static str {
    env!("CARGO_MANIFEST_DIR")
}

/// Produces one message per line into `topic` with kcat, a producer that shares no code
/// with walflow.
pub fn kcat_produce<S: AsRef<str>>(topic: &str, lines: impl IntoIterator<Item = S>) {
    use std::io::Write;
    let mut kcat = Command::new("kcat")
        .args(["-P", "-b", &services().kafka_brokers, "-t", topic])
        .stdin(std::process::Stdio::piped())
        .spawn()
        .expect("kcat");
    {
        let stdin = kcat.stdin.as_mut().unwrap();
        for line in lines {
            writeln!(stdin, "{}", line.as_ref()).unwrap();
        }
    }
    assert!(
        kcat.wait().unwrap().success(),
        "kcat could not produce to {topic}"
    );
}

/// Writes `items.sql` into `directory`: the change events of `topic` (items: id INT key,
/// price DOUBLE) kept in `keyspace`.item_prices, the price given by `price`, an expression
/// over items.
pub fn items_pipeline(
    directory: &std::path::Path,
    topic: &str,
    keyspace: &str,
    price: &str,
) -> std::path::PathBuf {
    let path = directory.join("items.sql");
    std::fs::write(
        &path,
        format!(
            "CREATE TABLE items (id INT PRIMARY KEY, price DOUBLE)
               WITH (connector = 'kafka', topic = '{topic}', format = 'debezium_json');
             CREATE TABLE item_prices (id INT PRIMARY KEY, price DOUBLE)
               WITH (connector = 'cassandra', keyspace = '{keyspace}');
             INSERT INTO item_prices SELECT id, {price} FROM items;"
        ),
    )
    .unwrap();
    path
}

/// Creates `topic` with `partitions` partitions (one replica), as an operator would before
/// walflow first writes to it.
pub async fn create_topic(topic: &str, partitions: i32) {
    use rdkafka::admin::{NewTopic, TopicReplication};
    let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
        .set("bootstrap.servers", services().kafka_brokers)
        .create()
        .unwrap();
    let results = admin
        .create_topics(
            &[NewTopic::new(topic, partitions, TopicReplication::Fixed(1))],
            &AdminOptions::new().operation_timeout(Some(Duration::from_secs(30))),
        )
        .await
        .unwrap();
    for result in results {
        result.unwrap_or_else(|(topic, code)| panic!("cannot create topic {topic}: {code}"));
    }
}
