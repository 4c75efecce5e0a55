//! Tumbling event-time windows over a changelog source against DataFusion. The watermark
//! makes a clean oracle: it is the newest commit time minus the declared delay, an event is
//! late when its window ended at or before the watermark it arrived under, and a window is
//! closed once the watermark reaches its end. So the sink must hold DataFusion's
//! `GROUP BY date_bin(...)` over the events that were not late: the closed windows with
//! `emit = 'on_close'`, every window with `'updating'`; and exactly the late events must
//! have gone to the late-events topic.

use proptest::prelude::*;

use super::{assert_same_table, batch_sizes, crash, Crash, Event, Harness, EPOCH_MS};
use crate::value::{Row, Value};

const WINDOW_US: i64 = 60_000_000;
const DELAY_US: i64 = 10_000_000;

fn changes_per_minute(sink_options: &str) -> String {
    format!(
        "CREATE TABLE changes (id BIGINT, v BIGINT, _op TEXT, _commit_time TIMESTAMP,
           WATERMARK FOR _commit_time AS _commit_time - INTERVAL '10' SECOND)
           WITH (connector = 'kafka', topic = 'walflow.public.items', mode = 'changelog');
         CREATE TABLE per_minute (
             minute TIMESTAMP, operation TEXT, changes BIGINT, v_sum BIGINT, v_max BIGINT,
             PRIMARY KEY (minute, operation)
         ) WITH (connector = 'cassandra', keyspace = 'ks'{sink_options});
         INSERT INTO per_minute
         SELECT window_start, _op, count(*), sum(v), max(v) FROM changes
         GROUP BY tumble(_commit_time, INTERVAL '1' MINUTE), _op;"
    )
}

const ORACLE: &str = "
    SELECT date_bin(INTERVAL '1 minute', _commit_time) AS minute, _op, count(*), sum(v), max(v)
    FROM changes
    GROUP BY date_bin(INTERVAL '1 minute', _commit_time), _op";

/// One change event: its op, the row's id and value, and how far its commit time lies from
/// the newest so far (mostly ahead; sometimes far enough behind to be late).
#[derive(Clone)]
struct Change {
    op: &'static str,
    id: i64,
    v: Option<i64>,
    offset_ms: i64,
}

/// One line per change in a counterexample: `u id 3 v 7 at newest -12000 ms`.
impl std::fmt::Debug for Change {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let v = self.v.map_or("NULL".to_owned(), |v| v.to_string());
        write!(
            f,
            "{} id {} v {v} at newest {:+} ms",
            self.op, self.id, self.offset_ms
        )
    }
}

/// Changes whose commit times lie from `earliest_offset_ms` behind the newest so far to
/// 25 s ahead of it.
fn history(earliest_offset_ms: i64) -> impl Strategy<Value = Vec<Change>> {
    let change = (
        prop::sample::select(vec!["c", "u", "d"]),
        0i64..5,
        prop::option::weighted(0.8, -20i64..20),
        // Whole 5 s steps put events and the watermark exactly on window boundaries.
        prop_oneof![
            earliest_offset_ms..25_000,
            (earliest_offset_ms.div_euclid(5_000)..5).prop_map(|steps| steps * 5_000),
        ],
    )
        .prop_map(|(op, id, v, offset_ms)| Change {
            op,
            id,
            v,
            offset_ms,
        });
    prop::collection::vec(change, 0..60)
}

/// What the sink must hold, by the rules in the module's docs: the events, the rows of those
/// that were not late, the late ones' count and the final watermark.
struct Expected {
    events: Vec<Event>,
    on_time: Vec<Row>,
    late: usize,
    watermark_us: Option<i64>,
}

fn expected(changes: &[Change]) -> Expected {
    let mut expected = Expected {
        events: Vec::new(),
        on_time: Vec::new(),
        late: 0,
        watermark_us: None,
    };
    let mut newest_ms = EPOCH_MS;
    for change in changes {
        let time_ms = newest_ms + change.offset_ms;
        let time_us = time_ms * 1000;
        let image = serde_json::json!({"id": change.id, "v": change.v});
        let (before, after) = if change.op == "d" {
            (image, serde_json::Value::Null)
        } else {
            (serde_json::Value::Null, image)
        };
        expected.events.push(Event {
            source: 0,
            envelope: serde_json::json!({
                "op": change.op, "before": before, "after": after,
                "source": {"ts_ms": time_ms},
            }),
        });
        let window_end_us = time_us.div_euclid(WINDOW_US) * WINDOW_US + WINDOW_US;
        if expected
            .watermark_us
            .is_some_and(|watermark| window_end_us <= watermark)
        {
            expected.late += 1;
        } else {
            expected.on_time.push(vec![
                Value::Int64(change.id),
                change.v.map_or(Value::Null, Value::Int64),
                Value::Text(change.op.to_owned()),
                Value::Timestamp(time_us),
            ]);
        }
        newest_ms = newest_ms.max(time_ms);
        let watermark = newest_ms * 1000 - DELAY_US;
        expected.watermark_us = Some(
            expected
                .watermark_us
                .map_or(watermark, |w| w.max(watermark)),
        );
    }
    expected
}

