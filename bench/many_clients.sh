#!/usr/bin/env bash
# Many clients through one router (issue 16 part 3): N idle client connections held by
# one router and its memory per idle client (bench/idle_clients.py, router RSS from
# /proc), then pgbench -S at 32 and at 1000 clients through the same router,
# interleaved (32, 1000, 32, 1000), with failed and aborted clients counted, next to
# PgBouncer (transaction mode, same pool, reaching PostgreSQL over the same Unix socket)
# in front of the same PostgreSQL. The CPU that pgbench itself spends per transaction
# is recorded too: with every process on the same cores, a client count that costs
# pgbench more leaves less for the proxy and the server.
#
# usage: bench/many_clients.sh [idle clients (10000)] [seconds per pgbench run (10)] [scale (10)]
# env:   PGSHARD_NO_BUILD=1 to use the existing release build;
#        OLD_BIN=dir   also measure the router binary in dir (another build's
#                      target/release) against the same cluster, interleaved;
#        PROFILE=debug the binaries of target/debug (built with `cargo build --bins`
#                      unless PGSHARD_NO_BUILD), e.g. to measure memory per idle
#                      client without a release build;
#        IDLE_ONLY=1   measure the idle clients only, no pgbench runs;
#        BOUNCER=0     leave PgBouncer out (else measured when installed:
#                      apt-get install -y pgbouncer).
set -euo pipefail
cd "$(dirname "$0")/.."
N=${1:-10000}
SECS=${2:-10}
SCALE=${3:-10}
POOL=8
PROFILE=${PROFILE:-release}
BIN=./target/$PROFILE
if [ -z "${PGSHARD_NO_BUILD:-}" ]; then
    if [ "$PROFILE" = release ]; then cargo build --release --quiet --bins; else cargo build --quiet --bins; fi
fi
# pgbench -c 1000 and the idle clients need descriptors of their own.
ulimit -n "$(ulimit -Hn)"

. bench/lib.sh
WORK=$(mktemp -d /tmp/pgshard-many.XXXXXX)
chmod 755 "$WORK"
DATA="$WORK/cluster"
ROUTER_PORT=$(free_port)
OLD_PORT=$(free_port)
cleanup() {
    [ -n "${OLD_PID:-}" ] && kill "$OLD_PID" 2>/dev/null || true
    [ -n "${BOUNCER_PID:-}" ] && kill "$BOUNCER_PID" 2>/dev/null || true
    $BIN/pgshard destroy --data-dir "$DATA" >/dev/null 2>&1 || true
    rm -rf "$WORK"
}
trap cleanup EXIT

cat > "$WORK/bench.toml" <<TOML
[cluster]
shards = 1
replicas = 0
[router]
listen = "127.0.0.1:$ROUTER_PORT"
pool_size = $POOL
max_clients = $(( N + 2000 ))
TOML

# Started with Linux's usual soft limit of 1,024 descriptors: the router raises its own.
(ulimit -Sn 1024; $BIN/pgshard up --data-dir "$DATA" --config "$WORK/bench.toml" >/dev/null)
STATUS=$($BIN/pgshard status --data-dir "$DATA" --json)
node_port() { echo "$STATUS" | python3 -c 'import json,sys; print([n["port"] for n in json.load(sys.stdin)["nodes"] if n["name"]==sys.argv[1]][0])' "$1"; }
PG_PORT=$(node_port shard1-node1)
CATALOG_PORT=$(node_port catalog-node1)
ROUTER_PID=$(router_pid "$DATA")
pgbench -i -q -s "$SCALE" -h 127.0.0.1 -p "$PG_PORT" -U postgres postgres >/dev/null 2>&1

TARGETS="new"
if [ -n "${OLD_BIN:-}" ]; then
    # The old router against the same catalog and shard, with the same settings.
    # (Without settings the old build may not know: backend_socket_dir.)
    grep -v '^backend_socket_dir' "$DATA/router.toml" > "$WORK/old-router.toml"
    (ulimit -Sn 1024; exec "$OLD_BIN/pgshard-router" --config "$WORK/old-router.toml" --listen "127.0.0.1:$OLD_PORT" \
        --catalog "host=127.0.0.1 port=$CATALOG_PORT dbname=pgshard_catalog user=postgres" \
        >"$WORK/old-router.log" 2>&1) &
    OLD_PID=$!
    for _ in $(seq 100); do pg_isready -q -h 127.0.0.1 -p "$OLD_PORT" && break; sleep 0.1; done
    TARGETS="old new"
