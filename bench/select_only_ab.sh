#!/usr/bin/env bash
# pgbench select-only (-S) through two router builds (old and new) against one shard,
# next to the same PostgreSQL directly and PgBouncer (transaction mode, same pool size),
# interleaved direct → PgBouncer → old router → new router per round so that machine
# drift (a shared machine) hits all four alike. Both routers serve the same cluster:
# the new one is the cluster's own, the old one a second router process started from
# the cluster's router.toml with the old binary.
#
# usage: bench/select_only_ab.sh OLD_BIN [seconds per run (10)] [clients ("8 32")] [scale (10)]
#   OLD_BIN: directory of the old build's binaries (e.g. /work/wt-proxy-old/target/release)
# env: DECLARE=0 leaves the pgbench tables undeclared (local tables on the one shard, the
#      path an unmodified application takes); DECLARE=1 (default) declares
#      pgbench_accounts and pgbench_history distributed, branches and tellers reference.
#      MODES ("simple extended prepared"), REPEAT (1: rounds; medians reported),
#      PGSHARD_NO_BUILD=1 to use the existing release build.
# prints: a Markdown table; CPU columns are µs of user+system CPU per transaction of
#         each proxy process (/proc/PID/stat), "err" the failed transactions plus
#         aborted clients pgbench reported (summed over rounds).
set -euo pipefail
cd "$(dirname "$0")/.."
OLD_BIN=${1:?usage: bench/select_only_ab.sh OLD_BIN [secs] [clients] [scale]}
SECS=${2:-10}
CLIENTS=${3:-"8 32"}
SCALE=${4:-10}
DECLARE=${DECLARE:-1}
MODES=${MODES:-"simple extended prepared"}
REPEAT=${REPEAT:-1}
POOL=8

command -v pgbouncer >/dev/null || { echo "install pgbouncer: apt-get install -y pgbouncer" >&2; exit 1; }
[ -n "${PGSHARD_NO_BUILD:-}" ] || cargo build --release --quiet --bins

. bench/lib.sh
WORK=$(mktemp -d /tmp/pgshard-ab.XXXXXX)
chmod 755 "$WORK"
DATA="$WORK/cluster"
ROUTER_PORT=$(free_port)
OLD_PORT=$(free_port)
BOUNCER_PORT=$(free_port)
cleanup() {
    [ -n "${OLD_PID:-}" ] && kill "$OLD_PID" 2>/dev/null || true
    [ -n "${BOUNCER_PID:-}" ] && kill "$BOUNCER_PID" 2>/dev/null || true
    ./target/release/pgshard destroy --data-dir "$DATA" >/dev/null 2>&1 || true
    rm -rf "$WORK"
}
trap cleanup EXIT

one_shard_pgbench_config "$WORK/bench.toml" "$ROUTER_PORT" $POOL "$DECLARE"

./target/release/pgshard up --data-dir "$DATA" --config "$WORK/bench.toml" >/dev/null
STATUS=$(./target/release/pgshard status --data-dir "$DATA" --json)
node_port() { status_node_port "$STATUS" "$1"; }
PG_PORT=$(node_port shard1-node1)
CATALOG_PORT=$(node_port catalog-node1)
ROUTER_PID=$(router_pid "$DATA")
# One shard holds every bucket, so the tables can be loaded on it directly.
pgbench -i -q -s "$SCALE" -h 127.0.0.1 -p "$PG_PORT" -U postgres postgres >/dev/null 2>&1

# The old build may not know settings the new one writes (backend_socket_dir).
grep -v '^backend_socket_dir' "$DATA/router.toml" > "$WORK/old-router.toml"
"$OLD_BIN/pgshard-router" --config "$WORK/old-router.toml" --listen "127.0.0.1:$OLD_PORT" \
    --catalog "host=127.0.0.1 port=$CATALOG_PORT dbname=pgshard_catalog user=postgres" \
    >"$WORK/old-router.log" 2>&1 &
OLD_PID=$!
for _ in $(seq 100); do pg_isready -q -h 127.0.0.1 -p "$OLD_PORT" && break; sleep 0.1; done
start_pgbouncer "$WORK" "$PG_PORT" "$BOUNCER_PORT" "$POOL" "$DATA/sockets"

