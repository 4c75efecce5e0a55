//! Property tests: decoding inverts encoding for every message kind, and no input, however
//! broken, makes the decoder panic.

use bytes::Bytes;
use bytestring::ByteString;
use proptest::prelude::*;
use walflow_pgoutput::encode;
use walflow_pgoutput::*;

fn name() -> impl Strategy<Value = ByteString> {
    "[a-zA-Z_][a-zA-Z0-9_ é]{0,16}".prop_map(ByteString::from)
}

fn lsn() -> impl Strategy<Value = Lsn> {
    any::<u64>().prop_map(Lsn)
}

fn time() -> impl Strategy<Value = PgTimestamp> {
    any::<i64>().prop_map(PgTimestamp)
}

fn column() -> impl Strategy<Value = Column> {
    prop_oneof![
        Just(Column::Null),
        Just(Column::UnchangedToast),
        proptest::collection::vec(any::<u8>(), 0..40)
            .prop_map(|value| Column::Text(Bytes::from(value))),
        proptest::collection::vec(any::<u8>(), 0..40)
            .prop_map(|value| Column::Binary(Bytes::from(value))),
    ]
}

fn tuple() -> impl Strategy<Value = TupleData> {
    proptest::collection::vec(column(), 0..12).prop_map(|columns| encode::tuple(&columns))
}

fn old_tuple() -> impl Strategy<Value = OldTuple> {
    prop_oneof![
        tuple().prop_map(OldTuple::Key),
        tuple().prop_map(OldTuple::Full)
    ]
}

fn replica_identity() -> impl Strategy<Value = ReplicaIdentity> {
    prop_oneof![
        Just(ReplicaIdentity::Default),
        Just(ReplicaIdentity::Nothing),
        Just(ReplicaIdentity::Full),
        Just(ReplicaIdentity::Index),
    ]
}

fn prepare() -> impl Strategy<Value = Prepare> {
    (any::<u8>(), lsn(), lsn(), time(), any::<u32>(), name()).prop_map(
        |(flags, prepare_lsn, end_lsn, prepare_time, xid, gid)| Prepare {
            flags,
            prepare_lsn,
            end_lsn,
            prepare_time,
            xid,
            gid,
        },
    )
}

