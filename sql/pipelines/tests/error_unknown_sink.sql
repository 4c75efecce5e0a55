-- INSERT INTO a table the file does not declare as a sink.

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

INSERT INTO users_per_country
SELECT country, count(*)
FROM users
GROUP BY country;

-- error: 16:1: INSERT INTO users_per_country: no sink table of that name is declared above (declare it with CREATE TABLE users_per_country (...) WITH (connector = 'cassandra', ...)); did you mean users_by_country?
