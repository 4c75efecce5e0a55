-- A source option walflow does not know is refused, not ignored.

CREATE TABLE users (
    id             TEXT,
    country        TEXT,
    age            INT,
    dob            TIMESTAMP,
    PRIMARY KEY (id)
) WITH (connector = 'kafka', topic = 'walflow.public.users', format = 'debezium_json', fromat = 'x');

CREATE TABLE users_by_country (
    country  TEXT PRIMARY KEY,
    users    BIGINT
) WITH (connector = 'cassandra', keyspace = 'walflow', table = 'users_by_country');

INSERT INTO users_by_country
SELECT country, count(*)
FROM users
GROUP BY country;

-- error: 9:88: table users: unknown option fromat; this connector takes connector, topic, format, mode, watermark_idle_timeout
