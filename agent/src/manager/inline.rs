//! Short local runs on the thread that accepted the task.
//!
//! Handing a task to a worker thread and its result back costs two thread
//! wake-ups; on a 2-core VM that was about 60 µs, more than the whole run
//! of a trivial model (75 µs). When the edge has no other task in hand, a
//! task whose model is estimated under `ManagerConfig::inline_max` runs at
//! once on the accepting thread instead. It borrows a waiting worker's
//! slot and engine for the run, so the queue's accounting (the workers'
//! runs in flight and their load) stays exact and the number of concurrent
//! runs stays the number of workers.
//!
//! Only for a client that sends one task at a time: when tasks overlap,
//! the worker threads run models while the runtime's threads serve the
//! network, and an inline run would take a runtime thread from the
//! network and leave its worker idle. An edge serving several clients
//! also has moments with one task in hand, and even idle gaps (at 4 tasks
//! in flight, 1500 a second of 50 µs or more), so "alone" is not enough:
//! the edge must have been idle for [`IDLE_BEFORE`], and its last busy
//! period must have held a single task (inlining every lone task cost a
//! fifth of the throughput at 4 and 16 in flight).

use super::*;

/// How long the edge must have had no task in hand before one runs
/// inline: longer than the gaps between tasks under load, shorter than a
/// client's round trip on loopback (about 100 µs).
const IDLE_BEFORE: Duration = Duration::from_micros(50);

/// A worker's slot lent to a run on the accepting thread; given back on
/// drop, on every path (an answer, an error, a panic unwinding).
pub(super) struct LentSlot<'a> {
    inner: &'a Inner,
    index: usize,
}

impl Drop for LentSlot<'_> {
    fn drop(&mut self) {
        // A poisoned lock still holds consistent state (nothing panics
        // under it), and a drop during a panic must not panic again.
        let mut state = self.inner.state.lock().unwrap_or_else(|e| e.into_inner());
        state.worker_done(self.index);
        state.lent[self.index] = false;
        let queued = !state.queue.is_empty();
        drop(state);
        // Work that arrived meanwhile may have woken only this worker,
        // which would not take it while lent.
        if queued {
            self.inner.work_ready.notify_all();
        }
    }
}

impl Inner {
    /// Lends a waiting worker's slot and engine to a local task decided
    /// now, if the task may run inline: inline runs are on, it is the only
    /// task accepted and unfinished (nothing queued, run or offloaded), the
    /// edge was idle for [`IDLE_BEFORE`] before it came after a busy period
    /// of one task, its model's estimate is at most `inline_max`, and it
    /// runs alone (no split head, no dynamic batching).
    pub(super) fn lend_worker(
        &self,
        state: &mut LocalState,
        task: &Task,
        now: Instant,
    ) -> Option<(LentSlot<'_>, crate::infer::PooledEngine)> {
        if self.cfg.inline_max.is_zero() || !state.queue.is_empty() {
            return None;
        }
        // Its own claim is the one.
        if self.outstanding.count.load(Ordering::SeqCst) != 1 {
            return None;
        }
        {
            let p = self.outstanding.periods.lock().expect("periods lock");
            let idle_for = p.idle_since.map(|t| now.saturating_duration_since(t));
            // The first task of all runs on a worker.
            if idle_for.is_none_or(|d| d < IDLE_BEFORE) || p.last_tasks != 1 {
                return None;
            }
        }
        if self.batching(task.task_type).0 > 1 {
            return None;
        }
        let estimate = self.local_estimate(task.task_type);
        if estimate > self.cfg.inline_max {
            return None;
        }
        let index = (0..state.in_flight.len())
            .find(|&i| state.waiting[i] && !state.lent[i] && state.in_flight[i].is_none())?;
        let engine = self.engines.try_checkout()?;
        state.lent[index] = true;
        state.in_flight[index] = Some(self.run_at(task.task_type, now, estimate, task.priority));
        Some((LentSlot { inner: self, index }, engine))
    }
}