/// Messages as they appear outside (`in_stream` false) or inside a streamed transaction.
fn message(in_stream: bool) -> impl Strategy<Value = LogicalMessage> {
    let xid = move || any::<u32>().prop_map(move |xid| if in_stream { Some(xid) } else { None });
    prop_oneof![
        (lsn(), time(), any::<u32>()).prop_map(|(final_lsn, commit_time, xid)| {
            LogicalMessage::Begin(Begin {
                final_lsn,
                commit_time,
                xid,
            })
        }),
        (
            xid(),
            any::<bool>(),
            lsn(),
            name(),
            proptest::collection::vec(any::<u8>(), 0..64)
        )
            .prop_map(
                |(xid, transactional, lsn, prefix, content)| LogicalMessage::Message(Message {
                    xid,
                    transactional,
                    lsn,
                    prefix,
                    content: Bytes::from(content)
                })
            ),
        (any::<u8>(), lsn(), lsn(), time()).prop_map(
            |(flags, commit_lsn, end_lsn, commit_time)| LogicalMessage::Commit(Commit {
                flags,
                commit_lsn,
                end_lsn,
                commit_time
            })
        ),
        (lsn(), name())
            .prop_map(|(commit_lsn, name)| LogicalMessage::Origin(Origin { commit_lsn, name })),
        (
            xid(),
            any::<u32>(),
            name(),
            name(),
            replica_identity(),
            proptest::collection::vec((any::<bool>(), name(), any::<u32>(), any::<i32>()), 0..10)
        )
            .prop_map(|(xid, oid, namespace, name, replica_identity, columns)| {
                LogicalMessage::Relation(Relation {
                    xid,
                    oid,
                    namespace,
                    name,
                    replica_identity,
                    columns: columns
                        .into_iter()
                        .map(|(is_key, name, type_oid, type_modifier)| RelationColumn {
                            is_key,
                            name,
                            type_oid,
                            type_modifier,
                        })
                        .collect(),
                })
            }),
        (xid(), any::<u32>(), name(), name()).prop_map(|(xid, oid, namespace, name)| {
            LogicalMessage::Type(TypeMessage {
                xid,
                oid,
                namespace,
                name,
            })
        }),
        (xid(), any::<u32>(), tuple()).prop_map(|(xid, relation_oid, new)| LogicalMessage::Insert(
            Insert {
                xid,
                relation_oid,
                new
            }
        )),
        (
            xid(),
            any::<u32>(),
            proptest::option::of(old_tuple()),
            tuple()
        )
            .prop_map(
                |(xid, relation_oid, old, new)| LogicalMessage::Update(Update {
                    xid,
                    relation_oid,
                    old,
                    new
                })
            ),
        (xid(), any::<u32>(), old_tuple()).prop_map(|(xid, relation_oid, old)| {
            LogicalMessage::Delete(Delete {
                xid,
                relation_oid,
                old,
            })
        }),
        (
            xid(),
            any::<bool>(),
            any::<bool>(),
            proptest::collection::vec(any::<u32>(), 0..8)
        )
            .prop_map(|(xid, cascade, restart_identity, relation_oids)| {
                LogicalMessage::Truncate(Truncate {
                    xid,
                    cascade,
                    restart_identity,
                    relation_oids,
                })
            }),
        (any::<u32>(), any::<bool>()).prop_map(|(xid, first_segment)| LogicalMessage::StreamStart(
            StreamStart { xid, first_segment }
        )),
        Just(LogicalMessage::StreamStop),
        (any::<u32>(), any::<u8>(), lsn(), lsn(), time()).prop_map(
            |(xid, flags, commit_lsn, end_lsn, commit_time)| LogicalMessage::StreamCommit(
                StreamCommit {
                    xid,
                    flags,
                    commit_lsn,
                    end_lsn,
                    commit_time
                }
            )
        ),
        (
            any::<u32>(),
            any::<u32>(),
            proptest::option::of((lsn(), time()))
        )
            .prop_map(
                |(xid, subtransaction_xid, parallel)| LogicalMessage::StreamAbort(StreamAbort {
                    xid,
                    subtransaction_xid,
                    abort_lsn: parallel.map(|(lsn, _)| lsn),
                    abort_time: parallel.map(|(_, time)| time),
                })
            ),
        (lsn(), lsn(), time(), any::<u32>(), name()).prop_map(
            |(prepare_lsn, end_lsn, prepare_time, xid, gid)| LogicalMessage::BeginPrepare(
                BeginPrepare {
                    prepare_lsn,
                    end_lsn,
                    prepare_time,
                    xid,
                    gid
                }
            )
        ),
        prepare().prop_map(LogicalMessage::Prepare),
        prepare().prop_map(LogicalMessage::StreamPrepare),
        (any::<u8>(), lsn(), lsn(), time(), any::<u32>(), name()).prop_map(
            |(flags, commit_lsn, end_lsn, commit_time, xid, gid)| LogicalMessage::CommitPrepared(
                CommitPrepared {
                    flags,
                    commit_lsn,
                    end_lsn,
                    commit_time,
                    xid,
                    gid
                }
            )
        ),
        (
            any::<u8>(),
            lsn(),
            lsn(),
            time(),
            time(),
            any::<u32>(),
            name()
        )
            .prop_map(
                |(
                    flags,
                    prepare_end_lsn,
                    rollback_end_lsn,
                    prepare_time,
                    rollback_time,
                    xid,
                    gid,
                )| LogicalMessage::RollbackPrepared(RollbackPrepared {
                    flags,
                    prepare_end_lsn,
                    rollback_end_lsn,
                    prepare_time,
                    rollback_time,
                    xid,
                    gid
                })
            ),
    ]
}

