-- A column neither grouped nor aggregated.

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
SELECT country, age
FROM users
GROUP BY country;

-- error: 17:17: Error during planning: Column in SELECT must be in GROUP BY or an aggregate function: While expanding wildcard, column "users.age" must appear in the GROUP BY clause or must be part of an aggregate function, currently only "users.country" appears in the SELECT clause satisfies this requirement; Either add 'users.age' to GROUP BY clause, or use an aggregate function like ANY_VALUE(users.age)
