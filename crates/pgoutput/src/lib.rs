//! Postgres's streaming replication protocol and the `pgoutput` logical decoding messages,
//! decoded without I/O over [`bytes::Bytes`].
//!
//! Nothing here opens a socket or allocates per column: strings and column values are
//! slices of the buffer they arrived in. Errors name the message tag and the byte offset
//! where decoding failed. The same module encodes every message ([`encode`]), which the
//! property tests use to check that decoding inverts encoding, and which tests elsewhere
//! can use to fake a replication stream.
//!
//! - [`ReplicationMessage`]: what arrives in CopyData during `START_REPLICATION`
//!   (XLogData, primary keepalive); [`StandbyStatusUpdate`] is what goes back.
//! - [`LogicalMessage`]: the pgoutput payload of an XLogData, protocol versions 1 to 4.
//! - [`LogicalDecoder`]: tracks Stream Start/Stop, which decides whether change messages
//!   carry a transaction id.

mod error;
mod logical;
mod lsn;
mod reader;
mod replication;
mod tuple;

pub mod encode;

pub use error::{DecodeError, DecodeErrorKind};
pub use logical::{
    Begin, BeginPrepare, Commit, CommitPrepared, Delete, Insert, LogicalDecoder, LogicalMessage,
    Message, OldTuple, Origin, Prepare, Relation, RelationColumn, ReplicaIdentity,
    RollbackPrepared, StreamAbort, StreamCommit, StreamStart, Truncate, TypeMessage, Update,
};
pub use lsn::{Lsn, ParseLsnError, PgTimestamp};
pub use replication::{PrimaryKeepalive, ReplicationMessage, StandbyStatusUpdate, XLogData};
pub use tuple::{Column, TupleData, TupleIter};
