//! How much of its CPU allowance a process has used lately. Under a quota
//! (a cgroup's `cpu.max`), a process that has spent its allowance stops
//! until the next period: every path through it stalls, its offloads too.
//! Work a path adds on the edge is priced at this load as well as at the
//! workers' ([`super::LoadMeter`]): a pool of idle workers says nothing of
//! a process at its quota.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

/// The process's CPU time used, sampled now and then, over a sliding
/// window, against its allowance in cores.
#[derive(Debug, Clone)]
pub struct CpuMeter {
    allowance: f64,
    window: Duration,
    /// (when, CPU time used by then), oldest first: the samples within the
    /// window and the last one before it.
    samples: VecDeque<(Instant, Duration)>,
}

impl CpuMeter {
    /// Samples closer together than this are not kept: a reading's cost
    /// and the meter's memory stay bounded at any task rate.
    pub const SPACING: Duration = Duration::from_millis(20);

    /// A meter over the last `window` for a process allowed `allowance`
    /// cores (at least a hundredth of one).
    pub fn new(allowance: f64, window: Duration) -> Self {
        let allowance = if allowance.is_finite() {
            allowance.max(0.01)
        } else {
            1.0
        };
        Self {
            allowance,
            window: window.max(Self::SPACING * 5),
            samples: VecDeque::new(),
        }
    }

    /// The cores the process is allowed.
    pub fn allowance(&self) -> f64 {
        self.allowance
    }

    /// Whether a sample taken at `now` would be kept (callers skip reading
    /// the process's clock otherwise).
    pub fn wants_sample(&self, now: Instant) -> bool {
        self.samples
            .back()
            .is_none_or(|(t, _)| now.saturating_duration_since(*t) >= Self::SPACING)
    }

    /// The process had used `used` CPU time by `now`. A sample too close to
    /// the last one, or one whose time runs backwards, is not kept.
    pub fn observe(&mut self, now: Instant, used: Duration) {
        if !self.wants_sample(now) || self.samples.back().is_some_and(|(_, u)| used < *u) {
            return;
        }
        self.samples.push_back((now, used));
        let start = now.checked_sub(self.window);
        while start.is_some_and(|s| self.samples.len() > 2 && self.samples[1].0 <= s) {
            self.samples.pop_front();
        }
    }

    /// The share of the allowance used between the oldest kept sample and
    /// the latest, in 0..=1; 0 while they span less than a fifth of the
    /// window, or when the latest is older than the window (no recent
    /// figure: an idle process).
    pub fn load(&self, now: Instant) -> f64 {
        let (Some(&(t0, u0)), Some(&(t1, u1))) = (self.samples.front(), self.samples.back()) else {
            return 0.0;
        };
        let span = t1.saturating_duration_since(t0);
        if span < self.window / 5 || now.saturating_duration_since(t1) > self.window {
            return 0.0;
        }
        let used = u1.saturating_sub(u0).as_secs_f64();
        (used / (span.as_secs_f64() * self.allowance)).clamp(0.0, 1.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    /// Feeds a process using `share` of one core, sampled every `every`
    /// from `from` to `to` (ms after t0), continuing from `used`.
    fn run(
        m: &mut CpuMeter,
        t0: Instant,
        (from, to, every): (u64, u64, u64),
        share: f64,
        used: &mut Duration,
    ) {
        let mut t = from;
        while t <= to {
            m.observe(t0 + ms(t), *used);
            *used += ms(every).mul_f64(share);
            t += every;
        }
    }

    #[test]
    fn load_is_the_used_share_of_the_allowance() {
        // (allowance in cores, share of one core used, expected load)
        let cases = [
            (1.0, 0.5, 0.5),
            (0.25, 0.2, 0.8),
            (0.25, 0.5, 1.0),
            (2.0, 1.0, 0.5),
            (1.0, 0.0, 0.0),
        ];
        for (allowance, share, want) in cases {
            let t0 = Instant::now();
            let mut m = CpuMeter::new(allowance, ms(1000));
            let mut used = Duration::ZERO;
            run(&mut m, t0, (0, 3000, 25), share, &mut used);
            let got = m.load(t0 + ms(3000));
            assert!(
                (got - want).abs() < 1e-6,
                "{allowance} cores, {share}: {got}"
            );
        }
    }

    #[test]
    fn the_window_forgets_and_an_idle_process_reads_zero() {
        let t0 = Instant::now();
        let mut m = CpuMeter::new(1.0, ms(1000));
        let mut used = Duration::ZERO;
        // Busy for 2 s, then at a tenth.
        run(&mut m, t0, (0, 2000, 50), 1.0, &mut used);
        run(&mut m, t0, (2050, 4000, 50), 0.1, &mut used);
        let got = m.load(t0 + ms(4000));
        assert!((got - 0.1).abs() < 1e-6, "{got}");
        // Kept: the window's samples and one before it.
        assert!(m.samples.len() <= 1000 / 50 + 2, "{}", m.samples.len());
        // No sample for longer than the window: no figure.
        assert_eq!(m.load(t0 + ms(5100)), 0.0);
    }

    #[test]
    fn too_little_history_and_odd_samples_count_for_nothing() {
        let t0 = Instant::now();
        let mut m = CpuMeter::new(1.0, ms(1000));
        assert_eq!(m.load(t0), 0.0);
        m.observe(t0, ms(100));
        // Too close to the last sample: skipped.
        assert!(!m.wants_sample(t0 + ms(5)));
        m.observe(t0 + ms(5), ms(105));
        assert_eq!(m.samples.len(), 1);
        // Less than a fifth of the window: no figure yet.
        m.observe(t0 + ms(100), ms(150));
        assert_eq!(m.load(t0 + ms(100)), 0.0);
        // A counter running backwards is ignored.
        m.observe(t0 + ms(200), ms(120));
        assert_eq!(m.samples.len(), 2);
        m.observe(t0 + ms(300), ms(250));
        assert!((m.load(t0 + ms(300)) - 0.5).abs() < 1e-9);
        // An allowance that is not a number counts as one core.
        assert_eq!(CpuMeter::new(f64::NAN, ms(1000)).allowance(), 1.0);
        assert_eq!(CpuMeter::new(0.0, ms(1000)).allowance(), 0.01);
    }
}
