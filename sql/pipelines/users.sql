-- The users table of Postgres, mirrored into Cassandra as walflow.created_users: the old
-- stack's `created_users`, with updates and deletes applied. Runs with `walflow process`.

CREATE TABLE users (
    id              TEXT,
    gender          TEXT,
    title           TEXT,
    first_name      TEXT,
    last_name       TEXT,
    street_number   INT,
    street_name     TEXT,
    city            TEXT,
    state           TEXT,
    country         TEXT,
    postcode        TEXT,
    email           TEXT,
    username        TEXT,
    dob             TIMESTAMP,
    registered_at   TIMESTAMP,
    phone           TEXT,
    picture_medium  TEXT,
    nat             TEXT,
    updated_at      TIMESTAMP,
    PRIMARY KEY (id)
) WITH (connector = 'kafka', topic = 'walflow.public.users', format = 'debezium_json');

CREATE TABLE created_users (
    id              TEXT PRIMARY KEY,
    first_name      TEXT,
    last_name       TEXT,
    gender          TEXT,
    address         TEXT,
    postcode        TEXT,
    email           TEXT,
    username        TEXT,
    dob             TIMESTAMP,
    registered_at   TIMESTAMP,
    phone           TEXT,
    picture         TEXT,
    country         TEXT,
    updated_at      TIMESTAMP
) WITH (connector = 'cassandra', keyspace = 'walflow', table = 'created_users');

INSERT INTO created_users
SELECT
    id,
    first_name,
    last_name,
    gender,
    concat_ws(' ', CAST(street_number AS TEXT), street_name, city, state, country) AS address,
    postcode,
    email,
    username,
    dob,
    registered_at,
    phone,
    picture_medium AS picture,
    country,
    updated_at
FROM users;
