//! Prometheus metrics: per-task counters and latency histograms recorded
//! where results are produced, gauges sampled every second from the
//! manager, the network monitor, the offload stack and the probe, and the
//! cloud service's request metrics ([`Metered`]). Served by the admin
//! listener (`crate::admin`) at `GET /metrics`. Names follow Prometheus
//! conventions: `edge_` or `cloud_` prefix, base units (seconds, bytes,
//! ratios), counters end in `_total`, labels from small fixed sets.

use agent_core::{
    NetworkStatus, ProbeEvent, ProbeEventKind, Reason, SampleSource, TaskError, TaskResult,
    TaskType, Transport,
};
use agent_net::{BreakerState, FailoverStats, StackHealth};
use agent_probe::{EbpfProbe, EbpfStats, ProbePart};
use metrics::Unit;
use metrics::{counter, describe_counter, describe_gauge, describe_histogram, gauge, histogram};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use std::sync::atomic::Ordering;
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

/// Which side this process is: names its metrics (`edge_`, `cloud_`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    Edge,
    Cloud,
}

impl Role {
    pub fn prefix(self) -> &'static str {
        match self {
            Role::Edge => "edge_",
            Role::Cloud => "cloud_",
        }
    }
}

/// Installs the process's recorder once and returns its handle (a second
/// call, e.g. the demo's edge after its cloud, shares the first one).
pub fn install() -> anyhow::Result<PrometheusHandle> {
    static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();
    if let Some(h) = HANDLE.get() {
        return Ok(h.clone());
    }
    let handle = PrometheusBuilder::new()
        .set_buckets_for_metric(
            Matcher::Suffix("_seconds".into()),
            &[
                0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0,
            ],
        )?
        .set_buckets_for_metric(
            Matcher::Suffix("_batch_size".into()),
            &[1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0],
        )?
        .set_buckets_for_metric(
            Matcher::Full("edge_prediction_error_ratio".into()),
            &[0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 5.0],
        )?
        .install_recorder()?;
    Ok(HANDLE.get_or_init(|| handle).clone())
}

/// HELP text (and units) of every metric of `role`: `promtool check
/// metrics` wants one for each family.
pub fn describe(role: Role) {
    // The families both sides record (model updates, batching).
    let p = role.prefix();
    describe_gauge!(
        format!("{p}model_info"),
        "1 for the model version serving each task type now (0 for versions swapped out)."
    );
    describe_gauge!(
        format!("{p}model_generation"),
        "Generation of the serving engines: how many model updates were swapped in."
    );
    describe_counter!(
        format!("{p}model_updates_total"),
        "Model update manifests seen, by outcome (applied or why refused)."
    );
    describe_histogram!(
        format!("{p}batch_size"),
        "Tasks per inference batch, by task type."
    );
    match role {
        Role::Edge => {
            describe_edge();
            // Counters exist from the start at 0, so rate() and the alerts
            // see them before the first event.
            for name in [
                "edge_offload_fallbacks_total",
                "edge_offload_rescues_total",
                "edge_offload_rate_limited_total",
                "edge_tasks_moved_from_queue_total",
            ] {
                counter!(name).increment(0);
            }
            for reason in ["invalid_input", "unsupported", "overloaded", "unavailable"] {
                counter!("edge_tasks_rejected_total", "reason" => reason).increment(0);
            }
            for path in ["local", "cloud"] {
                counter!("edge_hedged_tasks_total", "answered_by" => path).increment(0);
            }
            // 0 without a passive probe too: nothing was dropped.
            for stage in ["kernel", "channel"] {
                counter!("edge_probe_events_dropped_total", "stage" => stage).increment(0);
            }
        }
        Role::Cloud => {
            describe_cloud();
            for reason in REFUSALS {
                counter!("cloud_admission_refusals_total", "reason" => reason).increment(0);
            }
        }
    }
}

/// The reasons the cloud refuses a request before inference.
const REFUSALS: [&str; 5] = [
    "overloaded",
    "invalid_input",
    "unsupported",
    "deadline",
    "unavailable",
];

