//! The updating inner equi-join against DataFusion: two tables changing in any order, their
//! join key sometimes NULL (it matches nothing), the join written row by row and grouped.

use proptest::prelude::*;

use super::{
    assert_same_table, batch_sizes, crash, replay, replica_identity, step, Edit, Harness, Step,
};
use crate::value::{Row, Value};

const ORDERS_AND_SHIPMENTS: &str = "
    CREATE TABLE orders (id BIGINT, k BIGINT, amount BIGINT, PRIMARY KEY (id))
      WITH (connector = 'kafka', topic = 'walflow.public.orders', format = 'debezium_json');
    CREATE TABLE shipments (id BIGINT, k BIGINT, weight DOUBLE, PRIMARY KEY (id))
      WITH (connector = 'kafka', topic = 'walflow.public.shipments', format = 'debezium_json');
    CREATE TABLE pairs (
        order_id BIGINT, shipment_id BIGINT, k BIGINT, amount BIGINT, weight DOUBLE,
        PRIMARY KEY (order_id, shipment_id)
    ) WITH (connector = 'cassandra', keyspace = 'ks');
    CREATE TABLE pairs_by_key (
        k BIGINT PRIMARY KEY, pairs BIGINT, amount_sum BIGINT, weight_max DOUBLE,
        orders BIGINT, amount_avg DOUBLE
    ) WITH (connector = 'cassandra', keyspace = 'ks');
    INSERT INTO pairs
    SELECT o.id, s.id, o.k, o.amount, s.weight
    FROM orders o JOIN shipments s ON o.k = s.k;
    INSERT INTO pairs_by_key
    SELECT s.k, count(*), sum(o.amount), max(s.weight), count(DISTINCT o.id), avg(o.amount)
    FROM orders o JOIN shipments s ON o.k = s.k
    GROUP BY s.k;";

/// `k` and one value column: few join keys (one NULL), so rows meet many partners.
fn side() -> impl Strategy<Value = Row> {
    let key = prop_oneof![4 => (0i64..3).prop_map(Value::Int64), 1 => Just(Value::Null)];
    let value = prop_oneof![
        4 => (-50i64..50).prop_map(Value::Int64),
        1 => Just(Value::Null),
    ];
    (key, value).prop_map(|(key, value)| vec![key, value])
}

fn history() -> impl Strategy<Value = Vec<Step>> {
    prop::collection::vec(step(2, 6, side()), 0..60).prop_map(|mut steps| {
        // shipments' value column is a DOUBLE.
        for step in &mut steps {
            if let (1, Edit::Put(row)) = (step.source, &mut step.edit) {
                if let Some(Value::Int64(value)) = row.get(1) {
                    row[1] = Value::Float64(*value as f64 / 4.0);
                }
            }
        }
        steps
    })
}

#[test]
fn an_updating_join_equals_datafusion_over_the_final_tables() {
    Harness::new(ORDERS_AND_SHIPMENTS).check(
        (history(), batch_sizes(), replica_identity()),
        |harness, (steps, sizes, identity)| {
            let (events, rows) = replay(harness, &steps, identity);
            let outcome = harness.run_in_batches(&events, &sizes);
            for query in 0..2 {
                let oracle = harness.oracle(&rows, &harness.select(query));
                assert_same_table(harness.sink(query), &outcome.tables[query], oracle)?;
            }
            Ok(())
        },
    );
}

/// A join meets its two sides' changes in another order when a replay cuts them into other
/// batches: after a crash the sinks still hold exactly the final result.
#[test]
fn an_updating_join_equals_datafusion_after_a_crash_and_a_replay() {
    Harness::new(ORDERS_AND_SHIPMENTS).check(
        (history(), crash(), replica_identity()),
        |harness, (steps, crash, identity)| {
            let (events, rows) = replay(harness, &steps, identity);
            let outcome = harness.run_with_crash(&events, &crash);
            for query in 0..2 {
                let oracle = harness.oracle(&rows, &harness.select(query));
                assert_same_table(harness.sink(query), &outcome.tables[query], oracle)?;
            }
            Ok(())
        },
    );
}

const ITEMS_SHARING_A_KEY: &str = "
    CREATE TABLE items (id BIGINT, k BIGINT, v BIGINT, PRIMARY KEY (id))
      WITH (connector = 'kafka', topic = 'walflow.public.items', format = 'debezium_json');
    CREATE TABLE neighbours (a BIGINT, b BIGINT, v BIGINT, PRIMARY KEY (a, b))
      WITH (connector = 'cassandra', keyspace = 'ks');
    INSERT INTO neighbours
    SELECT x.id, y.id, y.v FROM items x JOIN items y ON x.k = y.k;";

/// A join of a table with itself meets both sides' changes in one source's order: replayed
/// after a crash it still ends at the final result.
#[test]
fn a_self_join_equals_datafusion_after_a_crash_and_a_replay() {
    let history = prop::collection::vec(step(1, 6, side()), 0..40);
    Harness::new(ITEMS_SHARING_A_KEY).check(
        (history, crash(), replica_identity()),
        |harness, (steps, crash, identity)| {
            let (events, rows) = replay(harness, &steps, identity);
            let outcome = harness.run_with_crash(&events, &crash);
            let oracle = harness.oracle(&rows, &harness.select(0));
            assert_same_table(harness.sink(0), &outcome.tables[0], oracle)
        },
    );
}
