-- Where a table's declaration comes from: `config` (pgshard.toml, kept by name even
-- when the table is dropped) or `function` (create_distributed_table /
-- create_reference_table through a router: forgotten when the table is dropped, as
-- Citus forgets it). Declarations made before this migration count as `config`.
ALTER TABLE pgshard.tables
    ADD COLUMN origin text NOT NULL DEFAULT 'config' CHECK (origin IN ('config', 'function'));