/// How a test runs the events: in batches, or killed and resumed.
enum Cut {
    Batches(Vec<usize>),
    Crash(Crash),
}

/// The sink equals `oracle` (its first column a window's start) over the events on time;
/// with `closed_windows_of_us`, only the windows of that size the watermark has closed.
fn windows_equal_datafusion(
    harness: &Harness,
    changes: &[Change],
    cut: &Cut,
    oracle: &str,
    closed_windows_of_us: Option<i64>,
) -> Result<(), TestCaseError> {
    let expected = expected(changes);
    let outcome = match cut {
        Cut::Batches(sizes) => {
            let outcome = harness.run_in_batches(&expected.events, sizes);
            prop_assert_eq!(outcome.late, expected.late, "events sent to the late topic");
            outcome
        }
        // The late events the killed run sent are not counted again.
        Cut::Crash(crash) => harness.run_with_crash(&expected.events, crash),
    };
    let mut oracle = harness.oracle(&[expected.on_time], oracle);
    if let Some(size_us) = closed_windows_of_us {
        oracle.retain(|row| match (&row[0], expected.watermark_us) {
            (Value::Timestamp(start), Some(watermark)) => start + size_us <= watermark,
            _ => false,
        });
    }
    assert_same_table(harness.sink(0), &outcome.tables[0], oracle)
}

#[test]
fn closed_tumbling_windows_equal_datafusion_over_the_events_on_time() {
    Harness::new(&changes_per_minute("")).check(
        (history(-45_000), batch_sizes()),
        |harness, (changes, sizes)| {
            windows_equal_datafusion(
                harness,
                &changes,
                &Cut::Batches(sizes),
                ORACLE,
                Some(WINDOW_US),
            )
        },
    );
}

#[test]
fn updating_tumbling_windows_equal_datafusion_over_the_events_on_time() {
    Harness::new(&changes_per_minute(", emit = 'updating'")).check(
        (history(-45_000), batch_sizes()),
        |harness, (changes, sizes)| {
            windows_equal_datafusion(harness, &changes, &Cut::Batches(sizes), ORACLE, None)
        },
    );
}

#[test]
fn closed_and_updating_windows_equal_datafusion_after_a_crash_and_a_replay() {
    for emit in ["", ", emit = 'updating'"] {
        let closed = emit.is_empty().then_some(WINDOW_US);
        Harness::new(&changes_per_minute(emit)).check(
            (history(-45_000), crash()),
            |harness, (changes, crash)| {
                windows_equal_datafusion(harness, &changes, &Cut::Crash(crash), ORACLE, closed)
            },
        );
    }
}

/// Hopping windows of 3 minutes every minute: DataFusion gives each event its three windows
/// by `date_bin` and its two predecessors. No event is late here (none lies further behind
/// the newest than the watermark's delay), so lateness stays the tumbling tests' matter.
const HOP_SQL: &str = "
    CREATE TABLE changes (id BIGINT, v BIGINT, _op TEXT, _commit_time TIMESTAMP,
      WATERMARK FOR _commit_time AS _commit_time - INTERVAL '10' SECOND)
      WITH (connector = 'kafka', topic = 'walflow.public.items', mode = 'changelog');
    CREATE TABLE per_3_minutes (
        window_start TIMESTAMP PRIMARY KEY, changes BIGINT, v_sum BIGINT, window_end TIMESTAMP
    ) WITH (connector = 'cassandra', keyspace = 'ks');
    INSERT INTO per_3_minutes
    SELECT window_start, count(*), sum(v), window_end FROM changes
    GROUP BY hop(_commit_time, INTERVAL '1' MINUTE, INTERVAL '3' MINUTE);";

const HOP_ORACLE: &str = "
    SELECT window_start, count(*), sum(v), window_start + INTERVAL '3 minutes'
    FROM (
        SELECT date_bin(INTERVAL '1 minute', _commit_time) AS window_start, v FROM changes
        UNION ALL
        SELECT date_bin(INTERVAL '1 minute', _commit_time) - INTERVAL '1 minute', v FROM changes
        UNION ALL
        SELECT date_bin(INTERVAL '1 minute', _commit_time) - INTERVAL '2 minutes', v FROM changes
    ) AS windows
    GROUP BY window_start";

#[test]
fn closed_hopping_windows_equal_datafusion_over_the_events() {
    Harness::new(HOP_SQL).check(
        (history(-DELAY_US / 1000), batch_sizes()),
        |harness, (changes, sizes)| {
            windows_equal_datafusion(
                harness,
                &changes,
                &Cut::Batches(sizes),
                HOP_ORACLE,
                Some(3 * WINDOW_US),
            )
        },
    );
}
