#!/usr/bin/env bash
# Load pgbench's tables into a running pgshard cluster declared with bench/pgbench.toml,
# without going through the router (pgbench -i needs COPY and a multi-shard
# transaction through the router, which are not there yet).
#
# Each shard primary gets pgbench's full initial data from `pgbench -i`, then keeps only
# the rows whose bucket it owns: the bucket is computed on the shard with the same
# expression as catalog::hash::bucket_sql_expr (PostgreSQL's hash partitioning of an
# int4 key): accounts by aid, tellers by tid, branches by bid.
#
# usage: bench/load_pgbench.sh DATA_DIR SCALE
set -euo pipefail
cd "$(dirname "$0")/.."
DATA=${1:?data dir}
SCALE=${2:-10}
PGSHARD=${PGSHARD:-./target/release/pgshard}

STATUS=$("$PGSHARD" status --data-dir "$DATA" --json)
port_of() { echo "$STATUS" | python3 -c "import json,sys; print([n['port'] for n in json.load(sys.stdin)['nodes'] if n['name']==sys.argv[1]][0])" "$1"; }
CATALOG=$(port_of catalog)
SHARDS=$(echo "$STATUS" | python3 -c "import json,sys; print(' '.join(sorted({str(n['shard']) for n in json.load(sys.stdin)['nodes'] if n['role']=='primary'})))")
BUCKETS=$(psql -X -qAt -h 127.0.0.1 -p "$CATALOG" -U postgres -d pgshard_catalog -c "SELECT buckets FROM pgshard.meta")
# bucket(aid) = (hashint4extended(aid, HASH_PARTITION_SEED) + 0x49a0f4dd15e5a8e3) mod 2^64 mod buckets
bucket_expr() { echo "((hashint4extended($1, 8816678312871386365)::numeric + 23752253665144318179) % 18446744073709551616 % $BUCKETS)::int4"; }

for s in $SHARDS; do
    port=$(port_of "shard$s-primary")
    owned=$(psql -X -qAt -h 127.0.0.1 -p "$CATALOG" -U postgres -d pgshard_catalog \
        -c "SELECT array_agg(bucket) FROM pgshard.buckets WHERE shard_id = $s")
    pgbench -i -q -s "$SCALE" -h 127.0.0.1 -p "$port" -U postgres postgres 2>&1 | tail -1
    psql -X -q -h 127.0.0.1 -p "$port" -U postgres postgres \
        -c "DELETE FROM pgbench_accounts WHERE NOT ($(bucket_expr aid) = ANY ('$owned'::int4[]))" \
        -c "DELETE FROM pgbench_tellers WHERE NOT ($(bucket_expr tid) = ANY ('$owned'::int4[]))" \
        -c "DELETE FROM pgbench_branches WHERE NOT ($(bucket_expr bid) = ANY ('$owned'::int4[]))" \
        -c "VACUUM ANALYZE pgbench_accounts, pgbench_tellers, pgbench_branches"
    echo "shard $s: $(psql -X -qAt -h 127.0.0.1 -p "$port" -U postgres postgres -c 'SELECT count(*) FROM pgbench_accounts') accounts"
done
