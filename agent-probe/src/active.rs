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
            let kind = match connect_rtt(self.target, self.timeout).await {
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
