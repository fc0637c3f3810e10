//! Overhead of the passive probe on the data path: TCP throughput (iperf3)
//! between two namespaces joined by a veth pair, with and without the
//! probe attached, in alternating rounds of one run (off/on, then on/off,
//! so drift in the machine's load falls on both sides alike).
//!
//! "With" means all of it, as the agent runs it: sock_ops on the cgroup
//! both iperf3 ends run in (this process joins it, they inherit it), tc
//! ingress and egress on the client's veth, the two tracepoints, the
//! iperf3 server's address in the filter (so every packet is parsed and
//! matched, every ACK yields a sock_ops sample), and the ring-buffer reader
//! feeding an estimator as the monitor does. Rounds "with" also give the
//! rate of records the reader sustained, and its losses. A last round
//! with many small-message streams pushes the record rate up to see where
//! the reader stands.

use crate::ebpf::detach::{self, Detached};
use crate::support::cleanup::Cleanup;
use crate::support::probe_cgroup::CgroupGuard;
use agent_core::ProbeEvent;
use agent_core::{LinkConfig, LinkEstimator};
use agent_probe::{EbpfProbe, EbpfProbeConfig};
use anyhow::{bail, Context, Result};
use jitter_lab::sys::{self, netns};
use serde::Serialize;
use std::net::{IpAddr, Ipv4Addr};
use std::path::PathBuf;
use std::process::{Child, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::mpsc;

pub const PREFIX: &str = "povh";
/// Cgroup of the runs that keep sock_ops away from the flows.
const IDLE_PREFIX: &str = "povh-idle";
const PORT: &str = "5201";

#[derive(Debug, Clone)]
pub struct OverheadOptions {
    /// Pairs of rounds (one without, one with the probe).
    pub rounds: u32,
    /// Seconds per iperf3 run.
    pub seconds: u32,
    /// Parallel streams per iperf3 run.
    pub streams: u32,
    /// Seconds of the small-message stress round (0: none).
    pub stress_seconds: u32,
    /// Which programs see the traffic in the rounds with the probe.
    pub parts: Parts,
    pub object: Option<PathBuf>,
    /// How [`place`] set up this process (reported).
    pub placement: Placement,
}

/// Where the benchmark runs: one CPU for the whole data path and the
/// probe, at the highest priority.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Placement {
    /// The CPU this process and its children are pinned to, if pinning worked.
    pub cpu: Option<usize>,
    /// Its nice value, if raising the priority worked.
    pub nice: Option<i32>,
}

/// Pins the calling thread (and so every thread and child it starts
/// later) to `cpu` and raises its priority to nice -20.
///
/// Why one CPU: with two, the iperf3 client and server sometimes share a
/// CPU (about 20 Gbit/s on a veth pair here) and sometimes not (about 4-5),
/// so unpinned rounds measure the scheduler's placement, which the probe's
/// reader thread perturbs. On one CPU every cost of the probe (programs in
/// the packets' path, the reader) competes with the traffic: the single-core
/// gateway, the least favourable case. The priority keeps other work on
/// the machine from deciding the variance.
pub fn place(cpu: usize) -> Placement {
    let mut set = nix::sched::CpuSet::new();
    let pinned = set.set(cpu).is_ok()
        && nix::sched::sched_setaffinity(nix::unistd::Pid::from_raw(0), &set).is_ok();
    // SAFETY: plain syscalls on the calling thread.
    let niced = unsafe { libc::setpriority(libc::PRIO_PROCESS, 0, -20) } == 0;
    Placement {
        cpu: pinned.then_some(cpu),
        nice: niced.then_some(-20),
    }
}

/// What the iperf3 flows pass through in the rounds "with". The other
/// programs are still loaded, on an idle cgroup or on no interface.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Parts {
    /// Everything, as the agent runs it.
    All,
    /// tc only (sock_ops on a cgroup without the flows).
    Tc,
    /// sock_ops only (no tc attachment).
    Sockops,
}

