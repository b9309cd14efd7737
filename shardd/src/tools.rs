//! Cluster operations the `pgshard` CLI runs itself, with no shardd to ask (SPEC §2,
//! §11): removing what a cluster keeps outside its data directory (`pgshard destroy`),
//! stopping its containers when its shardd is gone (`pgshard down`),
//! reading an instance's server log (`pgshard logs`), and building the PostgreSQL image
//! (`pgshard image build`).
//!
//! They work from the cluster's config and its persisted layout (`cluster.json`), so they
//! also work while shardd is down, which is when they are needed most.

use crate::cluster::{Cluster, ClusterError, Layout, LAYOUT_FILE};
use crate::runtime::docker::{image, DockerOptions, DockerRuntime, ImageReport};
use crate::runtime::{LocalOptions, LocalProcess, NodeRuntime, ProcessLifecycle, RuntimeError};
use pgshard_catalog::config::Backend;
use pgshard_catalog::Config;
use std::path::PathBuf;
use std::sync::Arc;

/// What went wrong in a CLI-side operation.
#[derive(Debug, thiserror::Error)]
pub enum ToolError {
    #[error(transparent)]
    Cluster(#[from] ClusterError),
    #[error(transparent)]
    Runtime(#[from] RuntimeError),
    #[error("no cluster has been created in {0} yet")]
    NoCluster(PathBuf),
    #[error("the cluster has no node `{name}`; its nodes are: {known}")]
    UnknownNode { name: String, known: String },
    #[error("could not read {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// Remove what the cluster of `config` keeps outside its data directory: for the
/// Docker backend its containers, volumes and network — the layout's instances, then
/// every other object carrying the cluster's label (setup containers of an interrupted
/// bootstrap). Nothing is touched when the data directory holds no layout: objects
/// with that cluster name then belong to another data directory. shardd must not run.
/// Local clusters keep everything in the data directory, which the caller removes.
pub async fn destroy_data(config: &Config) -> Result<(), ToolError> {
    match config.cluster.backend {
        Backend::Local => Ok(()),
        Backend::Docker => {
            let runtime =
                Arc::new(DockerRuntime::with_options(DockerOptions::from_config(config)).await?);
            if let Some(cluster) = Cluster::open(config.clone(), runtime.clone())? {
                cluster.destroy().await?;
                runtime.purge().await?;
            }
            Ok(())
        }
    }
}

/// Stop the Docker containers of the cluster of `config` (its layout's instances, by
/// their names) when its shardd is gone and cannot. Local instances are stopped by the
/// CLI itself, each postmaster proved first (see [`crate::ownership`]); nothing is done
/// for them here. Nothing is touched when the data directory holds no layout.
pub async fn stop_docker_instances(config: &Config) -> Result<(), ToolError> {
    match config.cluster.backend {
        Backend::Local => Ok(()),
        Backend::Docker => {
            let runtime =
                Arc::new(DockerRuntime::with_options(DockerOptions::from_config(config)).await?);
            if let Some(cluster) = Cluster::open(config.clone(), runtime)? {
                cluster.stop().await?;
            }
            Ok(())
        }
    }
}

/// The last `lines` lines (all if `None`) of instance `node`'s server log: the log file
/// of a local instance, the container's output for Docker.
pub async fn node_logs(
    config: &Config,
    node: &str,
    lines: Option<usize>,
) -> Result<String, ToolError> {
    let data_dir =
        std::path::absolute(&config.cluster.data_dir).map_err(|source| ToolError::Read {
            path: config.cluster.data_dir.clone(),
            source,
        })?;
    let layout = Layout::load(&data_dir.join(LAYOUT_FILE))?
        .ok_or_else(|| ToolError::NoCluster(data_dir.clone()))?;
    let Some(layout_node) = layout.node(node) else {
        return Err(ToolError::UnknownNode {
            name: node.to_string(),
            known: layout
                .nodes
                .iter()
                .map(|n| n.name.as_str())
                .collect::<Vec<_>>()
                .join(", "),
        });
    };
    let spec = layout.spec(layout_node, config);
    match config.cluster.backend {
        Backend::Docker => {
            let runtime = DockerRuntime::with_options(DockerOptions::from_config(config)).await?;
            Ok(runtime.logs(&spec, lines).await?)
        }
        Backend::Local => {
            let runtime = LocalProcess::new(LocalOptions::from_config(
                &config.cluster,
                ProcessLifecycle::Detached,
            ))?;
            let path = runtime.logs_path(&spec);
            let text = std::fs::read_to_string(&path)
                .map_err(|source| ToolError::Read { path, source })?;
            Ok(match lines {
                Some(n) => {
                    let all: Vec<&str> = text.lines().collect();
                    let mut tail = all[all.len().saturating_sub(n)..].join("\n");
                    if !tail.is_empty() {
                        tail.push('\n');
                    }
                    tail
                }
                None => text,
            })
        }
    }
}

/// Make the PostgreSQL image of `config` present (build it offline, or pull it), or
/// with `force` build or pull it again.
pub async fn build_image(config: &Config, force: bool) -> Result<ImageReport, ToolError> {
    Ok(image::build(&config.docker.image, force).await?)
}
