//! What the predictions missed: per key (path and task type), the recent
//! residuals of tasks that ran where the decision sent them, at each of a
//! few quantile levels: `actual - the predicted distribution's quantile`
//! at that level ([`LEVELS`]). The quantile of each level's residuals at
//! that same level is what that quantile of the next prediction moves by
//! ([`Correction`]), so the outlooks absorb what the model leaves out (CPU
//! contention among the edge's own threads, stream setup, serialization,
//! a lost packet's recovery) in their median and in their tails: a
//! prediction whose spread is too narrow misses by more at its high
//! levels and is widened there, one that is right gets moved by nothing.
//! (Conformalized quantile regression, one correction per level.)

use crate::estimate::quantile;
use std::collections::{HashMap, VecDeque};
use std::hash::Hash;
use std::time::{Duration, Instant};

/// The quantile levels a prediction is checked at.
pub const LEVELS: [f64; 7] = [0.05, 0.25, 0.5, 0.75, 0.9, 0.95, 0.99];

/// One value per level of [`LEVELS`].
pub type Levels = [f64; LEVELS.len()];

/// What a predicted distribution's quantiles move by, per level of
/// [`LEVELS`] (ms).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Correction(pub Levels);

impl Correction {
    /// The same shift at every level.
    pub fn flat(ms: f64) -> Self {
        Correction([ms; LEVELS.len()])
    }

    /// The shift at quantile level `q`: interpolated between the levels,
    /// the nearest level's beyond them.
    pub fn at(&self, q: f64) -> f64 {
        let c = &self.0;
        let i = LEVELS.partition_point(|l| *l < q);
        if i == 0 {
            return c[0];
        }
        if i == LEVELS.len() {
            return c[i - 1];
        }
        let (l0, l1) = (LEVELS[i - 1], LEVELS[i]);
        c[i - 1] + (c[i] - c[i - 1]) * (q - l0) / (l1 - l0)
    }
}

/// A prediction's quantiles at [`LEVELS`], from its values (sorted).
pub fn levels_of(sorted: &[f64]) -> Levels {
    LEVELS.map(|l| quantile(sorted, l))
}

#[derive(Debug, Clone)]
pub struct Residuals<K> {
    capacity: usize,
    /// Residuals needed before they are used.
    min_samples: usize,
    /// Residuals observed with a time are ignored once older than this: a
    /// path (an endpoint) that gets no tasks would otherwise keep the
    /// penalty of its last bad moment for ever and never be tried again.
    max_age: Option<Duration>,
    by_key: HashMap<K, VecDeque<(Option<Instant>, Levels)>>,
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

    /// A task took `actual_ms`; its prediction's quantiles at [`LEVELS`]
    /// were `predicted`.
    pub fn observe(&mut self, key: K, actual_ms: f64, predicted: &Levels) {
        self.push(key, None, actual_ms, predicted);
    }

    /// [`Residuals::observe`] at `now`, so that the residual ages.
    pub fn observe_at(&mut self, key: K, actual_ms: f64, predicted: &Levels, now: Instant) {
        self.push(key, Some(now), actual_ms, predicted);
    }

    fn push(&mut self, key: K, at: Option<Instant>, actual_ms: f64, predicted: &Levels) {
        let row = predicted.map(|p| actual_ms - p);
        if row.iter().any(|r| !r.is_finite()) {
            return;
        }
        let q = self.by_key.entry(key).or_default();
        if q.len() == self.capacity {
            q.pop_front();
        }
        q.push_back((at, row));
    }

    /// Drops the residuals of the keys `matches` picks that were observed
    /// at or after `since` (an outage's, once it is over).
    pub fn forget_since(&mut self, matches: impl Fn(&K) -> bool, since: Instant) {
        for (_, q) in self.by_key.iter_mut().filter(|(k, _)| matches(k)) {
            q.retain(|(at, _)| at.is_none_or(|at| at < since));
        }
    }

    /// The correction the recent residuals make; `None` until
    /// `min_samples` are in.
    pub fn correction(&self, key: K) -> Option<Correction> {
        self.select(key, None)
    }

    /// [`Residuals::correction`] without those older than the maximum age
    /// at `now`.
    pub fn correction_at(&self, key: K, now: Instant) -> Option<Correction> {
        self.select(key, Some(now))
    }

