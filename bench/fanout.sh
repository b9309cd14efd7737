#!/usr/bin/env bash
# Fan-out through the pgshard router: latency of multi-shard queries on 1, 2 and 4
# shards (the same rows spread over more shards), set against each shard answering its
# own part directly (a parallel fan-out should take about the slowest shard, not the
# sum), and the router's peak resident memory while 10 million rows stream through a
# plain and an ORDER BY fan-out.
#
# usage: bench/fanout.sh [rows (10000000)] [shard counts ("1 2 4")] [seconds per run (10)]
# needs: psql, pgbench, python3, PostgreSQL 15.
set -euo pipefail
cd "$(dirname "$0")/.."
ROWS=${1:-10000000}
SHARD_COUNTS=${2:-"1 2 4"}
SECS=${3:-10}
PGSHARD=./target/release/pgshard
[ -n "${PGSHARD_NO_BUILD:-}" ] || cargo build --release --quiet --bins

. bench/lib.sh
WORK=$(mktemp -d /tmp/pgshard-bench.XXXXXX)
chmod 755 "$WORK"
DATA=""
cleanup() {
    [ -n "$DATA" ] && $PGSHARD destroy --data-dir "$DATA" >/dev/null 2>&1 || true
    rm -rf "$WORK"
}
trap cleanup EXIT

Q_COUNT="SELECT count(*) FROM fo WHERE v % 7 = 3"
Q_TOP="SELECT id, v FROM fo ORDER BY v DESC, id LIMIT 10"
echo "$Q_COUNT;" > "$WORK/count.sql"
echo "$Q_TOP;" > "$WORK/top.sql"

latency() { # port script -> mean latency in ms
    pgbench -n -f "$2" -c 1 -T "$SECS" -h 127.0.0.1 -p "$1" -U postgres postgres 2>/dev/null |
        sed -n 's/^latency average = \([0-9.]*\) ms/\1/p'
}
peak_rss_mb() { awk '/VmHWM/ {printf "%.1f", $2/1024}' "/proc/$1/status"; }
reset_peak() { echo 5 > "/proc/$1/clear_refs"; }

echo "# fan-out through the router, $ROWS rows of (id bigint, v int, pad text), ${SECS}s per latency run, $(nproc) cores, $(date -u +%F)"
echo
echo "| shards | query | router ms | slowest shard alone ms | sum of shards ms | router peak RSS MB (stream all rows) | router peak RSS MB (ORDER BY all rows) |"
echo "|---|---|---|---|---|---|---|"
for n in $SHARD_COUNTS; do
    DATA="$WORK/c$n"
    PORT=$(free_port)
    printf '[cluster]\nshards = %s\nreplicas = 0\n[router]\nlisten = "127.0.0.1:%s"\n[[table]]\nname = "fo"\nshard_key = "id"\nkey_type = "bigint"\n' "$n" "$PORT" > "$WORK/c$n.toml"
    $PGSHARD up --data-dir "$DATA" --config "$WORK/c$n.toml" >/dev/null
    ROUTER_PID=$(router_pid "$DATA")
    psql -X -q -h 127.0.0.1 -p "$PORT" -U postgres postgres -c "CREATE TABLE fo (id bigint PRIMARY KEY, v int, pad text)"
    # Loaded through the router: COPY split by key, streamed to every shard at once.
    python3 -c "
import sys
w = sys.stdout.write
for i in range(1, $ROWS + 1):
    w(f'{i}\t{(i * 7919) % 1000003}\tpadding-{i % 1000}\n')
" | psql -X -q -h 127.0.0.1 -p "$PORT" -U postgres postgres -c "COPY fo FROM STDIN"
    psql -X -q -h 127.0.0.1 -p "$PORT" -U postgres postgres -c "VACUUM ANALYZE fo"
    SHARD_PORTS=$($PGSHARD status --data-dir "$DATA" --json |
        python3 -c 'import json,sys; print(" ".join(str(x["port"]) for x in json.load(sys.stdin)["nodes"] if x["role"]=="primary"))')
    for q in count top; do
        r=$(latency "$PORT" "$WORK/$q.sql")
        per=""
        for sp in $SHARD_PORTS; do per="$per $(latency "$sp" "$WORK/$q.sql")"; done
        slowest=$(python3 -c "import sys; print(max(float(x) for x in sys.argv[1:]))" $per)
        total=$(python3 -c "import sys; print(f'{sum(float(x) for x in sys.argv[1:]):.3f}')" $per)
        rss_all="-"; rss_sorted="-"
        if [ "$q" = count ]; then
            reset_peak "$ROUTER_PID"
            psql -X -At -h 127.0.0.1 -p "$PORT" -U postgres postgres -c "SELECT id, v, pad FROM fo" | wc -l >/dev/null
            rss_all=$(peak_rss_mb "$ROUTER_PID")
            reset_peak "$ROUTER_PID"
            psql -X -At -h 127.0.0.1 -p "$PORT" -U postgres postgres -c "SELECT id, v, pad FROM fo ORDER BY v, id" | wc -l >/dev/null
            rss_sorted=$(peak_rss_mb "$ROUTER_PID")
        fi
        if [ "$q" = count ]; then label="count(*) WHERE v % 7 = 3"; else label="ORDER BY v DESC, id LIMIT 10"; fi
        echo "| $n | $label | $r | $slowest | $total | $rss_all | $rss_sorted |"
    done
    $PGSHARD destroy --data-dir "$DATA" >/dev/null 2>&1 || true
    DATA=""
done
