#!/usr/bin/env bash
# Build the router and shardd images from the release binaries, on top of the
# PostgreSQL image (built offline first if missing):
#
#   cargo build --release
#   docker/build-service-images.sh [TAG]      # default tag: dev
#
# Makes pgshard/router:TAG and pgshard/shardd:TAG, as docker/compose.yml expects. The
# build context is a staging directory with only the binaries, laid out as
# target/PROFILE/ so the Dockerfiles read the same as with the repository as context.
# PGSHARD_PROFILE=debug takes the binaries of a plain `cargo build` instead (large
# images, quick to make; for trying the compose file out).
set -euo pipefail

main() {
    local here root tag base ctx bin profile
    here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
    root="$(cd "$here/.." && pwd)"
    tag=${1:-dev}
    profile=${PGSHARD_PROFILE:-release}
    base=${PGSHARD_POSTGRES_IMAGE:-pgshard/postgres:15-bookworm}
    if [ "$base" = pgshard/postgres:15-bookworm ]; then
        "$here/build-image.sh" "$base"
    fi
    ctx=$(mktemp -d "${TMPDIR:-/tmp}/pgshard-images.XXXXXX")
    # Expanded now: `ctx` is local and gone when the EXIT trap runs.
    # shellcheck disable=SC2064
    trap "rm -rf '$ctx'" EXIT
    mkdir -p "$ctx/target/$profile"
    for bin in pgshard-router shardd pgshard; do
        if [ ! -x "$root/target/$profile/$bin" ]; then
            echo "build-service-images: target/$profile/$bin is missing; run cargo build" \
                "$([ "$profile" = release ] && echo --release) --bins" >&2
            exit 1
        fi
        cp "$root/target/$profile/$bin" "$ctx/target/$profile/"
    done
    docker build -q --build-arg "BASE=$base" --build-arg "PROFILE=$profile" \
        -f "$here/Dockerfile.router" -t "pgshard/router:$tag" "$ctx" >/dev/null
    docker build -q --build-arg "BASE=$base" --build-arg "PROFILE=$profile" \
        -f "$here/Dockerfile.shardd" -t "pgshard/shardd:$tag" "$ctx" >/dev/null
    docker image ls --filter reference='pgshard/*' \
        --format 'build-service-images: {{.Repository}}:{{.Tag}} {{.Size}}' >&2
}

main "$@"; exit
