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
    use crate::task::TaskError;

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
