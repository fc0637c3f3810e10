//! The edge agent's CPU quota: a cgroup of its own with the `cpu`
//! controller's bandwidth limit, cgroup v2 (`cpu.max`) where the controller
//! is on the unified hierarchy, else v1 (`cpu.cfs_quota_us`/`cpu.cfs_period_us`).
//! Children join at spawn (before exec), so nothing runs unconstrained.

use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// Folder (under the controller's root) holding the benchmark's cgroups.
pub const PARENT: &str = "edge-offload-bench";
/// The kernel's lower bound for both the CFS period and the quota.
pub const MIN_US: u64 = 1_000;
const MAX_PERIOD_US: u64 = 1_000_000;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Version {
    V1,
    V2,
}

/// Where the `cpu` controller is mounted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Controller {
    pub version: Version,
    pub root: PathBuf,
}

/// One mount from `/proc/self/mountinfo`: (fs type, mount point, super options).
fn mounts(mountinfo: &str) -> Vec<(String, PathBuf, String)> {
    mountinfo
        .lines()
        .filter_map(|l| {
            let (pre, post) = l.split_once(" - ")?;
            let mount_point = pre.split_whitespace().nth(4)?;
            let mut post = post.split_whitespace();
            let fstype = post.next()?;
            let _source = post.next()?;
            let opts = post.next().unwrap_or("");
            Some((fstype.into(), PathBuf::from(mount_point), opts.into()))
        })
        .collect()
}

/// Picks the `cpu` controller: on cgroup2 if `v2_controllers(mount)` lists
/// it there, else the v1 hierarchy mounted with the `cpu` option.
pub fn find_controller(
    mountinfo: &str,
    v2_controllers: impl Fn(&Path) -> Option<String>,
) -> Option<Controller> {
    let all = mounts(mountinfo);
    let v2 = all.iter().find(|(fs, mp, _)| {
        fs == "cgroup2"
            && v2_controllers(mp).is_some_and(|c| c.split_whitespace().any(|c| c == "cpu"))
    });
    if let Some((_, mp, _)) = v2 {
        return Some(Controller {
            version: Version::V2,
            root: mp.clone(),
        });
    }
    all.iter()
        .find(|(fs, _, opts)| fs == "cgroup" && opts.split(',').any(|o| o == "cpu"))
        .map(|(_, mp, _)| Controller {
            version: Version::V1,
            root: mp.clone(),
        })
}

/// The controller on this machine.
pub fn detect() -> Result<Controller> {
    let mi = std::fs::read_to_string("/proc/self/mountinfo").context("reading mountinfo")?;
    find_controller(&mi, |mp| {
        std::fs::read_to_string(mp.join("cgroup.controllers")).ok()
    })
    .context(
        "no cgroup cpu controller is mounted (neither cgroup2 with `cpu` in \
         cgroup.controllers nor a cgroup v1 `cpu` hierarchy)",
    )
}

/// Quota and period (us) for a share of CPUs. The period is `period_us`,
/// stretched where the quota would fall below the kernel's 1 ms minimum.
pub fn quota(share: f64, period_us: u64) -> (u64, u64) {
    let mut period = period_us.clamp(MIN_US, MAX_PERIOD_US);
    if share * (period as f64) < MIN_US as f64 {
        period = ((MIN_US as f64 / share).ceil() as u64).min(MAX_PERIOD_US);
    }
    let quota = ((share * period as f64).round() as u64).max(MIN_US);
    (quota, period)
}

/// Throttling counters from `cpu.stat`.
#[derive(Debug, Clone, Copy, PartialEq, Default, Serialize, Deserialize)]
pub struct Throttling {
    pub periods: u64,
    pub throttled_periods: u64,
    pub throttled_ms: f64,
}

pub fn parse_cpu_stat(text: &str) -> Throttling {
    let mut t = Throttling::default();
    for line in text.lines() {
        let mut w = line.split_whitespace();
        let (Some(k), Some(v)) = (w.next(), w.next().and_then(|v| v.parse::<u64>().ok())) else {
            continue;
        };
        match k {
            "nr_periods" => t.periods = v,
            "nr_throttled" => t.throttled_periods = v,
            "throttled_time" => t.throttled_ms = v as f64 / 1e6, // v1: ns
            "throttled_usec" => t.throttled_ms = v as f64 / 1e3, // v2: us
            _ => {}
        }
    }
    t
}

