#!/usr/bin/env bash
# pgbench's TPC-B-like script through the pgshard router on 2 shards, against the same
# scale on one PostgreSQL directly and through PgBouncer (transaction mode, pool equal
# to the router's), and through the router on that one PostgreSQL (1 shard: never
# two-phase commit), in one run, interleaved per mode and client count so machine drift
# is shared. Reports TPS, mean latency, failed transactions, the share of router
# transactions that committed with two-phase commit (decision rows inserted on the
# shards plus commit records written to the catalog, from pg_stat_user_tables) and the
# balance check afterwards.
#
# OLD_PGSHARD=<path to another build's pgshard binary> adds a second 2-shard cluster
# run by that build, loaded the same way and run right after the new one in every
# round (old vs new in one time window).
#
# usage: bench/tpcb.sh [seconds per run (60)] [clients list ("8 32")] [scale (10)]
# needs: pgbench, pgbouncer (apt-get install -y pgbouncer), PostgreSQL 15.
set -euo pipefail
cd "$(dirname "$0")/.."
SECS=${1:-60}
CLIENTS=${2:-"8 32"}
SCALE=${3:-10}
MODES=${MODES:-"simple extended prepared"}
# Seconds for the comparison runs (direct, PgBouncer, router on 1 shard); the 2-shard
# router runs always take SECS.
COMPARE_SECS=${COMPARE_SECS:-$SECS}
POOL=8
PGSHARD=${PGSHARD:-./target/release/pgshard}
OLD_PGSHARD=${OLD_PGSHARD:-}

command -v pgbouncer >/dev/null || { echo "install pgbouncer: apt-get install -y pgbouncer" >&2; exit 1; }
[ -n "${PGSHARD_NO_BUILD:-}" ] || cargo build --release --quiet --bins

. bench/lib.sh
WORK=$(mktemp -d /tmp/pgshard-bench.XXXXXX)
chmod 755 "$WORK"
ONE="$WORK/one"     # 1 shard: direct, PgBouncer, router-1
TWO="$WORK/two"     # 2 shards: router-2
OLD="$WORK/old"     # 2 shards, OLD_PGSHARD's build
ROUTER1_PORT=$(free_port)
ROUTER2_PORT=$(free_port)
ROUTER_OLD_PORT=$(free_port)
BOUNCER_PORT=$(free_port)
cleanup() {
    [ -n "${BOUNCER_PID:-}" ] && kill "$BOUNCER_PID" 2>/dev/null || true
    $PGSHARD destroy --data-dir "$ONE" >/dev/null 2>&1 || true
    $PGSHARD destroy --data-dir "$TWO" >/dev/null 2>&1 || true
    [ -n "$OLD_PGSHARD" ] && { $OLD_PGSHARD destroy --data-dir "$OLD" >/dev/null 2>&1 || true; }
    rm -rf "$WORK"
}
trap cleanup EXIT

config() { # shards port
    printf '[cluster]\nshards = %s\nreplicas = 0\n[router]\nlisten = "127.0.0.1:%s"\npool_size = %s\n\n' "$1" "$2" "$POOL"
    grep -v '^#' bench/pgbench.toml
}
config 1 "$ROUTER1_PORT" > "$WORK/one.toml"
config 2 "$ROUTER2_PORT" > "$WORK/two.toml"
$PGSHARD up --data-dir "$ONE" --config "$WORK/one.toml" >/dev/null
$PGSHARD up --data-dir "$TWO" --config "$WORK/two.toml" >/dev/null
if [ -n "$OLD_PGSHARD" ]; then
    config 2 "$ROUTER_OLD_PORT" > "$WORK/old.toml"
    $OLD_PGSHARD up --data-dir "$OLD" --config "$WORK/old.toml" >/dev/null
fi
node_port() { # data-dir node-name
    $PGSHARD status --data-dir "$1" --json |
        python3 -c 'import json,sys; print([n["port"] for n in json.load(sys.stdin)["nodes"] if n["name"]==sys.argv[1]][0])' "$2"
}
PG_PORT=$(node_port "$ONE" shard1-node1)
CATALOG2_PORT=$(node_port "$TWO" catalog-node1)
ROUTER1_PID=$(router_pid "$ONE")
ROUTER2_PID=$(router_pid "$TWO")
[ -n "$OLD_PGSHARD" ] && ROUTER_OLD_PID=$(router_pid "$OLD")

