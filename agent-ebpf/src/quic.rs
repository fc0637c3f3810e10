//! QUIC spin-bit RTT in the tc programs (RFC 9000 17.4, RFC 9312).
//!
//! Short-header packets (header form bit 0x80 clear) carry the spin bit
//! (0x20) outside header protection. The fixed bit (0x40) is not checked:
//! RFC 9287 lets peers grease it, and quinn clears it on a random half of
//! its packets; skipping those loses each ingress edge half the time, and
//! the client's answering egress edge then looks out of turn. One endpoint inverts the value it last
//! received, the other reflects it, so the value seen in each direction flips
//! once per round trip and edges alternate between the two directions.
//! We time each egress edge to the ingress edge that answers it: the RTT from
//! this observation point to the remote endpoint and back (for a gateway, the
//! upstream part of the path).
//!
//! Endpoints that disable spinning send a constant bit (no edges, so no
//! samples) or a random bit per packet (quinn does so on 1 connection in 8).
//! A real spin bit holds each value for half a round trip, so with traffic
//! flowing every run of equal values spans several packets and edges
//! alternate strictly between the directions; a random bit breaks both half
//! the time. An edge is good when it is in turn and ends a run of at least
//! `MIN_RUN` packets; any other edge adds a penalty, each good edge removes
//! one unit, and samples are only emitted while the penalty is zero. A new
//! flow starts with a penalty, so it must spin cleanly for a few round trips
//! first. The price: a flow sending one packet per half round trip
//! (strict ping-pong) is never trusted. Samples obey the per-flow rate
//! limit (`SAMPLE_INTERVAL_NS`); edges are tracked regardless.

use agent_common::{Flow, RttBody, SOURCE_QUIC_SPIN};
use aya_ebpf::{macros::map, maps::LruHashMap, programs::TcContext};
use aya_log_ebpf::debug;

use crate::{emit_rtt, filter_gen, now_ns, pkt, rate_limited, still_watched, watched};

const SPIN_BIT: u8 = 0x20;
/// Penalty a new flow starts with: eight good edges (four round trips) before the first sample.
const INITIAL_PENALTY: u8 = 8;
/// Shortest run of equal values (packets) that ends a good edge.
const MIN_RUN: u16 = 2;
/// Penalty per bad edge.
const VIOLATION_PENALTY: u8 = 16;
const MAX_PENALTY: u8 = 128;

const DIR_NONE: u8 = 0;
const DIR_EGRESS: u8 = 1;
const DIR_INGRESS: u8 = 2;

#[repr(C)]
#[derive(Clone, Copy)]
struct SpinState {
    /// Last spin value seen leaving / arriving (0 or 1).
    egress_val: u8,
    ingress_val: u8,
    /// Bit 0: egress value known; bit 1: ingress value known.
    seen: u8,
    /// Direction of the last edge (DIR_*).
    last_edge: u8,
    penalty: u8,
    /// Set once the flow has produced a sample (for the one log line).
    validated: u8,
    /// Packets carrying the current value, per direction.
    egress_run: u16,
    ingress_run: u16,
    _pad: u16,
    /// The filter generation the flow was last found watched under.
    admitted: u32,
    /// Time of the last egress edge.
    egress_edge_ns: u64,
    /// Time of the last sample sent (the flow's rate limit).
    last_sample_ns: u64,
}

/// Per-flow spin tracking, keyed by the flow in egress orientation.
#[map]
static SPIN: LruHashMap<Flow, SpinState> = LruHashMap::with_max_entries(4096, 0);

#[inline(always)]
pub fn observe(ctx: &TcContext, flow: &Flow, l4: usize, egress: bool) -> Result<(), i64> {
    // UDP header (8 bytes), then the first byte of the QUIC packet.
    let first: u8 = pkt(ctx, l4 + 8)?;
    // Short header: header form 0 (the fixed bit may be greased).
    if first & 0x80 != 0 {
        return Ok(());
    }
    let val = u8::from(first & SPIN_BIT != 0);
    let (dir, bit) = if egress {
        (DIR_EGRESS, 1u8)
    } else {
        (DIR_INGRESS, 2u8)
    };
    let Some(st) = SPIN.get_ptr_mut(flow) else {
        if !watched(flow.family, &flow.remote) {
            return Ok(());
        }
        let mut st = SpinState {
            egress_val: 0,
            ingress_val: 0,
            seen: bit,
            last_edge: DIR_NONE,
            penalty: INITIAL_PENALTY,
            validated: 0,
            egress_run: 1,
            ingress_run: 1,
            _pad: 0,
            admitted: filter_gen(),
            egress_edge_ns: 0,
            last_sample_ns: 0,
        };
        if egress {
            st.egress_val = val;
        } else {
            st.ingress_val = val;
        }
        let _ = SPIN.insert(flow, &st, 0);
        return Ok(());
    };
    // SAFETY: LRU value pointer from a successful lookup; egress and ingress
    // may race on it, which at worst costs or skews one sample.
    let st = unsafe { &mut *st };
    if !still_watched(&mut st.admitted, flow) {
        let _ = SPIN.remove(flow);
        return Ok(());
    }
    let (last, run) = if egress {
        (&mut st.egress_val, &mut st.egress_run)
    } else {
        (&mut st.ingress_val, &mut st.ingress_run)
    };
    if st.seen & bit == 0 {
        st.seen |= bit;
        *last = val;
        *run = 1;
        return Ok(());
    }
    if *last == val {
        *run = run.saturating_add(1);
        return Ok(());
    }
    // An edge: good when in turn (the other direction had the previous edge)
    // and it ends a run of several packets.
    *last = val;
    // The clock is read on edges only: about two packets per round trip.
    let now = now_ns();
    let good = st.last_edge != dir && *run >= MIN_RUN;
    *run = 1;
    st.last_edge = dir;
    if !good {
        st.penalty = if st.penalty > MAX_PENALTY - VIOLATION_PENALTY {
            MAX_PENALTY
        } else {
            st.penalty + VIOLATION_PENALTY
        };
        return Ok(());
    }
    if egress {
        st.egress_edge_ns = now;
        if st.penalty > 0 {
            st.penalty -= 1;
        }
        return Ok(());
    }
    // An ingress edge answering the egress edge before it.
    let ready = st.penalty == 0 && st.egress_edge_ns != 0 && now > st.egress_edge_ns;
    if st.penalty > 0 {
        st.penalty -= 1;
    }
    if !ready || rate_limited(&mut st.last_sample_ns, now) {
        return Ok(());
    }
    if st.validated == 0 {
        st.validated = 1;
        debug!(
            ctx,
            "quic: spin bit validated on flow local port {} remote port {}",
            flow.local_port,
            flow.remote_port
        );
    }
    let body = RttBody {
        rtt_ns: now - st.egress_edge_ns,
        ..RttBody::default()
    };
    emit_rtt(SOURCE_QUIC_SPIN, now, *flow, body);
    Ok(())
}
