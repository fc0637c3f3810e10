//! The local runs under the inference cgroup's CPU quota: the workers
//! report each run's CPU time and whether the cgroup was throttled during
//! it, an `agent_core::QuotaModel` learns what the quota does to them, and
//! the decision gets each task's run time from the CPU time its model
//! needs and where the run would start in the quota's period, instead of
//! the recent runs' wall times alone (one of two values most of a period
//! apart when a run needs about a quota).

use super::*;
use crate::cpu::InferenceCgroup;
use agent_core::QuotaModel;

/// Run times under the inference cgroup's quota.
pub(super) struct QuotaTimes {
    cgroup: InferenceCgroup,
    /// Set once the first worker has found the quota's periods.
    model: Mutex<Option<QuotaModel>>,
    /// Per task type, the CPU time of a run (a batch's, per task).
    cpu: Mutex<ExecTimeModel<TaskType>>,
}

/// A run as a worker started it.
pub(super) struct RunStart {
    /// When it could start.
    at: Instant,
    /// When it began computing, and the worker's CPU time then.
    computing: Instant,
    cpu: Duration,
}

/// Longest a worker spins at start to find the quota's periods.
const CALIBRATION_LIMIT: Duration = Duration::from_secs(2);

impl QuotaTimes {
    pub(super) fn new(cgroup: InferenceCgroup) -> Self {
        Self {
            cgroup,
            model: Mutex::new(None),
            cpu: Mutex::new(ExecTimeModel::new(0.2, Duration::ZERO)),
        }
    }

    /// Finds the quota's periods, on a worker thread that has joined the
    /// cgroup. Only a quota below one core can throttle a single run; with
    /// none, or a larger one, there is nothing to model.
    pub(super) fn calibrate(&self) {
        let Some((quota, period)) = self.cgroup.bandwidth().filter(|(q, p)| q < p) else {
            return;
        };
        let limit = CALIBRATION_LIMIT.max(period * 20);
        match crate::cpu::find_quota_grid(period, limit) {
            Some(grid) => {
                tracing::info!(
                    quota_ms = quota.as_secs_f64() * 1e3,
                    period_ms = period.as_secs_f64() * 1e3,
                    tick_ms = grid.tick.map(|(t, _)| t.as_secs_f64() * 1e3),
                    "local run times follow the inference cgroup's quota periods"
                );
                let mut model =
                    QuotaModel::new(quota, period, crate::cpu::bandwidth_slice(), grid.boundary);
                if let Some((tick, anchor)) = grid.tick {
                    model = model.with_ticks(tick, anchor);
                }
                *self.model.lock().expect("quota lock") = Some(model);
            }
            None => tracing::warn!(
                cgroup = %self.cgroup.path().display(),
                "no start of the inference cgroup's quota period was found: local run times \
                 come from the recent runs alone"
            ),
        }
    }

    /// What a worker notes as it starts a run that could start at `ready`
    /// (when its first task was queued, or the worker's last run ended,
    /// whichever is later): a group in debt stops the worker as it wakes
    /// for the task, before the run, and that wait is the run's.
    pub(super) fn begin(
        &self,
        clock: Option<nix::time::ClockId>,
        ready: Instant,
    ) -> Option<RunStart> {
        let cpu = crate::cpu::threads_used(&[clock?])?;
        Some(RunStart {
            at: ready,
            computing: Instant::now(),
            cpu,
        })
    }

    /// The worker's run that began at `start` ended at `end`, before its
    /// results go out, and without a call into the kernel (a group in
    /// debt stops the thread at the first one, and the decisions made
    /// meanwhile must know of the debt): its CPU time is its time
    /// computing, or, if that took longer than its model's usual CPU time
    /// (stopped on the way), the usual. `tasks`: how many tasks of which
    /// type it ran (`None`: a split head, which spends the quota but is no
    /// whole task's run).
    pub(super) fn ran(&self, start: &RunStart, end: Instant, tasks: Option<(TaskType, usize)>) {
        let computing = end.saturating_duration_since(start.computing);
        let usual = tasks.and_then(|(t, n)| {
            let cpu = self.cpu.lock().expect("cpu times lock");
            let one = cpu.estimate(t);
            (!one.is_zero()).then(|| one.mul_f64(cpu.batch_scale(t, n.max(1))))
        });
        let cpu = match usual {
            Some(u) if computing > u.mul_f64(1.3) + Duration::from_micros(300) => u,
            _ => computing,
        };
        if let Some(model) = self.model.lock().expect("quota lock").as_mut() {
            model.observe(start.at, end, cpu, None);
        }
    }

