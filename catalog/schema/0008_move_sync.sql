-- pgshard catalog, version 8: a move's rows are synchronised before its freeze (SPEC §9).
--
--   planned → syncing  version bumped: multi-shard statements skip the buckets' rows on
--                      the target (`pgshard_sql::moving`), then a logical-replication
--                      subscription on the target copies them from the source (a
--                      publication with a row filter on the bucket expression) and
--                      follows the writes made meanwhile
--           → frozen   as before; the freeze waits only for the last changes
--
-- `syncing` is before the flip: an interrupted move in it is rolled back (subscription,
-- publication and slot dropped, the target's copy deleted).

ALTER TABLE pgshard.moves DROP CONSTRAINT moves_state_check;
ALTER TABLE pgshard.moves ADD CONSTRAINT moves_state_check
    CHECK (state IN ('planned', 'syncing', 'frozen', 'copying', 'flipped', 'cleaning',
                     'done', 'aborted'));
