//! The passive eBPF probe, userspace side: loads `agent-ebpf` into the
//! kernel, attaches it, reads its ring buffer on a tokio task and turns the
//! records into [`ProbeEvent`]s for the estimators.
//!
//! What gets attached:
//! - `sockops_rtt` to a cgroup v2 (default: the hierarchy's root, so every
//!   local TCP socket): kernel RTT samples, segment counters;
//! - `tc_egress` / `tc_ingress` to one interface, if configured: TCP
//!   timestamp and QUIC spin-bit RTT, also for forwarded flows; tcx links on
//!   Linux 6.6+, netlink cls_bpf filters under a clsact qdisc before that;
//! - tracepoints tcp:tcp_retransmit_skb and sock:inet_sock_set_state, when
//!   tracefs is available (mounted here if needed).
//!
//! Each of these parts ([`ProbePart`]) attaches on its own: one that cannot
//! (no cgroup2 hierarchy visible, say, in an agent started with `ip netns
//! exec`) is recorded with its reason ([`EbpfProbe::failed_parts`]) and
//! logged once; the probe is unavailable only when no part attaches.
//!
//! Only flows to the endpoints in the filter map are measured
//! ([`EbpfProbe::set_endpoints`]). Everything is detached when the probe is
//! dropped; what could survive a crash, and how the next start removes it,
//! is described in `leftovers`. Privileges: see `privileges`.
//!
//! Two-step start, so the agent can drop capabilities before any other
//! thread exists: [`EbpfProbe::load`] (no runtime needed), then
//! [`EbpfProbe::start_reader`] inside the runtime; [`EbpfProbe::start`]
//! does both.

mod leftovers;
mod netlink;
mod records;

use crate::privileges;
use agent_common::{
    FilterKey, TracepointLayout, CONTROL_FILTER_GEN, CONTROL_MAP, CONTROL_WATCH_ALL,
    DEFAULT_SAMPLE_INTERVAL_NS, FILTER_MAP, HOOKS_ONLY_GLOBAL, L2_LEN_GLOBAL, PROG_SOCKOPS,
    PROG_TC_EGRESS, PROG_TC_INGRESS, PROG_TP_RETRANSMIT, PROG_TP_SET_STATE, RING_BUF_DRAIN_MS,
    RING_BUF_MAP, SAMPLE_INTERVAL_GLOBAL, TP_LAYOUT_GLOBAL,
};
use agent_core::ProbeEvent;
use aya::maps::{Array, HashMap as BpfHashMap, MapData, MapError, PerCpuArray, RingBuf};
use aya::programs::tc::{self, NlOptions, TcAttachOptions};
use aya::programs::{
    CgroupAttachMode, LinkOrder, SchedClassifier, SockOps, TcAttachType, TracePoint,
};
use aya::util::KernelVersion;
use aya::{Ebpf, EbpfLoader};
use caps::Capability;
use leftovers::{RecordFile, TcRecord};
use netlink::Netns;
pub use records::convert_ring_items;
use records::{record_from_bytes, Converter, Counters, MonoClock};
use std::collections::HashSet;
use std::fmt::Write as _;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::io::unix::AsyncFd;
use tokio::io::Interest;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tracing::{debug, info, warn};

/// Environment variable naming the object file explicitly.
pub const OBJECT_ENV: &str = "EDGE_AGENT_EBPF_OBJECT";
/// Where `cargo xtask build-ebpf` installs the object, relative to the workspace.
pub const OBJECT_RELATIVE: &str = "target/bpf/agent-ebpf.o";
/// Where records of netlink tc attachments are kept (see `leftovers`).
pub const DEFAULT_STATE_DIR: &str = "/run/edge-agent/ebpf";

/// How the tc programs are attached.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum TcAttach {
    /// tcx links where the kernel has them (6.6+), netlink filters before.
    #[default]
    Auto,
    /// Always a netlink cls_bpf filter under a clsact qdisc.
    Netlink,
}

#[derive(Debug, Clone)]
pub struct EbpfProbeConfig {
    /// The object file; `None` searches (see [`find_object`]).
    pub object: Option<PathBuf>,
    /// cgroup v2 directory for sock_ops; `None` is the hierarchy's root.
    pub cgroup: Option<PathBuf>,
    /// Interface for the tc programs (ingress and egress); `None` attaches none.
    pub tc_interface: Option<String>,
    /// Remote endpoints to measure (the cloud service's addresses).
    pub endpoints: Vec<IpAddr>,
    /// Measure every remote endpoint (diagnostics; costs more).
    pub watch_all: bool,
    pub tc_attach: TcAttach,
    pub state_dir: PathBuf,
    /// Capacity of the event channel; events beyond it are counted and dropped.
    pub channel_capacity: usize,
    /// Shortest time between two RTT samples of one flow and source (the
    /// kernel's per-flow rate limit, like ePPing's); zero keeps every sample.
    pub sample_interval: Duration,
    /// Attach every program but have each return at once, measuring
    /// nothing: what the hooks cost by themselves (benchmarks only).
    pub hooks_only: bool,
}

/// The default per-flow sample interval ([`EbpfProbeConfig::sample_interval`]).
pub const DEFAULT_SAMPLE_INTERVAL: Duration = Duration::from_nanos(DEFAULT_SAMPLE_INTERVAL_NS);

impl Default for EbpfProbeConfig {
    fn default() -> Self {
        EbpfProbeConfig {
            object: None,
            cgroup: None,
            tc_interface: None,
            endpoints: Vec::new(),
            watch_all: false,
            tc_attach: TcAttach::Auto,
            state_dir: PathBuf::from(DEFAULT_STATE_DIR),
            channel_capacity: 8192,
            sample_interval: DEFAULT_SAMPLE_INTERVAL,
            hooks_only: false,
        }
    }
}

