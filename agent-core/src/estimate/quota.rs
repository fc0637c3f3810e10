//! Run times under a CPU quota. A cgroup's quota (v1 `cpu.cfs_quota_us`
//! per `cpu.cfs_period_us`, v2 `cpu.max`) lets its threads use `quota` of
//! CPU time per period; a thread that has spent it stops until the next
//! period begins. Where a run needs about a quota (the benchmark's edge:
//! 1 ms every 8 ms; its image model needs 1-2 ms), it either ends within
//! what is left or waits for the next period: its time is one of two
//! values most of a period apart, and any single figure from the recent
//! runs (their median) misses one of them by half or more.
//!
//! Which one follows the kernel's bookkeeping (Linux `kernel/sched/fair.c`,
//! CFS bandwidth), which this model replays from the runs the workers
//! report. The group's pool gets the quota at every period's start (no
//! more: an unused quota is not saved up). A CPU running the group takes
//! the whole pool, up to a slice (5 ms), once its own runtime is spent,
//! and keeps what it does not use (up to 1 ms) across periods. The
//! runtime is checked when a run starts and, for a thread that computes
//! without entering the kernel (a model's forward pass), only at the
//! scheduler's tick (every 4 ms at HZ=250): the run overruns until then,
//! and the debt is paid from the next periods' pools, during which the
//! group's next run waits. A run that needs 2.5 ms under a 1 ms quota
//! thus often ends in 2.5 ms, and the run after it waits most of a period
//! or two. The periods and the ticks lie on fixed grids (the kernel moves
//! its period timer by whole periods), found by the shell. The replay
//! drifts (a CPU's own runtime stays with that CPU when the thread moves;
//! other threads in the group are not seen), so each run's outcome sets it
//! right, and the chance that a run is stopped is learned from how often
//! the replay was right.

use std::time::{Duration, Instant};

/// Weight each observation keeps per later one in the odds.
const DECAY: f64 = 0.97;
/// Weight of the prior in the odds (in runs)...
const PRIOR_RUNS: f64 = 2.0;
/// ...which is that a run is stopped this often when the replay says it
/// runs through, and as often not when it says it is stopped.
const PRIOR_MISS: f64 = 0.1;
/// A run that took this much longer than its CPU time (at the usual
/// stretch) was stopped on the way.
const DELAY_GAP: Duration = Duration::from_micros(300);
/// What a CPU takes from the pool at a time (`sched_cfs_bandwidth_slice_us`,
/// 5 ms by default)...
pub const DEFAULT_SLICE: Duration = Duration::from_millis(5);
/// ...and keeps when the group's thread there sleeps (the kernel's
/// `min_cfs_rq_runtime`).
const KEPT_RUNTIME: f64 = 1e-3;

/// The group's runtime as the kernel keeps it, in seconds.
#[derive(Debug, Clone, Copy)]
struct Runtime {
    /// What the CPU running the workers has left (below zero: overrun).
    local: f64,
    /// What the group's pool holds.
    pool: f64,
    /// When this was so.
    at: Instant,
}

/// What the workers' runs take under a quota of `quota` per `period`.
/// Pure: time is passed in.
#[derive(Debug, Clone)]
pub struct QuotaModel {
    quota: Duration,
    period: Duration,
    slice: f64,
    /// A period boundary: the grid's origin.
    boundary: Instant,
    /// The scheduler tick's period and one tick, where the kernel checks a
    /// computing thread's runtime (`None`: the moment it is spent).
    ticks: Option<(Duration, Instant)>,
    runtime: Runtime,
    /// Runs stopped on the way, and runs, decayed: when the replay had
    /// them run through, and when it had them stopped.
    odds: [(f64, f64); 2],
    /// Wall time over CPU time of the runs that were not throttled: the
    /// share of the CPUs other threads took meanwhile.
    stretch: f64,
}

/// What a run needing some CPU time will take, starting at some time.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct QuotaOutlook {
    /// Its time if what is left covers it...
    pub fits: Duration,
    /// ...and if it is throttled: until the next period, then the rest (a
    /// period more per quota beyond).
    pub throttled: Duration,
    /// The chance that it is throttled.
    pub p_throttled: f64,
}

