-- Users as the randomuser API describes them, keyed by the API's login.uuid.
-- postcode is text: the API sends numbers for some nationalities and strings for others.
CREATE TABLE users (
    id                 uuid PRIMARY KEY,
    gender             text,
    title              text,
    first_name         text NOT NULL,
    last_name          text NOT NULL,
    street_number      integer,
    street_name        text,
    city               text,
    state              text,
    country            text,
    postcode           text,
    latitude           double precision,
    longitude          double precision,
    timezone_offset    text,
    timezone_name      text,
    email              text NOT NULL,
    username           text NOT NULL,
    dob                timestamptz,
    registered_at      timestamptz,
    phone              text,
    cell               text,
    picture_large      text,
    picture_medium     text,
    picture_thumbnail  text,
    nat                text,
    ingested_at        timestamptz NOT NULL DEFAULT now(),
    updated_at         timestamptz NOT NULL DEFAULT now()
);

-- FULL: every update and delete carries the whole old row in the WAL, so change events have
-- a complete `before` and streaming aggregates can retract exactly what they counted.
-- The price is larger WAL records for updates and deletes (docs/architecture.md).
ALTER TABLE users REPLICA IDENTITY FULL;

-- Records the API sent that walflow could not accept, with the reason, so nothing is lost
-- silently.
CREATE TABLE ingest_rejects (
    id           bigserial PRIMARY KEY,
    source       text NOT NULL,
    payload      jsonb NOT NULL,
    reason       text NOT NULL,
    rejected_at  timestamptz NOT NULL DEFAULT now()
);