/// One independently attached piece of the probe.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ProbePart {
    /// `sockops_rtt` on the cgroup v2.
    SockOps,
    /// `tc_ingress` on the configured interface.
    TcIngress,
    /// `tc_egress` on the configured interface.
    TcEgress,
    /// Tracepoint tcp:tcp_retransmit_skb.
    TracepointRetransmit,
    /// Tracepoint sock:inet_sock_set_state.
    TracepointSetState,
}

impl ProbePart {
    pub const ALL: [ProbePart; 5] = [
        ProbePart::SockOps,
        ProbePart::TcIngress,
        ProbePart::TcEgress,
        ProbePart::TracepointRetransmit,
        ProbePart::TracepointSetState,
    ];

    /// The name used in logs and metric labels.
    pub fn as_str(self) -> &'static str {
        match self {
            ProbePart::SockOps => "sock_ops",
            ProbePart::TcIngress => "tc_ingress",
            ProbePart::TcEgress => "tc_egress",
            ProbePart::TracepointRetransmit => "tracepoint_tcp_retransmit_skb",
            ProbePart::TracepointSetState => "tracepoint_inet_sock_set_state",
        }
    }
}

impl std::fmt::Display for ProbePart {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

fn part_reasons(list: &[(ProbePart, String)]) -> String {
    list.iter()
        .map(|(p, r)| format!("{p}: {r}"))
        .collect::<Vec<_>>()
        .join("; ")
}

/// Why the passive probe cannot run; the agent logs it once and falls back
/// to active probing.
#[derive(Debug, thiserror::Error)]
pub enum EbpfUnavailable {
    #[error("insufficient privileges: {0}")]
    Privileges(#[from] privileges::Missing),
    #[error(
        "no eBPF object at {} (run `cargo xtask build-ebpf`, or set {OBJECT_ENV})",
        paths(.searched)
    )]
    ObjectMissing { searched: Vec<PathBuf> },
    #[error("the kernel lacks {what}: {detail}")]
    Kernel { what: String, detail: String },
    #[error("permission denied {what}: {detail}")]
    Denied { what: String, detail: String },
    #[error("{what}: {detail}")]
    Setup { what: String, detail: String },
    #[error("the eBPF probe reads its ring buffer on a tokio task: call it inside a runtime")]
    NoRuntime,
    #[error("no part of the probe could be attached: {}", part_reasons(.failed))]
    NothingAttached { failed: Vec<(ProbePart, String)> },
}

fn paths(list: &[PathBuf]) -> String {
    list.iter()
        .map(|p| p.display().to_string())
        .collect::<Vec<_>>()
        .join(", ")
}

/// The error and its sources on one line; verifier logs cut to their end.
fn chain(err: &(dyn std::error::Error + 'static)) -> String {
    let mut out = err.to_string();
    let mut src = err.source();
    while let Some(e) = src {
        let _ = write!(out, ": {e}");
        src = e.source();
    }
    const MAX: usize = 2000;
    if out.len() > MAX {
        let mut cut = out.len() - MAX;
        while !out.is_char_boundary(cut) {
            cut += 1;
        }
        out = format!("...{}", &out[cut..]);
    }
    out
}

fn os_error(err: &(dyn std::error::Error + 'static)) -> Option<i32> {
    let mut cur = Some(err);
    while let Some(e) = cur {
        if let Some(io) = e.downcast_ref::<std::io::Error>() {
            if let Some(code) = io.raw_os_error() {
                return Some(code);
            }
        }
        cur = e.source();
    }
    None
}

/// Sorts a kernel-facing failure into "denied" or "kernel lacks".
fn kernel_error(what: &str, err: &(dyn std::error::Error + 'static)) -> EbpfUnavailable {
    let detail = chain(err);
    match os_error(err) {
        Some(nix::libc::EPERM) | Some(nix::libc::EACCES) => EbpfUnavailable::Denied {
            what: what.to_string(),
            detail,
        },
        _ => EbpfUnavailable::Kernel {
            what: what.to_string(),
            detail,
        },
    }
}

fn setup_error(what: impl Into<String>, detail: impl std::fmt::Display) -> EbpfUnavailable {
    EbpfUnavailable::Setup {
        what: what.into(),
        detail: detail.to_string(),
    }
}

/// The object built into this binary: `cargo xtask build-ebpf` before
/// the build embeds `target/bpf/agent-ebpf.o` (see build.rs).
#[cfg(embedded_ebpf)]
static EMBEDDED: Option<&[u8]> = Some(aya::include_bytes_aligned!(env!("AGENT_EBPF_OBJECT_PATH")));
#[cfg(not(embedded_ebpf))]
static EMBEDDED: Option<&[u8]> = None;

/// Where the programs are loaded from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ObjectSource {
    File(PathBuf),
    /// The object embedded at build time.
    Embedded(&'static [u8]),
}

impl std::fmt::Display for ObjectSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ObjectSource::File(p) => write!(f, "{}", p.display()),
            ObjectSource::Embedded(_) => f.write_str("the object embedded in the binary"),
        }
    }
}

