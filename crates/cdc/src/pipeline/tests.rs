//! cdc's replication loop over doubles: a stream played from bytes the pgoutput encoder
//! wrote, and a sink in memory whose events the test acknowledges or fails in any order.
//! No Postgres, no Kafka; the clock is tokio's paused one, so timeouts pass at once.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use tokio::sync::watch;
use walflow_pgoutput::{
    encode, Begin, Column, Commit, Insert, LogicalMessage, Lsn, PgTimestamp, Relation,
    RelationColumn, ReplicaIdentity,
};

use super::session::{stream_changes, RelationCatalog};
use super::*;
use crate::replication::{MemoryReplication, MemoryServer};
use crate::sink::{MemoryKafka, MemorySink};

const USERS: u32 = 16_400;

/// pgoutput's key flags are taken as they are.
struct PgoutputFlags;

impl RelationCatalog for PgoutputFlags {
    async fn complete(&self, _relation: &mut Relation) -> Result<(), CdcError> {
        Ok(())
    }
}

fn options() -> CdcOptions {
    CdcOptions {
        postgres_url: String::new(),
        slot: "walflow".into(),
        publication: "walflow".into(),
        tables: Vec::new(),
        topic_prefix: "walflow".into(),
        tombstones: true,
        status_interval: Duration::from_millis(50),
        receive_timeout: Duration::from_secs(60),
        snapshot: SnapshotMode::Never,
        stop_at: None,
        snapshot_progress: None,
        avro: None,
    }
}

fn users() -> LogicalMessage {
    let column = |name: &str, is_key, type_oid| RelationColumn {
        is_key,
        name: name.into(),
        type_oid,
        type_modifier: -1,
    };
    LogicalMessage::Relation(Relation {
        xid: None,
        oid: USERS,
        namespace: "public".into(),
        name: "users".into(),
        replica_identity: ReplicaIdentity::Default,
        columns: vec![column("id", true, 23), column("email", false, 25)],
    })
}

/// Sends one transaction of inserts committed at `lsn` (its end at `lsn + 8`).
fn transaction(server: &MemoryServer, lsn: u64, ids: std::ops::Range<u64>) -> Lsn {
    server.send_logical(
        Lsn(lsn),
        &LogicalMessage::Begin(Begin {
            final_lsn: Lsn(lsn),
            commit_time: PgTimestamp(0),
            xid: lsn as u32,
        }),
    );
    for id in ids {
        insert(server, lsn, id);
    }
    commit(server, lsn)
}

fn insert(server: &MemoryServer, lsn: u64, id: u64) {
    let row = encode::tuple(&[
        Column::Text(Bytes::from(id.to_string())),
        Column::Text(Bytes::from(format!("user{id}@example.com"))),
    ]);
    server.send_logical(
        Lsn(lsn),
        &LogicalMessage::Insert(Insert {
            xid: None,
            relation_oid: USERS,
            new: row,
        }),
    );
}

fn commit(server: &MemoryServer, lsn: u64) -> Lsn {
    let end_lsn = Lsn(lsn + 8);
    server.send_logical(
        Lsn(lsn),
        &LogicalMessage::Commit(Commit {
            flags: 0,
            commit_lsn: Lsn(lsn),
            end_lsn,
            commit_time: PgTimestamp(0),
        }),
    );
    end_lsn
}

