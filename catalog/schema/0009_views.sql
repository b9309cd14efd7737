-- Views over distributed tables (issue 15), kept by the catalog so that every router
-- expands them when planning: PostgreSQL's view on one shard would read that shard's
-- rows only. `name` is folded as a table name (`public.` dropped), `columns` the
-- column names given in CREATE VIEW v (a, b) (empty: the query's own), `query` the
-- view's SELECT as the router prints it.
CREATE TABLE pgshard.views (
    name text PRIMARY KEY,
    columns text[] NOT NULL DEFAULT '{}',
    query text NOT NULL
);