impl Default for OverheadOptions {
    fn default() -> Self {
        OverheadOptions {
            rounds: 5,
            seconds: 5,
            streams: 1,
            stress_seconds: 5,
            parts: Parts::All,
            object: None,
            placement: Placement::default(),
        }
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct Round {
    pub index: u32,
    pub probe: bool,
    pub gbit_s: f64,
    /// Retransmitted segments iperf3 reports (should be 0 on a veth).
    pub retransmits: u64,
    /// Client and server host CPU use (percent of one core) per iperf3.
    pub cpu_client_pct: f64,
    pub cpu_server_pct: f64,
    /// With the probe: what its reader took out of the ring buffer.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reader: Option<ReaderStats>,
}

#[derive(Debug, Clone, Serialize)]
pub struct ReaderStats {
    pub records: u64,
    pub records_per_s: f64,
    pub sockops_rtt: u64,
    pub tc_tcp_ts_rtt: u64,
    /// Events the consumer (an estimator) received.
    pub events_consumed: u64,
    pub kernel_drops: u64,
    pub channel_drops: u64,
    /// CPU time of this process (the reader, the estimator; the main
    /// thread only waits for iperf3) in percent of one CPU.
    pub reader_cpu_pct: f64,
}

#[derive(Debug, Clone, Serialize)]
pub struct StressRound {
    pub streams: u32,
    pub message_bytes: u32,
    pub seconds: u32,
    pub gbit_s: f64,
    pub reader: ReaderStats,
}

#[derive(Debug, Clone, Serialize)]
pub struct ProgramCost {
    pub name: String,
    pub runs_per_s: f64,
    pub ns_per_run: f64,
    /// Percent of one CPU.
    pub cpu_pct: f64,
}

#[derive(Debug, Clone, Serialize)]
pub struct ProgramCostRound {
    pub gbit_s: f64,
    pub cpu_pct_total: f64,
    pub programs: Vec<ProgramCost>,
}

/// (name, run time ns, run count) of the loaded programs among `ids`.
fn program_stats(ids: &[u32]) -> Vec<(String, u64, u64)> {
    aya::programs::loaded_programs()
        .filter_map(Result::ok)
        .filter(|p| ids.contains(&p.id()))
        .map(|p| {
            (
                p.name_as_str().unwrap_or("?").to_string(),
                p.run_time().as_nanos() as u64,
                p.run_count(),
            )
        })
        .collect()
}

#[derive(Debug, Clone, Serialize)]
pub struct OverheadReport {
    pub rounds: Vec<Round>,
    pub mean_without_gbit_s: f64,
    pub mean_with_gbit_s: f64,
    /// mean with / mean without.
    pub ratio: f64,
    /// Median over the pairs of (with / without) of the same pair.
    pub median_pair_ratio: f64,
    /// Mean of the pairs' ratios and its 95 % confidence interval (t).
    pub mean_pair_ratio: f64,
    pub pair_ratio_ci95: [f64; 2],
    /// (1 - ratio) in percent.
    pub throughput_loss_pct: f64,
    /// Records per second the reader sustained in the rounds with the probe.
    pub reader_records_per_s_mean: f64,
    pub kernel_drops: u64,
    pub channel_drops: u64,
    pub stress: Option<StressRound>,
    /// The programs' own CPU time under the same load (separate round:
    /// the kernel's run-time statistics cost time themselves).
    pub program_cost: ProgramCostRound,
    pub parts: Parts,
    pub placement: Placement,
    pub attachments: Vec<String>,
    /// Every probe of the run left nothing behind.
    pub detached: bool,
    pub last_detach: Option<Detached>,
    pub machine: Machine,
    pub iperf3: String,
    pub duration_s: f64,
}

#[derive(Debug, Clone, Serialize)]
pub struct Machine {
    /// The code measured (`support::stamp::source_commit`).
    pub commit: String,
    pub kernel: String,
    pub cpus: usize,
    pub cpu_model: String,
    pub loadavg_start: String,
    pub loadavg_end: String,
}

fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_default()
}

fn machine(loadavg_start: String) -> Machine {
    let cpu_model = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|c| {
            c.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split(':').nth(1))
                .map(|s| s.trim().to_string())
        })
        .unwrap_or_default();
    Machine {
        commit: crate::support::stamp::source_commit(),
        kernel: sys::run("uname", &["-r"])
            .unwrap_or_default()
            .trim()
            .to_string(),
        // Online CPUs of the machine (this process is pinned to one of them).
        // SAFETY: sysconf has no preconditions.
        cpus: unsafe { libc::sysconf(libc::_SC_NPROCESSORS_ONLN) }.max(0) as usize,
        cpu_model,
        loadavg_start,
        loadavg_end: loadavg(),
    }
}

