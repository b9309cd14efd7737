#!/usr/bin/env bash
# Fan-out overhead (issue 16 part 4): the router's own time on a 2-shard count(*) and
# ORDER BY … LIMIT, as the router's mean latency minus the slowest shard's answering
# its own part directly. Each shard's PostgreSQL is pinned to a core of its own with
# taskset (shard 1 on CPU 0, shard 2 on CPU 1), so the two shards' work overlaps and the
# router's latency can approach the slowest shard's rather than their sum.
#
# usage: bench/fanout_overhead.sh [rows (200000)] [seconds per run (8)] [rounds (2)]
# env:   OLD_BIN=dir also measures that build's router (a second router process on the
#        same cluster), interleaved with the new one; PGSHARD_NO_BUILD=1.
set -euo pipefail
cd "$(dirname "$0")/.."
ROWS=${1:-200000}
SECS=${2:-8}
ROUNDS=${3:-2}
PGSHARD=./target/release/pgshard
[ -n "${PGSHARD_NO_BUILD:-}" ] || cargo build --release --quiet --bins
command -v taskset >/dev/null || { echo "needs taskset (util-linux)" >&2; exit 1; }

. bench/lib.sh
WORK=$(mktemp -d /tmp/pgshard-fo.XXXXXX)
chmod 755 "$WORK"
DATA="$WORK/cluster"
PORT=$(free_port)
OLD_PORT=$(free_port)
cleanup() {
    [ -n "${OLD_PID:-}" ] && kill "$OLD_PID" 2>/dev/null || true
    $PGSHARD destroy --data-dir "$DATA" >/dev/null 2>&1 || true
    rm -rf "$WORK"
}
trap cleanup EXIT

printf '[cluster]\nshards = 2\nreplicas = 0\n[router]\nlisten = "127.0.0.1:%s"\n[[table]]\nname = "fo"\nshard_key = "id"\nkey_type = "bigint"\n' "$PORT" > "$WORK/c.toml"
$PGSHARD up --data-dir "$DATA" --config "$WORK/c.toml" >/dev/null
ROUTER_PID=$(router_pid "$DATA")
STATUS=$($PGSHARD status --data-dir "$DATA" --json)
node_port() { echo "$STATUS" | python3 -c 'import json,sys; print([n["port"] for n in json.load(sys.stdin)["nodes"] if n["name"]==sys.argv[1]][0])' "$1"; }
S1=$(node_port shard1-node1)
S2=$(node_port shard2-node1)
CATALOG_PORT=$(node_port catalog-node1)
sql() { psql -X -qAt -h 127.0.0.1 -p "$1" -U postgres postgres -c "$2"; }
sql "$PORT" "CREATE TABLE fo (id bigint PRIMARY KEY, v int, pad text)"
python3 -c "
import sys
w = sys.stdout.write
for i in range(1, $ROWS + 1):
    w(f'{i}\t{(i * 7919) % 1000003}\tpadding-{i % 1000}\n')
" | psql -X -q -h 127.0.0.1 -p "$PORT" -U postgres postgres -c "COPY fo FROM STDIN"
sql "$PORT" "VACUUM ANALYZE fo"
# Pin each shard (postmaster and every process it has forked, and the backends it
# forks later, which inherit the mask) to its own core.
pin() { # port cpu
    local pm
    pm=$(head -1 "$(sql "$1" "SHOW data_directory")/postmaster.pid")
    for p in $pm $(pgrep -P "$pm"); do taskset -a -p -c "$2" "$p" >/dev/null; done
}
pin "$S1" 0
pin "$S2" 1

TARGETS="new"
if [ -n "${OLD_BIN:-}" ]; then
    # The old build may not know settings the new one writes (backend_socket_dir).
    grep -v '^backend_socket_dir' "$DATA/router.toml" > "$WORK/old-router.toml"
    "$OLD_BIN/pgshard-router" --config "$WORK/old-router.toml" --listen "127.0.0.1:$OLD_PORT" \
        --catalog "host=127.0.0.1 port=$CATALOG_PORT dbname=pgshard_catalog user=postgres" \
        >"$WORK/old-router.log" 2>&1 &
    OLD_PID=$!
    for _ in $(seq 100); do pg_isready -q -h 127.0.0.1 -p "$OLD_PORT" && break; sleep 0.1; done
    TARGETS="old new"
fi

Q_COUNT="SELECT count(*) FROM fo WHERE v % 7 = 3"
Q_TOP="SELECT id, v FROM fo ORDER BY v DESC, id LIMIT 10"
echo "$Q_COUNT;" > "$WORK/count.sql"
echo "$Q_TOP;" > "$WORK/top.sql"
latency() { # port script -> mean latency in ms
    pgbench -n -f "$2" -c 1 -T "$SECS" -h 127.0.0.1 -p "$1" -U postgres postgres 2>/dev/null |
        sed -n 's/^latency average = \([0-9.]*\) ms/\1/p'
}
port_of() { [ "$1" = old ] && echo "$OLD_PORT" || echo "$PORT"; }
pid_of() { [ "$1" = old ] && echo "$OLD_PID" || echo "$ROUTER_PID"; }

echo "# fan-out overhead, 2 shards pinned to CPU 0 and CPU 1, $ROWS rows of (id bigint, v int, pad text) (shard 1: $(sql "$S1" "SELECT count(*) FROM fo"), shard 2: $(sql "$S2" "SELECT count(*) FROM fo")), ${SECS}s per run, $(nproc) cores, $(date -u '+%F %H:%M'), load average $(cut -d' ' -f1-3 /proc/loadavg)"
echo
echo "| round | query | router | router ms | shard 1 ms | shard 2 ms | router − slowest shard ms | router CPU ms/query |"
echo "|---|---|---|---|---|---|---|---|"
for round in $(seq "$ROUNDS"); do
    for q in count top; do
        a=$(latency "$S1" "$WORK/$q.sql")
        b=$(latency "$S2" "$WORK/$q.sql")
        for t in $TARGETS; do
            pid=$(pid_of "$t")
            before=$(cpu_ticks "$pid")
            out=$(pgbench -n -f "$WORK/$q.sql" -c 1 -T "$SECS" -h 127.0.0.1 -p "$(port_of "$t")" -U postgres postgres 2>/dev/null)
            after=$(cpu_ticks "$pid")
            r=$(echo "$out" | sed -n 's/^latency average = \([0-9.]*\) ms/\1/p')
            n=$(echo "$out" | sed -n 's/^number of transactions actually processed: \([0-9]*\).*/\1/p')
            over=$(python3 -c "import sys; r,a,b=map(float,sys.argv[1:]); print(f'{r-max(a,b):.3f}')" "$r" "$a" "$b")
            cpu=$(python3 -c "print(f'{($after-$before)/$TICKS/$n*1e3:.3f}')")
            if [ "$q" = count ]; then label="count(*) WHERE v % 7 = 3"; else label="ORDER BY v DESC, id LIMIT 10"; fi
            echo "| $round | $label | $t | $r | $a | $b | $over | $cpu |"
        done
    done
done
