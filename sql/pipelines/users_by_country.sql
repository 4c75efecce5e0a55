-- How many users each country has, and their average age when they signed up (years
-- between birth year and signup year), kept exact as users arrive, move and leave.
-- Age "now" is not used: it changes without any change event, so no stream can keep it.

CREATE TABLE users (
    id             TEXT,
    country        TEXT,
    dob            TIMESTAMP,
    registered_at  TIMESTAMP,
    PRIMARY KEY (id)
) WITH (connector = 'kafka', topic = 'walflow.public.users', format = 'debezium_json');

CREATE TABLE users_by_country (
    country            TEXT PRIMARY KEY,
    users              BIGINT,
    avg_age_at_signup  DOUBLE
) WITH (connector = 'cassandra', keyspace = 'walflow', table = 'users_by_country');

INSERT INTO users_by_country
SELECT
    country,
    count(*) AS users,
    avg(date_part('year', registered_at) - date_part('year', dob)) AS avg_age_at_signup
FROM users
WHERE country IS NOT NULL
GROUP BY country;
