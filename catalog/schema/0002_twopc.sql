-- pgshard catalog, version 2: decisions of distributed transactions (SPEC §7).
--
-- One row per two-phase transaction whose outcome has been decided. A coordinator
-- (router) inserts 'committing' once every writer is prepared: that insert is the
-- commit point. shardd's recovery inserts 'aborted' before it rolls back a prepared
-- transaction that has no row, so a slow coordinator's later insert fails on the
-- primary key and the two can never disagree.
--
-- These rows are not topology: writing them never bumps pgshard.meta.version and never
-- NOTIFYs routers.

CREATE TABLE pgshard.transactions (
    gid          text PRIMARY KEY CHECK (octet_length(gid) < 200),
    router       text NOT NULL,
    state        text NOT NULL CHECK (state IN ('committing', 'committed', 'aborted')),
    participants integer[] NOT NULL,
    created_at   timestamptz NOT NULL DEFAULT now(),
    decided_at   timestamptz NOT NULL DEFAULT now()
);
