#![no_std]
//! Record types shared by `agent-ebpf` and the userspace agent.
//!
//! Every observation leaves the kernel as one fixed-size [`Record`] through a
//! single BPF ring buffer: a common header (kind, source, kernel timestamp,
//! flow) and a kind-specific body. All types are `#[repr(C)]` with explicit
//! padding so both sides agree on the layout byte for byte.

/// Name of the one ring buffer all programs emit [`Record`]s into.
pub const RING_BUF_MAP: &str = "EVENTS";
/// Name of the hash map of remote endpoints worth measuring ([`FilterKey`] -> u8).
pub const FILTER_MAP: &str = "FILTER";
/// Name of the array map of the probe's switches (u32 per index): whether
/// every endpoint is watched, and the filter's generation.
pub const CONTROL_MAP: &str = "CONTROL";
/// CONTROL index: nonzero when every remote endpoint is watched.
pub const CONTROL_WATCH_ALL: u32 = 0;
/// CONTROL index: bumped by userspace whenever FILTER or the watch-all
/// switch changes, so flows admitted under an older filter are checked again.
pub const CONTROL_FILTER_GEN: u32 = 1;
/// Entries of the CONTROL map.
pub const CONTROL_ENTRIES: u32 = 2;
/// Name of the global holding the [`TracepointLayout`] the loader fills in.
pub const TP_LAYOUT_GLOBAL: &str = "TP_LAYOUT";
/// Name of the global holding the link-layer header length of the tc interface.
pub const L2_LEN_GLOBAL: &str = "L2_LEN";
/// Name of the global holding the per-flow RTT sample interval (u64 ns).
pub const SAMPLE_INTERVAL_GLOBAL: &str = "SAMPLE_INTERVAL_NS";
/// Name of the global that, when nonzero, makes every program return at
/// once (a benchmark's measure of what the hooks cost without the
/// programs' work; see `cargo xtask bench-ebpf --hooks-only`).
pub const HOOKS_ONLY_GLOBAL: &str = "HOOKS_ONLY";
/// Default shortest time between two RTT samples of one flow and source
/// (sock_ops socket, tc timestamp flow, QUIC spin flow), in nanoseconds;
/// 0 keeps every sample. See `cargo xtask bench-ebpf` for what it saves.
pub const DEFAULT_SAMPLE_INTERVAL_NS: u64 = 10_000_000;

/// Program names inside the object.
pub const PROG_SOCKOPS: &str = "sockops_rtt";
pub const PROG_TC_EGRESS: &str = "tc_egress";
pub const PROG_TC_INGRESS: &str = "tc_ingress";
pub const PROG_TP_RETRANSMIT: &str = "tp_tcp_retransmit_skb";
pub const PROG_TP_SET_STATE: &str = "tp_inet_sock_set_state";

/// Capacity of the filter map (configured cloud endpoints).
pub const FILTER_MAX_ENTRIES: u32 = 256;
/// Ring buffer size in bytes (a power-of-two multiple of the page size).
pub const RING_BUF_BYTES: u32 = 1 << 20;
/// Records waiting in the ring buffer before one wakes the reader; below
/// that the reader drains on its timer ([`RING_BUF_DRAIN_MS`]).
pub const RING_BUF_WAKEUP_RECORDS: u32 = 256;
/// Longest a record waits in the ring buffer for the reader.
pub const RING_BUF_DRAIN_MS: u64 = 10;

/// Record kinds ([`Record::kind`]).
pub const KIND_RTT: u8 = 1;
pub const KIND_RETRANSMIT: u8 = 2;
pub const KIND_STATE: u8 = 3;

/// RTT sources ([`Record::source`] of an RTT record).
/// Kernel TCP RTT sample from sock_ops (BPF_SOCK_OPS_RTT_CB) on a local socket.
pub const SOURCE_SOCKOPS: u8 = 1;
/// TCP timestamp matching (TSval out, TSecr back) in the tc programs.
pub const SOURCE_TC_TCP_TS: u8 = 2;
/// QUIC spin-bit edges in the tc programs.
pub const SOURCE_QUIC_SPIN: u8 = 3;
/// Tracepoints (retransmit and state records).
pub const SOURCE_TRACEPOINT: u8 = 4;

