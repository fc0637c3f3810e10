//! Kernel side of the passive network probe.
//!
//! - `sockops_rtt` (cgroup sock_ops): turns on the kernel's per-ACK RTT
//!   callback for local TCP sockets to watched endpoints and forwards every
//!   sample (measured RTT, smoothed RTT, segment counters).
//! - `tc_egress` / `tc_ingress` (sched_cls): TCP timestamp matching (a TSval
//!   seen leaving is timed until a TSecr echoing it comes back) and QUIC
//!   spin-bit edges on short-header packets, for local and forwarded flows.
//! - `tp_tcp_retransmit_skb`, `tp_inet_sock_set_state`: loss and flow
//!   start/end signals.
//!
//! Everything leaves through the one `EVENTS` ring buffer as an
//! `agent_common::Record`. The `FILTER` map, written by userspace, says which
//! remote endpoints matter (or the `CONTROL` map's watch-all switch). The tc
//! programs consult it only for a flow they have no state for: a flow's
//! entry is its admission, checked again only when userspace changes the
//! filter (`CONTROL_FILTER_GEN`), so a watched packet costs one hash lookup.
//!
//! What it costs is bounded per flow, as ePPing does: at most one RTT
//! sample per flow and source every `SAMPLE_INTERVAL_NS` (set by the
//! loader), so a bulk flow's thousands of ACKs per second cost a map lookup
//! each and a ring-buffer record only every interval; and nothing is sent
//! that userspace would drop (state changes other than ESTABLISHED and CLOSE).
#![no_std]
#![no_main]

mod quic;
mod tcp_ts;

use agent_common::{
    FilterKey, Flow, Record, RecordBody, RetransmitBody, RttBody, StateBody, TracepointLayout,
    AF_INET, AF_INET6, CONTROL_ENTRIES, CONTROL_FILTER_GEN, CONTROL_WATCH_ALL,
    DEFAULT_SAMPLE_INTERVAL_NS, FILTER_MAX_ENTRIES, IPPROTO_TCP, IPPROTO_UDP, KIND_RETRANSMIT,
    KIND_RTT, KIND_STATE, RING_BUF_BYTES, RING_BUF_WAKEUP_RECORDS, SOURCE_SOCKOPS,
    SOURCE_TRACEPOINT, TCP_CLOSE, TCP_ESTABLISHED,
};
use aya_ebpf::{
    bindings::{
        BPF_RB_AVAIL_DATA, BPF_RB_FORCE_WAKEUP, BPF_RB_NO_WAKEUP,
        BPF_SOCK_OPS_ACTIVE_ESTABLISHED_CB, BPF_SOCK_OPS_PASSIVE_ESTABLISHED_CB,
        BPF_SOCK_OPS_RTT_CB, BPF_SOCK_OPS_RTT_CB_FLAG, TC_ACT_UNSPEC,
    },
    helpers::{bpf_get_socket_cookie, bpf_ktime_get_ns},
    macros::{classifier, map, sock_ops, tracepoint},
    maps::{Array, HashMap, LruHashMap, PerCpuArray, RingBuf},
    programs::{SockOpsContext, TcContext, TracePointContext},
    Global,
};
use aya_log_ebpf::{debug, warn};

/// Tracepoint field offsets of the running kernel, filled in by the loader.
#[no_mangle]
static TP_LAYOUT: Global<TracepointLayout> = Global::new(TracepointLayout::DEFAULT);

/// Bytes before the IP header on the tc interface: 14 on Ethernet, 0 on
/// layer-3 devices (TUN, WireGuard). Filled in by the loader.
#[no_mangle]
static L2_LEN: Global<u32> = Global::new(14);

/// Shortest time between two RTT samples of one flow and source, in ns
/// (0: every sample). Filled in by the loader.
#[no_mangle]
static SAMPLE_INTERVAL_NS: Global<u64> = Global::new(DEFAULT_SAMPLE_INTERVAL_NS);

/// Nonzero: every program returns at once, doing none of its work (sock_ops
/// still turns the RTT callbacks on, so they fire as usual). What is left
/// is the cost of the hooks themselves: a benchmark's floor. Filled in by
/// the loader (read-only data: one load and a branch per run).
#[no_mangle]
static HOOKS_ONLY: Global<u32> = Global::new(0);

#[inline(always)]
fn hooks_only() -> bool {
    HOOKS_ONLY.load() != 0
}

/// Time of the last sock_ops sample sent per socket (by socket cookie).
#[map]
static SOCK_LAST: LruHashMap<u64, u64> = LruHashMap::with_max_entries(16384, 0);

