//! The PostgreSQL image, made available without a container registry (SPEC §11).
//!
//! The offline image (`pgshard/postgres:15-bookworm`) is built by `docker/build-image.sh`,
//! which is embedded in this binary: [`build_image`] writes it (and the entrypoint) to a
//! temporary directory, runs it with `--rootfs-to` (mmdebstrap from the machine's own apt
//! mirror) and imports the tarball through the Engine API — `POST /images/create` with
//! `fromSrc=-`, the tar as the body and the script's `--print-changes` as `changes`
//! (bollard's `create_image`; `import_image` would be `docker load`, a different
//! format). The shell script and the Rust path therefore build the very same image.
//!
//! Any other image name (e.g. the official `postgres:15`) is pulled from a registry
//! instead. [`ensure_image`] does nothing when the image is present, so the build runs
//! once per machine; concurrent callers (parallel test processes) serialise on a file
//! lock and the second finds the image built.

use super::engine_err;
use crate::runtime::RuntimeError;
use bollard::query_parameters::CreateImageOptionsBuilder;
use bollard::Docker;
use futures::StreamExt;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

/// The image built offline by `docker/build-image.sh`.
pub const DEFAULT_IMAGE: &str = pgshard_catalog::config::DEFAULT_DOCKER_IMAGE;
/// The official image, for machines that reach a registry.
pub const OFFICIAL_IMAGE: &str = "postgres:15";

/// `docker/build-image.sh`, embedded so a shardd binary can build the image anywhere.
pub const BUILD_SCRIPT: &str = include_str!("../../../../docker/build-image.sh");
/// `docker/entrypoint.sh`: the image's entrypoint, and the script the runtime passes
/// inline to every container it creates (so any Debian-layout PostgreSQL 15 image works).
pub const ENTRYPOINT_SCRIPT: &str = include_str!("../../../../docker/entrypoint.sh");

/// The label carrying the hash of the recipe an offline image was built from.
const RECIPE_LABEL: &str = "pgshard.image.recipe";

/// How an image came to be present.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ImageOrigin {
    /// It was there already.
    Present,
    /// Built offline from the embedded recipe.
    Built,
    /// Pulled from a registry.
    Pulled,
}

/// The outcome of [`ensure_image`] / [`build_image`].
#[derive(Debug, Clone)]
pub struct ImageReport {
    pub image: String,
    pub origin: ImageOrigin,
    /// Time spent building or pulling (zero when present).
    pub elapsed: Duration,
    /// The image's size in bytes, as the engine reports it.
    pub size: Option<i64>,
}

/// True for image names built from the embedded recipe rather than pulled.
pub fn is_offline_image(image: &str) -> bool {
    image.starts_with("pgshard/postgres")
}

/// `repo[:tag]` split at the tag's colon (a registry port's colon is not a tag).
fn split_tag(image: &str) -> (&str, &str) {
    match image.rfind(':') {
        Some(i) if !image[i..].contains('/') => (&image[..i], &image[i + 1..]),
        _ => (image, "latest"),
    }
}

/// Make `image` present: nothing if it exists, else build it offline (pgshard images)
/// or pull it (any other name).
pub async fn ensure_image(docker: &Docker, image: &str) -> Result<ImageReport, RuntimeError> {
    if let Some(report) = present(docker, image).await? {
        return Ok(report);
    }
    if !is_offline_image(image) {
        return pull(docker, image).await;
    }
    // One build per machine: parallel callers wait here and then find the image.
    let lock = BuildLock::acquire().await?;
    let result = match present(docker, image).await? {
        Some(report) => Ok(report),
        None => build_image(docker, image).await,
    };
    drop(lock);
    result
}

/// `pgshard image build`: make `image` present as [`ensure_image`] does, or with
/// `force` build it again (offline images) or pull it again (any other name).
pub async fn build(image: &str, force: bool) -> Result<ImageReport, RuntimeError> {
    let (docker, _) = super::connect().await?;
    if !force {
        return ensure_image(&docker, image).await;
    }
    if !is_offline_image(image) {
        return pull(&docker, image).await;
    }
    let lock = BuildLock::acquire().await?;
    let result = build_image(&docker, image).await;
    drop(lock);
    result
}