/// A cgroup with a CPU limit, removed on drop (after its processes are gone).
#[derive(Debug)]
pub struct CpuCgroup {
    pub path: PathBuf,
    pub version: Version,
    pub quota_us: u64,
    pub period_us: u64,
}

fn write(path: &Path, value: &str) -> Result<()> {
    std::fs::write(path, value).with_context(|| format!("writing {value:?} to {}", path.display()))
}

impl CpuCgroup {
    pub fn create(ctl: &Controller, name: &str, share: f64, period_us: u64) -> Result<CpuCgroup> {
        let parent = ctl.root.join(PARENT);
        std::fs::create_dir_all(&parent)
            .with_context(|| format!("creating {}", parent.display()))?;
        if ctl.version == Version::V2 {
            // The controller must be enabled on every level above the leaf.
            write(&ctl.root.join("cgroup.subtree_control"), "+cpu")?;
            write(&parent.join("cgroup.subtree_control"), "+cpu")?;
        }
        let path = parent.join(name);
        if path.exists() {
            remove_dir(&path, Duration::from_secs(2))?;
        }
        std::fs::create_dir(&path).with_context(|| format!("creating {}", path.display()))?;
        CpuCgroup::unlimited(path, ctl.version).limit(share, period_us)
    }

    /// A cgroup below this one for some threads of its process (the edge
    /// agent's inference workers join it themselves, `--inference-cgroup`),
    /// limited by both quotas. On v2 it is threaded: this one becomes the
    /// root of a threaded subtree, which must happen while it is empty.
    pub fn create_threaded_child(
        &self,
        name: &str,
        share: f64,
        period_us: u64,
    ) -> Result<CpuCgroup> {
        let path = self.path.join(name);
        std::fs::create_dir(&path).with_context(|| format!("creating {}", path.display()))?;
        // Removed on drop, should what follows fail.
        let child = CpuCgroup::unlimited(path, self.version);
        if self.version == Version::V2 {
            write(&child.path.join("cgroup.type"), "threaded")?;
            write(&self.path.join("cgroup.subtree_control"), "+cpu")?;
        }
        child.limit(share, period_us)
    }

    fn unlimited(path: PathBuf, version: Version) -> CpuCgroup {
        CpuCgroup {
            path,
            version,
            quota_us: 0,
            period_us: 0,
        }
    }

    /// Sets the quota for `share` (on error the cgroup is dropped, so
    /// removed).
    fn limit(mut self, share: f64, period_us: u64) -> Result<CpuCgroup> {
        (self.quota_us, self.period_us) = quota(share, period_us);
        let (q, p) = (self.quota_us, self.period_us);
        match self.version {
            Version::V2 => write(&self.path.join("cpu.max"), &format!("{q} {p}"))?,
            Version::V1 => {
                // Period first: the kernel checks the quota against it.
                write(&self.path.join("cpu.cfs_period_us"), &p.to_string())?;
                write(&self.path.join("cpu.cfs_quota_us"), &q.to_string())?;
            }
        }
        Ok(self)
    }

    pub fn describe(&self) -> String {
        let v = match self.version {
            Version::V1 => "cgroup v1 cpu (cfs_quota_us/cfs_period_us)",
            Version::V2 => "cgroup v2 cpu.max",
        };
        format!(
            "{v}: {} us every {} us ({:.2} CPU)",
            self.quota_us,
            self.period_us,
            self.quota_us as f64 / self.period_us as f64
        )
    }