#[map]
static EVENTS: RingBuf = RingBuf::with_byte_size(RING_BUF_BYTES, 0);

/// Bytes waiting in EVENTS (records plus the ring's 8-byte headers) at
/// which a new record wakes the reader.
const WAKEUP_BYTES: u64 =
    RING_BUF_WAKEUP_RECORDS as u64 * (core::mem::size_of::<Record>() as u64 + 8);

#[map]
static FILTER: HashMap<FilterKey, u8> = HashMap::with_max_entries(FILTER_MAX_ENTRIES, 0);

/// Switches written by userspace (`CONTROL_*` indices). An array lookup is
/// inlined by the verifier: no hash, no helper call.
#[map]
static CONTROL: Array<u32> = Array::with_max_entries(CONTROL_ENTRIES, 0);

/// Records lost because the ring buffer was full (index 0), read by userspace.
#[map]
static DROPS: PerCpuArray<u64> = PerCpuArray::with_max_entries(1, 0);

#[inline(always)]
fn control(index: u32) -> u32 {
    CONTROL.get(index).copied().unwrap_or(0)
}

/// True when `remote` (four network-order words, IPv4 in word 0) is watched.
#[inline(always)]
fn watched(family: u8, remote: &[u32; 4]) -> bool {
    if control(CONTROL_WATCH_ALL) != 0 {
        return true;
    }
    let key = if family == AF_INET {
        FilterKey::v4(remote[0])
    } else {
        FilterKey::v6(*remote)
    };
    FILTER.get_ptr(&key).is_some()
}

/// The filter's generation now: a flow admitted under another one is
/// checked against the filter again.
#[inline(always)]
fn filter_gen() -> u32 {
    control(CONTROL_FILTER_GEN)
}

/// True when a flow admitted under generation `*admitted` is still
/// watched; refreshes `*admitted` when the filter changed and still admits it.
#[inline(always)]
fn still_watched(admitted: &mut u32, flow: &Flow) -> bool {
    let gen = filter_gen();
    if *admitted == gen {
        return true;
    }
    if !watched(flow.family, &flow.remote) {
        return false;
    }
    *admitted = gen;
    true
}

/// A `T` at byte `off` of the packet: read straight from the packet's
/// linear data when it is there (no helper call: the common case, headers
/// are linear), else copied out with bpf_skb_load_bytes.
#[inline(always)]
fn pkt<T: Copy>(ctx: &TcContext, off: usize) -> Result<T, i64> {
    let (start, end) = (ctx.data(), ctx.data_end());
    // The bound on `off` lets the verifier follow a variable offset.
    if off < 0x1000 && start + off + core::mem::size_of::<T>() <= end {
        // SAFETY: inside [data, data_end), checked just above.
        return Ok(unsafe { core::ptr::read_unaligned((start + off) as *const T) });
    }
    ctx.load(off)
}

#[inline(always)]
fn now_ns() -> u64 {
    // SAFETY: helper without preconditions.
    unsafe { bpf_ktime_get_ns() }
}

/// True when a sample at `now` comes too soon after the one at `*last`
/// (the flow's rate limit); otherwise takes the slot (`*last = now`).
#[inline(always)]
fn rate_limited(last: &mut u64, now: u64) -> bool {
    let interval = SAMPLE_INTERVAL_NS.load();
    if interval != 0 && *last != 0 && now.wrapping_sub(*last) < interval {
        return true;
    }
    *last = now;
    false
}

#[inline(always)]
fn emit(rec: &Record) {
    // Wake the reader only once a batch is waiting (it also drains on a
    // short timer): a wakeup per record costs the data path more than the
    // programs themselves at a few thousand records per second.
    let flags = if EVENTS.query(BPF_RB_AVAIL_DATA as u64) >= WAKEUP_BYTES {
        BPF_RB_FORCE_WAKEUP
    } else {
        BPF_RB_NO_WAKEUP
    };
    if EVENTS.output::<Record>(rec, flags as u64).is_err() {
        if let Some(n) = DROPS.get_ptr_mut(0) {
            // SAFETY: per-CPU slot, no concurrent writer on this CPU.
            unsafe { *n += 1 };
        }
    }
}

#[inline(always)]
fn emit_rtt(source: u8, ts_ns: u64, flow: Flow, rtt: RttBody) {
    let mut rec = Record::new(KIND_RTT, source, ts_ns, flow);
    rec.body = RecordBody { rtt };
    emit(&rec);
}

