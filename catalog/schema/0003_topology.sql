-- pgshard catalog, version 3: the topology as intent, with terms (SPEC §8, §10).
--
-- Each shard's primary is the node with role 'primary' (at most one per shard, enforced
-- below); `term` grows at every change of primary. A failover in progress is recorded
-- on the shard (`status = 'failing_over'`, the node it replaces and, once chosen, the
-- replica being promoted), so a shardd restarted at any step resumes it rather than
-- starting another, and routers hold statements for the shard meanwhile.
--
-- Observed health (what probes see every second) lives in pgshard.node_health, apart
-- from the topology: writing it never bumps the version, so a flapping probe does not
-- make every router reload the catalog.

ALTER TABLE pgshard.shards
    ADD COLUMN term bigint NOT NULL DEFAULT 1 CHECK (term >= 1),
    ADD COLUMN status text NOT NULL DEFAULT 'ok'
        CHECK (status IN ('ok', 'failing_over', 'degraded', 'refused')),
    ADD COLUMN status_reason text,
    ADD COLUMN failover_paused boolean NOT NULL DEFAULT false,
    ADD COLUMN failover_from integer REFERENCES pgshard.nodes (id),
    ADD COLUMN failover_to integer REFERENCES pgshard.nodes (id),
    ADD COLUMN failover_kind text CHECK (failover_kind IN ('failover', 'switchover')),
    ADD COLUMN failover_started_at timestamptz,
    ADD COLUMN last_failover_at timestamptz,
    ADD COLUMN last_failover_ms bigint,
    ADD COLUMN failovers bigint NOT NULL DEFAULT 0,
    ADD CHECK ((status = 'failing_over') = (failover_from IS NOT NULL));

ALTER TABLE pgshard.nodes DROP CONSTRAINT nodes_state_check;
ALTER TABLE pgshard.nodes ADD CONSTRAINT nodes_state_check
    CHECK (state IN ('pending', 'healthy', 'down', 'stopped', 'fenced', 'rebuilding'));

-- Never two primaries in the catalog for one shard.
CREATE UNIQUE INDEX nodes_one_primary_per_shard ON pgshard.nodes (shard_id)
    WHERE role = 'primary';

CREATE TABLE pgshard.node_health (
    node_id    integer PRIMARY KEY REFERENCES pgshard.nodes (id) ON DELETE CASCADE,
    up         boolean NOT NULL,
    failures   integer NOT NULL DEFAULT 0,
    lag_bytes  bigint,
    last_error text,
    probed_at  timestamptz NOT NULL DEFAULT now()
);

-- Probes: observed health only, never a version bump.
CREATE OR REPLACE FUNCTION pgshard.record_probe(p_node integer, p_state text, p_lag bigint)
RETURNS bigint
LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO pgshard.node_health (node_id, up, lag_bytes, probed_at)
    VALUES (p_node, p_state = 'healthy', p_lag, now())
    ON CONFLICT (node_id) DO UPDATE
        SET up = EXCLUDED.up, lag_bytes = EXCLUDED.lag_bytes, probed_at = now();
    RETURN (SELECT version FROM pgshard.meta);
END
$$;

-- Routers say which catalog version they route with (their follower writes it after
-- every reload and on every poll): a planned switchover waits until every live router
-- has seen the shard turn `failing_over` — and so holds new statements for it — before
-- it drains and stops the old primary.
CREATE TABLE pgshard.routers (
    id      text PRIMARY KEY,
    version bigint NOT NULL,
    seen_at timestamptz NOT NULL DEFAULT now()
);
