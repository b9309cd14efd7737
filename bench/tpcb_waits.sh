#!/usr/bin/env bash
# Where a TPC-B-like run's time goes: pg_stat_activity sampled every 50 ms on every
# PostgreSQL of the run (one psql per server, `\watch 0.05`), during pgbench's
# TPC-B-like script at one client count, on one PostgreSQL directly and through the
# router on 2 shards (and through OLD_PGSHARD's router on 2 shards when set). Prints,
# per target, the average number of client backends in each state: waiting on a lock
# (by lock type, and what the lock's holder was doing: a prepared transaction, idle in
# its transaction waiting for its client — the router —, or running), idle in a
# transaction (by the statement it ran last), idle outside a transaction, running
# (by wait event: IO, LWLock, none = on CPU); and the router's pool waits (SHOW POOLS).
#
# usage: bench/tpcb_waits.sh [seconds (30)] [clients (32)] [mode (simple)] [scale (10)]
set -euo pipefail
cd "$(dirname "$0")/.."
SECS=${1:-30}
CLIENTS=${2:-32}
MODE=${3:-simple}
SCALE=${4:-10}
POOL=${POOL:-8}
PGSHARD=${PGSHARD:-./target/release/pgshard}
OLD_PGSHARD=${OLD_PGSHARD:-}

