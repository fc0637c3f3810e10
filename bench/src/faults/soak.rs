//! The soak run's samples: resident memory and open file descriptors of
//! the edge agent and the cloud service, read from /proc while the load runs.

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct SoakPoint {
    /// Seconds after the workload started.
    pub t_s: f64,
    pub edge_rss_mib: f64,
    pub edge_fds: usize,
    pub cloud_rss_mib: f64,
    pub cloud_fds: usize,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SoakResult {
    pub seconds: f64,
    /// The soak scenario's description.
    #[serde(default)]
    pub scenario: String,
    pub tasks_per_s: f64,
    pub policy: String,
    pub row: super::FaultRow,
    pub offloaded: usize,
    pub points: Vec<SoakPoint>,
}

/// Resident set size (MiB) and open descriptors of a process.
pub fn sample(pid: u32) -> Result<(f64, usize)> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .with_context(|| format!("reading /proc/{pid}/status"))?;
    let rss_kib = vm_rss_kib(&status).with_context(|| format!("no VmRSS for {pid}"))?;
    let fds = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .with_context(|| format!("listing /proc/{pid}/fd"))?
        .count();
    Ok((rss_kib as f64 / 1024.0, fds))
}

fn vm_rss_kib(status: &str) -> Option<u64> {
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|n| n.parse().ok())
}

impl SoakResult {
    /// Growth over the second half of the run, where a leak shows as a
    /// slope and warm-up no longer does: (edge, cloud) MiB and fds from the
    /// first to the last point of that half.
    pub fn second_half_growth(&self) -> Option<((f64, i64), (f64, i64))> {
        let mid = self.seconds / 2.0;
        let half: Vec<&SoakPoint> = self.points.iter().filter(|p| p.t_s >= mid).collect();
        let (a, b) = (half.first()?, half.last()?);
        Some((
            (
                b.edge_rss_mib - a.edge_rss_mib,
                b.edge_fds as i64 - a.edge_fds as i64,
            ),
            (
                b.cloud_rss_mib - a.cloud_rss_mib,
                b.cloud_fds as i64 - a.cloud_fds as i64,
            ),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_rss_from_status() {
        let s = "Name:\tagent\nVmPeak:\t 9000 kB\nVmRSS:\t  123456 kB\nThreads: 9\n";
        assert_eq!(vm_rss_kib(s), Some(123_456));
        assert_eq!(vm_rss_kib("Name: x\n"), None);
        let (rss, fds) = sample(std::process::id()).unwrap();
        assert!(rss > 1.0 && fds >= 3, "{rss} {fds}");
    }

    #[test]
    fn growth_is_measured_over_the_second_half() {
        let p = |t_s: f64, e: f64, fds: usize| SoakPoint {
            t_s,
            edge_rss_mib: e,
            edge_fds: fds,
            cloud_rss_mib: 100.0,
            cloud_fds: 20,
        };
        let r = SoakResult {
            seconds: 100.0,
            scenario: String::new(),
            tasks_per_s: 1.0,
            policy: "x".into(),
            row: super::super::FaultRow {
                fault: "soak".into(),
                sent: 0,
                results: 0,
                errors: 0,
                lost: 0,
                recovery_s: None,
                worst_inflight_s: None,
            },
            offloaded: 0,
            points: vec![p(0.0, 10.0, 5), p(50.0, 60.0, 30), p(99.0, 64.0, 28)],
        };
        let ((edge_mib, edge_fds), (cloud_mib, cloud_fds)) = r.second_half_growth().unwrap();
        assert!((edge_mib - 4.0).abs() < 1e-9);
        assert_eq!((edge_fds, cloud_fds), (-2, 0));
        assert_eq!(cloud_mib, 0.0);
    }
}