// ---------------------------------------------------------------- sock_ops

#[sock_ops]
pub fn sockops_rtt(ctx: SockOpsContext) -> u32 {
    match ctx.op() {
        BPF_SOCK_OPS_ACTIVE_ESTABLISHED_CB | BPF_SOCK_OPS_PASSIVE_ESTABLISHED_CB => {
            let flow = sockops_flow(&ctx);
            if flow.family != 0 && watched(flow.family, &flow.remote) {
                let flags = ctx.cb_flags() | BPF_SOCK_OPS_RTT_CB_FLAG;
                match ctx.set_cb_flags(flags as i32) {
                    Ok(()) => debug!(
                        &ctx,
                        "sock_ops: RTT callbacks on, local port {} remote port {}",
                        flow.local_port,
                        flow.remote_port
                    ),
                    Err(e) => warn!(&ctx, "sock_ops: cannot enable RTT callbacks: {}", e),
                }
            }
        }
        BPF_SOCK_OPS_RTT_CB if hooks_only() => {}
        BPF_SOCK_OPS_RTT_CB => {
            // The rate limit first: most callbacks of a busy socket end here,
            // after one lookup keyed by the socket's cookie.
            let now = now_ns();
            // SAFETY: the helper takes the program's own context.
            let cookie = unsafe { bpf_get_socket_cookie(ctx.ops.cast()) };
            match SOCK_LAST.get_ptr_mut(&cookie) {
                // SAFETY: LRU value pointer from a successful lookup; a racing
                // callback of the same socket costs or adds one sample.
                Some(last) => {
                    if rate_limited(unsafe { &mut *last }, now) {
                        return 1;
                    }
                }
                None => {
                    let _ = SOCK_LAST.insert(&cookie, &now, 0);
                }
            }
            let flow = sockops_flow(&ctx);
            // The filter may have shrunk since the socket was established.
            if flow.family != 0 && watched(flow.family, &flow.remote) {
                let ops = ctx.ops;
                // SAFETY: fields of our context, read in place (see sockops_flow);
                // the RTT callback runs on a full socket, so all are readable.
                let (rtt_us, srtt_x8, segs, retrans) = unsafe {
                    (
                        core::ptr::read_volatile(core::ptr::addr_of!(
                            (*ops).__bindgen_anon_1.args[0]
                        )),
                        core::ptr::read_volatile(core::ptr::addr_of!(
                            (*ops).__bindgen_anon_1.args[1]
                        )),
                        core::ptr::read_volatile(core::ptr::addr_of!((*ops).data_segs_out)),
                        core::ptr::read_volatile(core::ptr::addr_of!((*ops).total_retrans)),
                    )
                };
                // args[0]: this sample in us; args[1]: new srtt in us << 3.
                let (rtt_us, srtt_us) = (rtt_us as u64, (srtt_x8 >> 3) as u64);
                let body = RttBody {
                    rtt_ns: rtt_us * 1000,
                    srtt_ns: srtt_us * 1000,
                    data_segs_out: segs,
                    total_retrans: retrans,
                };
                emit_rtt(SOURCE_SOCKOPS, now, flow, body);
            }
        }
        _ => {}
    }
    // 1 = carry on; sock_ops results are otherwise ignored for these ops.
    1
}

/// The socket's flow; `family` is 0 for anything but IPv4/IPv6.
#[inline(always)]
fn sockops_flow(ctx: &SockOpsContext) -> Flow {
    let ops = ctx.ops;
    // The verifier only accepts context loads at constant offsets from the
    // context pointer itself: read each word volatile, in place, so the
    // compiler cannot turn an array copy into a derived pointer.
    macro_rules! field {
        ($($f:tt)+) => {
            // SAFETY: a field of the context the program was called with.
            unsafe { core::ptr::read_volatile(core::ptr::addr_of!((*ops).$($f)+)) }
        };
    }
    let mut flow = Flow {
        proto: IPPROTO_TCP,
        // local_port is host order; remote_port holds the network-order port in its upper half.
        local_port: field!(local_port) as u16,
        remote_port: u32::from_be(field!(remote_port)) as u16,
        ..Flow::default()
    };
    // Read every address word unconditionally: loads in both arms of a
    // branch get merged into one load from a computed address otherwise.
    let family = field!(family);
    let (local4, remote4) = (field!(local_ip4), field!(remote_ip4));
    let local6 = [
        field!(local_ip6[0]),
        field!(local_ip6[1]),
        field!(local_ip6[2]),
        field!(local_ip6[3]),
    ];
    let remote6 = [
        field!(remote_ip6[0]),
        field!(remote_ip6[1]),
        field!(remote_ip6[2]),
        field!(remote_ip6[3]),
    ];
    if family == AF_INET as u32 {
        flow.family = AF_INET;
        flow.local[0] = local4;
        flow.remote[0] = remote4;
    } else if family == AF_INET6 as u32 {
        flow.family = AF_INET6;
        flow.local = local6;
        flow.remote = remote6;
    }
    flow
}

