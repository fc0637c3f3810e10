//! The edge's offload stack, outermost first:
//! rate limit -> retries -> failover (QUIC first, gRPC fallback) -> a circuit breaker per
//! transport -> the transports.

use super::breaker::{BreakerConfig, BreakerState, Guarded};
use super::failover::{Failover, FailoverConfig, Route};
use super::grpc::GrpcOffloader;
use super::quic::{QuicClientConfig, QuicOffloader};
use super::ratelimit::{RateLimitConfig, RateLimited};
use super::retry::{RetryConfig, Retrying};
use super::Offloader;
use crate::tls::TlsMaterial;
use serde::{Deserialize, Serialize};
use std::sync::Arc;
use std::time::Duration;

/// `[edge.offload]`: timeouts, retries, circuit breaker, QUIC failover,
/// rate limit.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct OffloadConfig {
    /// Handshake / TCP connect limit; also how long a failed QUIC connect
    /// makes other tasks fail fast before one tries again.
    pub connect_timeout_ms: u64,
    pub quic_keep_alive_ms: u64,
    /// A silent QUIC connection is declared dead after this.
    pub quic_idle_timeout_ms: u64,
    /// HTTP/2 pings on the gRPC connection, and how long one may go
    /// unanswered before the connection (and every offload on it) fails.
    pub grpc_keep_alive_ms: u64,
    pub grpc_keep_alive_timeout_ms: u64,
    /// Consecutive QUIC stream errors that switch to gRPC (a failed
    /// handshake switches at once).
    pub quic_stream_errors: u32,
    /// QUIC is probed again after this, doubling up to `quic_reprobe_max_ms`.
    pub quic_reprobe_min_ms: u64,
    pub quic_reprobe_max_ms: u64,
    /// QUIC congestion controller: bbr (default), cubic or newreno. With
    /// random loss (1 % on the jitter lab's link) quinn's cubic and newreno
    /// read every loss as congestion and 64 KB-1 MB uploads take 10-30x
    /// longer; bbr does not (bench/results/transport.md).
    pub quic_congestion: String,
    /// Retries after the first attempt (transport failures only).
    pub retries: usize,
    pub retry_min_ms: u64,
    pub retry_max_ms: u64,
    /// Consecutive transport failures that open an endpoint's circuit.
    pub breaker_failures: u32,
    pub breaker_open_ms: u64,
    /// Largest message either transport carries.
    pub max_message_bytes: usize,
    /// Offloads per second towards the cloud (0: no limit); over it a task
    /// is not sent and runs locally instead.
    pub rate_limit_per_s: f64,
    pub rate_limit_burst: u32,
}

impl Default for OffloadConfig {
    fn default() -> Self {
        Self {
            connect_timeout_ms: 1000,
            // A dead cloud (killed, link down) is noticed within ~1 s and
            // its in-flight offloads move to gRPC, instead of each waiting
            // out a long idle timeout.
            quic_keep_alive_ms: 250,
            quic_idle_timeout_ms: 1000,
            // The same for gRPC: a link that goes silent under an
            // established connection fails its offloads in ~1 s, not when
            // TCP gives up.
            grpc_keep_alive_ms: 250,
            grpc_keep_alive_timeout_ms: 1000,
            quic_stream_errors: 3,
            quic_reprobe_min_ms: 1000,
            quic_reprobe_max_ms: 30_000,
            quic_congestion: "bbr".into(),
            retries: 2,
            retry_min_ms: 10,
            retry_max_ms: 200,
            breaker_failures: 5,
            breaker_open_ms: 2000,
            max_message_bytes: 16 << 20,
            // Generous: a guard against runaway load, not a tuning knob.
            rate_limit_per_s: 500.0,
            rate_limit_burst: 100,
        }
    }
}

impl OffloadConfig {
    /// The QUIC client's share of these settings.
    pub fn quic_client(&self, server_name: &str) -> QuicClientConfig {
        QuicClientConfig {
            server_name: server_name.to_string(),
            connect_timeout: Duration::from_millis(self.connect_timeout_ms),
            keep_alive: Duration::from_millis(self.quic_keep_alive_ms),
            idle_timeout: Duration::from_millis(self.quic_idle_timeout_ms),
            congestion: self.quic_congestion.clone(),
            max_message: self.max_message_bytes,
        }
    }

    /// The gRPC client's keep-alive: (ping interval, ping timeout).
    pub fn grpc_keep_alive(&self) -> (Duration, Duration) {
        (
            Duration::from_millis(self.grpc_keep_alive_ms),
            Duration::from_millis(self.grpc_keep_alive_timeout_ms),
        )
    }

    fn breaker(&self) -> BreakerConfig {
        BreakerConfig {
            failure_threshold: self.breaker_failures,
            open_for: Duration::from_millis(self.breaker_open_ms),
        }
    }

    pub fn rate_limit(&self) -> RateLimitConfig {
        RateLimitConfig {
            per_second: self.rate_limit_per_s,
            burst: self.rate_limit_burst,
        }
    }
}

