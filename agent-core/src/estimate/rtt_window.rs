//! Sliding window of RTT samples with the statistics the cost model needs;
//! it forgets the samples before a detected shift of the RTT level.

use super::shift::{Shift, ShiftDetector};
use super::trend::HoltTrend;
use std::collections::VecDeque;
use std::time::{Duration, Instant};

/// The last `capacity` RTT samples of one source, in milliseconds.
#[derive(Debug, Clone)]
pub struct RttWindow {
    capacity: usize,
    samples: VecDeque<f64>,
    /// When each sample was taken (same order as `samples`).
    taken: VecDeque<Instant>,
    /// Samples older than this (behind the newest) leave the window.
    max_age: Option<Duration>,
    last_at: Option<Instant>,
    srtt: Option<f64>,
    /// RFC 3550-style jitter: J += (|D| - J) / 16 over consecutive RTTs.
    rfc3550: f64,
    detector: ShiftDetector,
    trend: HoltTrend,
    shifts: u64,
    last_shift: Option<(Instant, Shift)>,
}

/// Samples a window needs before it looks for shifts.
const MIN_FOR_SHIFTS: usize = 8;

/// Summary of a window; all figures in milliseconds.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct WindowStats {
    pub samples: usize,
    pub srtt_ms: f64,
    pub mean_ms: f64,
    /// Sample standard deviation over the window.
    pub stddev_ms: f64,
    pub rfc3550_ms: f64,
    pub p50_ms: f64,
    pub p95_ms: f64,
    pub p99_ms: f64,
}

impl RttWindow {
    pub fn new(capacity: usize) -> Self {
        assert!(capacity >= 2, "a jitter window needs at least two samples");
        Self {
            capacity,
            samples: VecDeque::with_capacity(capacity),
            taken: VecDeque::with_capacity(capacity),
            max_age: None,
            last_at: None,
            srtt: None,
            rfc3550: 0.0,
            detector: ShiftDetector::default(),
            trend: HoltTrend::default(),
            shifts: 0,
            last_shift: None,
        }
    }

    /// Samples taken more than `max_age` before the newest leave the
    /// window, whatever their number: when traffic to a host thins to a
    /// trickle (no task goes there), a count alone kept the samples of a
    /// jittery spell for a minute after the link had calmed, the host kept
    /// looking jittery, and no task went there to show otherwise.
    pub fn with_max_age(mut self, max_age: Duration) -> Self {
        self.max_age = Some(max_age);
        self
    }

    pub fn push(&mut self, at: Instant, rtt: Duration) {
        let ms = rtt.as_secs_f64() * 1e3;
        self.watch_for_shift(at, ms);
        self.trend.push(at, ms);
        if let Some(&prev) = self.samples.back() {
            self.rfc3550 += ((ms - prev).abs() - self.rfc3550) / 16.0;
        }
        // RFC 6298 smoothing (alpha = 1/8).
        self.srtt = Some(match self.srtt {
            None => ms,
            Some(s) => s + (ms - s) / 8.0,
        });
        if self.samples.len() == self.capacity {
            self.samples.pop_front();
            self.taken.pop_front();
        }
        self.samples.push_back(ms);
        self.taken.push_back(at);
        let newest = self.last_at.map_or(at, |l| l.max(at));
        self.last_at = Some(newest);
        if let Some(oldest) = self.max_age.and_then(|a| newest.checked_sub(a)) {
            while self.samples.len() > 1 && self.taken.front().is_some_and(|t| *t < oldest) {
                self.samples.pop_front();
                self.taken.pop_front();
            }
        }
    }

    /// Tests `ms` against the window's level (median) and scale (MAD); on
    /// a shift, keeps only the samples of the new level.
    fn watch_for_shift(&mut self, at: Instant, ms: f64) {
        if self.samples.len() < MIN_FOR_SHIFTS {
            return;
        }
        let mut sorted: Vec<f64> = self.samples.iter().copied().collect();
        sorted.sort_by(f64::total_cmp);
        let median = quantile(&sorted, 0.5);
        let mut dev: Vec<f64> = sorted.iter().map(|x| (x - median).abs()).collect();
        dev.sort_by(f64::total_cmp);
        // 1.4826 x MAD estimates the sd of normal noise; the floors keep a
        // perfectly steady link from alarming on a 1 % wobble.
        let scale = (1.4826 * quantile(&dev, 0.5)).max(0.05 * median).max(0.05);
        if let Some((shift, run)) = self.detector.push(ms, median, scale) {
            // `run` counts this sample too; the others are the newest ones.
            let keep = run.saturating_sub(1).min(self.samples.len());
            let forget = self.samples.len() - keep;
            self.samples.drain(..forget);
            self.taken.drain(..forget);
            let level = self.samples.iter().chain([&ms]).sum::<f64>() / (keep + 1) as f64;
            self.srtt = Some(level);
            self.trend.reset(at, level);
            self.shifts += 1;
            self.last_shift = Some((at, shift));
        }
    }