fn describe_edge() {
    describe_counter!(
        "edge_tasks_total",
        "Tasks finished, by where they ran (path: local, cloud, none), transport, task type \
         and outcome (ok or the error kind)."
    );
    describe_histogram!(
        "edge_task_latency_seconds",
        Unit::Seconds,
        "Acceptance to result of the tasks that succeeded, by path and task type."
    );
    describe_histogram!(
        "edge_queue_wait_seconds",
        Unit::Seconds,
        "Time a task waited in the local queue before a worker took it, by task type."
    );
    describe_counter!(
        "edge_inline_runs_total",
        "Local tasks run on the thread that accepted them (an idle edge, a model estimated \
         under inline_max_ms), by task type."
    );
    describe_counter!(
        "edge_decisions_total",
        "Decisions by policy, chosen path and coarse reason (cheaper, deadline, unreachable, \
         no_estimate, no_local_model, threshold, hysteresis, policy)."
    );
    describe_counter!(
        "edge_hedged_tasks_total",
        "Tasks run on both paths, by the path that answered."
    );
    describe_histogram!(
        "edge_prediction_error_ratio",
        "|predicted - actual| / actual latency of the path that answered."
    );
    describe_counter!(
        "edge_audit_lines_dropped_total",
        "Decision audit log lines dropped because the writer fell behind."
    );
    describe_counter!(
        "edge_tasks_rejected_total",
        "Tasks refused at submission, by reason."
    );
    describe_counter!(
        "edge_offload_fallbacks_total",
        "Offloads that failed and ran locally instead."
    );
    describe_counter!(
        "edge_offload_rate_limited_total",
        "Offloads not sent because the rate limit towards the cloud was reached."
    );
    describe_counter!(
        "edge_tasks_moved_from_queue_total",
        "Tasks queued locally that the queue made late, offloaded instead."
    );
    describe_counter!(
        "edge_offload_rescues_total",
        "Offloads given up on so that the task could still run locally in time."
    );
    describe_counter!(
        "edge_store_held_total",
        "Tasks held in the store and forward database."
    );
    describe_counter!(
        "edge_store_forwarded_total",
        "Held tasks forwarded to the cloud."
    );
    describe_gauge!("edge_store_pending_tasks", "Tasks held in the store now.");
    describe_gauge!(
        "edge_store_pending_bytes",
        Unit::Bytes,
        "Payload bytes held in the store now."
    );
    describe_gauge!("edge_store_results", "Results kept in the store now.");
    describe_gauge!(
        "edge_local_queue_length",
        "Tasks waiting in the local queue."
    );
    describe_gauge!(
        "edge_local_queue_capacity",
        "Tasks the local queue holds at most (edge.queue_capacity)."
    );
    describe_gauge!(
        "edge_cloud_reachable",
        "1 while the cloud answers the probes (a fresh RTT sample), else 0."
    );
    describe_gauge!(
        "edge_rtt_srtt_seconds",
        Unit::Seconds,
        "Smoothed RTT to the cloud (RFC 6298) from the reporting source."
    );
    describe_gauge!(
        "edge_rtt_p99_seconds",
        Unit::Seconds,
        "99th percentile of the RTT window."
    );
    describe_gauge!(
        "edge_jitter_stddev_seconds",
        Unit::Seconds,
        "Standard deviation of the RTT window."
    );
    describe_gauge!(
        "edge_jitter_rfc3550_seconds",
        Unit::Seconds,
        "RFC 3550 interarrival jitter of the RTT samples."
    );
    describe_gauge!(
        "edge_loss_ratio",
        "Loss towards the cloud: failed probes, or retransmits over segments."
    );
    describe_gauge!(
        "edge_bandwidth_bytes_per_second",
        "Throughput towards the cloud measured from offload transfers (the configured \
         default until the first one)."
    );
    describe_gauge!(
        "edge_endpoint_reachable",
        "1 while the offload endpoint's host answers the probes, else 0."
    );
    describe_gauge!(
        "edge_endpoint_rtt_srtt_seconds",
        Unit::Seconds,
        "Smoothed RTT to the offload endpoint's host."
    );
    describe_gauge!(
        "edge_endpoint_jitter_stddev_seconds",
        Unit::Seconds,
        "Standard deviation of the RTT window of the offload endpoint's host."
    );
    describe_counter!(
        "edge_split_heads_total",
        "Split offloads whose head ran on the edge and whose features were sent, by task \
         type and split point."
    );
    describe_counter!(
        "edge_endpoint_silences_total",
        "Times an endpoint went silent: an offload overdue (twice its predicted p95) with \
         nothing heard from the endpoint since it was sent; new tasks stay off it until \
         something is heard, and the overdue ones run elsewhere."
    );
    describe_counter!(
        "edge_endpoint_reroutes_total",
        "Offloads given up on at an endpoint that had not answered in twice its predicted \
         time, and sent to another, by the endpoint given up on."
    );
    describe_counter!(
        "edge_endpoint_offloads_total",
        "Offloads sent to each endpoint, by outcome (ok: answered with a result)."
    );
    describe_gauge!(
        "edge_rtt_source",
        "1 for the probe source the network figures come from, 0 for the others."
    );
    describe_gauge!(
        "edge_probe_part_up",
        "1 per attached part of the eBPF probe, 0 when it did not attach."
    );
    describe_counter!(
        "edge_probe_samples_total",
        "Events into the network monitor, by source and kind."
    );
    describe_counter!(
        "edge_probe_events_dropped_total",
        "eBPF probe events lost: stage kernel (ring buffer full) or channel (reader behind)."
    );
    describe_gauge!(
        "edge_breaker_state",
        "Circuit breaker per transport: 0 closed, 1 half-open, 2 open."
    );
    describe_gauge!(
        "edge_offload_transport_active",
        "1 for the transport offloads take now (QUIC, or gRPC after a failover)."
    );
    describe_counter!(
        "edge_failover_switches_total",
        "Switches between QUIC and gRPC, by the transport switched to."
    );
}