impl QuotaOutlook {
    /// The likelier of the two times.
    pub fn likely(&self) -> Duration {
        if self.p_throttled > 0.5 {
            self.throttled
        } else {
            self.fits
        }
    }
}

impl QuotaModel {
    /// A model of a quota of `quota` per `period`, whose periods begin at
    /// `boundary` and every `period` before and after it, taken from the
    /// pool `slice` at a time; the pool full and nothing taken yet.
    pub fn new(quota: Duration, period: Duration, slice: Duration, boundary: Instant) -> Self {
        let micro = Duration::from_micros(1);
        let quota = quota.max(micro);
        Self {
            quota,
            period: period.max(micro),
            slice: slice.max(micro).as_secs_f64(),
            boundary,
            ticks: None,
            runtime: Runtime {
                local: 0.0,
                pool: quota.as_secs_f64(),
                at: boundary,
            },
            odds: [(0.0, 0.0); 2],
            stretch: 1.0,
        }
    }

    /// The kernel checks a computing thread's runtime only at its
    /// scheduler tick, every `tick` from `anchor` (one tick).
    pub fn with_ticks(mut self, tick: Duration, anchor: Instant) -> Self {
        self.ticks = (!tick.is_zero()).then_some((tick, anchor));
        self
    }

    pub fn quota(&self) -> Duration {
        self.quota
    }

    pub fn period(&self) -> Duration {
        self.period
    }

    /// The start of the period `t` lies in.
    pub fn period_start(&self, t: Instant) -> Instant {
        let p = self.period.as_nanos();
        let whole = |ns: u128| Duration::from_nanos(u64::try_from(ns).unwrap_or(u64::MAX));
        if t >= self.boundary {
            let n = (t - self.boundary).as_nanos() / p;
            self.boundary + whole(n * p)
        } else {
            let n = (self.boundary - t).as_nanos().div_ceil(p);
            self.boundary
                .checked_sub(whole(n * p))
                .unwrap_or(self.boundary)
        }
    }

    /// The pool refilled at each period that began between the runtime's
    /// time and `t`; a CPU in debt is paid from each (the kernel hands a
    /// throttled group's CPUs their due at every period).
    fn refill(&self, rt: &mut Runtime, t: Instant) {
        if t <= rt.at {
            return;
        }
        let from = self.period_start(rt.at);
        let periods = (self.period_start(t) - from).as_nanos() / self.period.as_nanos();
        for _ in 0..periods.min(64) {
            rt.pool = self.quota.as_secs_f64();
            if rt.local > 0.0 {
                break;
            }
            self.take(rt);
        }
        rt.at = t;
    }

    /// A CPU whose own runtime is spent takes what the pool has, up to a
    /// slice.
    fn take(&self, rt: &mut Runtime) {
        if rt.local <= 0.0 {
            let take = rt.pool.min(self.slice - rt.local).max(0.0);
            rt.pool -= take;
            rt.local += take;
        }
    }

    /// The first tick after `t`, where the kernel checks a running thread's
    /// runtime; `None` where it checks at once.
    fn next_tick(&self, t: Instant) -> Option<Instant> {
        let (tick, anchor) = self.ticks?;
        let p = tick.as_nanos().max(1);
        let whole = |ns: u128| Duration::from_nanos(u64::try_from(ns).unwrap_or(u64::MAX));
        Some(if t >= anchor {
            anchor + whole(((t - anchor).as_nanos() / p + 1) * p)
        } else {
            let n = (anchor - t).as_nanos() / p;
            anchor.checked_sub(whole(n * p)).unwrap_or(anchor)
        })
    }

