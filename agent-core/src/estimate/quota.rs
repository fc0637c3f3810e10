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
//! report: the group's pool gets the quota at every period's start (no
//! more: the rest of a period is not saved up); a CPU running the group
//! takes the whole pool, up to a slice (5 ms), once its own runtime is
//! spent, and keeps what it does not use (up to 1 ms) across periods,
//! so a period after a quiet one allows up to about two quotas; a run
//! with neither left stops until the next period. The periods lie on a
//! fixed grid (the kernel moves its period timer by whole periods), from
//! one boundary the shell finds. The replay drifts (a CPU's own runtime
//! stays with that CPU when the thread moves; other threads' CPU time is
//! not seen), so it is set right by every run's outcome, and the chance
//! of a throttle is learned per margin (CPU time needed less what the
//! replay says is left).

use std::time::{Duration, Instant};

/// Bins of the throttle odds by margin (quotas), from `MARGIN_MIN` up in
/// steps of an eighth of a quota.
const BINS: usize = 16;
const MARGIN_MIN: f64 = -1.0;
/// Weight each observation keeps per later one in its bin.
const DECAY: f64 = 0.97;
/// Weight of the prior in a bin (in runs).
const PRIOR_RUNS: f64 = 2.0;
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
    runtime: Runtime,
    /// Throttles and runs, decayed, per margin bin.
    odds: [(f64, f64); BINS],
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
            runtime: Runtime {
                local: 0.0,
                pool: quota.as_secs_f64(),
                at: boundary,
            },
            odds: [(0.0, 0.0); BINS],
            stretch: 1.0,
        }
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

    /// The pool refilled if a period began between the runtime's time and
    /// `t`.
    fn refill(&self, rt: &mut Runtime, t: Instant) {
        if t > rt.at {
            if self.period_start(t) > self.period_start(rt.at) {
                rt.pool = self.quota.as_secs_f64();
            }
            rt.at = t;
        }
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

    /// Runs the workers from `start` for `cpu` seconds of CPU time, or
    /// (with `cpu` infinite) until `until`: when it ends, and whether it
    /// was throttled on the way.
    fn replay(
        &self,
        rt: &mut Runtime,
        start: Instant,
        cpu: f64,
        until: Option<Instant>,
    ) -> (Instant, bool) {
        self.refill(rt, start);
        let (mut t, mut rem, mut throttled) = (start, cpu, false);
        // A period per turn at least: bounded for any finite run.
        for _ in 0..100_000 {
            if rem <= 1e-9 || until.is_some_and(|u| t >= u) {
                break;
            }
            self.take(rt);
            let next = self.period_start(t) + self.period;
            if rt.local <= 0.0 {
                // Stopped until the next period refills the pool.
                throttled = true;
                t = until.map_or(next, |u| next.min(u));
                self.refill(rt, t);
                continue;
            }
            let mut wall = (next - t).as_secs_f64();
            if let Some(u) = until {
                wall = wall.min(u.saturating_duration_since(t).as_secs_f64());
            }
            let run = rem.min(rt.local).min(wall / self.stretch);
            rt.local -= run;
            rem -= run;
            t += Duration::from_secs_f64(run * self.stretch);
            self.refill(rt, t);
        }
        if until.is_none() {
            // The thread sleeps: a spent CPU takes from the pool, a CPU
            // with much left gives some back.
            self.take(rt);
            if rt.local > KEPT_RUNTIME {
                rt.pool += rt.local - KEPT_RUNTIME;
                rt.local = KEPT_RUNTIME;
            }
        }
        (t, throttled)
    }

    fn bin(margin: f64) -> usize {
        (((margin - MARGIN_MIN).max(0.0) * 8.0) as usize).min(BINS - 1)
    }

    /// The chance of a throttle at `margin` quotas (CPU time needed less
    /// what the replay has left): the runs' share in its bin, with a prior
    /// of none below a quarter quota under and rising from even at no
    /// margin to certain a quarter quota over.
    fn p_throttled(&self, margin: f64) -> f64 {
        if margin.is_nan() {
            return 0.0;
        }
        let (throttled, runs) = self.odds[Self::bin(margin)];
        let prior = if margin < -0.25 {
            0.0
        } else {
            (0.5 + 2.0 * margin).clamp(0.0, 1.0)
        };
        (throttled + PRIOR_RUNS * prior) / (runs + PRIOR_RUNS)
    }

    /// The runtime at `start`, and the margin of a run needing `cpu`.
    fn at(&self, start: Instant, cpu: Duration, busy_from: Option<Instant>) -> (Runtime, f64) {
        let mut rt = self.runtime;
        if let Some(from) = busy_from.filter(|f| *f < start) {
            let from = from.max(rt.at);
            self.replay(&mut rt, from, f64::INFINITY, Some(start));
        }
        self.refill(&mut rt, start);
        let left = rt.local + rt.pool;
        let margin = (cpu.as_secs_f64() - left) / self.quota.as_secs_f64();
        (rt, margin)
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
        let (mut rt, margin) = self.at(start, cpu, busy_from);
        let left = (rt.local + rt.pool).max(0.0);
        let (end, replay_throttled) = self.replay(&mut rt, start, cpu.as_secs_f64(), None);
        let fits = cpu.mul_f64(self.stretch);
        let throttled = if replay_throttled {
            end - start
        } else {
            // The replay has enough left, yet a throttle comes: say half
            // the run waits for the next period.
            let next = self.period_start(start) + self.period;
            let before = Duration::from_secs_f64(left.min(cpu.as_secs_f64() / 2.0) * self.stretch);
            (next - start).max(before) + cpu.mul_f64(self.stretch / 2.0)
        };
        QuotaOutlook {
            fits,
            throttled,
            p_throttled: self.p_throttled(margin),
        }
    }

    /// A run from `start` to `end` used `cpu`, and was (or was not)
    /// throttled on the way (the cgroup's throttle count moved).
    pub fn observe(&mut self, start: Instant, end: Instant, cpu: Duration, throttled: bool) {
        let end = end.max(start);
        let (mut rt, margin) = self.at(start, cpu, None);
        let (t, n) = &mut self.odds[Self::bin(margin)];
        *t = *t * DECAY + f64::from(u8::from(throttled));
        *n = *n * DECAY + 1.0;
        let (_, replayed) = self.replay(&mut rt, start, cpu.as_secs_f64(), None);
        if throttled {
            // It ran again from the start of the period it ended in, with
            // the pool, and used what it ran since.
            let last = self.period_start(end).max(start);
            let after = ((end - last).as_secs_f64() / self.stretch).min(cpu.as_secs_f64());
            rt.local = self.quota.as_secs_f64().min(self.slice) - after;
            rt.pool = 0.0;
            rt.at = end;
            self.take(&mut rt);
        } else {
            if replayed {
                // More was left than the replay had: say it is all spent
                // now, until the next period.
                rt.local = 0.0;
                rt.pool = 0.0;
                rt.at = end;
            }
            if !cpu.is_zero() {
                let ratio = ((end - start).as_secs_f64() / cpu.as_secs_f64()).clamp(1.0, 4.0);
                self.stretch += 0.1 * (ratio - self.stretch);
            }
        }
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
        // (runs before: (start ms, CPU ms), all untrottled; the run asked
        // about: (start ms, CPU ms); its chance range; its likely time ms)
        let cases: [(&[(f64, f64)], (f64, f64), (f64, f64), f64); 4] = [
            // A full pool, half a quota: fits.
            (&[], (2.0, 0.5), (0.0, 0.0), 0.5),
            // A full pool, one and a half quotas: 1 ms, a wait until 8 ms,
            // then 0.5 ms.
            (&[], (2.0, 1.5), (1.0, 1.0), 6.5),
            // 0.3 ms used of the quota taken in the period before: 0.7 kept
            // and a full pool, 1.7 ms for a run of 1.5 ms (a tenth, the
            // prior's, that it is throttled).
            (&[(1.0, 0.3)], (9.0, 1.5), (0.09, 0.11), 1.5),
            // The quota spent at 2 ms: a run at 3 ms waits until 8 ms.
            (&[(1.0, 1.0)], (3.0, 0.5), (1.0, 1.0), 5.5),
        ];
        for (before, (start, cpu), (lo, hi), want) in cases {
            let (mut m, t0) = model();
            for &(s, c) in before {
                m.observe(t0 + ms(s), t0 + ms(s + c), ms(c), false);
            }
            let o = m.outlook(t0 + ms(start), ms(cpu), None);
            assert!(
                (lo..=hi).contains(&o.p_throttled),
                "{before:?} then {cpu} ms at {start}: p {}",
                o.p_throttled
            );
            assert!(
                close(o.likely(), ms(want)),
                "{before:?} then {cpu} ms at {start}: {:?}",
                o.likely()
            );
        }
    }

    #[test]
    fn an_unexpected_throttle_sets_the_replay_right() {
        let (mut m, t0) = model();
        // The replay had a full pool, yet the run was throttled and ran
        // again at 8 ms for 0.3 ms: 0.7 ms left there, the pool taken.
        m.observe(t0 + ms(1.0), t0 + ms(8.3), ms(0.5), true);
        let o = m.outlook(t0 + ms(9.0), ms(0.9), None);
        assert!((o.p_throttled - 0.9).abs() < 0.01, "{}", o.p_throttled);
        // 0.7 ms, a wait until 16 ms, 0.2 ms.
        assert!(close(o.likely(), ms(7.2)), "{:?}", o.likely());
    }

    #[test]
    fn the_odds_follow_what_the_runs_show() {
        let (mut m, t0) = model();
        // Every 4 periods, a run of 0.4 ms where the replay has 1.9 ms
        // left is throttled (as when another CPU runs it) and runs again
        // 0.1 ms into the next period.
        let cycle = |k: u32| t0 + ms(32.0 * f64::from(k) + 1.0);
        let mut last = None;
        for k in 0..60 {
            let before = m.outlook(cycle(k), ms(0.4), None);
            last.get_or_insert(before.p_throttled);
            let next = m.period_start(cycle(k)) + ms(8.1);
            m.observe(cycle(k), next, ms(0.4), true);
        }
        assert_eq!(last, Some(0.0));
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
        assert!(o.p_throttled > 0.99, "{}", o.p_throttled);
        assert!(close(o.likely(), ms(3.5)), "{:?}", o.likely());
    }

    #[test]
    fn other_threads_stretch_the_runs() {
        let (mut m, t0) = model();
        // Runs of 0.4 ms CPU taking 0.8 ms, one per period.
        for k in 0..100u32 {
            let s = t0 + ms(8.0 * f64::from(k) + 1.0);
            m.observe(s, s + ms(0.8), ms(0.4), false);
        }
        let o = m.outlook(t0 + ms(8.0 * 100.0 + 1.0), ms(0.4), None);
        assert!(o.fits.abs_diff(ms(0.8)) < ms(0.01), "{:?}", o.fits);
        assert_eq!(o.likely(), o.fits);
    }
}
