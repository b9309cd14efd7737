//! The catalog store against a real PostgreSQL: migrations are idempotent, a new
//! cluster's catalog round-trips through `load`, every change bumps the version and
//! NOTIFYs listeners with it, and probes only count as changes when a state changes.

use futures::StreamExt;
use pgshard_catalog::store::{self, ClusterInit, StoreError};
use pgshard_catalog::*;
use pgshard_tests::standalone::Standalone;
use std::time::Duration;
use tokio_postgres::{AsyncMessage, NoTls};

fn node(id: u32, shard: Option<u32>, role: NodeRole, name: &str, port: u16) -> Node {
    Node {
        id: NodeId(id),
        shard: shard.map(ShardId),
        role,
        name: name.into(),
        host: "127.0.0.1".into(),
        port,
        state: NodeState::Pending,
        lag_bytes: None,
    }
}

fn init() -> ClusterInit {
    let shards = vec![ShardId(1), ShardId(2)];
    ClusterInit {
        buckets: 64,
        bucket_map: placement::initial(64, &shards),
        shards,
        nodes: vec![
            node(1, None, NodeRole::Catalog, "catalog", 5000),
            node(2, Some(1), NodeRole::Primary, "shard1-node1", 5001),
            node(3, Some(1), NodeRole::Replica, "shard1-node2", 5002),
            node(4, Some(2), NodeRole::Primary, "shard2-node1", 5003),
        ],
        tables: vec![
            TableDef {
                name: "accounts".into(),
                kind: TableKind::Distributed {
                    shard_key: "id".into(),
                    key_type: KeyType::Int8,
                    colocation: "default:int".into(),
                },
            },
            TableDef {
                name: "branches".into(),
                kind: TableKind::Reference,
            },
        ],
        local_shard: ShardId(1),
    }
}

#[tokio::test]
async fn catalog_round_trip_versions_and_notify() -> anyhow::Result<()> {
    let pg = Standalone::start().await?;
    pg.connect()
        .await?
        .batch_execute(&format!("CREATE DATABASE {}", store::CATALOG_DB))
        .await?;
    let mut client = pg.connect_db(store::CATALOG_DB).await?;

    store::migrate(&mut client).await?;
    store::migrate(&mut client).await?; // idempotent
    assert!(!store::is_initialized(&client).await?);
    assert!(matches!(
        store::load(&client).await,
        Err(StoreError::NotInitialized)
    ));

    let v1 = store::init_cluster(&mut client, &init()).await?;
    assert!(store::is_initialized(&client).await?);
    assert!(matches!(
        store::init_cluster(&mut client, &init()).await,
        Err(StoreError::AlreadyInitialized)
    ));

    let cat = store::load(&client).await?;
    let want = init();
    assert_eq!(cat.version, v1);
    assert_eq!(cat.buckets, 64);
    assert_eq!(cat.bucket_map, want.bucket_map);
    assert_eq!(cat.nodes, want.nodes);
    assert_eq!(cat.tables, want.tables);
    assert_eq!(cat.shard_ids(), vec![ShardId(1), ShardId(2)]);
    assert_eq!(cat.local_shard, ShardId(1));
    assert_eq!(cat.primary(ShardId(2)).map(|n| n.port), Some(5003));

    // A listener on another connection hears every version bump.
    let (listener, mut conn) =
        tokio_postgres::connect(&pg.connstr_db(store::CATALOG_DB), NoTls).await?;
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        let mut messages = futures::stream::poll_fn(move |cx| conn.poll_message(cx));
        while let Some(Ok(m)) = messages.next().await {
            if let AsyncMessage::Notification(n) = m {
                let _ = tx.send((n.channel().to_string(), n.payload().to_string()));
            }
        }
    });
    listener
        .batch_execute(&format!("LISTEN {}", store::NOTIFY_CHANNEL))
        .await?;

    let mut replica2 = node(5, Some(2), NodeRole::Replica, "shard2-node2", 5004);
    let v2 = store::upsert_node(&mut client, &replica2).await?;
    assert_eq!(v2.0, v1.0 + 1);
    let (channel, payload) = tokio::time::timeout(Duration::from_secs(10), rx.recv())
        .await?
        .ok_or_else(|| anyhow::anyhow!("listener ended"))?;
    assert_eq!(channel, store::NOTIFY_CHANNEL);
    assert_eq!(payload, v2.0.to_string());
    assert_eq!(store::version(&client).await?, v2);

    // Probes record observed health apart from the topology: never a version bump.
    let v3 = store::record_probe(&client, NodeId(5), NodeState::Healthy, Some(0)).await?;
    assert_eq!(v3, v2);
    let v4 = store::record_probe(&client, NodeId(5), NodeState::Healthy, Some(128)).await?;
    assert_eq!(v4, v2);
    let cat = store::load(&client).await?;
    replica2.lag_bytes = Some(128);
    assert_eq!(
        cat.nodes.iter().find(|n| n.id == NodeId(5)),
        Some(&replica2)
    );
    // Its place in the topology is shardd's to change (a version bump); a node in
    // service that probes see down reads as down.
    let v5 = pgshard_catalog::topology::set_node_state(&mut client, NodeId(5), NodeState::Healthy)
        .await?
        .expect("a change");
    assert_eq!(v5.0, v2.0 + 1);
    assert_eq!(
        store::record_probe(&client, NodeId(5), NodeState::Down, None).await?,
        v5
    );
    let cat = store::load(&client).await?;
    assert_eq!(
        cat.nodes
            .iter()
            .find(|n| n.id == NodeId(5))
            .map(|n| n.state),
        Some(NodeState::Down)
    );
    store::record_probe(&client, NodeId(5), NodeState::Healthy, Some(128)).await?;

    // Table declarations: add, reject duplicates, remove.
    let users = TableDef {
        name: "users".into(),
        kind: TableKind::Distributed {
            shard_key: "id".into(),
            key_type: KeyType::Text,
            colocation: "default:text".into(),
        },
    };
    let v5 = store::add_table(&mut client, &users, store::TableOrigin::Config).await?;
    assert!(v5 > v4);
    assert!(matches!(
        store::add_table(&mut client, &users, store::TableOrigin::Config).await,
        Err(StoreError::Invalid(_))
    ));
    assert!(store::load(&client).await?.table("users").is_some());
    store::remove_table(&mut client, "users").await?;
    assert!(store::load(&client).await?.table("users").is_none());
    Ok(())
}

#[test]
fn config_tables_get_colocation_groups() -> anyhow::Result<()> {
    let config = Config::parse(
        r#"
        [[table]]
        name = "Accounts"
        shard_key = "AID"
        key_type = "integer"
        [[table]]
        name = "history"
        shard_key = "aid"
        colocate_with = "Accounts"
        [[table]]
        name = "public.branches"
        kind = "reference"
        "#,
    )?;
    let tables = store::tables_from_config(&config)?;
    assert_eq!(tables[0].name, "accounts");
    assert_eq!(tables[2].name, "branches");
    assert_eq!(tables[2].kind, TableKind::Reference);
    let group = |t: &TableDef| match &t.kind {
        TableKind::Distributed { colocation, .. } => colocation.clone(),
        TableKind::Reference => String::new(),
    };
    assert_eq!(group(&tables[0]), group(&tables[1]));
    Ok(())
}