    /// Runs the workers from `start` for `cpu` seconds of CPU time, or
    /// (with `cpu` infinite) until `until`: when it ends, and whether it
    /// was stopped on the way. The runtime is checked as the run starts
    /// and, with ticks, at each tick (a computing thread enters the kernel
    /// at no other time, so it overruns until then and pays the debt from
    /// the next periods' quota), else the moment it is spent.
    fn replay(
        &self,
        rt: &mut Runtime,
        start: Instant,
        cpu: f64,
        until: Option<Instant>,
    ) -> (Instant, bool) {
        self.refill(rt, start);
        let (mut t, mut rem, mut stopped, mut check) = (start, cpu, false, true);
        // A period per turn at least: bounded for any finite run.
        for _ in 0..100_000 {
            if rem <= 1e-9 || until.is_some_and(|u| t >= u) {
                break;
            }
            let next = self.period_start(t) + self.period;
            if check {
                self.take(rt);
                if rt.local <= 0.0 {
                    // Stopped until a period's pool covers the debt.
                    stopped = true;
                    t = until.map_or(next, |u| next.min(u));
                    self.refill(rt, t);
                    continue;
                }
                check = false;
            }
            let tick = self.next_tick(t);
            let mut stop = tick.map_or(next, |k| k.min(next));
            if let Some(u) = until {
                stop = stop.min(u);
            }
            let mut step = (stop - t).as_secs_f64() / self.stretch;
            let mut at_stop = true;
            if tick.is_none() && rt.local <= step {
                // Checked at once: stopped the moment it is spent.
                step = rt.local;
                at_stop = false;
                check = true;
            }
            if rem <= step {
                rt.local -= rem;
                t += Duration::from_secs_f64(rem * self.stretch);
                rem = 0.0;
            } else {
                rt.local -= step;
                rem -= step;
                if at_stop {
                    t = stop;
                    check |= tick == Some(stop);
                } else {
                    t += Duration::from_secs_f64(step * self.stretch);
                }
            }
            self.refill(rt, t);
        }
        if until.is_none() {
            // The thread sleeps: its runtime is checked; a CPU with much
            // left gives some back.
            self.take(rt);
            if rt.local > KEPT_RUNTIME {
                rt.pool += rt.local - KEPT_RUNTIME;
                rt.local = KEPT_RUNTIME;
            }
        }
        (t, stopped)
    }

    /// The chance that a run is stopped on the way when the replay says it
    /// is (or is not): the runs' share, with a prior.
    fn p_stopped(&self, replayed: bool) -> f64 {
        let (stopped, runs) = self.odds[usize::from(replayed)];
        let prior = if replayed {
            1.0 - PRIOR_MISS
        } else {
            PRIOR_MISS
        };
        (stopped + PRIOR_RUNS * prior) / (runs + PRIOR_RUNS)
    }

    /// The runtime at `start`; with `busy_from`, after the workers ran
    /// without a break since then.
    fn at(&self, start: Instant, busy_from: Option<Instant>) -> Runtime {
        let mut rt = self.runtime;
        if let Some(from) = busy_from.filter(|f| *f < start) {
            let from = from.max(rt.at);
            self.replay(&mut rt, from, f64::INFINITY, Some(start));
        }
        self.refill(&mut rt, start);
        rt
    }

    /// What a run needing `cpu` takes if it starts at `start`; with
    /// `busy_from`, after the workers ran without a break since then (a
    /// queue ahead).
    pub fn outlook(
        &self,
        start: Instant,
        cpu: Duration,
        busy_from: Option<Instant>,
    ) -> QuotaOutlook {
        let mut rt = self.at(start, busy_from);
        let (end, stopped) = self.replay(&mut rt, start, cpu.as_secs_f64(), None);
        let fits = cpu.mul_f64(self.stretch);
        let throttled = if stopped {
            end - start
        } else {
            // The replay has it run through, yet it is stopped: say half
            // of it waits for the next period.
            let next = self.period_start(start) + self.period;
            (next - start).max(fits / 2) + fits / 2
        };
        QuotaOutlook {
            fits,
            throttled,
            p_throttled: self.p_stopped(stopped),
        }
    }

