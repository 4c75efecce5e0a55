//! walflow's second hop: committed changes read from Postgres's write-ahead log through a
//! logical replication slot (pgoutput), on their way to Kafka.

pub mod avro;
pub mod avro_events;
pub mod encoder;
pub mod envelope;
pub mod keys;
pub mod metrics;
pub mod pg_time;
pub mod pipeline;
pub mod publication;
pub mod replication;
pub mod sink;
pub mod snapshot;
pub mod types;