/// Finds the object: `explicit` if given, else `$EDGE_AGENT_EBPF_OBJECT`
/// (both override what is embedded), else the embedded object, else
/// `target/bpf/agent-ebpf.o` under the current directory or under any
/// ancestor of the executable's directory.
pub fn find_object(explicit: Option<&Path>) -> Result<ObjectSource, EbpfUnavailable> {
    let mut candidates = Vec::new();
    if let Some(p) = explicit {
        candidates.push(p.to_path_buf());
    } else if let Some(p) = std::env::var_os(OBJECT_ENV) {
        candidates.push(PathBuf::from(p));
    } else if let Some(bytes) = EMBEDDED {
        return Ok(ObjectSource::Embedded(bytes));
    } else {
        if let Ok(cwd) = std::env::current_dir() {
            candidates.push(cwd.join(OBJECT_RELATIVE));
        }
        if let Ok(exe) = std::env::current_exe() {
            for dir in exe.ancestors().skip(1) {
                candidates.push(dir.join(OBJECT_RELATIVE));
            }
        }
    }
    match candidates.iter().find(|p| p.is_file()) {
        Some(p) => Ok(ObjectSource::File(p.clone())),
        None => Err(EbpfUnavailable::ObjectMissing {
            searched: candidates,
        }),
    }
}

/// Mount points from /proc/self/mounts with the given filesystem type.
fn mounts_of(fstype: &str) -> Vec<PathBuf> {
    std::fs::read_to_string("/proc/self/mounts")
        .unwrap_or_default()
        .lines()
        .filter_map(|l| {
            let mut f = l.split_whitespace();
            let (_, dir, ty) = (f.next()?, f.next()?, f.next()?);
            (ty == fstype).then(|| PathBuf::from(dir))
        })
        .collect()
}

/// The cgroup v2 root: /sys/fs/cgroup when that is cgroup2 (unified
/// systems), else the hybrid layout's /sys/fs/cgroup/unified, else any.
pub fn default_cgroup() -> Option<PathBuf> {
    let roots = mounts_of("cgroup2");
    for preferred in ["/sys/fs/cgroup", "/sys/fs/cgroup/unified"] {
        if let Some(p) = roots.iter().find(|p| p.as_path() == Path::new(preferred)) {
            return Some(p.clone());
        }
    }
    roots.into_iter().next()
}

/// The cgroup for sock_ops: `explicit`, which must be a cgroup v2
/// directory, else the hierarchy's root; the reason when there is none.
fn sockops_cgroup(explicit: Option<&Path>) -> Result<PathBuf, String> {
    let Some(path) = explicit else {
        return default_cgroup().ok_or_else(|| {
            "no cgroup2 filesystem is visible in this mount namespace (an agent started with \
             `ip netns exec` sees a /sys without one; set probe.cgroup to a cgroup v2 folder)"
                .to_string()
        });
    };
    let fs =
        nix::sys::statfs::statfs(path).map_err(|e| format!("cgroup {}: {e}", path.display()))?;
    if fs.filesystem_type() != nix::sys::statfs::CGROUP2_SUPER_MAGIC {
        return Err(format!(
            "{} is not a cgroup v2 folder (filesystem type {:#x})",
            path.display(),
            fs.filesystem_type().0
        ));
    }
    Ok(path.to_path_buf())
}

/// tracefs, mounted at /sys/kernel/tracing if it is nowhere yet.
fn tracefs() -> Result<PathBuf, String> {
    if let Some(p) = mounts_of("tracefs").into_iter().next() {
        return Ok(p);
    }
    let target = Path::new("/sys/kernel/tracing");
    nix::mount::mount(
        Some("nodev"),
        target,
        Some("tracefs"),
        nix::mount::MsFlags::empty(),
        None::<&str>,
    )
    .map_err(|e| {
        format!(
            "tracefs is not mounted and mounting it at {} failed: {e}",
            target.display()
        )
    })?;
    info!("mounted tracefs at {}", target.display());
    Ok(target.to_path_buf())
}

/// Bytes before the IP header on `iface`: 14 on Ethernet-like links, 0 on
/// layer-3 devices (TUN, WireGuard, IP tunnels).
fn l2_len(iface: &str) -> Result<u32, EbpfUnavailable> {
    const ARPHRD_ETHER: u16 = 1;
    const ARPHRD_RAWIP: u16 = 519;
    const ARPHRD_TUNNEL: u16 = 768;
    const ARPHRD_TUNNEL6: u16 = 769;
    const ARPHRD_LOOPBACK: u16 = 772;
    const ARPHRD_SIT: u16 = 776;
    const ARPHRD_IPGRE: u16 = 778;
    const ARPHRD_NONE: u16 = 0xfffe;
    let ty =
        netlink::link_type(iface).map_err(|e| setup_error(format!("tc interface {iface}"), e))?;
    match ty {
        ARPHRD_ETHER | ARPHRD_LOOPBACK => Ok(14),
        ARPHRD_NONE | ARPHRD_RAWIP | ARPHRD_TUNNEL | ARPHRD_TUNNEL6 | ARPHRD_SIT | ARPHRD_IPGRE => {
            Ok(0)
        }
        other => Err(setup_error(
            format!("tc interface {iface}"),
            format!("link type {other} is neither Ethernet nor plain IP"),
        )),
    }
}

/// The filter-map key of an endpoint (IPv4 as `::ffff:a.b.c.d`).
pub fn filter_key(ip: IpAddr) -> FilterKey {
    let v6 = match ip {
        IpAddr::V4(v4) => v4.to_ipv6_mapped(),
        IpAddr::V6(v6) => v6,
    };
    let o = v6.octets();
    let mut addr = [0u32; 4];
    for (w, c) in addr.iter_mut().zip(o.chunks_exact(4)) {
        *w = u32::from_ne_bytes([c[0], c[1], c[2], c[3]]);
    }
    FilterKey { addr }
}

/// Counters of a running probe.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct EbpfStats {
    /// Records read from the ring buffer.
    pub records: u64,
    pub sockops_rtt: u64,
    /// sock_ops samples left out because a retransmission came between
    /// them and the socket's previous one (they measure loss recovery).
    pub sockops_rtt_in_recovery: u64,
    pub tc_tcp_ts_rtt: u64,
    pub quic_spin_rtt: u64,
    /// Retransmitted skbs seen by the tracepoint.
    pub retransmits: u64,
    /// TCP flows to watched endpoints that reached ESTABLISHED / CLOSE.
    pub flows_started: u64,
    pub flows_ended: u64,
    /// Records lost because the ring buffer was full.
    pub kernel_drops: u64,
    /// Events lost because the receiver fell behind.
    pub channel_drops: u64,
}

