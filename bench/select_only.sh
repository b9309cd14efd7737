#!/usr/bin/env bash
# pgbench select-only (-S) through the pgshard router (1 shard) vs the same PostgreSQL
# directly vs PgBouncer (transaction mode, pool size equal to the router's), in one run,
# interleaved so machine drift is shared. Reports TPS, mean latency, ratios and each
# proxy's CPU seconds per 10k transactions (from /proc/PID/stat).
#
# usage: bench/select_only.sh [seconds per run (15)] [clients list ("1 8 32")] [scale (10)]
# needs: pgbench, pgbouncer (apt-get install -y pgbouncer), PostgreSQL 15.
set -euo pipefail
cd "$(dirname "$0")/.."
SECS=${1:-15}
CLIENTS=${2:-"1 8 32"}
SCALE=${3:-10}
POOL=8

command -v pgbouncer >/dev/null || { echo "install pgbouncer: apt-get install -y pgbouncer" >&2; exit 1; }
[ -n "${PGSHARD_NO_BUILD:-}" ] || cargo build --release --quiet --bins

. bench/lib.sh
WORK=$(mktemp -d /tmp/pgshard-bench.XXXXXX)
chmod 755 "$WORK"
DATA="$WORK/cluster"
ROUTER_PORT=$(free_port)
BOUNCER_PORT=$(free_port)
cleanup() {
    [ -n "${BOUNCER_PID:-}" ] && kill "$BOUNCER_PID" 2>/dev/null || true
    ./target/release/pgshard destroy --data-dir "$DATA" >/dev/null 2>&1 || true
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
PG_PORT=$(echo "$STATUS" | python3 -c 'import json,sys; print([n for n in json.load(sys.stdin)["nodes"] if n["role"]=="primary"][0]["port"])')
ROUTER_PID=$(router_pid "$DATA")

# One shard holds every bucket, so the tables can be loaded on it directly.
pgbench -i -q -s "$SCALE" -h 127.0.0.1 -p "$PG_PORT" -U postgres postgres >/dev/null 2>&1

start_pgbouncer "$WORK" "$PG_PORT" "$BOUNCER_PORT" "$POOL" "$DATA/sockets"


run() { # target port mode clients -> "tps lat failed cpu_s_per_10k"
    local target=$1 port=$2 mode=$3 c=$4 pid="" before=0 after=0 out
    case $target in router) pid=$ROUTER_PID ;; pgbouncer) pid=$BOUNCER_PID ;; esac
    [ -n "$pid" ] && before=$(cpu_ticks "$pid")
    out=$(pgbench -n -S -M "$mode" -c "$c" -j "$(( c < 2 ? 1 : 2 ))" -T "$SECS" \
        -h 127.0.0.1 -p "$port" -U postgres postgres 2>&1) || true
    [ -n "$pid" ] && after=$(cpu_ticks "$pid")
    local tps lat failed tx
    tps=$(echo "$out" | sed -n 's/^tps = \([0-9.]*\).*/\1/p' | head -1)
    lat=$(echo "$out" | sed -n 's/^latency average = \([0-9.]*\) ms/\1/p')
    tx=$(echo "$out" | sed -n 's/^number of transactions actually processed: \([0-9]*\).*/\1/p')
    failed=$(echo "$out" | sed -n 's/^number of failed transactions: \([0-9]*\).*/\1/p')
    if [ -z "$tps" ] || [ "${tx:-0}" = 0 ]; then
        echo "aborted - - -"
        return
    fi
    local cpu="-"
    if [ -n "$pid" ]; then
        cpu=$(python3 -c "print(f'{($after-$before)/$TICKS/$tx*10000:.3f}')")
    fi
    echo "$tps $lat ${failed:-0} $cpu"
}

# REPEAT=n runs each direct → PgBouncer → router triple n times in turn and reports
# each column's median (the machine's noise is large on 2 shared cores).
REPEAT=${REPEAT:-1}
median() { python3 -c 'import sys,statistics; v=[float(x) for x in sys.argv[1:] if x not in ("-","aborted")]; print(f"{statistics.median(v):.3f}".rstrip("0").rstrip(".") if v else "-")' "$@"; }

echo "# pgbench -S, scale $SCALE, ${SECS}s per run, pool $POOL, $(nproc) cores, $(date -u +%F), median of $REPEAT"
echo
echo "| mode | clients | direct TPS | pgbouncer TPS | router TPS | router/direct | router/pgbouncer | lat direct ms | lat pgbouncer ms | lat router ms | CPU s/10k tx pgbouncer | CPU s/10k tx router |"
echo "|---|---|---|---|---|---|---|---|---|---|---|---|"
for c in $CLIENTS; do
    for mode in simple extended prepared; do
        DT=() DL=() BT=() BL=() BC=() RT=() RL=() RC=()
        for _ in $(seq "$REPEAT"); do
            read -r dt dl _ _ <<<"$(run direct "$PG_PORT" "$mode" "$c")"
            read -r bt bl _ bc <<<"$(run pgbouncer "$BOUNCER_PORT" "$mode" "$c")"
            read -r rt rl _ rc <<<"$(run router "$ROUTER_PORT" "$mode" "$c")"
            DT+=("$dt") DL+=("$dl") BT+=("$bt") BL+=("$bl") BC+=("$bc") RT+=("$rt") RL+=("$rl") RC+=("$rc")
        done
        dt=$(median "${DT[@]}") dl=$(median "${DL[@]}") bt=$(median "${BT[@]}") bl=$(median "${BL[@]}")
        bc=$(median "${BC[@]}") rt=$(median "${RT[@]}") rl=$(median "${RL[@]}") rc=$(median "${RC[@]}")
        ratio() { python3 -c "import sys; a,b=sys.argv[1:]; print(f'{float(a)/float(b):.2f}' if a not in ('aborted','-') and b not in ('aborted','-') else '-')" "$1" "$2"; }
        echo "| $mode | $c | $dt | $bt | $rt | $(ratio "$rt" "$dt") | $(ratio "$rt" "$bt") | $dl | $bl | $rl | $bc | $rc |"
    done
done
