-- pgshard catalog, version 4: bucket moves (SPEC §9, §10).
--
-- A move takes a group of buckets from one shard to another. It is recorded here before
-- anything is done, and each step is recorded before the next, so that a shardd
-- restarted at any point finishes it (once the owner flipped) or rolls it back (before):
--
--   planned  → frozen   buckets.frozen set, version bumped: routers hold statements for
--                       the buckets (as for a shard failing over)
--            → copying  the source refuses writes to the buckets (a fence row read by a
--                       trigger on each distributed table), every router acknowledged
--                       the freeze or the bound passed, the transactions open at the
--                       fence ended; the rows are copied to the target and deleted on the
--                       source in two prepared transactions (`pgshard_move_<id>_…`)
--            → flipped  the commit point: in one catalog transaction the buckets get the
--                       target as owner, are unfrozen, the version is bumped (NOTIFY)
--            → cleaning the prepared transactions are committed; once every router
--                       routes with the flip's version the source's fence is lifted
--            → done
--   planned | frozen | copying → aborted (prepared transactions rolled back, fence lifted,
--                                         buckets unfrozen)
--
-- Moves are not topology by themselves: only freezing, flipping and aborting bump the
-- version (they change what routers do).

ALTER TABLE pgshard.buckets ADD COLUMN frozen boolean NOT NULL DEFAULT false;

CREATE TABLE pgshard.moves (
    id          bigserial PRIMARY KEY,
    operation   text NOT NULL,
    source      integer NOT NULL REFERENCES pgshard.shards (id),
    target      integer NOT NULL REFERENCES pgshard.shards (id),
    buckets     integer[] NOT NULL CHECK (cardinality(buckets) > 0),
    state       text NOT NULL DEFAULT 'planned'
        CHECK (state IN ('planned', 'frozen', 'copying', 'flipped', 'cleaning', 'done',
                         'aborted')),
    rows_moved  bigint NOT NULL DEFAULT 0,
    flip_version bigint,
    frozen_at   timestamptz,
    freeze_ms   bigint,
    error       text,
    created_at  timestamptz NOT NULL DEFAULT now(),
    updated_at  timestamptz NOT NULL DEFAULT now(),
    CHECK (source <> target)
);

-- At most one unfinished move per bucket.
CREATE INDEX moves_unfinished ON pgshard.moves (id)
    WHERE state NOT IN ('done', 'aborted');