/// tc attached through netlink: what must be undone, in which namespace.
struct NetlinkTc {
    ifindex: u32,
    record: RecordFile,
}

struct TcAttachment {
    iface: String,
    netns: Netns,
    netlink: Option<NetlinkTc>,
}

type SpawnLogger = Box<dyn FnOnce() -> std::io::Result<JoinHandle<()>> + Send>;

/// The kernel's view of what to measure: the FILTER map of endpoints and
/// the CONTROL switches. Every change bumps the filter generation, so the
/// tc programs check flows they admitted earlier against the new filter.
struct Filter {
    map: BpfHashMap<MapData, FilterKey, u8>,
    control: Array<MapData, u32>,
    generation: u32,
}

impl Filter {
    fn set_endpoints(&mut self, endpoints: &[IpAddr]) -> Result<(), MapError> {
        let want: HashSet<FilterKey> = endpoints.iter().map(|ip| filter_key(*ip)).collect();
        let have: Vec<FilterKey> = self.map.keys().collect::<Result<_, _>>()?;
        for key in have {
            if !want.contains(&key) {
                self.map.remove(&key)?;
            }
        }
        for key in want {
            self.map.insert(key, 1, 0)?;
        }
        self.changed()
    }

    fn set_watch_all(&mut self, on: bool) -> Result<(), MapError> {
        self.control.set(CONTROL_WATCH_ALL, u32::from(on), 0)?;
        self.changed()
    }

    fn changed(&mut self) -> Result<(), MapError> {
        self.generation = self.generation.wrapping_add(1);
        self.control.set(CONTROL_FILTER_GEN, self.generation, 0)
    }
}

/// A loaded and attached probe. Dropping it detaches everything.
pub struct EbpfProbe {
    bpf: Option<Ebpf>,
    filter: Mutex<Filter>,
    drops: PerCpuArray<MapData, u64>,
    ring: Option<RingBuf<MapData>>,
    spawn_logger: Option<SpawnLogger>,
    tasks: Vec<JoinHandle<()>>,
    counters: Arc<Counters>,
    clock: MonoClock,
    retransmit_tracepoint: bool,
    tc: Option<TcAttachment>,
    program_ids: Vec<u32>,
    attachments: Vec<String>,
    parts: Parts,
    channel_capacity: usize,
}

/// Which parts attached, and why the others did not.
#[derive(Debug, Default)]
struct Parts {
    attached: Vec<ProbePart>,
    failed: Vec<(ProbePart, String)>,
}

impl Parts {
    fn record(&mut self, part: ProbePart, res: Result<(), String>) {
        match res {
            Ok(()) => self.attached.push(part),
            Err(reason) => self.failed.push((part, reason)),
        }
    }
}

impl EbpfProbe {
    /// [`load`](Self::load) and [`start_reader`](Self::start_reader).
    pub fn start(
        cfg: &EbpfProbeConfig,
    ) -> Result<(EbpfProbe, mpsc::Receiver<ProbeEvent>), EbpfUnavailable> {
        let mut probe = EbpfProbe::load(cfg)?;
        let rx = probe.start_reader()?;
        Ok((probe, rx))
    }

