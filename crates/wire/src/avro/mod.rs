//! Avro for change events: the envelope's schemas ([`schema`]), the binary encoding cdc
//! writes ([`write`], over [`zigzag`] varints), and the reader process decodes with
//! ([`read`]). Both sides are tested against each other and against apache-avro.

pub mod read;
pub mod schema;
pub mod write;
pub mod zigzag;

pub use read::{DatumError, Envelope, Reader, SchemaError};
pub use schema::{ColumnType, TableSchemas};

#[cfg(test)]
mod round_trip_tests;
