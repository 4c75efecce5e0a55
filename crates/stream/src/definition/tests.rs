use std::path::Path;

use super::*;

const FILE: &str = "\
-- users per country
CREATE TABLE users (
    id TEXT,
    country VARCHAR(40),
    age INT,
    PRIMARY KEY (id)
) WITH (connector = 'kafka', topic = 'walflow.public.users', format = 'debezium_json');

CREATE TABLE by_country (country TEXT PRIMARY KEY, users BIGINT)
  WITH (connector = 'cassandra', keyspace = 'walflow', table = 'users_by_country');

INSERT INTO by_country SELECT country, count(*) FROM users GROUP BY country;
";

fn parse(text: &str) -> Result<PipelineDefinition, DefinitionError> {
    PipelineDefinition::parse(Path::new("sql/pipelines/p.sql"), text)
}

#[test]
fn sources_sinks_and_queries_are_read_with_their_positions() {
    let definition = parse(FILE).unwrap();
    assert_eq!(definition.name, "p");
    let source = &definition.sources[0];
    assert_eq!(source.topic, "walflow.public.users");
    assert_eq!(source.primary_key, vec![0]);
    assert_eq!(source.columns[1].column_type, ColumnType::Text);
    assert_eq!(source.position, Position { line: 2, column: 1 });
    let sink = &definition.sinks[0];
    assert_eq!(
        (sink.keyspace.as_str(), sink.table.as_str()),
        ("walflow", "users_by_country")
    );
    assert_eq!(sink.primary_key, vec![0]);
    assert_eq!(definition.queries[0].sink, "by_country");
    assert_eq!(
        definition.queries[0].position,
        Position {
            line: 12,
            column: 1
        }
    );
}

#[test]
fn sink_names_in_mixed_case_are_the_lower_case_names_cassandra_keeps() {
    let mixed = FILE
        .replace("keyspace = 'walflow'", "keyspace = 'WalFlow'")
        .replace("table = 'users_by_country'", "table = 'Users_By_Country'");
    assert_ne!(mixed, FILE);
    let sink = &parse(&mixed).unwrap().sinks[0];
    assert_eq!(
        (sink.keyspace.as_str(), sink.table.as_str()),
        ("walflow", "users_by_country")
    );
}

#[test]
fn errors_name_file_line_and_column() {
    let broken = FILE.replace("GROUP BY country;", "GROUP BY country FROM;");
    let error = parse(&broken).unwrap_err();
    assert_eq!(error.file, Path::new("sql/pipelines/p.sql"));
    assert_eq!((error.line, error.column), (12, 77), "{error}");
    assert!(
        error.to_string().starts_with("sql/pipelines/p.sql:12:77: "),
        "{error}"
    );

    let bad_type = FILE.replace("age INT", "age INTERVAL");
    let error = parse(&bad_type).unwrap_err();
    assert_eq!((error.line, error.column), (5, 5), "{error}");
    assert!(error.message.contains("type INTERVAL"), "{error}");

    let unknown_sink = FILE.replace("INSERT INTO by_country", "INSERT INTO by_contry");
    let error = parse(&unknown_sink).unwrap_err();
    assert_eq!(error.line, 12);
    assert!(
        error.message.contains("did you mean by_country?"),
        "{error}"
    );

    let no_key = FILE.replace(",\n    PRIMARY KEY (id)", "");
    let error = parse(&no_key).unwrap_err();
    assert_eq!(error.line, 2);
    assert!(error.message.contains("needs a PRIMARY KEY"), "{error}");

    let unknown_option = FILE.replace("format = 'debezium_json'", "fromat = 'debezium_json'");
    assert!(parse(&unknown_option)
        .unwrap_err()
        .message
        .contains("unknown option fromat"));
}
