-- Editing sessions per user: a user's updates less than 5 minutes apart (by commit time)
-- form one session, from its first update to its last plus 5 minutes. An update that falls
-- between two sessions joins them: the two rows go and the merged one is written. Rows are
-- written as sessions grow (emit = 'updating'); an update arriving after its session was
-- closed by the watermark (newest commit time seen minus 5 seconds) goes to the late-events
-- topic walflow.late.editing_sessions.

CREATE TABLE user_changes (
    id            TEXT,
    _op           TEXT,
    _commit_time  TIMESTAMP,
    WATERMARK FOR _commit_time AS _commit_time - INTERVAL '5' SECOND
) WITH (connector = 'kafka', topic = 'walflow.public.users', format = 'debezium_json', mode = 'changelog');

CREATE TABLE editing_sessions (
    id             TEXT,
    session_start  TIMESTAMP,
    session_end    TIMESTAMP,
    updates        BIGINT,
    PRIMARY KEY (id, session_start)
) WITH (connector = 'cassandra', keyspace = 'walflow', table = 'editing_sessions',
        emit = 'updating');

INSERT INTO editing_sessions
SELECT id, window_start, window_end, count(*)
FROM user_changes
WHERE _op = 'u'
GROUP BY session(_commit_time, INTERVAL '5' MINUTE), id;