/// Two namespaces `a` and `b` joined by veth `va` <-> `vb`, one address each.
struct Pair {
    a: String,
    b: String,
    va: String,
    addr_b: Ipv4Addr,
}

fn build_pair(cleanup: &Cleanup) -> Result<Pair> {
    let pid = std::process::id();
    let prefix = format!("{PREFIX}{pid}");
    let pair = Pair {
        a: format!("{prefix}-a"),
        b: format!("{prefix}-b"),
        va: "ovh0".into(),
        // A pair of our own in 198.19.0.0/16: the tracepoints see every
        // namespace, and no other run's flows should reach the filter.
        addr_b: Ipv4Addr::new(
            198,
            19,
            200 + (pid % 50) as u8,
            ((pid / 50) % 250) as u8 + 2,
        ),
    };
    let addr_a = Ipv4Addr::from(u32::from(pair.addr_b) ^ 1);
    for ns in [&pair.a, &pair.b] {
        netns::create(ns)?;
        let ns = ns.clone();
        cleanup.push(move || {
            if let Err(e) = netns::delete(&ns) {
                eprintln!("ebpf-overhead: removing {ns}: {e:#}");
            }
        });
    }
    sys::ip(&[
        "-n", &pair.a, "link", "add", &pair.va, "type", "veth", "peer", "name", "ovh1", "netns",
        &pair.b,
    ])?;
    for (ns, dev, me, peer) in [
        (&pair.a, pair.va.as_str(), addr_a, pair.addr_b),
        (&pair.b, "ovh1", pair.addr_b, addr_a),
    ] {
        sys::ip(&["-n", ns, "link", "set", "lo", "up"])?;
        sys::ip(&["-n", ns, "addr", "add", &format!("{me}/32"), "dev", dev])?;
        sys::ip(&["-n", ns, "link", "set", dev, "up"])?;
        sys::ip(&["-n", ns, "route", "add", &format!("{peer}/32"), "dev", dev])?;
    }
    Ok(pair)
}

fn iperf3_server(pair: &Pair) -> Result<Child> {
    let child = netns::command(&pair.b, "iperf3")?
        .args(["-s", "-p", PORT, "-B"])
        .arg(pair.addr_b.to_string())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .context("starting iperf3 (apt package iperf3)")?;
    // It listens within a few milliseconds; connecting too early is refused.
    std::thread::sleep(Duration::from_millis(300));
    Ok(child)
}

struct Iperf {
    gbit_s: f64,
    retransmits: u64,
    cpu_client_pct: f64,
    cpu_server_pct: f64,
}

fn iperf3(
    pair: &Pair,
    seconds: u32,
    streams: u32,
    len: Option<u32>,
    nodelay: bool,
) -> Result<Iperf> {
    let mut c = netns::command(&pair.a, "iperf3")?;
    c.args(["-J", "-p", PORT, "-c"])
        .arg(pair.addr_b.to_string())
        .args(["-t", &seconds.to_string(), "-P", &streams.to_string()]);
    if let Some(l) = len {
        c.args(["-l", &l.to_string()]);
    }
    if nodelay {
        c.arg("-N");
    }
    let out = c.output().context("running iperf3")?;
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).with_context(|| {
        format!(
            "iperf3 printed no JSON ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        )
    })?;
    if let Some(e) = v["error"].as_str() {
        bail!("iperf3: {e}");
    }
    let end = &v["end"];
    let bps = end["sum_received"]["bits_per_second"]
        .as_f64()
        .context("iperf3 JSON without end.sum_received")?;
    Ok(Iperf {
        gbit_s: bps / 1e9,
        retransmits: end["sum_sent"]["retransmits"].as_u64().unwrap_or(0),
        cpu_client_pct: end["cpu_utilization_percent"]["host_total"]
            .as_f64()
            .unwrap_or(0.0),
        cpu_server_pct: end["cpu_utilization_percent"]["remote_total"]
            .as_f64()
            .unwrap_or(0.0),
    })
}

/// The cgroup the iperf3 flows run in, and an empty one (sock_ops sees nothing there).
struct Cgroups {
    flows: Arc<CgroupGuard>,
    idle: Arc<CgroupGuard>,
}

/// A probe attached for one round, its reader feeding an estimator.
struct Attached {
    probe: EbpfProbe,
    rt: tokio::runtime::Runtime,
    consumed: Arc<AtomicU64>,
}

