//! Encodes every message the decoder knows, byte for byte as Postgres sends it. The
//! property tests check `parse(encode(m)) == m`; other crates use it to fake a replication
//! stream in tests and benchmarks.

use bytes::{BufMut, Bytes, BytesMut};

use crate::logical::*;
use crate::replication::{PrimaryKeepalive, ReplicationMessage};
use crate::tuple::{Column, TupleData};

/// One tuple from its columns.
pub fn tuple(columns: &[Column]) -> TupleData {
    let mut buffer = BytesMut::new();
    for column in columns {
        match column {
            Column::Null => buffer.put_u8(b'n'),
            Column::UnchangedToast => buffer.put_u8(b'u'),
            Column::Text(value) | Column::Binary(value) => {
                buffer.put_u8(if matches!(column, Column::Text(_)) {
                    b't'
                } else {
                    b'b'
                });
                buffer.put_u32(value.len() as u32);
                buffer.put_slice(value);
            }
        }
    }
    TupleData::from_parts(columns.len() as u16, buffer.freeze())
}

fn put_cstr(buffer: &mut BytesMut, text: &str) {
    buffer.put_slice(text.as_bytes());
    buffer.put_u8(0);
}

fn put_tuple(buffer: &mut BytesMut, tuple: &TupleData) {
    buffer.put_u16(tuple.column_count() as u16);
    buffer.put_slice(tuple.encoded_columns());
}

fn put_old(buffer: &mut BytesMut, old: &OldTuple) {
    match old {
        OldTuple::Key(tuple) => {
            buffer.put_u8(b'K');
            put_tuple(buffer, tuple);
        }
        OldTuple::Full(tuple) => {
            buffer.put_u8(b'O');
            put_tuple(buffer, tuple);
        }
    }
}

fn put_xid(buffer: &mut BytesMut, xid: Option<u32>) {
    if let Some(xid) = xid {
        buffer.put_u32(xid);
    }
}

fn put_prepare(buffer: &mut BytesMut, prepare: &Prepare) {
    buffer.put_u8(prepare.flags);
    buffer.put_u64(prepare.prepare_lsn.0);
    buffer.put_u64(prepare.end_lsn.0);
    buffer.put_i64(prepare.prepare_time.0);
    buffer.put_u32(prepare.xid);
    put_cstr(buffer, &prepare.gid);
}

