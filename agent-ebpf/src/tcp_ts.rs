//! TCP timestamp matching in the tc programs (passive RTT, ePPing-style).
//!
//! Egress: the first packet of a flow carrying a new TSval stores
//! (flow, TSval) -> time. Ingress: a packet whose TSecr echoes a stored TSval
//! yields one RTT sample (now - stored time) and removes the entry, so each
//! TSval is timed once from its first departure to its first echo. Both maps
//! are LRU: entries whose echo never comes age out under pressure.

use agent_common::{Flow, RttBody, SOURCE_TC_TCP_TS};
use aya_ebpf::{bindings::BPF_NOEXIST, macros::map, maps::LruHashMap, programs::TcContext};

use crate::{emit_rtt, now_ns};

#[repr(C)]
#[derive(Clone, Copy)]
struct TsKey {
    flow: Flow,
    tsval: u32,
    _pad: u32,
}

/// Departure time of (egress flow, TSval) still waiting for its echo.
#[map]
static TS_SENT: LruHashMap<TsKey, u64> = LruHashMap::with_max_entries(16384, 0);

/// Last TSval seen leaving per flow: later packets reusing it are not timed
/// (they left after the first one, so their echo would understate the RTT).
#[map]
static TS_LAST: LruHashMap<Flow, u32> = LruHashMap::with_max_entries(4096, 0);

const TCPOPT_EOL: u8 = 0;
const TCPOPT_NOP: u8 = 1;
const TCPOPT_TIMESTAMP: u8 = 8;
const TCPOLEN_TIMESTAMP: u8 = 10;
const TCP_FLAG_ACK: u8 = 0x10;
const TCP_FLAG_RST: u8 = 0x04;

#[inline(always)]
pub fn observe(ctx: &TcContext, flow: &Flow, l4: usize, egress: bool) -> Result<(), i64> {
    // Bytes 12-13 of the TCP header: data offset, flags.
    let off_flags: [u8; 2] = ctx.load(l4 + 12)?;
    let hdr_len = ((off_flags[0] >> 4) as usize) * 4;
    let flags = off_flags[1];
    if flags & TCP_FLAG_RST != 0 {
        return Ok(());
    }
    let Some((tsval, tsecr)) = timestamps(ctx, l4 + 20, hdr_len.saturating_sub(20))? else {
        return Ok(());
    };
    if egress {
        record_departure(flow, tsval);
    } else if flags & TCP_FLAG_ACK != 0 && tsecr != 0 {
        match_echo(flow, tsecr);
    }
    Ok(())
}

#[inline(always)]
fn record_departure(flow: &Flow, tsval: u32) {
    if let Some(last) = TS_LAST.get_ptr_mut(flow) {
        // SAFETY: LRU value pointer from a successful lookup; a racing update only costs a sample.
        unsafe {
            if *last == tsval {
                return;
            }
            *last = tsval;
        }
    } else {
        let _ = TS_LAST.insert(flow, &tsval, 0);
    }
    let key = TsKey {
        flow: *flow,
        tsval,
        _pad: 0,
    };
    let _ = TS_SENT.insert(&key, &now_ns(), BPF_NOEXIST as u64);
}

#[inline(always)]
fn match_echo(flow: &Flow, tsecr: u32) {
    let key = TsKey {
        flow: *flow,
        tsval: tsecr,
        _pad: 0,
    };
    let Some(sent) = TS_SENT.get_ptr(&key) else {
        return;
    };
    // SAFETY: value pointer from a successful lookup.
    let sent = unsafe { *sent };
    let _ = TS_SENT.remove(&key);
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
        let head: [u8; 4] = ctx.load(off)?;
        if head == [TCPOPT_NOP, TCPOPT_NOP, TCPOPT_TIMESTAMP, TCPOLEN_TIMESTAMP] {
            let ts: [u32; 2] = ctx.load(off + 4)?;
            return Ok(Some((u32::from_be(ts[0]), u32::from_be(ts[1]))));
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