    /// Makes `cmd`'s process join this cgroup between fork and exec.
    pub fn join_at_spawn(&self, cmd: &mut std::process::Command) -> Result<()> {
        use std::os::unix::process::CommandExt;
        let procs = self.path.join("cgroup.procs");
        let file = std::fs::OpenOptions::new()
            .write(true)
            .open(&procs)
            .with_context(|| format!("opening {}", procs.display()))?;
        // The child needs the fd until exec; the closure owns the file.
        let file = std::sync::Arc::new(file);
        // SAFETY: the closure only calls async-signal-safe functions (getpid,
        // write) on a stack buffer, as required between fork and exec.
        unsafe {
            cmd.pre_exec(move || {
                let mut buf = [0u8; 20];
                let mut n = libc::getpid() as u64;
                let mut i = buf.len();
                loop {
                    i -= 1;
                    buf[i] = b'0' + (n % 10) as u8;
                    n /= 10;
                    if n == 0 {
                        break;
                    }
                }
                let len = buf.len() - i;
                let rc = libc::write(file.as_raw_fd(), buf[i..].as_ptr().cast(), len);
                if rc != len as isize {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        Ok(())
    }

    pub fn throttling(&self) -> Throttling {
        std::fs::read_to_string(self.path.join("cpu.stat"))
            .map(|t| parse_cpu_stat(&t))
            .unwrap_or_default()
    }
}

impl Drop for CpuCgroup {
    fn drop(&mut self) {
        if let Err(e) = remove_dir(&self.path, Duration::from_secs(5)) {
            eprintln!("scenario-bench: {e:#}");
        }
    }
}

/// rmdir, retried while exiting processes still count as members.
pub fn remove_dir(path: &Path, wait: Duration) -> Result<()> {
    let t0 = Instant::now();
    loop {
        match std::fs::remove_dir(path) {
            Ok(()) => return Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
            Err(e) if t0.elapsed() < wait => {
                let _ = e;
                std::thread::sleep(Duration::from_millis(50));
            }
            Err(e) => bail!("removing cgroup {}: {e}", path.display()),
        }
    }
}

/// Removes empty cgroups left by an earlier run that was killed (names
/// start with the owner's pid: `<pid>-...`).
pub fn sweep_stale(ctl: &Controller) {
    let Ok(dir) = std::fs::read_dir(ctl.root.join(PARENT)) else {
        return;
    };
    for e in dir.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        if jitter_lab::sys::orphaned(&name, "") {
            let _ = std::fs::remove_dir(e.path());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const V1: &str = "\
31 23 0:28 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755
32 31 0:29 / /sys/fs/cgroup/cpu rw,relatime - cgroup cgroup rw,cpu
33 31 0:30 / /sys/fs/cgroup/cpuacct rw,relatime - cgroup cgroup rw,cpuacct
41 31 0:38 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw
";

    #[test]
    fn finds_v1_cpu_when_v2_lacks_it() {
        let c = find_controller(V1, |_| Some("hugetlb\n".into())).unwrap();
        assert_eq!(c.version, Version::V1);
        assert_eq!(c.root, PathBuf::from("/sys/fs/cgroup/cpu"));
        let joint = V1.replace("rw,cpu\n", "rw,cpu,cpuacct\n");
        assert_eq!(find_controller(&joint, |_| None).unwrap().root, c.root);
    }

    #[test]
    fn prefers_v2_with_cpu() {
        let c = find_controller(V1, |mp| {
            (mp == Path::new("/sys/fs/cgroup/unified")).then(|| "cpuset cpu io memory".into())
        })
        .unwrap();
        assert_eq!(c.version, Version::V2);
        assert_eq!(c.root, PathBuf::from("/sys/fs/cgroup/unified"));
        let none = "31 23 0:28 / /sys/fs/cgroup rw - tmpfs tmpfs rw\n";
        assert_eq!(find_controller(none, |_| None), None);
        // "cpuacct" or "cpuset" alone is not "cpu".
        let no_cpu = V1.replace("rw,cpu\n", "rw,cpuset\n");
        assert_eq!(find_controller(&no_cpu, |_| None), None);
    }

    #[test]
    fn quota_respects_the_kernel_minimum() {
        assert_eq!(quota(0.25, 100_000), (25_000, 100_000));
        assert_eq!(quota(0.25, 1_000), (1_000, 4_000));
        assert_eq!(quota(0.1, 5_000), (1_000, 10_000));
        assert_eq!(quota(2.0, 10_000), (20_000, 10_000));
        assert_eq!(quota(0.0005, 10_000), (1_000, 1_000_000));
    }

    #[test]
    fn parses_both_cpu_stat_formats() {
        let v1 = "nr_periods 120\nnr_throttled 30\nthrottled_time 4500000000\nnr_bursts 0\n";
        assert_eq!(
            parse_cpu_stat(v1),
            Throttling {
                periods: 120,
                throttled_periods: 30,
                throttled_ms: 4500.0
            }
        );
        let v2 = "usage_usec 10\nnr_periods 5\nnr_throttled 2\nthrottled_usec 1500\n";
        assert_eq!(parse_cpu_stat(v2).throttled_ms, 1.5);
    }
}