    /// After the results went out: the run's CPU time, read from the
    /// worker's clock, for its model's usual CPU time.
    pub(super) fn settle(
        &self,
        start: RunStart,
        clock: Option<nix::time::ClockId>,
        tasks: (TaskType, usize),
    ) {
        let Some(cpu) = clock
            .and_then(|c| crate::cpu::threads_used(&[c]))
            .map(|c| c.saturating_sub(start.cpu))
        else {
            return;
        };
        let (t, n) = tasks;
        self.cpu
            .lock()
            .expect("cpu times lock")
            .observe_batch(t, n.max(1), cpu);
    }

    /// The run times (ms, sorted) of a task of type `t` whose run starts
    /// at `start` in a batch `batch_scale` times as long as one task; with
    /// `busy_from`, after the workers ran without a break since then (a
    /// queue ahead). Each recent CPU time gives four values, as many of
    /// them throttled as the chance says. `None` until the quota's periods
    /// are known and a run of `t` has been measured.
    pub(super) fn run_times_ms(
        &self,
        t: TaskType,
        start: Instant,
        busy_from: Option<Instant>,
        batch_scale: f64,
    ) -> Option<Vec<f64>> {
        let cpu = self.cpu_times_ms(t)?;
        let model = self.model.lock().expect("quota lock");
        let model = model.as_ref()?;
        let mut times = Vec::with_capacity(cpu.len() * 4);
        for ms in cpu {
            let o = model.outlook(
                start,
                Duration::from_secs_f64(ms * batch_scale / 1e3),
                busy_from,
            );
            let throttled = (o.p_throttled * 4.0).round() as usize;
            for i in 0..4 {
                let d = if i < throttled { o.throttled } else { o.fits };
                times.push(d.as_secs_f64() * 1e3);
            }
        }
        times.sort_by(f64::total_cmp);
        Some(times)
    }

    /// The likelier time of a run of `t` starting at `start`, in a batch
    /// `batch_scale` times as long as one task.
    pub(super) fn run_time(
        &self,
        t: TaskType,
        start: Instant,
        batch_scale: f64,
    ) -> Option<Duration> {
        let cpu = self.cpu.lock().expect("cpu times lock").estimate(t);
        if cpu.is_zero() {
            return None;
        }
        let model = self.model.lock().expect("quota lock");
        Some(
            model
                .as_ref()?
                .outlook(start, cpu.mul_f64(batch_scale), None)
                .likely(),
        )
    }

