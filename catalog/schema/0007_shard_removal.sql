-- pgshard catalog, version 7: shards removed by `remove-shard` (SPEC §9).
--
-- `remove-shard N` marks the shard `removing` and drains its buckets; once it owns no
-- bucket and no unfinished move names it, shardd decommissions it: its nodes leave the
-- catalog (and are stopped, their data removed) and the shard is kept as `removed`, so
-- that the moves that name it keep their history. Routers never see removed shards.

ALTER TABLE pgshard.shards DROP CONSTRAINT shards_state_check;
ALTER TABLE pgshard.shards ADD CONSTRAINT shards_state_check
    CHECK (state IN ('active', 'provisioning', 'draining', 'removing', 'removed'));
