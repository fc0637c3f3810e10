//! What the predictions missed: per key (path and task type), the recent
//! residuals `actual - predicted` (ms) of tasks that ran where the decision
//! sent them. Their distribution is added to the next prediction, so the
//! outlooks absorb what the model leaves out (CPU contention among the
//! edge's own threads, stream setup, serialization) and stay calibrated
//! against what actually happens.

use std::collections::{HashMap, VecDeque};
use std::hash::Hash;

#[derive(Debug, Clone)]
pub struct Residuals<K> {
    capacity: usize,
    /// Residuals needed before they are used.
    min_samples: usize,
    by_key: HashMap<K, VecDeque<f64>>,
}

impl<K: Eq + Hash + Copy> Residuals<K> {
    pub fn new(capacity: usize, min_samples: usize) -> Self {
        Self {
            capacity: capacity.max(1),
            min_samples: min_samples.max(1),
            by_key: HashMap::new(),
        }
    }

    pub fn observe(&mut self, key: K, residual_ms: f64) {
        if !residual_ms.is_finite() {
            return;
        }
        let q = self.by_key.entry(key).or_default();
        if q.len() == self.capacity {
            q.pop_front();
        }
        q.push_back(residual_ms);
    }

    /// The recent residuals, sorted; empty until `min_samples` are in.
    pub fn sorted_ms(&self, key: K) -> Vec<f64> {
        match self.by_key.get(&key) {
            Some(q) if q.len() >= self.min_samples => {
                let mut v: Vec<f64> = q.iter().copied().collect();
                v.sort_by(f64::total_cmp);
                v
            }
            _ => Vec::new(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_the_latest_per_key_once_there_are_enough() {
        let mut r = Residuals::new(3, 2);
        r.observe("a", 5.0);
        assert!(r.sorted_ms("a").is_empty());
        r.observe("a", f64::NAN);
        assert!(r.sorted_ms("a").is_empty());
        for v in [1.0, -2.0, 9.0] {
            r.observe("a", v);
        }
        assert_eq!(r.sorted_ms("a"), vec![-2.0, 1.0, 9.0]);
        assert!(r.sorted_ms("b").is_empty());
    }
}
