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
    /// Per key: how a batch's time grows with its size.
    batch: HashMap<K, BatchFit>,
    fallback: Duration,
}

/// A decaying least-squares fit of batch time = a + b * size, from the
/// batches run (size 1 included). Until two sizes have been seen, a batch
/// is assumed to cost `size` single runs (no gain claimed before measured).
#[derive(Debug, Clone, Copy, Default)]
struct BatchFit {
    w: f64,
    n: f64,
    y: f64,
    nn: f64,
    ny: f64,
}

impl BatchFit {
    /// Weight kept per new observation: about the last 50 batches count.
    const DECAY: f64 = 0.98;

    fn observe(&mut self, size: f64, secs: f64) {
        let d = Self::DECAY;
        self.w = self.w * d + 1.0;
        self.n = self.n * d + size;
        self.y = self.y * d + secs;
        self.nn = self.nn * d + size * size;
        self.ny = self.ny * d + size * secs;
    }

    /// T(size) / T(1), within [1, size].
    fn scale(&self, size: usize) -> f64 {
        let size = size.max(1) as f64;
        if size <= 1.0 {
            return 1.0;
        }
        let mean_n = self.n / self.w.max(f64::MIN_POSITIVE);
        let var_n = self.nn / self.w.max(f64::MIN_POSITIVE) - mean_n * mean_n;
        if self.w < 2.0 || var_n < 0.05 {
            return size;
        }
        let mean_y = self.y / self.w;
        let b = (self.ny / self.w - mean_n * mean_y) / var_n;
        let a = mean_y - b * mean_n;
        let t1 = a + b;
        if t1.is_nan() || t1 <= 0.0 || !b.is_finite() {
            return size;
        }
        ((a + b * size) / t1).clamp(1.0, size)
    }
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
            batch: HashMap::new(),
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
        self.batch.remove(&key);
    }

    /// A batch of `size` tasks took `measured`: the batch fit learns from
    /// it, and the single-task estimate from its single-task equivalent.
    pub fn observe_batch(&mut self, key: K, size: usize, measured: Duration) {
        let fit = self.batch.entry(key).or_default();
        fit.observe(size.max(1) as f64, measured.as_secs_f64());
        let scale = fit.scale(size);
        self.observe_single(key, measured.div_f64(scale));
    }

    /// How much longer a batch of `size` takes than one task (1 for one
    /// task; `size` until batches of several sizes have been measured).
    pub fn batch_scale(&self, key: K, size: usize) -> f64 {
        match self.batch.get(&key) {
            Some(fit) => fit.scale(size),
            None if size <= 1 => 1.0,
            None => size as f64,
        }
    }

    pub fn observe(&mut self, key: K, measured: Duration) {
        self.batch
            .entry(key)
            .or_default()
            .observe(1.0, measured.as_secs_f64());
        self.observe_single(key, measured);
    }

    fn observe_single(&mut self, key: K, measured: Duration) {
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
    fn batches_learn_their_gain_and_keep_the_single_estimate() {
        let mut m = ExecTimeModel::new(0.3, Duration::from_millis(1));
        // Before any batch of several: no gain is claimed.
        assert_eq!(m.batch_scale(1, 8), 8.0);
        // A batch costs 4 ms + 1 ms per task: T(1) = 5 ms, T(8) = 12 ms.
        for i in 0..60 {
            let size = [1usize, 2, 4, 8][i % 4];
            let t = Duration::from_secs_f64((4.0 + size as f64) / 1e3);
            if size == 1 {
                m.observe(1, t);
            } else {
                m.observe_batch(1, size, t);
            }
        }
        let s8 = m.batch_scale(1, 8);
        assert!((s8 - 12.0 / 5.0).abs() < 0.05, "{s8}");
        assert_eq!(m.batch_scale(1, 1), 1.0);
        let t1 = m.estimate(1).as_secs_f64() * 1e3;
        assert!((t1 - 5.0).abs() < 0.1, "{t1}");
        // A fit that would make batches faster than one task is clamped.
        let mut odd = ExecTimeModel::new(0.3, Duration::from_millis(1));
        for i in 0..20 {
            let size = [1usize, 8][i % 2];
            let ms = if size == 1 { 10.0 } else { 2.0 };
            odd.observe_batch(1, size, Duration::from_secs_f64(ms / 1e3));
        }
        assert_eq!(odd.batch_scale(1, 8), 1.0);
    }

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
