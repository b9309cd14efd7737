#!/usr/bin/env bash
# Reads that cannot be pushed down (issue 15), answered by collecting the distributed
# tables into temporary tables of one shard's session: latency of a repartition join of
# two distributed tables on a non-key column and of a window over every row, set
# against one plain PostgreSQL holding all the rows; the bytes moved per query (the
# binary COPY of the collected tables), the router's peak resident memory while it
# relays them, and whether the answers are equal.
#
# usage: bench/repartition.sh [rows per table (1000000)] [shard counts ("2 4")] [runs (3)]
# needs: psql, python3, PostgreSQL 15 (initdb, pg_ctl).
set -euo pipefail
cd "$(dirname "$0")/.."
ROWS=${1:-1000000}
SHARD_COUNTS=${2:-"2 4"}
RUNS=${3:-3}
PGSHARD=./target/release/pgshard
PGBIN=${PGBIN:-/usr/lib/postgresql/15/bin}
[ -n "${PGSHARD_NO_BUILD:-}" ] || cargo build --release --quiet --bins

. bench/lib.sh
WORK=$(mktemp -d /tmp/pgshard-bench.XXXXXX)
chmod 755 "$WORK"
DATA=""
PLAIN=""
as_pg() { if [ "$(id -u)" = 0 ]; then runuser -u postgres -- "$@"; else "$@"; fi; }
cleanup() {
    [ -n "$DATA" ] && $PGSHARD destroy --data-dir "$DATA" >/dev/null 2>&1 || true
    [ -n "$PLAIN" ] && as_pg "$PGBIN/pg_ctl" -D "$PLAIN" -m immediate stop >/dev/null 2>&1 || true
    rm -rf "$WORK"
}
trap cleanup EXIT

# a and b: distributed by id; the join is on g, which is not the key. The window
# orders every row of a by g.
Q_JOIN="SELECT count(*), sum(a.id - b.id), min(a.pad || b.pad) FROM a JOIN b ON a.g = b.g"
Q_WINDOW="SELECT sum(rn * (id % 1000)), max(rn) FROM (SELECT id, row_number() OVER (ORDER BY g, id) AS rn FROM a) s"
load() { # port
    psql -X -q -h 127.0.0.1 -p "$1" -U postgres postgres \
        -c "CREATE TABLE a (id bigint PRIMARY KEY, g int, pad text)" \
        -c "CREATE TABLE b (id bigint PRIMARY KEY, g int, pad text)"
    for t in a b; do
        python3 -c "
import sys
w = sys.stdout.write
m = 1 if '$t' == 'a' else 2
for i in range(1, $ROWS + 1):
    w(f'{i}\t{(i * 7919 * m) % 1000003}\t$t-{i % 1000}\n')
" | psql -X -q -h 127.0.0.1 -p "$1" -U postgres postgres -c "COPY $t FROM STDIN"
    done
    psql -X -q -h 127.0.0.1 -p "$1" -U postgres postgres -c "VACUUM ANALYZE a" -c "VACUUM ANALYZE b"
}
run() { # port query -> "ms|answer" of the fastest of $RUNS runs
    local best="" ans=""
    for _ in $(seq "$RUNS"); do
        local t0 t1
        t0=$(date +%s%N)
        ans=$(psql -X -At -h 127.0.0.1 -p "$1" -U postgres postgres -c "$2")
        t1=$(date +%s%N)
        local ms=$(((t1 - t0) / 1000000))
        if [ -z "$best" ] || [ "$ms" -lt "$best" ]; then best=$ms; fi
    done
    echo "$best|$ans"
}
peak_rss_mb() { awk '/VmHWM/ {printf "%.1f", $2/1024}' "/proc/$1/status"; }
reset_peak() { echo 5 > "/proc/$1/clear_refs"; }

# One plain PostgreSQL with every row.
PLAIN="$WORK/plain"
mkdir -p "$PLAIN"
[ "$(id -u)" = 0 ] && chown postgres "$PLAIN" "$WORK"
PPORT=$(free_port)
as_pg "$PGBIN/initdb" -D "$PLAIN" -U postgres -A trust >/dev/null
as_pg "$PGBIN/pg_ctl" -D "$PLAIN" -o "-p $PPORT -k $WORK -c listen_addresses=127.0.0.1" -l "$WORK/plain.log" -w start >/dev/null
load "$PPORT"
P_JOIN=$(run "$PPORT" "$Q_JOIN")
P_WINDOW=$(run "$PPORT" "$Q_WINDOW")
# Bytes collected per query: the binary COPY of the tables it reads.
BYTES_A=$(psql -X -q -h 127.0.0.1 -p "$PPORT" -U postgres postgres -c "COPY a TO STDOUT (FORMAT binary)" | wc -c)
BYTES_B=$(psql -X -q -h 127.0.0.1 -p "$PPORT" -U postgres postgres -c "COPY b TO STDOUT (FORMAT binary)" | wc -c)
as_pg "$PGBIN/pg_ctl" -D "$PLAIN" -m fast stop >/dev/null
PLAIN=""

echo "# collected reads through the router, $ROWS rows per table, best of $RUNS runs, $(nproc) cores, $(date -u +%F)"
echo
echo "| shards | query | router ms | one PostgreSQL ms | bytes moved | router peak RSS MB | same answer |"
echo "|---|---|---|---|---|---|---|"
for n in $SHARD_COUNTS; do
    DATA="$WORK/c$n"
    PORT=$(free_port)
    printf '[cluster]\nshards = %s\nreplicas = 0\n[router]\nlisten = "127.0.0.1:%s"\n[[table]]\nname = "a"\nshard_key = "id"\nkey_type = "bigint"\n[[table]]\nname = "b"\nshard_key = "id"\nkey_type = "bigint"\n' "$n" "$PORT" > "$WORK/c$n.toml"
    $PGSHARD up --data-dir "$DATA" --config "$WORK/c$n.toml" >/dev/null
    ROUTER_PID=$(router_pid "$DATA")
    load "$PORT"
    for q in join window; do
        if [ "$q" = join ]; then sql=$Q_JOIN; plain=$P_JOIN; bytes=$((BYTES_A + BYTES_B)); label="join of a and b on non-key g"; else sql=$Q_WINDOW; plain=$P_WINDOW; bytes=$BYTES_A; label="row_number() OVER (ORDER BY g, id) over a"; fi
        reset_peak "$ROUTER_PID"
        r=$(run "$PORT" "$sql")
        rss=$(peak_rss_mb "$ROUTER_PID")
        same=no
        [ "${r#*|}" = "${plain#*|}" ] && same=yes
        echo "| $n | $label | ${r%%|*} | ${plain%%|*} | $bytes | $rss | $same |"
    done
    $PGSHARD destroy --data-dir "$DATA" >/dev/null 2>&1 || true
    DATA=""
done
