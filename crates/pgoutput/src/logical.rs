//! pgoutput's logical replication messages, protocol versions 1 to 4, one type per message.

use bytes::Bytes;
use bytestring::ByteString;

use crate::error::{DecodeError, DecodeErrorKind};
use crate::lsn::{Lsn, PgTimestamp};
use crate::reader::Reader;
use crate::tuple::TupleData;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LogicalMessage {
    Begin(Begin),
    Message(Message),
    Commit(Commit),
    Origin(Origin),
    Relation(Relation),
    Type(TypeMessage),
    Insert(Insert),
    Update(Update),
    Delete(Delete),
    Truncate(Truncate),
    StreamStart(StreamStart),
    StreamStop,
    StreamCommit(StreamCommit),
    StreamAbort(StreamAbort),
    BeginPrepare(BeginPrepare),
    Prepare(Prepare),
    CommitPrepared(CommitPrepared),
    RollbackPrepared(RollbackPrepared),
    StreamPrepare(Prepare),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Begin {
    pub final_lsn: Lsn,
    pub commit_time: PgTimestamp,
    pub xid: u32,
}

/// A logical decoding message (`pg_logical_emit_message`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message {
    /// Present inside a streamed transaction.
    pub xid: Option<u32>,
    pub transactional: bool,
    pub lsn: Lsn,
    pub prefix: ByteString,
    pub content: Bytes,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Commit {
    pub flags: u8,
    pub commit_lsn: Lsn,
    pub end_lsn: Lsn,
    pub commit_time: PgTimestamp,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Origin {
    pub commit_lsn: Lsn,
    pub name: ByteString,
}

/// REPLICA IDENTITY of a relation: which old values updates and deletes carry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReplicaIdentity {
    /// 'd': the primary key.
    Default,
    /// 'n': none.
    Nothing,
    /// 'f': every column.
    Full,
    /// 'i': the columns of a chosen unique index.
    Index,
}

impl ReplicaIdentity {
    pub fn as_byte(self) -> u8 {
        match self {
            ReplicaIdentity::Default => b'd',
            ReplicaIdentity::Nothing => b'n',
            ReplicaIdentity::Full => b'f',
            ReplicaIdentity::Index => b'i',
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RelationColumn {
    /// Part of the replica identity key.
    pub is_key: bool,
    pub name: ByteString,
    pub type_oid: u32,
    pub type_modifier: i32,
}

/// Sent before the first change of a relation in a session, and again whenever its
/// definition changed: columns added mid-stream arrive this way.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Relation {
    pub xid: Option<u32>,
    pub oid: u32,
    pub namespace: ByteString,
    pub name: ByteString,
    pub replica_identity: ReplicaIdentity,
    pub columns: Vec<RelationColumn>,
}

/// A user-defined type's name, sent before a relation that uses it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TypeMessage {
    pub xid: Option<u32>,
    pub oid: u32,
    pub namespace: ByteString,
    pub name: ByteString,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Insert {
    pub xid: Option<u32>,
    pub relation_oid: u32,
    pub new: TupleData,
}

/// The old values an update or delete carries, by replica identity.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OldTuple {
    /// 'K': the key columns only (REPLICA IDENTITY DEFAULT or INDEX, when the key changed
    /// or for deletes); other columns are null.
    Key(TupleData),
    /// 'O': the whole old row (REPLICA IDENTITY FULL).
    Full(TupleData),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Update {
    pub xid: Option<u32>,
    pub relation_oid: u32,
    pub old: Option<OldTuple>,
    pub new: TupleData,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Delete {
    pub xid: Option<u32>,
    pub relation_oid: u32,
    pub old: OldTuple,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Truncate {
    pub xid: Option<u32>,
    pub cascade: bool,
    pub restart_identity: bool,
    pub relation_oids: Vec<u32>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StreamStart {
    pub xid: u32,
    pub first_segment: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StreamCommit {
    pub xid: u32,
    pub flags: u8,
    pub commit_lsn: Lsn,
    pub end_lsn: Lsn,
    pub commit_time: PgTimestamp,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StreamAbort {
    pub xid: u32,
    pub subtransaction_xid: u32,
    /// Protocol 4 with `streaming = parallel` only.
    pub abort_lsn: Option<Lsn>,
    pub abort_time: Option<PgTimestamp>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BeginPrepare {
    pub prepare_lsn: Lsn,
    pub end_lsn: Lsn,
    pub prepare_time: PgTimestamp,
    pub xid: u32,
    pub gid: ByteString,
}

/// Prepare ('P') and Stream Prepare ('p') share this shape.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Prepare {
    pub flags: u8,
    pub prepare_lsn: Lsn,
    pub end_lsn: Lsn,
    pub prepare_time: PgTimestamp,
    pub xid: u32,
    pub gid: ByteString,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CommitPrepared {
    pub flags: u8,
    pub commit_lsn: Lsn,
    pub end_lsn: Lsn,
    pub commit_time: PgTimestamp,
    pub xid: u32,
    pub gid: ByteString,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RollbackPrepared {
    pub flags: u8,
    pub prepare_end_lsn: Lsn,
    pub rollback_end_lsn: Lsn,
    pub prepare_time: PgTimestamp,
    pub rollback_time: PgTimestamp,
    pub xid: u32,
    pub gid: ByteString,
}

impl LogicalMessage {
    /// Decodes one pgoutput message. `in_stream` says whether it arrived between Stream
    /// Start and Stream Stop, where change messages carry their transaction id
    /// ([`LogicalDecoder`] tracks that).
    pub fn parse(bytes: Bytes, in_stream: bool) -> Result<LogicalMessage, DecodeError> {
        let mut reader = Reader::new(bytes);
        let tag = reader.u8("message tag")?;
        reader.set_tag(tag);
        let streamed_xid = |reader: &mut Reader| -> Result<Option<u32>, DecodeError> {
            if in_stream {
                reader.u32("transaction id").map(Some)
            } else {
                Ok(None)
            }
        };
        let message = match tag {
            b'B' => LogicalMessage::Begin(Begin {
                final_lsn: Lsn(reader.u64("final LSN")?),
                commit_time: PgTimestamp(reader.i64("commit timestamp")?),
                xid: reader.u32("transaction id")?,
            }),
            b'M' => {
                let xid = streamed_xid(&mut reader)?;
                let transactional = reader.u8("flags")? & 1 == 1;
                let lsn = Lsn(reader.u64("message LSN")?);
                let prefix = reader.cstr("prefix")?;
                let length = reader.length("content length")?;
                let content = reader.bytes(length, "content")?;
                LogicalMessage::Message(Message {
                    xid,
                    transactional,
                    lsn,
                    prefix,
                    content,
                })
            }
            b'C' => LogicalMessage::Commit(Commit {
                flags: reader.u8("flags")?,
                commit_lsn: Lsn(reader.u64("commit LSN")?),
                end_lsn: Lsn(reader.u64("end LSN")?),
                commit_time: PgTimestamp(reader.i64("commit timestamp")?),
            }),
            b'O' => LogicalMessage::Origin(Origin {
                commit_lsn: Lsn(reader.u64("origin commit LSN")?),
                name: reader.cstr("origin name")?,
            }),
            b'R' => LogicalMessage::Relation(read_relation(&mut reader, in_stream)?),
            b'Y' => LogicalMessage::Type(TypeMessage {
                xid: streamed_xid(&mut reader)?,
                oid: reader.u32("type OID")?,
                namespace: reader.cstr("type namespace")?,
                name: reader.cstr("type name")?,
            }),
            b'I' => {
                let xid = streamed_xid(&mut reader)?;
                let relation_oid = reader.u32("relation OID")?;
                match reader.u8("tuple kind")? {
                    b'N' => {}
                    _ => {
                        return Err(reader.error(DecodeErrorKind::UnknownTag {
                            what: "insert tuple kind",
                        }))
                    }
                }
                LogicalMessage::Insert(Insert {
                    xid,
                    relation_oid,
                    new: TupleData::read(&mut reader)?,
                })
            }
            b'U' => {
                let xid = streamed_xid(&mut reader)?;
                let relation_oid = reader.u32("relation OID")?;
                let (old, new) = match reader.u8("tuple kind")? {
                    b'N' => (None, TupleData::read(&mut reader)?),
                    kind @ (b'K' | b'O') => {
                        let old = read_old_tuple(kind, &mut reader)?;
                        match reader.u8("new tuple kind")? {
                            b'N' => (old, TupleData::read(&mut reader)?),
                            _ => {
                                return Err(reader.error(DecodeErrorKind::UnknownTag {
                                    what: "update new tuple kind",
                                }))
                            }
                        }
                    }
                    _ => {
                        return Err(reader.error(DecodeErrorKind::UnknownTag {
                            what: "update tuple kind",
                        }))
                    }
                };
                LogicalMessage::Update(Update {
                    xid,
                    relation_oid,
                    old,
                    new,
                })
            }
            b'D' => {
                let xid = streamed_xid(&mut reader)?;
                let relation_oid = reader.u32("relation OID")?;
                let kind = reader.u8("tuple kind")?;
                let Some(old) = read_old_tuple(kind, &mut reader)? else {
                    return Err(reader.error(DecodeErrorKind::UnknownTag {
                        what: "delete tuple kind",
                    }));
                };
                LogicalMessage::Delete(Delete {
                    xid,
                    relation_oid,
                    old,
                })
            }
            b'T' => {
                let xid = streamed_xid(&mut reader)?;
                let count = reader.length("relation count")?;
                let options = reader.u8("truncate options")?;
                if reader.remaining() < count.saturating_mul(4) {
                    return Err(reader.error(DecodeErrorKind::Truncated {
                        what: "relation OIDs",
                    }));
                }
                let relation_oids = (0..count)
                    .map(|_| reader.u32("relation OID"))
                    .collect::<Result<_, _>>()?;
                LogicalMessage::Truncate(Truncate {
                    xid,
                    cascade: options & 1 != 0,
                    restart_identity: options & 2 != 0,
                    relation_oids,
                })
            }
            b'S' => LogicalMessage::StreamStart(StreamStart {
                xid: reader.u32("transaction id")?,
                first_segment: reader.u8("first segment flag")? == 1,
            }),
            b'E' => LogicalMessage::StreamStop,
            b'c' => LogicalMessage::StreamCommit(StreamCommit {
                xid: reader.u32("transaction id")?,
                flags: reader.u8("flags")?,
                commit_lsn: Lsn(reader.u64("commit LSN")?),
                end_lsn: Lsn(reader.u64("end LSN")?),
                commit_time: PgTimestamp(reader.i64("commit timestamp")?),
            }),
            b'A' => {
                let xid = reader.u32("transaction id")?;
                let subtransaction_xid = reader.u32("subtransaction id")?;
                // Protocol 4 with parallel streaming adds the abort's LSN and time.
                let (abort_lsn, abort_time) = if reader.remaining() > 0 {
                    (
                        Some(Lsn(reader.u64("abort LSN")?)),
                        Some(PgTimestamp(reader.i64("abort timestamp")?)),
                    )
                } else {
                    (None, None)
                };
                LogicalMessage::StreamAbort(StreamAbort {
                    xid,
                    subtransaction_xid,
                    abort_lsn,
                    abort_time,
                })
            }
            b'b' => LogicalMessage::BeginPrepare(BeginPrepare {
                prepare_lsn: Lsn(reader.u64("prepare LSN")?),
                end_lsn: Lsn(reader.u64("end LSN")?),
                prepare_time: PgTimestamp(reader.i64("prepare timestamp")?),
                xid: reader.u32("transaction id")?,
                gid: reader.cstr("GID")?,
            }),
            b'P' => LogicalMessage::Prepare(read_prepare(&mut reader)?),
            b'p' => LogicalMessage::StreamPrepare(read_prepare(&mut reader)?),
            b'K' => LogicalMessage::CommitPrepared(CommitPrepared {
                flags: reader.u8("flags")?,
                commit_lsn: Lsn(reader.u64("commit LSN")?),
                end_lsn: Lsn(reader.u64("end LSN")?),
                commit_time: PgTimestamp(reader.i64("commit timestamp")?),
                xid: reader.u32("transaction id")?,
                gid: reader.cstr("GID")?,
            }),
            b'r' => LogicalMessage::RollbackPrepared(RollbackPrepared {
                flags: reader.u8("flags")?,
                prepare_end_lsn: Lsn(reader.u64("prepare end LSN")?),
                rollback_end_lsn: Lsn(reader.u64("rollback end LSN")?),
                prepare_time: PgTimestamp(reader.i64("prepare timestamp")?),
                rollback_time: PgTimestamp(reader.i64("rollback timestamp")?),
                xid: reader.u32("transaction id")?,
                gid: reader.cstr("GID")?,
            }),
            _ => {
                return Err(reader.error(DecodeErrorKind::UnknownTag {
                    what: "pgoutput message tag",
                }))
            }
        };
        reader.finish()?;
        Ok(message)
    }

    /// The tag byte this message is sent with.
    pub fn tag(&self) -> u8 {
        match self {
            LogicalMessage::Begin(_) => b'B',
            LogicalMessage::Message(_) => b'M',
            LogicalMessage::Commit(_) => b'C',
            LogicalMessage::Origin(_) => b'O',
            LogicalMessage::Relation(_) => b'R',
            LogicalMessage::Type(_) => b'Y',
            LogicalMessage::Insert(_) => b'I',
            LogicalMessage::Update(_) => b'U',
            LogicalMessage::Delete(_) => b'D',
            LogicalMessage::Truncate(_) => b'T',
            LogicalMessage::StreamStart(_) => b'S',
            LogicalMessage::StreamStop => b'E',
            LogicalMessage::StreamCommit(_) => b'c',
            LogicalMessage::StreamAbort(_) => b'A',
            LogicalMessage::BeginPrepare(_) => b'b',
            LogicalMessage::Prepare(_) => b'P',
            LogicalMessage::CommitPrepared(_) => b'K',
            LogicalMessage::RollbackPrepared(_) => b'r',
            LogicalMessage::StreamPrepare(_) => b'p',
        }
    }
}

fn read_relation(reader: &mut Reader, in_stream: bool) -> Result<Relation, DecodeError> {
    let xid = if in_stream {
        Some(reader.u32("transaction id")?)
    } else {
        None
    };
    let oid = reader.u32("relation OID")?;
    let namespace = reader.cstr("namespace")?;
    let name = reader.cstr("relation name")?;
    let replica_identity = match reader.u8("replica identity")? {
        b'd' => ReplicaIdentity::Default,
        b'n' => ReplicaIdentity::Nothing,
        b'f' => ReplicaIdentity::Full,
        b'i' => ReplicaIdentity::Index,
        _ => {
            return Err(reader.error(DecodeErrorKind::UnknownTag {
                what: "replica identity",
            }))
        }
    };
    let count = reader.i16("column count")?;
    let count = usize::try_from(count).map_err(|_| {
        reader.error(DecodeErrorKind::InvalidLength {
            what: "column count",
            value: count.into(),
        })
    })?;
    // Each column takes at least 10 bytes: never reserve more than the message can hold.
    let mut columns = Vec::with_capacity(count.min(reader.remaining() / 10));
    for _ in 0..count {
        columns.push(RelationColumn {
            is_key: reader.u8("column flags")? & 1 == 1,
            name: reader.cstr("column name")?,
            type_oid: reader.u32("column type OID")?,
            type_modifier: reader.i32("column type modifier")?,
        });
    }
    Ok(Relation {
        xid,
        oid,
        namespace,
        name,
        replica_identity,
        columns,
    })
}

fn read_prepare(reader: &mut Reader) -> Result<Prepare, DecodeError> {
    Ok(Prepare {
        flags: reader.u8("flags")?,
        prepare_lsn: Lsn(reader.u64("prepare LSN")?),
        end_lsn: Lsn(reader.u64("end LSN")?),
        prepare_time: PgTimestamp(reader.i64("prepare timestamp")?),
        xid: reader.u32("transaction id")?,
        gid: reader.cstr("GID")?,
    })
}

/// Decodes a session's pgoutput messages in order, tracking whether they fall inside a
/// streamed transaction (between Stream Start and Stream Stop).
#[derive(Debug, Default)]
pub struct LogicalDecoder {
    in_stream: bool,
}

impl LogicalDecoder {
    pub fn new() -> LogicalDecoder {
        LogicalDecoder::default()
    }

    pub fn in_stream(&self) -> bool {
        self.in_stream
    }

    pub fn decode(&mut self, bytes: Bytes) -> Result<LogicalMessage, DecodeError> {
        let message = LogicalMessage::parse(bytes, self.in_stream)?;
        match message {
            LogicalMessage::StreamStart(_) => self.in_stream = true,
            LogicalMessage::StreamStop => self.in_stream = false,
            _ => {}
        }
        Ok(message)
    }
}

/// Reads the old row an Update or Delete carries: `K` the replica identity's key columns,
/// `O` the whole old row (REPLICA IDENTITY FULL); `None` for another kind.
fn read_old_tuple(kind: u8, reader: &mut Reader) -> Result<Option<OldTuple>, DecodeError> {
    Ok(Some(match kind {
        b'K' => OldTuple::Key(TupleData::read(reader)?),
        b'O' => OldTuple::Full(TupleData::read(reader)?),
        _ => return Ok(None),
    }))
}