/// The pgoutput bytes of a message. Change messages with `xid: Some(..)` are encoded as
/// inside a streamed transaction.
pub fn logical_message(message: &LogicalMessage) -> Bytes {
    let mut buffer = BytesMut::with_capacity(64);
    buffer.put_u8(message.tag());
    match message {
        LogicalMessage::Begin(begin) => {
            buffer.put_u64(begin.final_lsn.0);
            buffer.put_i64(begin.commit_time.0);
            buffer.put_u32(begin.xid);
        }
        LogicalMessage::Message(message) => {
            put_xid(&mut buffer, message.xid);
            buffer.put_u8(u8::from(message.transactional));
            buffer.put_u64(message.lsn.0);
            put_cstr(&mut buffer, &message.prefix);
            buffer.put_u32(message.content.len() as u32);
            buffer.put_slice(&message.content);
        }
        LogicalMessage::Commit(commit) => {
            buffer.put_u8(commit.flags);
            buffer.put_u64(commit.commit_lsn.0);
            buffer.put_u64(commit.end_lsn.0);
            buffer.put_i64(commit.commit_time.0);
        }
        LogicalMessage::Origin(origin) => {
            buffer.put_u64(origin.commit_lsn.0);
            put_cstr(&mut buffer, &origin.name);
        }
        LogicalMessage::Relation(relation) => {
            put_xid(&mut buffer, relation.xid);
            buffer.put_u32(relation.oid);
            put_cstr(&mut buffer, &relation.namespace);
            put_cstr(&mut buffer, &relation.name);
            buffer.put_u8(relation.replica_identity.as_byte());
            buffer.put_u16(relation.columns.len() as u16);
            for column in &relation.columns {
                buffer.put_u8(u8::from(column.is_key));
                put_cstr(&mut buffer, &column.name);
                buffer.put_u32(column.type_oid);
                buffer.put_i32(column.type_modifier);
            }
        }
        LogicalMessage::Type(type_message) => {
            put_xid(&mut buffer, type_message.xid);
            buffer.put_u32(type_message.oid);
            put_cstr(&mut buffer, &type_message.namespace);
            put_cstr(&mut buffer, &type_message.name);
        }
        LogicalMessage::Insert(insert) => {
            put_xid(&mut buffer, insert.xid);
            buffer.put_u32(insert.relation_oid);
            buffer.put_u8(b'N');
            put_tuple(&mut buffer, &insert.new);
        }
        LogicalMessage::Update(update) => {
            put_xid(&mut buffer, update.xid);
            buffer.put_u32(update.relation_oid);
            if let Some(old) = &update.old {
                put_old(&mut buffer, old);
            }
            buffer.put_u8(b'N');
            put_tuple(&mut buffer, &update.new);
        }
        LogicalMessage::Delete(delete) => {
            put_xid(&mut buffer, delete.xid);
            buffer.put_u32(delete.relation_oid);
            put_old(&mut buffer, &delete.old);
        }
        LogicalMessage::Truncate(truncate) => {
            put_xid(&mut buffer, truncate.xid);
            buffer.put_u32(truncate.relation_oids.len() as u32);
            buffer.put_u8(u8::from(truncate.cascade) | (u8::from(truncate.restart_identity) << 1));
            for oid in &truncate.relation_oids {
                buffer.put_u32(*oid);
            }
        }
        LogicalMessage::StreamStart(start) => {
            buffer.put_u32(start.xid);
            buffer.put_u8(u8::from(start.first_segment));
        }
        LogicalMessage::StreamStop => {}
        LogicalMessage::StreamCommit(commit) => {
            buffer.put_u32(commit.xid);
            buffer.put_u8(commit.flags);
            buffer.put_u64(commit.commit_lsn.0);
            buffer.put_u64(commit.end_lsn.0);
            buffer.put_i64(commit.commit_time.0);
        }
        LogicalMessage::StreamAbort(abort) => {
            buffer.put_u32(abort.xid);
            buffer.put_u32(abort.subtransaction_xid);
            if let (Some(lsn), Some(time)) = (abort.abort_lsn, abort.abort_time) {
                buffer.put_u64(lsn.0);
                buffer.put_i64(time.0);
            }
        }
        LogicalMessage::BeginPrepare(begin) => {
            buffer.put_u64(begin.prepare_lsn.0);
            buffer.put_u64(begin.end_lsn.0);
            buffer.put_i64(begin.prepare_time.0);
            buffer.put_u32(begin.xid);
            put_cstr(&mut buffer, &begin.gid);
        }
        LogicalMessage::Prepare(prepare) | LogicalMessage::StreamPrepare(prepare) => {
            put_prepare(&mut buffer, prepare)
        }
        LogicalMessage::CommitPrepared(commit) => {
            buffer.put_u8(commit.flags);
            buffer.put_u64(commit.commit_lsn.0);
            buffer.put_u64(commit.end_lsn.0);
            buffer.put_i64(commit.commit_time.0);
            buffer.put_u32(commit.xid);
            put_cstr(&mut buffer, &commit.gid);
        }
        LogicalMessage::RollbackPrepared(rollback) => {
            buffer.put_u8(rollback.flags);
            buffer.put_u64(rollback.prepare_end_lsn.0);
            buffer.put_u64(rollback.rollback_end_lsn.0);
            buffer.put_i64(rollback.prepare_time.0);
            buffer.put_i64(rollback.rollback_time.0);
            buffer.put_u32(rollback.xid);
            put_cstr(&mut buffer, &rollback.gid);
        }
    }
    buffer.freeze()
}

/// The CopyData payload of a replication message.
pub fn replication_message(message: &ReplicationMessage) -> Bytes {
    let mut buffer = BytesMut::new();
    match message {
        ReplicationMessage::XLogData(data) => {
            buffer.put_u8(b'w');
            buffer.put_u64(data.wal_start.0);
            buffer.put_u64(data.wal_end.0);
            buffer.put_i64(data.server_time.0);
            buffer.put_slice(&data.data);
        }
        ReplicationMessage::PrimaryKeepalive(PrimaryKeepalive {
            wal_end,
            server_time,
            reply_requested,
        }) => {
            buffer.put_u8(b'k');
            buffer.put_u64(wal_end.0);
            buffer.put_i64(server_time.0);
            buffer.put_u8(u8::from(*reply_requested));
        }
    }
    buffer.freeze()
}