fn describe_cloud() {
    describe_counter!(
        "cloud_requests_total",
        "Requests answered, by transport, task type and outcome (ok or the error kind)."
    );
    describe_histogram!(
        "cloud_inference_duration_seconds",
        Unit::Seconds,
        "Model inference time of the requests that succeeded, by task type."
    );
    describe_histogram!(
        "cloud_queue_wait_seconds",
        Unit::Seconds,
        "Time a request waited for an inference slot, by task type."
    );
    describe_histogram!(
        "cloud_request_duration_seconds",
        Unit::Seconds,
        "Arrival to answer of every request, by transport."
    );
    describe_counter!(
        "cloud_admission_refusals_total",
        "Requests refused before inference, by reason (overloaded, invalid_input, \
         unsupported, deadline, unavailable)."
    );
    describe_gauge!(
        "cloud_pending_requests",
        "Requests waiting for an inference slot now."
    );
    describe_gauge!(
        "cloud_pending_capacity",
        "Requests allowed to wait for an inference slot (cloud.max_pending)."
    );
    describe_gauge!("cloud_inflight_requests", "Requests being handled now.");
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

/// A task queued locally, moved to the cloud because the queue made it late.
pub fn record_moved_from_queue() {
    counter!("edge_tasks_moved_from_queue_total").increment(1);
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

/// The decision's reason, coarsely: a small fixed set of label values.
fn reason_label(r: Reason) -> &'static str {
    match r {
        Reason::FixedByPolicy => "policy",
        Reason::LocalCheaper | Reason::OffloadCheaper => "cheaper",
        Reason::OnlyLocalMeetsDeadline
        | Reason::OnlyOffloadMeetsDeadline
        | Reason::LocalLikelierInTime
        | Reason::OffloadLikelierInTime => "deadline",
        Reason::CloudUnreachable => "unreachable",
        Reason::NoNetworkEstimate => "no_estimate",
        Reason::NoLocalModel => "no_local_model",
        Reason::ThresholdLinkGoodQueueLong | Reason::ThresholdNotMet => "threshold",
        Reason::KeptPrevious => "hysteresis",
        Reason::MovedFromLateQueue => "moved",
    }
}

/// Records one finished task of `task_type` (a no-op when no recorder is
/// installed).
pub fn record_result(r: &TaskResult, task_type: TaskType) {
    let path = r.processed_by.map_or("none", |p| p.as_str());
    let transport = r.transport.map_or("none", |t| t.as_str());
    let task_type = task_type.as_str();
    let outcome = match &r.outcome {
        Ok(_) => "ok",
        Err(e) => error_label(e),
    };
    counter!(
        "edge_tasks_total",
        "path" => path,
        "transport" => transport,
        "task_type" => task_type,
        "outcome" => outcome
    )
    .increment(1);
    if r.fell_back {
        counter!("edge_offload_fallbacks_total").increment(1);
    }
    if r.outcome.is_ok() {
        histogram!("edge_task_latency_seconds", "path" => path, "task_type" => task_type)
            .record(r.duration.as_secs_f64());
    }
    if let Some(d) = &r.decision {
        counter!(
            "edge_decisions_total",
            "policy" => d.policy,
            "path" => d.path.as_str(),
            "reason" => reason_label(d.reason)
        )
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

/// A local worker took a task that waited `wait` in the queue.
pub fn record_inline_run(task_type: TaskType) {
    counter!("edge_inline_runs_total", "task_type" => task_type.as_str()).increment(1);
}

pub fn record_queue_wait(task_type: TaskType, wait: Duration) {
    histogram!("edge_queue_wait_seconds", "task_type" => task_type.as_str())
        .record(wait.as_secs_f64());
}

pub fn record_rejection(e: &TaskError) {
    counter!("edge_tasks_rejected_total", "reason" => error_label(e)).increment(1);
}

pub fn record_queue_len(n: usize, capacity: usize) {
    gauge!("edge_local_queue_length").set(n as f64);
    gauge!("edge_local_queue_capacity").set(capacity as f64);
}

pub fn record_network(s: &NetworkStatus) {
    gauge!("edge_cloud_reachable").set(if s.reachable { 1.0 } else { 0.0 });
    gauge!("edge_rtt_srtt_seconds").set(s.rtt.srtt_ms / 1e3);
    gauge!("edge_rtt_p99_seconds").set(s.rtt.p99_ms / 1e3);
    gauge!("edge_jitter_stddev_seconds").set(s.rtt.stddev_ms / 1e3);
    gauge!("edge_jitter_rfc3550_seconds").set(s.rtt.rfc3550_ms / 1e3);
    gauge!("edge_loss_ratio").set(s.loss_rate);
    gauge!("edge_bandwidth_bytes_per_second").set(s.bandwidth_bps / 8.0);
    for src in SampleSource::ALL {
        let v = if s.source == Some(src) { 1.0 } else { 0.0 };
        gauge!("edge_rtt_source", "source" => src.as_str()).set(v);
    }
}

/// Each offload endpoint's network estimate, labelled by its name.
pub fn record_endpoints(statuses: &[(String, NetworkStatus)]) {
    for (name, s) in statuses {
        let l = [("endpoint", name.clone())];
        gauge!("edge_endpoint_reachable", &l).set(if s.reachable { 1.0 } else { 0.0 });
        gauge!("edge_endpoint_rtt_srtt_seconds", &l).set(s.rtt.srtt_ms / 1e3);
        gauge!("edge_endpoint_jitter_stddev_seconds", &l).set(s.rtt.stddev_ms / 1e3);
    }
}

/// An offload given up on at `endpoint` (too late) and sent to another.
/// A split task's head ran here; its features go to the cloud.
pub fn record_split_head(t: agent_core::TaskType, point: &str) {
    counter!(
        "edge_split_heads_total",
        "task_type" => t.as_str(),
        "point" => point.to_string()
    )
    .increment(1);
}

pub fn record_silence(endpoint: &str) {
    counter!("edge_endpoint_silences_total", "endpoint" => endpoint.to_string()).increment(1);
}

pub fn record_reroute(endpoint: &str) {
    counter!("edge_endpoint_reroutes_total", "endpoint" => endpoint.to_string()).increment(1);
}

/// One offload to an endpoint ended: answered (`ok`) or not (`error`).
pub fn record_endpoint_offload(endpoint: &str, ok: bool) {
    counter!(
        "edge_endpoint_offloads_total",
        "endpoint" => endpoint.to_string(),
        "outcome" => if ok { "ok" } else { "error" }
    )
    .increment(1);
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
        ProbeEventKind::TransferUnfinished { .. } => "transfer_unfinished",
    };
    counter!("edge_probe_samples_total", "source" => ev.source.as_str(), "kind" => kind)
        .increment(1);
}

/// Events the eBPF probe lost (counted by the probe; absolute values).
pub fn record_probe_drops(stats: &EbpfStats) {
    counter!("edge_probe_events_dropped_total", "stage" => "kernel").absolute(stats.kernel_drops);
    counter!("edge_probe_events_dropped_total", "stage" => "channel").absolute(stats.channel_drops);
}

/// The offload stack's state: each circuit breaker (0 closed, 1 half-open,
/// 2 open), the transport in use, the failover's switches so far.
pub fn record_offload_health(health: &StackHealth, failover: Option<&FailoverStats>) {
    for (transport, state) in health.breakers(Instant::now()) {
        let v = match state {
            BreakerState::Closed { .. } => 0.0,
            BreakerState::HalfOpen { .. } => 1.0,
            BreakerState::Open { .. } => 2.0,
        };
        gauge!("edge_breaker_state", "transport" => transport).set(v);
    }
    let active = health.active_transport();
    for t in [Transport::Quic, Transport::Grpc] {
        let v = if t == active { 1.0 } else { 0.0 };
        gauge!("edge_offload_transport_active", "transport" => t.as_str()).set(v);
    }
    if let Some(f) = failover {
        counter!("edge_failover_switches_total", "to" => "grpc")
            .absolute(f.to_grpc.load(Ordering::Relaxed));
        counter!("edge_failover_switches_total", "to" => "quic")
            .absolute(f.to_quic.load(Ordering::Relaxed));
    }
}

/// The cloud service's handler with its metrics: requests by transport and
/// outcome, inference and queue-wait histograms by task type, admission
/// refusals, requests in flight.
pub struct Metered<H> {
    inner: Arc<H>,
}

impl<H: agent_net::Handler> Metered<H> {
    pub fn new(inner: Arc<H>) -> Metered<H> {
        Metered { inner }
    }

    async fn measured(
        &self,
        transport: &'static str,
        req: proto::TaskRequest,
    ) -> Result<proto::TaskResponse, TaskError> {
        let task_type =
            agent_net::wire::task_type_from_proto(req.r#type).map_or("unknown", |t| t.as_str());
        let received = Instant::now();
        let _in_flight = InFlight::enter();
        let r = self.inner.handle(req).await;
        let outcome = match &r {
            Ok(resp) => {
                let secs = |nanos: i64| Duration::from_nanos(nanos.max(0) as u64).as_secs_f64();
                histogram!("cloud_inference_duration_seconds", "task_type" => task_type)
                    .record(secs(resp.inference_nano));
                histogram!("cloud_queue_wait_seconds", "task_type" => task_type)
                    .record(secs(resp.queue_nano));
                "ok"
            }
            Err(e) => {
                if REFUSALS.contains(&error_label(e)) {
                    counter!("cloud_admission_refusals_total", "reason" => error_label(e))
                        .increment(1);
                }
                error_label(e)
            }
        };
        counter!(
            "cloud_requests_total",
            "transport" => transport,
            "task_type" => task_type,
            "outcome" => outcome
        )
        .increment(1);
        histogram!("cloud_request_duration_seconds", "transport" => transport)
            .record(received.elapsed().as_secs_f64());
        r
    }
}

#[async_trait::async_trait]
impl<H: agent_net::Handler> agent_net::Handler for Metered<H> {
    async fn handle(&self, req: proto::TaskRequest) -> Result<proto::TaskResponse, TaskError> {
        self.measured("unknown", req).await
    }

    async fn handle_via(
        &self,
        transport: Transport,
        req: proto::TaskRequest,
    ) -> Result<proto::TaskResponse, TaskError> {
        self.measured(transport.as_str(), req).await
    }

    fn max_payload_bytes(&self) -> usize {
        self.inner.max_payload_bytes()
    }
}

/// One request in the cloud's handler, counted in `cloud_inflight_requests`
/// until dropped (also when its client goes away mid-request).
struct InFlight;

impl InFlight {
    fn enter() -> InFlight {
        gauge!("cloud_inflight_requests").increment(1.0);
        InFlight
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        gauge!("cloud_inflight_requests").decrement(1.0);
    }
}

/// Requests waiting for an inference slot in the cloud now.
pub fn record_cloud_pending(n: usize, capacity: usize) {
    gauge!("cloud_pending_requests").set(n as f64);
    gauge!("cloud_pending_capacity").set(capacity as f64);
}