/// Where the cloud service listens.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CloudEndpoints {
    pub grpc: String,
    /// Empty: no QUIC.
    pub quic: String,
    /// Name the cloud's certificate must carry (SNI and verification).
    pub server_name: String,
}

/// What [`build_stack`] built, for logs and statistics.
pub struct OffloadStack {
    pub offloader: Arc<dyn Offloader>,
    /// Present when QUIC is in use.
    pub failover: Option<Arc<super::failover::FailoverStats>>,
    /// The circuit breakers and the failover's route, for the metrics.
    pub health: StackHealth,
}

/// Read-only views of the stack's state machines: each transport's circuit
/// breaker and which transport offloads take now.
#[derive(Clone)]
pub struct StackHealth {
    breakers: Vec<Arc<Guarded>>,
    failover: Option<Arc<Failover>>,
}

impl StackHealth {
    /// (transport, state) for each circuit breaker. An open circuit whose
    /// open time is over reports half-open: the next call is the trial.
    pub fn breakers(&self, now: std::time::Instant) -> Vec<(&'static str, BreakerState)> {
        self.breakers
            .iter()
            .map(|b| {
                let state = match b.state() {
                    BreakerState::Open { until } if until <= now => BreakerState::HalfOpen {
                        trial_in_flight: false,
                    },
                    s => s,
                };
                (b.transport(), state)
            })
            .collect()
    }

    /// The transport offloads go over now: the failover's route, or gRPC
    /// when QUIC is not in use.
    pub fn active_transport(&self) -> agent_core::Transport {
        match self.failover.as_ref().map(|f| f.route()) {
            Some(Route::Quic) => agent_core::Transport::Quic,
            Some(Route::Grpc) | None => agent_core::Transport::Grpc,
        }
    }
}

/// Builds the stack towards `cloud`. QUIC is used when an endpoint is
/// configured and TLS is on (`tls` is `None` with --insecure).
pub async fn build_stack(
    o: &OffloadConfig,
    cloud: &CloudEndpoints,
    tls: Option<&TlsMaterial>,
) -> anyhow::Result<OffloadStack> {
    let grpc = GrpcOffloader::new(
        &cloud.grpc,
        tls.map(|t| t.grpc_client(&cloud.server_name)),
        o.max_message_bytes,
        Duration::from_millis(o.connect_timeout_ms),
        o.grpc_keep_alive(),
    )?;
    let grpc_guard = Arc::new(Guarded::new(Arc::new(grpc), "grpc", o.breaker()));
    let mut health = StackHealth {
        breakers: vec![grpc_guard.clone()],
        failover: None,
    };
    let grpc: Arc<dyn Offloader> = grpc_guard;
    let (inner, failover) = match tls {
        Some(tls) if !cloud.quic.is_empty() => {
            let addr = crate::resolve(&cloud.quic).await?;
            let quic = QuicOffloader::new(addr, tls, o.quic_client(&cloud.server_name))?;
            let quic_guard = Arc::new(Guarded::new(Arc::new(quic), "quic", o.breaker()));
            health.breakers.insert(0, quic_guard.clone());
            let quic: Arc<dyn Offloader> = quic_guard;
            let f = Failover::new(
                quic,
                grpc,
                FailoverConfig {
                    stream_errors: o.quic_stream_errors,
                    reprobe_min: Duration::from_millis(o.quic_reprobe_min_ms),
                    reprobe_max: Duration::from_millis(o.quic_reprobe_max_ms),
                },
            );
            let stats = f.stats();
            let f = Arc::new(f);
            health.failover = Some(f.clone());
            (f as Arc<dyn Offloader>, Some(stats))
        }
        None if !cloud.quic.is_empty() => {
            tracing::warn!("QUIC disabled: it has no plaintext mode and --insecure is set; offloading over plaintext gRPC");
            (grpc, None)
        }
        _ => (grpc, None),
    };
    Ok(OffloadStack {
        offloader: outer_layers(o, inner),
        failover,
        health,
    })
}

/// The stack around any other offloader (a KServe V2 client): a circuit
/// breaker named `transport`, retries, the rate limit.
pub fn build_layered_stack(
    o: &OffloadConfig,
    inner: Arc<dyn Offloader>,
    transport: &'static str,
) -> OffloadStack {
    let guard = Arc::new(Guarded::new(inner, transport, o.breaker()));
    OffloadStack {
        offloader: outer_layers(o, guard.clone()),
        failover: None,
        health: StackHealth {
            breakers: vec![guard],
            failover: None,
        },
    }
}

/// Retries, then (outermost, so a task costs one token however often it
/// is retried) the rate limit.
fn outer_layers(o: &OffloadConfig, inner: Arc<dyn Offloader>) -> Arc<dyn Offloader> {
    let retrying: Arc<dyn Offloader> = Arc::new(Retrying::new(
        inner,
        RetryConfig {
            max_retries: o.retries,
            min_delay: Duration::from_millis(o.retry_min_ms),
            max_delay: Duration::from_millis(o.retry_max_ms),
        },
    ));
    match RateLimited::new(retrying.clone(), o.rate_limit()) {
        Some(limited) => Arc::new(limited),
        None => retrying,
    }
}
