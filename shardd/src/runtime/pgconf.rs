//! The configuration files of an instance, written whole by pgshard.
//!
//! initdb's `postgresql.conf` depends on the machine (memory probing, the environment's
//! locale and time zone). We replace it with one generated from the [`NodeSpec`], so
//! every instance of every cluster — and the plain PostgreSQL used by the differential
//! tests — runs with the same, known settings. Runtimes call [`write`] after initdb or
//! pg_basebackup and before every start.

use super::{slot_name, NodeSpec, RuntimeError, SUPERUSER};
use pgshard_catalog::NodeRole;
use std::collections::BTreeMap;
use std::path::Path;

/// Settings the runtime owns; user settings (`cluster.postgres`) cannot override them
/// because the cluster would stop working (addresses, replication wiring).
pub const RESERVED: &[&str] = &[
    "listen_addresses",
    "port",
    "unix_socket_directories",
    "primary_conninfo",
    "primary_slot_name",
    "hba_file",
    "ident_file",
    "data_directory",
    "cluster_name",
];

/// The base settings for `spec`, before its own `settings` are layered on.
pub fn base_settings(spec: &NodeSpec) -> BTreeMap<String, String> {
    let mut s = BTreeMap::new();
    let mut set = |k: &str, v: &str| {
        s.insert(k.to_string(), v.to_string());
    };
    set("listen_addresses", &spec.host);
    set("port", &spec.port.to_string());
    // A Unix socket only where the runtime gives a directory (local instances, for the
    // router: cheaper than loopback TCP); shardd, replication and tests use TCP.
    let sockets = spec
        .socket_dir
        .as_ref()
        .map(|d| d.display().to_string())
        .unwrap_or_default();
    set("unix_socket_directories", &sockets);
    set("cluster_name", &spec.name);
    set("max_connections", "200");
    // Two-phase commit for multi-shard writes (SPEC §7).
    set("max_prepared_transactions", "100");
    // Physical streaming replication with slots (SPEC §8).
    // Logical: bucket moves copy rows between shards with a subscription.
    set("wal_level", "logical");
    set("max_wal_senders", "16");
    set("max_replication_slots", "16");
    set("hot_standby", "on");
    set("hot_standby_feedback", "on");
    // A standby whose primary is not up yet (cluster restart, failover) retries after
    // this; the default 5 s would dominate restart time.
    set("wal_retrieve_retry_interval", "500ms");
    // Lets pg_rewind turn a fenced old primary into a replica after failover.
    set("wal_log_hints", "on");
    set("fsync", "on");
    set("synchronous_commit", "on");
    set("synchronous_standby_names", "");
    // Deterministic, environment-independent defaults (initdb would take them from the
    // environment), so results compare byte for byte with the reference PostgreSQL.
    set("timezone", "UTC");
    set("log_timezone", "UTC");
    set("datestyle", "iso, mdy");
    set("lc_messages", "C.UTF-8");
    set("lc_monetary", "C.UTF-8");
    set("lc_numeric", "C.UTF-8");
    set("lc_time", "C.UTF-8");
    set("default_text_search_config", "pg_catalog.english");
    set("dynamic_shared_memory_type", "posix");
    // Logging goes to stderr, which the runtime sends to `logs/postgresql.log`.
    set("logging_collector", "off");
    set("log_destination", "stderr");
    set("log_line_prefix", "%m [%p] %q%a@%d ");
    if spec.role == NodeRole::Replica {
        if let Some(up) = &spec.upstream {
            set(
                "primary_conninfo",
                &format!(
                    "host={} port={} user={} application_name={}",
                    up.host,
                    up.port,
                    SUPERUSER,
                    slot_name(&spec.name)
                ),
            );
            set("primary_slot_name", &slot_name(&spec.name));
        }
    }
    s
}

/// The full settings of `spec`: base settings, then its own (except [`RESERVED`] keys).
pub fn settings(spec: &NodeSpec) -> BTreeMap<String, String> {
    let mut s = base_settings(spec);
    for (k, v) in &spec.settings {
        let key = k.trim().to_ascii_lowercase();
        if RESERVED.contains(&key.as_str()) {
            tracing::warn!(node = %spec.name, setting = %key, "ignoring reserved postgresql setting");
            continue;
        }
        s.insert(key, v.clone());
    }
    s
}

