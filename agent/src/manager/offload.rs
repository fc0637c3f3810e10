//! Offloads: a task's way to an endpoint and back (retries, reroutes,
//! hedged legs, fallback to a local run), and the held tasks forwarded
//! once the cloud answers again.

use super::*;

/// Sends the held tasks, oldest first, whenever the cloud answers; stops
/// at the first transport failure and tries again a second later.
pub(super) async fn forward_loop(inner: Arc<Inner>) {
    let Some(store) = inner.store.clone() else {
        return;
    };
    if inner.endpoints.is_empty() {
        return;
    }
    loop {
        tokio::select! {
            _ = inner.intake_closed.cancelled() => return,
            _ = inner.forward_ready.notified() => {}
            _ = tokio::time::sleep(FORWARD_RETRY) => {}
        }
        let pending = match store.pending() {
            Ok(p) => p,
            Err(e) => {
                tracing::warn!(error = %e, "task store unreadable");
                continue;
            }
        };
        'batches: for batch in pending.chunks(FORWARD_BATCH) {
            let mut set = tokio::task::JoinSet::new();
            for req in batch.iter().cloned() {
                let t = agent_net::wire::task_type_from_proto(req.r#type);
                let now = Instant::now();
                let ep = (0..inner.endpoints.len())
                    .find(|&i| t.is_some_and(|t| inner.endpoints[i].usable(t, now)))
                    .unwrap_or(0);
                let off = inner.endpoints[ep].parts.offloader.clone();
                set.spawn(async move {
                    let r = off
                        .offload(&OffloadRequest {
                            request: req.clone(),
                            deadline: None,
                        })
                        .await;
                    (req.id, r)
                });
            }
            let mut failed = false;
            while let Some(done) = set.join_next().await {
                let Ok((id, r)) = done else { continue };
                match r {
                    Ok(reply) => inner.deliver_held(&id, &reply.response, Some(reply.transport)),
                    Err(OffloadError::Rejected(e)) => {
                        inner.deliver_held(&id, &error_response(&id, &e), None)
                    }
                    Err(e) => {
                        tracing::debug!(task = %id, error = %e, "cloud still away; held");
                        failed = true;
                    }
                }
            }
            if failed || inner.intake_closed.is_cancelled() {
                break 'batches;
            }
        }
    }
}

/// Counts an offload in flight towards an endpoint while it lives.
struct InFlight<'a>(&'a AtomicU64);

impl<'a> InFlight<'a> {
    fn enter(counter: &'a AtomicU64) -> Self {
        counter.fetch_add(1, Ordering::Relaxed);
        InFlight(counter)
    }
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// An upload the endpoint's [`UplinkQueue`] waits an answer for, until
/// dropped (answered, failed, cancelled or given up on).
struct PendingUpload<'a> {
    uplink: &'a Mutex<UplinkQueue>,
    id: UploadId,
    /// Its answer came back over the link.
    delivered: bool,
}

impl Drop for PendingUpload<'_> {
    fn drop(&mut self) {
        let mut uplink = self.uplink.lock().expect("uplink lock");
        if self.delivered {
            uplink.delivered(self.id);
        } else {
            uplink.answered(self.id);
        }
    }
}

/// The least time an endpoint gets before a task is sent elsewhere.
const REROUTE_MIN: Duration = Duration::from_millis(20);

/// Offloads a task until it has its result (or a local re-run); a task
/// given up on at one endpoint goes to another.
pub(super) async fn run_offload(inner: Arc<Inner>, job: Job) {
    let mut job = job;
    while let Some(next) = offload_once(inner.clone(), job).await {
        job = next;
    }
}

