//! The agent process's CPU: the time it has used and the cores it is
//! allowed (the machine's, or fewer under a cgroup's CPU quota, v2
//! `cpu.max` or v1 `cpu.cfs_quota_us`, on its own cgroup or an ancestor).
//! The manager feeds them to an `agent_core::CpuMeter`. With
//! `edge.inference_cgroup`, the local inference workers join a cgroup of
//! their own ([`InferenceCgroup`]) and the meter reads their threads'
//! CPU time against that cgroup's quota instead.

use anyhow::{bail, Context};
use nix::time::ClockId;
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

/// CPU time the threads behind these clocks have used together (see
/// [`this_thread_clock`]); none once one of them has ended.
pub fn threads_used(clocks: &[ClockId]) -> Option<Duration> {
    clocks.iter().try_fold(Duration::ZERO, |sum, c| {
        nix::time::clock_gettime(*c)
            .ok()
            .map(|t| sum + Duration::from(t))
    })
}

/// The calling thread's CPU-time clock, readable from any thread of the
/// process while this one lives.
pub fn this_thread_clock() -> Option<ClockId> {
    let mut id: libc::clockid_t = 0;
    // SAFETY: pthread_self() is the calling thread, alive during the call;
    // `id` is a valid out-pointer.
    let rc = unsafe { libc::pthread_getcpuclockid(libc::pthread_self(), &mut id) };
    (rc == 0).then(|| ClockId::from_raw(id))
}

/// A cgroup that the local inference worker threads join, each on its
/// own (`edge.inference_cgroup`). Its CPU quota (or cpuset) bounds local
/// inference alone: a spent quota stalls the models, not the task API,
/// the decisions and the offloads that run beside them, nor the
/// gateway's other services when the cgroup sits beside theirs.
///
/// cgroup v1: any folder of a hierarchy (the `cpu` controller's for a
/// quota); the thread ids go to its `tasks`. cgroup v2: a threaded
/// cgroup inside the agent's own threaded subtree (`cgroup.type`
/// "threaded", below the agent's cgroup); the thread ids go to its
/// `cgroup.threads`. The agent needs write access to that file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InferenceCgroup {
    path: PathBuf,
    version: Version,
}