/// The image's report if it exists (warning when an offline image predates the
/// embedded recipe).
async fn present(docker: &Docker, image: &str) -> Result<Option<ImageReport>, RuntimeError> {
    match docker.inspect_image(image).await {
        Ok(info) => {
            if is_offline_image(image) {
                let built_from = info
                    .config
                    .as_ref()
                    .and_then(|c| c.labels.as_ref())
                    .and_then(|l| l.get(RECIPE_LABEL))
                    .cloned();
                if let Ok(current) = recipe_hash().await {
                    if built_from.as_deref() != Some(current.as_str()) {
                        tracing::warn!(
                            %image,
                            built_from = built_from.as_deref().unwrap_or("unknown"),
                            %current,
                            "image was built from another recipe; rebuild with docker/build-image.sh --force"
                        );
                    }
                }
            }
            Ok(Some(ImageReport {
                image: image.to_string(),
                origin: ImageOrigin::Present,
                elapsed: Duration::ZERO,
                size: info.size,
            }))
        }
        Err(bollard::errors::Error::DockerResponseServerError {
            status_code: 404, ..
        }) => Ok(None),
        Err(e) => Err(engine_err(format!("image inspect {image}"))(e)),
    }
}

/// Pull `image` from its registry.
async fn pull(docker: &Docker, image: &str) -> Result<ImageReport, RuntimeError> {
    let started = Instant::now();
    let (repo, tag) = split_tag(image);
    tracing::info!(%image, "pulling image");
    let options = CreateImageOptionsBuilder::new()
        .from_image(repo)
        .tag(tag)
        .build();
    let mut progress = docker.create_image(Some(options), None, None);
    while let Some(item) = progress.next().await {
        item.map_err(|e| {
            let mut err = engine_err(format!("pull {image}"))(e);
            if let RuntimeError::Command { output, .. } = &mut err {
                output.push_str(&format!(
                    "; without a registry use the offline image {DEFAULT_IMAGE} \
                     (built by docker/build-image.sh)"
                ));
            }
            err
        })?;
    }
    let size = docker.inspect_image(image).await.ok().and_then(|i| i.size);
    Ok(ImageReport {
        image: image.to_string(),
        origin: ImageOrigin::Pulled,
        elapsed: started.elapsed(),
        size,
    })
}

/// A directory holding the embedded build script and entrypoint, removed on drop.
struct RecipeDir {
    dir: tempfile::TempDir,
}

impl RecipeDir {
    fn create() -> Result<Self, RuntimeError> {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::Builder::new()
            .prefix("pgshard-image.")
            .tempdir()
            .map_err(|e| RuntimeError::io("could not create a temporary directory", e))?;
        for (name, text) in [
            ("build-image.sh", BUILD_SCRIPT),
            ("entrypoint.sh", ENTRYPOINT_SCRIPT),
        ] {
            let path = dir.path().join(name);
            std::fs::write(&path, text)
                .map_err(|e| RuntimeError::io(format!("could not write {}", path.display()), e))?;
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755))
                .map_err(|e| RuntimeError::io(format!("could not chmod {}", path.display()), e))?;
        }
        Ok(RecipeDir { dir })
    }

    fn script(&self) -> PathBuf {
        self.dir.path().join("build-image.sh")
    }

    /// Run the build script with `args`; its stdout on success.
    async fn run(&self, args: &[&str]) -> Result<String, RuntimeError> {
        let what = format!("build-image.sh {}", args.join(" "));
        let out = tokio::process::Command::new("bash")
            .arg(self.script())
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .output()
            .await
            .map_err(|e| RuntimeError::io(format!("could not run {what}"), e))?;
        if !out.status.success() {
            // mmdebstrap is verbose: the end says what failed.
            let stderr = String::from_utf8_lossy(&out.stderr);
            let lines: Vec<&str> = stderr.lines().collect();
            let tail = lines[lines.len().saturating_sub(40)..].join("\n");
            return Err(RuntimeError::Command {
                command: what,
                status: out.status.to_string(),
                output: tail,
            });
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// The image configuration changes (`ENV ...`, `ENTRYPOINT ...`), one per line.
    async fn changes(&self) -> Result<Vec<String>, RuntimeError> {
        Ok(self
            .run(&["--print-changes"])
            .await?
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty())
            .map(String::from)
            .collect())
    }
}

/// The recipe hash the embedded script would label a new image with.
async fn recipe_hash() -> Result<String, RuntimeError> {
    let dir = RecipeDir::create()?;
    let changes = dir.changes().await?;
    Ok(changes
        .iter()
        .flat_map(|c| c.split_whitespace())
        .find_map(|w| w.strip_prefix(&format!("{RECIPE_LABEL}=")))
        .unwrap_or_default()
        .to_string())
}

