//! Named network namespaces (`ip netns`), and a lock per name prefix so
//! two runs never share (or clean up) each other's namespaces.

use super::{ip, pid_alive};
use anyhow::{bail, Context, Result};
use nix::sched::{setns, CloneFlags};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

pub const RUN_DIR: &str = "/run/netem-tun";

pub fn exists(name: &str) -> bool {
    Path::new("/run/netns").join(name).exists()
}

pub fn list() -> Vec<String> {
    std::fs::read_dir("/run/netns")
        .map(|d| {
            d.filter_map(|e| e.ok()?.file_name().into_string().ok())
                .collect()
        })
        .unwrap_or_default()
}

/// Removes the namespaces `<prefix><pid>...` and prefix locks
/// (`RUN_DIR/<prefix><pid>.pid`) of runs whose process is gone; `who`
/// names the caller in what it prints.
pub fn sweep_orphans(prefix: &str, who: &str) {
    for ns in list().into_iter().filter(|n| super::orphaned(n, prefix)) {
        eprintln!("{who}: removing namespace {ns} left by an earlier run");
        let _ = delete(&ns);
    }
    if let Ok(dir) = std::fs::read_dir(RUN_DIR) {
        for e in dir.flatten() {
            if e.file_name()
                .to_str()
                .is_some_and(|n| n.ends_with(".pid") && super::orphaned(n, prefix))
            {
                let _ = std::fs::remove_file(e.path());
            }
        }
    }
}

pub fn create(name: &str) -> Result<()> {
    ip(&["netns", "add", name]).map(drop)
}

/// Processes inside the namespace, this one excluded.
pub fn pids(name: &str) -> Vec<i32> {
    let me = std::process::id() as i32;
    ip(&["netns", "pids", name])
        .unwrap_or_default()
        .split_whitespace()
        .filter_map(|p| p.parse().ok())
        .filter(|&p| p != me)
        .collect()
}

/// SIGTERM to every process in the namespace, SIGKILL to those still there
/// after `grace`.
pub fn kill_all(name: &str, grace: Duration) {
    let victims = pids(name);
    if victims.is_empty() {
        return;
    }
    eprintln!("netem-tun: stopping processes left in {name}: {victims:?}");
    for &p in &victims {
        let _ = kill(Pid::from_raw(p), Signal::SIGTERM);
    }
    let deadline = Instant::now() + grace;
    while Instant::now() < deadline && victims.iter().any(|&p| pid_alive(p)) {
        std::thread::sleep(Duration::from_millis(20));
    }
    for p in pids(name) {
        let _ = kill(Pid::from_raw(p), Signal::SIGKILL);
    }
}

/// Kills what runs inside, then deletes the namespace. Idempotent.
pub fn delete(name: &str) -> Result<()> {
    if !exists(name) {
        return Ok(());
    }
    kill_all(name, Duration::from_secs(2));
    ip(&["netns", "del", name]).map(drop)
}

/// Moves the calling thread into the namespace (for good).
pub fn enter(name: &str) -> Result<()> {
    let f = File::open(Path::new("/run/netns").join(name))
        .with_context(|| format!("opening namespace {name}"))?;
    setns(&f, CloneFlags::CLONE_NEWNET).with_context(|| format!("setns into {name}"))
}

/// `program` as a command whose process runs inside namespace `name`: the
/// child enters it (setns) between fork and exec. Every program of the lab
/// and the benchmarks starts processes in a namespace this way. Unlike
/// `ip netns exec`, it keeps the host's /sys (and with it the cgroup2
/// mount the agent's eBPF probe attaches to).
pub fn command(name: &str, program: impl AsRef<std::ffi::OsStr>) -> Result<Command> {
    use std::os::fd::AsRawFd;
    use std::os::unix::process::CommandExt;
    let path = Path::new("/run/netns").join(name);
    let f = File::open(&path).with_context(|| format!("opening {}", path.display()))?;
    let mut cmd = Command::new(program);
    // SAFETY: setns is a plain syscall, async-signal-safe, on an fd the
    // closure keeps open until exec.
    unsafe {
        cmd.pre_exec(move || {
            if libc::setns(f.as_raw_fd(), libc::CLONE_NEWNET) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    Ok(cmd)
}

/// Runs `f` on a short-lived thread inside the namespace (sockets and TUN
/// devices created there belong to it).
pub fn run_in<T: Send + 'static>(
    name: &str,
    f: impl FnOnce() -> Result<T> + Send + 'static,
) -> Result<T> {
    let name = name.to_string();
    std::thread::spawn(move || {
        enter(&name)?;
        f()
    })
    .join()
    .map_err(|_| anyhow::anyhow!("thread in namespace panicked"))?
}

/// Exclusive use of a namespace prefix by this process, recorded in
/// `/run/netem-tun/<prefix>.pid`. A record left by a dead process is taken over.
#[derive(Debug)]
pub struct PrefixLock {
    path: PathBuf,
}

impl PrefixLock {
    pub fn acquire(prefix: &str) -> Result<Self> {
        std::fs::create_dir_all(RUN_DIR).with_context(|| format!("creating {RUN_DIR}"))?;
        let path = Path::new(RUN_DIR).join(format!("{prefix}.pid"));
        for _ in 0..2 {
            match std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .open(&path)
            {
                Ok(mut f) => {
                    use std::io::Write;
                    writeln!(f, "{}", std::process::id())?;
                    return Ok(PrefixLock { path });
                }
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                    let owner: Option<i32> = std::fs::read_to_string(&path)
                        .ok()
                        .and_then(|s| s.trim().parse().ok());
                    match owner {
                        Some(pid) if pid_alive(pid) && pid != std::process::id() as i32 => bail!(
                            "namespace prefix {prefix:?} is in use by a running netem-tun \
                             (pid {pid}); pick another with --ns-prefix"
                        ),
                        _ => {
                            let _ = std::fs::remove_file(&path);
                        }
                    }
                }
                Err(e) => return Err(e).with_context(|| format!("creating {}", path.display())),
            }
        }
        bail!("could not lock prefix {prefix:?} ({})", path.display())
    }
}

impl Drop for PrefixLock {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

/// Checks that a prefix makes valid, short namespace names.
pub fn check_prefix(prefix: &str) -> Result<()> {
    let ok = !prefix.is_empty()
        && prefix.len() <= 32
        && prefix
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_');
    if !ok {
        bail!("--ns-prefix must be 1-32 characters of [A-Za-z0-9_-], got {prefix:?}");
    }
    Ok(())
}
