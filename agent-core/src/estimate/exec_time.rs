//! Self-calibrating execution-time estimates: an EWMA of measured latencies
//! per key (task type), seeded from configuration, and the most recent
//! measurements, whose spread the decision uses as the distribution.

use std::collections::{HashMap, VecDeque};
use std::hash::Hash;
use std::time::Duration;

#[derive(Debug, Clone)]
pub struct ExecTimeModel<K> {
    alpha: f64,
    seeds: HashMap<K, Duration>,
    ewma: HashMap<K, f64>,
    recent: HashMap<K, VecDeque<f64>>,
    fallback: Duration,
}

/// Measurements kept per key for the distribution.
const RECENT: usize = 32;

impl<K: Eq + Hash + Copy> ExecTimeModel<K> {
    /// `alpha` is the weight of a new measurement; `fallback` is used for
    /// keys with neither a seed nor a measurement.
    pub fn new(alpha: f64, fallback: Duration) -> Self {
        Self {
            alpha: alpha.clamp(0.0, 1.0),
            seeds: HashMap::new(),
            ewma: HashMap::new(),
            recent: HashMap::new(),
            fallback,
        }
    }

    pub fn seed(&mut self, key: K, expected: Duration) {
        self.seeds.insert(key, expected);
    }

    /// Drops what was measured for `key` (a new model serves it): the seed
    /// stands until the new model's first measurement.
    pub fn forget(&mut self, key: K) {
        self.ewma.remove(&key);
        self.recent.remove(&key);
    }

    pub fn observe(&mut self, key: K, measured: Duration) {
        let m = measured.as_secs_f64();
        let alpha = self.alpha;
        self.ewma
            .entry(key)
            .and_modify(|e| *e += alpha * (m - *e))
            .or_insert(m);
        let recent = self.recent.entry(key).or_default();
        if recent.len() == RECENT {
            recent.pop_front();
        }
        recent.push_back(m);
    }

    /// The distribution of the next measurement, in milliseconds, sorted:
    /// the recent measurements re-centred on the EWMA (the spread comes
    /// from the window, the level from the faster-moving average); the
    /// point estimate alone until something was measured.
    pub fn distribution_ms(&self, key: K) -> Vec<f64> {
        let level = self.estimate(key).as_secs_f64() * 1e3;
        let Some(recent) = self.recent.get(&key).filter(|r| r.len() >= 2) else {
            return vec![level];
        };
        let mean = recent.iter().sum::<f64>() / recent.len() as f64 * 1e3;
        let mut v: Vec<f64> = recent
            .iter()
            .map(|m| (m * 1e3 - mean + level).max(0.0))
            .collect();
        v.sort_by(f64::total_cmp);
        v
    }

    pub fn estimate(&self, key: K) -> Duration {
        match self.ewma.get(&key) {
            Some(&e) => Duration::from_secs_f64(e),
            None => self.seeds.get(&key).copied().unwrap_or(self.fallback),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn forget_falls_back_to_the_new_seed() {
        let mut m = ExecTimeModel::new(0.5, Duration::from_millis(1));
        m.seed(1, Duration::from_millis(10));
        m.observe(1, Duration::from_millis(40));
        m.observe(1, Duration::from_millis(40));
        assert_eq!(m.estimate(1), Duration::from_millis(40));
        m.seed(1, Duration::from_millis(20));
        m.forget(1);
        assert_eq!(m.estimate(1), Duration::from_millis(20));
        assert_eq!(m.distribution_ms(1), vec![20.0]);
    }

    #[test]
    fn seed_then_calibrate() {
        let mut m = ExecTimeModel::new(0.5, Duration::from_millis(10));
        assert_eq!(m.estimate(1), Duration::from_millis(10));
        m.seed(1, Duration::from_millis(4));
        assert_eq!(m.estimate(1), Duration::from_millis(4));
        m.observe(1, Duration::from_millis(2));
        assert_eq!(m.estimate(1), Duration::from_millis(2));
        m.observe(1, Duration::from_millis(4));
        assert_eq!(m.estimate(1), Duration::from_millis(3));
        assert_eq!(m.estimate(2), Duration::from_millis(10));
    }

    #[test]
    fn distribution_keeps_the_spread_around_the_level() {
        let mut m = ExecTimeModel::new(1.0, Duration::from_millis(10));
        assert_eq!(m.distribution_ms(1), vec![10.0]);
        m.observe(1, Duration::from_millis(8));
        assert_eq!(m.distribution_ms(1), vec![8.0]);
        for v in [12, 10, 14] {
            m.observe(1, Duration::from_millis(v));
        }
        // Mean of the window 11, level (alpha 1: the last) 14.
        let d = m.distribution_ms(1);
        let want = [11.0, 13.0, 15.0, 17.0];
        assert!(
            d.iter().zip(want).all(|(a, b)| (a - b).abs() < 1e-9),
            "{d:?}"
        );
        for _ in 0..100 {
            m.observe(1, Duration::from_millis(5));
        }
        assert_eq!(m.distribution_ms(1).len(), RECENT);
    }
}