// ---------------------------------------------------------------------- tc

#[classifier]
pub fn tc_egress(ctx: TcContext) -> i32 {
    if !hooks_only() {
        let _ = observe_packet(&ctx, true);
    }
    // Never drop or redirect: TC_ACT_UNSPEC is "next" for tcx and cls_bpf alike,
    // so later programs and the qdisc still see the packet.
    TC_ACT_UNSPEC
}

#[classifier]
pub fn tc_ingress(ctx: TcContext) -> i32 {
    if !hooks_only() {
        let _ = observe_packet(&ctx, false);
    }
    TC_ACT_UNSPEC
}

#[repr(C)]
#[derive(Clone, Copy)]
struct Ipv4Hdr {
    ver_ihl: u8,
    tos: u8,
    tot_len: u16,
    id: u16,
    frag_off: u16,
    ttl: u8,
    protocol: u8,
    check: u16,
    saddr: u32,
    daddr: u32,
}

#[repr(C)]
#[derive(Clone, Copy)]
struct Ipv6Hdr {
    ver_tc_flow: u32,
    payload_len: u16,
    nexthdr: u8,
    hop_limit: u8,
    saddr: [u32; 4],
    daddr: [u32; 4],
}

const ETH_P_IP: u16 = 0x0800;
const ETH_P_IPV6: u16 = 0x86dd;

/// Parses IP and dispatches TCP to timestamp matching, UDP to the spin-bit
/// tracker. Errors only mean "not a packet we measure".
#[inline(always)]
fn observe_packet(ctx: &TcContext, egress: bool) -> Result<(), i64> {
    let l3 = L2_LEN.load() as usize;
    // SAFETY: reading a field of the context the program was called with.
    let proto = u16::from_be(unsafe { (*ctx.skb.skb).protocol } as u16);
    let (mut flow, l4) = if proto == ETH_P_IP {
        let ip: Ipv4Hdr = pkt(ctx, l3)?;
        // Later fragments carry no transport header. Packets with IP
        // options are not measured (like IPv6 extension headers): a fixed
        // transport offset keeps every header read a direct packet access.
        if u16::from_be(ip.frag_off) & 0x1fff != 0 || ip.ver_ihl & 0x0f != 5 {
            return Ok(());
        }
        let mut flow = Flow {
            family: AF_INET,
            proto: ip.protocol,
            ..Flow::default()
        };
        (flow.local[0], flow.remote[0]) = if egress {
            (ip.saddr, ip.daddr)
        } else {
            (ip.daddr, ip.saddr)
        };
        (flow, l3 + 20)
    } else if proto == ETH_P_IPV6 {
        // Transport header right after the fixed header; packets with
        // extension headers are not measured.
        let ip: Ipv6Hdr = pkt(ctx, l3)?;
        let mut flow = Flow {
            family: AF_INET6,
            proto: ip.nexthdr,
            ..Flow::default()
        };
        (flow.local, flow.remote) = if egress {
            (ip.saddr, ip.daddr)
        } else {
            (ip.daddr, ip.saddr)
        };
        (flow, l3 + 40)
    } else {
        return Ok(());
    };
    if flow.proto != IPPROTO_TCP && flow.proto != IPPROTO_UDP {
        return Ok(());
    }
    // Whether the flow is watched is decided where its state is looked up
    // (`still_watched`, `watched`): one lookup per watched packet.
    let ports: [u16; 2] = pkt(ctx, l4)?;
    let (sport, dport) = (u16::from_be(ports[0]), u16::from_be(ports[1]));
    (flow.local_port, flow.remote_port) = if egress {
        (sport, dport)
    } else {
        (dport, sport)
    };
    if flow.proto == IPPROTO_TCP {
        tcp_ts::observe(ctx, &flow, l4, egress)
    } else {
        quic::observe(ctx, &flow, l4, egress)
    }
}

// ------------------------------------------------------------- tracepoints