    /// Checks privileges, loads the object and attaches every program.
    /// Needs no async runtime; tc attaches in the calling thread's network
    /// namespace.
    pub fn load(cfg: &EbpfProbeConfig) -> Result<EbpfProbe, EbpfUnavailable> {
        privileges::ensure(&privileges::ebpf_needs())?;
        let object = find_object(cfg.object.as_deref())?;
        for line in leftovers::clean(&cfg.state_dir) {
            warn!("eBPF probe: leftover of an earlier run: {line}");
        }
        // What a part needs beyond the object; a failure here costs only
        // the parts that need it.
        let cgroup_path = sockops_cgroup(cfg.cgroup.as_deref());
        let layout = tracefs().and_then(|t| records::tracepoint_layout(&t));
        let l2 = match &cfg.tc_interface {
            Some(iface) => l2_len(iface).map_err(|e| e.to_string()),
            None => Ok(14),
        };
        let tp_layout = *layout.as_ref().unwrap_or(&TracepointLayout::DEFAULT);
        let clock = MonoClock::now();
        let sample_interval_ns = u64::try_from(cfg.sample_interval.as_nanos()).unwrap_or(u64::MAX);
        let hooks_only = u32::from(cfg.hooks_only);
        let mut loader = EbpfLoader::new();
        loader
            .override_global(TP_LAYOUT_GLOBAL, &tp_layout, true)
            .override_global(L2_LEN_GLOBAL, l2.as_ref().unwrap_or(&14), true)
            // Not required: an object built before the rate limit loads without it.
            .override_global(SAMPLE_INTERVAL_GLOBAL, &sample_interval_ns, false)
            // Required when asked for: an object without it would measure
            // its whole work under the hooks-only label.
            .override_global(HOOKS_ONLY_GLOBAL, &hooks_only, cfg.hooks_only);
        let loaded = match &object {
            ObjectSource::File(path) => loader.load_file(path),
            ObjectSource::Embedded(bytes) => loader.load(bytes),
        };
        let mut bpf = loaded.map_err(|e| kernel_error(&format!("loading {object}"), &e))?;

        let logger = aya_log::EbpfLogger::init(&mut bpf)
            .map_err(|e| setup_error("eBPF log buffer", chain(&e)))?;
        let spawn_logger: SpawnLogger = Box::new(move || {
            // SAFETY: the logger owns its ring buffer's fd and keeps it open
            // and unchanged for as long as the AsyncFd holds it.
            let mut fd = unsafe { AsyncFd::register_with_interest(logger, Interest::READABLE) }?;
            Ok(tokio::spawn(async move {
                // Records arrive through the `log` facade; tracing-subscriber's
                // log bridge turns them into tracing events.
                // Readiness is cleared before draining, so a record that
                // lands during the drain still wakes the next round.
                while let Ok(mut guard) = fd.readable_mut().await {
                    guard.clear_ready();
                    guard.get_inner_mut().flush();
                }
            }))
        });

        let mut program_ids = Vec::new();
        let mut attachments = Vec::new();
        let mut parts = Parts::default();

        // sock_ops on the cgroup. A link attachment always coexists with
        // other programs there, so no multi flag is passed.
        let res = cgroup_path.and_then(|path| {
            attach_sockops(&mut bpf, &path, &mut program_ids)
                .map(|()| attachments.push(format!("sock_ops on cgroup {}", path.display())))
                .map_err(|e| e.to_string())
        });
        parts.record(ProbePart::SockOps, res);

        let tc = match (&cfg.tc_interface, l2) {
            (Some(iface), Ok(_)) => attach_tc(
                &mut bpf,
                iface,
                cfg,
                &mut program_ids,
                &mut attachments,
                &mut parts,
            ),
            (Some(_), Err(reason)) => {
                parts.record(ProbePart::TcEgress, Err(reason.clone()));
                parts.record(ProbePart::TcIngress, Err(reason));
                None
            }
            (None, _) => None,
        };

        for (part, name, category, event) in [
            (
                ProbePart::TracepointRetransmit,
                PROG_TP_RETRANSMIT,
                "tcp",
                "tcp_retransmit_skb",
            ),
            (
                ProbePart::TracepointSetState,
                PROG_TP_SET_STATE,
                "sock",
                "inet_sock_set_state",
            ),
        ] {
            let res = layout.as_ref().map_err(Clone::clone).and_then(|_| {
                let prog: &mut TracePoint = program(&mut bpf, name).map_err(|e| e.to_string())?;
                prog.load()
                    .and_then(|()| prog.attach(category, event))
                    .map_err(|e| format!("attaching to {category}:{event}: {}", chain(&e)))?;
                program_ids.extend(prog.info().ok().map(|i| i.id()));
                attachments.push(format!("tracepoint {category}:{event}"));
                Ok(())
            });
            parts.record(part, res);
        }
        let retransmit_tracepoint = parts.attached.contains(&ProbePart::TracepointRetransmit);

        if parts.attached.is_empty() {
            // Nothing to undo: tc undid its qdisc and record itself.
            return Err(EbpfUnavailable::NothingAttached {
                failed: parts.failed,
            });
        }
        for (part, reason) in &parts.failed {
            warn!("eBPF probe: {part} not attached: {reason}");
        }

        let filter_map = bpf
            .take_map(FILTER_MAP)
            .ok_or_else(|| setup_error("eBPF object", "no FILTER map"))?;
        let filter: BpfHashMap<MapData, FilterKey, u8> =
            BpfHashMap::try_from(filter_map).map_err(|e| setup_error("FILTER map", chain(&e)))?;
        let control = Array::try_from(
            bpf.take_map(CONTROL_MAP)
                .ok_or_else(|| setup_error("eBPF object", "no CONTROL map"))?,
        )
        .map_err(|e| setup_error("CONTROL map", chain(&e)))?;
        let mut filter = Filter {
            map: filter,
            control,
            generation: 0,
        };
        filter
            .set_endpoints(&cfg.endpoints)
            .and_then(|()| filter.set_watch_all(cfg.watch_all))
            .map_err(|e| kernel_error("filling the filter map", &e))?;
        let ring = RingBuf::try_from(
            bpf.take_map(RING_BUF_MAP)
                .ok_or_else(|| setup_error("eBPF object", "no EVENTS ring buffer"))?,
        )
        .map_err(|e| setup_error("EVENTS ring buffer", chain(&e)))?;
        let drops = PerCpuArray::try_from(
            bpf.take_map("DROPS")
                .ok_or_else(|| setup_error("eBPF object", "no DROPS map"))?,
        )
        .map_err(|e| setup_error("DROPS map", chain(&e)))?;

        info!(
            "eBPF probe attached ({}): {}; watching {} endpoint(s){}; at most one RTT sample per flow every {:?}",
            object,
            attachments.join(", "),
            cfg.endpoints.len(),
            if cfg.watch_all {
                " and everything else"
            } else {
                ""
            },
            cfg.sample_interval
        );
        Ok(EbpfProbe {
            bpf: Some(bpf),
            filter: Mutex::new(filter),
            drops,
            ring: Some(ring),
            spawn_logger: Some(spawn_logger),
            tasks: Vec::new(),
            counters: Arc::new(Counters::default()),
            clock,
            retransmit_tracepoint,
            tc,
            program_ids,
            attachments,
            parts,
            channel_capacity: cfg.channel_capacity.max(1),
        })
    }

