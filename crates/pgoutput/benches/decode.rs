//! Messages/s of the decoder alone: a stream of XLogData frames holding Begin, inserts of a
//! 25-column users row, and Commit, as `walflow cdc` receives them.
//!   cargo bench -p walflow-pgoutput

use bytes::Bytes;
use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use walflow_pgoutput::encode;
use walflow_pgoutput::*;

const INSERTS_PER_TRANSACTION: usize = 100;

fn frames() -> Vec<Bytes> {
    let row: Vec<Column> = (0..25)
        .map(|index| {
            Column::Text(Bytes::from(format!(
                "value of column {index} for a user row"
            )))
        })
        .collect();
    let mut messages = vec![LogicalMessage::Begin(Begin {
        final_lsn: Lsn(1000),
        commit_time: PgTimestamp(1),
        xid: 7,
    })];
    for _ in 0..INSERTS_PER_TRANSACTION {
        messages.push(LogicalMessage::Insert(Insert {
            xid: None,
            relation_oid: 16384,
            new: encode::tuple(&row),
        }));
    }
    messages.push(LogicalMessage::Commit(Commit {
        flags: 0,
        commit_lsn: Lsn(1000),
        end_lsn: Lsn(1100),
        commit_time: PgTimestamp(1),
    }));
    messages
        .iter()
        .map(|message| {
            encode::replication_message(&ReplicationMessage::XLogData(XLogData {
                wal_start: Lsn(1),
                wal_end: Lsn(2),
                server_time: PgTimestamp(3),
                data: encode::logical_message(message),
            }))
        })
        .collect()
}

fn decode(criterion: &mut Criterion) {
    let frames = frames();
    let mut group = criterion.benchmark_group("pgoutput");
    group.throughput(Throughput::Elements(frames.len() as u64));
    group.bench_function("decode frames and walk every column", |bencher| {
        bencher.iter(|| {
            let mut decoder = LogicalDecoder::new();
            let mut text_bytes = 0usize;
            for frame in &frames {
                let ReplicationMessage::XLogData(data) =
                    ReplicationMessage::parse(frame.clone()).unwrap()
                else {
                    continue;
                };
                if let LogicalMessage::Insert(insert) = decoder.decode(data.data).unwrap() {
                    for column in &insert.new {
                        if let Column::Text(value) = column {
                            text_bytes += value.len();
                        }
                    }
                }
            }
            text_bytes
        })
    });
    group.finish();
}

criterion_group!(benches, decode);
criterion_main!(benches);
