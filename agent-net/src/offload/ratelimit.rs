//! The offload rate limit towards one cloud endpoint (GCRA via governor):
//! an offload over the limit fails at once with
//! [`OffloadError::RateLimited`], so the manager runs the task locally
//! instead of piling work onto the cloud.

use super::{OffloadError, OffloadReply, OffloadRequest, Offloader};
use async_trait::async_trait;
use governor::clock::{Clock, DefaultClock};
use governor::middleware::NoOpMiddleware;
use governor::state::{InMemoryState, NotKeyed};
use governor::{Quota, RateLimiter};
use std::num::NonZeroU32;
use std::sync::Arc;
use std::time::Duration;

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RateLimitConfig {
    /// Sustained offloads per second; 0 (or not finite) turns the limit off.
    pub per_second: f64,
    /// Offloads allowed at once after a quiet spell (at least 1).
    pub burst: u32,
}

impl RateLimitConfig {
    /// The governor quota, or `None` when the limit is off.
    pub fn quota(&self) -> Option<Quota> {
        if !(self.per_second.is_finite() && self.per_second > 0.0) {
            return None;
        }
        // Past ~1e9/s the period rounds to zero: no meaningful limit.
        let period = Duration::from_secs_f64(1.0 / self.per_second);
        let burst = NonZeroU32::new(self.burst.max(1)).expect("at least 1");
        Quota::with_period(period).map(|q| q.allow_burst(burst))
    }
}

type Limiter<C> = RateLimiter<NotKeyed, InMemoryState, C, NoOpMiddleware<<C as Clock>::Instant>>;

pub struct RateLimited<C: Clock = DefaultClock> {
    inner: Arc<dyn Offloader>,
    limiter: Limiter<C>,
    per_second: f64,
}

impl RateLimited {
    /// `None` when `cfg` turns the limit off.
    pub fn new(inner: Arc<dyn Offloader>, cfg: RateLimitConfig) -> Option<RateLimited> {
        Self::with_clock(inner, cfg, DefaultClock::default())
    }
}

impl<C: Clock> RateLimited<C> {
    pub fn with_clock(
        inner: Arc<dyn Offloader>,
        cfg: RateLimitConfig,
        clock: C,
    ) -> Option<RateLimited<C>> {
        let quota = cfg.quota()?;
        Some(RateLimited {
            inner,
            limiter: RateLimiter::direct_with_clock(quota, clock),
            per_second: cfg.per_second,
        })
    }
}

#[async_trait]
impl<C> Offloader for RateLimited<C>
where
    C: Clock + Send + Sync,
    C::Instant: Send + Sync,
{
    async fn offload(&self, req: &OffloadRequest) -> Result<OffloadReply, OffloadError> {
        if self.limiter.check().is_err() {
            return Err(OffloadError::RateLimited {
                per_second: self.per_second,
            });
        }
        self.inner.offload(req).await
    }

    /// Probes carry no task and are not limited.
    async fn ready(&self) -> Result<(), OffloadError> {
        self.inner.ready().await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use agent_core::{TaskError, Transport};
    use governor::clock::FakeRelativeClock;
    use std::sync::atomic::{AtomicU64, Ordering};

    /// Answers every call.
    #[derive(Default)]
    struct Fake {
        calls: AtomicU64,
    }

    #[async_trait]
    impl Offloader for Fake {
        async fn offload(&self, _: &OffloadRequest) -> Result<OffloadReply, OffloadError> {
            self.calls.fetch_add(1, Ordering::SeqCst);
            Ok(OffloadReply {
                response: proto::TaskResponse::default(),
                transport: Transport::Grpc,
                elapsed: Duration::ZERO,
                bytes_up: 0,
                bytes_down: 0,
                packets: None,
            })
        }
    }

    fn req() -> OffloadRequest {
        OffloadRequest {
            request: proto::TaskRequest::default(),
            deadline: None,
        }
    }

    fn layer(
        per_second: f64,
        burst: u32,
    ) -> (Arc<Fake>, FakeRelativeClock, RateLimited<FakeRelativeClock>) {
        let fake = Arc::new(Fake::default());
        let clock = FakeRelativeClock::default();
        let cfg = RateLimitConfig { per_second, burst };
        let l = RateLimited::with_clock(fake.clone(), cfg, clock.clone()).expect("limit on");
        (fake, clock, l)
    }

    /// (passed, rate limited) of `n` offloads at one instant.
    async fn burst(l: &RateLimited<FakeRelativeClock>, n: usize) -> (usize, usize) {
        let mut passed = 0;
        let mut limited = 0;
        for _ in 0..n {
            match l.offload(&req()).await {
                Ok(_) => passed += 1,
                Err(OffloadError::RateLimited { per_second }) => {
                    assert_eq!(per_second, 10.0);
                    limited += 1
                }
                Err(e) => panic!("unexpected {e}"),
            }
        }
        (passed, limited)
    }

    #[tokio::test]
    async fn a_burst_passes_up_to_the_burst_then_fails_fast_until_tokens_return() {
        for (burst_size, n) in [(1, 5), (5, 25), (100, 130)] {
            let (fake, clock, l) = layer(10.0, burst_size);
            assert_eq!(
                burst(&l, n).await,
                (burst_size as usize, n - burst_size as usize),
                "burst {burst_size}"
            );
            assert_eq!(fake.calls.load(Ordering::SeqCst), u64::from(burst_size));
            // 10/s: one token back every 100 ms.
            clock.advance(Duration::from_millis(99));
            assert_eq!(burst(&l, 1).await, (0, 1));
            clock.advance(Duration::from_millis(1));
            assert_eq!(burst(&l, 3).await, (1, 2));
            clock.advance(Duration::from_millis(300));
            assert_eq!(
                burst(&l, 5).await,
                (3.min(burst_size as usize), 5 - 3.min(burst_size as usize))
            );
            // A long quiet spell refills the burst, and no more.
            clock.advance(Duration::from_secs(60));
            assert_eq!(
                burst(&l, n).await,
                (burst_size as usize, n - burst_size as usize)
            );
        }
    }

    #[test]
    fn zero_or_nonsense_rates_turn_the_limit_off() {
        let fake: Arc<dyn Offloader> = Arc::new(Fake::default());
        for per_second in [0.0, -1.0, f64::NAN, f64::INFINITY] {
            let cfg = RateLimitConfig {
                per_second,
                burst: 10,
            };
            assert!(cfg.quota().is_none(), "{per_second}");
            assert!(RateLimited::new(fake.clone(), cfg).is_none());
        }
        // A zero burst still lets one through.
        let cfg = RateLimitConfig {
            per_second: 1.0,
            burst: 0,
        };
        assert_eq!(cfg.quota().unwrap().burst_size().get(), 1);
    }

    #[test]
    fn rate_limited_is_an_overload_that_is_not_retried() {
        let e = OffloadError::RateLimited { per_second: 5.0 };
        assert!(!e.is_retryable());
        assert_eq!(e.to_string(), "offload rate limit reached (5/s)");
        assert_eq!(
            e.into_task_error(),
            TaskError::Overloaded("offload rate limit reached (5/s)".into())
        );
    }
}
