//! Any bytes, as a replication CopyData payload and as a pgoutput message inside and
//! outside a streamed transaction: decoding returns a value or an error, never panics, and
//! every decoded tuple can be walked to its end.
//!   cargo +nightly fuzz run pgoutput_decode

#![no_main]

use bytes::Bytes;
use libfuzzer_sys::fuzz_target;
use walflow_pgoutput::{LogicalMessage, OldTuple, ReplicationMessage, TupleData};

fn walk(tuple: &TupleData) {
    assert!(tuple.iter().count() <= tuple.column_count());
}

fuzz_target!(|data: &[u8]| {
    let bytes = Bytes::copy_from_slice(data);
    let _ = ReplicationMessage::parse(bytes.clone());
    for in_stream in [false, true] {
        if let Ok(message) = LogicalMessage::parse(bytes.clone(), in_stream) {
            match &message {
                LogicalMessage::Insert(insert) => walk(&insert.new),
                LogicalMessage::Update(update) => {
                    walk(&update.new);
                    if let Some(OldTuple::Key(old) | OldTuple::Full(old)) = &update.old {
                        walk(old);
                    }
                }
                LogicalMessage::Delete(delete) => {
                    let (OldTuple::Key(old) | OldTuple::Full(old)) = &delete.old;
                    walk(old);
                }
                _ => {}
            }
        }
    }
});