    /// A run from `start` to `end` used `cpu`; where known, the cgroup had
    /// (or had not) been throttled by its end (its throttle count moved).
    pub fn observe(
        &mut self,
        start: Instant,
        end: Instant,
        cpu: Duration,
        throttled: Option<bool>,
    ) {
        let end = end.max(start);
        let delayed = end - start > cpu.mul_f64(self.stretch) + DELAY_GAP;
        let mut rt = self.at(start, None);
        let before = rt;
        let (_, replayed) = self.replay(&mut rt, start, cpu.as_secs_f64(), None);
        let (stopped, runs) = &mut self.odds[usize::from(replayed)];
        *stopped = *stopped * DECAY + f64::from(u8::from(delayed));
        *runs = *runs * DECAY + 1.0;
        if delayed {
            // It ran again from the start of the period it ended in, with
            // that period's pool, and used what it ran since.
            let last = self.period_start(end).max(start);
            let after = ((end - last).as_secs_f64() / self.stretch).min(cpu.as_secs_f64());
            rt.local = self.quota.as_secs_f64().min(self.slice) - after;
            rt.pool = 0.0;
        } else {
            if !cpu.is_zero() {
                let ratio = ((end - start).as_secs_f64() / cpu.as_secs_f64()).clamp(1.0, 4.0);
                self.stretch += 0.1 * (ratio - self.stretch);
            }
            // It ran through on what was left, overrunning into a debt if
            // it needed more (the group is throttled as it ends).
            let mut through = before;
            through.local -= cpu.as_secs_f64();
            self.take(&mut through);
            rt.local = through.local;
            rt.pool = through.pool;
            match throttled {
                Some(true) => rt.local = rt.local.min(0.0),
                Some(false) => rt.local = rt.local.max(1e-6),
                None => {}
            }
        }
        rt.at = end;
        self.runtime = rt;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(v: f64) -> Duration {
        Duration::from_secs_f64(v / 1e3)
    }

    /// 1 ms every 8 ms, periods starting at t0 + 8k ms.
    fn model() -> (QuotaModel, Instant) {
        let t0 = Instant::now() + Duration::from_secs(1);
        (QuotaModel::new(ms(1.0), ms(8.0), DEFAULT_SLICE, t0), t0)
    }

    fn close(a: Duration, b: Duration) -> bool {
        a.abs_diff(b) < Duration::from_micros(2)
    }

    #[test]
    fn periods_lie_on_the_grid_on_either_side_of_the_boundary() {
        let (m, t0) = model();
        // (offset from t0 in ms, expected period start from t0 in ms)
        let cases = [
            (0.0, 0.0),
            (3.0, 0.0),
            (8.0, 8.0),
            (17.5, 16.0),
            (-0.5, -8.0),
            (-8.0, -8.0),
            (-9.0, -16.0),
        ];
        for (at, want) in cases {
            let shift = |v: f64| {
                if v >= 0.0 {
                    t0 + ms(v)
                } else {
                    t0 - ms(-v)
                }
            };
            assert_eq!(m.period_start(shift(at)), shift(want), "at {at} ms");
        }
    }

    #[test]
    fn the_replay_keeps_the_kernels_books() {
        // (ticks; runs before: (start ms, CPU ms, whether the group was
        // throttled by its end), each running through; the run asked
        // about: (start ms, CPU ms); its chance range; its likely time, ms)
        type Case = (
            bool,
            &'static [(f64, f64, bool)],
            (f64, f64),
            (f64, f64),
            f64,
        );
        let cases: [Case; 7] = [
            // A full pool, half a quota: runs through.
            (false, &[], (2.0, 0.5), (0.1, 0.1), 0.5),
            // A full pool, one and a half quotas: stopped at 3 ms until
            // 8 ms, then 0.5 ms.
            (false, &[], (2.0, 1.5), (0.9, 0.9), 6.5),
            // 0.3 ms used of the quota taken in the period before: 0.7 ms
            // kept and a full pool, 1.7 ms for a run of 1.5 ms.
            (false, &[(1.0, 0.3, false)], (9.0, 1.5), (0.06, 0.07), 1.5),
            // The quota spent by 2 ms: a run at 3 ms waits until 8 ms.
            (false, &[(1.0, 1.0, true)], (3.0, 0.5), (0.9, 0.9), 5.5),
            // Checked only at ticks (4 ms): 2.5 ms from 1 ms run through,
            // overrunning the quota by 1.5 ms...
            (true, &[], (1.0, 2.5), (0.1, 0.1), 2.5),
            // ...a debt (the group throttled as it ends) the next period's
            // pool does not cover: a run at 9 ms waits until 16 ms.
            (true, &[(1.0, 2.5, true)], (9.0, 0.5), (0.9, 0.9), 7.5),
            // 2.5 ms from 3 ms: stopped at the tick at 4 ms until 8 ms,
            // then 1.5 ms.
            (true, &[], (3.0, 2.5), (0.9, 0.9), 6.5),
        ];
        for (ticks, before, (start, cpu), (lo, hi), want) in cases {
            let (mut m, t0) = model();
            if ticks {
                m = m.with_ticks(ms(4.0), t0);
            }
            for &(s, c, throttled) in before {
                m.observe(t0 + ms(s), t0 + ms(s + c), ms(c), Some(throttled));
            }
            let o = m.outlook(t0 + ms(start), ms(cpu), None);
            let what = format!("ticks {ticks}, {before:?}, then {cpu} ms at {start} ms");
            assert!(
                o.p_throttled >= lo - 1e-3 && o.p_throttled <= hi + 1e-3,
                "{what}: p {}",
                o.p_throttled
            );
            assert!(close(o.likely(), ms(want)), "{what}: {:?}", o.likely());
        }
    }

    #[test]
    fn an_unexpected_stop_sets_the_replay_right() {
        let (mut m, t0) = model();
        // The replay had a full pool, yet the run was stopped and ran
        // again at 8 ms for 0.3 ms: 0.7 ms left there, the pool taken.
        m.observe(t0 + ms(1.0), t0 + ms(8.3), ms(0.5), Some(true));
        let o = m.outlook(t0 + ms(9.0), ms(0.9), None);
        assert!((o.p_throttled - 0.9).abs() < 1e-3, "{}", o.p_throttled);
        // 0.7 ms, a wait until 16 ms, 0.2 ms.
        assert!(close(o.likely(), ms(7.2)), "{:?}", o.likely());
    }

    #[test]
    fn the_odds_follow_how_often_the_replay_was_right() {
        let (mut m, t0) = model();
        // Every 4 periods, a run of 0.4 ms that the replay has run
        // through is stopped (as when another CPU runs it) and runs again
        // 0.1 ms into the next period.
        let cycle = |k: u32| t0 + ms(32.0 * f64::from(k) + 1.0);
        let mut first = None;
        for k in 0..60 {
            let before = m.outlook(cycle(k), ms(0.4), None);
            first.get_or_insert(before.p_throttled);
            let next = m.period_start(cycle(k)) + ms(8.1);
            m.observe(cycle(k), next, ms(0.4), Some(true));
        }
        assert_eq!(first, Some(PRIOR_MISS));
        let o = m.outlook(cycle(60), ms(0.4), None);
        assert!(o.p_throttled > 0.9, "{}", o.p_throttled);
        assert_eq!(o.likely(), o.throttled);
    }

    #[test]
    fn a_queue_ahead_spends_the_period() {
        let (m, t0) = model();
        // Busy from 1 ms: the quota is spent at 2 ms; a run at 5 ms waits
        // until 8 ms.
        let o = m.outlook(t0 + ms(5.0), ms(0.5), Some(t0 + ms(1.0)));
        assert!(o.p_throttled > 0.5, "{}", o.p_throttled);
        assert!(close(o.likely(), ms(3.5)), "{:?}", o.likely());
    }

    #[test]
    fn other_threads_stretch_the_runs() {
        let (mut m, t0) = model();
        // Runs of 0.4 ms CPU taking 0.6 ms, one per period.
        for k in 0..100u32 {
            let s = t0 + ms(8.0 * f64::from(k) + 1.0);
            m.observe(s, s + ms(0.6), ms(0.4), Some(false));
        }
        let o = m.outlook(t0 + ms(8.0 * 100.0 + 1.0), ms(0.4), None);
        assert!(o.fits.abs_diff(ms(0.6)) < ms(0.01), "{:?}", o.fits);
        assert_eq!(o.likely(), o.fits);
    }
}
