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

# Writes to $1 a 1-shard cluster config, no replicas, router on port $2 with pool $3; with
# $4 = 1 the pgbench tables declared (accounts and history distributed by aid, branches
# and tellers reference), else left local.
one_shard_pgbench_config() {
    cat > "$1" <<TOML
[cluster]
shards = 1
replicas = 0
[router]
listen = "127.0.0.1:$2"
pool_size = $3
TOML
    [ "$4" = 1 ] || return 0
    cat >> "$1" <<TOML
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
}

# The port of node $2 in the JSON of `pgshard status --json` given as $1.
status_node_port() {
    echo "$1" | python3 -c 'import json,sys; print([n["port"] for n in json.load(sys.stdin)["nodes"] if n["name"]==sys.argv[1]][0])' "$2"
}
