//! Prometheus metrics: per-task counters and latency histograms recorded
//! where results are produced, gauges the edge samples from the manager and
//! the network monitor, the probe's health (which parts attached, samples
//! per source). Exposed over HTTP at `edge.metrics_listen`.

use agent_core::{NetworkStatus, ProbeEvent, ProbeEventKind, SampleSource, TaskError, TaskResult};
use agent_probe::{EbpfProbe, ProbePart};
use metrics::{counter, gauge, histogram};
use std::net::SocketAddr;

/// Starts the exporter's HTTP listener (`GET /metrics`).
pub fn install(listen: SocketAddr) -> anyhow::Result<()> {
    metrics_exporter_prometheus::PrometheusBuilder::new()
        .with_http_listener(listen)
        .set_buckets_for_metric(
            metrics_exporter_prometheus::Matcher::Suffix("_seconds".into()),
            &[
                0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0,
            ],
        )?
        .set_buckets_for_metric(
            metrics_exporter_prometheus::Matcher::Full("edge_prediction_error_ratio".into()),
            &[0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 5.0],
        )?
        .install()?;
    Ok(())
}

fn error_label(e: &TaskError) -> &'static str {
    match e {
        TaskError::InvalidInput(_) => "invalid_input",
        TaskError::UnsupportedTaskType(_) => "unsupported",
        TaskError::DeadlineExceeded(_) => "deadline",
        TaskError::Overloaded(_) => "overloaded",
        TaskError::Unavailable(_) => "unavailable",
        TaskError::Internal(_) => "internal",
        TaskError::Cancelled(_) => "cancelled",
    }
}

/// An offload given up on so that the task could still run locally in time.
pub fn record_rescue() {
    counter!("edge_offload_rescues_total").increment(1);
}

/// An offload not sent because the rate limit towards the cloud was reached.
pub fn record_rate_limited() {
    counter!("edge_offload_rate_limited_total").increment(1);
}

/// A task held in the store (`held`) or a held task forwarded, with what
/// the store holds now.
pub fn record_store(held: bool, c: crate::store::StoreCounts) {
    if held {
        counter!("edge_store_held_total").increment(1);
    } else {
        counter!("edge_store_forwarded_total").increment(1);
    }
    gauge!("edge_store_pending_tasks").set(c.pending as f64);
    gauge!("edge_store_pending_bytes").set(c.pending_bytes as f64);
    gauge!("edge_store_results").set(c.results as f64);
}

/// Records one finished task (a no-op when no exporter is installed).
pub fn record_result(r: &TaskResult) {
    let path = r.processed_by.map_or("none", |p| p.as_str());
    let transport = r.transport.map_or("none", |t| t.as_str());
    let outcome = match &r.outcome {
        Ok(_) => "ok",
        Err(e) => error_label(e),
    };
    counter!("edge_tasks_total", "path" => path, "transport" => transport, "outcome" => outcome)
        .increment(1);
    if r.fell_back {
        counter!("edge_offload_fallbacks_total").increment(1);
    }
    if r.outcome.is_ok() {
        histogram!("edge_task_latency_seconds", "path" => path).record(r.duration.as_secs_f64());
    }
    if let Some(d) = &r.decision {
        counter!("edge_decisions_total", "policy" => d.policy, "path" => d.path.as_str())
            .increment(1);
        if d.hedge {
            counter!("edge_hedged_tasks_total", "answered_by" => path).increment(1);
        }
        // How far the prediction of the path that answered was off.
        let predicted = match r.processed_by {
            Some(agent_core::ExecPath::Local) => d.local_outlook.map(|o| o.mean_ms),
            Some(agent_core::ExecPath::Cloud) => d.offload_outlook.map(|o| o.mean_ms),
            None => None,
        };
        let actual = r.duration.as_secs_f64() * 1e3;
        if let (Some(p), true) = (predicted, r.outcome.is_ok() && actual > 0.0) {
            histogram!("edge_prediction_error_ratio", "path" => path)
                .record((p - actual).abs() / actual);
        }
    }
}

pub fn record_rejection(e: &TaskError) {
    counter!("edge_tasks_rejected_total", "reason" => error_label(e)).increment(1);
}

pub fn record_queue_len(n: usize) {
    gauge!("edge_local_queue_length").set(n as f64);
}

pub fn record_network(s: &NetworkStatus) {
    gauge!("edge_cloud_reachable").set(if s.reachable { 1.0 } else { 0.0 });
    gauge!("edge_rtt_srtt_seconds").set(s.rtt.srtt_ms / 1e3);
    gauge!("edge_rtt_p99_seconds").set(s.rtt.p99_ms / 1e3);
    gauge!("edge_jitter_stddev_seconds").set(s.rtt.stddev_ms / 1e3);
    gauge!("edge_jitter_rfc3550_seconds").set(s.rtt.rfc3550_ms / 1e3);
    gauge!("edge_loss_ratio").set(s.loss_rate);
    gauge!("edge_bandwidth_bits_per_second").set(s.bandwidth_bps);
    for src in SampleSource::ALL {
        let v = if s.source == Some(src) { 1.0 } else { 0.0 };
        gauge!("edge_rtt_source", "source" => src.as_str()).set(v);
    }
}

/// Which parts of the passive probe are attached: `edge_probe_part_up` is
/// 1 or 0 per part (all 0 without a probe; why is in the log).
pub fn record_probe_parts(probe: Option<&EbpfProbe>) {
    for part in ProbePart::ALL {
        let up = probe.is_some_and(|p| p.is_attached(part));
        gauge!("edge_probe_part_up", "part" => part.as_str()).set(if up { 1.0 } else { 0.0 });
    }
}

/// Counts one event the monitor received, by source and kind.
pub fn record_probe_event(ev: &ProbeEvent) {
    let kind = match ev.kind {
        ProbeEventKind::Rtt(_) => "rtt",
        ProbeEventKind::ProbeLost => "lost",
        ProbeEventKind::Retransmits(_) => "retransmits",
        ProbeEventKind::SegmentsSent(_) => "segments_sent",
        ProbeEventKind::Transfer { .. } => "transfer",
    };
    counter!("edge_probe_samples_total", "source" => ev.source.as_str(), "kind" => kind)
        .increment(1);
}
