-- A GROUP BY column the source does not declare: DataFusion gives no place, walflow finds the name.

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
GROUP BY contry;

-- error: 19:10: Schema error: No field named contry. Did you mean 'users.country'?
-- error: Valid fields are users.country, "count(*)", users.id, users.country, users.age, users.dob.