#[inline(always)]
fn read<T>(ctx: &TracePointContext, offset: u16) -> Result<T, i64> {
    // SAFETY: offsets come from the kernel's own format description of this tracepoint.
    unsafe { ctx.read_at::<T>(offset as usize).map_err(|e| e as i64) }
}

/// Reads the (family, local, remote) addresses of a tracepoint record.
#[inline(always)]
fn tp_addrs(
    ctx: &TracePointContext,
    family: u16,
    saddr: u16,
    daddr: u16,
    saddr_v6: u16,
    daddr_v6: u16,
) -> Result<Flow, i64> {
    let mut flow = Flow {
        proto: IPPROTO_TCP,
        ..Flow::default()
    };
    let fam: u16 = read(ctx, family)?;
    if fam == AF_INET as u16 {
        flow.family = AF_INET;
        flow.local[0] = u32::from_ne_bytes(read::<[u8; 4]>(ctx, saddr)?);
        flow.remote[0] = u32::from_ne_bytes(read::<[u8; 4]>(ctx, daddr)?);
    } else if fam == AF_INET6 as u16 {
        flow.family = AF_INET6;
        flow.local = read::<[u32; 4]>(ctx, saddr_v6)?;
        flow.remote = read::<[u32; 4]>(ctx, daddr_v6)?;
    } else {
        return Err(0);
    }
    Ok(flow)
}

#[tracepoint(category = "tcp", name = "tcp_retransmit_skb")]
pub fn tp_tcp_retransmit_skb(ctx: TracePointContext) -> u32 {
    if !hooks_only() {
        let _ = try_retransmit(&ctx);
    }
    0
}

#[inline(always)]
fn try_retransmit(ctx: &TracePointContext) -> Result<(), i64> {
    let l = TP_LAYOUT.load();
    let mut flow = tp_addrs(
        ctx,
        l.rt_family,
        l.rt_saddr,
        l.rt_daddr,
        l.rt_saddr_v6,
        l.rt_daddr_v6,
    )?;
    if !watched(flow.family, &flow.remote) {
        return Ok(());
    }
    // Linux 6.12+ also traces attempts that sent nothing (err != 0, e.g.
    // the original still queued in the host): not retransmissions.
    if l.rt_err != 0 && read::<i32>(ctx, l.rt_err)? != 0 {
        return Ok(());
    }
    // The tracepoint stores ports in host order.
    flow.local_port = read(ctx, l.rt_sport)?;
    flow.remote_port = read(ctx, l.rt_dport)?;
    let state: i32 = read(ctx, l.rt_state)?;
    let mut rec = Record::new(KIND_RETRANSMIT, SOURCE_TRACEPOINT, now_ns(), flow);
    rec.body = RecordBody {
        retransmit: RetransmitBody {
            state: state as u32,
            _pad: [0; 5],
        },
    };
    emit(&rec);
    Ok(())
}

#[tracepoint(category = "sock", name = "inet_sock_set_state")]
pub fn tp_inet_sock_set_state(ctx: TracePointContext) -> u32 {
    if !hooks_only() {
        let _ = try_set_state(&ctx);
    }
    0
}

#[inline(always)]
fn try_set_state(ctx: &TracePointContext) -> Result<(), i64> {
    let l = TP_LAYOUT.load();
    let protocol: u16 = read(ctx, l.ss_protocol)?;
    if protocol != IPPROTO_TCP as u16 {
        return Ok(());
    }
    let new_state: i32 = read(ctx, l.ss_newstate)?;
    // Userspace only counts flows that start and end.
    if new_state as u32 != TCP_ESTABLISHED && new_state as u32 != TCP_CLOSE {
        return Ok(());
    }
    let mut flow = tp_addrs(
        ctx,
        l.ss_family,
        l.ss_saddr,
        l.ss_daddr,
        l.ss_saddr_v6,
        l.ss_daddr_v6,
    )?;
    if !watched(flow.family, &flow.remote) {
        return Ok(());
    }
    flow.local_port = read(ctx, l.ss_sport)?;
    flow.remote_port = read(ctx, l.ss_dport)?;
    let old_state: i32 = read(ctx, l.ss_oldstate)?;
    let mut rec = Record::new(KIND_STATE, SOURCE_TRACEPOINT, now_ns(), flow);
    rec.body = RecordBody {
        state: StateBody {
            old_state: old_state as u32,
            new_state: new_state as u32,
            _pad: [0; 4],
        },
    };
    emit(&rec);
    Ok(())
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    // The verifier rejects any program that could reach this.
    loop {}
}

#[link_section = "license"]
#[no_mangle]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";
