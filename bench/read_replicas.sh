#!/usr/bin/env bash
# pgbench select-only (-S) through the router on 1 shard with 2 streaming replicas, with
# reads from the primary, the replicas, or any node (SPEC §8, issue 13), interleaved in
# one run so machine drift is shared. The session's read_from comes from the startup
# parameter (PGOPTIONS='-c pgshard.read_from=…'), so one router serves every mode.
# Reports TPS, mean latency, each node's share of the reads (the router's SHOW POOLS
# `reads` counters; pg_stat_database is no good here: backends flush their counters up
# to 10 s late, so they smear across runs) and the router's CPU per transaction (from
# /proc/PID/stat).
#
# usage: bench/read_replicas.sh [seconds per run (10)] [clients list ("8 32")] [scale (10)]
set -euo pipefail
cd "$(dirname "$0")/.."
SECS=${1:-10}
CLIENTS=${2:-"8 32"}
SCALE=${3:-10}
POOL=${POOL:-8}
POLICY=${POLICY:-round_robin}
MODES=${MODES:-"simple"}

[ -n "${PGSHARD_NO_BUILD:-}" ] || cargo build --release --quiet --bins

. bench/lib.sh
WORK=$(mktemp -d /tmp/pgshard-bench.XXXXXX)
chmod 755 "$WORK"
DATA="$WORK/cluster"
ROUTER_PORT=$(free_port)
cleanup() {
    ./target/release/pgshard destroy --data-dir "$DATA" >/dev/null 2>&1 || true
    rm -rf "$WORK"
}
trap cleanup EXIT

cat > "$WORK/bench.toml" <<TOML
[cluster]
shards = 1
replicas = 2
[router]
listen = "127.0.0.1:$ROUTER_PORT"
pool_size = $POOL
read_policy = "$POLICY"
[[table]]
name = "pgbench_accounts"
shard_key = "aid"
key_type = "integer"
[[table]]
name = "pgbench_branches"
kind = "reference"
[[table]]
name = "pgbench_tellers"
kind = "reference"
[[table]]
name = "pgbench_history"
shard_key = "aid"
key_type = "integer"
TOML

./target/release/pgshard up --data-dir "$DATA" --config "$WORK/bench.toml" >/dev/null
STATUS=$(./target/release/pgshard status --data-dir "$DATA" --json)
nodes() { echo "$STATUS" | python3 -c 'import json,sys; [print(n["name"], n["role"], n["port"]) for n in json.load(sys.stdin)["nodes"] if n.get("shard") is not None]'; }
PG_PORT=$(nodes | awk '$2=="primary"{print $3}')
ROUTER_PID=$(router_pid "$DATA")

# One shard holds every bucket: load on the primary directly, then wait for replay.
pgbench -i -q -s "$SCALE" -h 127.0.0.1 -p "$PG_PORT" -U postgres postgres >/dev/null 2>&1
TARGET=$(psql -qtAX -h 127.0.0.1 -p "$PG_PORT" -U postgres -c 'SELECT pg_current_wal_lsn()' postgres)
for port in $(nodes | awk '$2=="replica"{print $3}'); do
    until [ "$(psql -qtAX -h 127.0.0.1 -p "$port" -U postgres -c "SELECT pg_last_wal_replay_lsn() >= '$TARGET'" postgres)" = t ]; do
        sleep 0.2
    done
done

reads() { # "name(role):reads ..." from the router's SHOW POOLS (summed over its pools)
    psql -qtAX -F'|' -h 127.0.0.1 -p "$ROUTER_PORT" -U postgres -d pgshard -c 'SHOW POOLS' |
        awk -F'|' '{n[$2"("$11")"] += $12} END {for (k in n) printf "%s:%d ", k, n[k]}'
}

shares() { # before after -> "name(role) share% ..." of the reads routed in between
    python3 - "$1" "$2" <<'PY'
import sys
b = dict(x.rsplit(":", 1) for x in sys.argv[1].split())
a = dict(x.rsplit(":", 1) for x in sys.argv[2].split())
d = {k: int(a[k]) - int(b.get(k, 0)) for k in a}
t = sum(d.values())
if t == 0:
    print("primary 100% (read routing off: every statement on the primary)")
else:
    print(", ".join(f"{k} {100*v/t:.1f}%" for k, v in sorted(d.items())))
PY
}

run() { # read_from protocol clients -> table row
    local from=$1 mode=$2 c=$3 before after b a out
    b=$(reads); before=$(cpu_ticks "$ROUTER_PID")
    out=$(PGOPTIONS="-c pgshard.read_from=$from" pgbench -n -S -M "$mode" -c "$c" -j 2 -T "$SECS" \
        -h 127.0.0.1 -p "$ROUTER_PORT" -U postgres postgres 2>&1) || true
    after=$(cpu_ticks "$ROUTER_PID"); a=$(reads)
    local tps lat tx
    tps=$(echo "$out" | sed -n 's/^tps = \([0-9.]*\).*/\1/p' | head -1)
    lat=$(echo "$out" | sed -n 's/^latency average = \([0-9.]*\) ms/\1/p')
    tx=$(echo "$out" | sed -n 's/^number of transactions actually processed: \([0-9]*\).*/\1/p')
    local cpu
    cpu=$(python3 -c "print(f'{($after-$before)/$TICKS/max(${tx:-0},1)*1e6:.0f}')")
    echo "| $from | $mode | $c | ${tps:-aborted} | ${lat:--} | $cpu | $(shares "$b" "$a") |"
}

echo "# pgbench -S through the router, 1 shard x 2 replicas, scale $SCALE, ${SECS}s per run, pool $POOL per node, policy $POLICY, $(nproc) cores, $(date -u +%F)"
echo
echo "| read_from | protocol | clients | TPS | latency ms | router CPU µs/tx | per-node share of reads |"
echo "|---|---|---|---|---|---|---|"
for c in $CLIENTS; do
    for mode in $MODES; do
        for from in primary replica any; do
            run "$from" "$mode" "$c"
        done
    done
done