# Loading: the 1-shard PostgreSQL directly; the 2-shard cluster through its router
# (COPY split by key, in one distributed transaction), falling back to loading the
# shards directly by bucket if the router refuses (PGSHARD_LOAD=direct forces that).
pgbench -i -q -s "$SCALE" -h 127.0.0.1 -p "$PG_PORT" -U postgres postgres >/dev/null 2>&1
LOADED="pgbench -i through the router"
if [ "${PGSHARD_LOAD:-router}" != router ] ||
    ! pgbench -i -q -s "$SCALE" -h 127.0.0.1 -p "$ROUTER2_PORT" -U postgres postgres >"$WORK/init.log" 2>&1; then
    LOADED="bench/load_pgbench.sh (shards loaded directly by bucket)"
    PGSHARD=$PGSHARD bench/load_pgbench.sh "$TWO" "$SCALE" >/dev/null
fi
if [ -n "$OLD_PGSHARD" ] &&
    ! pgbench -i -q -s "$SCALE" -h 127.0.0.1 -p "$ROUTER_OLD_PORT" -U postgres postgres >"$WORK/init-old.log" 2>&1; then
    PGSHARD=$OLD_PGSHARD bench/load_pgbench.sh "$OLD" "$SCALE" >/dev/null
fi

# The load, through the router and over the shards directly.
q2() { psql -X -qAt -h 127.0.0.1 -p "$1" -U postgres postgres -c "$2"; }
SHARD_PORTS="$(node_port "$TWO" shard1-node1) $(node_port "$TWO" shard2-node1)"
direct_count=0
for p in $SHARD_PORTS; do direct_count=$((direct_count + $(q2 "$p" 'SELECT count(*) FROM pgbench_accounts'))); done
direct_top=$(for p in $SHARD_PORTS; do q2 "$p" 'SELECT aid FROM pgbench_accounts ORDER BY aid DESC LIMIT 3'; done | sort -rn | head -3 | tr '\n' ' ')
LOAD_CHECK="accounts through the router $(q2 "$ROUTER2_PORT" 'SELECT count(*) FROM pgbench_accounts'), over the shards $direct_count (shard 1: $(q2 "$(node_port "$TWO" shard1-node1)" 'SELECT count(*) FROM pgbench_accounts'), shard 2: $(q2 "$(node_port "$TWO" shard2-node1)" 'SELECT count(*) FROM pgbench_accounts')); sum(abalance) $(q2 "$ROUTER2_PORT" 'SELECT sum(abalance) FROM pgbench_accounts'); top aids through the router: $(q2 "$ROUTER2_PORT" 'SELECT aid FROM pgbench_accounts ORDER BY aid DESC LIMIT 3' | tr '\n' ' ')/ over the shards: $direct_top"

start_pgbouncer "$WORK" "$PG_PORT" "$BOUNCER_PORT" "$POOL" "$ONE/sockets"

# Two-phase commits so far: decision rows inserted on the shards (the decision in the
# first writer's transaction) plus commit records in the catalog (the fallback).
commit_records() {
    local n
    n=$(psql -X -qAt -h 127.0.0.1 -p "$CATALOG2_PORT" -U postgres -d pgshard_catalog \
        -c "SELECT n_tup_ins FROM pg_stat_user_tables WHERE schemaname = 'pgshard' AND relname = 'transactions'")
    for p in $SHARD_PORTS; do
        n=$((n + $(q2 "$p" "SELECT coalesce(sum(n_tup_ins), 0) FROM pg_stat_user_tables WHERE schemaname = 'pgshard_2pc'")))
    done
    echo "$n"
}

run() { # port mode clients pid [seconds] -> "tps lat failed processed cpu_us_per_tx"
    local port=$1 mode=$2 c=$3 pid=$4 secs=${5:-$COMPARE_SECS} before=0 after=0 out
    [ -n "$pid" ] && before=$(cpu_ticks "$pid")
    out=$(pgbench -n -M "$mode" -c "$c" -j 2 -T "$secs" \
        -h 127.0.0.1 -p "$port" -U postgres postgres 2>&1) || true
    [ -n "$pid" ] && after=$(cpu_ticks "$pid")
    local tps lat failed tx
    tps=$(echo "$out" | sed -n 's/^tps = \([0-9.]*\).*/\1/p' | head -1)
    lat=$(echo "$out" | sed -n 's/^latency average = \([0-9.]*\) ms/\1/p')
    tx=$(echo "$out" | sed -n 's/^number of transactions actually processed: \([0-9]*\).*/\1/p')
    failed=$(echo "$out" | sed -n 's/^number of failed transactions: \([0-9]*\).*/\1/p')
    if [ -z "$tps" ] || [ "${tx:-0}" = 0 ] || echo "$out" | grep -q "error:"; then
        echo "$out" | grep "error:" | head -3 >&2
        echo "aborted - - ${tx:-0} -"
        return
    fi
    local cpu="-"
    if [ -n "$pid" ]; then
        cpu=$(python3 -c "print(f'{($after-$before)/$TICKS/$tx*1e6:.0f}')")
    fi
    echo "$tps $lat ${failed:-0} $tx $cpu"
}
ratio() { python3 -c "import sys; a,b=sys.argv[1:]; print(f'{float(a)/float(b):.2f}' if '-' not in (a,b) and 'aborted' not in (a,b) else '-')" "$1" "$2"; }

