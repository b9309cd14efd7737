//! Temporary directories that the PostgreSQL OS user can use: `tempfile` creates them
//! 0700 and owned by us (root in CI), which the `postgres` user could not even
//! traverse, so the root is opened to 0755. Instance directories below it are created
//! and chowned by the runtime.

use std::os::unix::fs::PermissionsExt;
use tempfile::TempDir;

/// A fresh temporary directory under the system temp dir, removed on drop.
pub fn temp_dir(prefix: &str) -> std::io::Result<TempDir> {
    let dir = tempfile::Builder::new()
        .prefix(&format!("pgshard-{prefix}-"))
        .tempdir()?;
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755))?;
    Ok(dir)
}

/// Kills the postmaster named in a `postmaster.pid` when dropped, so a failing test
/// leaves no detached (pg_ctl-started) server behind.
pub struct KillOnDrop(pub std::path::PathBuf);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        if let Some(pid) = std::fs::read_to_string(&self.0)
            .ok()
            .and_then(|t| t.lines().next().and_then(|l| l.trim().parse::<i32>().ok()))
        {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
    }
}
