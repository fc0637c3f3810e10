//! The probe accuracy check: the real eBPF probe, in the real kernel,
//! measuring real traffic across the jitter lab, compared with what that
//! traffic itself saw.
//!
//! Setup: a lab (`pchk<pid>`) whose uplink (edge -> cloud) is 20 ms +- 5 ms
//! one way (normal, jitter hold 10 ms, FIFO) and whose downlink is clean, so
//! the true RTT is 20 ms + the relay's baseline with a 5 ms standard
//! deviation. The cloud namespace gets two extra addresses of this run's own
//! (derived from the pid, so no other lab's flows can match): `watched`, in
//! the probe's filter, and `unwatched`, not. The probe is loaded from a
//! thread inside the edge namespace (tc goes on the edge TUN device there)
//! with sock_ops on a cgroup of this run that this process joins, so its
//! TCP sockets are the ones sock_ops measures.
//!
//! Phases, one after another so no two flows share the link:
//! 1. baseline: pings over the clean link (relay overhead);
//! 2. unwatched: TCP request/response and a QUIC echo flow to `unwatched`;
//!    the probe must not produce a single record;
//! 3. TCP: 64-byte request/response to `watched`, one exchange in flight,
//!    requests at least one jitter hold apart (each sees its own delay
//!    draw), TCP_NODELAY; the server's response carries the ACK, so every
//!    sock_ops sample is one exchange's RTT. Truth: the client's own timing
//!    of each exchange;
//! 4. QUIC: a quinn connection (mutual TLS) with a datagram every
//!    millisecond each way, echoed at once. quinn leaves the spin bit off on
//!    a random 1 in 8 connections per endpoint and has no setting to force
//!    it on, so a connection that shows no validated spin samples within
//!    its warm-up is closed and a new one opened (counted in the report).
//!    Truth: the client's timing of each echoed datagram of the same flow;
//!    dense traffic in FIFO order pays about jitter^2 / (2 * hold) more
//!    than the configured mean (see bench/README.md), which the truth sees
//!    as much as the spin bit does;
//! 5. loss: the uplink also drops 2 % of packets; a bulk upload for a few
//!    seconds; retransmissions counted by the probe (tracepoint) against
//!    the sending socket's own TCP_INFO and the emulator's drop counter.
//!
//! Then the probe is dropped and must have left no program loaded and no
//! tcx program on the interface; the lab, cgroup and files are removed on
//! every way out (see [`crate::cleanup`]).

use crate::ebpf::detach::{self, Detached};
use crate::ebpf::quic_flow::{self as quic, Echo};
use crate::support::cleanup::Cleanup;
use crate::support::probe_cgroup::{self as cgroup, CgroupGuard};
use agent_core::{LinkConfig, LinkEstimator, NetworkStatus};
use agent_core::{ProbeEvent, ProbeEventKind, SampleSource};
use agent_probe::{EbpfProbe, EbpfProbeConfig};
use anyhow::{Context, Result};
use jitter_lab::accuracy::{summarize, SampleSummary};
use jitter_lab::lab::{Backend, Lab, LabConfig, DEV};
use jitter_lab::params::{Dir, JitterDistribution, LinkParams};
use jitter_lab::sys::{self, netns};
use serde::Serialize;
use std::net::{IpAddr, Ipv4Addr, SocketAddr, UdpSocket};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::mpsc;

pub const DELAY_MS: f64 = 20.0;
pub const JITTER_MS: f64 = 5.0;
pub const LOSS: f64 = 0.02;
/// Passive mean RTT within this of the truth.
pub const RTT_TOLERANCE_MS: f64 = 2.0;
/// Passive jitter (standard deviation) within this fraction of the truth.
pub const JITTER_TOLERANCE: f64 = 0.20;
/// Fewest samples per source for a meaningful comparison.
pub const MIN_SAMPLES: usize = 100;
/// QUIC connections tried before giving up on one with a spinning bit
/// (each fails with probability 1 - (7/8)^2, so six all fail ~1e-4 of runs).
pub const SPIN_ATTEMPTS: u32 = 6;
/// Prefix of the lab namespaces and the cgroup.
pub const PREFIX: &str = "pchk";
/// Time the ring-buffer reader gets to deliver a phase's last records.
const SETTLE: Duration = Duration::from_millis(300);