/// Quote a value for `postgresql.conf`: every value may be single-quoted, with `'`
/// doubled.
fn quote(value: &str) -> String {
    format!("'{}'", value.replace('\'', "''"))
}

/// `postgresql.conf` text for `spec`.
pub fn render_postgresql_conf(spec: &NodeSpec) -> String {
    let mut out = String::from(
        "# Written by pgshard from the node spec; edits are overwritten at the next start.\n",
    );
    for (k, v) in settings(spec) {
        out.push_str(&format!("{k} = {}\n", quote(&v)));
    }
    out
}

/// `pg_hba.conf` text: trust on loopback (the embedded cluster runs on one machine and
/// the router authenticates clients itself), for both normal and replication
/// connections. Remote deployments add their own rules through the Docker runtime.
pub fn render_pg_hba_conf() -> String {
    "# Written by pgshard.\n\
     # TYPE  DATABASE     USER  ADDRESS        METHOD\n\
     local   all          all                  trust\n\
     host    all          all   127.0.0.1/32   trust\n\
     host    all          all   ::1/128        trust\n\
     host    replication  all   127.0.0.1/32   trust\n\
     host    replication  all   ::1/128        trust\n"
        .to_string()
}

/// Write `postgresql.conf` and `pg_hba.conf` into `data_dir`; for replicas also
/// `standby.signal` (removed for primaries).
pub fn write(spec: &NodeSpec, data_dir: &Path) -> Result<(), RuntimeError> {
    let write_file = |name: &str, text: &str| {
        let path = data_dir.join(name);
        std::fs::write(&path, text)
            .map_err(|e| RuntimeError::io(format!("could not write {}", path.display()), e))
    };
    write_file("postgresql.conf", &render_postgresql_conf(spec))?;
    write_file("pg_hba.conf", &render_pg_hba_conf())?;
    let signal = data_dir.join("standby.signal");
    match spec.role {
        // A replica without an upstream is a standby cut off from every primary
        // (fencing a primary that cannot be stopped): it replays what it has and waits.
        NodeRole::Replica => write_file("standby.signal", "")?,
        NodeRole::Primary | NodeRole::Catalog => {
            if signal.exists() {
                std::fs::remove_file(&signal).map_err(|e| {
                    RuntimeError::io(format!("could not remove {}", signal.display()), e)
                })?;
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::runtime::Upstream;

    fn spec(role: NodeRole) -> NodeSpec {
        NodeSpec {
            name: "shard1-node2".into(),
            role,
            shard: None,
            host: "127.0.0.1".into(),
            port: 5999,
            dir: "/tmp/x".into(),
            settings: BTreeMap::from([
                ("synchronous_standby_names".into(), "ANY 1 (\"a_b\")".into()),
                ("port".into(), "1".into()),
                ("Work_Mem".into(), "8MB".into()),
            ]),
            upstream: Some(Upstream {
                name: "shard1-node1".into(),
                host: "127.0.0.1".into(),
                port: 5998,
            }),
            socket_dir: None,
        }
    }

    #[test]
    fn replica_conf_points_at_primary_with_its_slot() {
        let text = render_postgresql_conf(&spec(NodeRole::Replica));
        assert!(text.contains(
            "primary_conninfo = 'host=127.0.0.1 port=5998 user=postgres application_name=shard1_node2'"
        ), "{text}");
        assert!(text.contains("primary_slot_name = 'shard1_node2'"));
        assert!(text.contains("port = '5999'"), "reserved keys win: {text}");
        assert!(text.contains("work_mem = '8MB'"));
        assert!(text.contains("synchronous_standby_names = 'ANY 1 (\"a_b\")'"));
    }

    #[test]
    fn primary_conf_has_no_standby_settings() {
        let text = render_postgresql_conf(&spec(NodeRole::Primary));
        assert!(!text.contains("primary_conninfo"));
        assert!(text.contains("max_prepared_transactions = '100'"));
    }

    #[test]
    fn quotes_are_doubled() {
        assert_eq!(quote("it's"), "'it''s'");
    }
}
