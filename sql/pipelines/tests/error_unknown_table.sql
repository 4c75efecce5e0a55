-- A table the file does not declare: the error points at it and lists the sources.

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
FROM people
GROUP BY country;

-- error: 18:6: table 'people' not found; the sources this file declares (CREATE TABLE ... WITH (connector = 'kafka')) are: users