    fn cpu_times_ms(&self, t: TaskType) -> Option<Vec<f64>> {
        let cpu = self.cpu.lock().expect("cpu times lock");
        if cpu.estimate(t).is_zero() {
            return None;
        }
        Some(cpu.distribution_ms(t))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cpu::testing::TestCgroup;
    use std::collections::VecDeque;

    fn error(predicted: Duration, actual: Duration) -> f64 {
        (predicted.as_secs_f64() - actual.as_secs_f64()).abs() / actual.as_secs_f64()
    }

    fn quantile(mut v: Vec<f64>, q: f64) -> f64 {
        v.sort_by(f64::total_cmp);
        v[((v.len() - 1) as f64 * q).round() as usize]
    }

    /// Computes for about `iterations` steps without entering the kernel
    /// (as a model's forward pass does).
    fn compute(iterations: u64) -> u64 {
        let mut x = 1u64;
        for i in 0..iterations {
            x = std::hint::black_box(x.wrapping_mul(6364136223846793005).wrapping_add(i));
        }
        x
    }

    /// Runs of 0.6-2.6 ms of CPU time that compute without entering the
    /// kernel, 8 ms apart on average, under a real quota of 1 ms every
    /// 8 ms (about the edge's image model in the benchmark): the kernel
    /// checks them at its ticks, so many overrun the quota and the run
    /// after waits for the debt. The model, from the grid it found and
    /// what the runs spent, predicts each run's time from the CPU time it
    /// will need; the median of the recent runs' times (what the decision
    /// had without it) misses most runs by half.
    #[test]
    fn run_times_under_a_real_quota_follow_its_periods() {
        let Some(cg) = TestCgroup::v1("quota-model", 1000, 8000) else {
            return;
        };
        let times = QuotaTimes::new(InferenceCgroup::open(&cg.path).unwrap());
        let (model, recent, delayed) = std::thread::spawn(move || {
            let clock = crate::cpu::this_thread_clock();
            let cpu_now = || crate::cpu::threads_used(&[clock.unwrap()]).unwrap();
            // Steps per ms of CPU time, measured before the quota applies.
            let before = cpu_now();
            compute(20_000_000);
            let per_ms = 20_000_000.0 / ((cpu_now() - before).as_secs_f64() * 1e3);
            times.cgroup.join_this_thread().unwrap();
            times.calibrate();
            assert!(
                times.model.lock().unwrap().is_some(),
                "no start of a quota period found"
            );
            let mut rng = 0x2545_f491_4f6c_dd1d_u64;
            let mut uniform = move || {
                rng ^= rng << 13;
                rng ^= rng >> 7;
                rng ^= rng << 17;
                (rng >> 11) as f64 / (1u64 << 53) as f64
            };
            let (mut model, mut recent, mut delayed) = (Vec::new(), Vec::new(), 0);
            let mut walls: VecDeque<f64> = VecDeque::new();
            for _ in 0..400 {
                // The run could start when the sleep is due to end (a task
                // queued then): a debt stops the thread as it wakes.
                let pause = Duration::from_secs_f64(-0.008 * (1.0 - uniform()).ln());
                let at = Instant::now() + pause;
                std::thread::sleep(pause);
                let need_ms = 0.6 + 2.0 * uniform();
                let started = times.begin(clock, at).expect("the worker's CPU clock");
                // The CPU time the run will need, as the model's estimate
                // per task type would give it.
                let predicted = times
                    .model
                    .lock()
                    .unwrap()
                    .as_ref()
                    .unwrap()
                    .outlook(at, Duration::from_secs_f64(need_ms / 1e3), None)
                    .likely();
                compute((need_ms * per_ms) as u64);
                let ended = Instant::now();
                let wall = ended - at;
                delayed += usize::from(wall.as_secs_f64() * 1e3 > need_ms + 0.3);
                times.end(
                    started,
                    ended,
                    clock,
                    Some((TaskType::ImageClassification, 1)),
                );
                model.push(error(predicted, wall));
                if walls.len() >= 8 {
                    let mut w: Vec<f64> = walls.iter().copied().collect();
                    w.sort_by(f64::total_cmp);
                    recent.push(error(Duration::from_secs_f64(w[w.len() / 2]), wall));
                }
                if walls.len() == 32 {
                    walls.pop_front();
                }
                walls.push_back(wall.as_secs_f64());
            }
            (model, recent, delayed)
        })
        .join()
        .unwrap();
        let (m50, m75) = (quantile(model.clone(), 0.5), quantile(model, 0.75));
        let (r50, r75) = (quantile(recent.clone(), 0.5), quantile(recent, 0.75));
        eprintln!(
            "{delayed} of 400 runs stopped by the quota; |predicted - actual| / actual: model \
             median {m50:.3}, p75 {m75:.3}; recent runs' median: median {r50:.3}, p75 {r75:.3}"
        );
        assert!(delayed > 40, "the quota stopped only {delayed} runs");
        assert!(m50 < 0.25, "model median error {m50:.3}");
        assert!(m75 < r75 / 2.0, "model p75 {m75:.3} against {r75:.3}");
        assert!(cg.empties());
    }
}
