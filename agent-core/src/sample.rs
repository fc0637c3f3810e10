//! The one sample type every network probe produces.
//!
//! Passive eBPF sources (sock_ops, tc TCP timestamps, QUIC spin bit), the
//! agent's own offload transfers and the active probe all turn their observations into
//! [`ProbeEvent`]s; the estimators never care where a sample came from, the
//! decision engine can (it sees the source of the figures it uses).

use std::net::IpAddr;
use std::time::{Duration, Instant};

/// Where a measurement came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum SampleSource {
    /// Active probe: time of a TCP connect handshake to the endpoint.
    ActiveTcpConnect,
    /// Kernel TCP RTT samples from a sock_ops program (BPF_SOCK_OPS_RTT_CB).
    SockOps,
    /// TCP timestamp matching (TSval out, TSecr back) in tc programs.
    TcTimestamp,
    /// QUIC spin-bit edges seen by tc programs.
    QuicSpin,
    /// An offload the agent made itself (either transport): its size and
    /// time on the wire feed the throughput estimate.
    OffloadTransfer,
}

impl SampleSource {
    pub const ALL: [SampleSource; 5] = [
        SampleSource::ActiveTcpConnect,
        SampleSource::SockOps,
        SampleSource::TcTimestamp,
        SampleSource::QuicSpin,
        SampleSource::OffloadTransfer,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            SampleSource::ActiveTcpConnect => "active-tcp",
            SampleSource::SockOps => "sockops",
            SampleSource::TcTimestamp => "tc-tcp-ts",
            SampleSource::QuicSpin => "quic-spin",
            SampleSource::OffloadTransfer => "offload-transfer",
        }
    }

    /// Passive sources observe real traffic; the active probe sends its own.
    pub fn is_passive(self) -> bool {
        !matches!(self, SampleSource::ActiveTcpConnect)
    }
}

/// One observation about the path to a remote endpoint.
#[derive(Debug, Clone, PartialEq)]
pub struct ProbeEvent {
    /// The remote endpoint (the cloud service's address) the path leads to.
    pub dest: IpAddr,
    pub source: SampleSource,
    /// When it was observed; for a lost probe, when the probe was sent
    /// (its loss is only known a timeout later, and probes overlap).
    pub at: Instant,
    pub kind: ProbeEventKind,
}

#[derive(Debug, Clone, PartialEq)]
pub enum ProbeEventKind {
    /// One round-trip time measurement.
    Rtt(Duration),
    /// A probe that got no answer (active probe timeout / refused).
    ProbeLost,
    /// TCP retransmissions observed on flows to `dest`.
    Retransmits(u32),
    /// Segments sent on flows to `dest` (the denominator of the loss rate).
    SegmentsSent(u32),
    /// A completed transfer: bytes moved and how long it took (throughput).
    Transfer { bytes: u64, elapsed: Duration },
    /// A transfer given up on while the host was still heard from (a slow
    /// link, not a dead one): `bytes` had been on the wire for `at_least`
    /// without finishing. A censored sample: the throughput was at most
    /// `bytes / at_least`.
    TransferUnfinished { bytes: u64, at_least: Duration },
}