    /// Shifts detected so far, and the latest one.
    pub fn shifts(&self) -> (u64, Option<(Instant, Shift)>) {
        (self.shifts, self.last_shift)
    }

    /// The RTT's trend (Holt), ms per second.
    pub fn trend_ms_per_s(&self) -> f64 {
        self.trend.trend_ms_per_s()
    }

    /// The window's samples in milliseconds, sorted.
    pub fn sorted_ms(&self) -> Vec<f64> {
        let mut v: Vec<f64> = self.samples.iter().copied().collect();
        v.sort_by(f64::total_cmp);
        v
    }

    pub fn len(&self) -> usize {
        self.samples.len()
    }

    pub fn is_empty(&self) -> bool {
        self.samples.is_empty()
    }

    pub fn last_at(&self) -> Option<Instant> {
        self.last_at
    }

    pub fn stats(&self) -> Option<WindowStats> {
        let n = self.samples.len();
        if n == 0 {
            return None;
        }
        let mean = self.samples.iter().sum::<f64>() / n as f64;
        let stddev = if n > 1 {
            let ss: f64 = self.samples.iter().map(|x| (x - mean).powi(2)).sum();
            (ss / (n - 1) as f64).sqrt()
        } else {
            0.0
        };
        let mut sorted: Vec<f64> = self.samples.iter().copied().collect();
        sorted.sort_by(|a, b| a.total_cmp(b));
        Some(WindowStats {
            samples: n,
            srtt_ms: self.srtt.unwrap_or(mean),
            mean_ms: mean,
            stddev_ms: stddev,
            rfc3550_ms: self.rfc3550,
            p50_ms: quantile(&sorted, 0.50),
            p95_ms: quantile(&sorted, 0.95),
            p99_ms: quantile(&sorted, 0.99),
        })
    }
}

/// Linear-interpolated quantile of sorted data (the "type 7" definition).
pub fn quantile(sorted: &[f64], q: f64) -> f64 {
    match sorted.len() {
        0 => f64::NAN,
        1 => sorted[0],
        n => {
            let pos = q.clamp(0.0, 1.0) * (n - 1) as f64;
            let (lo, hi) = floor_ceil(pos);
            sorted[lo] + (sorted[hi] - sorted[lo]) * (pos - lo as f64)
        }
    }
}

