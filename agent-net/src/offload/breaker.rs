//! A circuit breaker per endpoint and transport: after repeated transport
//! failures calls fail fast for a while (so a dead endpoint costs no
//! connect timeouts and tasks fall back at once), then one trial call
//! decides whether it closes again.
//!
//! [`Breaker`] is the pure state machine (time passed in); [`Guarded`]
//! wraps an [`Offloader`] with one. Written here rather than taken from a
//! crate because the crates on offer read the clock themselves, which keeps
//! their state machines from being tested deterministically.

use super::{OffloadError, OffloadReply, OffloadRequest, Offloader};
use async_trait::async_trait;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct BreakerConfig {
    /// Consecutive failures that open the circuit.
    pub failure_threshold: u32,
    /// How long it stays open before a trial call.
    pub open_for: Duration,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BreakerState {
    Closed {
        failures: u32,
    },
    Open {
        until: Instant,
    },
    /// Open time is over; one trial call is let through at a time.
    HalfOpen {
        trial_in_flight: bool,
    },
}

/// What a finished call says about the endpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// The endpoint answered (also a refusal: it is alive).
    Healthy,
    /// The transport failed.
    Failed,
    /// No verdict: deadline passed, call cancelled or never sent.
    Neutral,
}

impl Verdict {
    pub fn of(r: &Result<OffloadReply, OffloadError>) -> Verdict {
        match r {
            Ok(_) | Err(OffloadError::Rejected(_)) => Verdict::Healthy,
            Err(OffloadError::Connect { .. } | OffloadError::Transport { .. }) => Verdict::Failed,
            Err(
                OffloadError::Timeout
                | OffloadError::CircuitOpen { .. }
                | OffloadError::RateLimited { .. },
            ) => Verdict::Neutral,
        }
    }
}

#[derive(Debug, Clone)]
pub struct Breaker {
    cfg: BreakerConfig,
    state: BreakerState,
}

impl Breaker {
    pub fn new(cfg: BreakerConfig) -> Breaker {
        Breaker {
            cfg,
            state: BreakerState::Closed { failures: 0 },
        }
    }

    pub fn state(&self) -> BreakerState {
        self.state
    }

    /// Whether a call may go out at `now`.
    pub fn admit(&mut self, now: Instant) -> bool {
        match self.state {
            BreakerState::Closed { .. } => true,
            BreakerState::Open { until } if now >= until => {
                self.state = BreakerState::HalfOpen {
                    trial_in_flight: true,
                };
                true
            }
            BreakerState::Open { .. } => false,
            BreakerState::HalfOpen {
                trial_in_flight: true,
            } => false,
            BreakerState::HalfOpen {
                trial_in_flight: false,
            } => {
                self.state = BreakerState::HalfOpen {
                    trial_in_flight: true,
                };
                true
            }
        }
    }

    /// Records the outcome of an admitted call that ended at `now`.
    pub fn record(&mut self, verdict: Verdict, now: Instant) {
        let open = BreakerState::Open {
            until: now + self.cfg.open_for,
        };
        self.state = match (self.state, verdict) {
            (_, Verdict::Healthy) => BreakerState::Closed { failures: 0 },
            (BreakerState::Closed { failures }, Verdict::Failed) => {
                if failures + 1 >= self.cfg.failure_threshold.max(1) {
                    open
                } else {
                    BreakerState::Closed {
                        failures: failures + 1,
                    }
                }
            }
            (BreakerState::HalfOpen { .. }, Verdict::Failed) => open,
            (BreakerState::HalfOpen { .. }, Verdict::Neutral) => BreakerState::HalfOpen {
                trial_in_flight: false,
            },
            (s, _) => s,
        };
    }
}

/// An offloader behind a circuit breaker.
pub struct Guarded {
    inner: Arc<dyn Offloader>,
    transport: &'static str,
    breaker: Mutex<Breaker>,
    /// Counts openings of the circuit: calls in flight when it opens are
    /// abandoned at once, so their tasks move on (retry over the other
    /// transport, or run locally) instead of waiting on a failed endpoint.
    openings: tokio::sync::watch::Sender<u64>,
}

impl Guarded {
    pub fn new(inner: Arc<dyn Offloader>, transport: &'static str, cfg: BreakerConfig) -> Guarded {
        Guarded {
            inner,
            transport,
            breaker: Mutex::new(Breaker::new(cfg)),
            openings: tokio::sync::watch::Sender::new(0),
        }
    }

    pub fn state(&self) -> BreakerState {
        self.breaker.lock().expect("breaker lock").state()
    }

    /// The transport this breaker guards ("quic", "grpc").
    pub fn transport(&self) -> &'static str {
        self.transport
    }

    fn record(&self, verdict: Verdict) {
        let mut b = self.breaker.lock().expect("breaker lock");
        let was_open = !matches!(b.state(), BreakerState::Closed { .. });
        b.record(verdict, Instant::now());
        match b.state() {
            BreakerState::Open { .. } if !was_open || verdict == Verdict::Failed => {
                tracing::warn!(transport = self.transport, "circuit open: failing fast");
                if !was_open {
                    self.openings.send_modify(|n| *n += 1);
                }
            }
            BreakerState::Closed { .. } if was_open => {
                tracing::info!(transport = self.transport, "circuit closed again")
            }
            _ => {}
        }
    }
}

/// Records a neutral verdict if the call is dropped (cancelled) before it
/// ends, so a half-open breaker is not left waiting for a trial forever.
struct Pending<'a> {
    guarded: &'a Guarded,
    done: bool,
}

impl Drop for Pending<'_> {
    fn drop(&mut self) {
        if !self.done {
            self.guarded.record(Verdict::Neutral);
        }
    }
}

