#!/bin/sh
# pgshard PostgreSQL container entrypoint (POSIX sh: runs under dash in the pgshard
# image and in the official postgres:15 image alike).
#
# The same text is the ENTRYPOINT of the image built by build-image.sh and is passed
# inline (`sh -c SCRIPT`) by shardd's Docker runtime, so the runtime works with any
# Debian-layout PostgreSQL 15 image without depending on that image's own entrypoint.
#
# Commands (the first argument; default `postgres`):
#   postgres [ARGS]       run the server from $PGDATA as the `postgres` OS user, in the
#                         foreground (the container's main process). If $PGDATA holds no
#                         database yet it is created only when asked:
#                           PGSHARD_PRIMARY_HOST set  -> pg_basebackup from that primary
#                                                        (PGSHARD_PRIMARY_PORT, default
#                                                        5432; slot PGSHARD_SLOT if set)
#                           PGSHARD_INITDB=1          -> initdb
#                         and otherwise it refuses to start. Before starting, the file
#                         $PGDATA/pgshard.role (written by shardd: `standby` or
#                         `primary`) decides whether standby.signal is present.
#   initdb [ARGS]         create a new database in an empty (or half-initialised) PGDATA
#   basebackup HOST PORT [SLOT] [ARGS]
#                         copy a running primary into PGDATA as a streaming replica
#   anything else         run it as given (e.g. `bash`, `psql ...`)
#
# initdb settings are fixed (UTF8, C.UTF-8, superuser `postgres`, trust) to match the
# local-process runtime, so both produce byte-identical query results.
set -eu

: "${PGDATA:=/var/lib/postgresql/data}"
PGBIN=/usr/lib/postgresql/15/bin
export PGDATA PATH="$PGBIN:$PATH"

log() { echo "pgshard-entrypoint: $*" >&2; }

# Run a command as the postgres OS user (PostgreSQL refuses to run as root).
as_postgres() {
    if [ "$(id -u)" = 0 ]; then
        setpriv --reuid=postgres --regid=postgres --init-groups -- "$@"
    else
        "$@"
    fi
}

# PGDATA must exist, belong to postgres and be private (0700), else postgres refuses.
prepare_pgdata() {
    mkdir -p "$PGDATA"
    if [ "$(id -u)" = 0 ]; then
        chown postgres:postgres "$PGDATA"
        # The default Unix socket directory (Debian creates it through systemd's
        # tmpfiles, which does not run in a container).
        mkdir -p /var/run/postgresql
        chown postgres:postgres /var/run/postgresql
        chmod 2775 /var/run/postgresql
        # Files shardd copies in arrive owned by root; PostgreSQL only reads them, but
        # keep PGDATA uniformly owned.
        for f in postgresql.conf pg_hba.conf pgshard.role standby.signal; do
            [ -e "$PGDATA/$f" ] && chown postgres:postgres "$PGDATA/$f"
        done
    fi
    chmod 700 "$PGDATA"
}

# Remove what a failed initdb or base backup left behind. Never touches a database
# that was completely created (PG_VERSION is the last step we rely on).
clear_partial() {
    if [ -f "$PGDATA/PG_VERSION" ]; then
        log "$PGDATA already holds a database; refusing to overwrite it"
        exit 1
    fi
    find "$PGDATA" -mindepth 1 -delete
}

do_initdb() {
    prepare_pgdata
    clear_partial
    as_postgres initdb -D "$PGDATA" -E UTF8 --locale=C.UTF-8 -U postgres --auth=trust "$@"
}

