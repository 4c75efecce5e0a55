-- A column the source does not declare: the error points at the name, with the close one.
-- error: 3:1: Expected: an SQL statement, found: Valid
Valid fields are users.id, users.country, users.age, users.dob.

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
SELECT contry, count(*)
FROM users
GROUP BY contry;