    /// Spawns the ring-buffer reader (and the kernel log forwarder) on the
    /// current tokio runtime; returns the event stream. Call once.
    pub fn start_reader(&mut self) -> Result<mpsc::Receiver<ProbeEvent>, EbpfUnavailable> {
        if tokio::runtime::Handle::try_current().is_err() {
            return Err(EbpfUnavailable::NoRuntime);
        }
        let ring = self
            .ring
            .take()
            .ok_or_else(|| setup_error("eBPF probe", "the reader is already running"))?;
        if let Some(spawn) = self.spawn_logger.take() {
            match spawn() {
                Ok(task) => self.tasks.push(task),
                Err(e) => warn!("eBPF probe: kernel log records will not be shown: {e}"),
            }
        }
        // SAFETY: the RingBuf owns its map fd and keeps it open and unchanged
        // for as long as the AsyncFd holds it.
        let mut fd = unsafe { AsyncFd::register_with_interest(ring, Interest::READABLE) }
            .map_err(|e| setup_error("polling the ring buffer", std::io::Error::from(e)))?;
        let (tx, rx) = mpsc::channel(self.channel_capacity);
        let counters = Arc::clone(&self.counters);
        let mut conv = Converter::new(self.clock, self.retransmit_tracepoint);
        self.tasks.push(tokio::spawn(async move {
            let mut batch = Vec::new();
            // The programs wake us only once a batch is waiting; the
            // timeout drains whatever arrived since, so no record waits
            // longer than RING_BUF_DRAIN_MS.
            let drain_every = Duration::from_millis(RING_BUF_DRAIN_MS);
            loop {
                match tokio::time::timeout(drain_every, fd.readable_mut()).await {
                    Ok(Ok(mut guard)) => {
                        // Cleared before draining: a record that lands during
                        // the drain still wakes the next round.
                        guard.clear_ready();
                        drain(guard.get_inner_mut(), &mut conv, &counters, &mut batch);
                    }
                    Ok(Err(e)) => {
                        warn!("eBPF probe: ring buffer poll failed: {e}");
                        return;
                    }
                    Err(_) => drain(fd.get_mut(), &mut conv, &counters, &mut batch),
                }
                for ev in batch.drain(..) {
                    match tx.try_send(ev) {
                        Ok(()) => {}
                        Err(mpsc::error::TrySendError::Full(_)) => {
                            counters.channel_drops.fetch_add(1, Ordering::Relaxed);
                        }
                        Err(mpsc::error::TrySendError::Closed(_)) => return,
                    }
                }
            }
        }));
        Ok(rx)
    }

    /// Replaces the watched endpoints (the watch-all switch is left as is).
    pub fn set_endpoints(&self, endpoints: &[IpAddr]) -> Result<(), MapError> {
        let mut filter = self.filter.lock().unwrap_or_else(|p| p.into_inner());
        filter.set_endpoints(endpoints)
    }

    /// Measures every remote endpoint (true) or only the listed ones.
    pub fn set_watch_all(&self, on: bool) -> Result<(), MapError> {
        let mut filter = self.filter.lock().unwrap_or_else(|p| p.into_inner());
        filter.set_watch_all(on)
    }

    pub fn stats(&self) -> EbpfStats {
        let c = &self.counters;
        let kernel_drops = self.drops.get(&0, 0).map(|v| v.iter().sum()).unwrap_or(0);
        EbpfStats {
            records: c.records.load(Ordering::Relaxed),
            sockops_rtt: c.sockops_rtt.load(Ordering::Relaxed),
            sockops_rtt_in_recovery: c.sockops_rtt_in_recovery.load(Ordering::Relaxed),
            tc_tcp_ts_rtt: c.tc_tcp_ts_rtt.load(Ordering::Relaxed),
            quic_spin_rtt: c.quic_spin_rtt.load(Ordering::Relaxed),
            retransmits: c.retransmits.load(Ordering::Relaxed),
            flows_started: c.flows_started.load(Ordering::Relaxed),
            flows_ended: c.flows_ended.load(Ordering::Relaxed),
            kernel_drops,
            channel_drops: c.channel_drops.load(Ordering::Relaxed),
        }
    }

    /// Kernel ids of the loaded programs (they disappear once detached).
    pub fn program_ids(&self) -> &[u32] {
        &self.program_ids
    }

    /// What is attached where, one phrase per attachment.
    pub fn attachments(&self) -> &[String] {
        &self.attachments
    }

    /// The parts that attached.
    pub fn attached_parts(&self) -> &[ProbePart] {
        &self.parts.attached
    }

    /// The parts that were wanted but could not attach, each with its reason
    /// (logged once at load). tc parts are wanted only with an interface.
    pub fn failed_parts(&self) -> &[(ProbePart, String)] {
        &self.parts.failed
    }

    pub fn is_attached(&self, part: ProbePart) -> bool {
        self.parts.attached.contains(&part)
    }

    /// Whether retransmits come from the tracepoint (else from sock_ops counters).
    pub fn has_retransmit_tracepoint(&self) -> bool {
        self.retransmit_tracepoint
    }

    /// The capabilities the agent must keep while this probe runs.
    pub fn capabilities_to_keep(&self) -> Vec<Capability> {
        privileges::after_attach(self.tc.as_ref().is_some_and(|t| t.netlink.is_some()))
    }

    /// Drops every capability this probe no longer needs from the calling
    /// thread (see `privileges` on threads).
    pub fn drop_privileges(&self) -> Result<Vec<Capability>, caps::errors::CapsError> {
        let dropped = privileges::drop_all_except(&self.capabilities_to_keep())?;
        info!(
            "dropped capabilities after attaching: {}; kept: {:?}",
            dropped
                .iter()
                .map(|c| c.to_string())
                .collect::<Vec<_>>()
                .join(" "),
            self.capabilities_to_keep()
        );
        Ok(dropped)
    }
}

/// Converts every record waiting in the ring buffer into `batch`.
fn drain(
    ring: &mut RingBuf<MapData>,
    conv: &mut Converter,
    counters: &Counters,
    batch: &mut Vec<ProbeEvent>,
) {
    while let Some(item) = ring.next() {
        if let Some(rec) = record_from_bytes(&item) {
            conv.convert(&rec, counters, batch);
        }
    }
}