run() { # port pid mode clients -> "tps cpu_us_per_tx errors"
    local port=$1 pid=$2 mode=$3 c=$4 before=0 after=0 out
    [ "$pid" != - ] && before=$(cpu_ticks "$pid")
    out=$(pgbench -n -S -M "$mode" -c "$c" -j "$(( c < 2 ? 1 : 2 ))" -T "$SECS" \
        -h 127.0.0.1 -p "$port" -U postgres postgres 2>&1) || true
    [ "$pid" != - ] && after=$(cpu_ticks "$pid")
    local tps tx failed aborted cpu=-
    tps=$(echo "$out" | sed -n 's/^tps = \([0-9.]*\).*/\1/p' | head -1)
    tx=$(echo "$out" | sed -n 's/^number of transactions actually processed: \([0-9]*\).*/\1/p')
    failed=$(echo "$out" | sed -n 's/^number of failed transactions: \([0-9]*\).*/\1/p')
    aborted=$(echo "$out" | grep -c 'aborted\|error' || true)
    if [ "$pid" != - ] && [ -n "$tx" ] && [ "$tx" != 0 ]; then
        cpu=$(python3 -c "print(f'{($after-$before)/$TICKS/$tx*1e6:.1f}')")
    fi
    echo "${tps:-0} $cpu $(( ${failed:-0} + aborted ))"
}
median() { python3 -c 'import sys,statistics; v=[float(x) for x in sys.argv[1:] if x != "-"]; print(f"{statistics.median(v):.1f}" if v else "-")' "$@"; }
ratio() { python3 -c "import sys; a,b=sys.argv[1:]; print(f'{float(a)/float(b):.2f}' if '-' not in (a,b) and float(b) > 0 else '-')" "$1" "$2"; }

echo "# pgbench -S, tables $([ "$DECLARE" = 1 ] && echo declared || echo undeclared), scale $SCALE, ${SECS}s per run, pool $POOL, $(nproc) cores, $(date -u '+%F %H:%M'), median of $REPEAT, load average at start $(cut -d' ' -f1-3 /proc/loadavg)"
echo "# old router: $OLD_BIN; new router: $(pwd)/target/release"
echo
echo "| mode | clients | direct TPS | PgBouncer TPS | old TPS | new TPS | old/PgBouncer | new/PgBouncer | new/direct | PgBouncer µs/tx | old µs/tx | new µs/tx | err old/new/PgB |"
echo "|---|---|---|---|---|---|---|---|---|---|---|---|---|"
for c in $CLIENTS; do
    for mode in $MODES; do
        DT=() BT=() BC=() OT=() OC=() NT=() NC=() be=0 oe=0 ne=0
        for _ in $(seq "$REPEAT"); do
            read -r dt _ _ <<<"$(run "$PG_PORT" - "$mode" "$c")"
            read -r bt bc e <<<"$(run "$BOUNCER_PORT" "$BOUNCER_PID" "$mode" "$c")"; be=$((be + e))
            read -r ot oc e <<<"$(run "$OLD_PORT" "$OLD_PID" "$mode" "$c")"; oe=$((oe + e))
            read -r nt nc e <<<"$(run "$ROUTER_PORT" "$ROUTER_PID" "$mode" "$c")"; ne=$((ne + e))
            DT+=("$dt") BT+=("$bt") BC+=("$bc") OT+=("$ot") OC+=("$oc") NT+=("$nt") NC+=("$nc")
        done
        dt=$(median "${DT[@]}") bt=$(median "${BT[@]}") bc=$(median "${BC[@]}")
        ot=$(median "${OT[@]}") oc=$(median "${OC[@]}") nt=$(median "${NT[@]}") nc=$(median "${NC[@]}")
        echo "| $mode | $c | $dt | $bt | $ot | $nt | $(ratio "$ot" "$bt") | $(ratio "$nt" "$bt") | $(ratio "$nt" "$dt") | $bc | $oc | $nc | $oe/$ne/$be |"
    done
done
