//! Retries with exponential backoff and jitter (backon), only for failures
//! where resending is safe ([`OffloadError::is_retryable`]) and only while
//! the wait still leaves time before the task's deadline.

use super::{OffloadError, OffloadReply, OffloadRequest, Offloader};
use async_trait::async_trait;
use backon::{ExponentialBuilder, Retryable};
use std::sync::Arc;
use std::time::{Duration, Instant};

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RetryConfig {
    /// Retries after the first attempt.
    pub max_retries: usize,
    pub min_delay: Duration,
    pub max_delay: Duration,
}

/// Whether waiting `delay` from `now` still leaves time before `deadline`.
pub fn wait_fits(deadline: Option<Instant>, now: Instant, delay: Duration) -> bool {
    deadline.is_none_or(|d| now + delay < d)
}

pub struct Retrying {
    inner: Arc<dyn Offloader>,
    cfg: RetryConfig,
}

impl Retrying {
    pub fn new(inner: Arc<dyn Offloader>, cfg: RetryConfig) -> Retrying {
        Retrying { inner, cfg }
    }

    fn backoff(&self) -> ExponentialBuilder {
        ExponentialBuilder::default()
            .with_min_delay(self.cfg.min_delay)
            .with_max_delay(self.cfg.max_delay)
            .with_factor(2.0)
            .with_max_times(self.cfg.max_retries)
            .with_jitter()
    }
}

#[async_trait]
impl Offloader for Retrying {
    async fn offload(&self, req: &OffloadRequest) -> Result<OffloadReply, OffloadError> {
        let deadline = req.deadline;
        (|| self.inner.offload(req))
            .retry(self.backoff())
            .sleep(tokio::time::sleep)
            .when(OffloadError::is_retryable)
            .adjust(move |_, delay| delay.filter(|d| wait_fits(deadline, Instant::now(), *d)))
            .notify(|e, delay| tracing::debug!(task = %req.request.id, error = %e, ?delay, "offload retry"))
            .await
    }

    async fn ready(&self) -> Result<(), OffloadError> {
        self.inner.ready().await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use agent_core::TaskError;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Mutex;

    /// Fails with the queued errors, then answers.
    struct Scripted {
        errors: Mutex<Vec<OffloadError>>,
        calls: AtomicUsize,
    }

    #[async_trait]
    impl Offloader for Scripted {
        async fn offload(&self, _: &OffloadRequest) -> Result<OffloadReply, OffloadError> {
            self.calls.fetch_add(1, Ordering::SeqCst);
            match self.errors.lock().unwrap().pop() {
                Some(e) => Err(e),
                None => Ok(OffloadReply {
                    response: proto::TaskResponse::default(),
                    transport: agent_core::Transport::Grpc,
                    elapsed: Duration::ZERO,
                    bytes_up: 0,
                    bytes_down: 0,
                    packets: None,
                }),
            }
        }
    }

    fn layer(errors: Vec<OffloadError>) -> (Arc<Scripted>, Retrying) {
        let inner = Arc::new(Scripted {
            errors: Mutex::new(errors),
            calls: AtomicUsize::new(0),
        });
        let cfg = RetryConfig {
            max_retries: 2,
            min_delay: Duration::from_millis(20),
            max_delay: Duration::from_millis(40),
        };
        (inner.clone(), Retrying::new(inner, cfg))
    }

    fn reset() -> OffloadError {
        OffloadError::Transport {
            transport: "quic",
            message: "reset".into(),
        }
    }

    fn req(deadline: Option<Instant>) -> OffloadRequest {
        OffloadRequest {
            request: proto::TaskRequest::default(),
            deadline,
        }
    }

    #[tokio::test]
    async fn transport_failures_are_retried_up_to_the_limit() {
        let (inner, r) = layer(vec![reset(), reset()]);
        assert!(r.offload(&req(None)).await.is_ok());
        assert_eq!(inner.calls.load(Ordering::SeqCst), 3);

        let (inner, r) = layer(vec![reset(), reset(), reset()]);
        assert!(matches!(
            r.offload(&req(None)).await,
            Err(OffloadError::Transport { .. })
        ));
        assert_eq!(
            inner.calls.load(Ordering::SeqCst),
            3,
            "first try + 2 retries"
        );
    }

    #[tokio::test]
    async fn refusals_are_not_retried_nor_waits_past_the_deadline() {
        let (inner, r) = layer(vec![OffloadError::Rejected(TaskError::Overloaded(
            "busy".into(),
        ))]);
        assert!(matches!(
            r.offload(&req(None)).await,
            Err(OffloadError::Rejected(_))
        ));
        assert_eq!(inner.calls.load(Ordering::SeqCst), 1);

        // 5 ms left, the first backoff is at least 20 ms: no retry.
        let (inner, r) = layer(vec![reset()]);
        let deadline = Instant::now() + Duration::from_millis(5);
        assert!(r.offload(&req(Some(deadline))).await.is_err());
        assert_eq!(inner.calls.load(Ordering::SeqCst), 1);
    }

    #[test]
    fn only_transport_failures_are_retried_and_only_within_the_deadline() {
        let t = |transport| OffloadError::Transport {
            transport,
            message: "reset".into(),
        };
        assert!(t("quic").is_retryable());
        assert!(OffloadError::Connect {
            transport: "grpc",
            message: "refused".into()
        }
        .is_retryable());
        assert!(!OffloadError::Rejected(TaskError::Overloaded("x".into())).is_retryable());
        assert!(!OffloadError::Timeout.is_retryable());
        assert!(!OffloadError::CircuitOpen { transport: "grpc" }.is_retryable());

        let now = Instant::now();
        let ms = Duration::from_millis;
        assert!(wait_fits(None, now, ms(500)));
        assert!(wait_fits(Some(now + ms(50)), now, ms(20)));
        assert!(!wait_fits(Some(now + ms(50)), now, ms(50)));
    }
}
