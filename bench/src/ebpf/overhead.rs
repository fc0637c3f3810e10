//! Overhead of the passive probe on the data path: TCP between two
//! namespaces joined by a veth pair, with and without the probe attached,
//! in alternating rounds of one run, for three workloads:
//!
//! - `bulk`: one iperf3 stream (Gbit/s);
//! - `small`: 128-byte request/response over one TCP connection with
//!   TCP_NODELAY, one message in flight, counted in exchanges per second:
//!   every message is a packet, and the round trip's own cost is small, so
//!   the probe's per-packet cost shows most. (A stream of 128-byte writes,
//!   `iperf3 -l 128 -N`, does not stay small here: with everything on one
//!   CPU the sender's queue limits merge the writes into segments of tens
//!   of kilobytes, a different number from round to round.)
//! - `many`: 128 concurrent iperf3 streams (Gbit/s), so per-flow state is
//!   looked up and created for many flows at once.
//!
//! Each round index runs every workload once with and once without the
//! probe, the order flipping from one index to the next (off/on, then
//! on/off), so drift in the machine's load falls on both sides alike.
//! Per workload the report gives the median with and without, their ratio
//! and a 95 % bootstrap percentile interval of that ratio of medians
//! (the rounds with and without resampled independently, 10 000
//! resamples, fixed seed).
//!
//! "With" means all of it, as the agent runs it: sock_ops on the cgroup
//! both iperf3 ends run in (this process joins it, they inherit it), tc
//! ingress and egress on the client's veth, the two tracepoints, the
//! iperf3 server's address in the filter (so every packet is parsed and
//! matched, every ACK runs sock_ops), and the ring-buffer reader feeding an
//! estimator as the monitor does. Then one more round per workload with
//! the kernel's BPF run-time statistics on gives each program's runs per
//! second and nanoseconds per run (per packet for tc: one skb, a GSO
//! burst on a veth; per RTT callback, one per ACK, for sock_ops). The
//! statistics cost time themselves, so those rounds are not in the ratios.
//!
//! Everything created is removed on every way out: the namespaces (and
//! with them the veth pair and the tcx programs), the cgroups, the probe's
//! programs (each detach is verified), the statistics descriptor.

use crate::ebpf::detach::{self, Detached};
use crate::support::cleanup::Cleanup;
use crate::support::probe_cgroup::CgroupGuard;
use agent_core::ProbeEvent;
use agent_core::{LinkConfig, LinkEstimator};
use agent_probe::{EbpfProbe, EbpfProbeConfig, DEFAULT_SAMPLE_INTERVAL};
use anyhow::{bail, Context, Result};
use jitter_lab::sys::{self, netns};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde::Serialize;
use std::collections::BTreeMap;
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
/// Bytes per write in the small-segment workload.
pub const SMALL_BYTES: u32 = 128;
/// Streams of the many-flows workload (iperf3's maximum).
pub const MANY_FLOWS: u32 = 128;
/// Bootstrap resamples for the ratio's interval.
const RESAMPLES: usize = 10_000;
/// Targets of issue 12 (with / without).
pub const BULK_TARGET: f64 = 0.97;
pub const SMALL_TARGET: f64 = 0.95;

/// The traffic of a round.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Workload {
    /// One bulk TCP stream.
    Bulk,
    /// 128-byte request/response, TCP_NODELAY, one in flight.
    Small,
    /// 128 concurrent bulk streams.
    Many,
}

impl Workload {
    pub const ALL: [Workload; 3] = [Workload::Bulk, Workload::Small, Workload::Many];

    pub fn name(self) -> &'static str {
        match self {
            Workload::Bulk => "bulk",
            Workload::Small => "small",
            Workload::Many => "many",
        }
    }

    /// What the rounds of this workload count.
    pub fn unit(self) -> &'static str {
        match self {
            Workload::Small => "messages/s",
            _ => "Gbit/s",
        }
    }

    fn describe(self) -> String {
        match self {
            Workload::Bulk => "one TCP stream, iperf3 default writes".into(),
            Workload::Small => {
                format!("{SMALL_BYTES}-byte request/response, TCP_NODELAY, one in flight")
            }
            Workload::Many => {
                format!("{MANY_FLOWS} concurrent TCP streams (iperf3 -P {MANY_FLOWS})")
            }
        }
    }
}

#[derive(Debug, Clone)]
pub struct OverheadOptions {
    /// Round pairs (one without, one with the probe) per workload.
    pub rounds: u32,
    /// Seconds per iperf3 run.
    pub seconds: u32,
    pub workloads: Vec<Workload>,
    /// Which programs see the traffic in the rounds with the probe.
    pub parts: Parts,
    pub object: Option<PathBuf>,
    /// The probe's per-flow sample interval (default: the probe's default).
    pub sample_interval: Duration,
    /// A third arm of the same alternating run, if any.
    pub third: Option<ThirdArm>,
    /// How [`place`] set up this process (reported).
    pub placement: Placement,
}

impl Default for OverheadOptions {
    fn default() -> Self {
        OverheadOptions {
            rounds: 12,
            seconds: 2,
            workloads: Workload::ALL.to_vec(),
            parts: Parts::All,
            object: None,
            sample_interval: DEFAULT_SAMPLE_INTERVAL,
            third: None,
            placement: Placement::default(),
        }
    }
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

/// What a round runs with.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Arm {
    /// No probe.
    Off,
    /// The probe measured (`--object`).
    Probe,
    /// The baseline object (`--baseline-object`).
    Baseline,
    /// The probe's object, every program returning at once (`--hooks-only`).
    HooksOnly,
}