/// Build the offline image and import it as `image`, replacing any image of that name.
/// Takes a few minutes (mmdebstrap downloads and installs ~100 packages).
pub async fn build_image(docker: &Docker, image: &str) -> Result<ImageReport, RuntimeError> {
    let started = Instant::now();
    let dir = RecipeDir::create()?;
    let changes = dir.changes().await?;
    let tar = dir.dir.path().join("rootfs.tar");
    tracing::info!(%image, "building the PostgreSQL image with mmdebstrap (a few minutes)");
    dir.run(&["--rootfs-to", &tar.to_string_lossy()]).await?;
    let rootfs_elapsed = started.elapsed();
    import_rootfs(docker, &tar, image, changes).await?;
    let size = docker.inspect_image(image).await.ok().and_then(|i| i.size);
    tracing::info!(%image, ?rootfs_elapsed, elapsed = ?started.elapsed(), size_mb = size.map(|s| s / 1_000_000), "image built");
    Ok(ImageReport {
        image: image.to_string(),
        origin: ImageOrigin::Built,
        elapsed: started.elapsed(),
        size,
    })
}

/// `docker import`: create `image` from the root filesystem tarball at `tar`, applying
/// `changes` (Dockerfile instructions) to its configuration. Streams the file.
pub async fn import_rootfs(
    docker: &Docker,
    tar: &Path,
    image: &str,
    changes: Vec<String>,
) -> Result<(), RuntimeError> {
    let file = tokio::fs::File::open(tar)
        .await
        .map_err(|e| RuntimeError::io(format!("could not open {}", tar.display()), e))?;
    let body = futures::stream::try_unfold(file, |mut file| async move {
        use tokio::io::AsyncReadExt;
        let mut buf = bytes::BytesMut::with_capacity(1 << 20);
        let n = file.read_buf(&mut buf).await?;
        Ok::<_, std::io::Error>((n > 0).then(|| (buf.freeze(), file)))
    });
    let (repo, tag) = split_tag(image);
    let options = CreateImageOptionsBuilder::new()
        .from_src("-")
        .repo(repo)
        .tag(tag)
        .changes(changes)
        .build();
    let mut progress =
        docker.create_image(Some(options), Some(bollard::body_try_stream(body)), None);
    while let Some(item) = progress.next().await {
        item.map_err(engine_err(format!("import {image}")))?;
    }
    Ok(())
}

/// An exclusive lock on `$TMPDIR/pgshard-image-build.lock` (the build script takes the
/// same lock), released on drop.
struct BuildLock {
    _lock: nix::fcntl::Flock<std::fs::File>,
}

impl BuildLock {
    async fn acquire() -> Result<Self, RuntimeError> {
        let path = std::env::temp_dir().join("pgshard-image-build.lock");
        tokio::task::spawn_blocking(move || {
            let file = std::fs::OpenOptions::new()
                .create(true)
                .truncate(false)
                .write(true)
                .open(&path)
                .map_err(|e| RuntimeError::io(format!("could not open {}", path.display()), e))?;
            let lock = nix::fcntl::Flock::lock(file, nix::fcntl::FlockArg::LockExclusive).map_err(
                |(_, e)| RuntimeError::io(format!("could not lock {}", path.display()), e.into()),
            )?;
            Ok(BuildLock { _lock: lock })
        })
        .await
        .map_err(|e| RuntimeError::io("image build lock task failed", std::io::Error::other(e)))?
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tags_split_at_the_last_colon_outside_the_registry() {
        assert_eq!(
            split_tag("pgshard/postgres:15-bookworm"),
            ("pgshard/postgres", "15-bookworm")
        );
        assert_eq!(split_tag("postgres"), ("postgres", "latest"));
        assert_eq!(
            split_tag("localhost:5000/pg"),
            ("localhost:5000/pg", "latest")
        );
        assert_eq!(
            split_tag("localhost:5000/pg:15"),
            ("localhost:5000/pg", "15")
        );
    }

    #[test]
    fn the_embedded_recipe_is_the_docker_directory() {
        assert!(BUILD_SCRIPT.contains("mmdebstrap"));
        assert!(ENTRYPOINT_SCRIPT.starts_with("#!/bin/sh"));
        assert!(is_offline_image(DEFAULT_IMAGE));
        assert!(!is_offline_image(OFFICIAL_IMAGE));
    }
}