#[derive(Debug, Clone)]
pub struct CheckOptions {
    pub tcp_seconds: f64,
    pub quic_seconds: f64,
    pub quic_warmup_seconds: f64,
    pub loss_seconds: f64,
    pub unwatched_seconds: f64,
    /// Link model seed (default: from the clock; printed in the report).
    pub seed: Option<u64>,
    /// The eBPF object (default: the agent's search).
    pub object: Option<PathBuf>,
}

impl Default for CheckOptions {
    fn default() -> Self {
        CheckOptions {
            tcp_seconds: 10.0,
            quic_seconds: 8.0,
            quic_warmup_seconds: 1.5,
            loss_seconds: 4.0,
            unwatched_seconds: 1.5,
            seed: None,
            object: None,
        }
    }
}

/// Sample counts per source.
#[derive(Debug, Clone, Serialize)]
pub struct Samples {
    pub sockops: usize,
    pub tc_tcp_ts: usize,
    pub quic_spin: usize,
    /// Application-timed TCP exchanges (the TCP truth).
    pub tcp_app: usize,
    /// Application-timed QUIC datagram echoes (the QUIC truth).
    pub quic_app: usize,
}

/// What the agent's estimator made of one phase's events (the figures the
/// decision would use at the end of it).
#[derive(Debug, Clone, Serialize)]
pub struct EstimatorView {
    pub source: Option<&'static str>,
    pub samples: usize,
    pub mean_ms: f64,
    pub stddev_ms: f64,
    pub loss_rate: f64,
}

