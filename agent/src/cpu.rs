//! The agent process's CPU: the time it has used and the cores it is
//! allowed (the machine's, or fewer under a cgroup's CPU quota, v2
//! `cpu.max` or v1 `cpu.cfs_quota_us`, on its own cgroup or an ancestor).
//! The manager feeds them to an `agent_core::CpuMeter`.

use std::path::{Path, PathBuf};
use std::time::Duration;

/// CPU time this process has used (all its threads).
pub fn used() -> Option<Duration> {
    nix::time::clock_gettime(nix::time::ClockId::CLOCK_PROCESS_CPUTIME_ID)
        .ok()
        .map(Duration::from)
}

/// Cores this process may use: the CPUs it may run on, or its cgroup's
/// quota where that is less.
pub fn allowance_cores() -> f64 {
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get()) as f64;
    let own = std::fs::read_to_string("/proc/self/cgroup").unwrap_or_default();
    cgroup_dirs(&own)
        .iter()
        .filter_map(|(dir, version)| quota_along(dir, *version))
        .fold(cpus, f64::min)
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Version {
    V1,
    V2,
}

/// The folders of this process's cgroups that may hold a CPU quota, from
/// `/proc/self/cgroup`: the v2 one (pure v2 mounts it at /sys/fs/cgroup,
/// hybrid systems under unified/) and the v1 `cpu` controller's.
fn cgroup_dirs(proc_self_cgroup: &str) -> Vec<(PathBuf, Version)> {
    let mut dirs = Vec::new();
    for line in proc_self_cgroup.lines() {
        let mut f = line.splitn(3, ':');
        let (Some(_), Some(controllers), Some(path)) = (f.next(), f.next(), f.next()) else {
            continue;
        };
        let rel = path.trim().trim_start_matches('/');
        if controllers.is_empty() {
            for base in ["/sys/fs/cgroup", "/sys/fs/cgroup/unified"] {
                dirs.push((Path::new(base).join(rel), Version::V2));
            }
        } else if controllers.split(',').any(|c| c == "cpu") {
            for base in ["/sys/fs/cgroup/cpu", "/sys/fs/cgroup/cpu,cpuacct"] {
                dirs.push((Path::new(base).join(rel), Version::V1));
            }
        }
    }
    dirs
}

/// The least quota on `dir` and its ancestors (in cores), if any.
fn quota_along(dir: &Path, version: Version) -> Option<f64> {
    let read = |d: &Path, f: &str| std::fs::read_to_string(d.join(f)).ok();
    dir.ancestors()
        .take_while(|d| d.starts_with("/sys/fs/cgroup"))
        .filter_map(|d| match version {
            Version::V2 => read(d, "cpu.max").and_then(|s| cpu_max_cores(&s)),
            Version::V1 => {
                let quota = read(d, "cpu.cfs_quota_us")?;
                let period = read(d, "cpu.cfs_period_us")?;
                cfs_cores(&quota, &period)
            }
        })
        .reduce(f64::min)
}

/// Cores allowed by a cgroup v2 `cpu.max` ("quota period"; "max" = none).
pub fn cpu_max_cores(cpu_max: &str) -> Option<f64> {
    let mut it = cpu_max.split_whitespace();
    let quota: f64 = it.next()?.parse().ok()?;
    let period: f64 = it.next()?.parse().ok()?;
    (period > 0.0 && quota > 0.0).then(|| quota / period)
}

/// Cores allowed by cgroup v1's `cpu.cfs_quota_us` and `cpu.cfs_period_us`
/// (a quota of -1 = none).
fn cfs_cores(quota_us: &str, period_us: &str) -> Option<f64> {
    let quota: f64 = quota_us.trim().parse().ok()?;
    let period: f64 = period_us.trim().parse().ok()?;
    (period > 0.0 && quota > 0.0).then(|| quota / period)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quotas_parse_and_none_means_none() {
        assert_eq!(cpu_max_cores("50000 100000\n"), Some(0.5));
        assert_eq!(cpu_max_cores("max 100000\n"), None);
        assert_eq!(cpu_max_cores(""), None);
        assert_eq!(cfs_cores("25000\n", "100000\n"), Some(0.25));
        assert_eq!(cfs_cores("-1\n", "100000\n"), None);
        assert_eq!(cfs_cores("25000", "0"), None);
    }

    #[test]
    fn the_cgroup_folders_come_from_proc_self_cgroup() {
        let hybrid = "4:memory:/x\n1:cpu,cpuacct:/bench/edge\n0::/unit\n";
        assert_eq!(
            cgroup_dirs(hybrid),
            vec![
                ("/sys/fs/cgroup/cpu/bench/edge".into(), Version::V1),
                ("/sys/fs/cgroup/cpu,cpuacct/bench/edge".into(), Version::V1),
                ("/sys/fs/cgroup/unit".into(), Version::V2),
                ("/sys/fs/cgroup/unified/unit".into(), Version::V2),
            ]
        );
        assert!(cgroup_dirs("garbage\n").is_empty());
    }

    #[test]
    fn this_process_has_an_allowance_and_uses_cpu() {
        let cores = allowance_cores();
        let cpus = std::thread::available_parallelism().unwrap().get() as f64;
        assert!(cores > 0.0 && cores <= cpus, "{cores} of {cpus}");
        let before = used().expect("the process CPU clock");
        let mut x = 0u64;
        while used().unwrap() < before + Duration::from_millis(5) {
            x = std::hint::black_box(x.wrapping_add(1));
        }
        assert!(x > 0);
    }
}
