-- Signups (inserted users) in the last 10 minutes, sliding every minute: a hopping
-- event-time window, so every signup counts in ten windows. Each window's row is written as
-- it grows (emit = 'updating': the current windows show live); a signup that arrives after
-- its window closed (the watermark, newest commit time seen minus 5 seconds, passed its end)
-- goes to the late-events topic walflow.late.signups_last_10_minutes, counted, never
-- silently dropped.

CREATE TABLE user_changes (
    id            TEXT,
    country       TEXT,
    _op           TEXT,
    _commit_time  TIMESTAMP,
    WATERMARK FOR _commit_time AS _commit_time - INTERVAL '5' SECOND
) WITH (connector = 'kafka', topic = 'walflow.public.users', format = 'debezium_json', mode = 'changelog');

CREATE TABLE signups_last_10_minutes (
    window_start  TIMESTAMP PRIMARY KEY,
    window_end    TIMESTAMP,
    signups       BIGINT,
    countries     BIGINT
) WITH (connector = 'cassandra', keyspace = 'walflow', table = 'signups_last_10_minutes',
        emit = 'updating');

INSERT INTO signups_last_10_minutes
SELECT window_start, window_end, count(*), count(DISTINCT country)
FROM user_changes
WHERE _op = 'c'
GROUP BY hop(_commit_time, INTERVAL '1' MINUTE, INTERVAL '10' MINUTE);
