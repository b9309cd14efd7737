# Shared by the benchmark scripts (sourced, not run).

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

# The pid of the router shardd started for the cluster in data dir $1.
router_pid() { python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["router_pid"])' "$1/shardd.json"; }

# user+system CPU ticks of process $1, and ticks per second.
cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }
TICKS=$(getconf CLK_TCK)

# Starts PgBouncer in transaction mode on port $3 in front of the PostgreSQL on port $2,
# pool size $4, files in directory $1; sets BOUNCER_PID once it answers. With $5, the
# directory of that PostgreSQL's Unix socket (a pgshard cluster's `<data dir>/sockets`),
# PgBouncer reaches it there, as the router reaches its local shards; else over TCP.
start_pgbouncer() {
    local work=$1 pg_port=$2 port=$3 pool=$4 host=127.0.0.1
    [ -n "${5:-}" ] && [ -S "$5/.s.PGSQL.$pg_port" ] && host=$5
    cat > "$work/pgbouncer.ini" <<INI
[databases]
postgres = host=$host port=$pg_port dbname=postgres user=postgres
[pgbouncer]
listen_addr = 127.0.0.1
listen_port = $port
auth_type = trust
auth_file = $work/userlist.txt
pool_mode = transaction
default_pool_size = $pool
max_client_conn = 1100
logfile = $work/pgbouncer.log
pidfile = $work/pgbouncer.pid
unix_socket_dir =
INI
    echo '"postgres" ""' > "$work/userlist.txt"
    chown -R postgres "$work" 2>/dev/null || true
    if [ "$(id -u)" = 0 ]; then
        runuser -u postgres -- pgbouncer "$work/pgbouncer.ini" >/dev/null 2>&1 &
    else
        pgbouncer "$work/pgbouncer.ini" >/dev/null 2>&1 &
    fi
    for _ in $(seq 100); do
        BOUNCER_PID=$(cat "$work/pgbouncer.pid" 2>/dev/null || true)
        [ -n "$BOUNCER_PID" ] && pg_isready -q -h 127.0.0.1 -p "$port" && return 0
        sleep 0.1
    done
    echo "pgbouncer did not start (see $work/pgbouncer.log)" >&2
    return 1
}
