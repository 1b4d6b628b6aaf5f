-- The tables of a PostgreSQL store, layout version 2 (SCHEMA_VERSION in database.py).
-- Every statement is idempotent: run on a layout 1 schema, it adds what version 2 added
-- (the shared_* tables and worker_alive).
-- {s} is the quoted schema name and {schema_text} the same name as a string literal
-- (psycopg's sql.SQL.format); run as one transaction by PostgresDatabase.create_schema().
CREATE SCHEMA IF NOT EXISTS {s};
CREATE TABLE IF NOT EXISTS {s}.schema_version (
    version integer PRIMARY KEY,
    applied_at timestamptz NOT NULL DEFAULT now());
CREATE TABLE IF NOT EXISTS {s}.stages (
    stage text PRIMARY KEY,
    created_at timestamptz NOT NULL DEFAULT now(),
    state jsonb,
    version bigint NOT NULL DEFAULT 0,
    updated_at timestamptz);
CREATE TABLE IF NOT EXISTS {s}.owners (
    stage text PRIMARY KEY,
    owner jsonb NOT NULL,
    backend_pid integer NOT NULL,
    token text NOT NULL,
    locked_at timestamptz NOT NULL DEFAULT now());
CREATE TABLE IF NOT EXISTS {s}.journal (
    stage text NOT NULL,
    gen bigint NOT NULL,
    seq integer NOT NULL,
    payload bytea NOT NULL,
    PRIMARY KEY (stage, gen, seq));
CREATE TABLE IF NOT EXISTS {s}.requests (
    stage text NOT NULL,
    gen bigint NOT NULL,
    pos bigint NOT NULL,
    record bytea NOT NULL,
    PRIMARY KEY (stage, gen, pos));
CREATE TABLE IF NOT EXISTS {s}.snapshots (
    stage text NOT NULL,
    gen bigint NOT NULL,
    data bytea NOT NULL,
    places bigint[] NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (stage, gen));
CREATE TABLE IF NOT EXISTS {s}.corrupt (
    stage text NOT NULL,
    gen bigint NOT NULL,
    seq integer NOT NULL,
    payload bytea NOT NULL,
    set_aside_at timestamptz NOT NULL DEFAULT now());
CREATE OR REPLACE VIEW {s}.stage_status AS
SELECT st.stage,
       st.state ->> 'status' AS status,
       (st.state -> 'progress' ->> 'total_items')::bigint AS total_items,
       (st.state -> 'progress' ->> 'processed_items')::bigint AS processed_items,
       (st.state -> 'progress' ->> 'successful_items')::bigint AS successful_items,
       (st.state -> 'progress' ->> 'failed_items')::bigint AS failed_items,
       (st.state -> 'progress' ->> 'skipped_items')::bigint AS skipped_items,
       (st.state ->> 'pending_units')::bigint AS pending_units,
       (st.state ->> 'throughput')::double precision AS throughput,
       (st.state -> 'progress' ->> 'start_time')::timestamptz AS start_time,
       (st.state -> 'progress' ->> 'estimated_completion_time')::timestamptz AS eta,
       st.state ->> 'error_message' AS error_message,
       st.updated_at,
       st.version,
       CASE WHEN held.pid IS NOT NULL THEN ow.owner ->> 'host' END AS owner_host,
       CASE WHEN held.pid IS NOT NULL THEN (ow.owner ->> 'pid')::integer END AS owner_pid,
       CASE WHEN held.pid IS NOT NULL THEN (ow.owner ->> 'started_at')::timestamptz END
           AS owner_since
FROM {s}.stages st
LEFT JOIN {s}.owners ow ON ow.stage = st.stage
LEFT JOIN LATERAL (
    SELECT l.pid FROM pg_locks l
    WHERE l.locktype = 'advisory' AND l.granted AND l.objsubid = 1 AND l.pid = ow.backend_pid
      AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database())
      AND l.classid = ((hashtextextended({schema_text} || ':' || st.stage, 0) >> 32)
                       & 4294967295)::oid
      AND l.objid = (hashtextextended({schema_text} || ':' || st.stage, 0) & 4294967295)::oid
    LIMIT 1) held ON true;
-- Shared stages (CHECKPOINT_SHARED, scrapy_checkpoint.shared.postgres), added in version 2.
-- A worker's record; heartbeat_at (the server's clock) is its lease, lease_seconds long.
CREATE TABLE IF NOT EXISTS {s}.shared_workers (
    stage text NOT NULL,
    worker text NOT NULL,
    record jsonb NOT NULL,
    token text,
    lease_seconds double precision NOT NULL DEFAULT 60,
    heartbeat_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (stage, worker));
-- Unit code (as a signed bigint) -> the worker that owns it, '=' once done, 'q' queued.
CREATE TABLE IF NOT EXISTS {s}.shared_claims (
    stage text NOT NULL,
    code bigint NOT NULL,
    holder text NOT NULL,
    PRIMARY KEY (stage, code));
-- Units given to an idle worker, not yet journaled by it, in the order given.
CREATE TABLE IF NOT EXISTS {s}.shared_inbox (
    stage text NOT NULL,
    worker text NOT NULL,
    seq bigint GENERATED ALWAYS AS IDENTITY,
    code bigint NOT NULL,
    payload text NOT NULL,
    PRIMARY KEY (stage, worker, seq));
-- scrapy-redis pairing: payloads of queued units until a worker journals them.
CREATE TABLE IF NOT EXISTS {s}.shared_queued (
    stage text NOT NULL,
    code bigint NOT NULL,
    payload text NOT NULL,
    PRIMARY KEY (stage, code));
-- A worker is alive while its lease runs (a heartbeat within lease_seconds), it has not
-- left (finished, paused with work left, or adopted) and its sub-stage's lock is still
-- recorded as its own (a worker adopting it records its own token there first).
CREATE OR REPLACE FUNCTION {s}.worker_alive(p_stage text, p_worker text) RETURNS boolean
LANGUAGE sql STABLE AS $$
    SELECT EXISTS (
        SELECT 1 FROM {s}.shared_workers w
        WHERE w.stage = p_stage AND w.worker = p_worker
          AND w.heartbeat_at > now() - make_interval(secs => w.lease_seconds)
          AND w.record ->> 'status' NOT IN ('finished', 'adopted', 'paused')
          AND EXISTS (SELECT 1 FROM {s}.owners o
                      WHERE o.stage = p_stage || '.w.' || p_worker AND o.token = w.token))
$$;
INSERT INTO {s}.schema_version (version) VALUES (1), (2) ON CONFLICT DO NOTHING;
