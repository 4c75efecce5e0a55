-- now() changes without any change event: no stream can keep a result that uses it.

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
WHERE dob < now()
GROUP BY country;

-- error: 16:1: CAST(users.dob AS Timestamp(ns, "UTC")) < CAST(now() AS Timestamp(ns, "UTC")) changes from one evaluation to the next (like now() or random()): a retraction would not remove what was added; use columns of the row instead