impl EstimatorView {
    fn of(s: &NetworkStatus) -> Self {
        EstimatorView {
            source: s.source.map(SampleSource::as_str),
            samples: s.rtt.samples,
            mean_ms: round3(s.rtt.mean_ms),
            stddev_ms: round3(s.rtt.stddev_ms),
            loss_rate: round5(s.loss_rate),
        }
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct Retransmits {
    pub configured_loss: f64,
    pub seconds: f64,
    pub bytes: u64,
    /// Retransmissions the probe reported (tcp:tcp_retransmit_skb, one per skb).
    pub probe_retransmits: u64,
    /// Data segments sent, from the probe's sock_ops counters.
    pub probe_segments: u64,
    /// The sending socket's TCP_INFO: segments retransmitted and data segments sent.
    pub kernel_total_retrans: u32,
    pub kernel_data_segs_out: u32,
    /// Packets the emulator dropped on the uplink during the phase.
    pub emulator_drops: u64,
    pub estimator: EstimatorView,
}

#[derive(Debug, Clone, Serialize)]
pub struct Unwatched {
    pub addr: IpAddr,
    pub tcp_exchanges: u64,
    pub quic_datagrams: u64,
    /// Records the probe read while only unwatched flows ran (must be 0).
    pub records: u64,
}

#[derive(Debug, Clone, Serialize)]
pub struct ProbeCheckReport {
    /// sock_ops (kernel per-ACK RTT samples) during the TCP phase.
    pub tcp_rtt_ms: f64,
    pub tcp_jitter_ms: f64,
    /// QUIC spin-bit samples during the QUIC phase.
    pub quic_rtt_ms: f64,
    pub quic_jitter_ms: f64,
    /// The TCP flow's own timing of its exchanges (mean, standard deviation).
    pub true_rtt_ms: f64,
    pub true_jitter_ms: f64,
    pub samples: Samples,
    /// tc TCP timestamp matching during the TCP phase.
    pub tc_ts_rtt_ms: f64,
    pub tc_ts_jitter_ms: f64,
    /// The QUIC flow's own timing of its datagram echoes.
    pub quic_true_rtt_ms: f64,
    pub quic_true_jitter_ms: f64,
    /// quinn's smoothed RTT at the end of the QUIC phase.
    pub quinn_rtt_ms: f64,
    /// Configured: one-way delay + the clean link's baseline RTT, and jitter.
    pub configured_rtt_ms: f64,
    pub configured_jitter_ms: f64,
    pub baseline_rtt_ms: f64,
    pub jitter_distribution: JitterDistribution,
    pub jitter_hold_ms: f64,
    /// QUIC connections opened until one had a spinning bit.
    pub quic_connections: u32,
    pub estimator_after_tcp: EstimatorView,
    pub estimator_after_quic: EstimatorView,
    pub retransmits: Retransmits,
    pub unwatched: Unwatched,
    pub watched_addr: IpAddr,
    pub kernel_drops: u64,
    pub channel_drops: u64,
    pub detached: Detached,
    pub attachments: Vec<String>,
    pub sockops: SampleSummary,
    pub tc_tcp_ts: SampleSummary,
    pub quic_spin: SampleSummary,
    pub tcp_app: SampleSummary,
    pub quic_app: SampleSummary,
    pub lab: String,
    pub cgroup: PathBuf,
    pub seed: u64,
    pub within_tolerance: bool,
    pub failures: Vec<String>,
    pub duration_s: f64,
}

fn round3(x: f64) -> f64 {
    (x * 1e3).round() / 1e3
}

fn round5(x: f64) -> f64 {
    (x * 1e5).round() / 1e5
}

/// The run's two addresses in 198.19.0.0/16 (inside the benchmarking
/// range, outside the lab's 198.18.0.0/30), distinct per process.
fn run_addresses() -> (Ipv4Addr, Ipv4Addr) {
    let pid = std::process::id();
    let (hi, lo) = (((pid / 126) % 256) as u8, ((pid % 126) * 2 + 2) as u8);
    (
        Ipv4Addr::new(198, 19, hi, lo),
        Ipv4Addr::new(198, 19, hi, lo + 1),
    )
}

/// Events the probe delivered, in arrival order.
type Events = Arc<Mutex<Vec<ProbeEvent>>>;

fn snapshot(events: &Events) -> Vec<ProbeEvent> {
    events.lock().unwrap_or_else(|e| e.into_inner()).clone()
}

fn in_window(e: &ProbeEvent, from: Instant, to: Instant) -> bool {
    e.at >= from && e.at <= to
}

fn rtts_ms(
    events: &[ProbeEvent],
    dest: IpAddr,
    source: SampleSource,
    from: Instant,
    to: Instant,
) -> Vec<f64> {
    events
        .iter()
        .filter(|e| e.dest == dest && e.source == source && in_window(e, from, to))
        .filter_map(|e| match e.kind {
            ProbeEventKind::Rtt(d) => Some(d.as_secs_f64() * 1e3),
            _ => None,
        })
        .collect()
}

/// The estimator fed with one phase's events, as the monitor would be.
fn estimate(events: &[ProbeEvent], dest: IpAddr, from: Instant, to: Instant) -> NetworkStatus {
    let mut est = LinkEstimator::new(LinkConfig::default());
    let mut phase: Vec<&ProbeEvent> = events
        .iter()
        .filter(|e| e.dest == dest && in_window(e, from, to))
        .collect();
    phase.sort_by_key(|e| e.at);
    for e in phase {
        est.on_event(e);
    }
    est.snapshot(to)
}

/// `passive` against `truth`: mean within RTT_TOLERANCE_MS, sd within JITTER_TOLERANCE.
fn compare(name: &str, passive: &SampleSummary, truth: &SampleSummary, failures: &mut Vec<String>) {
    if passive.samples < MIN_SAMPLES {
        failures.push(format!(
            "{name}: {} samples (want at least {MIN_SAMPLES})",
            passive.samples
        ));
        return;
    }
    let d = passive.mean_ms - truth.mean_ms;
    if d.abs() > RTT_TOLERANCE_MS {
        failures.push(format!(
            "{name}: mean RTT {} ms is {d:+.3} ms off the true {} ms (allowed {RTT_TOLERANCE_MS} ms)",
            passive.mean_ms, truth.mean_ms
        ));
    }
    let rel = (passive.sd_ms - truth.sd_ms) / truth.sd_ms;
    if rel.abs() > JITTER_TOLERANCE {
        failures.push(format!(
            "{name}: jitter {} ms is {:+.1} % off the true {} ms (allowed {} %)",
            passive.sd_ms,
            rel * 100.0,
            truth.sd_ms,
            JITTER_TOLERANCE * 100.0
        ));
    }
}

fn emulator_uplink_drops(lab: &Lab) -> u64 {
    lab.stats()["uplink"]["dropped_loss"].as_u64().unwrap_or(0)
}

/// Runs the check; everything it creates is registered with `cleanup`.
pub fn run(
    opts: &CheckOptions,
    cleanup: &Cleanup,
    progress: &dyn Fn(&str),
) -> Result<ProbeCheckReport> {
    sys::require_root("probe-check")?;
    let started = Instant::now();
    sweep_stale();
    let seed = opts.seed.unwrap_or_else(|| {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as u64)
    });
    let prefix = format!("{PREFIX}{}", std::process::id());

    // sock_ops measures the sockets of this process only.
    let cg = Arc::new(CgroupGuard::create(PREFIX)?);
    {
        let cg = Arc::clone(&cg);
        cleanup.push(move || {
            if let Err(e) = cg.remove() {
                eprintln!("probe-check: {e:#}");
            }
        });
    }
    cg.join_self()?;
    let state_dir = std::env::temp_dir().join(format!("{prefix}-state"));
    let cert_dir = std::env::temp_dir().join(format!("{prefix}-certs"));
    for d in [state_dir.clone(), cert_dir.clone()] {
        cleanup.push(move || {
            let _ = std::fs::remove_dir_all(&d);
        });
    }

    progress("building the lab (clean link)");
    let lab = Arc::new(Lab::create(
        &LabConfig::new(
            prefix.clone(),
            Backend::Tun,
            seed,
            LinkParams::default(),
            LinkParams::default(),
        ),
        None,
    )?);
    {
        let lab = Arc::clone(&lab);
        cleanup.push(move || lab.teardown());
    }
    let (edge, cloud) = (lab.edge_ns.clone(), lab.cloud_ns.clone());
    let (watched, unwatched) = run_addresses();
    for a in [watched, unwatched] {
        let host = format!("{a}/32");
        sys::ip(&["-n", &cloud, "addr", "add", &host, "dev", DEV])?;
        sys::ip(&["-n", &edge, "route", "add", &host, "dev", DEV])?;
    }
    let (w, u) = (IpAddr::V4(watched), IpAddr::V4(unwatched));

    progress("baseline: 50 pings over the clean link");
    let base = jitter_lab::traffic::ping(&edge, &watched.to_string(), 50, 0.01)?;
    let baseline_rtt_ms = summarize(&base.rtts_ms).mean_ms;

    progress("loading the eBPF probe in the edge namespace");
    let probe_cfg = EbpfProbeConfig {
        object: opts.object.clone(),
        cgroup: Some(cg.path.clone()),
        tc_interface: Some(DEV.to_string()),
        endpoints: vec![w],
        state_dir: state_dir.clone(),
        ..EbpfProbeConfig::default()
    };
    let mut probe = netns::run_in(&edge, move || {
        EbpfProbe::load(&probe_cfg).map_err(|e| anyhow::anyhow!("loading the eBPF probe: {e}"))
    })?;
    let attachments = probe.attachments().to_vec();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let events: Events = Arc::default();
    let rx = {
        let _enter = rt.enter();
        probe
            .start_reader()
            .map_err(|e| anyhow::anyhow!("starting the ring-buffer reader: {e}"))?
    };
    rt.spawn(collect(rx, Arc::clone(&events)));

    let impaired = LinkParams {
        delay_ms: DELAY_MS,
        jitter_ms: JITTER_MS,
        jitter_distribution: JitterDistribution::Normal,
        jitter_hold_ms: jitter_lab::params::DEFAULT_JITTER_HOLD_MS,
        reorder: false,
        ..LinkParams::default()
    };
    lab.set(Dir::Uplink, impaired.clone())?;
    std::thread::sleep(Duration::from_millis(100));
    let (server_cfg, client_cfg) = quic::configs(&cert_dir)?;
    let spacing = Duration::from_secs_f64((impaired.jitter_hold_ms + 1.0) / 1e3);

    progress(&format!(
        "unwatched: TCP and QUIC to {unwatched} (not in the filter)"
    ));
    let records_before = probe.stats().records;
    let unwatched_tcp = jitter_lab::traffic::tcp_pingpong(
        &edge,
        &cloud,
        &unwatched.to_string(),
        opts.unwatched_seconds,
        spacing,
    )?;
    let unwatched_quic = rt.block_on(async {
        let server = quic::endpoint(
            udp_in(&cloud, SocketAddr::new(u, 0))?,
            Some(server_cfg.clone()),
        )?;
        let server_addr = SocketAddr::new(u, server.local_addr()?.port());
        let serving = quic::serve_echo(server.clone());
        let client = quic::endpoint(udp_in(&edge, "0.0.0.0:0".parse()?)?, None)?;
        let conn = quic::connect(&client, client_cfg.clone(), server_addr).await?;
        let echo = Echo::start(conn, Duration::from_millis(1));
        tokio::time::sleep(Duration::from_secs_f64(opts.unwatched_seconds)).await;
        let totals = echo.stop(Duration::from_millis(200)).await?;
        client.wait_idle().await;
        server.close(0u32.into(), b"done");
        serving.abort();
        anyhow::Ok(totals)
    })?;
    std::thread::sleep(SETTLE);
    let unwatched_report = Unwatched {
        addr: u,
        tcp_exchanges: unwatched_tcp.exchanges,
        quic_datagrams: unwatched_quic.sent,
        records: probe.stats().records - records_before,
    };

    progress(&format!(
        "TCP: request/response to {watched} for {} s across {DELAY_MS} ms +- {JITTER_MS} ms one way",
        opts.tcp_seconds
    ));
    let t0 = Instant::now();
    let tcp = jitter_lab::traffic::tcp_pingpong(
        &edge,
        &cloud,
        &watched.to_string(),
        opts.tcp_seconds,
        spacing,
    )?;
    let t1 = Instant::now();
    std::thread::sleep(SETTLE);
    let evs = snapshot(&events);
    let sockops = rtts_ms(&evs, w, SampleSource::SockOps, t0, t1);
    let tc_ts = rtts_ms(&evs, w, SampleSource::TcTimestamp, t0, t1);
    let estimator_after_tcp = EstimatorView::of(&estimate(&evs, w, t0, t1));

    progress(&format!(
        "QUIC: datagram echo every 1 ms to {watched} for {} s (after a spin-bit warm-up)",
        opts.quic_seconds
    ));
    let (quic_window, quic_truth, quic_totals, quic_connections) = rt.block_on(async {
        let server = quic::endpoint(
            udp_in(&cloud, SocketAddr::new(w, 0))?,
            Some(server_cfg.clone()),
        )?;
        let server_addr = SocketAddr::new(w, server.local_addr()?.port());
        let serving = quic::serve_echo(server.clone());
        let mut result = None;
        for attempt in 1..=SPIN_ATTEMPTS {
            let client = quic::endpoint(udp_in(&edge, "0.0.0.0:0".parse()?)?, None)?;
            let conn = quic::connect(&client, client_cfg.clone(), server_addr).await?;
            let echo = Echo::start(conn, Duration::from_millis(1));
            let warm = Instant::now();
            tokio::time::sleep(Duration::from_secs_f64(opts.quic_warmup_seconds)).await;
            let spins = rtts_ms(
                &snapshot(&events),
                w,
                SampleSource::QuicSpin,
                warm,
                Instant::now(),
            )
            .len();
            if spins < 20 {
                progress(&format!(
                    "QUIC connection {attempt}: {spins} spin-bit samples in the warm-up \
                     (quinn left spinning off on it); opening another"
                ));
                echo.stop(Duration::from_millis(100)).await?;
                client.wait_idle().await;
                continue;
            }
            let m0 = Instant::now();
            tokio::time::sleep(Duration::from_secs_f64(opts.quic_seconds)).await;
            let m1 = Instant::now();
            let truth = echo.rtts_sent_between(m0, m1);
            let totals = echo.stop(Duration::from_millis(500)).await?;
            client.wait_idle().await;
            result = Some(((m0, m1), truth, totals, attempt));
            break;
        }
        server.close(0u32.into(), b"done");
        serving.abort();
        result.with_context(|| {
            format!("none of {SPIN_ATTEMPTS} QUIC connections showed a spinning spin bit")
        })
    })?;
    std::thread::sleep(SETTLE);
    let evs = snapshot(&events);
    // An edge answering the last datagrams of the window arrives one RTT later.
    let (q0, q1) = (quic_window.0, quic_window.1 + Duration::from_millis(100));
    let spin = rtts_ms(&evs, w, SampleSource::QuicSpin, q0, q1);
    let estimator_after_quic = EstimatorView::of(&estimate(&evs, w, q0, q1));

    progress(&format!(
        "loss: {} % on the uplink, bulk upload to {watched} for {} s",
        LOSS * 100.0,
        opts.loss_seconds
    ));
    lab.set(
        Dir::Uplink,
        LinkParams {
            loss: LOSS,
            ..impaired.clone()
        },
    )?;
    let drops_before = emulator_uplink_drops(&lab);
    let l0 = Instant::now();
    let bulk = crate::ebpf::tcp_flow::bulk_upload(&edge, &cloud, w, opts.loss_seconds)?;
    let l1 = Instant::now();
    let emulator_drops = emulator_uplink_drops(&lab) - drops_before;
    std::thread::sleep(SETTLE);
    let evs = snapshot(&events);
    let sum = |want: fn(&ProbeEventKind) -> Option<u32>| -> u64 {
        evs.iter()
            .filter(|e| e.dest == w && in_window(e, l0, l1))
            .filter_map(|e| want(&e.kind))
            .map(u64::from)
            .sum()
    };
    let retransmits = Retransmits {
        configured_loss: LOSS,
        seconds: round3(bulk.seconds),
        bytes: bulk.bytes,
        probe_retransmits: sum(|k| match k {
            ProbeEventKind::Retransmits(n) => Some(*n),
            _ => None,
        }),
        probe_segments: sum(|k| match k {
            ProbeEventKind::SegmentsSent(n) => Some(*n),
            _ => None,
        }),
        kernel_total_retrans: bulk.info.total_retrans,
        kernel_data_segs_out: bulk.info.data_segs_out,
        emulator_drops,
        estimator: EstimatorView::of(&estimate(&evs, w, l0, l1)),
    };

    progress("detaching the probe");
    let stats = probe.stats();
    let strays: Vec<IpAddr> = evs.iter().map(|e| e.dest).filter(|d| *d != w).collect();
    let ids = probe.program_ids().to_vec();
    drop(probe);
    let detached = detach::verify(ids, &edge, DEV);
    drop(rt);

    let (sockops_s, tc_ts_s, spin_s) = (summarize(&sockops), summarize(&tc_ts), summarize(&spin));
    let (tcp_truth, quic_truth_s) = (summarize(&tcp.rtts_ms), summarize(&quic_truth));
    let mut failures = Vec::new();
    compare("sock_ops", &sockops_s, &tcp_truth, &mut failures);
    compare("tc TCP timestamps", &tc_ts_s, &tcp_truth, &mut failures);
    compare("QUIC spin bit", &spin_s, &quic_truth_s, &mut failures);
    if tcp_truth.samples < MIN_SAMPLES || quic_truth_s.samples < MIN_SAMPLES {
        failures.push(format!(
            "too little traffic: {} TCP exchanges, {} QUIC echoes",
            tcp_truth.samples, quic_truth_s.samples
        ));
    }
    if unwatched_report.records != 0 {
        failures.push(format!(
            "{} records while only flows outside the filter ran",
            unwatched_report.records
        ));
    }
    if !strays.is_empty() {
        failures.push(format!(
            "events for endpoints outside the filter: {strays:?}"
        ));
    }
    if retransmits.probe_retransmits == 0 || retransmits.kernel_total_retrans == 0 {
        failures.push(format!(
            "retransmissions under {} % loss: probe {}, kernel {}",
            LOSS * 100.0,
            retransmits.probe_retransmits,
            retransmits.kernel_total_retrans
        ));
    } else if retransmits.probe_retransmits > u64::from(retransmits.kernel_total_retrans) {
        // One tracepoint hit per retransmitted skb, which holds one or more segments.
        failures.push(format!(
            "the probe counted {} retransmissions, the socket itself {}",
            retransmits.probe_retransmits, retransmits.kernel_total_retrans
        ));
    }
    if stats.kernel_drops != 0 || stats.channel_drops != 0 {
        failures.push(format!(
            "records lost: {} in the kernel, {} in the channel",
            stats.kernel_drops, stats.channel_drops
        ));
    }
    if !detached.clean() {
        failures.push(format!(
            "left behind after the probe was dropped: {detached:?}"
        ));
    }

    let report = ProbeCheckReport {
        tcp_rtt_ms: sockops_s.mean_ms,
        tcp_jitter_ms: sockops_s.sd_ms,
        quic_rtt_ms: spin_s.mean_ms,
        quic_jitter_ms: spin_s.sd_ms,
        true_rtt_ms: tcp_truth.mean_ms,
        true_jitter_ms: tcp_truth.sd_ms,
        samples: Samples {
            sockops: sockops_s.samples,
            tc_tcp_ts: tc_ts_s.samples,
            quic_spin: spin_s.samples,
            tcp_app: tcp_truth.samples,
            quic_app: quic_truth_s.samples,
        },
        tc_ts_rtt_ms: tc_ts_s.mean_ms,
        tc_ts_jitter_ms: tc_ts_s.sd_ms,
        quic_true_rtt_ms: quic_truth_s.mean_ms,
        quic_true_jitter_ms: quic_truth_s.sd_ms,
        quinn_rtt_ms: round3(quic_totals.quinn_rtt_ms),
        configured_rtt_ms: round3(DELAY_MS + baseline_rtt_ms),
        configured_jitter_ms: JITTER_MS,
        baseline_rtt_ms,
        jitter_distribution: impaired.jitter_distribution,
        jitter_hold_ms: impaired.jitter_hold_ms,
        quic_connections,
        estimator_after_tcp,
        estimator_after_quic,
        retransmits,
        unwatched: unwatched_report,
        watched_addr: w,
        kernel_drops: stats.kernel_drops,
        channel_drops: stats.channel_drops,
        detached,
        attachments,
        sockops: sockops_s,
        tc_tcp_ts: tc_ts_s,
        quic_spin: spin_s,
        tcp_app: tcp_truth,
        quic_app: quic_truth_s,
        lab: prefix,
        cgroup: cg.path.clone(),
        seed,
        within_tolerance: failures.is_empty(),
        failures,
        duration_s: 0.0,
    };
    // The lab and the cgroup go now, so the report's duration includes it.
    cleanup.run();
    Ok(ProbeCheckReport {
        duration_s: (started.elapsed().as_secs_f64() * 10.0).round() / 10.0,
        ..report
    })
}

async fn collect(mut rx: mpsc::Receiver<ProbeEvent>, events: Events) {
    while let Some(ev) = rx.recv().await {
        events.lock().unwrap_or_else(|e| e.into_inner()).push(ev);
    }
}

/// A UDP socket bound to `addr` inside namespace `ns`.
fn udp_in(ns: &str, addr: SocketAddr) -> Result<UdpSocket> {
    netns::run_in(ns, move || Ok(UdpSocket::bind(addr)?))
        .with_context(|| format!("binding UDP {addr} in {ns}"))
}

/// Removes namespaces, cgroups and lab prefix locks of earlier checks
/// whose process is gone.
pub fn sweep_stale() {
    cgroup::sweep_stale(PREFIX);
    netns::sweep_orphans(PREFIX, "probe-check");
}
