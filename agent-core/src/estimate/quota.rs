//! Run times under a CPU quota. A cgroup's quota (v1 `cpu.cfs_quota_us`
//! per `cpu.cfs_period_us`, v2 `cpu.max`) lets its threads use `quota` of
//! CPU time per period; a thread that has spent it stops until the next
//! period begins. Where a run needs about a quota (the benchmark's edge:
//! 1 ms every 8 ms; its image model needs 1-1.5 ms), it either ends
//! within what the period has left or waits for the next period: its time
//! is one of two values most of a period apart, and any single figure
//! from the recent runs (their median) misses one of them by half or more.
//!
//! Which one follows mostly from how much of the quota the period has
//! spent when the run starts and how much the run needs. The periods lie
//! on a fixed grid (the kernel forwards its period timer by whole
//! periods), found once by the shell ([`QuotaModel::new`] takes one
//! boundary), and what a period has spent is what the workers ran since
//! its start. The kernel also lends a period more than its quota now and
//! then (a CPU keeps runtime it took from an earlier period: on Linux
//! 6.18, periods after a rested one allowed 1-2.7 quotas), so past the
//! quota the chance of being throttled is learned from the runs, by how
//! far past the quota the run takes its period and whether the period
//! before was rested.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

/// Bins of the throttle odds: a run's demand on its period, in quotas,
/// from [`TIGHT`] in steps of an eighth of a quota; the last bin holds
/// everything from 2.875 quotas up.
const BINS: usize = 16;
/// Below this share of the quota, a period never throttles.
const TIGHT: f64 = 0.95;
/// Weight each observation keeps per later one in its bin.
const DECAY: f64 = 0.97;
/// Weight of the prior in a bin (in runs).
const PRIOR_RUNS: f64 = 2.0;
/// The prior's chance of a throttle rises from none at the quota to
/// certain this many quotas past it: after a busy period...
const BUSY_SPAN: f64 = 0.5;
/// ...and after a rested one.
const RESTED_SPAN: f64 = 1.5;
/// A period whose predecessor spent less than this share of the quota is
/// rested: the kernel lends it more.
const RESTED: f64 = 0.5;
/// Runs kept: enough for the current period and the one before at any
/// rate the workers can reach under a quota.
const KEPT_RUNS: usize = 256;

/// Where the workers' CPU time went, and what it made them wait, under
/// a quota of `quota` per `period`. Pure: time is passed in.
#[derive(Debug, Clone)]
pub struct QuotaModel {
    quota: Duration,
    period: Duration,
    /// A period boundary: the grid's origin.
    boundary: Instant,
    /// When the workers ran (from, to) and the CPU time used in it, oldest
    /// first.
    ran: VecDeque<(Instant, Instant, Duration)>,
    /// Throttles and runs, decayed, per (rested, bin).
    odds: [[(f64, f64); BINS]; 2],
    /// Wall time over CPU time of the runs that were not throttled: the
    /// share of the CPUs other threads took meanwhile.
    stretch: f64,
}

/// What a run needing some CPU time will take, starting at some time.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct QuotaOutlook {
    /// Its time if its period's quota covers it...
    pub fits: Duration,
    /// ...and if it is throttled: what the quota has left, the wait for
    /// the next period, and the rest (a period more per quota beyond).
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

/// A period's state at a point in it.
struct PeriodAt {
    start: Instant,
    /// CPU time spent in the period so far.
    spent: Duration,
    rested: bool,
}