do_basebackup() {
    host=$1 port=$2
    shift 2
    slot=""
    if [ $# -gt 0 ] && [ "${1#-}" = "$1" ]; then
        slot=$1
        shift
    fi
    prepare_pgdata
    clear_partial
    if [ -n "$slot" ]; then
        set -- -S "$slot" "$@"
    fi
    as_postgres pg_basebackup -D "$PGDATA" -h "$host" -p "$port" -U postgres \
        -X stream --checkpoint=fast -w "$@"
}

# Standalone (compose) deployments: trust the container's own networks, as shardd's
# runtime does for the cluster network. Published ports must stay on loopback.
standalone_conf() {
    cat >>"$PGDATA/pg_hba.conf" <<'EOF'
# Added by the pgshard entrypoint: the cluster's private network.
host    all          all   samenet        trust
host    replication  all   samenet        trust
EOF
    # Serve the network, and the settings pgshard relies on (shardd replaces this file
    # with its own when it takes the instance over).
    cat >>"$PGDATA/postgresql.conf" <<'EOF'
# Added by the pgshard entrypoint.
listen_addresses = '*'
max_prepared_transactions = 100
wal_level = replica
hot_standby_feedback = on
wal_log_hints = on
timezone = 'UTC'
EOF
}

# Compose replicas: the physical slot on the primary, created if missing (a retried
# base backup must not fail on the slot an earlier attempt made).
create_slot() {
    [ -n "${PGSHARD_SLOT:-}" ] || return 0
    as_postgres psql -X -q -h "$PGSHARD_PRIMARY_HOST" -p "${PGSHARD_PRIMARY_PORT:-5432}" \
        -U postgres -d postgres -v ON_ERROR_STOP=1 -v slot="$PGSHARD_SLOT" >/dev/null <<'SQL'
SELECT pg_create_physical_replication_slot(:'slot')
 WHERE NOT EXISTS (SELECT 1 FROM pg_replication_slots WHERE slot_name = :'slot');
SQL
}

cmd=${1:-postgres}
[ $# -gt 0 ] && shift

case "$cmd" in
postgres)
    prepare_pgdata
    if [ ! -f "$PGDATA/PG_VERSION" ]; then
        if [ -n "${PGSHARD_PRIMARY_HOST:-}" ]; then
            log "no database in $PGDATA: base backup from $PGSHARD_PRIMARY_HOST"
            # The primary may still be starting: retry for a while.
            tries=0
            until create_slot && do_basebackup "$PGSHARD_PRIMARY_HOST" \
                "${PGSHARD_PRIMARY_PORT:-5432}" ${PGSHARD_SLOT:+"$PGSHARD_SLOT"}; do
                tries=$((tries + 1))
                [ "$tries" -ge 60 ] && { log "base backup failed"; exit 1; }
                sleep 1
            done
            echo standby >"$PGDATA/pgshard.role"
            # In postgresql.conf (copied from the primary), not postgresql.auto.conf:
            # shardd rewrites postgresql.conf to re-point replicas after a failover,
            # and postgresql.auto.conf would override it.
            cat >>"$PGDATA/postgresql.conf" <<EOF
# Added by the pgshard entrypoint: stream from the primary.
primary_conninfo = 'host=$PGSHARD_PRIMARY_HOST port=${PGSHARD_PRIMARY_PORT:-5432} user=postgres application_name=${PGSHARD_SLOT:-$(hostname)}'
${PGSHARD_SLOT:+primary_slot_name = '$PGSHARD_SLOT'}
EOF
        elif [ "${PGSHARD_INITDB:-0}" = 1 ]; then
            log "no database in $PGDATA: initdb"
            do_initdb
            standalone_conf
            echo primary >"$PGDATA/pgshard.role"
        else
            log "no database in $PGDATA; set PGSHARD_INITDB=1 to create one, or" \
                "PGSHARD_PRIMARY_HOST to copy a primary"
            exit 1
        fi
        prepare_pgdata
    fi
    case "$(cat "$PGDATA/pgshard.role" 2>/dev/null || true)" in
    standby) : >"$PGDATA/standby.signal" ;;
    primary) rm -f "$PGDATA/standby.signal" ;;
    esac
    prepare_pgdata
    if [ "$(id -u)" = 0 ]; then
        exec setpriv --reuid=postgres --regid=postgres --init-groups -- \
            postgres -D "$PGDATA" "$@"
    fi
    exec postgres -D "$PGDATA" "$@"
    ;;
initdb)
    do_initdb "$@"
    ;;
basebackup)
    [ $# -ge 2 ] || { log "usage: basebackup HOST PORT [SLOT] [ARGS]"; exit 2; }
    do_basebackup "$@"
    ;;
*)
    exec "$cmd" "$@"
    ;;
esac