fn attach(pair: &Pair, cgs: &Cgroups, parts: Parts, object: Option<PathBuf>) -> Result<Attached> {
    let cfg = EbpfProbeConfig {
        object,
        cgroup: Some(match parts {
            Parts::Tc => cgs.idle.path.clone(),
            _ => cgs.flows.path.clone(),
        }),
        tc_interface: (parts != Parts::Sockops).then(|| pair.va.clone()),
        endpoints: vec![IpAddr::V4(pair.addr_b)],
        state_dir: std::env::temp_dir().join(format!("{PREFIX}{}-state", std::process::id())),
        ..EbpfProbeConfig::default()
    };
    let mut probe = netns::run_in(&pair.a, move || {
        EbpfProbe::load(&cfg).map_err(|e| anyhow::anyhow!("loading the eBPF probe: {e}"))
    })?;
    // The agent's monitor runs on a small runtime too.
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()?;
    let rx = {
        let _enter = rt.enter();
        probe
            .start_reader()
            .map_err(|e| anyhow::anyhow!("starting the reader: {e}"))?
    };
    let consumed = Arc::new(AtomicU64::new(0));
    rt.spawn(consume(rx, Arc::clone(&consumed)));
    Ok(Attached {
        probe,
        rt,
        consumed,
    })
}

async fn consume(mut rx: mpsc::Receiver<ProbeEvent>, consumed: Arc<AtomicU64>) {
    let mut est = LinkEstimator::new(LinkConfig::default());
    while let Some(ev) = rx.recv().await {
        est.on_event(&ev);
        consumed.fetch_add(1, Ordering::Relaxed);
    }
}

/// Stops the reader, detaches, and checks that nothing is left.
/// User and system CPU time of this process so far (every thread, no children).
fn self_cpu() -> Duration {
    // SAFETY: getrusage fills the struct it is given.
    let ru = unsafe {
        let mut ru: libc::rusage = std::mem::zeroed();
        libc::getrusage(libc::RUSAGE_SELF, &mut ru);
        ru
    };
    let tv = |t: libc::timeval| Duration::new(t.tv_sec as u64, t.tv_usec as u32 * 1000);
    tv(ru.ru_utime) + tv(ru.ru_stime)
}

fn detach_all(att: Attached, pair: &Pair, seconds: f64, cpu: Duration) -> (ReaderStats, Detached) {
    let s = att.probe.stats();
    let ids = att.probe.program_ids().to_vec();
    let consumed = att.consumed.load(Ordering::Relaxed);
    drop(att.probe);
    drop(att.rt);
    let detached = detach::verify(ids, &pair.a, &pair.va);
    (
        ReaderStats {
            records: s.records,
            records_per_s: (s.records as f64 / seconds).round(),
            sockops_rtt: s.sockops_rtt,
            tc_tcp_ts_rtt: s.tc_tcp_ts_rtt,
            events_consumed: consumed,
            kernel_drops: s.kernel_drops,
            channel_drops: s.channel_drops,
            reader_cpu_pct: r3(cpu.as_secs_f64() / seconds * 100.0),
        },
        detached,
    )
}

fn mean(v: &[f64]) -> f64 {
    v.iter().sum::<f64>() / v.len().max(1) as f64
}

fn median(v: &[f64]) -> f64 {
    let mut v = v.to_vec();
    v.sort_by(|a, b| a.total_cmp(b));
    crate::scenarios::stats::percentile(&v, 0.5).unwrap_or(0.0)
}

/// Half width of the 95 % confidence interval of the mean (Student's t).
fn ci95_half_width(v: &[f64]) -> f64 {
    const T975: [f64; 30] = [
        12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228, 2.201, 2.179, 2.160,
        2.145, 2.131, 2.120, 2.110, 2.101, 2.093, 2.086, 2.080, 2.074, 2.069, 2.064, 2.060, 2.056,
        2.052, 2.048, 2.045, 2.042,
    ];
    let n = v.len();
    if n < 2 {
        return f64::NAN;
    }
    let m = mean(v);
    let sd = (v.iter().map(|x| (x - m).powi(2)).sum::<f64>() / (n - 1) as f64).sqrt();
    T975.get(n - 2).copied().unwrap_or(1.96) * sd / (n as f64).sqrt()
}

fn r3(x: f64) -> f64 {
    (x * 1e3).round() / 1e3
}

