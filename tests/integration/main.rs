//! walflow's integration tests: one test binary, run against the real Postgres, Kafka and
//! Cassandra that `scripts/services up` starts. Each test makes its own database, topic
//! prefix and keyspace (see `harness`), so tests run in parallel and leave nothing behind.

mod harness;

mod airflow;
mod avro;
mod cdc;
mod compose;
mod config;
mod dashboard;
mod doctor;
mod harness_cleanup;
mod ingest;
mod lag;
mod metrics;
mod migrate;
mod pgoutput;
mod process;
mod replication;
mod sql;
mod tls;
mod windows;
