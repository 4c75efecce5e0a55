-- An outer join is refused (for now) with the reason, at the query.

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
FROM users u LEFT JOIN countries c ON u.country = c.name
GROUP BY c.region;

-- error: 20:1: Left joins are not supported yet; use an inner JOIN ... ON