/// `pos.floor()` and `pos.ceil()` as indices for a `pos` >= 0, without
/// the library calls they compile to on a baseline x86-64 (a decision
/// computes some fifty quantiles).
pub(crate) fn floor_ceil(pos: f64) -> (usize, usize) {
    let lo = pos as usize;
    (lo, if (lo as f64) < pos { lo + 1 } else { lo })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(v: f64) -> Duration {
        Duration::from_secs_f64(v / 1e3)
    }

    #[test]
    fn floor_and_ceil_as_indices() {
        for (pos, want) in [
            (0.0, (0, 0)),
            (2.0, (2, 2)),
            (2.25, (2, 3)),
            (254.99, (254, 255)),
        ] {
            assert_eq!(floor_ceil(pos), want, "{pos}");
        }
    }

    #[test]
    fn constant_rtt_has_zero_jitter() {
        let t0 = Instant::now();
        let mut w = RttWindow::new(60);
        for i in 0..100 {
            w.push(t0 + Duration::from_millis(i), ms(20.0));
        }
        let s = w.stats().unwrap();
        assert_eq!(s.samples, 60);
        assert!((s.mean_ms - 20.0).abs() < 1e-9);
        assert!(s.stddev_ms.abs() < 1e-9);
        assert!(s.rfc3550_ms.abs() < 1e-9);
        assert!((s.p99_ms - 20.0).abs() < 1e-9);
    }

    #[test]
    fn alternating_rtt_stats_match_hand_computation() {
        // 10, 30, 10, 30, ...: mean 20, sample sd = sqrt(100 * n / (n - 1)).
        let t0 = Instant::now();
        let mut w = RttWindow::new(4);
        for (i, v) in [10.0, 30.0, 10.0, 30.0].iter().enumerate() {
            w.push(t0 + Duration::from_millis(i as u64), ms(*v));
        }
        let s = w.stats().unwrap();
        assert!((s.mean_ms - 20.0).abs() < 1e-9);
        assert!((s.stddev_ms - (400.0f64 / 3.0).sqrt()).abs() < 1e-9);
        // RFC 3550: three differences of 20 ms: J = 20 * (1 - (15/16)^3).
        let expect = 20.0 * (1.0 - (15.0f64 / 16.0).powi(3));
        assert!((s.rfc3550_ms - expect).abs() < 1e-9);
        assert!((s.p50_ms - 20.0).abs() < 1e-9);
    }

    #[test]
    fn samples_older_than_the_maximum_age_leave_even_a_thin_window() {
        let t0 = Instant::now();
        let at = |ms: u64| t0 + Duration::from_millis(ms);
        let mut w = RttWindow::new(60).with_max_age(Duration::from_secs(5));
        // A busy spell, 40 samples in 2 s...
        for i in 0..40 {
            w.push(at(i * 50), ms(if i % 2 == 0 { 24.0 } else { 26.0 }));
        }
        assert_eq!(w.len(), 40);
        // ...then a trickle of samples at its median (no shift), one
        // a second: at 6 s the spell's samples before 1 s have left...
        for s in 3..=6 {
            w.push(at(s * 1000), ms(25.0));
        }
        assert_eq!(w.len(), 20 + 4);
        // ...and at 7.95 s all of them.
        w.push(at(7000), ms(25.0));
        w.push(at(7950), ms(25.0));
        assert_eq!(w.sorted_ms(), vec![25.0; 6]);
        assert!(w.stats().unwrap().stddev_ms.abs() < 1e-9);
        // The newest sample always stays, however old the others.
        w.push(at(60_000), ms(25.0));
        assert_eq!(w.len(), 1);
        // Without a maximum age only the count bounds the window.
        let mut w = RttWindow::new(60);
        w.push(at(0), ms(5.0));
        w.push(at(60_000), ms(8.0));
        assert_eq!(w.len(), 2);
    }

    #[test]
    fn window_forgets_old_samples() {
        let t0 = Instant::now();
        let mut w = RttWindow::new(60);
        for i in 0..60 {
            w.push(t0 + Duration::from_millis(i), ms(100.0));
        }
        for i in 60..120 {
            w.push(t0 + Duration::from_millis(i), ms(5.0));
        }
        let s = w.stats().unwrap();
        assert!((s.mean_ms - 5.0).abs() < 1e-9, "{s:?}");
        assert_eq!(w.last_at(), Some(t0 + Duration::from_millis(119)));
    }

    #[test]
    fn a_step_of_the_level_empties_the_old_window() {
        let t0 = Instant::now();
        let mut w = RttWindow::new(60);
        let jitter = |i: u64| if i.is_multiple_of(2) { 1.0 } else { -1.0 };
        for i in 0..60 {
            w.push(t0 + Duration::from_millis(i), ms(40.0 + jitter(i)));
        }
        assert_eq!(w.shifts().0, 0);
        for i in 60..70 {
            w.push(t0 + Duration::from_millis(i), ms(80.0 + jitter(i)));
        }
        let (n, last) = w.shifts();
        assert_eq!(n, 1);
        assert_eq!(last.map(|(_, s)| s), Some(Shift::Up));
        let s = w.stats().unwrap();
        // Only the new level is left: 4 samples at the alarm, then 6 more.
        assert_eq!(s.samples, 10);
        assert!(
            (s.mean_ms - 80.0).abs() < 1.0 && (s.srtt_ms - 80.0).abs() < 1.0,
            "{s:?}"
        );
        assert_eq!(w.sorted_ms().len(), 10);
    }

    #[test]
    fn stationary_heavy_tail_rarely_resets_the_window() {
        // Deterministic pareto-like stream: mostly 20 ms, one in 10 long.
        let t0 = Instant::now();
        let mut w = RttWindow::new(60);
        for i in 0..2000u64 {
            let v = if i % 10 == 3 {
                20.0 + (i % 7) as f64 * 30.0
            } else {
                20.0 + (i % 3) as f64
            };
            w.push(t0 + Duration::from_millis(i), ms(v));
        }
        assert_eq!(w.shifts().0, 0);
        assert_eq!(w.len(), 60);
    }

    #[test]
    fn quantiles_interpolate() {
        let v: Vec<f64> = (1..=101).map(f64::from).collect();
        assert_eq!(quantile(&v, 0.5), 51.0);
        assert_eq!(quantile(&v, 0.95), 96.0);
        assert_eq!(quantile(&v, 0.0), 1.0);
        assert_eq!(quantile(&v, 1.0), 101.0);
        assert!(quantile(&[], 0.5).is_nan());
    }
}
