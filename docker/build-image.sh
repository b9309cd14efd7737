#!/usr/bin/env bash
# Build the pgshard PostgreSQL 15 image without a container registry (SPEC §11).
#
#   docker/build-image.sh [--force] [TAG]          build and `docker import` TAG
#   docker/build-image.sh --rootfs-to FILE          only write the root filesystem tarball
#   docker/build-image.sh --print-changes           print the image config changes
#
# The image is a minimal Debian bookworm root filesystem made by mmdebstrap from the
# machine's own apt sources (whatever mirror /etc/apt points at; no host is hard-coded),
# with postgresql-15 and nothing else it does not need at run time: no docs, man pages,
# translations, and no LLVM JIT (the server binary does not link libLLVM; without
# llvmjit.so PostgreSQL simply runs without JIT). It is imported with `docker import`
# and the config changes below (ENV/ENTRYPOINT/CMD...).
#
# shardd builds the same image from Rust (`pgshard_shardd::runtime::docker::image`):
# it runs this very script (embedded in the binary) with --rootfs-to and
# --print-changes and imports the tarball through the Engine API, so the two paths
# cannot drift apart.
#
# Cached: if TAG exists nothing is done unless --force is given.
# Needs root (mmdebstrap's root mode); installs mmdebstrap with apt-get if missing.
# PGSHARD_APT_SOURCES=FILE overrides the sources (one-line `deb ...` format).
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
SUITE=bookworm
DEFAULT_TAG=pgshard/postgres:15-bookworm
PGDATA_DIR=/var/lib/postgresql/data


parse_args() {
    force=0
    rootfs_to=""
    print_changes=0
    tag=""
    while [ $# -gt 0 ]; do
        case "$1" in
        --force) force=1 ;;
        --rootfs-to)
            rootfs_to=${2:?--rootfs-to needs a file}
            shift
            ;;
        --print-changes) print_changes=1 ;;
        -h | --help)
            sed -n '2,23p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'
            exit 0
            ;;
        -*)
            echo "build-image.sh: unknown option $1" >&2
            exit 2
            ;;
        *) tag=$1 ;;
        esac
        shift
    done
    tag=${tag:-$DEFAULT_TAG}
}

log() { echo "build-image: $*" >&2; }

# Identifies the recipe an image was built from (this script and the entrypoint).
recipe_hash() {
    cat "${BASH_SOURCE[0]}" "$here/entrypoint.sh" | sha256sum | cut -c1-16
}

# The image configuration, one Dockerfile instruction per line (for `docker import
# --change` and the Engine API's `changes`).
changes() {
    cat <<EOF
ENV PATH=/usr/lib/postgresql/15/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
ENV PGDATA=$PGDATA_DIR
ENV LANG=C.UTF-8
ENTRYPOINT ["/usr/local/bin/docker-entrypoint.sh"]
CMD ["postgres"]
EXPOSE 5432
LABEL org.opencontainers.image.title=pgshard-postgres pgshard.image.recipe=$(recipe_hash)
EOF
}

# --- apt sources -------------------------------------------------------------------

