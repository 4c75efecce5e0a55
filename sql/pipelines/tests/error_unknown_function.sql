-- A function DataFusion does not know.

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
SELECT country, count_users(*)
FROM users
GROUP BY country;

-- error: 17:17: Error during planning: Invalid function 'count_users'.
-- error: Did you mean 'contains'?
