//! The changelog aggregate (and its retractable accumulators) against DataFusion: every
//! aggregate walflow keeps, over integers, floats and NULLs, grouped by a key that may be
//! NULL (those rows Cassandra cannot store) and whose groups empty and come back, and
//! without GROUP BY (its one row always there). Also a query without state (WHERE and a
//! computed column) over the same changelogs.

use proptest::prelude::*;

use super::{
    assert_same_table, batch_sizes, crash, replay, replica_identity, step, Crash, Edit, Harness,
    ReplicaIdentity, Step,
};
use crate::value::{Row, Value};

const ITEMS_BY_GROUP: &str = "
    CREATE TABLE items (id BIGINT, grp TEXT, n BIGINT, x DOUBLE, PRIMARY KEY (id))
      WITH (connector = 'kafka', topic = 'walflow.public.items', format = 'debezium_json');
    CREATE TABLE items_by_group (
        grp TEXT PRIMARY KEY, rows_in BIGINT, n_count BIGINT, n_sum BIGINT, x_sum DOUBLE,
        n_min BIGINT, n_max BIGINT, x_min DOUBLE, x_max DOUBLE, n_avg DOUBLE, x_avg DOUBLE,
        n_distinct BIGINT, x_distinct BIGINT
    ) WITH (connector = 'cassandra', keyspace = 'ks');
    INSERT INTO items_by_group
    SELECT grp, count(*), count(n), sum(n), sum(x), min(n), max(n), min(x), max(x), avg(n),
           avg(x), count(DISTINCT n), count(DISTINCT x)
    FROM items GROUP BY grp;
    CREATE TABLE items_total (
        total TEXT PRIMARY KEY, rows_in BIGINT, n_sum BIGINT, x_max DOUBLE, n_distinct BIGINT
    ) WITH (connector = 'cassandra', keyspace = 'ks');
    INSERT INTO items_total
    SELECT 'all', count(*), sum(n), max(x), count(DISTINCT n) FROM items;";

/// Groups written only while they pass a HAVING, and a region computed from the group (as
/// `users_by_region` does): rows that come and go through a filter above the aggregate.
const HAVING_AND_REGIONS: &str = "
    CREATE TABLE items (id BIGINT, grp TEXT, n BIGINT, x DOUBLE, PRIMARY KEY (id))
      WITH (connector = 'kafka', topic = 'walflow.public.items', format = 'debezium_json');
    CREATE TABLE busy_groups (grp TEXT PRIMARY KEY, rows_in BIGINT, n_sum BIGINT)
      WITH (connector = 'cassandra', keyspace = 'ks');
    INSERT INTO busy_groups
    SELECT grp, count(*), sum(n) FROM items GROUP BY grp HAVING count(*) >= 2;
    CREATE TABLE items_by_region (region TEXT PRIMARY KEY, rows_in BIGINT)
      WITH (connector = 'cassandra', keyspace = 'ks');
    INSERT INTO items_by_region
    SELECT CASE WHEN grp = 'a' THEN 'first' ELSE 'other' END, count(*)
    FROM items GROUP BY CASE WHEN grp = 'a' THEN 'first' ELSE 'other' END;";

/// A query without state: its source is read in images mode (nothing kept, the events' own
/// before images retract), a WHERE that rows move in and out of, a computed column.
const POSITIVE_ITEMS: &str = "
    CREATE TABLE items (id BIGINT, grp TEXT, n BIGINT, x DOUBLE, PRIMARY KEY (id))
      WITH (connector = 'kafka', topic = 'walflow.public.items', format = 'debezium_json');
    CREATE TABLE positive_items (id BIGINT PRIMARY KEY, grp TEXT, n_twice BIGINT, x DOUBLE)
      WITH (connector = 'cassandra', keyspace = 'ks');
    INSERT INTO positive_items
    SELECT id, upper(grp), n * 2, x FROM items WHERE n > 0 OR grp = 'a';";

/// `grp`, `n`, `x` of an item: few groups (one NULL), small integers and two-decimal
/// floats, each NULL now and then.
fn item() -> impl Strategy<Value = Row> {
    let group = prop_oneof![
        4 => prop::sample::select(vec!["a", "b", "c"]).prop_map(|g| Value::Text(g.to_owned())),
        1 => Just(Value::Null),
    ];
    let integer = prop_oneof![4 => (-20i64..20).prop_map(Value::Int64), 1 => Just(Value::Null)];
    let float = prop_oneof![
        4 => (-100_000i64..100_000).prop_map(|cents| Value::Float64(cents as f64 / 100.0)),
        1 => Just(Value::Null),
    ];
    (group, integer, float).prop_map(|(group, integer, float)| vec![group, integer, float])
}

fn history() -> impl Strategy<Value = Vec<Step>> {
    prop::collection::vec(step(1, 8, item()), 0..60)
}

fn sinks_equal_datafusion(
    harness: &Harness,
    (steps, sizes, identity): (Vec<Step>, Vec<usize>, ReplicaIdentity),
) -> Result<(), TestCaseError> {
    let (events, rows) = replay(harness, &steps, identity);
    let outcome = harness.run_in_batches(&events, &sizes);
    for (query, table) in outcome.tables.iter().enumerate() {
        let oracle = harness.oracle(&rows, &harness.select(query));
        assert_same_table(harness.sink(query), table, oracle)?;
    }
    Ok(())
}

