//! TCP timestamp matching in the tc programs (passive RTT, ePPing-style).
//!
//! One timing per flow at a time: egress, the first packet carrying a new
//! TSval and data (pure ACKs are not timed: their echo waits for the peer's
//! next data, which measures the application, not the path) starts timing
//! that TSval when no timing is pending and the flow's rate limit
//! (`SAMPLE_INTERVAL_NS`) allows. Ingress, an ACK whose TSecr echoes the
//! pending TSval yields one RTT sample (now - departure); an echo of a later
//! TSval means the timed one will never be echoed (the peer's TS.Recent only
//! moves forward: the timed segment was lost or its ACK was), so the timing
//! is abandoned. Everything per flow lives in one small LRU entry: one
//! lookup per packet, no insert or delete per sample, and userspace gets at
//! most one record per flow per interval.

use agent_common::{Flow, RttBody, SOURCE_TC_TCP_TS};
use aya_ebpf::{macros::map, maps::LruHashMap, programs::TcContext};

use crate::{emit_rtt, filter_gen, now_ns, pkt, rate_limited, still_watched, watched};

#[repr(C)]
#[derive(Clone, Copy)]
struct TsFlow {
    /// Last TSval seen leaving on a packet with data: later packets reusing
    /// it are not timed (they left after the first one).
    last_tsval: u32,
    /// The TSval being timed (when `pending_ns != 0`).
    pending_tsval: u32,
    /// When the pending TSval first left; 0: nothing pending.
    pending_ns: u64,
    /// When the last timing started (the flow's rate limit).
    last_start_ns: u64,
    /// The filter generation the flow was last found watched under.
    admitted: u32,
    _pad: u32,
}

/// Per-flow timing state, keyed by the flow in egress orientation.
#[map]
static TS_FLOWS: LruHashMap<Flow, TsFlow> = LruHashMap::with_max_entries(8192, 0);

/// A timing older than this is given up even without a later echo (the
/// peer stopped echoing): tc then starts a new one.
const PENDING_MAX_NS: u64 = 2_000_000_000;

const TCPOPT_EOL: u8 = 0;
const TCPOPT_NOP: u8 = 1;
const TCPOPT_TIMESTAMP: u8 = 8;
const TCPOLEN_TIMESTAMP: u8 = 10;
const TCP_FLAG_FIN: u8 = 0x01;
const TCP_FLAG_SYN: u8 = 0x02;
const TCP_FLAG_RST: u8 = 0x04;
const TCP_FLAG_ACK: u8 = 0x10;

#[inline(always)]
pub fn observe(ctx: &TcContext, flow: &Flow, l4: usize, egress: bool) -> Result<(), i64> {
    // Bytes 12-13 of the TCP header: data offset, flags.
    let off_flags: [u8; 2] = pkt(ctx, l4 + 12)?;
    let hdr_len = ((off_flags[0] >> 4) as usize) * 4;
    let flags = off_flags[1];
    if flags & TCP_FLAG_RST != 0 {
        return Ok(());
    }
    let Some((tsval, tsecr)) = timestamps(ctx, l4 + 20, hdr_len.saturating_sub(20))? else {
        return Ok(());
    };
    if egress {
        // SYN and FIN are answered at once like data; a bare ACK is not.
        let data = ctx.len() as usize > l4 + hdr_len;
        if data || flags & (TCP_FLAG_SYN | TCP_FLAG_FIN) != 0 {
            departure(flow, tsval, flags & TCP_FLAG_SYN != 0);
        }
    } else if flags & TCP_FLAG_ACK != 0 && tsecr != 0 {
        echo(flow, tsecr);
    }
    Ok(())
}

