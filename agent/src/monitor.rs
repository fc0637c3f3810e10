//! The network monitor: the thin async shell around the link estimators.
//! Every probe sends [`ProbeEvent`]s in; each offload endpoint's host gets
//! its [`NetworkStatus`] on a watch channel.

use agent_core::{LinkConfig, LinkEstimator, NetworkStatus, ProbeEvent};
use std::collections::HashMap;
use std::net::IpAddr;
use std::time::{Duration, Instant};
use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;

pub struct Monitor {
    pub events: mpsc::Sender<ProbeEvent>,
    /// One status per destination host (endpoints on one host share the
    /// path, and so the estimate).
    pub statuses: HashMap<IpAddr, watch::Receiver<NetworkStatus>>,
}

/// Starts the monitor task for `dests`; it ends when `stop` is cancelled or
/// every event sender is gone.
pub fn spawn(cfg: LinkConfig, dests: &[IpAddr], stop: CancellationToken) -> Monitor {
    let (tx, mut rx) = mpsc::channel::<ProbeEvent>(4096);
    let mut senders = HashMap::new();
    let mut statuses = HashMap::new();
    for dest in dests {
        let (status_tx, status_rx) = watch::channel(NetworkStatus::default());
        senders.insert(*dest, status_tx);
        statuses.insert(*dest, status_rx);
    }
    tokio::spawn(async move {
        let mut links: HashMap<IpAddr, LinkEstimator> = HashMap::new();
        // Staleness changes with time alone, so republish periodically too.
        let mut tick = tokio::time::interval(Duration::from_millis(100));
        loop {
            tokio::select! {
                _ = stop.cancelled() => break,
                ev = rx.recv() => {
                    let Some(ev) = ev else { break };
                    crate::metrics::record_probe_event(&ev);
                    links.entry(ev.dest).or_insert_with(|| LinkEstimator::new(cfg.clone())).on_event(&ev);
                    // Drain what else is waiting before publishing once.
                    while let Ok(ev) = rx.try_recv() {
                        crate::metrics::record_probe_event(&ev);
                        links.entry(ev.dest).or_insert_with(|| LinkEstimator::new(cfg.clone())).on_event(&ev);
                    }
                }
                _ = tick.tick() => {}
            }
            let now = Instant::now();
            for (dest, status_tx) in &senders {
                if let Some(link) = links.get(dest) {
                    status_tx.send_replace(link.snapshot(now));
                }
            }
        }
    });
    Monitor {
        events: tx,
        statuses,
    }
}