echo "# pgbench TPC-B-like, scale $SCALE, ${SECS}s per 2-shard router run, ${COMPARE_SECS}s per comparison run, pool $POOL, $(nproc) cores, $(date -u +%F)"
echo "# 2-shard data: $LOADED; $LOAD_CHECK"
echo
echo "# load average at start: $(cut -d' ' -f1-3 /proc/loadavg)${OLD_PGSHARD:+; old build: $OLD_PGSHARD}"
echo
echo "| mode | clients | direct TPS | PgBouncer TPS | router 1 shard TPS | router 2 shards TPS | 2 shards / direct | 2 shards / PgBouncer | lat direct ms | lat PgBouncer ms | lat router-1 ms | lat router-2 ms | failed (router-2) | 2PC share (router-2) | router-2 CPU µs/tx | old router 2 shards TPS | old 2 shards / direct | lat old router-2 ms | failed (old) | load avg |"
echo "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"
for c in $CLIENTS; do
    for mode in $MODES; do
        read -r dt dl _ _ _ <<<"$(run "$PG_PORT" "$mode" "$c" "")"
        read -r bt bl _ _ _ <<<"$(run "$BOUNCER_PORT" "$mode" "$c" "$BOUNCER_PID")"
        read -r r1t r1l _ _ _ <<<"$(run "$ROUTER1_PORT" "$mode" "$c" "$ROUTER1_PID")"
        before=$(commit_records)
        read -r r2t r2l r2f r2n r2c <<<"$(run "$ROUTER2_PORT" "$mode" "$c" "$ROUTER2_PID" "$SECS")"
        after=$(commit_records)
        share=$(python3 -c "import sys; n=int(sys.argv[3]); print(f'{(int(sys.argv[2])-int(sys.argv[1]))/n:.2f}' if n else '-')" "$before" "$after" "$r2n")
        ot=- ol=- of=-
        if [ -n "$OLD_PGSHARD" ]; then
            read -r ot ol of _ _ <<<"$(run "$ROUTER_OLD_PORT" "$mode" "$c" "$ROUTER_OLD_PID" "$SECS")"
        fi
        echo "| $mode | $c | $dt | $bt | $r1t | $r2t | $(ratio "$r2t" "$dt") | $(ratio "$r2t" "$bt") | $dl | $bl | $r1l | $r2l | $r2f | $share | $r2c | $ot | $(ratio "$ot" "$dt") | $ol | $of | $(cut -d' ' -f1 /proc/loadavg) |"
    done
done

# The balances through the 2-shard router: every TPC-B transaction moved the same
# delta on an account, a teller, a branch and into the history.
q() { psql -X -qAt -h 127.0.0.1 -p "$ROUTER2_PORT" -U postgres postgres -c "$1"; }
echo
echo "balances (2 shards, through the router): accounts $(q 'SELECT sum(abalance) FROM pgbench_accounts')," \
    "tellers $(q 'SELECT sum(tbalance) FROM pgbench_tellers')," \
    "branches $(q 'SELECT sum(bbalance) FROM pgbench_branches')," \
    "history $(q 'SELECT sum(delta) FROM pgbench_history')"
for s in 1 2; do
    echo "prepared transactions left on shard $s: $(psql -X -qAt -h 127.0.0.1 -p "$(node_port "$TWO" "shard$s-node1")" -U postgres postgres -c 'SELECT count(*) FROM pg_prepared_xacts')"
done
if [ -n "$OLD_PGSHARD" ]; then
    qo() { psql -X -qAt -h 127.0.0.1 -p "$ROUTER_OLD_PORT" -U postgres postgres -c "$1"; }
    echo "balances (old build): accounts $(qo 'SELECT sum(abalance) FROM pgbench_accounts')," \
        "tellers $(qo 'SELECT sum(tbalance) FROM pgbench_tellers')," \
        "branches $(qo 'SELECT sum(bbalance) FROM pgbench_branches')," \
        "history $(qo 'SELECT sum(delta) FROM pgbench_history')"
fi
