//! The network side of the agent: every mapping to the wire, TLS, the QUIC
//! settings both ends share, the offload layers (transports, circuit
//! breaker, failover, retries), the cloud's listeners behind [`Handler`],
//! and the task-API client. No models: nothing here links libtorch.

mod features;
mod listen;
mod offload;
mod quic_settings;
pub mod task_api;
pub mod tls;
pub mod wire;

pub use features::{decode_features, encode_features, FeatureCodec};
pub use listen::{CloudListeners, Handler, ListenConfig, SHUTDOWN_GRACE};
pub use offload::{
    build_layered_stack, build_stack, time_left, Breaker, BreakerConfig, BreakerState,
    CloudEndpoints, Failover, FailoverConfig, FailoverState, FailoverStats, GrpcOffloader, Guarded,
    Mode, OffloadConfig, OffloadError, OffloadReply, OffloadRequest, OffloadStack, Offloader,
    PacketCounts, QuicClientConfig, QuicFailure, QuicOffloader, RateLimitConfig, RateLimited,
    RetryConfig, Retrying, Route, StackHealth, Verdict,
};
pub use quic_settings::SOCKET_BUFFER_BYTES;
pub use tls::{TlsConfig, TlsMaterial};

use anyhow::Context;
use std::net::SocketAddr;

/// The first address `addr` (host:port) resolves to.
pub async fn resolve(addr: &str) -> anyhow::Result<SocketAddr> {
    tokio::net::lookup_host(addr)
        .await
        .with_context(|| format!("resolving {addr}"))?
        .next()
        .with_context(|| format!("{addr} resolves to no address"))
}
