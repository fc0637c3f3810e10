//! QUIC transport settings shared by the offload client and the cloud's
//! listener, so both ends agree on them.

use anyhow::Context;
use std::net::{SocketAddr, UdpSocket};
use std::sync::Arc;
use std::time::Duration;

/// Receive and send buffer asked for each end's UDP socket. The kernel's
/// default (208 KiB) overflows under one connection's burst of a few
/// megabytes, and every datagram dropped there is a QUIC packet to detect
/// as lost and send again: on loopback 1 MB requests lost 44 % of their
/// packets with the default and p99 rose tenfold (bench-transport).
pub const SOCKET_BUFFER_BYTES: usize = 4 << 20;

/// A quinn endpoint on `addr` over a UDP socket with
/// [`SOCKET_BUFFER_BYTES`] buffers (a server when `server` is given).
pub fn endpoint(
    addr: SocketAddr,
    server: Option<quinn::ServerConfig>,
) -> anyhow::Result<quinn::Endpoint> {
    let socket = UdpSocket::bind(addr).with_context(|| format!("binding UDP on {addr}"))?;
    size_buffers(&socket, SOCKET_BUFFER_BYTES);
    let runtime = quinn::default_runtime().context("no async runtime for QUIC")?;
    quinn::Endpoint::new(quinn::EndpointConfig::default(), server, socket, runtime)
        .with_context(|| format!("opening the QUIC endpoint on {addr}"))
}

/// Asks for `bytes` of receive and send buffer: within `net.core.rmem_max`
/// / `wmem_max` as anyone, beyond them when privileged (the *BUFFORCE
/// options, CAP_NET_ADMIN). Smaller buffers still work, with loss under
/// bursts: said once in the log with the sizes obtained.
fn size_buffers(socket: &UdpSocket, bytes: usize) -> (usize, usize) {
    use nix::sys::socket::{getsockopt, setsockopt, sockopt};
    // The kernel doubles what it is asked for (bookkeeping overhead) and
    // reports the doubled figure.
    let _ = setsockopt(socket, sockopt::RcvBuf, &bytes);
    if getsockopt(socket, sockopt::RcvBuf).unwrap_or(0) < 2 * bytes {
        let _ = setsockopt(socket, sockopt::RcvBufForce, &bytes);
    }
    let _ = setsockopt(socket, sockopt::SndBuf, &bytes);
    if getsockopt(socket, sockopt::SndBuf).unwrap_or(0) < 2 * bytes {
        let _ = setsockopt(socket, sockopt::SndBufForce, &bytes);
    }
    let (rcv, snd) = (
        getsockopt(socket, sockopt::RcvBuf).unwrap_or(0) / 2,
        getsockopt(socket, sockopt::SndBuf).unwrap_or(0) / 2,
    );
    if rcv < bytes || snd < bytes {
        tracing::warn!(
            wanted = bytes,
            receive = rcv,
            send = snd,
            "QUIC socket buffers smaller than wanted (raise net.core.rmem_max and wmem_max, \
             or run with CAP_NET_ADMIN): bursts may lose packets"
        );
    }
    (rcv, snd)
}

/// QUIC congestion controllers quinn offers (`[edge.offload] quic_congestion`).
pub fn congestion(
    name: &str,
) -> anyhow::Result<Arc<dyn quinn::congestion::ControllerFactory + Send + Sync>> {
    use quinn::congestion::{BbrConfig, CubicConfig, NewRenoConfig};
    Ok(match name {
        "cubic" => Arc::new(CubicConfig::default()),
        "newreno" => Arc::new(NewRenoConfig::default()),
        "bbr" => Arc::new(BbrConfig::default()),
        other => {
            anyhow::bail!("unknown QUIC congestion controller {other:?} (cubic, newreno, bbr)")
        }
    })
}

/// Transport settings shared by both ends. The spin bit is allowed
/// (quinn's default, set explicitly here): the kernel probe reads the RTT
/// from it. quinn still leaves it off on a random 1 in 8 connections, as
/// RFC 9000 asks; it has no knob to force it on.
pub fn transport_config(
    keep_alive: Option<Duration>,
    idle: Duration,
    max_streams: u32,
    congestion: Arc<dyn quinn::congestion::ControllerFactory + Send + Sync>,
) -> quinn::TransportConfig {
    let mut t = quinn::TransportConfig::default();
    t.allow_spin(true)
        .keep_alive_interval(keep_alive)
        .max_concurrent_bidi_streams(max_streams.into())
        .max_concurrent_uni_streams(0u32.into())
        .congestion_controller_factory(congestion);
    if let Ok(idle) = quinn::IdleTimeout::try_from(idle) {
        t.max_idle_timeout(Some(idle));
    }
    t
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sysctl(name: &str) -> usize {
        std::fs::read_to_string(format!("/proc/sys/net/core/{name}"))
            .unwrap()
            .trim()
            .parse()
            .unwrap()
    }

    #[test]
    fn socket_buffers_reach_the_asked_size_or_the_limit() {
        let socket = UdpSocket::bind("127.0.0.1:0").unwrap();
        let (rcv, snd) = size_buffers(&socket, SOCKET_BUFFER_BYTES);
        if nix::unistd::geteuid().is_root() {
            // Privileged (CI runs as root): past the sysctl limits.
            assert!(rcv >= SOCKET_BUFFER_BYTES, "receive buffer {rcv}");
            assert!(snd >= SOCKET_BUFFER_BYTES, "send buffer {snd}");
        } else {
            let want = SOCKET_BUFFER_BYTES.min(sysctl("rmem_max"));
            assert!(rcv >= want, "receive buffer {rcv}, wanted {want}");
            let want = SOCKET_BUFFER_BYTES.min(sysctl("wmem_max"));
            assert!(snd >= want, "send buffer {snd}, wanted {want}");
        }
        // Far above the kernel's default of 208 KiB either way.
        assert!(rcv > 212_992 || sysctl("rmem_max") <= 212_992);
    }
}