pub fn run(
    opts: &OverheadOptions,
    cleanup: &Cleanup,
    progress: &dyn Fn(&str),
) -> Result<OverheadReport> {
    sys::require_root("ebpf-overhead")?;
    let started = Instant::now();
    let load_start = loadavg();
    sweep_stale();
    let iperf_version = sys::run("iperf3", &["--version"])
        .context("iperf3 is not installed (apt package iperf3)")?
        .lines()
        .next()
        .unwrap_or_default()
        .to_string();
    let cgs = Cgroups {
        flows: Arc::new(CgroupGuard::create(PREFIX)?),
        idle: Arc::new(CgroupGuard::create(IDLE_PREFIX)?),
    };
    for cg in [&cgs.flows, &cgs.idle] {
        let cg = Arc::clone(cg);
        cleanup.push(move || {
            if let Err(e) = cg.remove() {
                eprintln!("ebpf-overhead: {e:#}");
            }
        });
    }
    let state = std::env::temp_dir().join(format!("{PREFIX}{}-state", std::process::id()));
    cleanup.push(move || {
        let _ = std::fs::remove_dir_all(&state);
    });
    // iperf3 on both ends inherits the cgroup sock_ops is attached to.
    cgs.flows.join_self()?;
    let pair = build_pair(cleanup)?;
    let server = Arc::new(Mutex::new(iperf3_server(&pair)?));
    {
        let server = Arc::clone(&server);
        cleanup.push(move || {
            let mut s = server.lock().unwrap_or_else(|e| e.into_inner());
            let _ = s.kill();
            let _ = s.wait();
        });
    }
    progress("warm-up: 2 s without the probe (not counted)");
    iperf3(&pair, 2, opts.streams, None, false)?;

    let mut rounds = Vec::new();
    let mut attachments = Vec::new();
    let mut all_clean = true;
    let mut last_detach = None;
    for pair_no in 0..opts.rounds {
        let order = if pair_no % 2 == 0 {
            [false, true]
        } else {
            [true, false]
        };
        for with in order {
            let index = rounds.len() as u32;
            let att = if with {
                let a = attach(&pair, &cgs, opts.parts, opts.object.clone())?;
                attachments = a.probe.attachments().to_vec();
                Some(a)
            } else {
                None
            };
            let cpu0 = self_cpu();
            let run = iperf3(&pair, opts.seconds, opts.streams, None, false);
            let cpu = self_cpu() - cpu0;
            let reader = att.map(|a| {
                let (stats, det) = detach_all(a, &pair, f64::from(opts.seconds), cpu);
                all_clean &= det.clean();
                last_detach = Some(det);
                stats
            });
            let r = run?;
            progress(&format!(
                "round {index}: probe {}: {:.3} Gbit/s{}",
                if with { "on " } else { "off" },
                r.gbit_s,
                reader
                    .as_ref()
                    .map(|s| format!(", {} records/s", s.records_per_s))
                    .unwrap_or_default()
            ));
            rounds.push(Round {
                index,
                probe: with,
                gbit_s: r3(r.gbit_s),
                retransmits: r.retransmits,
                cpu_client_pct: r3(r.cpu_client_pct),
                cpu_server_pct: r3(r.cpu_server_pct),
                reader,
            });
        }
    }

    let stress = if opts.stress_seconds > 0 {
        let (streams, len) = (8, 256);
        progress(&format!(
            "stress: {streams} streams of {len}-byte writes (TCP_NODELAY) for {} s with the probe",
            opts.stress_seconds
        ));
        let att = attach(&pair, &cgs, opts.parts, opts.object.clone())?;
        let cpu0 = self_cpu();
        let run = iperf3(&pair, opts.stress_seconds, streams, Some(len), true);
        let cpu = self_cpu() - cpu0;
        let (reader, det) = detach_all(att, &pair, f64::from(opts.stress_seconds), cpu);
        all_clean &= det.clean();
        last_detach = Some(det);
        Some(StressRound {
            streams,
            message_bytes: len,
            seconds: opts.stress_seconds,
            gbit_s: r3(run?.gbit_s),
            reader,
        })
    } else {
        None
    };

    progress(&format!(
        "program cost: {} s with the probe and the kernel's BPF run-time statistics on",
        opts.seconds
    ));
    let program_cost = {
        let att = attach(&pair, &cgs, opts.parts, opts.object.clone())?;
        let ids = att.probe.program_ids().to_vec();
        let stats_fd = aya::sys::enable_stats(aya::sys::Stats::RunTime)
            .context("enabling BPF run-time statistics")?;
        let before = program_stats(&ids);
        let t0 = Instant::now();
        let run = iperf3(&pair, opts.seconds, opts.streams, None, false);
        let secs = t0.elapsed().as_secs_f64();
        let after = program_stats(&ids);
        drop(stats_fd);
        let (_, det) = detach_all(att, &pair, f64::from(opts.seconds), Duration::ZERO);
        all_clean &= det.clean();
        let gbit_s = r3(run?.gbit_s);
        let programs: Vec<ProgramCost> = after
            .iter()
            .map(|(name, ns, n)| {
                let (ns0, n0) = before
                    .iter()
                    .find(|b| &b.0 == name)
                    .map_or((0, 0), |b| (b.1, b.2));
                let (dns, dn) = (ns - ns0, n - n0);
                ProgramCost {
                    name: name.clone(),
                    runs_per_s: (dn as f64 / secs).round(),
                    ns_per_run: if dn == 0 {
                        0.0
                    } else {
                        (dns as f64 / dn as f64).round()
                    },
                    cpu_pct: r3(dns as f64 / secs / 1e7),
                }
            })
            .collect();
        ProgramCostRound {
            gbit_s,
            cpu_pct_total: r3(programs.iter().map(|p| p.cpu_pct).sum()),
            programs,
        }
    };

    let (with, without): (Vec<&Round>, Vec<&Round>) = rounds.iter().partition(|r| r.probe);
    let gbit = |v: &[&Round]| v.iter().map(|r| r.gbit_s).collect::<Vec<_>>();
    let (mean_with, mean_without) = (mean(&gbit(&with)), mean(&gbit(&without)));
    let pair_ratios: Vec<f64> = rounds
        .chunks(2)
        .filter_map(|p| {
            let on = p.iter().find(|r| r.probe)?;
            let off = p.iter().find(|r| !r.probe)?;
            Some(on.gbit_s / off.gbit_s)
        })
        .collect();
    let readers: Vec<&ReaderStats> = with.iter().filter_map(|r| r.reader.as_ref()).collect();
    let ratio = mean_with / mean_without;
    let kernel_drops = readers.iter().map(|r| r.kernel_drops).sum::<u64>()
        + stress.as_ref().map_or(0, |s| s.reader.kernel_drops);
    let channel_drops = readers.iter().map(|r| r.channel_drops).sum::<u64>()
        + stress.as_ref().map_or(0, |s| s.reader.channel_drops);
    let report = OverheadReport {
        mean_without_gbit_s: r3(mean_without),
        mean_with_gbit_s: r3(mean_with),
        ratio: r3(ratio),
        median_pair_ratio: r3(median(&pair_ratios)),
        mean_pair_ratio: r3(mean(&pair_ratios)),
        pair_ratio_ci95: {
            let h = ci95_half_width(&pair_ratios);
            [r3(mean(&pair_ratios) - h), r3(mean(&pair_ratios) + h)]
        },
        throughput_loss_pct: ((1.0 - ratio) * 1000.0).round() / 10.0,
        reader_records_per_s_mean: mean(
            &readers.iter().map(|r| r.records_per_s).collect::<Vec<_>>(),
        )
        .round(),
        kernel_drops,
        channel_drops,
        rounds,
        stress,
        program_cost,
        parts: opts.parts,
        placement: opts.placement.clone(),
        attachments,
        detached: all_clean,
        last_detach,
        machine: machine(load_start),
        iperf3: iperf_version,
        duration_s: 0.0,
    };
    cleanup.run();
    Ok(OverheadReport {
        duration_s: (started.elapsed().as_secs_f64() * 10.0).round() / 10.0,
        ..report
    })
}

