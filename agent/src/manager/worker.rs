//! The local workers: each takes the next batch from the queue, runs it
//! on an engine of its own and ends its tasks; a split task's head runs
//! here too, its tail is offloaded.

use super::*;

/// Moves the calling worker thread into the inference cgroup, if there is
/// one, and lets the CPU meter read its clock.
pub(super) fn join_inference_cgroup(inner: &Inner) -> anyhow::Result<()> {
    let Some(cg) = &inner.cfg.inference_cgroup else {
        return Ok(());
    };
    cg.join_this_thread()?;
    let clock = crate::cpu::this_thread_clock().ok_or_else(|| {
        anyhow::anyhow!("reading a worker thread's CPU clock for the inference cgroup's meter")
    })?;
    let mut state = inner.state.lock().expect("state lock");
    if let Some(clocks) = &mut state.worker_clocks {
        clocks.push(clock);
    }
    Ok(())
}

/// Runs the models on this worker's thread (see [`crate::infer::Engine::warm_up`]),
/// holding an engine only for that long.
pub(super) fn warm_worker(inner: &Inner) -> anyhow::Result<()> {
    match inner.engines.try_checkout() {
        Some(mut engine) => engine.engine().warm_up(),
        None => Ok(()),
    }
}

pub(super) fn worker_loop(inner: Arc<Inner>, index: usize) {
    while let Some(jobs) = next_batch(&inner, index) {
        let now = Instant::now();
        // Tasks whose submitter left or whose deadline passed while queued
        // end here; the others run together.
        let mut runnable = Vec::with_capacity(jobs.len());
        for job in jobs {
            if !job.fell_back {
                // Acceptance to a worker: the wait in the local queue (a task
                // that fell back also spent its failed offload).
                crate::metrics::record_queue_wait(job.task.task_type, now - job.task.created_at);
            }
            if job.reply.is_closed() {
                let e = TaskError::Cancelled("submitter went away".into());
                inner.finish_timed(job, Err(e), None, None, None);
            } else if job.task.deadline.is_some_and(|d| d <= now) {
                inner.finish_expired(job);
            } else {
                runnable.push(job);
            }
        }
        if runnable.is_empty() {
            inner.state.lock().expect("state lock").worker_done(index);
            continue;
        }
        if let Some(point) = runnable[0].head_to_run() {
            let job = runnable.pop().expect("a runnable job");
            run_head(&inner, job, point);
            inner.state.lock().expect("state lock").worker_done(index);
            continue;
        }
        let task_type = runnable[0].task.task_type;
        let payloads: Vec<&[u8]> = runnable.iter().map(|j| j.task.payload.as_slice()).collect();
        // As many engines as workers: one is always free for this worker,
        // from the newest generation of models.
        let results = match inner.engines.checkout() {
            Some(mut engine) => {
                crate::infer::process_batch_guarded(engine.engine(), task_type, &payloads)
            }
            None => payloads
                .iter()
                .map(|_| Err(TaskError::Unavailable("the edge is shutting down".into())))
                .collect(),
        };
        drop(payloads);
        if runnable.len() > 1 {
            ::metrics::histogram!("edge_batch_size", "task_type" => task_type.as_str())
                .record(runnable.len() as f64);
        }
        inner.state.lock().expect("state lock").worker_done(index);
        for (job, result) in runnable.into_iter().zip(results) {
            finish_run(&inner, job, result, now);
        }
    }
}

/// Ends a task that ran locally, started at `started`, with its run's
/// result.
pub(super) fn finish_run(
    inner: &Inner,
    job: Job,
    result: Result<crate::infer::Inference, TaskError>,
    started: Instant,
) {
    let timing = result.as_ref().ok().map(|inf| RunTiming {
        queued: started - job.task.created_at,
        inference: inf.elapsed,
    });
    let outcome = result.map(|inf| inf.output);
    let ran = outcome.is_ok().then_some(ExecPath::Local);
    inner.finish_timed(job, outcome, ran, None, timing);
}

