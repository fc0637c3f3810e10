//! Per-packet delay: a fixed delay plus a jitter value drawn from a
//! distribution and held for `jitter_hold_ms`.

use super::Nanos;
use crate::params::{JitterDistribution, LinkParams};
use rand::Rng;
use rand_distr::{Distribution, Normal, Pareto};

/// Pareto shape used for `pareto` jitter: heavy-tailed but with a finite
/// variance, so `jitter_ms` can be its standard deviation.
const PARETO_SHAPE: f64 = 3.0;

/// Draws jitter offsets (in ns, zero mean) of the configured distribution.
#[derive(Debug, Clone)]
pub struct JitterDraw {
    dist: JitterDistribution,
    jitter_ns: f64,
    normal: Option<Normal<f64>>,
    pareto: Option<(Pareto<f64>, f64)>,
}

impl JitterDraw {
    pub fn new(dist: JitterDistribution, jitter_ms: f64) -> Self {
        let jitter_ns = jitter_ms * 1e6;
        let mut d = JitterDraw {
            dist,
            jitter_ns,
            normal: None,
            pareto: None,
        };
        if jitter_ns > 0.0 {
            match dist {
                JitterDistribution::Normal => d.normal = Normal::new(0.0, jitter_ns).ok(),
                JitterDistribution::Pareto => {
                    // sd of Pareto(xm, a) is xm * sqrt(a) / ((a - 1) * sqrt(a - 2));
                    // its mean a * xm / (a - 1) is subtracted for a zero-mean offset.
                    let a = PARETO_SHAPE;
                    let xm = jitter_ns * (a - 1.0) * (a - 2.0).sqrt() / a.sqrt();
                    let mean = a * xm / (a - 1.0);
                    d.pareto = Pareto::new(xm, a).ok().map(|p| (p, mean));
                }
                JitterDistribution::Uniform => {}
            }
        }
        d
    }

    /// One zero-mean jitter offset in ns.
    pub fn sample<R: Rng>(&self, rng: &mut R) -> f64 {
        if self.jitter_ns <= 0.0 {
            return 0.0;
        }
        match self.dist {
            JitterDistribution::Uniform => rng.random_range(-self.jitter_ns..=self.jitter_ns),
            JitterDistribution::Normal => self.normal.map_or(0.0, |n| n.sample(rng)),
            JitterDistribution::Pareto => self.pareto.map_or(0.0, |(p, mean)| p.sample(rng) - mean),
        }
    }
}

/// Fixed delay plus held jitter. A new jitter value is drawn for the first
/// packet at or after the end of the previous hold interval.
#[derive(Debug, Clone)]
pub struct DelayModel {
    delay_ns: f64,
    hold_ns: Nanos,
    draw: JitterDraw,
    held: f64,
    hold_until: Option<Nanos>,
}

impl DelayModel {
    pub fn new(p: &LinkParams) -> Self {
        DelayModel {
            delay_ns: p.delay_ms * 1e6,
            hold_ns: (p.jitter_hold_ms * 1e6) as Nanos,
            draw: JitterDraw::new(p.jitter_distribution, p.jitter_ms),
            held: 0.0,
            hold_until: None,
        }
    }

    /// The one-way delay (ns, never negative) for a packet entering at `now`.
    pub fn delay<R: Rng>(&mut self, now: Nanos, rng: &mut R) -> Nanos {
        let fresh = match self.hold_until {
            Some(until) => now >= until,
            None => true,
        };
        if fresh {
            self.held = self.draw.sample(rng);
            self.hold_until = Some(now + self.hold_ns);
        }
        (self.delay_ns + self.held).max(0.0).round() as Nanos
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::test_util::{mean_sd, rng};

    fn draws(dist: JitterDistribution, jitter_ms: f64, n: usize) -> Vec<f64> {
        let d = JitterDraw::new(dist, jitter_ms);
        let mut r = rng(7);
        (0..n).map(|_| d.sample(&mut r) / 1e6).collect()
    }

    #[test]
    fn normal_jitter_has_configured_sd() {
        let (m, sd) = mean_sd(&draws(JitterDistribution::Normal, 5.0, 100_000));
        assert!(m.abs() < 0.05, "mean {m}");
        assert!((sd - 5.0).abs() < 0.05, "sd {sd}");
    }

    #[test]
    fn uniform_jitter_is_plus_minus_jitter() {
        let v = draws(JitterDistribution::Uniform, 2.0, 100_000);
        let (m, sd) = mean_sd(&v);
        assert!(m.abs() < 0.02, "mean {m}");
        assert!((sd - 2.0 / 3f64.sqrt()).abs() < 0.02, "sd {sd}");
        assert!(v.iter().all(|x| x.abs() <= 2.0));
    }

    #[test]
    fn pareto_jitter_is_zero_mean_skewed_with_configured_sd() {
        let mut v = draws(JitterDistribution::Pareto, 10.0, 100_000);
        let (m, sd) = mean_sd(&v);
        assert!(m.abs() < 0.2, "mean {m}");
        // The 4th moment is infinite at shape 3, so the sample sd converges slowly.
        assert!((sd - 10.0).abs() < 1.5, "sd {sd}");
        v.sort_by(|a, b| a.partial_cmp(b).unwrap());
        let median = v[v.len() / 2];
        assert!(median < -1.0, "skewed upward: median {median} below mean");
        let floor = -10.0 * (2.0 / 3f64.sqrt()) * 0.5;
        assert!(v[0] >= floor - 1e-9, "bounded below at {floor}: {}", v[0]);
    }

    #[test]
    fn held_jitter_changes_only_after_hold_interval() {
        let p = LinkParams {
            delay_ms: 20.0,
            jitter_ms: 5.0,
            jitter_hold_ms: 10.0,
            ..Default::default()
        };
        let mut m = DelayModel::new(&p);
        let mut r = rng(1);
        let ms = 1_000_000;
        let a = m.delay(0, &mut r);
        assert_eq!(m.delay(3 * ms, &mut r), a);
        assert_eq!(m.delay(9 * ms, &mut r), a);
        let b = m.delay(10 * ms, &mut r);
        assert_ne!(a, b);
        assert_eq!(m.delay(19 * ms, &mut r), b);
    }

    #[test]
    fn delay_never_negative_and_mean_matches_without_clamping() {
        let p = LinkParams {
            delay_ms: 20.0,
            jitter_ms: 5.0,
            jitter_hold_ms: 0.0,
            ..Default::default()
        };
        let mut m = DelayModel::new(&p);
        let mut r = rng(3);
        let v: Vec<f64> = (0..100_000u64)
            .map(|i| m.delay(i * 1000, &mut r) as f64 / 1e6)
            .collect();
        let (mean, sd) = mean_sd(&v);
        assert!((mean - 20.0).abs() < 0.05, "mean {mean}");
        assert!((sd - 5.0).abs() < 0.05, "sd {sd}");
        let big = LinkParams {
            delay_ms: 1.0,
            jitter_ms: 10.0,
            jitter_hold_ms: 0.0,
            ..Default::default()
        };
        let mut m = DelayModel::new(&big);
        assert!((0..1000).all(|i| m.delay(i, &mut r) < 200_000_000));
    }
}
