-- Users per world region: the users stream joined to the countries table on the country's
-- name, then counted. Both sides are updating tables: a user who moves, a country that moves
-- to another region, a country deleted or added, all change the counts exactly as the same
-- query over Postgres would. Users whose country is not in countries are not counted (an
-- inner join).

CREATE TABLE users (
    id             TEXT,
    country        TEXT,
    dob            TIMESTAMP,
    registered_at  TIMESTAMP,
    PRIMARY KEY (id)
) WITH (connector = 'kafka', topic = 'walflow.public.users', format = 'debezium_json');

CREATE TABLE countries (
    name       TEXT,
    region     TEXT,
    continent  TEXT,
    PRIMARY KEY (name)
) WITH (connector = 'kafka', topic = 'walflow.public.countries', format = 'debezium_json');

CREATE TABLE users_by_region (
    region             TEXT PRIMARY KEY,
    continent          TEXT,
    users              BIGINT,
    countries          BIGINT,
    avg_age_at_signup  DOUBLE
) WITH (connector = 'cassandra', keyspace = 'walflow', table = 'users_by_region');

INSERT INTO users_by_region
SELECT
    c.region,
    max(c.continent) AS continent,
    count(*) AS users,
    count(DISTINCT c.name) AS countries,
    avg(date_part('year', u.registered_at) - date_part('year', u.dob)) AS avg_age_at_signup
FROM users u
JOIN countries c ON u.country = c.name
GROUP BY c.region;
