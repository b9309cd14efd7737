#!/usr/bin/env bash
# Build the router and shardd images from the release binaries, on top of the
# PostgreSQL image (built offline first if missing):
#
#   cargo build --release
#   docker/build-service-images.sh [TAG]      # default tag: dev
#
# Makes pgshard/router:TAG and pgshard/shardd:TAG, as docker/compose.yml expects. The
# build context is a staging directory with only the binaries, laid out as
# target/release/ so the Dockerfiles read the same as with the repository as context.
set -euo pipefail

main() {
    local here root tag base ctx bin
    here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
    root="$(cd "$here/.." && pwd)"
    tag=${1:-dev}
    base=${PGSHARD_POSTGRES_IMAGE:-pgshard/postgres:15-bookworm}
    if [ "$base" = pgshard/postgres:15-bookworm ]; then
        "$here/build-image.sh" "$base"
    fi
    ctx=$(mktemp -d "${TMPDIR:-/tmp}/pgshard-images.XXXXXX")
    trap 'rm -rf "$ctx"' EXIT
    mkdir -p "$ctx/target/release"
    for bin in pgshard-router shardd pgshard; do
        if [ ! -x "$root/target/release/$bin" ]; then
            echo "build-service-images: target/release/$bin is missing; run cargo build --release" >&2
            exit 1
        fi
        cp "$root/target/release/$bin" "$ctx/target/release/"
    done
    docker build -q --build-arg "BASE=$base" -f "$here/Dockerfile.router" \
        -t "pgshard/router:$tag" "$ctx" >/dev/null
    docker build -q --build-arg "BASE=$base" -f "$here/Dockerfile.shardd" \
        -t "pgshard/shardd:$tag" "$ctx" >/dev/null
    docker image ls --filter reference='pgshard/*' \
        --format 'build-service-images: {{.Repository}}:{{.Tag}} {{.Size}}' >&2
}

main "$@"; exit
