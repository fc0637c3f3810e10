//! QUIC transport settings shared by the offload client and the cloud's
//! listener, so both ends agree on them.

use std::sync::Arc;
use std::time::Duration;

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
