//! What the predictions missed: per key (path and task type), the recent
//! residuals `actual - predicted median` (ms) of tasks that ran where the
//! decision sent them. Their median moves the next prediction, so the
//! outlooks absorb what the model leaves out (CPU contention among the
//! edge's own threads, stream setup, serialization) and their medians stay
//! on what actually happens.

use std::collections::{HashMap, VecDeque};
use std::hash::Hash;
use std::time::{Duration, Instant};

#[derive(Debug, Clone)]
pub struct Residuals<K> {
    capacity: usize,
    /// Residuals needed before they are used.
    min_samples: usize,
    /// Residuals observed with a time are ignored once older than this: a
    /// path (an endpoint) that gets no tasks would otherwise keep the
    /// penalty of its last bad moment for ever and never be tried again.
    max_age: Option<Duration>,
    by_key: HashMap<K, VecDeque<(Option<Instant>, f64)>>,
}

impl<K: Eq + Hash + Copy> Residuals<K> {
    pub fn new(capacity: usize, min_samples: usize) -> Self {
        Self {
            capacity: capacity.max(1),
            min_samples: min_samples.max(1),
            max_age: None,
            by_key: HashMap::new(),
        }
    }

    /// Residuals observed with [`Residuals::observe_at`] count for `max_age`.
    pub fn with_max_age(mut self, max_age: Duration) -> Self {
        self.max_age = Some(max_age);
        self
    }

    pub fn observe(&mut self, key: K, residual_ms: f64) {
        self.push(key, None, residual_ms);
    }

    /// [`Residuals::observe`] at `now`, so that the residual ages.
    pub fn observe_at(&mut self, key: K, residual_ms: f64, now: Instant) {
        self.push(key, Some(now), residual_ms);
    }

    fn push(&mut self, key: K, at: Option<Instant>, residual_ms: f64) {
        if !residual_ms.is_finite() {
            return;
        }
        let q = self.by_key.entry(key).or_default();
        if q.len() == self.capacity {
            q.pop_front();
        }
        q.push_back((at, residual_ms));
    }

    /// Drops the residuals of the keys `matches` picks that were observed
    /// at or after `since` (an outage's, once it is over).
    pub fn forget_since(&mut self, matches: impl Fn(&K) -> bool, since: Instant) {
        for (_, q) in self.by_key.iter_mut().filter(|(k, _)| matches(k)) {
            q.retain(|(at, _)| at.is_none_or(|at| at < since));
        }
    }

    /// The recent residuals, sorted; empty until `min_samples` are in.
    pub fn sorted_ms(&self, key: K) -> Vec<f64> {
        self.select(key, None)
    }

    /// [`Residuals::sorted_ms`] without those older than the maximum age at
    /// `now`.
    pub fn sorted_ms_at(&self, key: K, now: Instant) -> Vec<f64> {
        self.select(key, Some(now))
    }

    fn select(&self, key: K, now: Option<Instant>) -> Vec<f64> {
        let fresh = |at: &Option<Instant>| match (now, *at, self.max_age) {
            (Some(now), Some(at), Some(max)) => now.saturating_duration_since(at) <= max,
            _ => true,
        };
        let mut v: Vec<f64> = self
            .by_key
            .get(&key)
            .map(|q| {
                q.iter()
                    .filter(|(at, _)| fresh(at))
                    .map(|(_, r)| *r)
                    .collect()
            })
            .unwrap_or_default();
        if v.len() < self.min_samples {
            return Vec::new();
        }
        v.sort_by(f64::total_cmp);
        v
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

    #[test]
    fn an_outage_s_residuals_are_forgotten_for_the_keys_picked() {
        let t0 = Instant::now();
        let at = |s: u64| t0 + Duration::from_secs(s);
        let mut r = Residuals::new(8, 1);
        for (key, s, v) in [
            ("a", 0, 1.0),
            ("a", 5, 300.0),
            ("b", 5, 2.0),
            ("a", 6, 250.0),
        ] {
            r.observe_at(key, v, at(s));
        }
        r.observe("a", 3.0);
        r.forget_since(|k| *k == "a", at(5));
        assert_eq!(r.sorted_ms("a"), vec![1.0, 3.0]);
        assert_eq!(r.sorted_ms("b"), vec![2.0]);
    }

    #[test]
    fn timed_residuals_age_out() {
        let t0 = Instant::now();
        let mut r = Residuals::new(8, 2).with_max_age(Duration::from_secs(10));
        r.observe_at("a", 40.0, t0);
        r.observe_at("a", 50.0, t0 + Duration::from_secs(1));
        assert_eq!(
            r.sorted_ms_at("a", t0 + Duration::from_secs(5)),
            vec![40.0, 50.0]
        );
        // One aged out: too few left to use.
        assert!(r
            .sorted_ms_at("a", t0 + Duration::from_millis(10_500))
            .is_empty());
        r.observe_at("a", 1.0, t0 + Duration::from_secs(10));
        assert_eq!(
            r.sorted_ms_at("a", t0 + Duration::from_millis(10_500)),
            vec![1.0, 50.0]
        );
        assert!(r.sorted_ms_at("a", t0 + Duration::from_secs(30)).is_empty());
    }
}