/// Runs `job` here, on the borrowed slot and engine, and ends it.
pub(super) fn run_inline(
    inner: &Inner,
    job: Job,
    slot: LentSlot<'_>,
    mut engine: crate::infer::PooledEngine,
) {
    let start = Instant::now();
    inner.stats.ran_inline.fetch_add(1, Ordering::Relaxed);
    crate::metrics::record_inline_run(job.task.task_type);
    crate::metrics::record_queue_wait(job.task.task_type, start - job.task.created_at);
    let result = crate::infer::process_batch_guarded(
        engine.engine(),
        job.task.task_type,
        &[job.task.payload.as_slice()],
    )
    .pop()
    .unwrap_or_else(|| Err(TaskError::Internal("the engine gave no result".into())));
    // The worker's slot and engine are free before the answer goes out.
    drop(engine);
    drop(slot);
    super::worker::finish_run(inner, job, result, start);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::infer::{Engine, Inference};
    use agent_core::Output;

    type Gate = Arc<(Mutex<bool>, Condvar)>;

    /// A model estimated at 50 µs that answers with the name of the thread
    /// it ran on; a payload starting with 1 makes it panic, and with a
    /// gate, one starting with 2 waits for the gate to open.
    struct Here(Option<Gate>);

    impl Engine for Here {
        fn supports(&self, _: TaskType) -> bool {
            true
        }
        fn validate(&self, _: TaskType, _: &[u8]) -> Result<(), TaskError> {
            Ok(())
        }
        fn process(&mut self, _: TaskType, payload: &[u8]) -> Result<Inference, TaskError> {
            assert_ne!(payload.first(), Some(&1), "a broken model");
            if let (Some(2), Some(gate)) = (payload.first(), &self.0) {
                let (open, cv) = &**gate;
                let mut open = open.lock().unwrap();
                while !*open {
                    open = cv.wait(open).unwrap();
                }
            }
            Ok(Inference {
                output: Output {
                    class: 0,
                    confidence: 1.0,
                    label: std::thread::current().name().unwrap_or("").into(),
                    boxes: Vec::new(),
                    model: "m".into(),
                    model_version: "1".into(),
                },
                elapsed: Duration::from_micros(50),
            })
        }
        fn estimate(&self, _: TaskType) -> Duration {
            Duration::from_micros(50)
        }
        fn warm_up(&mut self) -> anyhow::Result<()> {
            Ok(())
        }
    }

    /// One worker running [`Here`], its model estimated at `estimate`;
    /// returns once the worker waits for work.
    fn start(inline_max: Duration, estimate: Duration, gate: Option<Gate>) -> (Manager, ModelSpec) {
        let spec: ModelSpec = toml::from_str("path = \"m.pt\"\nname = \"m\"").unwrap();
        let (events, _) = mpsc::channel(1);
        let manager = Manager::start(
            ManagerConfig {
                workers: 1,
                queue_capacity: 8,
                queue_capacity_bytes: 1 << 20,
                max_concurrent_offloads: 1,
                policy: Policy::default(),
                response_bytes: 64,
                cloud_expected: Duration::from_millis(10),
                hedge_budget: 0.0,
                hold_runnable_locally: false,
                split: crate::config::SplitConfig::default(),
                inline_max,
                inference_cgroup: None,
            },
            ManagerParts {
                local_specs: HashMap::from([(TaskType::ImageClassification, spec.clone())]),
                engine_factory: Arc::new(move || {
                    Ok(Box::new(Here(gate.clone())) as Box<dyn Engine>)
                }),
                local_times: crate::infer::shared_exec_times(0.2, estimate),
                endpoints: Vec::new(),
                probe_events: events,
                store: None,
                audit: None,
            },
        )
        .unwrap();
        wait_for(|| manager.inner.state.lock().unwrap().waiting[0]);
        (manager, spec)
    }

    /// One task on the worker, then an idle edge: the next lone task may
    /// run inline.
    fn prime(manager: &Manager, spec: &ModelSpec) {
        let rx = manager.submit(task(spec, "primer", 0)).unwrap();
        assert_eq!(ran_on(&rx.blocking_recv().unwrap()), "infer-0");
        // Its claim goes after its answer.
        wait_for(|| manager.outstanding() == 0);
        std::thread::sleep(IDLE_BEFORE * 4);
    }

    fn wait_for(done: impl Fn() -> bool) {
        let until = Instant::now() + Duration::from_secs(5);
        while !done() {
            assert!(Instant::now() < until, "timed out");
            std::thread::sleep(Duration::from_millis(1));
        }
    }

    fn stop(manager: Manager) {
        manager.inner.state.lock().unwrap().stopping = true;
        manager.inner.work_ready.notify_all();
        for h in std::mem::take(&mut *manager.workers.lock().unwrap()) {
            h.join().unwrap();
        }
    }

    fn task(spec: &ModelSpec, id: &str, first_byte: u8) -> Task {
        let mut payload = vec![0; spec.height * spec.width];
        payload[0] = first_byte;
        Task {
            id: id.into(),
            task_type: TaskType::ImageClassification,
            payload,
            priority: Priority::Medium,
            deadline: None,
            created_at: Instant::now(),
            context: HashMap::new(),
        }
    }

    /// The thread a result's run happened on.
    fn ran_on(r: &TaskResult) -> &str {
        &r.outcome.as_ref().expect("an answer").label
    }

    #[test]
    fn a_short_task_on_an_idle_edge_runs_on_the_accepting_thread() {
        let (manager, spec) = start(Duration::from_micros(200), Duration::from_micros(50), None);
        prime(&manager, &spec);
        let mut rx = manager.submit(task(&spec, "a", 0)).unwrap();
        // Answered before submit returned.
        let result = rx.try_recv().expect("answered inline");
        assert_eq!(ran_on(&result), std::thread::current().name().unwrap());
        assert_eq!(result.processed_by, Some(ExecPath::Local));
        assert!(result.timing.is_some());
        {
            let state = manager.inner.state.lock().unwrap();
            assert!(state.in_flight[0].is_none() && !state.lent[0]);
            // The run counts in the workers' load like a worker's run.
            assert!(state.load.load(Instant::now()) > 0.0);
        }
        assert_eq!(manager.stats().completed_local, 2);
        assert_eq!(manager.stats().ran_inline, 1);
        stop(manager);
    }

    #[test]
    fn a_slow_model_or_inline_runs_off_go_to_the_worker() {
        for (inline_max, estimate) in [
            (Duration::from_micros(200), Duration::from_millis(5)),
            (Duration::ZERO, Duration::from_micros(50)),
        ] {
            let (manager, spec) = start(inline_max, estimate, None);
            let rx = manager.submit(task(&spec, "a", 0)).unwrap();
            let result = rx.blocking_recv().unwrap();
            assert_eq!(ran_on(&result), "infer-0", "{inline_max:?} {estimate:?}");
            stop(manager);
        }
    }

    #[test]
    fn a_lone_task_right_after_others_goes_to_the_worker() {
        let (manager, spec) = start(Duration::from_micros(200), Duration::from_micros(50), None);
        // The first task of all, then a lone one right after others, then
        // one after a busy period of two tasks: all three on the worker.
        let rx = manager.submit(task(&spec, "first", 0)).unwrap();
        assert_eq!(ran_on(&rx.blocking_recv().unwrap()), "infer-0");
        let set = |idle_since: Instant, last_tasks: u64| {
            // The last task's claim goes after its answer.
            wait_for(|| manager.outstanding() == 0);
            let mut p = manager.inner.outstanding.periods.lock().unwrap();
            p.idle_since = Some(idle_since);
            p.last_tasks = last_tasks;
        };
        set(Instant::now() + Duration::from_secs(1), 1);
        let rx = manager.submit(task(&spec, "right after", 0)).unwrap();
        assert_eq!(ran_on(&rx.blocking_recv().unwrap()), "infer-0");
        set(Instant::now() - Duration::from_secs(1), 2);
        let rx = manager.submit(task(&spec, "after two", 0)).unwrap();
        assert_eq!(ran_on(&rx.blocking_recv().unwrap()), "infer-0");
        assert_eq!(manager.stats().ran_inline, 0);
        // Idle long enough after a period of one task: inline.
        set(Instant::now() - Duration::from_secs(1), 1);
        let mut rx = manager.submit(task(&spec, "lone", 0)).unwrap();
        assert_eq!(
            ran_on(&rx.try_recv().unwrap()),
            std::thread::current().name().unwrap()
        );
        stop(manager);
    }

    #[test]
    fn work_arriving_during_an_inline_run_waits_for_the_lent_slot_then_runs() {
        let gate: Gate = Arc::new((Mutex::new(false), Condvar::new()));
        let (manager, spec) = start(
            Duration::from_micros(200),
            Duration::from_micros(50),
            Some(gate.clone()),
        );
        prime(&manager, &spec);
        let manager = Arc::new(manager);
        let (m, t) = (manager.clone(), task(&spec, "a", 2));
        let first = std::thread::Builder::new()
            .name("accepting".into())
            .spawn(move || m.submit(t).unwrap().blocking_recv().unwrap())
            .unwrap();
        wait_for(|| manager.inner.state.lock().unwrap().lent[0]);
        // The slot is lent: this one queues, and the worker leaves it.
        let mut second = manager.submit(task(&spec, "b", 0)).unwrap();
        std::thread::sleep(Duration::from_millis(20));
        assert!(second.try_recv().is_err());
        assert_eq!(manager.queue_len(), 1);
        let (open, cv) = &*gate;
        *open.lock().unwrap() = true;
        cv.notify_all();
        assert_eq!(ran_on(&first.join().unwrap()), "accepting");
        // The slot's return woke the worker for the queued task.
        assert_eq!(ran_on(&second.blocking_recv().unwrap()), "infer-0");
        stop(Arc::into_inner(manager).expect("the only owner"));
    }

    #[test]
    fn a_panicking_inline_run_fails_its_task_and_gives_the_slot_back() {
        let (manager, spec) = start(Duration::from_micros(200), Duration::from_micros(50), None);
        prime(&manager, &spec);
        let mut rx = manager.submit(task(&spec, "broken", 1)).unwrap();
        let result = rx.try_recv().expect("answered inline");
        assert!(
            matches!(&result.outcome, Err(TaskError::Internal(m)) if m == "inference panicked"),
            "{:?}",
            result.outcome.as_ref().err()
        );
        assert!(!manager.inner.state.lock().unwrap().lent[0]);
        // The edge idles a while: the next task runs inline too.
        std::thread::sleep(IDLE_BEFORE * 4);
        let mut rx = manager.submit(task(&spec, "next", 0)).unwrap();
        let result = rx.try_recv().expect("answered inline");
        assert_eq!(ran_on(&result), std::thread::current().name().unwrap());
        assert_eq!(manager.stats().failed, 1);
        stop(manager);
    }
}
