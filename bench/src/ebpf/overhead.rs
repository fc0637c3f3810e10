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
    pub object: Option<PathBuf>,
}

impl Default for OverheadOptions {
    fn default() -> Self {
        OverheadOptions {
            rounds: 5,
            seconds: 5,
            streams: 1,
            stress_seconds: 5,
            object: None,
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
pub struct OverheadReport {
    pub rounds: Vec<Round>,
    pub mean_without_gbit_s: f64,
    pub mean_with_gbit_s: f64,
    /// mean with / mean without.
    pub ratio: f64,
    /// Median over the pairs of (with / without) of the same pair.
    pub median_pair_ratio: f64,
    /// (1 - ratio) in percent.
    pub throughput_loss_pct: f64,
    /// Records per second the reader sustained in the rounds with the probe.
    pub reader_records_per_s_mean: f64,
    pub kernel_drops: u64,
    pub channel_drops: u64,
    pub stress: Option<StressRound>,
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
        kernel: sys::run("uname", &["-r"])
            .unwrap_or_default()
            .trim()
            .to_string(),
        cpus: std::thread::available_parallelism().map_or(0, |n| n.get()),
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

/// A probe attached for one round, its reader feeding an estimator.
struct Attached {
    probe: EbpfProbe,
    rt: tokio::runtime::Runtime,
    consumed: Arc<AtomicU64>,
}

fn attach(pair: &Pair, cg: &CgroupGuard, object: Option<PathBuf>) -> Result<Attached> {
    let cfg = EbpfProbeConfig {
        object,
        cgroup: Some(cg.path.clone()),
        tc_interface: Some(pair.va.clone()),
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
fn detach_all(att: Attached, pair: &Pair, seconds: f64) -> (ReaderStats, Detached) {
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
    let cg = Arc::new(CgroupGuard::create(PREFIX)?);
    {
        let cg = Arc::clone(&cg);
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
    cg.join_self()?;
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
                let a = attach(&pair, &cg, opts.object.clone())?;
                attachments = a.probe.attachments().to_vec();
                Some(a)
            } else {
                None
            };
            let run = iperf3(&pair, opts.seconds, opts.streams, None, false);
            let reader = att.map(|a| {
                let (stats, det) = detach_all(a, &pair, f64::from(opts.seconds));
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
        let att = attach(&pair, &cg, opts.object.clone())?;
        let run = iperf3(&pair, opts.stress_seconds, streams, Some(len), true);
        let (reader, det) = detach_all(att, &pair, f64::from(opts.stress_seconds));
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
        throughput_loss_pct: ((1.0 - ratio) * 1000.0).round() / 10.0,
        reader_records_per_s_mean: mean(
            &readers.iter().map(|r| r.records_per_s).collect::<Vec<_>>(),
        )
        .round(),
        kernel_drops,
        channel_drops,
        rounds,
        stress,
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
    netns::sweep_orphans(PREFIX, "ebpf-overhead");
}

impl OverheadReport {
    /// The report as Markdown (the results file's body).
    pub fn markdown(&self, command: &str) -> String {
        use std::fmt::Write;
        let mut s = String::new();
        let m = &self.machine;
        let _ = writeln!(s, "Command: `{command}`\n");
        let _ = writeln!(
            s,
            "Machine: {} CPUs ({}), kernel {}, {}; load average {} at the start, {} at the end.\n",
            m.cpus, m.cpu_model, m.kernel, self.iperf3, m.loadavg_start, m.loadavg_end
        );
        let _ = writeln!(
            s,
            "Attached in the rounds with the probe: {}.\n",
            self.attachments.join(", ")
        );
        let _ = writeln!(s, "| round | probe | Gbit/s | retransmits | client CPU % | server CPU % | records/s read | kernel drops | channel drops |");
        let _ = writeln!(s, "|---|---|---|---|---|---|---|---|---|");
        for r in &self.rounds {
            let (rate, kd, cd) = r
                .reader
                .as_ref()
                .map_or(("".into(), "".into(), "".into()), |x| {
                    (
                        x.records_per_s.to_string(),
                        x.kernel_drops.to_string(),
                        x.channel_drops.to_string(),
                    )
                });
            let _ = writeln!(
                s,
                "| {} | {} | {} | {} | {} | {} | {rate} | {kd} | {cd} |",
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
            "\nMean without: {} Gbit/s; with: {} Gbit/s; ratio with/without {} (median of the pairs' ratios {}): throughput loss {} %.\n",
            self.mean_without_gbit_s,
            self.mean_with_gbit_s,
            self.ratio,
            self.median_pair_ratio,
            self.throughput_loss_pct
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
        let _ = writeln!(
            s,
            "\nEvery probe detached cleanly (no program loaded, no tcx program left): {}. Run time {} s.",
            self.detached, self.duration_s
        );
        s
    }
}