fn program<'a, T>(bpf: &'a mut Ebpf, name: &str) -> Result<&'a mut T, EbpfUnavailable>
where
    &'a mut T: TryFrom<&'a mut aya::programs::Program>,
{
    bpf.program_mut(name)
        .and_then(|p| p.try_into().ok())
        .ok_or_else(|| {
            setup_error(
                "eBPF object",
                format!("no program {name} of the expected type"),
            )
        })
}

fn attach_sockops(
    bpf: &mut Ebpf,
    cgroup_path: &Path,
    program_ids: &mut Vec<u32>,
) -> Result<(), EbpfUnavailable> {
    let cgroup = std::fs::File::open(cgroup_path)
        .map_err(|e| setup_error(format!("cgroup {}", cgroup_path.display()), e))?;
    let prog: &mut SockOps = program(bpf, PROG_SOCKOPS)?;
    prog.load()
        .map_err(|e| kernel_error("loading the sock_ops program", &e))?;
    prog.attach(&cgroup, CgroupAttachMode::Single)
        .map_err(|e| {
            kernel_error(
                &format!("attaching sock_ops to {}", cgroup_path.display()),
                &e,
            )
        })?;
    program_ids.extend(prog.info().ok().map(|i| i.id()));
    Ok(())
}

/// Attaches tc egress and ingress to `iface`, each on its own (recorded in
/// `parts`); `None` when neither attached (then nothing is left behind).
fn attach_tc(
    bpf: &mut Ebpf,
    iface: &str,
    cfg: &EbpfProbeConfig,
    program_ids: &mut Vec<u32>,
    attachments: &mut Vec<String>,
    parts: &mut Parts,
) -> Option<TcAttachment> {
    let use_netlink = cfg.tc_attach == TcAttach::Netlink
        || !KernelVersion::current()
            .map(|v| v >= KernelVersion::new(6, 6, 0))
            .unwrap_or(false);
    let mut tc = match prepare_tc(iface, cfg, use_netlink) {
        Ok(tc) => tc,
        Err(e) => {
            let reason = e.to_string();
            parts.record(ProbePart::TcEgress, Err(reason.clone()));
            parts.record(ProbePart::TcIngress, Err(reason));
            return None;
        }
    };
    let how = if use_netlink {
        "netlink filter"
    } else {
        "tcx link"
    };
    let mut any = false;
    for (part, name, attach) in [
        (ProbePart::TcEgress, PROG_TC_EGRESS, TcAttachType::Egress),
        (ProbePart::TcIngress, PROG_TC_INGRESS, TcAttachType::Ingress),
    ] {
        let result = (|| {
            let prog: &mut SchedClassifier = program(bpf, name)?;
            prog.load()
                .map_err(|e| kernel_error(&format!("loading {name}"), &e))?;
            let options = if use_netlink {
                TcAttachOptions::Netlink(NlOptions::default())
            } else {
                TcAttachOptions::TcxOrder(LinkOrder::default())
            };
            prog.attach_with_options(iface, attach, options)
                .map_err(|e| kernel_error(&format!("attaching {name} to {iface}"), &e))?;
            program_ids.extend(prog.info().ok().map(|i| i.id()));
            Ok::<_, EbpfUnavailable>(())
        })();
        if result.is_ok() {
            any = true;
            attachments.push(format!("{part} on {iface} ({how})"));
        }
        parts.record(part, result.map_err(|e| e.to_string()));
    }
    if !any {
        // Undo the qdisc and the record; nothing of ours hangs off them.
        detach_netlink_extras(&mut tc);
        return None;
    }
    Some(tc)
}

/// What comes before the tc programs: the namespace, and for netlink the
/// crash record and the clsact qdisc.
fn prepare_tc(
    iface: &str,
    cfg: &EbpfProbeConfig,
    use_netlink: bool,
) -> Result<TcAttachment, EbpfUnavailable> {
    let netns = Netns::current().map_err(|e| setup_error("network namespace", e))?;
    let mut netlink = None;
    if use_netlink {
        let ifindex = nix::net::if_::if_nametoindex(iface)
            .map_err(|e| setup_error(format!("tc interface {iface}"), e))?;
        // The record goes to disk before anything is attached, so a crash
        // at any later point leaves something to clean up from.
        let mut rec = TcRecord {
            pid: std::process::id() as i32,
            netns: netns.id,
            iface: iface.to_string(),
            clsact_added: false,
        };
        let mut record = RecordFile::create(&cfg.state_dir, rec.clone())
            .map_err(|e| setup_error(format!("writing to {}", cfg.state_dir.display()), e))?;
        match tc::qdisc_add_clsact(iface) {
            Ok(()) => {
                rec.clsact_added = true;
                if let Err(e) = record.update(rec) {
                    warn!(
                        "eBPF probe: could not update {}: {e}",
                        record.path.display()
                    );
                }
            }
            Err(tc::TcError::NetlinkError(e)) if e.raw_os_error() == Some(nix::libc::EEXIST) => {}
            Err(e) => {
                record.remove();
                return Err(kernel_error(
                    &format!("adding a clsact qdisc to {iface}"),
                    &e,
                ));
            }
        }
        netlink = Some(NetlinkTc { ifindex, record });
    } else {
        // Our programs already on the interface mean another probe runs there.
        for attach in [TcAttachType::Egress, TcAttachType::Ingress] {
            if let Ok((_, progs)) = SchedClassifier::query_tcx(iface, attach) {
                for p in progs {
                    let name = p.name_as_str().unwrap_or_default();
                    if name == PROG_TC_EGRESS || name == PROG_TC_INGRESS {
                        warn!("eBPF probe: {iface} already has a {name} program (id {}): another agent?", p.id());
                    }
                }
            }
        }
    }
    Ok(TcAttachment {
        iface: iface.to_string(),
        netns,
        netlink,
    })
}