impl InferenceCgroup {
    /// The cgroup at `path`, which must exist (the operator or the unit
    /// creates it and sets its limits; the agent only joins it).
    pub fn open(path: &Path) -> anyhow::Result<InferenceCgroup> {
        if !path.is_dir() {
            bail!(
                "inference cgroup {}: no such folder (create it and set its limits first, \
                 e.g. mkdir /sys/fs/cgroup/cpu/edge-inference on cgroup v1)",
                path.display()
            );
        }
        let version = if path.join("cgroup.threads").is_file() {
            Version::V2
        } else if path.join("tasks").is_file() {
            Version::V1
        } else {
            bail!(
                "inference cgroup {}: not a cgroup folder (it has neither cgroup.threads, \
                 cgroup v2, nor tasks, cgroup v1)",
                path.display()
            );
        };
        Ok(InferenceCgroup {
            path: path.to_path_buf(),
            version,
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Moves the calling thread (only it) into the cgroup. Threads it
    /// starts later (libtorch's intra-op pool, created by the first
    /// parallel operation) are born there too.
    pub fn join_this_thread(&self) -> anyhow::Result<()> {
        let tid = nix::unistd::gettid();
        let file = match self.version {
            Version::V1 => "tasks",
            Version::V2 => "cgroup.threads",
        };
        let target = self.path.join(file);
        std::fs::write(&target, tid.to_string())
            .map_err(|e| anyhow::anyhow!("{e}{}", self.join_hint(&e)))
            .with_context(|| {
                format!(
                    "thread {} (tid {tid}) joining the inference cgroup: writing {}",
                    std::thread::current().name().unwrap_or("unnamed"),
                    target.display()
                )
            })
    }

    /// What to do about a failed join, where the error says.
    fn join_hint(&self, e: &std::io::Error) -> String {
        match (self.version, e.raw_os_error()) {
            (Version::V2, Some(libc::EOPNOTSUPP | libc::EINVAL)) => format!(
                " (cgroup v2 moves single threads only into a threaded cgroup of the \
                 process's own threaded subtree: make it a child of the agent's cgroup \
                 and write \"threaded\" to its cgroup.type; its type now: {})",
                std::fs::read_to_string(self.path.join("cgroup.type"))
                    .map(|t| t.trim().to_string())
                    .unwrap_or_else(|_| "unreadable".into())
            ),
            (_, Some(libc::EACCES | libc::EPERM)) => {
                " (the agent's user needs write access to that file)".into()
            }
            _ => String::new(),
        }
    }

    /// The cores the cgroup's CPU quota allows (the least along its
    /// ancestors), if any is set.
    pub fn quota_cores(&self) -> Option<f64> {
        quota_along(&self.path, self.version)
    }
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
    // Every cgroup folder, the hierarchy's root too, has cgroup.procs;
    // the walk ends where the hierarchy does (its mount point may be
    // anywhere: a container mounts the host's elsewhere).
    dir.ancestors()
        .take_while(|d| d.join("cgroup.procs").is_file())
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

/// Real cgroups for tests (they run as root).
#[cfg(test)]
pub(crate) mod testing {
    use std::path::PathBuf;
    use std::time::Duration;

    /// A v1 `cpu` cgroup of a test's own with a quota, removed on every
    /// path (once its threads have ended).
    pub struct TestCgroup {
        pub root: PathBuf,
        pub path: PathBuf,
    }

    impl TestCgroup {
        /// `None` (said loudly) on a host without a cgroup v1 `cpu`
        /// hierarchy: on pure cgroup v2 a threaded subtree needs the test
        /// process in a cgroup of its own, which a test cannot arrange.
        pub fn v1(name: &str, quota_us: u64, period_us: u64) -> Option<TestCgroup> {
            assert!(
                nix::unistd::geteuid().is_root(),
                "the inference cgroup tests create cgroups and need root; CI runs as root. \
                 Run them as root: sudo -E cargo test -p agent --lib"
            );
            let Some(root) = v1_cpu_root() else {
                eprintln!(
                    "SKIPPED: no cgroup v1 cpu hierarchy on this host; the inference cgroup \
                     is tested on cgroup v1 only"
                );
                return None;
            };
            let path = root.join(format!("edge-offload-test-{name}-{}", std::process::id()));
            let _ = std::fs::remove_dir(&path);
            std::fs::create_dir(&path).unwrap();
            let cg = TestCgroup { root, path };
            std::fs::write(cg.path.join("cpu.cfs_period_us"), period_us.to_string()).unwrap();
            std::fs::write(cg.path.join("cpu.cfs_quota_us"), quota_us.to_string()).unwrap();
            Some(cg)
        }

        /// Whether a `/proc/.../cgroup` text puts its thread in this cgroup.
        pub fn holds(&self, proc_cgroup: &str) -> bool {
            let rel = format!("/{}", self.path.strip_prefix(&self.root).unwrap().display());
            proc_cgroup.lines().any(|l| {
                l.split(':')
                    .nth(1)
                    .is_some_and(|c| c.split(',').any(|c| c == "cpu"))
                    && l.ends_with(&rel)
            })
        }

        /// Whether no thread is left in it, waiting a little for exits.
        pub fn empties(&self) -> bool {
            (0..50).any(|_| {
                let tasks = std::fs::read_to_string(self.path.join("tasks")).unwrap_or_default();
                tasks.trim().is_empty() || {
                    std::thread::sleep(Duration::from_millis(20));
                    false
                }
            })
        }
    }

    impl Drop for TestCgroup {
        fn drop(&mut self) {
            // Thread exits may lag their joins a little.
            for _ in 0..100 {
                if std::fs::remove_dir(&self.path).is_ok() || !self.path.exists() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            eprintln!("could not remove {}", self.path.display());
        }
    }

    /// The cgroup v1 `cpu` hierarchy's mount point, if one is mounted.
    fn v1_cpu_root() -> Option<PathBuf> {
        let mi = std::fs::read_to_string("/proc/self/mountinfo").ok()?;
        mi.lines().find_map(|l| {
            let (pre, post) = l.split_once(" - ")?;
            let mut post = post.split_whitespace();
            let (fs, _, opts) = (post.next()?, post.next()?, post.next()?);
            if fs != "cgroup" || !opts.split(',').any(|o| o == "cpu") {
                return None;
            }
            pre.split_whitespace().nth(4).map(PathBuf::from)
        })
    }
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
    fn an_inference_cgroup_must_be_a_cgroup_folder() {
        let missing = InferenceCgroup::open(Path::new("/nonexistent/edge-inference"))
            .unwrap_err()
            .to_string();
        assert!(missing.contains("no such folder"), "{missing}");
        let dir = std::env::temp_dir();
        let plain = InferenceCgroup::open(&dir).unwrap_err().to_string();
        assert!(plain.contains("not a cgroup folder"), "{plain}");
    }

    #[test]
    fn a_worker_thread_joins_the_inference_cgroup_alone() {
        let Some(cg) = testing::TestCgroup::v1("infer", 20_000, 100_000) else {
            return;
        };
        let infer = InferenceCgroup::open(&cg.path).unwrap();
        assert_eq!(infer.version, Version::V1);
        assert_eq!(infer.quota_cores(), Some(0.2));
        let (joined, spun) = std::thread::Builder::new()
            .name("infer-test".into())
            .spawn({
                let infer = infer.clone();
                move || {
                    infer.join_this_thread().unwrap();
                    let clock = this_thread_clock().expect("a thread CPU clock");
                    let before = threads_used(&[clock]).unwrap();
                    let mut x = 0u64;
                    while threads_used(&[clock]).unwrap() < before + Duration::from_millis(5) {
                        x = std::hint::black_box(x.wrapping_add(1));
                    }
                    let own = std::fs::read_to_string("/proc/thread-self/cgroup").unwrap();
                    (own, x)
                }
            })
            .unwrap()
            .join()
            .unwrap();
        assert!(
            cg.holds(&joined),
            "the thread is not in {}: {joined}",
            cg.path.display()
        );
        assert!(spun > 0);
        let main = std::fs::read_to_string("/proc/thread-self/cgroup").unwrap();
        assert!(
            !cg.holds(&main),
            "the rest of the process moved too: {main}"
        );
        assert!(
            cg.empties(),
            "the cgroup still holds threads after the thread ended"
        );
    }

    #[test]
    fn a_thread_that_cannot_join_says_where_and_why() {
        let Some(cg) = testing::TestCgroup::v1("gone", 20_000, 100_000) else {
            return;
        };
        let infer = InferenceCgroup::open(&cg.path).unwrap();
        std::fs::remove_dir(&cg.path).unwrap();
        let err = std::thread::Builder::new()
            .name("infer-7".into())
            .spawn(move || format!("{:#}", infer.join_this_thread().unwrap_err()))
            .unwrap()
            .join()
            .unwrap();
        assert!(err.contains("thread infer-7"), "{err}");
        assert!(err.contains("joining the inference cgroup"), "{err}");
        assert!(err.contains(&cg.path.display().to_string()), "{err}");
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