/// Runs a split task's head on this worker, then sends its features (the
/// offload runs on the runtime; the worker moves on). A head that fails
/// leaves the task to the usual fallback: the local model, deadline
/// allowing.
fn run_head(inner: &Arc<Inner>, mut job: Job, point: PointIndex) {
    let t = job.task.task_type;
    let name = match inner.splits.get(t, point) {
        Some(p) => p.name.clone(),
        None => {
            let e = OffloadError::Rejected(TaskError::Internal(format!(
                "unknown split point {point} for {}",
                t.as_str()
            )));
            inner.fall_back_or_fail(job, e, None);
            return;
        }
    };
    let features = match inner.engines.checkout() {
        Some(mut engine) => std::panic::catch_unwind(AssertUnwindSafe(|| {
            engine.engine().split_head(t, &name, &job.task.payload)
        }))
        .unwrap_or_else(|_| Err(TaskError::Internal("split head panicked".into()))),
        None => Err(TaskError::Unavailable("the edge is shutting down".into())),
    }
    .and_then(|f| {
        let wire = crate::split::to_wire(&name, &f)?;
        inner
            .splits
            .observe(t, point, f.elapsed, wire.data.len() + 8 * wire.scale.len());
        Ok(wire)
    });
    match (features, &inner.runtime) {
        (Ok(f), Some(rt)) => {
            job.features = Some(f);
            crate::metrics::record_split_head(t, &name);
            rt.spawn(run_offload(inner.clone(), job));
        }
        (Ok(_), None) => {
            let e = OffloadError::Rejected(TaskError::Internal("no runtime for offloads".into()));
            inner.fall_back_or_fail(job, e, None);
        }
        (Err(e), _) => {
            tracing::debug!(task = %job.task.id, error = %e, "split head failed");
            inner.fall_back_or_fail(job, OffloadError::Rejected(e), None);
        }
    }
}

/// Ends each queued local task when its deadline passes, not when a worker
/// gets to it: its submitter learns then, and until then the task would
/// count in every estimate of the queue's wait. Sleeps until the earliest
/// queued deadline or the next push; ends once the workers stop.
pub(super) async fn expiry_loop(inner: Arc<Inner>) {
    loop {
        let earliest = {
            let mut state = inner.state.lock().expect("state lock");
            if state.stopping {
                return;
            }
            for job in state.queue.take_expired(Instant::now()) {
                inner.finish_expired(job);
            }
            state.queue.earliest_deadline()
        };
        // A push since the lock was released left a permit: no wake-up is
        // lost.
        let pushed = inner.queue_pushed.notified();
        match earliest {
            Some(at) => {
                tokio::select! {
                    _ = tokio::time::sleep_until(at.into()) => {}
                    _ = pushed => {}
                }
            }
            None => pushed.await,
        }
    }
}

impl Inner {
    /// Ends a queued local task whose deadline passed before it ran.
    pub(super) fn finish_expired(&self, job: Job) {
        let e = TaskError::DeadlineExceeded("expired while queued locally".into());
        self.finish_timed(job, Err(e), None, None, None);
    }
}

/// The next work of worker `index`: the first task in queue order, with up
/// to `max_batch - 1` more of the same model, waiting at most
/// `max_batch_delay_ms` for them when the batch is not full. `None` once
/// stopping with nothing left.
fn next_batch(inner: &Inner, index: usize) -> Option<Vec<Job>> {
    let mut state = inner.state.lock().expect("state lock");
    let (first, mut expected) = loop {
        // A lent slot takes no work until its run on the accepting thread
        // ends (see [`super::inline`]).
        if !state.lent[index] {
            if let Some(popped) = state.queue.pop() {
                state.waiting[index] = false;
                break popped;
            }
        }
        if state.stopping && state.queue.is_empty() {
            return None;
        }
        state.waiting[index] = true;
        state = inner.work_ready.wait(state).expect("state lock");
    };
    let task_type = first.task.task_type;
    let (max_batch, delay) = inner.batching(task_type);
    // A split head runs alone.
    let alone = first.head_to_run().is_some();
    let mut batch = vec![first];
    if max_batch > 1 && !alone {
        let until = Instant::now() + delay;
        loop {
            while batch.len() < max_batch {
                match state
                    .queue
                    .pop_matching(|j| j.task.task_type == task_type && j.head_to_run().is_none())
                {
                    Some((job, e)) => {
                        batch.push(job);
                        expected += e;
                    }
                    None => break,
                }
            }
            let now = Instant::now();
            if batch.len() >= max_batch || now >= until || state.stopping {
                break;
            }
            state = inner
                .work_ready
                .wait_timeout(state, until - now)
                .expect("state lock")
                .0;
        }
    }
    let run = inner.run_at(task_type, Instant::now(), expected, batch[0].task.priority);
    state.in_flight[index] = Some(run);
    Some(batch)
}

impl Inner {
    /// A run of a task of type `t` starting at `start`, expected to take
    /// `expected`.
    pub(super) fn run_at(
        &self,
        t: TaskType,
        start: Instant,
        expected: Duration,
        priority: Priority,
    ) -> Run {
        let times = self.local_times.lock().expect("exec-time lock");
        Run {
            start,
            expected,
            shape: RunShape::new(
                &times.distribution_ms_at(t, start),
                times.estimate_at(t, start).as_secs_f64() * 1e3,
            ),
            priority,
        }
    }
}