impl Arm {
    fn label(self) -> &'static str {
        match self {
            Arm::Off => "off",
            Arm::Probe => "on",
            Arm::Baseline => "baseline",
            Arm::HooksOnly => "hooks only",
        }
    }
}

/// What the third arm of an alternating run measures.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ThirdArm {
    /// Another object (an older build: a before/after under the same
    /// conditions), loaded with every sample kept.
    Baseline(PathBuf),
    /// The probe's own object with every program returning at once: the
    /// hooks' cost alone, the floor under any work the programs do.
    HooksOnly,
}

impl ThirdArm {
    fn arm(&self) -> Arm {
        match self {
            ThirdArm::Baseline(_) => Arm::Baseline,
            ThirdArm::HooksOnly => Arm::HooksOnly,
        }
    }

    fn describe(&self) -> String {
        match self {
            ThirdArm::Baseline(obj) => obj.display().to_string(),
            ThirdArm::HooksOnly => "the probe's object, every program returning at once".into(),
        }
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct Round {
    pub index: u32,
    pub workload: Workload,
    pub arm: Arm,
    /// Gbit/s (bulk, many) or messages/s (small).
    pub value: f64,
    pub gbit_s: f64,
    /// Retransmitted segments iperf3 reports (should be 0 on a veth).
    pub retransmits: u64,
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
    /// thread only waits for iperf3) in percent of one CPU; NaN (null) for
    /// the small workload, whose traffic runs in this process.
    pub reader_cpu_pct: f64,
}

/// One workload's result.
#[derive(Debug, Clone, Serialize)]
pub struct WorkloadSummary {
    pub workload: Workload,
    pub unit: &'static str,
    pub rounds_with: usize,
    pub rounds_without: usize,
    pub median_with: f64,
    pub median_without: f64,
    /// median with / median without.
    pub ratio: f64,
    /// 95 % bootstrap percentile interval of the ratio of medians.
    pub ratio_ci95: [f64; 2],
    /// Records per second the reader took in the rounds with the probe (mean).
    pub records_per_s: f64,
    /// The reader's CPU time in the rounds with the probe (mean, % of one CPU).
    pub reader_cpu_pct: f64,
    /// The baseline object's median, ratio and interval (with a baseline).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub baseline: Option<BaselineSummary>,
    /// Per program, from the statistics round of this workload.
    pub programs: Vec<ProgramCost>,
    /// The statistics round's own throughput (same unit).
    pub stats_round_value: f64,
}

#[derive(Debug, Clone, Serialize)]
pub struct BaselineSummary {
    pub object: String,
    pub rounds: usize,
    pub median: f64,
    /// baseline median / median without.
    pub ratio: f64,
    pub ratio_ci95: [f64; 2],
    pub records_per_s: f64,
    pub reader_cpu_pct: f64,
    pub programs: Vec<ProgramCost>,
}

#[derive(Debug, Clone, Serialize)]
pub struct ProgramCost {
    pub name: String,
    pub runs: u64,
    pub runs_per_s: f64,
    pub ns_per_run: f64,
    /// Percent of one CPU.
    pub cpu_pct: f64,
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
    pub bulk_ratio: Option<f64>,
    pub bulk_ratio_ci_low: Option<f64>,
    pub bulk_ratio_ci_high: Option<f64>,
    pub small_ratio: Option<f64>,
    pub small_ratio_ci_low: Option<f64>,
    pub small_ratio_ci_high: Option<f64>,
    pub many_ratio: Option<f64>,
    pub many_ratio_ci_low: Option<f64>,
    pub many_ratio_ci_high: Option<f64>,
    /// Per program: nanoseconds per run over every statistics round
    /// (tc: per skb; sock_ops: per RTT callback, one per ACK).
    pub ns_per_packet: BTreeMap<String, f64>,
    /// The same for the third arm (a baseline object, or the hooks only),
    /// when there is one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub baseline_ns_per_packet: Option<BTreeMap<String, f64>>,
    /// What the third arm is (`baseline`, `hooks-only`), if there is one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub third_arm: Option<Arm>,
    /// bulk >= 0.97 and small >= 0.95 (medians).
    pub targets_met: bool,
    pub ci_method: &'static str,
    pub sample_interval_ms: f64,
    pub object: String,
    pub workloads: Vec<WorkloadSummary>,
    pub rounds: Vec<Round>,
    pub kernel_drops: u64,
    pub channel_drops: u64,
    pub parts: Parts,
    pub placement: Placement,
    pub attachments: Vec<String>,
    /// Every probe of the run left nothing behind.
    pub detached: bool,
    pub last_detach: Option<Detached>,
    pub epping: &'static str,
    pub machine: Machine,
    pub iperf3: String,
    pub seconds_per_round: u32,
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
    /// The busiest processes outside this run at the start (`top`).
    pub busy_at_start: String,
}

/// Why ePPing is not in the alternating run (stated in every report).
pub const EPPING: &str = "Not run: ePPing (xdp-project/bpf-examples, pping/) is in no package \
registry this project can use (Debian 12 has no pping or bpf-examples package and xdp-tools does \
not ship it; PyPI and crates.io have no such package), and it is not built from its GitHub source \
here, so the comparison is of techniques, from its source";

/// How our programs compare with ePPing's, technique by technique.
pub const EPPING_TECHNIQUES: &[(&str, &str, &str)] = &[
    (
        "where it hooks",
        "tc egress + XDP (or tc) ingress on one interface: passive TCP timestamps and ICMP echo",
        "tc egress + ingress (TCP timestamps, QUIC spin bit) and, for local sockets, the kernel's own per-ACK RTT (sock_ops RTT callback), plus two tracepoints (retransmits, flow start/end)",
    ),
    (
        "per-flow rate limit",
        "one timestamp per flow per 100 ms by default (`--rate-limit`), or per fraction of the flow's min or smoothed RTT (`--rtt-rate`)",
        "one sample per flow and source per `sample_interval` (10 ms by default, `EbpfProbeConfig::sample_interval` -> global `SAMPLE_INTERVAL_NS`); 10 ms keeps one sample per exchange on a 20 ms link (probe-check) and ~100/s per flow for the estimators' 60-sample windows",
    ),
    (
        "what is timed",
        "the first packet with a new TSval, not pure ACKs, not SYNs by default; any number of outstanding timestamps per flow (hash map, entries expire after 8 x sRTT or 10 s, removed by a map-iterator program)",
        "the first packet with a new TSval and data (or SYN/FIN), one outstanding timing per flow kept in the flow's own entry (an echo of a later TSval ends a lost one, 2 s at most): no per-sample insert or delete, no cleanup pass",
    ),
    (
        "per-packet state",
        "a dual-direction flow-state hash entry per flow (packets, bytes, min RTT, sRTT) updated on every packet",
        "an LRU entry per flow (last TSval, the pending timing, the rate-limit slot); the filter map first, so unwatched traffic costs one or two lookups",
    ),
    (
        "what reaches userspace",
        "an RTT event per sample (with min RTT, packet and byte counts) and flow open/close events through a perf buffer, or per-prefix RTT histograms aggregated in the kernel",
        "an 80-byte record per sample through one ring buffer (sock_ops adds the socket's segment and retransmit counters, cumulative, so skipped samples lose nothing), only the state changes userspace uses (ESTABLISHED, CLOSE); the reader wakes per 256 records or every 10 ms",
    ),
];

fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_default()
}

/// The processes above 20 % CPU right now, from one `top` sample.
fn busy() -> String {
    let out = sys::run("top", &["-bn1", "-w", "200"]).unwrap_or_default();
    let busy: Vec<String> = out
        .lines()
        .skip_while(|l| !l.trim_start().starts_with("PID"))
        .skip(1)
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            let cpu: f64 = f.get(8)?.parse().ok()?;
            let name = f.get(11)?;
            (cpu >= 20.0).then(|| format!("{name} {cpu:.0} %"))
        })
        .collect();
    if busy.is_empty() {
        "nothing above 20 % of a CPU".into()
    } else {
        busy.join(", ")
    }
}