/// One offload attempt at the job's endpoint; `Some(job)` when it is to be
/// sent to another endpoint instead.
async fn offload_once(inner: Arc<Inner>, mut job: Job) -> Option<Job> {
    let index = job.decision.as_ref().map_or(0, |d| d.endpoint);
    let Some(endpoint) = inner.endpoints.get(index) else {
        let e = OffloadError::Transport {
            transport: "none",
            message: "no offload endpoint configured".into(),
        };
        inner.fall_back_or_fail(job, e, None);
        return None;
    };
    let offloader = endpoint.parts.offloader.clone();
    let _permit = inner.offload_permits.acquire().await;
    if job.reply.is_closed() {
        inner.finish_cancelled(job);
        return None;
    }
    let mut request = task_to_request(&job.task, Instant::now(), SystemTime::now());
    if let Some(f) = &job.features {
        request.payload = Vec::new();
        request.features = Some(f.clone());
    }
    if endpoint.parts.peer {
        request.context.insert(PEER_HOP.into(), "1".into());
    }
    let req = OffloadRequest {
        request,
        deadline: job.task.deadline,
    };
    let in_flight = InFlight::enter(&endpoint.in_flight);
    // A cloud that has not answered while a local run could still meet the
    // deadline is given up on then (a dead link or peer whose failure has
    // not surfaced yet, a queue at the cloud): the task runs locally.
    // A task without a deadline waits a few times its predicted offload
    // time (at least NO_DEADLINE_PATIENCE) before it runs locally instead.
    let can_run_here = inner.local_specs.contains_key(&job.task.task_type);
    let predicted = job
        .decision
        .as_ref()
        .and_then(|d| d.offload.as_ref())
        .map_or(Duration::ZERO, |o| {
            Duration::from_secs_f64(o.total_ms.clamp(0.0, 3.6e6) / 1e3)
        });
    let now = Instant::now();
    let rescue_at = match (&job.reply, job.task.deadline) {
        // Only once the cloud is clearly late (twice its predicted time):
        // a deadline that leaves less room keeps the offload to the end.
        (Reply::One(_), Some(deadline)) if can_run_here => {
            let margin = inner.local_estimate(job.task.task_type) * 2 + RESCUE_SLACK;
            deadline
                .checked_sub(margin)
                .filter(|at| *at >= now + predicted * 2)
        }
        (Reply::One(_), None) if can_run_here => {
            Some(now + (predicted * 4).max(NO_DEADLINE_PATIENCE))
        }
        _ => None,
    };
    let rescue = async move {
        match rescue_at {
            Some(at) => tokio::time::sleep_until(at.into()).await,
            None => std::future::pending().await,
        }
    };
    tokio::pin!(rescue);
    let mut rescue_armed = true;
    // Overdue with nothing heard from the endpoint since it was sent: the
    // endpoint is silent (a dead link, long before its estimate shows it),
    // new tasks stay off it, and this one runs elsewhere.
    let sent_at = now;
    // The p95 the decision predicted (its mean where there is no
    // distribution).
    let predicted_p95 = job
        .decision
        .as_ref()
        .and_then(|d| d.offload_outlook)
        .map_or(predicted, |o| {
            Duration::from_secs_f64(o.p95_ms.clamp(0.0, 3.6e6) / 1e3).max(predicted)
        });
    let overdue_at = now + (predicted_p95 * 2).max(OVERDUE_MIN);
    let overdue = tokio::time::sleep_until(overdue_at.into());
    tokio::pin!(overdue);
    let mut overdue_armed = true;
    // With other endpoints, one that has not answered by twice its
    // predicted time (a dead cloud whose failure has not surfaced yet) is
    // given up on for another that can still answer in time, once.
    let mut reroute_at =
        (matches!(job.reply, Reply::One(_)) && !job.rerouted && inner.endpoints.len() > 1)
            .then(|| now + (predicted * 2).max(REROUTE_MIN));
    // The wait behind our earlier uploads is the queue's, not the link's
    // speed: it is taken out of the transfer the bandwidth is measured from.
    // The answer is due by the predicted p95, less the split's head, which
    // has run by now: on a jittery link half the answers come after the
    // mean, and counted as overdue from there, the tail the RTT
    // distribution already prices was added again to every later upload.
    let answer_after = job
        .decision
        .as_ref()
        .and_then(|d| d.offload.as_ref())
        .map_or(predicted_p95, |o| {
            predicted_p95.saturating_sub(Duration::from_secs_f64(o.head_ms.clamp(0.0, 3.6e6) / 1e3))
        });
    let upload_bytes = prost::Message::encoded_len(&req.request);
    let (uplink_wait, mut upload) = {
        let bandwidth = endpoint.parts.net.borrow().bandwidth_bps;
        let (wait, id) = endpoint.uplink.lock().expect("uplink lock").send(
            now,
            upload_bytes,
            bandwidth,
            answer_after,
        );
        (
            wait,
            PendingUpload {
                uplink: &endpoint.uplink,
                id,
                delivered: false,
            },
        )
    };
    let offload = offloader.offload(&req);
    tokio::pin!(offload);
    // A submitter that goes away cancels the offload: dropping it drops
    // the stream, and the cloud drops the work.
    let outcome = loop {
        let reroute = async move {
            match reroute_at {
                Some(at) => tokio::time::sleep_until(at.into()).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            r = &mut offload => break Some(r),
            _ = job.reply.closed() => break None,
            _ = &mut rescue, if rescue_armed => {
                rescue_armed = false;
                tracing::debug!(task = %job.task.id, "cloud too slow; running locally");
                inner.stats.rescued.fetch_add(1, Ordering::Relaxed);
                crate::metrics::record_rescue();
                // A task with a deadline keeps its offload: the answer may
                // still come first (one retransmission late, say), and
                // giving it up would throw that chance away.
                if job.task.deadline.is_some() {
                    inner.run_beside(&mut job);
                    continue;
                }
                report_unfinished(&inner, endpoint, &job, sent_at, uplink_wait, upload_bytes);
                inner.fall_back_or_fail(job, OffloadError::Timeout, None);
                return None;
            }
            _ = &mut overdue, if overdue_armed => {
                overdue_armed = false;
                let heard_at = endpoint.parts.net.borrow().heard_at;
                let silent = endpoint.silence.lock().expect("silence").overdue(sent_at, heard_at);
                if !silent {
                    continue;
                }
                tracing::debug!(task = %job.task.id, endpoint = %endpoint.parts.name, "endpoint silent");
                crate::metrics::record_silence(&endpoint.parts.name);
                if !matches!(job.reply, Reply::One(_)) {
                    continue;
                }
                if !job.rerouted {
                    if let Some(other) = inner.reroute_target(&job, index, Instant::now()) {
                        crate::metrics::record_reroute(&endpoint.parts.name);
                        job.reroute_to(other);
                        return Some(job);
                    }
                }
                if can_run_here {
                    inner.stats.rescued.fetch_add(1, Ordering::Relaxed);
                    crate::metrics::record_rescue();
                    inner.fall_back_or_fail(job, OffloadError::Timeout, None);
                    return None;
                }
            }
            _ = reroute => {
                reroute_at = None;
                if let Some(other) = inner.reroute_target(&job, index, Instant::now()) {
                    tracing::debug!(
                        task = %job.task.id,
                        from = %endpoint.parts.name,
                        to = %inner.endpoints[other].parts.name,
                        "endpoint too slow; sending the task to another"
                    );
                    crate::metrics::record_reroute(&endpoint.parts.name);
                    job.reroute_to(other);
                    return Some(job);
                }
            }
        }
    };
    let Some(outcome) = outcome else {
        inner.finish_cancelled(job);
        return None;
    };
    drop(in_flight);
    if outcome.is_ok() {
        upload.delivered = true;
        endpoint
            .silence
            .lock()
            .expect("silence")
            .answered(Instant::now());
    }
    crate::metrics::record_endpoint_offload(
        &endpoint.parts.name,
        matches!(&outcome, Ok(r) if r.response.success),
    );
    match outcome {
        Ok(reply) if reply.response.success => {
            let r = &reply.response;
            let server = Duration::from_nanos(r.duration_nano.max(0) as u64);
            let split = job
                .features
                .as_ref()
                .and(job.decision.as_ref())
                .and_then(|d| d.split);
            match split {
                Some(i) => endpoint.tail_times.lock().expect("tail times").observe_at(
                    (job.task.task_type, i),
                    server,
                    Instant::now(),
                ),
                None => endpoint
                    .cloud_times
                    .lock()
                    .expect("cloud times")
                    .observe_at(job.task.task_type, server, Instant::now()),
            }
            // The link's own round trip, without the queue our uploads
            // build in its buffer: that queue is part of the uploads' time
            // (taking it out with the smoothed RTT measured a flooded
            // uplink as fast, and flooded it further).
            let base_rtt = {
                let net = endpoint.parts.net.borrow();
                let ms = net
                    .rtt_sorted_ms
                    .first()
                    .copied()
                    .unwrap_or(net.rtt.srtt_ms);
                Duration::from_secs_f64(ms.max(0.0) / 1e3)
            };
            let _ = inner.probe_events.try_send(ProbeEvent {
                dest: endpoint.parts.dest,
                source: SampleSource::OffloadTransfer,
                at: Instant::now(),
                kind: ProbeEventKind::Transfer {
                    bytes: (reply.bytes_up + reply.bytes_down) as u64,
                    elapsed: reply
                        .network_time()
                        .saturating_sub(base_rtt)
                        .saturating_sub(uplink_wait),
                },
            });
            if let Some(now) = reply.packets {
                let (sent, lost) =
                    PacketCounts::advance(&mut endpoint.packets.lock().expect("packets"), now);
                let event = |kind| ProbeEvent {
                    dest: endpoint.parts.dest,
                    source: SampleSource::OffloadTransfer,
                    at: Instant::now(),
                    kind,
                };
                let clamp = |n: u64| u32::try_from(n).unwrap_or(u32::MAX);
                // The packets sent first, even none: the link estimate
                // takes the loss after it as the same answer's.
                if sent > 0 || lost > 0 {
                    let _ = inner
                        .probe_events
                        .try_send(event(ProbeEventKind::SegmentsSent(clamp(sent))));
                }
                if lost > 0 {
                    let _ = inner
                        .probe_events
                        .try_send(event(ProbeEventKind::Retransmits(clamp(lost))));
                }
            }
            let output = output_from_response(r);
            inner.finish_timed(
                job,
                Ok(output),
                Some(ExecPath::Cloud),
                Some(reply.transport),
                timing_from_response(r),
            );
        }
        Ok(reply) => {
            let e = error_from_kind(
                reply.response.error_kind,
                reply.response.error_message.clone(),
            );
            inner.fall_back_or_fail(job, OffloadError::Rejected(e), Some(reply.transport));
        }
        Err(e) => {
            tracing::debug!(task = %job.task.id, error = %e, "offload failed");
            // A failed endpoint: another one first, where one can still
            // answer in time.
            let unreachable = matches!(
                e,
                OffloadError::Connect { .. }
                    | OffloadError::Transport { .. }
                    | OffloadError::CircuitOpen { .. }
            );
            if matches!(e, OffloadError::Timeout) {
                report_unfinished(&inner, endpoint, &job, sent_at, uplink_wait, upload_bytes);
            }
            if unreachable && !job.rerouted && matches!(job.reply, Reply::One(_)) {
                if let Some(other) = inner.reroute_target(&job, index, Instant::now()) {
                    crate::metrics::record_reroute(&endpoint.parts.name);
                    job.reroute_to(other);
                    return Some(job);
                }
            }
            inner.fall_back_or_fail(job, e, None);
        }
    }
    None
}

/// An offload given up on (timed out) while the endpoint was still heard
/// from after it was sent: a slow link, not a dead one. Its upload had
/// been on the wire at least for its time in flight, less its wait behind
/// our earlier uploads and what the rest of the round trip was predicted
/// to take. Without this, uploads that never finish leave the bandwidth
/// estimate where the last finished one put it, and a collapsed uplink
/// looks as fast as before.
fn report_unfinished(
    inner: &Inner,
    endpoint: &Endpoint,
    job: &Job,
    sent_at: Instant,
    uplink_wait: Duration,
    bytes: usize,
) {
    let heard_since = endpoint
        .parts
        .net
        .borrow()
        .heard_at
        .is_some_and(|h| h > sent_at);
    if !heard_since {
        return;
    }
    let rest_ms = job
        .decision
        .as_ref()
        .and_then(|d| d.offload.as_ref())
        .map_or(0.0, |o| o.rtt_ms + o.cloud_inference_ms + o.download_ms);
    let now = Instant::now();
    let at_least = now
        .saturating_duration_since(sent_at)
        .saturating_sub(uplink_wait)
        .saturating_sub(Duration::from_secs_f64(rest_ms.clamp(0.0, 3.6e6) / 1e3));
    if at_least.is_zero() {
        return;
    }
    let _ = inner.probe_events.try_send(ProbeEvent {
        dest: endpoint.parts.dest,
        source: SampleSource::OffloadTransfer,
        at: now,
        kind: ProbeEventKind::TransferUnfinished {
            bytes: bytes as u64,
            at_least,
        },
    });
}
