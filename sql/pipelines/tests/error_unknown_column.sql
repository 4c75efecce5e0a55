-- A column the source does not declare: the error points at the name, with the close one.

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

-- error: 17:8: Schema error: No field named contry. Did you mean 'users.country'?
-- error: Valid fields are users.id, users.country, users.age, users.dob.