/// After a run killed past its checkpoint, the sinks hold exactly the final result: the run
/// that resumes replays what the killed one wrote, cut into other batches.
fn sinks_equal_datafusion_after_a_crash(
    harness: &Harness,
    (steps, crash, identity): (Vec<Step>, Crash, ReplicaIdentity),
) -> Result<(), TestCaseError> {
    let (events, rows) = replay(harness, &steps, identity);
    let outcome = harness.run_with_crash(&events, &crash);
    for (query, table) in outcome.tables.iter().enumerate() {
        let oracle = harness.oracle(&rows, &harness.select(query));
        assert_same_table(harness.sink(query), table, oracle)?;
    }
    Ok(())
}

#[test]
fn grouped_aggregates_equal_datafusion_after_a_crash_and_a_replay() {
    Harness::new(ITEMS_BY_GROUP).check(
        (history(), crash(), replica_identity()),
        sinks_equal_datafusion_after_a_crash,
    );
}

#[test]
fn groups_behind_a_having_equal_datafusion_after_a_crash_and_a_replay() {
    Harness::new(HAVING_AND_REGIONS).check(
        (history(), crash(), replica_identity()),
        sinks_equal_datafusion_after_a_crash,
    );
}

#[test]
fn groups_behind_a_having_equal_datafusion() {
    Harness::new(HAVING_AND_REGIONS).check(
        (history(), batch_sizes(), replica_identity()),
        sinks_equal_datafusion,
    );
}

/// The case the kill -9 trial met once, pinned: the killed run wrote a region (its first
/// item) past its checkpoint; in the replay that item comes and goes within one batch.
#[test]
fn a_region_written_past_the_checkpoint_leaves_in_the_replay() {
    let harness = Harness::new(HAVING_AND_REGIONS);
    let text = |text: &str| Value::Text(text.to_owned());
    let put = |id: i64, group: &str| Step {
        source: 0,
        id,
        edit: Edit::Put(vec![text(group), Value::Int64(1), Value::Null]),
    };
    let steps = vec![put(1, "b"), put(2, "a"), put(2, "b")];
    let crash = Crash {
        first_sizes: vec![1],
        checkpointed: 1,
        written: 2,
        second_sizes: vec![2],
        interleaving: 0,
    };
    let case = (steps, crash, ReplicaIdentity::Full);
    if let Err(failure) = sinks_equal_datafusion_after_a_crash(&harness, case) {
        panic!("{failure}");
    }
}

#[test]
fn grouped_aggregates_over_a_changelog_equal_datafusion_over_the_final_table() {
    Harness::new(ITEMS_BY_GROUP).check(
        (history(), batch_sizes(), replica_identity()),
        sinks_equal_datafusion,
    );
}

#[test]
fn a_filtered_projection_over_a_changelog_equals_datafusion_over_the_final_table() {
    Harness::new(POSITIVE_ITEMS).check(
        (history(), batch_sizes(), Just(ReplicaIdentity::Full)),
        sinks_equal_datafusion,
    );
}

/// Under the default replica identity an update carries no before image: the row an update
/// moves out of the WHERE is retracted from the source's own copy, which a filtering query
/// keeps per key.
#[test]
fn a_filtered_projection_under_the_default_replica_identity_equals_datafusion() {
    Harness::new(POSITIVE_ITEMS).check(
        (history(), batch_sizes(), Just(ReplicaIdentity::Default)),
        sinks_equal_datafusion,
    );
}

/// The cases the property must meet, pinned: no change at all (the global row is there),
/// a group that empties (its row disappears), one that empties and comes back, NULLs in
/// every aggregated column and in the group.
#[test]
fn a_group_that_empties_disappears_and_nulls_are_skipped() {
    let harness = Harness::new(ITEMS_BY_GROUP);
    let text = |text: &str| Value::Text(text.to_owned());
    let upsert = |id: i64, row: Row| Step {
        source: 0,
        id,
        edit: Edit::Put(row),
    };
    let delete = |id: i64| Step {
        source: 0,
        id,
        edit: Edit::Delete,
    };
    let steps = vec![
        upsert(1, vec![text("a"), Value::Int64(3), Value::Float64(1.5)]),
        upsert(2, vec![text("b"), Value::Null, Value::Null]),
        upsert(3, vec![text("b"), Value::Int64(-4), Value::Float64(0.25)]),
        upsert(4, vec![Value::Null, Value::Int64(7), Value::Float64(2.0)]),
        upsert(5, vec![text("c"), Value::Int64(1), Value::Null]),
        upsert(3, vec![text("a"), Value::Int64(-4), Value::Float64(0.25)]),
        delete(2),
        delete(5),
        upsert(5, vec![text("c"), Value::Null, Value::Float64(-3.0)]),
        upsert(6, vec![text("a"), Value::Int64(3), Value::Float64(9.75)]),
        delete(1),
    ];
    let no_changes = (Vec::new(), vec![1], ReplicaIdentity::Full);
    if let Err(failure) = sinks_equal_datafusion(&harness, no_changes) {
        panic!("no changes at all: {failure}");
    }
    for sizes in [vec![1], vec![3], vec![100]] {
        let case = (steps.clone(), sizes, ReplicaIdentity::Full);
        if let Err(failure) = sinks_equal_datafusion(&harness, case) {
            panic!("{failure}");
        }
    }
}