/// Namespaces and cgroups of earlier runs whose process is gone.
pub fn sweep_stale() {
    crate::support::probe_cgroup::sweep_stale(PREFIX);
    crate::support::probe_cgroup::sweep_stale(IDLE_PREFIX);
    netns::sweep_orphans(PREFIX, "ebpf-overhead");
}

impl OverheadReport {
    /// The report as Markdown (the results file's body).
    pub fn markdown(&self, command: &str) -> String {
        use std::fmt::Write;
        let mut s = String::new();
        let m = &self.machine;
        let _ = writeln!(s, "Command: `{command}` at commit {}\n", m.commit);
        let _ = writeln!(
            s,
            "Machine: {} CPUs ({}), kernel {}, {}; load average {} at the start, {} at the end.\n",
            m.cpus, m.cpu_model, m.kernel, self.iperf3, m.loadavg_start, m.loadavg_end
        );
        let _ = writeln!(
            s,
            "Placement: {}, {} (iperf3 client and server, the probe's reader; the programs run in the packets' path there).\n",
            self.placement.cpu.map_or("not pinned (pinning failed)".to_string(), |c| format!("everything pinned to CPU {c}")),
            self.placement.nice.map_or("normal priority".to_string(), |n| format!("nice {n}"))
        );
        let _ = writeln!(
            s,
            "Attached in the rounds with the probe: {}; the flows pass through: {}.\n",
            self.attachments.join(", "),
            match self.parts {
                Parts::All => "all of them",
                Parts::Tc => "tc and the tracepoints only (sock_ops on an idle cgroup)",
                Parts::Sockops => "sock_ops and the tracepoints only (no tc)",
            }
        );
        let _ = writeln!(s, "| round | probe | Gbit/s | retransmits | client CPU % | server CPU % | records/s read | reader CPU % | kernel drops | channel drops |");
        let _ = writeln!(s, "|---|---|---|---|---|---|---|---|---|---|");
        for r in &self.rounds {
            let (rate, cpu, kd, cd) =
                r.reader
                    .as_ref()
                    .map_or(Default::default(), |x: &ReaderStats| {
                        (
                            x.records_per_s.to_string(),
                            x.reader_cpu_pct.to_string(),
                            x.kernel_drops.to_string(),
                            x.channel_drops.to_string(),
                        )
                    });
            let _ = writeln!(
                s,
                "| {} | {} | {} | {} | {} | {} | {rate} | {cpu} | {kd} | {cd} |",
                r.index,
                if r.probe { "on" } else { "off" },
                r.gbit_s,
                r.retransmits,
                r.cpu_client_pct,
                r.cpu_server_pct
            );
        }
        let _ = writeln!(
            s,
            "\nMean without: {} Gbit/s; with: {} Gbit/s; ratio with/without {}: throughput loss {} %. \
             Per pair (with / without, adjacent rounds): mean {} (95 % CI {} to {}), median {}.\n",
            self.mean_without_gbit_s,
            self.mean_with_gbit_s,
            self.ratio,
            self.throughput_loss_pct,
            self.mean_pair_ratio,
            self.pair_ratio_ci95[0],
            self.pair_ratio_ci95[1],
            self.median_pair_ratio
        );
        let _ = writeln!(
            s,
            "Reader: {} records/s on average in the rounds with the probe; {} records lost in the kernel (ring buffer full), {} in the channel.",
            self.reader_records_per_s_mean, self.kernel_drops, self.channel_drops
        );
        if let Some(st) = &self.stress {
            let _ = writeln!(
                s,
                "\nStress ({} streams of {}-byte writes, TCP_NODELAY, {} s): {} Gbit/s, {} records read ({} records/s: {} sock_ops, {} tc timestamp samples), {} consumed by the estimator, {} kernel drops, {} channel drops.",
                st.streams,
                st.message_bytes,
                st.seconds,
                st.gbit_s,
                st.reader.records,
                st.reader.records_per_s,
                st.reader.sockops_rtt,
                st.reader.tc_tcp_ts_rtt,
                st.reader.events_consumed,
                st.reader.kernel_drops,
                st.reader.channel_drops
            );
        }
        let pc = &self.program_cost;
        let _ = writeln!(
            s,
            "\nThe programs' own CPU time (kernel BPF run-time statistics, a separate {} Gbit/s round): {} % of one CPU in all:",
            pc.gbit_s, pc.cpu_pct_total
        );
        for p in &pc.programs {
            let _ = writeln!(
                s,
                "- `{}`: {} runs/s, {} ns per run, {} % of one CPU",
                p.name, p.runs_per_s, p.ns_per_run, p.cpu_pct
            );
        }
        let _ = writeln!(
            s,
            "\nEvery probe detached cleanly (no program loaded, no tcx program left): {}. Run time {} s.",
            self.detached, self.duration_s
        );
        s
    }
}
