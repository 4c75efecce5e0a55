-- Changes to users per minute of commit time, by operation (c insert, r snapshot read,
-- u update, d delete, t truncate) and country: a tumbling event-time window over the
-- change events themselves (mode = 'changelog'). Events may arrive up to 5 seconds out of
-- order; a minute's row is written as it grows (emit = 'updating'), and an event later than
-- that still updates its minute for an hour (late_events = 'update'), after which it goes
-- to the late-events topic walflow.late.changes_per_minute.

CREATE TABLE user_changes (
    id            TEXT,
    country       TEXT,
    _op           TEXT,
    _commit_time  TIMESTAMP,
    WATERMARK FOR _commit_time AS _commit_time - INTERVAL '5' SECOND
) WITH (connector = 'kafka', topic = 'walflow.public.users', format = 'debezium_json', mode = 'changelog');

CREATE TABLE changes_per_minute (
    minute      TIMESTAMP,
    operation   TEXT,
    country     TEXT,
    changes     BIGINT,
    minute_end  TIMESTAMP,
    PRIMARY KEY (minute, operation, country)
) WITH (connector = 'cassandra', keyspace = 'walflow', table = 'changes_per_minute',
        emit = 'updating', late_events = 'update', allowed_lateness = '1 hour');

INSERT INTO changes_per_minute
SELECT window_start, _op, coalesce(country, '(none)'), count(*), window_end
FROM user_changes
GROUP BY tumble(_commit_time, INTERVAL '1' MINUTE), _op, coalesce(country, '(none)');