. bench/lib.sh
WORK=$(mktemp -d /tmp/pgshard-waits.XXXXXX)
chmod 755 "$WORK"
ONE="$WORK/one" TWO="$WORK/two" OLD="$WORK/old"
SAMPLERS=()
cleanup() {
    for p in "${SAMPLERS[@]}"; do kill "$p" 2>/dev/null || true; done
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
R2=$(free_port) RO=$(free_port)
config 1 "$(free_port)" >"$WORK/one.toml"
config 2 "$R2" >"$WORK/two.toml"
$PGSHARD up --data-dir "$ONE" --config "$WORK/one.toml" >/dev/null
$PGSHARD up --data-dir "$TWO" --config "$WORK/two.toml" >/dev/null
if [ -n "$OLD_PGSHARD" ]; then
    config 2 "$RO" >"$WORK/old.toml"
    $OLD_PGSHARD up --data-dir "$OLD" --config "$WORK/old.toml" >/dev/null
fi
node_port() { # data-dir node-name
    $PGSHARD status --data-dir "$1" --json |
        python3 -c 'import json,sys; print([n["port"] for n in json.load(sys.stdin)["nodes"] if n["name"]==sys.argv[1]][0])' "$2"
}
PG=$(node_port "$ONE" shard1-node1)
pgbench -i -q -s "$SCALE" -h 127.0.0.1 -p "$PG" -U postgres postgres >/dev/null 2>&1
pgbench -i -q -s "$SCALE" -h 127.0.0.1 -p "$R2" -U postgres postgres >/dev/null 2>&1 ||
    PGSHARD=$PGSHARD bench/load_pgbench.sh "$TWO" "$SCALE" >/dev/null
if [ -n "$OLD_PGSHARD" ]; then
    pgbench -i -q -s "$SCALE" -h 127.0.0.1 -p "$RO" -U postgres postgres >/dev/null 2>&1 ||
        PGSHARD=$OLD_PGSHARD bench/load_pgbench.sh "$OLD" "$SCALE" >/dev/null
fi

# One row per client backend: state, wait, last statement, and for a lock waiter what
# its first blocker is doing (pid 0 in pg_blocking_pids is a prepared transaction).
SAMPLE="SELECT a.state, coalesce(a.wait_event_type, '-'), coalesce(a.wait_event, '-'),
  regexp_replace(left(a.query, 36), '[0-9]+', 'N', 'g'),
  CASE WHEN a.wait_event_type = 'Lock' THEN
    coalesce((SELECT CASE WHEN bp = 0 THEN 'prepared transaction'
                ELSE coalesce(b.state, '?') || ': ' || regexp_replace(left(b.query, 30), '[0-9]+', 'N', 'g') END
              FROM unnest(pg_blocking_pids(a.pid)) bp LEFT JOIN pg_stat_activity b ON b.pid = bp LIMIT 1), '-')
  ELSE '' END
FROM pg_stat_activity a
WHERE a.backend_type = 'client backend' AND a.pid <> pg_backend_pid() AND a.datname = 'postgres'
UNION ALL SELECT 'sample', '', '', '', '' \\watch 0.05"

sample() { # port file
    psql -X -qAt -F '|' -h 127.0.0.1 -p "$1" -U postgres postgres >"$2" 2>/dev/null <<<"$SAMPLE" &
    SAMPLERS+=($!)
}
admin() { psql -X -qAt -F '|' -h 127.0.0.1 -p "$1" -U postgres pgshard -c 'SHOW POOLS' 2>/dev/null || true; }

measure() { # label router-port-or-empty pg-ports...
    local label=$1 router=$2
    shift 2
    local files=() i=0
    SAMPLERS=()
    for p in "$@"; do
        i=$((i + 1))
        sample "$p" "$WORK/$label.$i.samples"
        files+=("$WORK/$label.$i.samples")
    done
    local port=${router:-$1}
    [ -n "$router" ] && admin "$router" >"$WORK/$label.pools.before"
    local out
    out=$(pgbench -n -M "$MODE" -c "$CLIENTS" -j 2 -T "$SECS" -h 127.0.0.1 -p "$port" -U postgres postgres 2>&1) || true
    [ -n "$router" ] && admin "$router" >"$WORK/$label.pools.after"
    for p in "${SAMPLERS[@]}"; do kill "$p" 2>/dev/null || true; done
    wait 2>/dev/null || true
    echo "## $label: $(echo "$out" | grep -E '^tps|^latency average|failed' | tr '\n' ';')"
    echo "load average: $(cut -d' ' -f1-3 /proc/loadavg)"
    python3 - "$label" "${files[@]}" <<'EOF'
import sys, collections
label, files = sys.argv[1], sys.argv[2:]
def classify(state, wtype, wevent, query, blocker):
    if wtype == 'Lock':
        return f'waiting on Lock:{wevent} (holder: {blocker})'
    if state == 'idle in transaction':
        return f'idle in transaction, last ran: {query.strip()}'
    if state == 'idle in transaction (aborted)':
        return 'idle in transaction (aborted)'
    if state == 'idle':
        return 'idle (no transaction)'
    if state == 'active':
        return f'active, {wtype}:{wevent}' if wtype != '-' else 'active, on CPU'
    return f'{state} {wtype}:{wevent}'
for n, f in enumerate(files, 1):
    counts = collections.Counter()
    samples = 0
    for line in open(f):
        parts = line.rstrip('\n').split('|')
        if len(parts) < 5:
            continue
        if parts[0] == 'sample':
            samples += 1
            continue
        counts[classify(*parts[:5])] += 1
    if not samples:
        print(f'server {n}: no samples'); continue
    total = sum(counts.values()) / samples
    print(f'\nserver {n}: {samples} samples, {total:.1f} client backends on average')
    print('| backends (mean) | share | state |')
    print('|---:|---:|---|')
    for k, v in counts.most_common(14):
        print(f'| {v/samples:.2f} | {v/samples/total*100:.0f} % | {k} |')
EOF
    if [ -n "$router" ]; then
        echo
        echo "router pools (SHOW POOLS before → after: node|name|shard|addr|user|db|size|idle|in_use|waiting|waits|wait_ms|over_cap|opened):"
        paste -d'\n' "$WORK/$label.pools.before" "$WORK/$label.pools.after" | cut -d"|" -f2,3,7-14
    fi
    echo
}

echo "# TPC-B-like -M $MODE -c $CLIENTS, ${SECS}s per target, scale $SCALE, pool $POOL, $(nproc) cores, $(date -u '+%F %H:%M') UTC"
measure direct "" "$PG"
measure router2 "$R2" "$(node_port "$TWO" shard1-node1)" "$(node_port "$TWO" shard2-node1)"
if [ -n "$OLD_PGSHARD" ]; then
    measure old-router2 "$RO" "$(node_port "$OLD" shard1-node1)" "$(node_port "$OLD" shard2-node1)"
fi