#[async_trait]
impl Offloader for Guarded {
    async fn offload(&self, req: &OffloadRequest) -> Result<OffloadReply, OffloadError> {
        if !self
            .breaker
            .lock()
            .expect("breaker lock")
            .admit(Instant::now())
        {
            return Err(OffloadError::CircuitOpen {
                transport: self.transport,
            });
        }
        let mut opened = self.openings.subscribe();
        let mut pending = Pending {
            guarded: self,
            done: false,
        };
        let r = tokio::select! {
            r = self.inner.offload(req) => r,
            _ = opened.changed() => {
                // The circuit already counts the failures that opened it.
                pending.done = true;
                return Err(OffloadError::Transport {
                    transport: self.transport,
                    message: "circuit opened while in flight: offload abandoned".into(),
                });
            }
        };
        pending.done = true;
        self.record(Verdict::of(&r));
        r
    }

    /// A probe bypasses the breaker; success closes it.
    async fn ready(&self) -> Result<(), OffloadError> {
        let r = self.inner.ready().await;
        if r.is_ok() {
            self.record(Verdict::Healthy);
        }
        r
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const CFG: BreakerConfig = BreakerConfig {
        failure_threshold: 3,
        open_for: Duration::from_secs(2),
    };

    #[test]
    fn opens_after_consecutive_failures_and_a_success_resets_the_count() {
        let t0 = Instant::now();
        let mut b = Breaker::new(CFG);
        for _ in 0..2 {
            assert!(b.admit(t0));
            b.record(Verdict::Failed, t0);
        }
        b.record(Verdict::Healthy, t0);
        assert_eq!(b.state(), BreakerState::Closed { failures: 0 });
        for _ in 0..3 {
            assert!(b.admit(t0));
            b.record(Verdict::Failed, t0);
        }
        assert_eq!(
            b.state(),
            BreakerState::Open {
                until: t0 + CFG.open_for
            }
        );
        assert!(!b.admit(t0 + Duration::from_millis(1999)));
    }

    #[test]
    fn half_open_lets_one_trial_through_and_its_outcome_decides() {
        let t0 = Instant::now();
        let mut b = Breaker::new(CFG);
        for _ in 0..3 {
            b.record(Verdict::Failed, t0);
        }
        let t1 = t0 + CFG.open_for;
        assert!(b.admit(t1), "trial after the open time");
        assert!(!b.admit(t1), "only one trial at a time");
        b.record(Verdict::Failed, t1);
        assert_eq!(
            b.state(),
            BreakerState::Open {
                until: t1 + CFG.open_for
            }
        );

        let t2 = t1 + CFG.open_for;
        assert!(b.admit(t2));
        b.record(Verdict::Neutral, t2);
        assert_eq!(
            b.state(),
            BreakerState::HalfOpen {
                trial_in_flight: false
            }
        );
        assert!(b.admit(t2), "a cancelled trial frees the slot");
        b.record(Verdict::Healthy, t2);
        assert_eq!(b.state(), BreakerState::Closed { failures: 0 });
    }

    #[test]
    fn refusals_and_timeouts_do_not_count_as_endpoint_failures() {
        let rejected: Result<OffloadReply, OffloadError> = Err(OffloadError::Rejected(
            agent_core::TaskError::Overloaded("x".into()),
        ));
        assert_eq!(Verdict::of(&rejected), Verdict::Healthy);
        assert_eq!(Verdict::of(&Err(OffloadError::Timeout)), Verdict::Neutral);
        let t0 = Instant::now();
        let mut b = Breaker::new(CFG);
        for _ in 0..10 {
            b.record(Verdict::Neutral, t0);
        }
        assert_eq!(b.state(), BreakerState::Closed { failures: 0 });
    }

    /// Hangs on requests with id "hang"; every other one fails at once.
    struct HangOrFail;

    #[async_trait]
    impl Offloader for HangOrFail {
        async fn offload(&self, req: &OffloadRequest) -> Result<OffloadReply, OffloadError> {
            if req.request.id == "hang" {
                std::future::pending::<()>().await;
            }
            Err(OffloadError::Transport {
                transport: "fake",
                message: "down".into(),
            })
        }
        async fn ready(&self) -> Result<(), OffloadError> {
            Ok(())
        }
    }

    fn req(id: &str) -> OffloadRequest {
        OffloadRequest {
            request: proto::TaskRequest {
                id: id.into(),
                ..Default::default()
            },
            deadline: None,
        }
    }

    #[tokio::test]
    async fn calls_in_flight_are_abandoned_when_the_circuit_opens() {
        let g = Arc::new(Guarded::new(Arc::new(HangOrFail), "fake", CFG));
        let hung = tokio::spawn({
            let g = g.clone();
            async move { g.offload(&req("hang")).await }
        });
        tokio::task::yield_now().await;
        // Still hanging while the circuit is closed.
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(!hung.is_finished());
        for _ in 0..CFG.failure_threshold {
            assert!(g.offload(&req("x")).await.is_err());
        }
        assert!(matches!(g.state(), BreakerState::Open { .. }));
        let r = tokio::time::timeout(Duration::from_secs(1), hung)
            .await
            .expect("abandoned at once")
            .unwrap();
        match r {
            Err(OffloadError::Transport { message, .. }) => {
                assert!(message.contains("abandoned"), "{message}")
            }
            other => panic!("{other:?}"),
        }
        // New calls fail fast while it is open.
        assert!(matches!(
            g.offload(&req("hang")).await,
            Err(OffloadError::CircuitOpen { .. })
        ));
    }
}