# One-line `deb [signed-by=...] URI SUITE main` entries for the bookworm suites in the
# machine's apt configuration: deb822 `.sources` files and one-line `.list` files.
apt_sources() {
    if [ -n "${PGSHARD_APT_SOURCES:-}" ]; then
        grep -E '^[[:space:]]*deb[[:space:]]' "$PGSHARD_APT_SOURCES"
        return
    fi
    local files=()
    [ -f /etc/apt/sources.list ] && files+=(/etc/apt/sources.list)
    local f
    for f in /etc/apt/sources.list.d/*.list /etc/apt/sources.list.d/*.sources; do
        [ -f "$f" ] && files+=("$f")
    done
    for f in "${files[@]}"; do
        case "$f" in
        *.sources) deb822_to_lines "$f" ;;
        *) list_to_lines "$f" ;;
        esac
    done | awk '!seen[$0]++'
}

# deb822 stanzas -> one-line entries (only Types: deb, enabled, bookworm* suites, main).
deb822_to_lines() {
    awk -v suite="$SUITE" '
        function flush(   n, i, j, u, s, su, opt) {
            if (types ~ /(^|[[:space:]])deb([[:space:]]|$)/ && tolower(enabled) != "no" \
                && uris != "" && comps ~ /(^|[[:space:]])main([[:space:]]|$)/) {
                opt = ""
                if (signed ~ /^\//) opt = " [signed-by=" signed "]"
                nu = split(uris, u, /[[:space:]]+/)
                ns = split(suites, s, /[[:space:]]+/)
                for (i = 1; i <= nu; i++) for (j = 1; j <= ns; j++) {
                    su = s[j]
                    if (u[i] != "" && (su == suite || su ~ ("^" suite "-(updates|security)$")))
                        print "deb" opt " " u[i] " " su " main"
                }
            }
            types = uris = suites = comps = signed = ""; enabled = "yes"; key = ""
        }
        BEGIN { enabled = "yes" }
        /^#/ { next }
        /^[[:space:]]*$/ { flush(); next }
        /^[[:space:]]/ { next }   # continuation lines (inline keys): ignored
        {
            key = tolower($0); sub(/:.*/, "", key)
            val = $0; sub(/^[^:]*:[[:space:]]*/, "", val); sub(/[[:space:]]+$/, "", val)
            if (key == "types") types = val
            else if (key == "uris") uris = val
            else if (key == "suites") suites = val
            else if (key == "components") comps = val
            else if (key == "signed-by") signed = val
            else if (key == "enabled") enabled = val
        }
        END { flush() }
    ' "$1"
}

# One-line entries, filtered the same way.
list_to_lines() {
    awk -v suite="$SUITE" '
        /^[[:space:]]*deb[[:space:]]/ {
            opts = ""; i = 2
            if ($2 ~ /^\[/) {
                while (i <= NF) { opts = opts (opts == "" ? "" : " ") $i; if ($i ~ /\]$/) { i++; break } i++ }
            }
            uri = $i; su = $(i + 1)
            main = 0
            for (k = i + 2; k <= NF; k++) if ($k == "main") main = 1
            if (main && (su == suite || su ~ ("^" suite "-(updates|security)$")))
                print "deb" (opts == "" ? "" : " " opts) " " uri " " su " main"
        }
    ' "$1"
}

# Host apt options the mirror needs (a snapshot mirror needs Check-Valid-Until off; a
# proxy must be used from the build too).
host_aptopts() {
    command -v apt-config >/dev/null || return 0
    apt-config dump 2>/dev/null | grep -E \
        '^Acquire::(Check-Valid-Until|Check-Date|https?::Proxy|Retries) ' |
        sed 's/;$//' || true
}

ensure_mmdebstrap() {
    command -v mmdebstrap >/dev/null && return 0
    if [ "$(id -u)" != 0 ] || ! command -v apt-get >/dev/null; then
        log "mmdebstrap is not installed; install it (apt-get install mmdebstrap) and retry"
        exit 1
    fi
    log "installing mmdebstrap"
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends \
        mmdebstrap >&2 || {
        DEBIAN_FRONTEND=noninteractive apt-get update -q >&2
        DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends \
            mmdebstrap >&2
    }
}

