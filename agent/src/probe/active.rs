//! Active probe: times TCP handshakes to the cloud endpoint. It is the
//! fallback source: it stays quiet while a passive source is fresh.

use super::sample::{ProbeEvent, ProbeEventKind, SampleSource};
use crate::estimate::NetworkStatus;
use std::net::SocketAddr;
use std::time::{Duration, Instant};
use tokio::net::TcpStream;
use tokio::sync::{mpsc, watch};

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
    /// Probes until `events` is closed.
    pub async fn run(self, events: mpsc::Sender<ProbeEvent>, status: watch::Receiver<NetworkStatus>) {
        let mut tick = tokio::time::interval(self.interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            let passive_fresh = {
                let s = status.borrow();
                s.source.is_some_and(|src| src.is_passive())
                    && s.age.is_some_and(|a| a < self.passive_fresh_for)
            };
            if passive_fresh {
                continue;
            }
            let kind = match connect_rtt(self.target, self.timeout).await {
                Some(rtt) => ProbeEventKind::Rtt(rtt),
                None => ProbeEventKind::ProbeLost,
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
