//! Active probe: times TCP handshakes to the cloud endpoint. It is the
//! fallback source for RTT and jitter, and the check that the service
//! itself (not just its host) answers.

use agent_core::{NetworkStatus, ProbeEvent, ProbeEventKind, SampleSource};
use std::net::SocketAddr;
use std::time::{Duration, Instant};
use tokio::net::TcpStream;
use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;

pub struct ActiveProbe {
    pub target: SocketAddr,
    pub interval: Duration,
    pub timeout: Duration,
    /// Passive samples younger than this make a probe unnecessary.
    pub passive_fresh_for: Duration,
}

/// One TCP connect; `None` when it failed or timed out.
pub async fn connect_rtt(target: SocketAddr, timeout: Duration) -> Option<Duration> {
    let started = Instant::now();
    match tokio::time::timeout(timeout, TcpStream::connect(target)).await {
        Ok(Ok(stream)) => {
            let rtt = started.elapsed();
            drop(stream);
            Some(rtt)
        }
        _ => None,
    }
}

/// How long one probe may take before it counts as lost: a few smoothed
/// RTTs once the path is known (so a dead link is noticed within about a
/// second, three lost probes in a row), never more than `max`.
pub fn probe_timeout(srtt_ms: f64, samples: usize, max: Duration) -> Duration {
    if samples < 3 || !srtt_ms.is_finite() || srtt_ms < 0.0 {
        return max;
    }
    Duration::from_secs_f64((4.0 * srtt_ms + 50.0) / 1e3)
        .max(Duration::from_millis(150))
        .min(max)
}

impl ActiveProbe {
    /// Probes until `events` is closed or `stop` is cancelled. While a passive source is fresh the
    /// path's figures come from it, and the probe only checks, ten times less
    /// often, that the service itself still accepts connections; after a
    /// failure it probes at the full rate again.
    pub async fn run(
        self,
        events: mpsc::Sender<ProbeEvent>,
        status: watch::Receiver<NetworkStatus>,
        stop: CancellationToken,
    ) {
        stop.run_until_cancelled(self.probe(events, status)).await;
    }

    async fn probe(
        &self,
        events: mpsc::Sender<ProbeEvent>,
        status: watch::Receiver<NetworkStatus>,
    ) {
        let mut tick = tokio::time::interval(self.interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut last_ok: Option<Instant> = None;
        loop {
            tick.tick().await;
            let passive_fresh = {
                let s = status.borrow();
                s.source.is_some_and(|src| src.is_passive())
                    && s.age.is_some_and(|a| a < self.passive_fresh_for)
            };
            if passive_fresh && last_ok.is_some_and(|t| t.elapsed() < self.interval * 10) {
                continue;
            }
            let timeout = {
                let s = status.borrow();
                probe_timeout(s.rtt.srtt_ms, s.rtt.samples, self.timeout)
            };
            let kind = match connect_rtt(self.target, timeout).await {
                Some(rtt) => {
                    last_ok = Some(Instant::now());
                    ProbeEventKind::Rtt(rtt)
                }
                None => {
                    last_ok = None;
                    ProbeEventKind::ProbeLost
                }
            };
            let ev = ProbeEvent {
                dest: self.target.ip(),
                source: SampleSource::ActiveTcpConnect,
                at: Instant::now(),
                kind,
            };
            if events.send(ev).await.is_err() {
                return;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn probe_timeout_follows_the_rtt_within_bounds() {
        let max = Duration::from_secs(1);
        let ms = Duration::from_millis;
        let cases = [
            // (srtt ms, samples, expected)
            (40.0, 60, ms(210)),
            (1.0, 60, ms(150)),
            (500.0, 60, max),
            (40.0, 2, max),
            (f64::NAN, 60, max),
            (-1.0, 60, max),
        ];
        for (srtt, n, want) in cases {
            assert_eq!(probe_timeout(srtt, n, max), want, "{srtt} {n}");
        }
    }
}
