//! walflow's third hop: pipelines written in SQL files that keep Cassandra tables equal to
//! queries over Kafka change streams (updating tables), on DataFusion and Arrow.

pub mod avro;
pub mod checkpoint;
pub mod consumer;
pub mod decode;
pub mod definition;
pub mod golden;
pub mod io;
pub mod live_edit;
pub mod metrics;
pub mod operators;
pub mod pipeline;
pub mod plan;
pub mod runner;
pub mod sink;
pub mod time;
pub mod value;
pub mod windows;

#[cfg(test)]
mod error_goldens;
