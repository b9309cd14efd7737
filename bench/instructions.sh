#!/usr/bin/env bash
# Instructions the router executes per pgbench -S transaction, counted by valgrind's
# callgrind: a measure of the router's own work that does not move with the machine's
# noise (issue 16, target 2). Each router build given serves the same 1-shard cluster
# in turn under callgrind; counting is switched on after a warm-up (200 transactions)
# and covers 8 clients x 1,000 transactions per mode.
#
# About a minute per build and mode on 2 cores.
#
# usage: bench/instructions.sh [BIN_DIR ...]   (default: target/release)
#   BIN_DIR: a directory holding a pgshard-router build (e.g. an old build's copy)
# env: MODES ("simple extended prepared"), DECLARE (1: pgbench_accounts distributed,
#      branches and tellers reference; 0: every table local), KEEP=dir to keep the
#      callgrind files there (for callgrind_annotate), PGSHARD_NO_BUILD=1.
# prints: a Markdown table, instructions per transaction by build and mode.
set -euo pipefail
cd "$(dirname "$0")/.."
command -v valgrind >/dev/null || { echo "install valgrind: apt-get install -y valgrind" >&2; exit 1; }
[ -n "${PGSHARD_NO_BUILD:-}" ] || cargo build --release --quiet --bins
BINS=("$@")
[ ${#BINS[@]} -gt 0 ] || BINS=(target/release)
MODES=${MODES:-"simple extended prepared"}
DECLARE=${DECLARE:-1}
TX=1000

. bench/lib.sh
WORK=$(mktemp -d /tmp/pgshard-instr.XXXXXX)
chmod 755 "$WORK"
DATA="$WORK/cluster"
ROUTER_PORT=$(free_port)
cleanup() {
    ./target/release/pgshard destroy --data-dir "$DATA" >/dev/null 2>&1 || true
    rm -rf "$WORK"
}
trap cleanup EXIT

one_shard_pgbench_config "$WORK/bench.toml" "$ROUTER_PORT" 8 "$DECLARE"
./target/release/pgshard up --data-dir "$DATA" --config "$WORK/bench.toml" >/dev/null
STATUS=$(./target/release/pgshard status --data-dir "$DATA" --json)
node_port() { status_node_port "$STATUS" "$1"; }
PG_PORT=$(node_port shard1-node1)
CATALOG_PORT=$(node_port catalog-node1)
pgbench -i -q -s 1 -h 127.0.0.1 -p "$PG_PORT" -U postgres postgres >/dev/null 2>&1

count() { # bin_dir mode index -> instructions per transaction
    local bin=$1 mode=$2 port out VG_PID config="$DATA/router.toml"
    port=$(free_port)
    out="$WORK/callgrind.$3.$mode"
    valgrind --tool=callgrind --instr-atstart=no --callgrind-out-file="$out" \
        "$bin/pgshard-router" --config "$config" --listen "127.0.0.1:$port" \
        --catalog "host=127.0.0.1 port=$CATALOG_PORT dbname=pgshard_catalog user=postgres" \
        >"$WORK/router.log" 2>&1 &
    VG_PID=$!
    for _ in $(seq 600); do pg_isready -q -h 127.0.0.1 -p "$port" && break; sleep 0.1; done
    pgbench -n -S -M "$mode" -c 8 -j 2 -t 25 -h 127.0.0.1 -p "$port" -U postgres postgres >/dev/null 2>&1
    callgrind_control -i on "$VG_PID" >/dev/null 2>&1
    pgbench -n -S -M "$mode" -c 8 -j 2 -t "$TX" -h 127.0.0.1 -p "$port" -U postgres postgres \
        >"$WORK/pgbench.log" 2>&1 || { cat "$WORK/pgbench.log" >&2; kill "$VG_PID"; return 1; }
    callgrind_control -i off "$VG_PID" >/dev/null 2>&1
    callgrind_control -d "$VG_PID" >/dev/null 2>&1
    kill "$VG_PID"; wait "$VG_PID" 2>/dev/null || true
    if [ -n "${KEEP:-}" ]; then mkdir -p "$KEEP" && cp "$out.1" "$KEEP/"; fi
    callgrind_annotate "$out.1" 2>/dev/null | awk '/PROGRAM TOTALS/ {gsub(",", "", $1); print int($1 / '"$((8 * TX))"' + 0.5)}'
}

echo "# instructions per pgbench -S transaction (callgrind), tables $([ "$DECLARE" = 1 ] && echo declared || echo undeclared), 8 clients x $TX, $(date -u '+%F %H:%M')"
echo
sep="|---|"
for _ in $MODES; do sep="$sep---|"; done
echo "| build | $(echo "$MODES" | sed 's/ / | /g') |"
echo "$sep"
i=0
for bin in "${BINS[@]}"; do
    i=$((i + 1))
    row="| $bin |"
    for mode in $MODES; do
        row="$row $(count "$bin" "$mode" "$i") |"
    done
    echo "$row"
done