/// Address families in [`Flow::family`] (the kernel's AF_* numbers).
pub const AF_INET: u8 = 2;
pub const AF_INET6: u8 = 10;

pub const IPPROTO_TCP: u8 = 6;
pub const IPPROTO_UDP: u8 = 17;

/// TCP states as the kernel numbers them (include/net/tcp_states.h).
pub const TCP_ESTABLISHED: u32 = 1;
pub const TCP_SYN_SENT: u32 = 2;
pub const TCP_CLOSE: u32 = 7;

/// One flow as seen from the agent: `local` is the near side (this host, or
/// the LAN device a gateway forwards for), `remote` the far side (the
/// endpoint the filter selects). Addresses are four 32-bit words in network
/// byte order, exactly as the kernel stores them; IPv4 uses word 0 only.
/// Ports are in host byte order.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct Flow {
    pub local: [u32; 4],
    pub remote: [u32; 4],
    pub local_port: u16,
    pub remote_port: u16,
    pub family: u8,
    pub proto: u8,
    pub _pad: [u8; 2],
}

/// Body of a [`KIND_RTT`] record.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RttBody {
    /// This one round-trip time sample.
    pub rtt_ns: u64,
    /// The kernel's smoothed RTT after this sample (sock_ops only, else 0).
    pub srtt_ns: u64,
    /// Cumulative data segments sent on the socket (sock_ops only, else 0).
    pub data_segs_out: u32,
    /// Cumulative retransmitted segments on the socket (sock_ops only, else 0).
    pub total_retrans: u32,
}

/// Body of a [`KIND_RETRANSMIT`] record (tcp:tcp_retransmit_skb).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RetransmitBody {
    /// TCP state of the socket when it retransmitted.
    pub state: u32,
    pub _pad: [u32; 5],
}

/// Body of a [`KIND_STATE`] record (sock:inet_sock_set_state).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct StateBody {
    pub old_state: u32,
    pub new_state: u32,
    pub _pad: [u32; 4],
}

/// Kind-specific part of a [`Record`]; [`Record::kind`] says which is valid.
#[repr(C)]
#[derive(Clone, Copy)]
pub union RecordBody {
    pub rtt: RttBody,
    pub retransmit: RetransmitBody,
    pub state: StateBody,
}

/// The one record type in the ring buffer (80 bytes, 8-byte aligned).
#[repr(C)]
#[derive(Clone, Copy)]
pub struct Record {
    /// [`KIND_RTT`], [`KIND_RETRANSMIT`] or [`KIND_STATE`].
    pub kind: u8,
    /// `SOURCE_*`: which program produced it.
    pub source: u8,
    pub _pad: [u8; 6],
    /// `bpf_ktime_get_ns()` when observed (CLOCK_MONOTONIC, nanoseconds).
    pub ts_ns: u64,
    pub flow: Flow,
    pub body: RecordBody,
}

/// A [`Record`]'s body, read safely according to its kind.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Decoded {
    Rtt(RttBody),
    Retransmit(RetransmitBody),
    State(StateBody),
}

impl Record {
    /// An all-zero record of the given kind and source (a starting point for the programs).
    pub const fn new(kind: u8, source: u8, ts_ns: u64, flow: Flow) -> Self {
        Record {
            kind,
            source,
            _pad: [0; 6],
            ts_ns,
            flow,
            body: RecordBody {
                retransmit: RetransmitBody {
                    state: 0,
                    _pad: [0; 5],
                },
            },
        }
    }

