//! What every results file states about where it came from: the commit of
//! the code it measured and the machine it ran on.

use serde::{Deserialize, Serialize};
use std::process::Command;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Machine {
    pub kernel: String,
    pub cpu_model: String,
    /// Online CPUs of the machine.
    pub cores: usize,
    pub memory_gib: f64,
}

/// This machine, from /proc.
pub fn machine() -> Machine {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let cpu_model = field(&cpuinfo, "model name").unwrap_or_else(|| "unknown CPU".into());
    let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
    let kib: f64 = field(&meminfo, "MemTotal")
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or(0.0);
    Machine {
        kernel: std::fs::read_to_string("/proc/sys/kernel/osrelease")
            .map(|s| s.trim().to_string())
            .unwrap_or_default(),
        cpu_model,
        // Not `available_parallelism`: a benchmark may pin itself to one.
        // SAFETY: sysconf has no preconditions.
        cores: unsafe { libc::sysconf(libc::_SC_NPROCESSORS_ONLN) }.max(1) as usize,
        memory_gib: kib / 1024.0 / 1024.0,
    }
}

fn field(text: &str, key: &str) -> Option<String> {
    text.lines().find_map(|l| {
        let (k, v) = l.split_once(':')?;
        (k.trim() == key).then(|| v.trim().to_string())
    })
}

/// The commit of the working tree, with `+ uncommitted changes` when code
/// outside `bench/results/` differs from it: a figure must name the code
/// that made it.
pub fn source_commit() -> String {
    let git = |args: &[&str]| {
        Command::new("git")
            .args(args)
            .output()
            .ok()
            .filter(|o| o.status.success())
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
    };
    let Some(commit) = git(&["rev-parse", "--short=12", "HEAD"]) else {
        return "unknown (not a git checkout)".into();
    };
    match git(&[
        "status",
        "--porcelain",
        "--untracked-files=no",
        "--",
        ".",
        ":(exclude)bench/results",
    ]) {
        Some(s) if s.is_empty() => commit,
        Some(_) => format!("{commit} + uncommitted changes"),
        None => format!("{commit} (status unknown)"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn machine_and_commit_are_read() {
        let m = machine();
        assert!(m.cores >= 1 && m.memory_gib > 0.0 && !m.kernel.is_empty());
        let c = source_commit();
        // Tests run from the crate's folder inside the repository.
        assert!(c.chars().take(12).all(|ch| ch.is_ascii_hexdigit()), "{c}");
    }
}