# Write the root filesystem tarball to $1.
build_rootfs() {
    local out=$1
    ensure_mmdebstrap
    mapfile -t sources < <(apt_sources)
    if [ ${#sources[@]} -eq 0 ]; then
        log "no Debian $SUITE entry with component main in /etc/apt/sources.list{,.d/};" \
            "set PGSHARD_APT_SOURCES to a file of 'deb URI $SUITE main' lines"
        exit 1
    fi
    local s
    for s in "${sources[@]}"; do log "source: $s"; done
    local aptopts=()
    local o
    while IFS= read -r o; do
        [ -n "$o" ] && aptopts+=(--aptopt="$o")
    done < <(host_aptopts)

    # Patterns, not paths: no globbing while the list is built.
    set -f
    local excludes=(
        # Documentation (licences kept), manuals, translations. PostgreSQL's own
        # manuals (/usr/share/postgresql/15/man) are alternatives' master links, so
        # its postinst needs them: they are deleted after installation instead.
        /usr/share/doc/* /usr/share/man/* /usr/share/info/* /usr/share/locale/*
        /usr/share/lintian/*
        # Locale sources: initdb uses C.UTF-8, which glibc ships compiled.
        /usr/share/i18n/locales/* /usr/share/i18n/charmaps/*
        # The LLVM JIT: bitcode, the JIT provider and libLLVM itself (only llvmjit.so
        # links it) with libz3, which only libLLVM uses. With jit_provider missing
        # PostgreSQL runs without JIT.
        /usr/lib/postgresql/15/lib/bitcode/* /usr/lib/postgresql/15/lib/llvmjit*
        /usr/lib/*/libLLVM* /usr/lib/*/libz3.so*
    )
    set +f
    local dpkgopts=()
    local e
    for e in "${excludes[@]}"; do dpkgopts+=(--dpkgopt="path-exclude=$e"); done
    dpkgopts+=(--dpkgopt='path-include=/usr/share/doc/*/copyright')

    mmdebstrap --variant=minbase --format=tar \
        --include=postgresql-15 \
        "${aptopts[@]}" "${dpkgopts[@]}" \
        --essential-hook='mkdir -p "$1/etc/postgresql-common/createcluster.d" &&
            echo "create_main_cluster = false" \
            >"$1/etc/postgresql-common/createcluster.d/pgshard.conf"' \
        --customize-hook="upload '$here/entrypoint.sh' /usr/local/bin/docker-entrypoint.sh" \
        --customize-hook='chmod 0755 "$1/usr/local/bin/docker-entrypoint.sh"' \
        --customize-hook="mkdir -p \"\$1$PGDATA_DIR\" && chroot \"\$1\" chown postgres:postgres $PGDATA_DIR && chmod 0700 \"\$1$PGDATA_DIR\"" \
        --customize-hook='if chroot "$1" ldd /usr/lib/postgresql/15/bin/postgres | grep "not found"; then
                echo "postgres is missing shared libraries" >&2; exit 1; fi' \
        --customize-hook='chroot "$1" /usr/lib/postgresql/15/bin/postgres --version >&2' \
        --customize-hook='rm -rf "$1"/var/lib/apt/lists/* "$1"/var/cache/apt/* \
            "$1"/usr/share/postgresql/15/man/* \
            "$1"/var/cache/debconf/*-old "$1"/var/log/*.log "$1"/var/log/apt/* \
            "$1"/etc/ssl/private/ssl-cert-snakeoil.key "$1"/etc/ssl/certs/ssl-cert-snakeoil.pem' \
        "$SUITE" "$out" "${sources[@]}"
}

# --- main --------------------------------------------------------------------------

# Everything runs from functions, so bash has parsed the whole file before the first
# command: editing the script while a build runs cannot change the running build.
main() {
    parse_args "$@"
    if [ "$print_changes" = 1 ]; then
        changes
        return 0
    fi
    if [ -n "$rootfs_to" ]; then
        build_rootfs "$rootfs_to"
        exit 0
    fi

    if ! command -v docker >/dev/null; then
        log "docker CLI not found"
        exit 1
    fi
    # One build at a time on this machine (shardd's Rust build path takes the same lock).
    exec 9>"${TMPDIR:-/tmp}/pgshard-image-build.lock"
    flock 9
    if [ "$force" = 0 ] && docker image inspect "$tag" >/dev/null 2>&1; then
        log "$tag exists (recipe $(docker image inspect -f '{{index .Config.Labels "pgshard.image.recipe"}}' "$tag")); use --force to rebuild"
        exit 0
    fi

    start=$(date +%s)
    work=$(mktemp -d "${TMPDIR:-/tmp}/pgshard-image.XXXXXX")
    trap 'rm -rf "$work"' EXIT
    build_rootfs "$work/rootfs.tar"
    built=$(date +%s)
    change_args=()
    while IFS= read -r c; do change_args+=(--change "$c"); done < <(changes)
    docker import "${change_args[@]}" "$work/rootfs.tar" "$tag" >/dev/null
    end=$(date +%s)
    size=$(docker image inspect -f '{{.Size}}' "$tag")
    log "built $tag: $((size / 1000000)) MB, rootfs $((built - start))s, import $((end - built))s, total $((end - start))s"
}

main "$@"; exit
