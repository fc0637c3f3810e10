//! The network monitor: the thin async shell around the link estimators.
//! Every probe sends [`ProbeEvent`]s in; the cloud endpoint's
//! [`NetworkStatus`] comes out on a watch channel.

use agent_core::{LinkConfig, LinkEstimator, NetworkStatus, ProbeEvent};
use std::collections::HashMap;
use std::net::IpAddr;
use std::time::{Duration, Instant};
use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;

pub struct Monitor {
    pub events: mpsc::Sender<ProbeEvent>,
    pub status: watch::Receiver<NetworkStatus>,
}

/// Starts the monitor task for `dest`; it ends when `stop` is cancelled or
/// every event sender is gone.
pub fn spawn(cfg: LinkConfig, dest: IpAddr, stop: CancellationToken) -> Monitor {
    let (tx, mut rx) = mpsc::channel::<ProbeEvent>(4096);
    let (status_tx, status_rx) = watch::channel(NetworkStatus::default());
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
            if let Some(link) = links.get(&dest) {
                status_tx.send_replace(link.snapshot(Instant::now()));
            }
        }
    });
    Monitor {
        events: tx,
        status: status_rx,
    }
}