/// Waits, in the paused clock's time, until `done` holds.
async fn until(what: &str, done: impl Fn() -> bool) {
    for _ in 0..100_000 {
        if done() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("gave up waiting until {what}");
}

/// A few status intervals, for the loop to say what it would confirm.
async fn some_ticks() {
    tokio::time::sleep(Duration::from_millis(300)).await;
}

struct Harness {
    stream: MemoryReplication,
    server: MemoryServer,
    sink: MemorySink,
    kafka: MemoryKafka,
    state: StreamState,
    options: CdcOptions,
}

impl Harness {
    fn new() -> Harness {
        let (stream, server) = MemoryReplication::new();
        let (sink, kafka) = MemorySink::new();
        server.send_logical(Lsn(1), &users());
        Harness {
            stream,
            server,
            sink,
            kafka,
            state: StreamState::new("walflow".into(), EventEncoder::Json, TopicNames::default()),
            options: options(),
        }
    }

    /// Runs the loop beside `script`, which gets the server, the sink's Kafka and the stop
    /// switch; returns how the loop ended.
    async fn run<F: Future<Output = ()>>(
        &mut self,
        script: impl FnOnce(MemoryServer, MemoryKafka, Arc<watch::Sender<bool>>) -> F,
    ) -> Result<(), CdcError> {
        // Held here too: a script that never stops the loop does not stop it by ending.
        let (stop_sender, mut stop) = watch::channel(false);
        let stop_sender = Arc::new(stop_sender);
        let script = script(self.server.clone(), self.kafka.clone(), stop_sender.clone());
        let session = stream_changes(
            &mut self.stream,
            &PgoutputFlags,
            &self.options,
            &mut self.sink,
            &mut stop,
            &mut self.state,
        );
        // Said as it happens: a script waiting in vain shows why the loop stopped.
        let session = async {
            let ended = session.await;
            println!("the session ended: {ended:?}");
            ended
        };
        let (ended, ()) = tokio::join!(session, script);
        ended
    }
}

#[tokio::test(start_paused = true)]
async fn acknowledgements_out_of_order_confirm_nothing_past_an_unacknowledged_transaction() {
    let mut harness = Harness::new();
    let ended = harness
        .run(|server, kafka, stop| async move {
            let first = transaction(&server, 100, 1..2);
            let second = transaction(&server, 200, 2..3);
            until("both events are sent", || kafka.pending().len() == 2).await;
            kafka.acknowledge(1);
            some_ticks().await;
            assert!(
                server
                    .statuses()
                    .iter()
                    .all(|update| update.flushed < first),
                "the second transaction is acknowledged, the first is not: nothing may be \
                 confirmed yet, got {:?}",
                server.confirmed()
            );
            kafka.acknowledge(0);
            until("both transactions are confirmed", || {
                server.confirmed() == second
            })
            .await;
            assert!(server
                .statuses()
                .iter()
                .all(|update| update.flushed <= second));
            stop.send(true).unwrap();
        })
        .await;
    ended.unwrap();
    assert_eq!(harness.state.summary.transactions, 2);
    assert_eq!(harness.kafka.acknowledged().len(), 2);
}

#[tokio::test(start_paused = true)]
async fn a_failed_delivery_ends_the_session_and_confirms_only_what_came_before() {
    let mut harness = Harness::new();
    let ended = harness
        .run(|server, kafka, _stop| async move {
            let first = transaction(&server, 100, 1..2);
            transaction(&server, 200, 2..4);
            until("every event is sent", || kafka.pending().len() == 3).await;
            kafka.acknowledge(0);
            until("the first transaction is confirmed", || {
                server.confirmed() == first
            })
            .await;
            kafka.acknowledge(1);
            kafka.fail(0, "Broker: Not enough in-sync replicas");
        })
        .await;
    match ended {
        Err(CdcError::Delivery(failure)) => {
            let message = failure.to_string();
            assert!(message.contains("Not enough in-sync replicas"), "{message}")
        }
        other => panic!("the session must end on the failed delivery, got {other:?}"),
    }
    let confirmed = harness.server.confirmed();
    assert_eq!(
        confirmed,
        Lsn(108),
        "only the first transaction is confirmed"
    );
    assert!(harness
        .server
        .statuses()
        .iter()
        .all(|update| update.flushed <= Lsn(108)));
}

#[tokio::test(start_paused = true)]
async fn a_keepalive_moves_the_position_only_when_everything_sent_is_acknowledged() {
    let mut harness = Harness::new();
    let ended = harness
        .run(|server, kafka, stop| async move {
            transaction(&server, 100, 1..2);
            until("the event is sent", || kafka.pending().len() == 1).await;
            kafka.acknowledge(0);
            until("the transaction is confirmed", || {
                server.confirmed() == Lsn(108)
            })
            .await;
            // Idle and fully acknowledged: WAL of other tables up to the server's end is done.
            server.keepalive(Lsn(500), false);
            until("the idle position is confirmed", || {
                server.confirmed() == Lsn(500)
            })
            .await;
            // A transaction waits for Kafka: a keepalive asking for a reply is answered at
            // once, with the acknowledged position, not the server's.
            transaction(&server, 600, 2..3);
            until("the event is sent", || kafka.pending().len() == 1).await;
            let updates_before = server.statuses().len();
            server.keepalive(Lsn(900), true);
            until("the keepalive is answered", || {
                server.statuses().len() > updates_before
            })
            .await;
            some_ticks().await;
            assert_eq!(server.confirmed(), Lsn(500));
            kafka.acknowledge(0);
            until("the transaction is confirmed", || {
                server.confirmed() == Lsn(608)
            })
            .await;
            stop.send(true).unwrap();
        })
        .await;
    ended.unwrap();
}

#[tokio::test(start_paused = true)]
async fn a_backlogged_sink_stops_the_reading_but_not_the_status_updates() {
    let mut harness = Harness::new();
    harness.kafka.backlog_at(Some(1));
    let ended = harness
        .run(|server, kafka, stop| async move {
            transaction(&server, 100, 1..2);
            transaction(&server, 200, 2..3);
            until("the first event is sent", || kafka.pending().len() == 1).await;
            let updates_before = server.statuses().len();
            some_ticks().await;
            assert_eq!(
                kafka.pending().len(),
                1,
                "nothing more is read while backlogged"
            );
            assert!(
                server.statuses().len() > updates_before,
                "status updates go on, so Postgres does not take the link for dead"
            );
            kafka.acknowledge(0);
            until("the second event is sent", || {
                kafka.acknowledged().len() == 1 && kafka.pending().len() == 1
            })
            .await;
            kafka.acknowledge(0);
            until("both are confirmed", || server.confirmed() == Lsn(208)).await;
            stop.send(true).unwrap();
        })
        .await;
    ended.unwrap();
}

#[tokio::test(start_paused = true)]
async fn silence_longer_than_the_receive_timeout_ends_the_session() {
    let mut harness = Harness::new();
    harness.options.receive_timeout = Duration::from_secs(2);
    let ended = harness
        .run(|server, kafka, _stop| async move {
            transaction(&server, 100, 1..2);
            kafka.acknowledge_at_once();
            until("the transaction is confirmed", || {
                server.confirmed() == Lsn(108)
            })
            .await;
            // The server says nothing more, and the stream stays open.
            tokio::time::sleep(Duration::from_secs(10)).await;
        })
        .await;
    match ended {
        Err(CdcError::Replication(ReplicationError::Io(error))) => {
            assert_eq!(error.kind(), std::io::ErrorKind::TimedOut, "{error}")
        }
        other => panic!("silence must end the session, got {other:?}"),
    }
    assert!(
        harness
            .server
            .statuses()
            .iter()
            .any(|update| update.reply_requested),
        "at half the timeout cdc asks the server for a reply"
    );
}

#[tokio::test(start_paused = true)]
async fn a_session_cut_in_a_transaction_acknowledges_none_of_it() {
    let mut harness = Harness::new();
    let ended = harness
        .run(|server, kafka, _stop| async move {
            transaction(&server, 100, 1..2);
            server.send_logical(
                Lsn(200),
                &LogicalMessage::Begin(Begin {
                    final_lsn: Lsn(200),
                    commit_time: PgTimestamp(0),
                    xid: 200,
                }),
            );
            insert(&server, 200, 2);
            kafka.acknowledge_at_once();
            until("the open transaction's event is sent", || {
                kafka.acknowledged().len() == 2
            })
            .await;
            server.end_stream();
        })
        .await;
    match &ended {
        Err(error @ CdcError::Replication(ReplicationError::Io(io)))
            if io.kind() == std::io::ErrorKind::ConnectionAborted =>
        {
            assert!(is_transient(error), "a lost session is resumed, not fatal")
        }
        other => panic!("a stream the server ended is a lost session, got {other:?}"),
    }
    harness.sink.abandon_open_transaction();
    assert_eq!(harness.sink.acked_lsn(), Lsn(108));
    // The next session sends the cut transaction again, whole; it is acknowledged then.
    harness.state.start_new_session();
    let (stream, server) = MemoryReplication::new();
    harness.stream = stream;
    harness.server = server;
    harness.server.send_logical(Lsn(1), &users());
    let ended = harness
        .run(|server, _kafka, stop| async move {
            let end = transaction(&server, 200, 2..3);
            until("the resent transaction is confirmed", || {
                server.confirmed() == end
            })
            .await;
            stop.send(true).unwrap();
        })
        .await;
    ended.unwrap();
}

/// A million rows in one transaction: confirmed once, after its last event; the ledger
/// counts them, and holds no handle per event.
#[tokio::test(start_paused = true)]
async fn a_transaction_of_a_million_rows_is_confirmed_once_all_are_acknowledged() {
    const ROWS: u64 = 1_000_000;
    let mut harness = Harness::new();
    harness.kafka.keep_events(false);
    let ended = harness
        .run(|server, kafka, stop| async move {
            server.send_logical(
                Lsn(100),
                &LogicalMessage::Begin(Begin {
                    final_lsn: Lsn(100),
                    commit_time: PgTimestamp(0),
                    xid: 100,
                }),
            );
            kafka.acknowledge_at_once();
            // Fed in chunks, so the stream's buffer stays small.
            for chunk in 0..ROWS / 10_000 {
                for id in chunk * 10_000..(chunk + 1) * 10_000 {
                    insert(&server, 100, id);
                }
                until("the chunk is read", || {
                    kafka.acknowledged_count() == (chunk + 1) * 10_000
                })
                .await;
                assert_eq!(
                    server.confirmed(),
                    Lsn(0),
                    "nothing confirmed inside the transaction"
                );
            }
            let end = commit(&server, 100);
            until("the transaction is confirmed", || server.confirmed() == end).await;
            stop.send(true).unwrap();
        })
        .await;
    ended.unwrap();
    assert_eq!(harness.kafka.acknowledged_count(), ROWS);
    assert_eq!(harness.state.summary.events, ROWS);
    assert_eq!(harness.state.summary.transactions, 1);
}
