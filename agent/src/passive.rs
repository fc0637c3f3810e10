//! Glue between the eBPF probe and the monitor: load and attach what can be
//! attached (saying once, clearly, what could not and why), then forward
//! kernel samples to the estimators.

use crate::config::ProbeConfig;
use agent_core::ProbeEvent;
use agent_probe::{EbpfProbe, EbpfProbeConfig};
use std::net::IpAddr;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// Loads and attaches the probe for `endpoints`. Needs no async runtime, so
/// the `edge` command can do it (and drop privileges) before starting one.
/// `None` means active probing only; the reason has been logged.
pub fn load(cfg: &ProbeConfig, endpoints: &[IpAddr]) -> Option<EbpfProbe> {
    if !cfg.passive {
        tracing::info!("passive probing disabled by configuration; using the active probe");
        return None;
    }
    let probe_cfg = EbpfProbeConfig {
        object: cfg.ebpf_object.clone(),
        cgroup: cfg.cgroup.clone(),
        tc_interface: cfg.tc_interface.clone(),
        endpoints: endpoints.to_vec(),
        ..EbpfProbeConfig::default()
    };
    match EbpfProbe::load(&probe_cfg) {
        Ok(p) => {
            // Each part that failed has been logged once, with its reason.
            let not_attached: Vec<&str> = p
                .failed_parts()
                .iter()
                .map(|(part, _)| part.as_str())
                .collect();
            tracing::info!(attached = ?p.attachments(), ?not_attached, "passive eBPF probe attached");
            Some(p)
        }
        Err(e) => {
            tracing::warn!("passive eBPF probing unavailable, falling back to active probing: {e}");
            None
        }
    }
}

/// Starts reading the probe's ring buffer and forwards every event to the
/// monitor until either side goes away or `stop` is cancelled.
pub fn forward(
    probe: &mut EbpfProbe,
    monitor: mpsc::Sender<ProbeEvent>,
    stop: CancellationToken,
) -> Option<JoinHandle<()>> {
    let mut rx = match probe.start_reader() {
        Ok(rx) => rx,
        Err(e) => {
            tracing::warn!("passive eBPF probing unavailable, falling back to active probing: {e}");
            return None;
        }
    };
    Some(tokio::spawn(async move {
        let relay = async {
            while let Some(ev) = rx.recv().await {
                if monitor.send(ev).await.is_err() {
                    break;
                }
            }
        };
        stop.run_until_cancelled(relay).await;
    }))
}
