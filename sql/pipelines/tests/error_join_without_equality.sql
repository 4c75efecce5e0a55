-- A join needs an equality between its sides to stream.

CREATE TABLE users (
    id       TEXT,
    country  TEXT,
    PRIMARY KEY (id)
) WITH (connector = 'kafka', topic = 'walflow.public.users', format = 'debezium_json');

CREATE TABLE countries (
    name    TEXT,
    region  TEXT,
    PRIMARY KEY (name)
) WITH (connector = 'kafka', topic = 'walflow.public.countries', format = 'debezium_json');

CREATE TABLE users_by_region (
    region  TEXT PRIMARY KEY,
    users   BIGINT
) WITH (connector = 'cassandra', keyspace = 'walflow', table = 'users_by_region');

INSERT INTO users_by_region
SELECT c.region, count(*)
FROM users u JOIN countries c ON u.country > c.name
GROUP BY c.region;

-- error: 20:1: a join needs an equality between columns of its two sides, like JOIN countries c ON u.country = c.name (cross joins are not supported)
