use std::path::Path;

use super::*;
use crate::definition::{DefinitionError, PipelineDefinition};

fn definition(query: &str) -> PipelineDefinition {
    let text = format!(
        "CREATE TABLE users (id TEXT PRIMARY KEY, country TEXT, age INT, dob TIMESTAMP)
               WITH (connector = 'kafka', topic = 't'); CREATE TABLE countries (name TEXT PRIMARY KEY, region TEXT) WITH (connector = 'kafka', topic = 'c');
             CREATE TABLE out (k TEXT PRIMARY KEY, n BIGINT, a DOUBLE)
               WITH (connector = 'cassandra', keyspace = 'ks');
             {query}"
    );
    PipelineDefinition::parse(Path::new("p.sql"), &text).unwrap()
}

async fn compile_one(query: &str) -> Result<CompiledQuery, DefinitionError> {
    compile(&definition(query))
        .await
        .map(|mut all| all.remove(0))
}

#[tokio::test]
async fn an_aggregate_splits_into_lower_steps_the_aggregate_and_upper_steps() {
    let query = compile_one(
        "INSERT INTO out SELECT country, count(*), avg(age) FROM users \
         WHERE age > 17 GROUP BY country HAVING count(*) > 1",
    )
    .await
    .unwrap();
    assert_eq!(query.sources, vec!["users".to_owned()]);
    assert_eq!(
        query.root.describe(),
        "project(filter(aggregate(filter(scan users))))"
    );
    let Node::Step { input, .. } = &query.root else {
        panic!()
    };
    let Node::Step { input, .. } = input.as_ref() else {
        panic!()
    };
    let Node::Aggregate { plan, state, .. } = input.as_ref() else {
        panic!()
    };
    assert_eq!(*state, 0);
    assert_eq!(plan.group_exprs.len(), 1);
    assert_eq!(plan.calls.len(), 2);
    assert_eq!(plan.calls[0].kind, AggregateKind::Count);
    assert!(plan.calls[0].argument.is_none());
    assert_eq!(plan.calls[1].kind, AggregateKind::Avg);
    assert!(query.is_stateful());
    assert_eq!(query.sink_columns_from_output, vec![0, 1, 2]);
}

#[tokio::test]
async fn what_cannot_stream_is_refused_with_the_reason_and_place() {
    let error = compile_one("INSERT INTO out SELECT id, 1, 2.0 FROM users ORDER BY id")
        .await
        .unwrap_err();
    assert!(error.message.contains("ORDER BY"), "{error}");
    assert_eq!(error.line, 5);

    let error = compile_one("INSERT INTO out SELECT contry, 1, 2.0 FROM users")
        .await
        .unwrap_err();
    assert!(error.message.contains("contry"), "{error}");
    assert_eq!((error.line, error.column), (5, 37), "{error}");

    let error = compile_one("INSERT INTO out SELECT id, 1, 2.0 FROM users WHERE dob < now()")
        .await
        .unwrap_err();
    assert!(error.message.contains("now()"), "{error}");

    let error = compile_one("INSERT INTO out SELECT id, country, 2.0 FROM users")
        .await
        .unwrap_err();
    assert!(error.message.contains("CAST"), "{error}");

    let error = compile_one("INSERT INTO out SELECT id, 1 FROM users")
        .await
        .unwrap_err();
    assert!(error.message.contains("gives 2 columns"), "{error}");
}

#[tokio::test]
async fn a_join_keeps_its_equalities_as_keys_and_the_rest_as_a_filter() {
    let query = compile_one(
        "INSERT INTO out SELECT c.region, count(*), avg(u.age) FROM users u \
         JOIN countries c ON u.country = c.name AND u.age > 17 GROUP BY c.region",
    )
    .await
    .unwrap();
    assert_eq!(
        query.sources,
        vec!["users".to_owned(), "countries".to_owned()]
    );
    assert_eq!((query.aggregates, query.joins), (1, 1));
    let mut joins = Vec::new();
    query.root.visit(&mut |node| {
        if let Node::Join { plan, .. } = node {
            joins.push(plan.left_keys.len());
        }
    });
    assert_eq!(joins, vec![1]);
    assert!(
        query
            .root
            .describe()
            .contains("filter(join(scan users, scan countries))"),
        "{}",
        query.root.describe()
    );
}

#[tokio::test]
async fn joins_that_cannot_stream_yet_are_refused_with_the_reason() {
    let error = compile_one(
        "INSERT INTO out SELECT u.id, 1, 2.0 FROM users u LEFT JOIN countries c \
         ON u.country = c.name",
    )
    .await
    .unwrap_err();
    assert!(
        error.message.contains("Left joins are not supported"),
        "{error}"
    );

    let error = compile_one(
        "INSERT INTO out SELECT u.id, 1, 2.0 FROM users u JOIN countries c ON u.age > 3",
    )
    .await
    .unwrap_err();
    assert!(error.message.contains("needs an equality"), "{error}");
}
