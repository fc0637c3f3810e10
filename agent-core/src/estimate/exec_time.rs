//! Self-calibrating execution-time estimates: an EWMA of measured latencies
//! per key (task type), seeded from configuration.

use std::collections::HashMap;
use std::hash::Hash;
use std::time::Duration;

#[derive(Debug, Clone)]
pub struct ExecTimeModel<K> {
    alpha: f64,
    seeds: HashMap<K, Duration>,
    ewma: HashMap<K, f64>,
    fallback: Duration,
}

impl<K: Eq + Hash + Copy> ExecTimeModel<K> {
    /// `alpha` is the weight of a new measurement; `fallback` is used for
    /// keys with neither a seed nor a measurement.
    pub fn new(alpha: f64, fallback: Duration) -> Self {
        Self {
            alpha: alpha.clamp(0.0, 1.0),
            seeds: HashMap::new(),
            ewma: HashMap::new(),
            fallback,
        }
    }

    pub fn seed(&mut self, key: K, expected: Duration) {
        self.seeds.insert(key, expected);
    }

    pub fn observe(&mut self, key: K, measured: Duration) {
        let m = measured.as_secs_f64();
        let alpha = self.alpha;
        self.ewma
            .entry(key)
            .and_modify(|e| *e += alpha * (m - *e))
            .or_insert(m);
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
}
