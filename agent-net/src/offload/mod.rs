//! Offloading to the cloud service. The manager sees one [`Offloader`];
//! transports (gRPC, QUIC) implement it, and failover, retries, circuit
//! breaking and the rate limit wrap it as layers.

mod breaker;
mod failover;
mod grpc;
mod quic;
mod ratelimit;
mod retry;
mod stack;

pub use breaker::{Breaker, BreakerConfig, BreakerState, Guarded, Verdict};
pub use failover::{
    Failover, FailoverConfig, FailoverState, FailoverStats, Mode, QuicFailure, Route,
};
pub use grpc::GrpcOffloader;
pub use quic::{QuicClientConfig, QuicOffloader};
pub use ratelimit::{RateLimitConfig, RateLimited};
pub use retry::{RetryConfig, Retrying};
pub use stack::{
    build_layered_stack, build_stack, CloudEndpoints, OffloadConfig, OffloadStack, StackHealth,
};

use agent_core::{TaskError, Transport};

use async_trait::async_trait;
use std::time::{Duration, Instant};

#[derive(Debug, Clone)]
pub struct OffloadRequest {
    pub request: proto::TaskRequest,
    /// Monotonic deadline (the request carries the wall-clock one).
    pub deadline: Option<Instant>,
}

#[derive(Debug, Clone)]
pub struct OffloadReply {
    pub response: proto::TaskResponse,
    pub transport: Transport,
    /// Round trip as the client saw it.
    pub elapsed: Duration,
    pub bytes_up: usize,
    pub bytes_down: usize,
    /// The connection's packet counts so far, where the transport keeps
    /// them (QUIC): the loss the kernel cannot see on UDP.
    pub packets: Option<PacketCounts>,
}

/// Packets a connection has sent and declared lost since it opened.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct PacketCounts {
    /// Which connection (a new one counts from zero).
    pub connection: u64,
    pub sent: u64,
    pub lost: u64,
}

impl PacketCounts {
    /// The packets sent and lost since the counts in `last`, which then
    /// holds the newest counts. Replies finish out of order, so an older
    /// snapshot of the same connection adds nothing.
    pub fn advance(last: &mut Option<PacketCounts>, now: PacketCounts) -> (u64, u64) {
        match last {
            Some(l) if l.connection == now.connection => {
                let d = (
                    now.sent.saturating_sub(l.sent),
                    now.lost.saturating_sub(l.lost),
                );
                l.sent = l.sent.max(now.sent);
                l.lost = l.lost.max(now.lost);
                d
            }
            _ => {
                *last = Some(now);
                (now.sent, now.lost)
            }
        }
    }
}

#[cfg(test)]
mod packet_tests {
    use super::PacketCounts;

    fn c(connection: u64, sent: u64, lost: u64) -> PacketCounts {
        PacketCounts {
            connection,
            sent,
            lost,
        }
    }

    #[test]
    fn counts_advance_per_connection_and_ignore_older_snapshots() {
        let mut last = None;
        // (snapshot, expected delta)
        let steps = [
            (c(1, 10, 1), (10, 1)),
            (c(1, 25, 2), (15, 1)),
            // An older snapshot of the same connection, finishing late.
            (c(1, 20, 2), (0, 0)),
            (c(1, 30, 2), (5, 0)),
            // A new connection counts from zero.
            (c(2, 4, 0), (4, 0)),
            (c(2, 9, 3), (5, 3)),
        ];
        for (i, (now, want)) in steps.into_iter().enumerate() {
            assert_eq!(PacketCounts::advance(&mut last, now), want, "step {i}");
        }
        assert_eq!(last, Some(c(2, 9, 3)));
    }
}

impl OffloadReply {
    /// Time on the wire beyond the server's own time: the figure the
    /// bandwidth and RTT estimators learn from.
    pub fn network_time(&self) -> Duration {
        let server = Duration::from_nanos(self.response.duration_nano.max(0) as u64);
        self.elapsed.saturating_sub(server)
    }

    /// How the request arrived at the cloud (QUIC only): the bytes its
    /// connection received between the request's first and last chunk,
    /// and the time between them.
    pub fn upload_train(&self) -> Option<(u64, Duration)> {
        let r = &self.response;
        (r.upload_train_bytes > 0 && r.upload_train_nano > 0).then(|| {
            (
                r.upload_train_bytes as u64,
                Duration::from_nanos(r.upload_train_nano as u64),
            )
        })
    }
}

#[derive(Debug, Clone, thiserror::Error)]
pub enum OffloadError {
    /// The cloud answered and refused the task; retrying will not help.
    #[error("cloud refused the task: {0}")]
    Rejected(TaskError),
    /// No connection could be made (handshake failed or timed out, UDP
    /// blocked, connection refused); nothing reached the cloud.
    #[error("{transport} could not connect: {message}")]
    Connect {
        transport: &'static str,
        message: String,
    },
    /// The transport failed (connection, handshake, stream reset).
    #[error("{transport} transport failed: {message}")]
    Transport {
        transport: &'static str,
        message: String,
    },
    /// The endpoint's circuit breaker is open: recent calls failed.
    #[error("{transport} circuit open after repeated failures")]
    CircuitOpen { transport: &'static str },
    /// The deadline passed before the cloud answered.
    #[error("deadline passed before the cloud answered")]
    Timeout,
    /// The edge's own offload rate limit towards this cloud was reached;
    /// nothing was sent.
    #[error("offload rate limit reached ({per_second}/s)")]
    RateLimited { per_second: f64 },
}

impl OffloadError {
    pub fn into_task_error(self) -> TaskError {
        match self {
            OffloadError::Rejected(e) => e,
            OffloadError::Connect { .. }
            | OffloadError::Transport { .. }
            | OffloadError::CircuitOpen { .. } => TaskError::Unavailable(self.to_string()),
            OffloadError::Timeout => TaskError::DeadlineExceeded(self.to_string()),
            OffloadError::RateLimited { .. } => TaskError::Overloaded(self.to_string()),
        }
    }
}

impl OffloadError {
    /// Whether sending the task again can help. Inference has no side
    /// effects, so a task that may have reached the cloud before the
    /// transport broke is safe to resend; a refusal or a passed deadline is
    /// not worth resending.
    pub fn is_retryable(&self) -> bool {
        matches!(
            self,
            OffloadError::Connect { .. } | OffloadError::Transport { .. }
        )
    }
}

#[async_trait]
pub trait Offloader: Send + Sync {
    async fn offload(&self, req: &OffloadRequest) -> Result<OffloadReply, OffloadError>;

    /// Makes sure a connection can be established (used to probe a
    /// transport without a task). Connectionless layers have nothing to do.
    async fn ready(&self) -> Result<(), OffloadError> {
        Ok(())
    }
}

/// Time left before `deadline`, or `None` for no deadline; `Err` if passed.
pub fn time_left(deadline: Option<Instant>) -> Result<Option<Duration>, OffloadError> {
    match deadline {
        None => Ok(None),
        Some(d) => {
            let left = d.saturating_duration_since(Instant::now());
            if left.is_zero() {
                Err(OffloadError::Timeout)
            } else {
                Ok(Some(left))
            }
        }
    }
}