#[inline(always)]
fn departure(flow: &Flow, tsval: u32, syn: bool) {
    let Some(st) = TS_FLOWS.get_ptr_mut(flow) else {
        // Unwatched traffic ends here, after this lookup and the filter's.
        if !watched(flow.family, &flow.remote) {
            return;
        }
        let now = now_ns();
        // A flow seen first mid-stream may be past this TSval's first
        // packet: wait for the next new one. A SYN is the first.
        let st = TsFlow {
            last_tsval: tsval,
            pending_tsval: tsval,
            pending_ns: if syn { now } else { 0 },
            last_start_ns: if syn { now } else { 0 },
            admitted: filter_gen(),
            _pad: 0,
        };
        let _ = TS_FLOWS.insert(flow, &st, 0);
        return;
    };
    // SAFETY: LRU value pointer from a successful lookup; egress and ingress
    // may race on it, which at worst costs or skews one sample.
    let st = unsafe { &mut *st };
    if !still_watched(&mut st.admitted, flow) {
        let _ = TS_FLOWS.remove(flow);
        return;
    }
    if st.last_tsval == tsval {
        return;
    }
    st.last_tsval = tsval;
    let now = now_ns();
    if st.pending_ns != 0 && now.wrapping_sub(st.pending_ns) < PENDING_MAX_NS {
        return;
    }
    if rate_limited(&mut st.last_start_ns, now) {
        return;
    }
    st.pending_tsval = tsval;
    st.pending_ns = now;
}

#[inline(always)]
fn echo(flow: &Flow, tsecr: u32) {
    let Some(st) = TS_FLOWS.get_ptr_mut(flow) else {
        return;
    };
    // SAFETY: as in `departure`.
    let st = unsafe { &mut *st };
    let sent = st.pending_ns;
    if sent == 0 {
        return;
    }
    if !still_watched(&mut st.admitted, flow) {
        let _ = TS_FLOWS.remove(flow);
        return;
    }
    if tsecr != st.pending_tsval {
        // Serial-number order (RFC 7323): an echo of a later TSval ends the timing.
        if (tsecr.wrapping_sub(st.pending_tsval) as i32) > 0 {
            st.pending_ns = 0;
        }
        return;
    }
    st.pending_ns = 0;
    let now = now_ns();
    if now <= sent {
        return;
    }
    let body = RttBody {
        rtt_ns: now - sent,
        ..RttBody::default()
    };
    emit_rtt(SOURCE_TC_TCP_TS, now, *flow, body);
}

/// Finds the timestamp option among `opt_len` bytes of options at `off`.
/// Linux puts it first after two NOPs, which the fast path reads in one load.
#[inline(always)]
fn timestamps(ctx: &TcContext, off: usize, opt_len: usize) -> Result<Option<(u32, u32)>, i64> {
    if opt_len < TCPOLEN_TIMESTAMP as usize {
        return Ok(None);
    }
    if opt_len >= 12 {
        let o: [u8; 12] = pkt(ctx, off)?;
        if o[..4] == [TCPOPT_NOP, TCPOPT_NOP, TCPOPT_TIMESTAMP, TCPOLEN_TIMESTAMP] {
            let tsval = u32::from_be_bytes([o[4], o[5], o[6], o[7]]);
            let tsecr = u32::from_be_bytes([o[8], o[9], o[10], o[11]]);
            return Ok(Some((tsval, tsecr)));
        }
    }
    // General walk (SYNs put MSS and SACK-permitted first); at most 40 bytes of options.
    let end = if opt_len > 40 { 40 } else { opt_len };
    let mut i = 0usize;
    for _ in 0..16 {
        if i + 2 > end {
            break;
        }
        let kind: u8 = ctx.load(off + i)?;
        if kind == TCPOPT_EOL {
            break;
        }
        if kind == TCPOPT_NOP {
            i += 1;
            continue;
        }
        let len: u8 = ctx.load(off + i + 1)?;
        if kind == TCPOPT_TIMESTAMP {
            if len != TCPOLEN_TIMESTAMP || i + 10 > end {
                return Ok(None);
            }
            let ts: [u32; 2] = ctx.load(off + i + 2)?;
            return Ok(Some((u32::from_be(ts[0]), u32::from_be(ts[1]))));
        }
        if len < 2 {
            break;
        }
        i += len as usize;
    }
    Ok(None)
}
