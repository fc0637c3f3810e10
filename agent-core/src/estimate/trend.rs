//! Holt's linear trend over the RTT, for a short-horizon forecast: samples
//! are averaged per fixed time step (passive samples arrive in bursts of
//! many per millisecond, so a per-sample slope would be noise), and each
//! finished step updates a smoothed level and a smoothed slope.

use std::time::{Duration, Instant};

#[derive(Debug, Clone)]
pub struct HoltTrend {
    step: Duration,
    /// Weight of a new step's mean in the level.
    alpha: f64,
    /// Weight of a new slope in the trend.
    beta: f64,
    level: Option<f64>,
    /// Milliseconds of RTT per second.
    trend: f64,
    /// The step being filled: its start, sum and count.
    open: Option<(Instant, f64, u32)>,
    /// Start of the step that last updated the level.
    last_step: Option<Instant>,
}

impl Default for HoltTrend {
    fn default() -> Self {
        Self::new(Duration::from_millis(250), 0.5, 0.3)
    }
}

impl HoltTrend {
    pub fn new(step: Duration, alpha: f64, beta: f64) -> Self {
        Self {
            step: step.max(Duration::from_millis(1)),
            alpha: alpha.clamp(0.0, 1.0),
            beta: beta.clamp(0.0, 1.0),
            level: None,
            trend: 0.0,
            open: None,
            last_step: None,
        }
    }

    pub fn push(&mut self, at: Instant, ms: f64) {
        if !ms.is_finite() {
            return;
        }
        match self.open {
            Some((start, sum, n)) if at.saturating_duration_since(start) < self.step => {
                self.open = Some((start, sum + ms, n + 1));
            }
            Some((start, sum, n)) => {
                self.close(start, sum / f64::from(n));
                self.open = Some((at, ms, 1));
            }
            None => self.open = Some((at, ms, 1)),
        }
    }

    fn close(&mut self, start: Instant, mean: f64) {
        match (self.level, self.last_step) {
            (Some(level), Some(prev)) => {
                let dt = start
                    .saturating_duration_since(prev)
                    .as_secs_f64()
                    .max(1e-3);
                let predicted = level + self.trend * dt;
                let new_level = self.alpha * mean + (1.0 - self.alpha) * predicted;
                let slope = (new_level - level) / dt;
                self.trend = self.beta * slope + (1.0 - self.beta) * self.trend;
                self.level = Some(new_level);
            }
            _ => self.level = Some(mean),
        }
        self.last_step = Some(start);
    }

    /// Starts over at `level` with no trend (after a detected shift).
    pub fn reset(&mut self, at: Instant, level: f64) {
        self.level = Some(level);
        self.trend = 0.0;
        self.open = None;
        self.last_step = Some(at);
    }

    /// The slope in ms of RTT per second (0 until two steps are in).
    pub fn trend_ms_per_s(&self) -> f64 {
        self.trend
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn feed(h: &mut HoltTrend, t0: Instant, from_ms: u64, to_ms: u64, rtt: impl Fn(f64) -> f64) {
        for t in (from_ms..to_ms).step_by(10) {
            h.push(t0 + Duration::from_millis(t), rtt(t as f64 / 1e3));
        }
    }

    #[test]
    fn a_ramp_is_forecast_and_a_flat_link_is_not() {
        let t0 = Instant::now();
        /// (name, RTT over time, expected slope)
        type Ramp = (&'static str, fn(f64) -> f64, f64);
        let cases: [Ramp; 3] = [
            ("flat", |_| 40.0, 0.0),
            ("rising 20 ms/s", |t| 40.0 + 20.0 * t, 20.0),
            ("falling 5 ms/s", |t| 80.0 - 5.0 * t, -5.0),
        ];
        for (name, rtt, slope) in cases {
            let mut h = HoltTrend::default();
            feed(&mut h, t0, 0, 10_000, rtt);
            let got = h.trend_ms_per_s();
            assert!((got - slope).abs() < 0.5, "{name}: {got}");
        }
    }

    #[test]
    fn reset_forgets_the_trend() {
        let t0 = Instant::now();
        let mut h = HoltTrend::default();
        feed(&mut h, t0, 0, 5_000, |t| 40.0 + 20.0 * t);
        assert!(h.trend_ms_per_s() > 10.0);
        h.reset(t0 + Duration::from_secs(5), 200.0);
        assert_eq!(h.trend_ms_per_s(), 0.0);
        feed(&mut h, t0, 5_000, 8_000, |_| 200.0);
        assert!(h.trend_ms_per_s().abs() < 0.5, "{}", h.trend_ms_per_s());
        // Bursts of samples inside one step count once, as their mean.
        let mut b = HoltTrend::default();
        for _ in 0..1000 {
            b.push(t0, f64::NAN);
            b.push(t0, 10.0);
        }
        assert_eq!(b.trend_ms_per_s(), 0.0);
    }
}
