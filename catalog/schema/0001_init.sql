-- pgshard catalog, version 1: cluster metadata kept on the catalog node (SPEC §10).
-- Every change goes through pgshard.bump_version(), which increments the version and
-- NOTIFYs routers on channel `pgshard_catalog` with the new version as payload.

CREATE TABLE pgshard.meta (
    singleton   boolean PRIMARY KEY DEFAULT true CHECK (singleton),
    version     bigint NOT NULL,
    buckets     integer NOT NULL CHECK (buckets > 0),
    local_shard integer NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE pgshard.shards (
    id    integer PRIMARY KEY,
    state text NOT NULL CHECK (state IN ('active', 'provisioning', 'draining'))
);

CREATE TABLE pgshard.nodes (
    id        integer PRIMARY KEY,
    shard_id  integer REFERENCES pgshard.shards (id),
    role      text NOT NULL CHECK (role IN ('catalog', 'primary', 'replica')),
    name      text NOT NULL UNIQUE,
    host      text NOT NULL,
    port      integer NOT NULL CHECK (port BETWEEN 1 AND 65535),
    state     text NOT NULL CHECK (state IN ('pending', 'healthy', 'down', 'stopped')),
    lag_bytes bigint,
    probed_at timestamptz,
    CHECK ((role = 'primary') <= (shard_id IS NOT NULL))
);

CREATE TABLE pgshard.buckets (
    bucket   integer PRIMARY KEY CHECK (bucket >= 0),
    shard_id integer NOT NULL REFERENCES pgshard.shards (id)
);

CREATE TABLE pgshard.tables (
    name       text PRIMARY KEY,
    kind       text NOT NULL CHECK (kind IN ('distributed', 'reference')),
    shard_key  text,
    key_type   text CHECK (key_type IN ('int2', 'int4', 'int8', 'text', 'varchar', 'uuid')),
    colocation text,
    CHECK ((kind = 'distributed') = (shard_key IS NOT NULL AND key_type IS NOT NULL))
);

CREATE FUNCTION pgshard.bump_version() RETURNS bigint
LANGUAGE plpgsql AS $$
DECLARE
    v bigint;
BEGIN
    UPDATE pgshard.meta SET version = version + 1 RETURNING version INTO v;
    IF v IS NULL THEN
        RAISE EXCEPTION 'pgshard catalog is not initialised';
    END IF;
    PERFORM pg_notify('pgshard_catalog', v::text);
    RETURN v;
END
$$;

-- Probes run every second; only a change of state is a catalog change.
CREATE FUNCTION pgshard.record_probe(p_node integer, p_state text, p_lag bigint)
RETURNS bigint
LANGUAGE plpgsql AS $$
DECLARE
    old_state text;
BEGIN
    SELECT state INTO old_state FROM pgshard.nodes WHERE id = p_node FOR UPDATE;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'no node with id %', p_node;
    END IF;
    UPDATE pgshard.nodes SET state = p_state, lag_bytes = p_lag, probed_at = now()
     WHERE id = p_node;
    IF old_state IS DISTINCT FROM p_state THEN
        RETURN pgshard.bump_version();
    END IF;
    RETURN (SELECT version FROM pgshard.meta);
END
$$;
