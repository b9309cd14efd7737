#!/usr/bin/env bash
# Bucket-move figures (SPEC §9, issue 12): the freeze per move (buckets frozen →
# owner flipped: the longest a statement for those buckets is held), rows moved, and
# the clients' errors, measured by the scaling tests under load (3 inserting clients,
# 1 client moving money between accounts, 1 client checking multi-shard counts, through
# a router; and pgbench TPC-B-like during add-shard and remove-shard). Printed, never
# asserted.
#
#   bench/moves.sh
set -euo pipefail
cd "$(dirname "$0")/.."
export RUST_LOG=error
cargo test -q -p pgshard-tests --test scaling -- --nocapture --test-threads=1 \
    shrink_and_grow add_shard pgbench_during 2>&1 |
    grep -E "moves \(|add-shard:|pgbench during|number of|tps|test result"
