//! The replication connection: tokio-postgres cannot run `START_REPLICATION` (no CopyBoth),
//! so walflow speaks this part of the protocol itself, with postgres-protocol's message
//! codecs over a tokio socket.

mod connection;
mod error;
mod framing;

pub use connection::{
    quote_identifier, CreatedSlot, ReplicationConfig, ReplicationConnection, ReplicationStream,
    SystemIdentity, DEFAULT_CONNECT_TIMEOUT,
};
pub use error::ReplicationError;
