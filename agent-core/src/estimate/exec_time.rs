//! Self-calibrating execution-time estimates: an EWMA of measured latencies
//! per key (task type), seeded from configuration, and the most recent
//! measurements, whose spread the decision uses as the distribution.
//!
//! The seed counts as the first measurement, and measurements made with a
//! time ([`ExecTimeModel::observe_at`]) lose their weight to the seed once
//! they are old ([`ExecTimeModel::with_aging`]): a path is measured only
//! when tasks take it, so one slow run (the first under a CPU quota right
//! after start took 16 times the seed) would otherwise keep the path
//! looking slow, unused and never measured again.

use std::collections::{HashMap, VecDeque};
use std::hash::Hash;
use std::time::{Duration, Instant};

#[derive(Debug, Clone)]
pub struct ExecTimeModel<K> {
    alpha: f64,
    seeds: HashMap<K, Duration>,
    ewma: HashMap<K, f64>,
    recent: HashMap<K, VecDeque<f64>>,
    /// Per key: how a batch's time grows with its size.
    batch: HashMap<K, BatchFit>,
    fallback: Duration,
    /// Per key: when the newest timed measurement was made.
    last_at: HashMap<K, Instant>,
    aging: Option<Aging>,
}

/// How measurements give way to the seed as they age.
#[derive(Debug, Clone, Copy)]
struct Aging {
    /// Full weight for this long after the newest measurement...
    fresh_for: Duration,
    /// ...then half of what is left every `half_life`.
    half_life: Duration,
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
            last_at: HashMap::new(),
            aging: None,
        }
    }

    /// Measurements made with a time keep their full weight for
    /// `fresh_for`, then lose half of it to the seed every `half_life`.
    pub fn with_aging(mut self, fresh_for: Duration, half_life: Duration) -> Self {
        self.aging = Some(Aging {
            fresh_for,
            half_life: half_life.max(Duration::from_millis(1)),
        });
        self
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
        self.last_at.remove(&key);
    }

    /// A batch of `size` tasks took `measured`: the batch fit learns from
    /// it, and the single-task estimate from its single-task equivalent.
    pub fn observe_batch(&mut self, key: K, size: usize, measured: Duration) {
        let fit = self.batch.entry(key).or_default();
        fit.observe(size.max(1) as f64, measured.as_secs_f64());
        let scale = fit.scale(size);
        self.observe_single(key, measured.div_f64(scale), None);
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

    /// [`ExecTimeModel::observe_batch`] at `now`, so that it ages.
    pub fn observe_batch_at(&mut self, key: K, size: usize, measured: Duration, now: Instant) {
        let fit = self.batch.entry(key).or_default();
        fit.observe(size.max(1) as f64, measured.as_secs_f64());
        let scale = fit.scale(size);
        self.observe_single(key, measured.div_f64(scale), Some(now));
    }

    /// [`ExecTimeModel::observe`] at `now`, so that it ages.
    pub fn observe_at(&mut self, key: K, measured: Duration, now: Instant) {
        self.observe_batch_at(key, 1, measured, now);
    }

    pub fn observe(&mut self, key: K, measured: Duration) {
        self.observe_batch(key, 1, measured);
    }

    fn observe_single(&mut self, key: K, measured: Duration, now: Option<Instant>) {
        let m = measured.as_secs_f64();
        let alpha = self.alpha;
        // From the level the measurements had decayed to, or the seed.
        let from = self
            .level(key, now)
            .or_else(|| self.seeds.get(&key).map(Duration::as_secs_f64));
        self.ewma
            .insert(key, from.map_or(m, |e| e + alpha * (m - e)));
        if let Some(now) = now {
            self.last_at.insert(key, now);
        }
        let recent = self.recent.entry(key).or_default();
        if recent.len() == RECENT {
            recent.pop_front();
        }
        recent.push_back(m);
    }

    /// The distribution of the next measurement, in milliseconds, sorted:
    /// the recent measurements as they were; the point estimate alone
    /// until two were made. Not re-centred on the EWMA: under a CPU quota
    /// one run in a few waits for a later quota period, and each such run
    /// moved the EWMA, and with it every value, by a fifth of its excess.
    pub fn distribution_ms(&self, key: K) -> Vec<f64> {
        self.distribution_at(key, None)
    }

    /// [`ExecTimeModel::distribution_ms`] at `now`: aged measurements move
    /// with the level as it decays towards the seed.
    pub fn distribution_ms_at(&self, key: K, now: Instant) -> Vec<f64> {
        self.distribution_at(key, Some(now))
    }

    fn distribution_at(&self, key: K, now: Option<Instant>) -> Vec<f64> {
        let level = self.estimate_at_opt(key, now).as_secs_f64() * 1e3;
        let Some(recent) = self.recent.get(&key).filter(|r| r.len() >= 2) else {
            return vec![level];
        };
        let aged = self
            .level(key, None)
            .map_or(0.0, |fresh| level - fresh * 1e3);
        let mut v: Vec<f64> = recent.iter().map(|m| (m * 1e3 + aged).max(0.0)).collect();
        v.sort_by(f64::total_cmp);
        v
    }

    pub fn estimate(&self, key: K) -> Duration {
        self.estimate_at_opt(key, None)
    }

    /// [`ExecTimeModel::estimate`] at `now`: aged measurements give way to
    /// the seed.
    pub fn estimate_at(&self, key: K, now: Instant) -> Duration {
        self.estimate_at_opt(key, Some(now))
    }

    fn estimate_at_opt(&self, key: K, now: Option<Instant>) -> Duration {
        match self.level(key, now) {
            Some(e) => Duration::from_secs_f64(e),
            None => self.seeds.get(&key).copied().unwrap_or(self.fallback),
        }
    }

    /// The EWMA (seconds), decayed towards the seed by its age at `now`
    /// (`None`: its value when last measured); `None` before any
    /// measurement.
    fn level(&self, key: K, now: Option<Instant>) -> Option<f64> {
        let e = *self.ewma.get(&key)?;
        let decayed = |now: Instant| {
            let aging = self.aging?;
            let seed = self.seeds.get(&key)?.as_secs_f64();
            let idle = now
                .saturating_duration_since(*self.last_at.get(&key)?)
                .saturating_sub(aging.fresh_for);
            let kept = 0.5f64.powf(idle.as_secs_f64() / aging.half_life.as_secs_f64());
            Some(seed + (e - seed) * kept)
        };
        Some(now.and_then(decayed).unwrap_or(e))
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
        // 10 -> 25 -> 32.5 (alpha 0.5 from the seed).
        assert_eq!(m.estimate(1), Duration::from_micros(32_500));
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
        // The seed counts as the first measurement.
        m.observe(1, Duration::from_millis(2));
        assert_eq!(m.estimate(1), Duration::from_millis(3));
        m.observe(1, Duration::from_millis(5));
        assert_eq!(m.estimate(1), Duration::from_millis(4));
        assert_eq!(m.estimate(2), Duration::from_millis(10));
        // Without a seed, the first measurement is the estimate.
        m.observe(3, Duration::from_millis(7));
        assert_eq!(m.estimate(3), Duration::from_millis(7));
    }

    #[test]
    fn old_measurements_give_way_to_the_seed() {
        let ms = Duration::from_millis;
        let close = |d: Duration, want_ms: f64| (d.as_secs_f64() * 1e3 - want_ms).abs() < 1e-6;
        let t0 = Instant::now();
        let mut m = ExecTimeModel::new(1.0, ms(1)).with_aging(ms(2000), ms(1000));
        m.seed(1, ms(15));
        // One slow run (alpha 1: it is the level).
        m.observe_at(1, ms(235), t0);
        // (seconds after it, expected level ms)
        for (s, want) in [
            (0.0, 235.0),
            (2.0, 235.0),
            (3.0, 125.0),
            (4.0, 70.0),
            (12.0, 15.21484375),
        ] {
            let now = t0 + Duration::from_secs_f64(s);
            assert!(
                close(m.estimate_at(1, now), want),
                "{s} s: {:?}",
                m.estimate_at(1, now)
            );
            // One measurement: the distribution is the level alone.
            let d = m.distribution_ms_at(1, now);
            assert!(d.len() == 1 && (d[0] - want).abs() < 1e-6, "{s} s: {d:?}");
        }
        // Without a time, nothing ages.
        assert_eq!(m.estimate(1), ms(235));
        // A new measurement starts from the decayed level (alpha 0.5 here).
        let mut h = ExecTimeModel::new(0.5, ms(1)).with_aging(ms(2000), ms(1000));
        h.seed(1, ms(15));
        h.observe_at(1, ms(215), t0);
        assert!(close(h.estimate_at(1, t0), 115.0));
        let later = t0 + Duration::from_secs(3);
        // Decayed to 15 + 100 / 2 = 65; the new 25 ms run halves the way.
        h.observe_at(1, ms(25), later);
        assert!(
            close(h.estimate_at(1, later), 45.0),
            "{:?}",
            h.estimate_at(1, later)
        );
        // Without a seed there is nothing to give way to.
        let mut n = ExecTimeModel::new(1.0, ms(1)).with_aging(ms(10), ms(10));
        n.observe_at(1, ms(50), t0);
        assert_eq!(n.estimate_at(1, t0 + Duration::from_secs(60)), ms(50));
    }

    #[test]
    fn distribution_is_the_window_as_measured() {
        let mut m = ExecTimeModel::new(1.0, Duration::from_millis(10));
        assert_eq!(m.distribution_ms(1), vec![10.0]);
        m.observe(1, Duration::from_millis(8));
        assert_eq!(m.distribution_ms(1), vec![8.0]);
        for v in [12, 10, 14] {
            m.observe(1, Duration::from_millis(v));
        }
        // The level (alpha 1: the last, 14) does not move the window.
        let d = m.distribution_ms(1);
        let want = [8.0, 10.0, 12.0, 14.0];
        assert!(
            d.iter().zip(want).all(|(a, b)| (a - b).abs() < 1e-9),
            "{d:?}"
        );
        for _ in 0..100 {
            m.observe(1, Duration::from_millis(5));
        }
        assert_eq!(m.distribution_ms(1).len(), RECENT);
        // Aged, the window moves with the level towards the seed.
        let ms = Duration::from_millis;
        let t0 = Instant::now();
        let mut a = ExecTimeModel::new(1.0, ms(1)).with_aging(ms(2000), ms(1000));
        a.seed(1, ms(15));
        a.observe_at(1, ms(30), t0);
        a.observe_at(1, ms(40), t0);
        assert_eq!(a.distribution_ms_at(1, t0), vec![30.0, 40.0]);
        // 3 s later half the way to the seed: level 27.5, 12.5 lower.
        let d = a.distribution_ms_at(1, t0 + Duration::from_secs(3));
        assert!(
            d.len() == 2 && (d[0] - 17.5).abs() < 1e-9 && (d[1] - 27.5).abs() < 1e-9,
            "{d:?}"
        );
    }
}
