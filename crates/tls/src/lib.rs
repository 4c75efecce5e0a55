//! walflow's secure connections. Each service's TLS settings are read the way its own
//! clients read them (libpq's `sslmode` and files for Postgres, librdkafka's properties for
//! Kafka), and every connection goes through one crypto stack, the system's OpenSSL:
//! librdkafka needs it for SSL and SASL SCRAM, so Postgres (ordinary and replication
//! connections) uses it too.

pub mod kafka;
pub mod postgres;
