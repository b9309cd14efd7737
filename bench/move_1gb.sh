#!/usr/bin/env bash
# Moving a gigabyte (SPEC §9, issue 12): `pgbench -i -s SCALE` (70 ≈ 1 GB of
# pgbench_accounts) through the router on 2 shards, then `pgshard add-shard` while
# pgbench runs through the router the whole time. Reports the time add-shard took, the
# rows and bytes it moved (what shard 3 holds afterwards, against the 1/3 it should
# own), rows/s and MB/s, the freeze per move (shardd's /metrics quantiles), and the
# cluster's TPS before, during and after the move (pgbench -P 1 lines inside each span).
# Figures are printed, never asserted.
#
# usage: [PG_SETTINGS="name=value …"] bench/move_1gb.sh [scale (70)] [clients (8)] [mode: select-only|tpcb (select-only)]
set -euo pipefail
cd "$(dirname "$0")/.."
SCALE=${1:-70}
CLIENTS=${2:-8}
MODE=${3:-select-only}
REPLICAS=${REPLICAS:-0}

[ -n "${PGSHARD_NO_BUILD:-}" ] || cargo build --release --quiet --bins

. bench/lib.sh
WORK=$(mktemp -d /tmp/pgshard-bench.XXXXXX)
chmod 755 "$WORK"
DATA="$WORK/cluster"
ROUTER_PORT=$(free_port)
PGBENCH_PID=
cleanup() {
    [ -n "$PGBENCH_PID" ] && kill "$PGBENCH_PID" 2>/dev/null || true
    ./target/release/pgshard destroy --data-dir "$DATA" >/dev/null 2>&1 || true
    rm -rf "$WORK"
}
trap cleanup EXIT

{
    cat <<TOML
[cluster]
shards = 2
replicas = $REPLICAS
[router]
listen = "127.0.0.1:$ROUTER_PORT"
pool_size = 8
TOML
    # Extra PostgreSQL settings for the shards, e.g. PG_SETTINGS="autovacuum=off".
    if [ -n "${PG_SETTINGS:-}" ]; then
        echo "[cluster.postgres]"
        for kv in $PG_SETTINGS; do echo "${kv%%=*} = \"${kv#*=}\""; done
    fi
    grep -v '^#' bench/pgbench.toml
} > "$WORK/bench.toml"

PSQL=(psql -qtAX -h 127.0.0.1 -p "$ROUTER_PORT" -U postgres postgres)
./target/release/pgshard up --data-dir "$DATA" --config "$WORK/bench.toml" >/dev/null
t0=$(date +%s.%N)
pgbench -i -q -s "$SCALE" -h 127.0.0.1 -p "$ROUTER_PORT" -U postgres postgres >/dev/null 2>&1
t1=$(date +%s.%N)
BYTES=$("${PSQL[@]}" -c "SELECT sum(pg_table_size(c))::int8 FROM unnest(ARRAY['pgbench_accounts','pgbench_history','pgbench_tellers','pgbench_branches']::regclass[]) c")
echo "# add-shard 2 → 3 under pgbench ($MODE, $CLIENTS clients) through the router; scale $SCALE, $REPLICAS replicas per shard, $(nproc) cores, $(date -u +%F)"
echo
echo "loaded $(( SCALE * 100000 )) accounts through the router in $(python3 -c "print(f'{$t1-$t0:.0f}')") s; shard 1 holds $("${PSQL[@]}" -c "/* pgshard: shard=1 */ SELECT pg_size_pretty(pg_table_size('pgbench_accounts'))") of pgbench_accounts"

flag=-S
[ "$MODE" = tpcb ] && flag=
PROGRESS="$WORK/progress.txt"
pgbench -n $flag -M prepared -c "$CLIENTS" -j 2 -T 100000 -P 1 \
    -h 127.0.0.1 -p "$ROUTER_PORT" -U postgres postgres >"$WORK/pgbench.out" 2>"$PROGRESS" &
PGBENCH_PID=$!
start=$(date +%s)
sleep 20
m0=$(date +%s)
./target/release/pgshard add-shard --replicas "$REPLICAS" --data-dir "$DATA" >"$WORK/add.out" 2>&1
m1=$(date +%s)
sleep 20
kill -TERM "$PGBENCH_PID"; wait "$PGBENCH_PID" || true
PGBENCH_PID=

# pgbench -P lines: "progress: 12.0 s, 1234.5 tps, lat …, stddev …, 0 failed"
span() { # from to (seconds since pgbench start) -> mean TPS
    awk -v a="$1" -v b="$2" '/^progress:/ { t=$2+0; if (t > a && t <= b) { s += $4; n++ } }
        END { if (n) printf "%.0f", s/n; else printf "-" }' "$PROGRESS"
}
failed=$(awk '/^progress:/ && /failed/ { f += $(NF-1) } END { print f+0 }' "$PROGRESS")
api=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["api"])' "$DATA/shardd.json")
metrics=$(curl -fsS "http://$api/metrics")
q() { echo "$metrics" | sed -n "s/^pgshard_shardd_move_freeze_ms{quantile=\"$1\"} //p"; }
moved_rows=$("${PSQL[@]}" -c "/* pgshard: shard=3 */ SELECT count(*) FROM pgbench_accounts")
moved_bytes=$("${PSQL[@]}" -c "/* pgshard: shard=3 */ SELECT sum(pg_table_size(c))::int8 FROM unnest(ARRAY['pgbench_accounts','pgbench_history','pgbench_tellers','pgbench_branches']::regclass[]) c")
owned=$(psql -qtAX -F'|' -h 127.0.0.1 -p "$ROUTER_PORT" -U postgres -d pgshard -c 'SHOW BUCKETS' | awk -F'|' '$4 == 3 { n += $3 } END { print n+0 }')
secs=$(( m1 - m0 ))
echo
echo "| add-shard time | moves | buckets to shard 3 | rows moved (share) | MB moved | rows/s | MB/s | freeze p50 / p99 / max | TPS before | TPS during | TPS after | failed |"
echo "|---|---|---|---|---|---|---|---|---|---|---|---|"
moves=$(./target/release/pgshard moves --data-dir "$DATA" | grep -c ' done ' || true)
python3 - "$secs" "$moves" "$owned" "$moved_rows" "$SCALE" "$moved_bytes" "$BYTES" "$(q 0.5)" "$(q 0.99)" "$(q 1)" \
    "$(span 2 $(( m0 - start )))" "$(span $(( m0 - start + 1 )) $(( m1 - start )))" "$(span $(( m1 - start + 2 )) 100000)" "$failed" <<'PY'
import sys
secs, moves, owned, rows, scale, mbytes, total, p50, p99, mx, before, during, after, failed = sys.argv[1:]
secs = max(int(secs), 1); rows = int(rows); mbytes = int(mbytes or 0); total = int(total or 1)
share = rows / (int(scale) * 100000)
print(f"| {secs} s | {moves} | {owned} | {rows:,} ({share:.1%}) | {mbytes/1e6:.0f} of {total/1e6:.0f} | "
      f"{rows/secs:,.0f} | {mbytes/1e6/secs:.1f} | {p50} / {p99} / {mx} ms | {before} | {during} | {after} | {failed} |")
PY
echo
echo "freeze steps per move (ms; shardd's log), then the load average at the end: $(cut -d' ' -f1-3 /proc/loadavg)"
grep -o 'steps=.*' "$DATA/shardd.log" | sed 's/\x1b\[[0-9;]*m//g' | sed 's/^/    /' || true
echo
tail -3 "$WORK/add.out"