    fn select(&self, key: K, now: Option<Instant>) -> Option<Correction> {
        let fresh = |at: &Option<Instant>| match (now, *at, self.max_age) {
            (Some(now), Some(at), Some(max)) => now.saturating_duration_since(at) <= max,
            _ => true,
        };
        let rows: Vec<&Levels> = self
            .by_key
            .get(&key)?
            .iter()
            .filter(|(at, _)| fresh(at))
            .map(|(_, r)| r)
            .collect();
        if rows.len() < self.min_samples {
            return None;
        }
        let mut column = Vec::with_capacity(rows.len());
        let mut out = [0.0; LEVELS.len()];
        for (i, (slot, level)) in out.iter_mut().zip(LEVELS).enumerate() {
            column.clear();
            column.extend(rows.iter().map(|r| r[i]));
            column.sort_by(f64::total_cmp);
            *slot = quantile(&column, level);
        }
        Some(Correction(out))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A prediction with the same value at every level.
    fn flat(ms: f64) -> Levels {
        [ms; LEVELS.len()]
    }

    #[test]
    fn keeps_the_latest_per_key_once_there_are_enough() {
        let mut r = Residuals::new(3, 2);
        r.observe("a", 5.0, &flat(0.0));
        assert_eq!(r.correction("a"), None);
        r.observe("a", f64::NAN, &flat(0.0));
        assert_eq!(r.correction("a"), None);
        // The first (5) drops out: -2, 1, 9 remain.
        for v in [1.0, -2.0, 9.0] {
            r.observe("a", v, &flat(0.0));
        }
        let c = r.correction("a").unwrap();
        for (got, level) in c.0.iter().zip(LEVELS) {
            assert_eq!(*got, quantile(&[-2.0, 1.0, 9.0], level), "level {level}");
        }
        assert_eq!(c.0[2], 1.0);
        assert_eq!(r.correction("b"), None);
    }

    #[test]
    fn each_level_moves_by_its_own_residuals() {
        // Predicted 10 ms at the median and 12 ms at every upper level;
        // the tasks take 10 ms, but one in four takes 40 ms. The median
        // stays; the upper levels move up by what the slow quarter adds.
        let predicted = [8.0, 9.0, 10.0, 12.0, 12.0, 12.0, 12.0];
        let mut r = Residuals::new(16, 4);
        for actual in [10.0, 10.0, 10.0, 40.0].repeat(4) {
            r.observe("a", actual, &predicted);
        }
        let c = r.correction("a").unwrap();
        let want = [
            (0, 2.0),  // 10 - 8, the lowest quantile of 2s and 32s
            (2, 0.0),  // the median residual at the median: 0
            (4, 28.0), // the top quarter: 40 - 12
            (6, 28.0),
        ];
        for (i, w) in want {
            assert!((c.0[i] - w).abs() < 1e-9, "level {}: {:?}", LEVELS[i], c);
        }
    }

    #[test]
    fn a_correction_is_interpolated_between_levels() {
        let c = Correction([1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0]);
        for (q, want) in [
            (0.0, 1.0),
            (0.05, 1.0),
            (0.15, 1.5),
            (0.5, 3.0),
            (0.925, 5.5),
            (0.99, 7.0),
            (1.0, 7.0),
        ] {
            assert!((c.at(q) - want).abs() < 1e-9, "{q}: {}", c.at(q));
        }
        assert_eq!(Correction::flat(-3.0).at(0.7), -3.0);
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
            r.observe_at(key, v, &flat(0.0), at(s));
        }
        r.observe("a", 3.0, &flat(0.0));
        r.forget_since(|k| *k == "a", at(5));
        // 1 and 3 remain: at every level between them.
        let c = r.correction("a").unwrap();
        assert!(c.0.iter().all(|v| (1.0..=3.0).contains(v)), "{c:?}");
        assert_eq!(r.correction("b"), Some(Correction::flat(2.0)));
    }

    #[test]
    fn timed_residuals_age_out() {
        let t0 = Instant::now();
        let mut r = Residuals::new(8, 2).with_max_age(Duration::from_secs(10));
        r.observe_at("a", 40.0, &flat(0.0), t0);
        r.observe_at("a", 50.0, &flat(0.0), t0 + Duration::from_secs(1));
        let median = |c: Option<Correction>| c.map(|c| c.0[2]);
        assert_eq!(
            median(r.correction_at("a", t0 + Duration::from_secs(5))),
            Some(45.0)
        );
        // One aged out: too few left to use.
        assert_eq!(
            r.correction_at("a", t0 + Duration::from_millis(10_500)),
            None
        );
        r.observe_at("a", 1.0, &flat(0.0), t0 + Duration::from_secs(10));
        assert_eq!(
            median(r.correction_at("a", t0 + Duration::from_millis(10_500))),
            Some(25.5)
        );
        assert_eq!(r.correction_at("a", t0 + Duration::from_secs(30)), None);
    }
}
