//! Thin wrappers around the system: privileges, `ip`, scheduling.

pub mod netns;
pub mod tun;

use anyhow::{bail, Context, Result};
use std::process::Command;

/// Fails with a clear message unless running as root.
pub fn require_root(what: &str) -> Result<()> {
    if !nix::unistd::geteuid().is_root() {
        bail!(
            "{what} must run as root: it creates network namespaces and TUN devices \
             (try: sudo {})",
            std::env::args().collect::<Vec<_>>().join(" ")
        );
    }
    Ok(())
}

/// Runs a command, returning its stdout; a failure carries its stderr.
pub fn run(program: &str, args: &[&str]) -> Result<String> {
    let out = Command::new(program)
        .args(args)
        .output()
        .with_context(|| format!("starting {program} (is it installed?)"))?;
    if !out.status.success() {
        bail!(
            "`{program} {}` failed ({}): {}",
            args.join(" "),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

pub fn ip(args: &[&str]) -> Result<String> {
    run("ip", args)
}

/// Puts the calling thread in SCHED_FIFO at `priority`. Returns false (and
/// leaves the thread as it was) where that is not permitted.
pub fn set_realtime(priority: i32) -> bool {
    let param = libc::sched_param {
        sched_priority: priority,
    };
    // SAFETY: plain syscall on the calling thread (pid 0) with a valid param.
    unsafe { libc::sched_setscheduler(0, libc::SCHED_FIFO, &param) == 0 }
}

/// Blocks SIGINT, SIGTERM and SIGHUP in the calling thread (and so in
/// every thread it starts later: call it before starting any) and calls
/// `f` from a dedicated thread for each one that arrives. Every program of
/// the lab and the benchmarks cleans up through this.
pub fn on_termination_signal(f: impl Fn(nix::sys::signal::Signal) + Send + 'static) -> Result<()> {
    use nix::sys::signal::{SigSet, Signal};
    let mut set = SigSet::empty();
    for s in [Signal::SIGINT, Signal::SIGTERM, Signal::SIGHUP] {
        set.add(s);
    }
    set.thread_block().context("blocking termination signals")?;
    std::thread::Builder::new()
        .name("signals".into())
        .spawn(move || {
            while let Ok(sig) = set.wait() {
                f(sig);
            }
        })
        .context("starting the signal thread")?;
    Ok(())
}

/// Whether a process with this pid exists.
pub fn pid_alive(pid: i32) -> bool {
    std::path::Path::new(&format!("/proc/{pid}")).exists()
}

/// The process a resource named `<prefix><pid>...` (namespace, cgroup,
/// lock file) belongs to: the digits right after `prefix`, with an
/// optional `-` between them.
pub fn owner_of(name: &str, prefix: &str) -> Option<i32> {
    let rest = name.strip_prefix(prefix)?;
    let rest = rest.strip_prefix('-').unwrap_or(rest);
    let end = rest
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(rest.len());
    rest[..end].parse().ok()
}

/// Whether `name` is `<prefix><pid>...` of a process that is gone: what a
/// killed run left behind.
pub fn orphaned(name: &str, prefix: &str) -> bool {
    owner_of(name, prefix).is_some_and(|pid| !pid_alive(pid))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn owners_are_read_from_names() {
        assert_eq!(owner_of("pchk123-edge", "pchk"), Some(123));
        assert_eq!(owner_of("povh-77", "povh"), Some(77));
        assert_eq!(owner_of("jchk9.pid", "jchk"), Some(9));
        assert_eq!(owner_of("4567-edge-2", ""), Some(4567));
        assert_eq!(owner_of("povh-idle-77", "povh"), None);
        assert_eq!(owner_of("other12", "pchk"), None);
        // This process is alive: nothing of it is an orphan.
        let me = std::process::id();
        assert!(!orphaned(&format!("sb{me}-edge"), "sb"));
    }
}
