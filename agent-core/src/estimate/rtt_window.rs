//! Sliding window of RTT samples with the statistics the cost model needs.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

/// The last `capacity` RTT samples of one source, in milliseconds.
#[derive(Debug, Clone)]
pub struct RttWindow {
    capacity: usize,
    samples: VecDeque<f64>,
    last_at: Option<Instant>,
    srtt: Option<f64>,
    /// RFC 3550-style jitter: J += (|D| - J) / 16 over consecutive RTTs.
    rfc3550: f64,
}

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
            last_at: None,
            srtt: None,
            rfc3550: 0.0,
        }
    }

    pub fn push(&mut self, at: Instant, rtt: Duration) {
        let ms = rtt.as_secs_f64() * 1e3;
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
        }
        self.samples.push_back(ms);
        self.last_at = Some(self.last_at.map_or(at, |l| l.max(at)));
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
            let lo = pos.floor() as usize;
            let hi = pos.ceil() as usize;
            sorted[lo] + (sorted[hi] - sorted[lo]) * (pos - lo as f64)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(v: f64) -> Duration {
        Duration::from_secs_f64(v / 1e3)
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
    fn quantiles_interpolate() {
        let v: Vec<f64> = (1..=101).map(f64::from).collect();
        assert_eq!(quantile(&v, 0.5), 51.0);
        assert_eq!(quantile(&v, 0.95), 96.0);
        assert_eq!(quantile(&v, 0.0), 1.0);
        assert_eq!(quantile(&v, 1.0), 101.0);
        assert!(quantile(&[], 0.5).is_nan());
    }
}