/// Removes the clsact qdisc we added (when nothing else hangs off it) and
/// our record; runs in the namespace the interface is in.
fn detach_netlink_extras(tc: &mut TcAttachment) {
    let Some(nl) = tc.netlink.take() else {
        return;
    };
    if nl.record.record.clsact_added {
        let res = tc.netns.run(|| {
            if netlink::clsact_filter_count(nl.ifindex)? == 0 {
                netlink::delete_clsact(nl.ifindex)
            } else {
                Ok(())
            }
        });
        match res {
            Ok(Ok(())) => debug!("eBPF probe: removed the clsact qdisc on {}", tc.iface),
            Ok(Err(e)) | Err(e) => {
                warn!(
                    "eBPF probe: could not remove the clsact qdisc on {}: {e}",
                    tc.iface
                );
                // Keep the record: the next start retries.
                return;
            }
        }
    }
    nl.record.remove();
}

impl Drop for EbpfProbe {
    fn drop(&mut self) {
        for task in self.tasks.drain(..) {
            task.abort();
        }
        let Some(bpf) = self.bpf.take() else {
            return;
        };
        match self.tc.as_mut() {
            Some(tc) if tc.netlink.is_some() => {
                // Netlink filters are removed by interface index: do it in
                // the namespace they were attached in.
                if let Err(e) = tc.netns.run(|| drop(bpf)) {
                    warn!(
                        "eBPF probe: cannot enter the namespace of {} to detach ({e}); the next start cleans up",
                        tc.iface
                    );
                    return;
                }
                detach_netlink_extras(tc);
            }
            _ => drop(bpf),
        }
        debug!("eBPF probe detached: {}", self.attachments.join(", "));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `cargo xtask build-ebpf` (which `cargo xtask test` runs first) puts
    /// the object where build.rs embeds it from; the binary must then carry
    /// exactly that object, and find it without being told where.
    #[test]
    fn the_built_object_is_embedded() {
        let built = Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/bpf/agent-ebpf.o");
        if !built.is_file() {
            eprintln!(
                "SKIPPED: no eBPF object at {} (run `cargo xtask build-ebpf`)",
                built.display()
            );
            return;
        }
        let embedded = EMBEDDED.expect("an object built before the crate is embedded");
        assert_eq!(embedded, std::fs::read(&built).unwrap().as_slice());
        if std::env::var_os(OBJECT_ENV).is_none() {
            assert!(matches!(find_object(None), Ok(ObjectSource::Embedded(_))));
        }
    }

    #[test]
    fn filter_keys_map_ipv4_into_ipv6() {
        let k = filter_key("192.0.2.1".parse().unwrap());
        assert_eq!(k, FilterKey::v4(u32::from_ne_bytes([192, 0, 2, 1])));
        let mapped = filter_key("::ffff:192.0.2.1".parse().unwrap());
        assert_eq!(mapped, k);
        let v6 = filter_key("2001:db8::1".parse().unwrap());
        assert_eq!(v6.addr[0], u32::from_ne_bytes([0x20, 0x01, 0x0d, 0xb8]));
        assert_eq!(v6.addr[3], u32::from_ne_bytes([0, 0, 0, 1]));
    }

    #[test]
    fn missing_object_names_the_paths_and_the_fix() {
        let err = find_object(Some(Path::new("/nonexistent/agent-ebpf.o"))).unwrap_err();
        let msg = err.to_string();
        assert!(msg.contains("/nonexistent/agent-ebpf.o"), "{msg}");
        assert!(msg.contains("cargo xtask build-ebpf"), "{msg}");
    }

    #[test]
    fn errors_are_sorted_by_errno() {
        let denied = std::io::Error::from_raw_os_error(nix::libc::EPERM);
        assert!(matches!(
            kernel_error("x", &denied),
            EbpfUnavailable::Denied { .. }
        ));
        let inval = std::io::Error::from_raw_os_error(nix::libc::EINVAL);
        assert!(matches!(
            kernel_error("x", &inval),
            EbpfUnavailable::Kernel { .. }
        ));
    }

    #[test]
    fn a_cgroup_that_is_missing_or_not_cgroup2_is_explained() {
        let missing = sockops_cgroup(Some(Path::new("/nonexistent/cgroup"))).unwrap_err();
        assert!(missing.contains("/nonexistent/cgroup"), "{missing}");
        let dir = std::env::temp_dir();
        let plain = sockops_cgroup(Some(&dir)).unwrap_err();
        assert!(plain.contains("not a cgroup v2 folder"), "{plain}");
        if let Some(root) = default_cgroup() {
            assert_eq!(sockops_cgroup(Some(&root)), Ok(root.clone()));
            assert_eq!(sockops_cgroup(None), Ok(root));
        }
    }

    #[test]
    fn nothing_attached_lists_every_part_and_reason() {
        let err = EbpfUnavailable::NothingAttached {
            failed: vec![
                (ProbePart::SockOps, "no cgroup2".into()),
                (ProbePart::TcIngress, "no such device".into()),
            ],
        };
        assert_eq!(
            err.to_string(),
            "no part of the probe could be attached: sock_ops: no cgroup2; tc_ingress: no such device"
        );
        let names: HashSet<&str> = ProbePart::ALL.iter().map(|p| p.as_str()).collect();
        assert_eq!(names.len(), ProbePart::ALL.len());
    }

    #[test]
    fn cgroup2_root_is_found_when_mounted() {
        if let Some(root) = default_cgroup() {
            assert!(root.join("cgroup.procs").exists());
        }
    }
}