fn machine(loadavg_start: String, busy_at_start: String) -> Machine {
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
        busy_at_start,
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
    let mut child = netns::command(&pair.b, "iperf3")?
        .args(["-s", "-p", PORT, "-B"])
        .arg(pair.addr_b.to_string())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .context("starting iperf3 (apt package iperf3)")?;
    // A client that connects before the server listens is refused: a fixed
    // 300 ms pause was once too short on a loaded host.
    let port: u16 = PORT.parse().expect("a port number");
    let until = Instant::now() + Duration::from_secs(10);
    while !listening(&pair.b, port)? {
        if let Some(status) = child.try_wait()? {
            bail!("iperf3 -s exited before listening: {status}");
        }
        if Instant::now() >= until {
            let _ = child.kill();
            let _ = child.wait();
            bail!("iperf3 -s did not listen on port {port} within 10 s");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    Ok(child)
}

/// Whether a TCP socket in namespace `ns` listens on `port`, as its
/// `/proc/net/tcp{,6}` say (a test connection would count as an iperf3
/// client).
fn listening(ns: &str, port: u16) -> Result<bool> {
    let tables = netns::run_in(ns, || {
        let read = |f: &str| std::fs::read_to_string(format!("/proc/thread-self/net/{f}"));
        Ok(format!(
            "{}{}",
            read("tcp")?,
            read("tcp6").unwrap_or_default()
        ))
    })?;
    Ok(listens_on(&tables, port))
}

/// A `/proc/net/tcp` table has a socket in state LISTEN (0A) whose local
/// address (`ADDR:PORT`, the port in hex) has `port`.
fn listens_on(table: &str, port: u16) -> bool {
    let want = format!(":{port:04X}");
    table.lines().any(|l| {
        let f: Vec<&str> = l.split_whitespace().collect();
        f.len() > 3 && f[1].ends_with(&want) && f[3] == "0A"
    })
}

struct Iperf {
    gbit_s: f64,
    retransmits: u64,
}

/// `seconds` of 128-byte request/response from namespace a to an echo
/// server in namespace b (threads of this process: in the flows' cgroup,
/// on its CPU, at its priority).
fn request_response(pair: &Pair, seconds: u32) -> Result<Iperf> {
    use std::io::{Read, Write};
    use std::net::{TcpListener, TcpStream};
    let addr_b = pair.addr_b;
    let listener = netns::run_in(&pair.b, move || Ok(TcpListener::bind((addr_b, 0))?))?;
    let server_addr = listener.local_addr()?;
    let server = std::thread::spawn(move || -> Result<()> {
        let (mut c, _) = listener.accept()?;
        c.set_nodelay(true)?;
        let mut buf = [0u8; SMALL_BYTES as usize];
        while c.read_exact(&mut buf).is_ok() {
            c.write_all(&buf)?;
        }
        Ok(())
    });
    let mut s = netns::run_in(&pair.a, move || {
        Ok(TcpStream::connect_timeout(
            &server_addr,
            Duration::from_secs(5),
        )?)
    })?;
    s.set_nodelay(true)?;
    let msg = [0x5au8; SMALL_BYTES as usize];
    let mut back = [0u8; SMALL_BYTES as usize];
    let start = Instant::now();
    let end = start + Duration::from_secs(u64::from(seconds));
    let mut n = 0u64;
    while !n.is_multiple_of(64) || Instant::now() < end {
        s.write_all(&msg)?;
        s.read_exact(&mut back)?;
        n += 1;
    }
    let secs = start.elapsed().as_secs_f64();
    drop(s);
    server
        .join()
        .map_err(|_| anyhow::anyhow!("echo server panicked"))??;
    Ok(Iperf {
        gbit_s: n as f64 * f64::from(SMALL_BYTES) * 8.0 / secs / 1e9,
        retransmits: 0,
    })
}

fn iperf3(pair: &Pair, seconds: u32, workload: Workload) -> Result<Iperf> {
    if workload == Workload::Small {
        return request_response(pair, seconds);
    }
    let mut c = netns::command(&pair.a, "iperf3")?;
    c.args(["-J", "-p", PORT, "-c"])
        .arg(pair.addr_b.to_string())
        .args(["-t", &seconds.to_string()]);
    match workload {
        Workload::Bulk | Workload::Small => {}
        Workload::Many => {
            c.args(["-P", &MANY_FLOWS.to_string()]);
        }
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
    })
}

/// The round's figure in the workload's unit.
fn value(workload: Workload, gbit_s: f64) -> f64 {
    match workload {
        Workload::Small => (gbit_s * 1e9 / 8.0 / f64::from(SMALL_BYTES)).round(),
        _ => r3(gbit_s),
    }
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

fn attach(pair: &Pair, cgs: &Cgroups, opts: &OverheadOptions, arm: Arm) -> Result<Attached> {
    let (object, sample_interval) = match (arm, &opts.third) {
        (Arm::Baseline, Some(ThirdArm::Baseline(obj))) => (Some(obj.clone()), Duration::ZERO),
        _ => (opts.object.clone(), opts.sample_interval),
    };
    let hooks_only = arm == Arm::HooksOnly;
    let cfg = EbpfProbeConfig {
        object,
        cgroup: Some(match opts.parts {
            Parts::Tc => cgs.idle.path.clone(),
            _ => cgs.flows.path.clone(),
        }),
        tc_interface: (opts.parts != Parts::Sockops).then(|| pair.va.clone()),
        endpoints: vec![IpAddr::V4(pair.addr_b)],
        state_dir: std::env::temp_dir().join(format!("{PREFIX}{}-state", std::process::id())),
        sample_interval,
        hooks_only,
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

/// Stops the reader, detaches, and checks that nothing is left.
/// `cpu`: this process's CPU time during the round, `None` when the
/// round's traffic ran in this process too (then the reader's share is unknown).
fn detach_all(
    att: Attached,
    pair: &Pair,
    seconds: f64,
    cpu: Option<Duration>,
) -> (ReaderStats, Detached) {
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
            reader_cpu_pct: cpu.map_or(f64::NAN, |c| r3(c.as_secs_f64() / seconds * 100.0)),
        },
        detached,
    )
}

fn mean(v: &[f64]) -> f64 {
    v.iter().sum::<f64>() / v.len().max(1) as f64
}

/// Median (the mean of the middle two for an even count); NaN when empty.
pub fn median(v: &[f64]) -> f64 {
    let mut v = v.to_vec();
    v.sort_by(f64::total_cmp);
    let n = v.len();
    match n {
        0 => f64::NAN,
        _ if n % 2 == 1 => v[n / 2],
        _ => (v[n / 2 - 1] + v[n / 2]) / 2.0,
    }
}

/// 95 % bootstrap percentile interval of median(with) / median(without):
/// both groups resampled independently with replacement.
pub fn ratio_ci95(with: &[f64], without: &[f64], resamples: usize, seed: u64) -> [f64; 2] {
    if with.is_empty() || without.is_empty() {
        return [f64::NAN, f64::NAN];
    }
    let mut rng = StdRng::seed_from_u64(seed);
    let mut draw = |v: &[f64]| -> f64 {
        let s: Vec<f64> = (0..v.len())
            .map(|_| v[rng.random_range(0..v.len())])
            .collect();
        median(&s)
    };
    let mut ratios: Vec<f64> = (0..resamples)
        .map(|_| {
            let w = draw(with);
            w / draw(without)
        })
        .collect();
    ratios.sort_by(f64::total_cmp);
    let at =
        |q: f64| ratios[((q * (ratios.len() - 1) as f64).round() as usize).min(ratios.len() - 1)];
    [at(0.025), at(0.975)]
}

fn r3(x: f64) -> f64 {
    (x * 1e3).round() / 1e3
}

fn r4(x: f64) -> f64 {
    (x * 1e4).round() / 1e4
}

/// One round with the kernel's run-time statistics on: per-program runs
/// and run time, and the round's throughput.
fn stats_round(
    pair: &Pair,
    cgs: &Cgroups,
    opts: &OverheadOptions,
    workload: Workload,
    arm: Arm,
    all_clean: &mut bool,
) -> Result<(Vec<ProgramCost>, f64)> {
    let att = attach(pair, cgs, opts, arm)?;
    let ids = att.probe.program_ids().to_vec();
    // Statistics stay on while this descriptor is open (dropped on every way out).
    let stats_fd = aya::sys::enable_stats(aya::sys::Stats::RunTime)
        .context("enabling BPF run-time statistics")?;
    let before = program_stats(&ids);
    let t0 = Instant::now();
    let run = iperf3(pair, opts.seconds, workload);
    let secs = t0.elapsed().as_secs_f64();
    let after = program_stats(&ids);
    drop(stats_fd);
    let (_, det) = detach_all(att, pair, f64::from(opts.seconds), None);
    *all_clean &= det.clean();
    let r = run?;
    let programs = after
        .iter()
        .map(|(name, ns, n)| {
            let (ns0, n0) = before
                .iter()
                .find(|b| &b.0 == name)
                .map_or((0, 0), |b| (b.1, b.2));
            let (dns, dn) = (ns - ns0, n - n0);
            ProgramCost {
                name: name.clone(),
                runs: dn,
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
    Ok((programs, value(workload, r.gbit_s)))
}

pub fn run(
    opts: &OverheadOptions,
    cleanup: &Cleanup,
    progress: &dyn Fn(&str),
) -> Result<OverheadReport> {
    sys::require_root("ebpf-overhead")?;
    let third = opts.third.as_ref().map(ThirdArm::arm);
    let started = Instant::now();
    let (load_start, busy_start) = (loadavg(), busy());
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
    progress("warm-up: 1 s of each workload without the probe (not counted)");
    for &w in &opts.workloads {
        iperf3(&pair, 1, w)?;
    }

    let mut rounds = Vec::new();
    let mut attachments = Vec::new();
    let mut all_clean = true;
    let mut last_detach = None;
    // Without a baseline: off/on, then on/off. With one, the three arms
    // rotate, so each comes first, second and third equally often.
    let arms: Vec<Arm> = match third {
        Some(arm) => vec![Arm::Off, Arm::Probe, arm],
        None => vec![Arm::Off, Arm::Probe],
    };
    for pair_no in 0..opts.rounds {
        let mut order = arms.clone();
        if arms.len() == 2 {
            if pair_no % 2 == 1 {
                order.reverse();
            }
        } else {
            order.rotate_left(pair_no as usize % arms.len());
            if (pair_no / 3) % 2 == 1 {
                order.reverse();
            }
        }
        for &workload in &opts.workloads {
            for &arm in &order {
                let index = rounds.len() as u32;
                let att = if arm != Arm::Off {
                    let a = attach(&pair, &cgs, opts, arm)?;
                    if arm == Arm::Probe {
                        attachments = a.probe.attachments().to_vec();
                    }
                    Some(a)
                } else {
                    None
                };
                let cpu0 = self_cpu();
                let run = iperf3(&pair, opts.seconds, workload);
                let cpu = self_cpu() - cpu0;
                let reader = att.map(|a| {
                    // The small workload's traffic runs in this process.
                    let cpu = (workload != Workload::Small).then_some(cpu);
                    let (stats, det) = detach_all(a, &pair, f64::from(opts.seconds), cpu);
                    all_clean &= det.clean();
                    last_detach = Some(det);
                    stats
                });
                let r = run?;
                let v = value(workload, r.gbit_s);
                progress(&format!(
                    "round {index} ({}/{}): {} probe {}: {v} {}{}",
                    pair_no + 1,
                    opts.rounds,
                    workload.name(),
                    arm.label(),
                    workload.unit(),
                    reader
                        .as_ref()
                        .map(|s| format!(", {} records/s", s.records_per_s))
                        .unwrap_or_default()
                ));
                rounds.push(Round {
                    index,
                    workload,
                    arm,
                    value: v,
                    gbit_s: r3(r.gbit_s),
                    retransmits: r.retransmits,
                    reader,
                });
            }
        }
    }

    let mut workloads = Vec::new();
    let mut totals: BTreeMap<String, (u64, u64)> = BTreeMap::new();
    let mut base_totals: BTreeMap<String, (u64, u64)> = BTreeMap::new();
    for (i, &workload) in opts.workloads.iter().enumerate() {
        progress(&format!(
            "program cost: {} s of {} with the probe and the kernel's BPF run-time statistics on",
            opts.seconds,
            workload.name()
        ));
        let (programs, stats_value) =
            stats_round(&pair, &cgs, opts, workload, Arm::Probe, &mut all_clean)?;
        for p in &programs {
            let t = totals.entry(p.name.clone()).or_default();
            t.0 += (p.ns_per_run * p.runs as f64) as u64;
            t.1 += p.runs;
        }
        let of = |arm: Arm| -> Vec<f64> {
            rounds
                .iter()
                .filter(|r| r.workload == workload && r.arm == arm)
                .map(|r| r.value)
                .collect()
        };
        let readers_of = |arm: Arm| -> Vec<&ReaderStats> {
            rounds
                .iter()
                .filter(|r| r.workload == workload && r.arm == arm)
                .filter_map(|r| r.reader.as_ref())
                .collect()
        };
        let (with, without) = (of(Arm::Probe), of(Arm::Off));
        let readers = readers_of(Arm::Probe);
        let baseline = match &opts.third {
            Some(kind) => {
                let arm = kind.arm();
                progress(&format!(
                    "program cost: {} s of {} with the {} arm and the statistics on",
                    opts.seconds,
                    workload.name(),
                    arm.label()
                ));
                let (programs, _) = stats_round(&pair, &cgs, opts, workload, arm, &mut all_clean)?;
                for p in &programs {
                    let t = base_totals.entry(p.name.clone()).or_default();
                    t.0 += (p.ns_per_run * p.runs as f64) as u64;
                    t.1 += p.runs;
                }
                let base = of(arm);
                let ci = ratio_ci95(&base, &without, RESAMPLES, 42 + i as u64);
                let rd = readers_of(arm);
                Some(BaselineSummary {
                    object: kind.describe(),
                    rounds: base.len(),
                    median: r4(median(&base)),
                    ratio: r4(median(&base) / median(&without)),
                    ratio_ci95: [r4(ci[0]), r4(ci[1])],
                    records_per_s: mean(&rd.iter().map(|r| r.records_per_s).collect::<Vec<_>>())
                        .round(),
                    reader_cpu_pct: r3(mean(
                        &rd.iter().map(|r| r.reader_cpu_pct).collect::<Vec<_>>(),
                    )),
                    programs,
                })
            }
            None => None,
        };
        let ci = ratio_ci95(&with, &without, RESAMPLES, 12 + i as u64);
        workloads.push(WorkloadSummary {
            workload,
            unit: workload.unit(),
            rounds_with: with.len(),
            rounds_without: without.len(),
            median_with: r4(median(&with)),
            median_without: r4(median(&without)),
            ratio: r4(median(&with) / median(&without)),
            ratio_ci95: [r4(ci[0]), r4(ci[1])],
            records_per_s: mean(&readers.iter().map(|r| r.records_per_s).collect::<Vec<_>>())
                .round(),
            reader_cpu_pct: r3(mean(
                &readers.iter().map(|r| r.reader_cpu_pct).collect::<Vec<_>>(),
            )),
            baseline,
            programs,
            stats_round_value: stats_value,
        });
    }

    let pick = |w: Workload| workloads.iter().find(|s| s.workload == w);
    let ratio = |w: Workload| pick(w).map(|s| s.ratio);
    let ci = |w: Workload, i: usize| pick(w).map(|s| s.ratio_ci95[i]);
    let per_run = |totals: BTreeMap<String, (u64, u64)>| -> BTreeMap<String, f64> {
        totals
            .into_iter()
            .map(|(name, (ns, n))| {
                let v = if n == 0 {
                    0.0
                } else {
                    (ns as f64 / n as f64).round()
                };
                (name, v)
            })
            .collect()
    };
    let ns_per_packet = per_run(totals);
    let baseline_ns_per_packet = third.is_some().then(|| per_run(base_totals));
    let readers = rounds.iter().filter_map(|r| r.reader.as_ref());
    let kernel_drops = readers.clone().map(|r| r.kernel_drops).sum();
    let channel_drops = readers.map(|r| r.channel_drops).sum();
    let report = OverheadReport {
        bulk_ratio: ratio(Workload::Bulk),
        bulk_ratio_ci_low: ci(Workload::Bulk, 0),
        bulk_ratio_ci_high: ci(Workload::Bulk, 1),
        small_ratio: ratio(Workload::Small),
        small_ratio_ci_low: ci(Workload::Small, 0),
        small_ratio_ci_high: ci(Workload::Small, 1),
        many_ratio: ratio(Workload::Many),
        many_ratio_ci_low: ci(Workload::Many, 0),
        many_ratio_ci_high: ci(Workload::Many, 1),
        ns_per_packet,
        baseline_ns_per_packet,
        third_arm: third,
        targets_met: ratio(Workload::Bulk).is_some_and(|r| r >= BULK_TARGET)
            && ratio(Workload::Small).is_some_and(|r| r >= SMALL_TARGET),
        ci_method: "bootstrap percentile interval of the ratio of medians (rounds with and \
                    without resampled independently, 10000 resamples, fixed seed)",
        sample_interval_ms: opts.sample_interval.as_secs_f64() * 1e3,
        object: opts
            .object
            .as_ref()
            .map_or("the agent's default search".into(), |p| {
                p.display().to_string()
            }),
        workloads,
        rounds,
        kernel_drops,
        channel_drops,
        parts: opts.parts,
        placement: opts.placement.clone(),
        attachments,
        detached: all_clean,
        last_detach,
        epping: EPPING,
        machine: machine(load_start, busy_start),
        iperf3: iperf_version,
        seconds_per_round: opts.seconds,
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

/// A figure for the tables: "-" when it was not measured (NaN).
fn fig(x: f64) -> String {
    if x.is_nan() {
        "-".into()
    } else {
        x.to_string()
    }
}

fn opt(x: Option<f64>) -> String {
    x.map_or("-".into(), |v| v.to_string())
}

impl OverheadReport {
    /// How the third arm's rows are named.
    fn third_label(&self) -> &'static str {
        match self.third_arm {
            Some(Arm::HooksOnly) => "hooks only",
            _ => "with the baseline object",
        }
    }

    /// The report as Markdown (the results file's body).
    pub fn markdown(&self, command: &str) -> String {
        use std::fmt::Write;
        let mut s = String::new();
        let m = &self.machine;
        let _ = writeln!(s, "# eBPF probe overhead\n");
        let _ = writeln!(s, "Command: `{command}` at commit {}\n", m.commit);
        let _ = writeln!(
            s,
            "Machine: {} CPUs ({}), kernel {}, {}; load average {} at the start ({}), {} at the end. Run time {} s.\n",
            m.cpus, m.cpu_model, m.kernel, self.iperf3, m.loadavg_start, m.busy_at_start, m.loadavg_end, self.duration_s
        );
        let _ = writeln!(
            s,
            "Placement: {}, {} (iperf3 client and server, the probe's reader; the programs run in the packets' path there).\n",
            self.placement.cpu.map_or("not pinned (pinning failed)".to_string(), |c| format!("everything pinned to CPU {c}")),
            self.placement.nice.map_or("normal priority".to_string(), |n| format!("nice {n}"))
        );
        let _ = writeln!(
            s,
            "Probe: {} ({}), per-flow sample interval {} ms. Attached in the rounds with the probe: {}; the flows pass through: {}.\n",
            self.object,
            if self.object.contains("before") { "the programs before the rate limit" } else { "as built" },
            self.sample_interval_ms,
            self.attachments.join(", "),
            match self.parts {
                Parts::All => "all of them",
                Parts::Tc => "tc and the tracepoints only (sock_ops on an idle cgroup)",
                Parts::Sockops => "sock_ops and the tracepoints only (no tc)",
            }
        );
        let _ = writeln!(s, "## Throughput with / without the probe\n");
        let _ = writeln!(
            s,
            "{} s per round, alternating; interval: {}. Records/s: what the reader took out of the ring buffer; \
             reader CPU: this process's CPU time in the rounds with the probe (the reader and an estimator; \
             not measured for small, whose traffic runs in this process too).{}\n",
            self.seconds_per_round,
            self.ci_method,
            match self.third_arm {
                Some(Arm::HooksOnly) => {
                    " The rows \"hooks only\" are a third arm of the same run: the same object attached \
                     the same way, every program returning at once (sock_ops still turns the RTT callbacks \
                     on): what the hooks cost by themselves, the floor under the programs' work."
                }
                Some(_) => {
                    " The rows \"with the baseline object\" are a third arm of the same run: the older object, \
                     every sample kept, against the same rounds without."
                }
                None => "",
            }
        );
        let _ = writeln!(s, "| workload | rounds with / without | median without | median with | ratio | 95 % CI | target | records/s read | reader CPU % |");
        let _ = writeln!(s, "|---|---|---|---|---|---|---|---|---|");
        for w in &self.workloads {
            let target = match w.workload {
                Workload::Bulk => format!(">= {BULK_TARGET}"),
                Workload::Small => format!(">= {SMALL_TARGET}"),
                Workload::Many => "-".into(),
            };
            let _ = writeln!(
                s,
                "| {} ({}) | {} / {} | {} {} | {} {} | **{}** | {} to {} | {target} | {} | {} |",
                w.workload.name(),
                w.workload.describe(),
                w.rounds_with,
                w.rounds_without,
                w.median_without,
                w.unit,
                w.median_with,
                w.unit,
                w.ratio,
                w.ratio_ci95[0],
                w.ratio_ci95[1],
                w.records_per_s,
                fig(w.reader_cpu_pct)
            );
            if let Some(b) = &w.baseline {
                let _ = writeln!(
                    s,
                    "| {} {} | {} / {} | {} {} | {} {} | {} | {} to {} | - | {} | {} |",
                    w.workload.name(),
                    self.third_label(),
                    b.rounds,
                    w.rounds_without,
                    w.median_without,
                    w.unit,
                    b.median,
                    w.unit,
                    b.ratio,
                    b.ratio_ci95[0],
                    b.ratio_ci95[1],
                    b.records_per_s,
                    fig(b.reader_cpu_pct)
                );
            }
        }
        let _ = writeln!(
            s,
            "\nTargets (bulk >= {BULK_TARGET}, small >= {SMALL_TARGET}, on the medians) met: {}. Records lost: {} in the kernel (ring buffer full), {} in the channel.\n",
            self.targets_met, self.kernel_drops, self.channel_drops
        );
        let _ = writeln!(s, "## The programs' own cost\n");
        let _ = writeln!(
            s,
            "From the kernel's BPF run-time statistics (`kernel.bpf_stats_enabled`, turned on through \
             BPF_ENABLE_STATS for one extra round per workload, not counted above): nanoseconds per run \
             (tc: per skb, a GSO burst on a veth; sock_ops: per RTT callback, one per ACK) and share of one CPU.{}\n",
            if self.third_arm == Some(Arm::HooksOnly) {
                " The hooks-only rows time programs that return at once: that floor is the statistics' own \
                 clock reads and the program's entry, so a program's work is its figure less the floor."
            } else {
                ""
            }
        );
        let _ = writeln!(
            s,
            "| workload | program | runs/s | ns per run | % of one CPU |"
        );
        let _ = writeln!(s, "|---|---|---|---|---|");
        for w in &self.workloads {
            let tag = format!(" ({})", self.third_label());
            let base = w
                .baseline
                .iter()
                .flat_map(|b| b.programs.iter().map(|p| (tag.as_str(), p)));
            for (tag, p) in w.programs.iter().map(|p| ("", p)).chain(base) {
                let _ = writeln!(
                    s,
                    "| {}{tag} | `{}` | {} | {} | {} |",
                    w.workload.name(),
                    p.name,
                    p.runs_per_s,
                    p.ns_per_run,
                    p.cpu_pct
                );
            }
        }
        let _ = writeln!(
            s,
            "\nOver all three: {}.\n",
            self.ns_per_packet
                .iter()
                .map(|(k, v)| format!("`{k}` {v} ns"))
                .collect::<Vec<_>>()
                .join(", ")
        );
        if let Some(b) = &self.baseline_ns_per_packet {
            let _ = writeln!(
                s,
                "{} over all three: {}.\n",
                match self.third_arm {
                    Some(Arm::HooksOnly) => "Hooks only",
                    _ => "Baseline object",
                },
                b.iter()
                    .map(|(k, v)| format!("`{k}` {v} ns"))
                    .collect::<Vec<_>>()
                    .join(", ")
            );
        }
        let _ = writeln!(s, "## ePPing\n");
        let _ = writeln!(s, "{}.\n", self.epping);
        let _ = writeln!(s, "| | ePPing | this probe |");
        let _ = writeln!(s, "|---|---|---|");
        for (what, epping, ours) in EPPING_TECHNIQUES {
            let _ = writeln!(s, "| {what} | {epping} | {ours} |");
        }
        let _ = writeln!(s);
        let _ = writeln!(s, "## Rounds\n");
        let _ = writeln!(s, "| round | workload | probe | value | Gbit/s | retransmits | records/s read | reader CPU % |");
        let _ = writeln!(s, "|---|---|---|---|---|---|---|---|");
        for r in &self.rounds {
            let (rate, cpu) = r.reader.as_ref().map_or(Default::default(), |x| {
                (x.records_per_s.to_string(), fig(x.reader_cpu_pct))
            });
            let _ = writeln!(
                s,
                "| {} | {} | {} | {} {} | {} | {} | {rate} | {cpu} |",
                r.index,
                r.workload.name(),
                r.arm.label(),
                r.value,
                r.workload.unit(),
                r.gbit_s,
                r.retransmits
            );
        }
        let _ = writeln!(
            s,
            "\nEvery probe detached cleanly (no program loaded, no tcx program left): {}. \
             JSON summary: bulk {} ({} to {}), small {} ({} to {}), many {} ({} to {}).",
            self.detached,
            opt(self.bulk_ratio),
            opt(self.bulk_ratio_ci_low),
            opt(self.bulk_ratio_ci_high),
            opt(self.small_ratio),
            opt(self.small_ratio_ci_low),
            opt(self.small_ratio_ci_high),
            opt(self.many_ratio),
            opt(self.many_ratio_ci_low),
            opt(self.many_ratio_ci_high),
        );
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_listening_socket_is_found_by_its_port_and_state() {
        let table = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode
   0: 0A00000A:1451 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 1 1 0000000000000000 100 0 0 10 0
   1: 0A00000A:1452 0A00000B:9C40 01 00000000:00000000 00:00000000 00000000     0        0 2 1 0000000000000000 20 4 30 10 -1
";
        // 5201 = 0x1451, listening; 5202 only as an established socket.
        assert!(listens_on(table, 5201));
        assert!(!listens_on(table, 5202));
        assert!(!listens_on(table, 81));
        assert!(!listens_on("", 5201));
    }

    #[test]
    fn median_of_odd_and_even_counts() {
        assert_eq!(median(&[3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(&[4.0, 1.0, 3.0, 2.0]), 2.5);
        assert!(median(&[]).is_nan());
    }

    #[test]
    fn bootstrap_interval_brackets_the_ratio_and_narrows_with_agreement() {
        let without: Vec<f64> = (0..12).map(|i| 10.0 + f64::from(i % 4) * 0.1).collect();
        let with: Vec<f64> = without.iter().map(|x| x * 0.9).collect();
        let [lo, hi] = ratio_ci95(&with, &without, 2000, 1);
        let point = median(&with) / median(&without);
        assert!(lo <= point && point <= hi, "{lo} {point} {hi}");
        assert!(hi - lo < 0.05, "{lo} {hi}");
        // Same seed, same interval.
        assert_eq!(ratio_ci95(&with, &without, 2000, 1), [lo, hi]);
        // Noisy rounds give a wide interval.
        let noisy: Vec<f64> = (0..12).map(|i| 5.0 + f64::from(i) * 2.0).collect();
        let [lo2, hi2] = ratio_ci95(&noisy, &without, 2000, 1);
        assert!(hi2 - lo2 > 0.3, "{lo2} {hi2}");
    }
}
