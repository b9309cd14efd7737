#!/usr/bin/env bash
# Failover figures (SPEC §8, issue "High availability"): write unavailability after a
# primary is SIGKILLed under load, client errors per failover, and the write pause of a
# planned switchover — measured by the failover tests themselves, with shardd's
# default probe settings (every 1 s, 1 s timeout, down after 3 failures) unless
# PGSHARD_PROBE_MS says otherwise. Figures are printed, never asserted.
#
#   bench/failover.sh            # local processes: 20 kills, 4 switchovers
#   DOCKER=1 bench/failover.sh   # also the Docker runtime: 5 container kills, 5 partitions
set -euo pipefail
cd "$(dirname "$0")/.."
export PGSHARD_PROBE_MS="${PGSHARD_PROBE_MS:-1000}"
export PGSHARD_FAILOVER_KILLS="${PGSHARD_FAILOVER_KILLS:-20}"
export RUST_LOG=error
cargo build -q --workspace --bins
echo "== local processes (probe every ${PGSHARD_PROBE_MS} ms, ${PGSHARD_FAILOVER_KILLS} kills)"
cargo test -q -p pgshard-tests --test failover -- --nocapture --test-threads=1 \
    no_acknowledged_write_lost switchover_under_load 2>&1 |
    grep -E "kills:|write unavailability|switchovers, write pauses|test result"
if [ "${DOCKER:-0}" = 1 ]; then
    echo "== docker containers"
    cargo test -q -p pgshard-tests --test docker -- --nocapture docker_failover_on_kill 2>&1 |
        grep -E "docker failovers|test result"
fi
