//! A replication stream played from memory, for tests of cdc's loop without Postgres: the
//! test encodes what the server would send with the pgoutput crate's encoder, and reads
//! back the status updates cdc answered with. The bytes go through the same
//! [`ReplicationMessage::parse`] as a real stream's.

use std::sync::{Arc, Mutex, MutexGuard};

use bytes::Bytes;
use tokio::sync::mpsc;
use walflow_pgoutput::{
    encode, LogicalMessage, Lsn, PgTimestamp, PrimaryKeepalive, ReplicationMessage,
    StandbyStatusUpdate, XLogData,
};

use super::{ChangeStream, ReplicationError};

pub struct MemoryReplication {
    messages: mpsc::UnboundedReceiver<Option<Bytes>>,
    statuses: Arc<Mutex<Vec<StandbyStatusUpdate>>>,
}

/// The test's side: what the "server" sends, and what cdc told it.
#[derive(Clone)]
pub struct MemoryServer {
    messages: mpsc::UnboundedSender<Option<Bytes>>,
    statuses: Arc<Mutex<Vec<StandbyStatusUpdate>>>,
}

impl MemoryReplication {
    pub fn new() -> (MemoryReplication, MemoryServer) {
        let (sender, receiver) = mpsc::unbounded_channel();
        let statuses = Arc::<Mutex<Vec<StandbyStatusUpdate>>>::default();
        (
            MemoryReplication {
                messages: receiver,
                statuses: statuses.clone(),
            },
            MemoryServer {
                messages: sender,
                statuses,
            },
        )
    }
}

impl MemoryServer {
    fn statuses_locked(&self) -> MutexGuard<'_, Vec<StandbyStatusUpdate>> {
        locked(&self.statuses)
    }

    /// Sends one CopyData payload as it is (a malformed one, say).
    pub fn send_bytes(&self, payload: Bytes) {
        // The stream may be gone already (cdc stopped): nothing listens then.
        let _ = self.messages.send(Some(payload));
    }

    /// Ends the stream (CopyDone), as a server shutting down.
    pub fn end_stream(&self) {
        let _ = self.messages.send(None);
    }

    pub fn send(&self, message: &ReplicationMessage) {
        self.send_bytes(encode::replication_message(message));
    }

    /// One pgoutput message at `wal_start`, in an XLogData.
    pub fn send_logical(&self, wal_start: Lsn, message: &LogicalMessage) {
        self.send(&ReplicationMessage::XLogData(XLogData {
            wal_start,
            wal_end: wal_start,
            server_time: PgTimestamp(0),
            data: encode::logical_message(message),
        }));
    }

    pub fn keepalive(&self, wal_end: Lsn, reply_requested: bool) {
        self.send(&ReplicationMessage::PrimaryKeepalive(PrimaryKeepalive {
            wal_end,
            server_time: PgTimestamp(0),
            reply_requested,
        }));
    }

    /// Every status update cdc sent, oldest first.
    pub fn statuses(&self) -> Vec<StandbyStatusUpdate> {
        self.statuses_locked().clone()
    }

    /// The newest position cdc confirmed (flushed), 0/0 before any update.
    pub fn confirmed(&self) -> Lsn {
        self.statuses_locked()
            .last()
            .map_or(Lsn(0), |update| update.flushed)
    }
}

impl ChangeStream for MemoryReplication {
    async fn next(&mut self) -> Result<Option<ReplicationMessage>, ReplicationError> {
        match self.messages.recv().await {
            Some(Some(payload)) => Ok(Some(ReplicationMessage::parse(payload)?)),
            Some(None) | None => Ok(None),
        }
    }

    async fn send_status(&mut self, update: StandbyStatusUpdate) -> Result<(), ReplicationError> {
        locked(&self.statuses).push(update);
        Ok(())
    }
}

/// The status updates cdc sent, whichever side asks (a panicking test thread leaves them
/// readable).
fn locked(statuses: &Mutex<Vec<StandbyStatusUpdate>>) -> MutexGuard<'_, Vec<StandbyStatusUpdate>> {
    statuses
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}