    /// The body by kind; `None` for an unknown kind.
    pub fn decode(&self) -> Option<Decoded> {
        // SAFETY: every body variant is plain integers of the same size, so
        // any bit pattern is valid for whichever variant the kind names.
        unsafe {
            match self.kind {
                KIND_RTT => Some(Decoded::Rtt(self.body.rtt)),
                KIND_RETRANSMIT => Some(Decoded::Retransmit(self.body.retransmit)),
                KIND_STATE => Some(Decoded::State(self.body.state)),
                _ => None,
            }
        }
    }
}

/// Key of the filter map: a remote address as IPv6 words in network byte
/// order, IPv4 as `::ffff:a.b.c.d`. Watching every endpoint is a switch
/// of its own (`CONTROL_WATCH_ALL`).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct FilterKey {
    pub addr: [u32; 4],
}

impl FilterKey {
    /// An IPv4 address given as its network-byte-order word.
    pub const fn v4(addr_be: u32) -> Self {
        FilterKey {
            addr: [0, 0, u32::from_be(0x0000_ffff), addr_be],
        }
    }

    /// An IPv6 address given as four network-byte-order words.
    pub const fn v6(addr: [u32; 4]) -> Self {
        FilterKey { addr }
    }
}

/// Byte offsets of the tracepoint fields the programs read, taken by the
/// loader from the tracefs `format` files of the running kernel (they differ
/// between kernel versions). The defaults are those of Linux 6.x.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TracepointLayout {
    /// tcp:tcp_retransmit_skb
    pub rt_state: u16,
    pub rt_sport: u16,
    pub rt_dport: u16,
    pub rt_family: u16,
    pub rt_saddr: u16,
    pub rt_daddr: u16,
    pub rt_saddr_v6: u16,
    pub rt_daddr_v6: u16,
    /// sock:inet_sock_set_state
    pub ss_oldstate: u16,
    pub ss_newstate: u16,
    pub ss_sport: u16,
    pub ss_dport: u16,
    pub ss_family: u16,
    pub ss_protocol: u16,
    pub ss_saddr: u16,
    pub ss_daddr: u16,
    pub ss_saddr_v6: u16,
    pub ss_daddr_v6: u16,
    /// tcp:tcp_retransmit_skb's `err` (Linux 6.12+ traces failed attempts
    /// too, with err != 0); 0 when the kernel has no such field.
    pub rt_err: u16,
    pub _pad: u16,
}

impl TracepointLayout {
    pub const DEFAULT: TracepointLayout = TracepointLayout {
        rt_state: 24,
        rt_sport: 28,
        rt_dport: 30,
        rt_family: 32,
        rt_saddr: 34,
        rt_daddr: 38,
        rt_saddr_v6: 42,
        rt_daddr_v6: 58,
        ss_oldstate: 16,
        ss_newstate: 20,
        ss_sport: 24,
        ss_dport: 26,
        ss_family: 28,
        ss_protocol: 30,
        ss_saddr: 32,
        ss_daddr: 36,
        ss_saddr_v6: 40,
        ss_daddr_v6: 56,
        rt_err: 0,
        _pad: 0,
    };
}

impl Default for TracepointLayout {
    fn default() -> Self {
        Self::DEFAULT
    }
}

const _: () = assert!(core::mem::size_of::<Flow>() == 40);
const _: () = assert!(core::mem::size_of::<RecordBody>() == 24);
const _: () = assert!(core::mem::size_of::<Record>() == 80);
const _: () = assert!(core::mem::align_of::<Record>() == 8);
const _: () = assert!(core::mem::size_of::<FilterKey>() == 16);
const _: () = assert!(core::mem::size_of::<TracepointLayout>() == 40);

#[cfg(feature = "user")]
mod pod {
    // SAFETY: plain #[repr(C)] integers with explicit padding; every bit pattern is valid.
    unsafe impl aya::Pod for super::Flow {}
    unsafe impl aya::Pod for super::Record {}
    unsafe impl aya::Pod for super::FilterKey {}
    unsafe impl aya::Pod for super::TracepointLayout {}
}
