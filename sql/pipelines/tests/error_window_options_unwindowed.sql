-- emit and late_events are for windowed queries only.

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
) WITH (connector = 'cassandra', keyspace = 'walflow', table = 'users_by_country', emit = 'on_close');

INSERT INTO users_by_country
SELECT country, count(*)
FROM users
GROUP BY country;

-- error: 16:1: sink users_by_country sets emit, late_events or allowed_lateness, which only a windowed query uses (GROUP BY tumble(...) or hop(...))