impl QuotaModel {
    /// A model of a quota of `quota` per `period` whose periods begin at
    /// `boundary` and every `period` before and after it.
    pub fn new(quota: Duration, period: Duration, boundary: Instant) -> Self {
        let micro = Duration::from_micros(1);
        Self {
            quota: quota.max(micro),
            period: period.max(micro),
            boundary,
            ran: VecDeque::new(),
            odds: [[(0.0, 0.0); BINS]; 2],
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

    /// CPU time the workers used between `from` and `to`, by what they
    /// reported ([`QuotaModel::observe`]).
    pub fn used(&self, from: Instant, to: Instant) -> Duration {
        self.ran
            .iter()
            .filter(|(a, b, _)| *b > from && *a < to)
            .map(|&(a, b, cpu)| {
                let span = b.saturating_duration_since(a);
                if span.is_zero() {
                    return cpu;
                }
                let inside = b.min(to).saturating_duration_since(a.max(from));
                cpu.mul_f64(inside.as_secs_f64() / span.as_secs_f64())
            })
            .sum()
    }

    /// The period at `t`: its start, what it has spent and whether the one
    /// before was rested. With `busy_from`, the workers run without a
    /// break from then until `t` (a queue ahead), at most a quota's worth.
    fn period_at(&self, t: Instant, busy_from: Option<Instant>) -> PeriodAt {
        let start = self.period_start(t);
        let before = start.checked_sub(self.period).unwrap_or(start);
        let mut spent = self.used(start, t);
        if let Some(from) = busy_from.filter(|f| *f < t) {
            let busy = t.saturating_duration_since(from.max(start));
            spent = (spent + busy.div_f64(self.stretch)).min(self.quota.max(spent));
        }
        PeriodAt {
            start,
            spent,
            rested: self.used(before, start) < self.quota.mul_f64(RESTED),
        }
    }

    /// The share of the quota a run needing `cpu` from `start` asks of its
    /// period (what the period spent before, plus what the run can use
    /// before the period ends).
    fn demand(&self, at: &PeriodAt, start: Instant, cpu: Duration) -> f64 {
        let end = at.start + self.period;
        let room = end.saturating_duration_since(start).div_f64(self.stretch);
        (at.spent + cpu.min(room)).as_secs_f64() / self.quota.as_secs_f64()
    }

    fn bin(demand: f64) -> usize {
        (((demand - TIGHT).max(0.0) * 8.0) as usize).min(BINS - 1)
    }

    /// The chance that a period asked for `demand` quotas throttles: none
    /// below [`TIGHT`]; else the runs' share in that bin, with a prior
    /// rising from none at the quota to certain [`BUSY_SPAN`] or
    /// [`RESTED_SPAN`] past it.
    fn p_throttled(&self, demand: f64, rested: bool) -> f64 {
        if demand.is_nan() || demand <= TIGHT {
            return 0.0;
        }
        let (throttled, runs) = self.odds[usize::from(rested)][Self::bin(demand)];
        let span = if rested { RESTED_SPAN } else { BUSY_SPAN };
        let prior = ((demand - 1.0) / span).clamp(0.0, 1.0);
        (throttled + PRIOR_RUNS * prior) / (runs + PRIOR_RUNS)
    }

    /// What a run needing `cpu` takes if it starts at `start`; with
    /// `busy_from`, after the workers ran without a break since then.
    pub fn outlook(
        &self,
        start: Instant,
        cpu: Duration,
        busy_from: Option<Instant>,
    ) -> QuotaOutlook {
        let at = self.period_at(start, busy_from);
        let p_throttled = self.p_throttled(self.demand(&at, start, cpu), at.rested);
        let left = self.quota.saturating_sub(at.spent);
        let rest = cpu.saturating_sub(left);
        // Beyond the quota of the next period, a period more each.
        let extra = rest.as_nanos().saturating_sub(1) / self.quota.as_nanos();
        let periods = u32::try_from(extra).unwrap_or(u32::MAX);
        let last = rest.saturating_sub(self.quota.saturating_mul(periods));
        let next = at.start + self.period;
        let throttled = next.saturating_duration_since(start)
            + self.period.saturating_mul(periods)
            + last.mul_f64(self.stretch);
        QuotaOutlook {
            fits: cpu.mul_f64(self.stretch),
            throttled,
            p_throttled,
        }
    }

    /// A run from `start` to `end` used `cpu`, and was (or was not)
    /// throttled on the way (the cgroup's throttle count moved).
    pub fn observe(&mut self, start: Instant, end: Instant, cpu: Duration, throttled: bool) {
        let end = end.max(start);
        let at = self.period_at(start, None);
        let demand = self.demand(&at, start, cpu);
        if demand > TIGHT {
            let (t, n) = &mut self.odds[usize::from(at.rested)][Self::bin(demand)];
            *t = *t * DECAY + f64::from(u8::from(throttled));
            *n = *n * DECAY + 1.0;
        }
        let wall = end - start;
        if throttled {
            // It ran until the quota was spent, then again from the start
            // of the period it ended in.
            let last = self.period_start(end).max(start);
            let after = (end - last).min(cpu);
            let before = cpu - after;
            if !before.is_zero() {
                let to = (start + before.mul_f64(self.stretch)).min(last);
                self.ran.push_back((start, to, before));
            }
            self.ran.push_back((last, end, after));
        } else {
            if !cpu.is_zero() {
                let ratio = (wall.as_secs_f64() / cpu.as_secs_f64()).clamp(1.0, 4.0);
                self.stretch += 0.1 * (ratio - self.stretch);
            }
            self.ran.push_back((start, end, cpu));
        }
        // Keep what the current period and the one before need.
        let keep_from = self
            .period_start(end)
            .checked_sub(self.period * 2)
            .unwrap_or(start);
        while self
            .ran
            .front()
            .is_some_and(|(_, b, _)| *b < keep_from || self.ran.len() > KEPT_RUNS)
        {
            self.ran.pop_front();
        }
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
        (QuotaModel::new(ms(1.0), ms(8.0), t0), t0)
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
    fn a_run_the_quota_covers_fits_and_one_past_it_waits_for_the_next_period() {
        // (CPU spent in the period before the run, start offset in the
        // period, the run's CPU, expected p range, expected throttled time)
        let cases = [
            // An idle period, half a quota: no throttle (were it throttled,
            // nothing would be left for the next period).
            (0.0, 2.0, 0.5, (0.0, 0.0), 6.0),
            // Half spent, a whole quota asked after a rested period: the
            // prior's third; the quota's last 0.5 ms, the wait from 2 ms
            // to 8 ms, then 0.5 ms.
            (0.5, 2.0, 1.0, (0.33, 0.34), 6.5),
            // Spent after a rested period: 0.8 past the quota, the prior's
            // 0.53, and the whole run after the boundary.
            (1.0, 3.0, 0.8, (0.53, 0.54), 5.8),
            // Two and a half quotas from an idle period: a period more.
            (0.0, 2.0, 2.5, (0.99, 1.0), 6.0 + 8.0 + 0.5),
            // Late in the period, the run mostly falls in the next one:
            // 0.2 ms of room after 0.5 spent: 0.7 quota, no throttle.
            (0.5, 7.8, 0.9, (0.0, 0.0), 0.2 + 0.4),
        ];
        for (spent, offset, cpu, (lo, hi), throttled_ms) in cases {
            let (mut m, t0) = model();
            let start = t0 + ms(8.0 * 3.0 + offset);
            if spent > 0.0 {
                let from = m.period_start(start);
                m.observe(from, from + ms(spent), ms(spent), false);
            }
            let o = m.outlook(start, ms(cpu), None);
            assert!(
                (lo..=hi).contains(&o.p_throttled),
                "{spent} spent, {cpu} ms: p {}",
                o.p_throttled
            );
            assert!(close(o.fits, ms(cpu)), "{:?}", o.fits);
            assert!(
                close(o.throttled, ms(throttled_ms)),
                "{spent} spent, {cpu} ms: throttled {:?}",
                o.throttled
            );
        }
    }

    #[test]
    fn the_odds_are_learned_per_demand_and_rest() {
        let (mut m, t0) = model();
        // Every 24 ms: a rested period lets a 1.3 ms run through at its
        // start; in the next, busy, one a 1.3 ms run from 1 ms is
        // throttled and ends 0.3 ms into the third, which leaves the
        // following period rested again.
        for k in 0..80u32 {
            let a = t0 + ms(24.0 * f64::from(k));
            m.observe(a, a + ms(1.3), ms(1.3), false);
            let b = a + ms(8.0);
            m.observe(b + ms(1.0), b + ms(8.3), ms(1.3), true);
        }
        let a = t0 + ms(24.0 * 80.0);
        let rested = m.outlook(a + ms(1.0), ms(1.3), None);
        assert!(rested.p_throttled < 0.1, "rested: {}", rested.p_throttled);
        assert_eq!(rested.likely(), rested.fits);
        m.observe(a, a + ms(1.3), ms(1.3), false);
        let busy = m.outlook(a + ms(9.0), ms(1.3), None);
        assert!(busy.p_throttled > 0.9, "busy: {}", busy.p_throttled);
        assert_eq!(busy.likely(), busy.throttled);
        assert!(close(busy.throttled, ms(7.0 + 0.3)), "{:?}", busy.throttled);
    }

    #[test]
    fn a_throttled_run_spends_the_period_it_ends_in() {
        let (mut m, t0) = model();
        // From 5 ms into a period, 1.2 ms of CPU: 1 ms at once, throttled
        // until 8 ms, then 0.2 ms.
        let start = t0 + ms(5.0);
        m.observe(start, t0 + ms(8.2), ms(1.2), true);
        assert!(close(m.used(t0, t0 + ms(8.0)), ms(1.0)));
        assert!(close(m.used(t0 + ms(8.0), t0 + ms(16.0)), ms(0.2)));
        // A run of 0.9 ms there asks 1.1 quotas of a period after a busy
        // one: the prior's fifth.
        let o = m.outlook(t0 + ms(9.0), ms(0.9), None);
        assert!((o.p_throttled - 0.2).abs() < 0.01, "{}", o.p_throttled);
        // A queue ahead until 12 ms spends the quota: a certain throttle,
        // the whole run after 16 ms.
        let queued = m.outlook(t0 + ms(12.0), ms(0.9), Some(t0 + ms(9.0)));
        assert!(queued.p_throttled > 0.99, "{}", queued.p_throttled);
        assert!(
            close(queued.throttled, ms(4.0 + 0.9)),
            "{:?}",
            queued.throttled
        );
    }

    #[test]
    fn other_threads_stretch_the_runs_and_old_runs_are_dropped() {
        let (mut m, t0) = model();
        // Runs of 0.4 ms CPU taking 0.8 ms, one per period.
        for k in 0..300u32 {
            let s = t0 + ms(8.0 * f64::from(k) + 1.0);
            m.observe(s, s + ms(0.8), ms(0.4), false);
        }
        let o = m.outlook(t0 + ms(8.0 * 300.0 + 1.0), ms(0.4), None);
        assert!(o.fits.abs_diff(ms(0.8)) < ms(0.01), "{:?}", o.fits);
        assert!(m.ran.len() <= 4, "{}", m.ran.len());
    }
}