fi
BOUNCER_PORT=$(free_port)
if [ "${BOUNCER:-1}" != 0 ] && command -v pgbouncer >/dev/null; then
    start_pgbouncer "$WORK" "$PG_PORT" "$BOUNCER_PORT" "$POOL" "$DATA/sockets"
    BOUNCER_TARGET=PgBouncer
fi
port_of() {
    case $1 in old) echo "$OLD_PORT" ;; PgBouncer) echo "$BOUNCER_PORT" ;; *) echo "$ROUTER_PORT" ;; esac
}
pid_of() {
    case $1 in old) echo "$OLD_PID" ;; PgBouncer) echo "$BOUNCER_PID" ;; *) echo "$ROUTER_PID" ;; esac
}

echo "# many clients, 1 shard, pool $POOL, $PROFILE build, $(nproc) cores, $(date -u '+%F %H:%M'), load average $(cut -d' ' -f1-3 /proc/loadavg)"
echo "# router file descriptor limit (soft/hard): $(awk '/Max open files/ {print $4"/"$5}' /proc/"$ROUTER_PID"/limits)"
echo
echo "| router | idle clients opened | failed | RSS before KB | RSS with clients KB | KB per idle client | SELECT 1 meanwhile |"
echo "|---|---|---|---|---|---|---|"
for t in $TARGETS; do
    out=$(python3 bench/idle_clients.py 127.0.0.1 "$(port_of "$t")" "$(pid_of "$t")" "$N")
    v() { echo "$out" | sed -n "s/^$1=//p" | head -1; }
    echo "| $t | $(v opened) | $(v failed) | $(v rss_before_kb) | $(v rss_after_kb) | $(v kb_per_client) | $(v select_ok) |"
    echo "$out" | grep '^error=' | sed 's/^/<!-- /; s/$/ -->/' || true
done
echo
[ -z "${IDLE_ONLY:-}" ] || exit 0

run() { # port clients -> "tps lat failed aborted cpu_us_per_tx pgbench_cpu_us_per_tx"
    local port=$1 c=$2 pid=$3 before after out
    before=$(cpu_ticks "$pid")
    # A router out of descriptors leaves clients waiting forever: bounded. `times`
    # prints the subshell's children's user and system CPU: pgbench's.
    out=$(timeout $(( SECS + 60 )) pgbench -n -S -c "$c" -j 2 -T "$SECS" -h 127.0.0.1 -p "$port" -U postgres postgres 2>&1 || true; times)
    after=$(cpu_ticks "$pid")
    local tps lat failed tx aborted
    tps=$(echo "$out" | sed -n 's/^tps = \([0-9.]*\).*/\1/p' | head -1)
    lat=$(echo "$out" | sed -n 's/^latency average = \([0-9.]*\) ms/\1/p')
    tx=$(echo "$out" | sed -n 's/^number of transactions actually processed: \([0-9]*\).*/\1/p')
    failed=$(echo "$out" | sed -n 's/^number of failed transactions: \([0-9]*\).*/\1/p')
    aborted=$(echo "$out" | grep -c 'client [0-9]* aborted\|error' || true)
    local cpu="-"
    local pcpu="-" children
    children=$(echo "$out" | tail -1)
    if [ -n "$tx" ] && [ "$tx" != 0 ]; then
        cpu=$(python3 -c "print(f'{($after-$before)/$TICKS/$tx*1e6:.1f}')")
        pcpu=$(python3 -c '
import re, sys
s = sum(int(m) * 60 + float(x) for m, x in re.findall(r"(\d+)m([\d.]+)s", sys.argv[1]))
print(f"{s / int(sys.argv[2]) * 1e6:.1f}")' "$children" "$tx")
    fi
    echo "${tps:-0} ${lat:--} ${failed:-0} $aborted $cpu $pcpu"
}

echo "| proxy | clients | round | TPS | latency ms | failed tx | error lines | proxy CPU µs/tx | pgbench CPU µs/tx |"
echo "|---|---|---|---|---|---|---|---|---|"
for round in 1 2; do
    for c in 32 1000; do
        for t in ${BOUNCER_TARGET:-} $TARGETS; do
            read -r tps lat failed aborted cpu pcpu <<<"$(run "$(port_of "$t")" "$c" "$(pid_of "$t")")"
            echo "| $t | $c | $round | $tps | $lat | $failed | $aborted | $cpu | $pcpu |"
        done
    done
done
