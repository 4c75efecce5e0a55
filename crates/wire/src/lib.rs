//! walflow's wire format: everything `walflow cdc` writes to Kafka and `walflow process`
//! reads back, in one place, so the two sides of the contract cannot drift apart.
//!
//! - [`envelope`]: the Debezium envelope's field names, operation codes, the marker of an
//!   unavailable (untouched TOASTed) value, and the position fields (`source.sequence`,
//!   `transaction.total_order`) that let a consumer drop a change it has seen.
//! - [`topic`]: which Kafka topic a table's changes go to, and the dead-letter topics.
//! - [`confluent`]: the Confluent wire framing of an Avro datum (magic byte, schema id).
//! - [`avro`]: the envelope's Avro schemas, the datum writer cdc encodes with, and the
//!   reader process decodes with, tested against each other and against apache-avro.
//! - [`registry`]: the one client of a Confluent-compatible schema registry, used by cdc,
//!   process and doctor.
//!
//! The crate does no Kafka or Postgres I/O (the registry client aside) and knows nothing of
//! pgoutput or DataFusion: cdc maps Postgres's types onto it, process maps it onto its
//! declared columns.

pub mod avro;
pub mod confluent;
pub mod envelope;
pub mod registry;
pub mod topic;