proptest! {
    #[test]
    fn messages_outside_streams_round_trip(value in message(false)) {
        let bytes = encode::logical_message(&value);
        prop_assert_eq!(LogicalMessage::parse(bytes, false).unwrap(), value);
    }

    #[test]
    fn messages_inside_streams_round_trip(value in message(true)) {
        let bytes = encode::logical_message(&value);
        prop_assert_eq!(LogicalMessage::parse(bytes, true).unwrap(), value);
    }

    #[test]
    fn tuples_iterate_to_the_columns_they_were_built_from(columns in proptest::collection::vec(column(), 0..20)) {
        let tuple = encode::tuple(&columns);
        prop_assert_eq!(tuple.iter().collect::<Vec<_>>(), columns);
    }

    #[test]
    fn every_truncation_of_a_message_is_an_error_with_an_offset_inside_it(value in message(false)) {
        let bytes = encode::logical_message(&value);
        for cut in 0..bytes.len() {
            // A Stream Abort without its optional protocol-4 tail is itself complete.
            if matches!(value, LogicalMessage::StreamAbort(_)) && cut == 9 {
                continue;
            }
            match LogicalMessage::parse(bytes.slice(..cut), false) {
                Ok(decoded) => prop_assert!(false, "cut at {} decoded as {:?}", cut, decoded),
                Err(error) => prop_assert!(error.offset <= cut),
            }
        }
    }

    #[test]
    fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..256), in_stream in any::<bool>()) {
        let _ = LogicalMessage::parse(Bytes::from(bytes.clone()), in_stream);
        let _ = ReplicationMessage::parse(Bytes::from(bytes));
    }

    #[test]
    fn replication_messages_round_trip(wal_start in lsn(), wal_end in lsn(), server_time in time(), data in proptest::collection::vec(any::<u8>(), 0..64), reply in any::<bool>()) {
        for message in [
            ReplicationMessage::XLogData(XLogData { wal_start, wal_end, server_time, data: Bytes::from(data.clone()) }),
            ReplicationMessage::PrimaryKeepalive(PrimaryKeepalive { wal_end, server_time, reply_requested: reply }),
        ] {
            prop_assert_eq!(ReplicationMessage::parse(encode::replication_message(&message)).unwrap(), message);
        }
    }
}

#[test]
fn the_decoder_tracks_streamed_transactions() {
    let mut decoder = LogicalDecoder::new();
    let start = encode::logical_message(&LogicalMessage::StreamStart(StreamStart {
        xid: 7,
        first_segment: true,
    }));
    let insert = encode::logical_message(&LogicalMessage::Insert(Insert {
        xid: Some(7),
        relation_oid: 16384,
        new: encode::tuple(&[Column::Text(Bytes::from_static(b"1"))]),
    }));
    decoder.decode(start).unwrap();
    assert!(decoder.in_stream());
    let LogicalMessage::Insert(decoded) = decoder.decode(insert).unwrap() else {
        panic!("not an insert")
    };
    assert_eq!(decoded.xid, Some(7));
    decoder
        .decode(encode::logical_message(&LogicalMessage::StreamStop))
        .unwrap();
    assert!(!decoder.in_stream());
}

#[test]
fn errors_name_the_tag_and_the_offset() {
    // An insert whose tuple says one text column of 10 bytes but carries 2.
    let mut bytes = vec![b'I'];
    bytes.extend_from_slice(&16384u32.to_be_bytes());
    bytes.push(b'N');
    bytes.extend_from_slice(&1i16.to_be_bytes());
    bytes.push(b't');
    bytes.extend_from_slice(&10i32.to_be_bytes());
    bytes.extend_from_slice(b"ab");
    let error = LogicalMessage::parse(Bytes::from(bytes), false).unwrap_err();
    assert_eq!(error.tag, Some(b'I'));
    assert_eq!(error.offset, 13);
    assert_eq!(
        error.to_string(),
        "message 'I' at byte 13: truncated while reading column value"
    );
}

#[test]
fn unchanged_toast_is_not_null() {
    let tuple = encode::tuple(&[Column::UnchangedToast, Column::Null]);
    assert_eq!(
        tuple.iter().collect::<Vec<_>>(),
        vec![Column::UnchangedToast, Column::Null]
    );
}
