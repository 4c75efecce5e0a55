-- A syntax error: the parser's own message and place.

CREATE TABLE users (
    id             TEXT,
    country        TEXT,
    age            INT,
    dob            TIMESTAMP,
    PRIMARY KEY (id)
) WITH (connector = 'kafka', topic = 'walflow.public.users', format = 'debezium_json');

CREATE TABLE users_by_country (
    country  TEXT PRIMARY KEY,
    users    BIGINT
) WITH (connector = 'cassandra', keyspace = 'walflow', table = 'users_by_country');

INSERT INTO users_by_country
SELECT country, count(*)
FROM users
GROUP BY;

-- error: 19:9: Expected: an expression, found: ;
