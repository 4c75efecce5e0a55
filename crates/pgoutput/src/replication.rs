//! The streaming replication protocol around pgoutput: what the server sends in CopyData
//! during `START_REPLICATION`, and the status updates the client sends back.

use bytes::{BufMut, Bytes, BytesMut};

use crate::error::{DecodeError, DecodeErrorKind};
use crate::lsn::{Lsn, PgTimestamp};
use crate::reader::Reader;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReplicationMessage {
    XLogData(XLogData),
    PrimaryKeepalive(PrimaryKeepalive),
}

/// 'w': a piece of WAL, here one pgoutput message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct XLogData {
    pub wal_start: Lsn,
    /// The current end of WAL on the server.
    pub wal_end: Lsn,
    pub server_time: PgTimestamp,
    pub data: Bytes,
}

/// 'k': the server's heartbeat; `reply_requested` asks for a status update at once, or the
/// server ends the connection after `wal_sender_timeout`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PrimaryKeepalive {
    pub wal_end: Lsn,
    pub server_time: PgTimestamp,
    pub reply_requested: bool,
}

impl ReplicationMessage {
    /// Decodes the payload of one CopyData message.
    pub fn parse(bytes: Bytes) -> Result<ReplicationMessage, DecodeError> {
        let mut reader = Reader::new(bytes);
        let tag = reader.u8("replication message tag")?;
        reader.set_tag(tag);
        match tag {
            b'w' => Ok(ReplicationMessage::XLogData(XLogData {
                wal_start: Lsn(reader.u64("WAL start")?),
                wal_end: Lsn(reader.u64("WAL end")?),
                server_time: PgTimestamp(reader.i64("server time")?),
                data: reader.rest(),
            })),
            b'k' => {
                let keepalive = PrimaryKeepalive {
                    wal_end: Lsn(reader.u64("WAL end")?),
                    server_time: PgTimestamp(reader.i64("server time")?),
                    reply_requested: reader.u8("reply flag")? == 1,
                };
                reader.finish()?;
                Ok(ReplicationMessage::PrimaryKeepalive(keepalive))
            }
            _ => Err(reader.error(DecodeErrorKind::UnknownTag {
                what: "replication message tag",
            })),
        }
    }
}

/// 'r': the client's position, which is what lets the server recycle WAL: everything up to
/// `flushed` may go. Walflow reports only what Kafka has acknowledged.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StandbyStatusUpdate {
    pub written: Lsn,
    pub flushed: Lsn,
    pub applied: Lsn,
    pub client_time: PgTimestamp,
    pub reply_requested: bool,
}

impl StandbyStatusUpdate {
    /// The CopyData payload (34 bytes).
    pub fn encode(&self) -> Bytes {
        let mut buffer = BytesMut::with_capacity(34);
        buffer.put_u8(b'r');
        buffer.put_u64(self.written.0);
        buffer.put_u64(self.flushed.0);
        buffer.put_u64(self.applied.0);
        buffer.put_i64(self.client_time.0);
        buffer.put_u8(u8::from(self.reply_requested));
        buffer.freeze()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keepalives_decode_and_ask_for_replies() {
        let mut bytes = vec![b'k'];
        bytes.extend_from_slice(&0x0000_0001_0000_0010u64.to_be_bytes());
        bytes.extend_from_slice(&42i64.to_be_bytes());
        bytes.push(1);
        let message = ReplicationMessage::parse(Bytes::from(bytes)).unwrap();
        assert_eq!(
            message,
            ReplicationMessage::PrimaryKeepalive(PrimaryKeepalive {
                wal_end: Lsn(0x1_0000_0010),
                server_time: PgTimestamp(42),
                reply_requested: true,
            })
        );
    }

    #[test]
    fn xlogdata_keeps_its_payload_without_copying() {
        let mut bytes = vec![b'w'];
        bytes.extend_from_slice(&1u64.to_be_bytes());
        bytes.extend_from_slice(&2u64.to_be_bytes());
        bytes.extend_from_slice(&3i64.to_be_bytes());
        bytes.extend_from_slice(b"payload");
        let buffer = Bytes::from(bytes);
        let ReplicationMessage::XLogData(data) = ReplicationMessage::parse(buffer.clone()).unwrap()
        else {
            panic!("not XLogData");
        };
        assert_eq!(&data.data[..], b"payload");
        assert_eq!(
            data.data.as_ptr(),
            buffer[25..].as_ptr(),
            "a slice of the same buffer"
        );
    }

    #[test]
    fn status_updates_are_34_bytes() {
        let update = StandbyStatusUpdate {
            written: Lsn(1),
            flushed: Lsn(2),
            applied: Lsn(3),
            client_time: PgTimestamp(4),
            reply_requested: false,
        };
        let bytes = update.encode();
        assert_eq!(bytes.len(), 34);
        assert_eq!(bytes[0], b'r');
        assert_eq!(&bytes[9..17], &2u64.to_be_bytes());
    }

    #[test]
    fn unknown_tags_are_named() {
        let error = ReplicationMessage::parse(Bytes::from_static(b"z")).unwrap_err();
        assert_eq!(
            error.to_string(),
            "message 'z' at byte 1: unknown replication message tag"
        );
    }
}
