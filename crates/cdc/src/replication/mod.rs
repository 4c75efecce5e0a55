//! The replication connection: tokio-postgres cannot run `START_REPLICATION` (no CopyBoth),
//! so walflow speaks this part of the protocol itself, with postgres-protocol's message
//! codecs over a tokio socket.

use std::future::Future;

use walflow_pgoutput::{ReplicationMessage, StandbyStatusUpdate};

mod connection;
mod error;
mod framing;
mod memory;

pub use connection::{
    quote_identifier, CreatedSlot, ReplicationConfig, ReplicationConnection, ReplicationStream,
    SystemIdentity, DEFAULT_CONNECT_TIMEOUT,
};
pub use error::ReplicationError;
pub use memory::{MemoryReplication, MemoryServer};

/// The CopyBoth phase as cdc's loop sees it: replication messages in, status updates out.
/// [`ReplicationStream`] speaks it to Postgres; [`MemoryReplication`] plays it from bytes a
/// test encodes.
pub trait ChangeStream: Send {
    /// The next message, or `None` when the server ended the stream. Cancel-safe: the loop
    /// polls it beside its timers.
    fn next(
        &mut self,
    ) -> impl Future<Output = Result<Option<ReplicationMessage>, ReplicationError>> + Send;

    /// Tells the server how far walflow got: WAL up to `flushed` may be recycled.
    fn send_status(
        &mut self,
        update: StandbyStatusUpdate,
    ) -> impl Future<Output = Result<(), ReplicationError>> + Send;
}

impl ChangeStream for ReplicationStream {
    async fn next(&mut self) -> Result<Option<ReplicationMessage>, ReplicationError> {
        ReplicationStream::next(self).await
    }

    async fn send_status(&mut self, update: StandbyStatusUpdate) -> Result<(), ReplicationError> {
        ReplicationStream::send_status(self, update).await
    }
}
