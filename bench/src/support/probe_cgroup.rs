//! A cgroup v2 of our own for the sock_ops program: only sockets of
//! processes inside it are measured by sock_ops, so the check's traffic is
//! what the probe sees and nothing else on the machine is.

use anyhow::{bail, Context, Result};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

/// Name prefix of the cgroups made here: `<prefix>-<pid>`.
fn dir_name(prefix: &str) -> String {
    format!("{prefix}-{}", std::process::id())
}

fn root() -> Result<PathBuf> {
    agent_probe::default_cgroup().context("no cgroup2 hierarchy is mounted")
}

/// The cgroup v2 this process is in, as a directory.
fn current(root: &Path) -> Result<PathBuf> {
    let text = std::fs::read_to_string("/proc/self/cgroup")?;
    let rel = text
        .lines()
        .find_map(|l| l.strip_prefix("0::"))
        .context("/proc/self/cgroup has no cgroup2 line")?;
    Ok(root.join(rel.trim_start_matches('/')))
}

/// A cgroup made for this run. The process can move itself in (children
/// started later follow) and is moved back before the cgroup is removed,
/// on [`CgroupGuard::remove`] or drop.
#[derive(Debug)]
pub struct CgroupGuard {
    pub path: PathBuf,
    /// Where this process was before it joined, while it is inside.
    origin: Mutex<Option<PathBuf>>,
    removed: Mutex<bool>,
}

impl CgroupGuard {
    pub fn create(prefix: &str) -> Result<CgroupGuard> {
        let path = root()?.join(dir_name(prefix));
        std::fs::create_dir(&path)
            .with_context(|| format!("creating cgroup {}", path.display()))?;
        Ok(CgroupGuard {
            path,
            origin: Mutex::new(None),
            removed: Mutex::new(false),
        })
    }

    /// Moves this whole process (every thread) into the cgroup.
    pub fn join_self(&self) -> Result<()> {
        let origin = current(&root()?)?;
        std::fs::write(self.path.join("cgroup.procs"), "0")
            .with_context(|| format!("joining cgroup {}", self.path.display()))?;
        *self.origin.lock().unwrap_or_else(|e| e.into_inner()) = Some(origin);
        Ok(())
    }

    /// Moves this process back out and removes the cgroup. Idempotent.
    pub fn remove(&self) -> Result<()> {
        let mut removed = self.removed.lock().unwrap_or_else(|e| e.into_inner());
        if *removed {
            return Ok(());
        }
        if let Some(origin) = self.origin.lock().unwrap_or_else(|e| e.into_inner()).take() {
            std::fs::write(origin.join("cgroup.procs"), "0")
                .with_context(|| format!("moving back to cgroup {}", origin.display()))?;
        }
        // Children that just exited may still be counted for a moment.
        let mut last = None;
        for _ in 0..50 {
            match std::fs::remove_dir(&self.path) {
                Ok(()) => {
                    *removed = true;
                    return Ok(());
                }
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                    *removed = true;
                    return Ok(());
                }
                Err(e) => last = Some(e),
            }
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        bail!(
            "removing cgroup {}: {}",
            self.path.display(),
            last.map(|e| e.to_string()).unwrap_or_default()
        )
    }
}

impl Drop for CgroupGuard {
    fn drop(&mut self) {
        if let Err(e) = self.remove() {
            eprintln!("{e:#}");
        }
    }
}

/// Removes empty cgroups `<prefix>-<pid>` left by runs that were killed.
pub fn sweep_stale(prefix: &str) {
    let Ok(root) = root() else { return };
    let Ok(dir) = std::fs::read_dir(&root) else {
        return;
    };
    for e in dir.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        if jitter_lab::sys::orphaned(&name, prefix) && std::fs::remove_dir(e.path()).is_ok() {
            eprintln!(
                "removed cgroup {} left by an earlier run",
                e.path().display()
            );
        }
    }
}
