//! The task stream of a scenario, drawn from `workload.seed` alone: every
//! policy gets the same tasks (send time, image, priority, deadline) in the
//! same order, so task `seq` can be compared across runs.

use anyhow::{ensure, Result};
use jitter_lab::scenario::{Arrival, Workload};
use rand::distr::weighted::WeightedIndex;
use rand::distr::Distribution;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use rand_distr::Exp;
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PlannedTask {
    pub seq: u32,
    /// Send time, milliseconds after the workload starts.
    pub at_ms: f64,
    pub task: String,
    pub priority: String,
    pub deadline_ms: Option<u64>,
    /// Index into the test set (the image and its label).
    pub sample: usize,
    /// How the payload is sent (`TaskMix::format`; empty: as stored).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub format: String,
}

/// Every task sent in `duration_s` seconds; `samples` is the test set size.
///
/// Arrivals follow the workload's piecewise-constant rate by time
/// rescaling: task n arrives when the expected number of arrivals so far,
/// the integral of the rate, reaches u_n, where u_n grows by an Exp(1) draw
/// per task (Poisson) or by exactly 1 (uniform).
pub fn plan(w: &Workload, duration_s: f64, samples: usize) -> Result<Vec<PlannedTask>> {
    ensure!(samples > 0, "the test set is empty");
    let segments = w.segments();
    ensure!(
        segments.iter().all(|&(_, r)| r.is_finite() && r >= 0.0)
            && segments.iter().any(|&(_, r)| r > 0.0),
        "the arrival rates must be >= 0 and not all 0"
    );
    let weights: Vec<f64> = w.mix.iter().map(|m| m.weight).collect();
    let pick = WeightedIndex::new(&weights)?;
    let unit_gap = Exp::new(1.0)?;
    let mut rng = StdRng::seed_from_u64(w.seed);
    let end_ms = duration_s * 1e3;
    let mut out = Vec::new();
    let mut expected = 0.0;
    loop {
        // One draw per field, always in this order, so the stream depends on
        // the seed only (and a shorter run is a prefix of a longer one).
        expected = match w.arrival {
            Arrival::Poisson => expected + unit_gap.sample(&mut rng),
            Arrival::Uniform => (out.len() + 1) as f64,
        };
        let mix = &w.mix[pick.sample(&mut rng)];
        let sample = rng.random_range(0..samples);
        let Some(t_s) = time_of(&segments, expected) else {
            break;
        };
        let at_ms = t_s * 1e3;
        if at_ms >= end_ms {
            break;
        }
        out.push(PlannedTask {
            seq: out.len() as u32,
            at_ms,
            task: mix.task.clone(),
            priority: mix.priority.clone(),
            deadline_ms: mix.deadline_ms,
            sample,
            format: mix.format.clone(),
        });
    }
    Ok(out)
}

/// When the integral of the rate reaches `expected`; `None` if it never
/// does (the last rate is 0).
fn time_of(segments: &[(f64, f64)], expected: f64) -> Option<f64> {
    let mut so_far = 0.0;
    for (i, &(start, rate)) in segments.iter().enumerate() {
        let end = segments.get(i + 1).map_or(f64::INFINITY, |s| s.0);
        let here = rate * (end - start);
        if rate > 0.0 && so_far + here >= expected {
            return Some(start + (expected - so_far) / rate);
        }
        so_far += here;
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use jitter_lab::scenario::{RatePhase, TaskMix};

    fn workload(arrival: Arrival) -> Workload {
        Workload {
            seed: 7,
            tasks_per_s: 20.0,
            arrival,
            mix: vec![
                TaskMix {
                    task: "image_classification".into(),
                    weight: 0.75,
                    deadline_ms: Some(100),
                    priority: "medium".into(),
                    format: String::new(),
                },
                TaskMix {
                    task: "image_classification".into(),
                    weight: 0.25,
                    deadline_ms: None,
                    priority: "low".into(),
                    format: "png".into(),
                },
            ],
            phases: Vec::new(),
        }
    }

    fn phase(at_s: f64, tasks_per_s: f64) -> RatePhase {
        RatePhase {
            at_s,
            tasks_per_s,
            note: String::new(),
        }
    }

    #[test]
    fn phases_shape_the_arrivals() {
        // 20/s, a burst of 100/s for 10 s, 10 s idle, then 20/s again.
        let mut w = workload(Arrival::Poisson);
        w.phases = vec![phase(100.0, 100.0), phase(110.0, 0.0), phase(120.0, 20.0)];
        let p = plan(&w, 200.0, 10).unwrap();
        let count = |a: f64, b: f64| {
            p.iter()
                .filter(|t| t.at_ms >= a * 1e3 && t.at_ms < b * 1e3)
                .count() as f64
        };
        // Poisson counts: 2000 +- 45, 1000 +- 32, 0, 1600 +- 40.
        assert!((count(0.0, 100.0) - 2000.0).abs() < 200.0);
        assert!((count(100.0, 110.0) - 1000.0).abs() < 130.0);
        assert_eq!(count(110.0, 120.0), 0.0);
        assert!((count(120.0, 200.0) - 1600.0).abs() < 160.0);
        // Uniform: exact spacing in each phase, nothing while idle.
        w.arrival = Arrival::Uniform;
        w.tasks_per_s = 0.0;
        w.phases = vec![phase(1.0, 10.0), phase(2.0, 0.0)];
        let at: Vec<f64> = plan(&w, 5.0, 10).unwrap().iter().map(|t| t.at_ms).collect();
        assert_eq!(at.len(), 10, "{at:?}");
        assert!((at[0] - 1100.0).abs() < 1e-6 && (at[9] - 2000.0).abs() < 1e-6);
    }

    #[test]
    fn same_seed_same_stream_and_shorter_is_a_prefix() {
        let w = workload(Arrival::Poisson);
        let a = plan(&w, 60.0, 100).unwrap();
        assert_eq!(a, plan(&w, 60.0, 100).unwrap());
        let short = plan(&w, 10.0, 100).unwrap();
        assert_eq!(short[..], a[..short.len()]);
        let other = plan(&Workload { seed: 8, ..w }, 60.0, 100).unwrap();
        assert_ne!(a, other);
    }

    #[test]
    fn poisson_rate_mix_and_samples() {
        let w = workload(Arrival::Poisson);
        let p = plan(&w, 500.0, 50).unwrap();
        // 10 000 expected; Poisson sd is 100.
        assert!((p.len() as f64 - 10_000.0).abs() < 400.0, "{}", p.len());
        let low = p.iter().filter(|t| t.priority == "low").count() as f64;
        assert!((low / p.len() as f64 - 0.25).abs() < 0.02);
        assert!(p.iter().all(|t| t.sample < 50));
        assert!(p.windows(2).all(|w| w[0].at_ms <= w[1].at_ms));
        assert!(p.iter().enumerate().all(|(i, t)| t.seq as usize == i));
        // Exponential gaps: the sd equals the mean (50 ms).
        let gaps: Vec<f64> = p.windows(2).map(|w| w[1].at_ms - w[0].at_ms).collect();
        let mean = gaps.iter().sum::<f64>() / gaps.len() as f64;
        let sd = (gaps.iter().map(|g| (g - mean).powi(2)).sum::<f64>() / gaps.len() as f64).sqrt();
        assert!(
            (mean - 50.0).abs() < 2.5 && (sd - 50.0).abs() < 5.0,
            "{mean} {sd}"
        );
    }

    #[test]
    fn uniform_arrivals_are_evenly_spaced() {
        let p = plan(&workload(Arrival::Uniform), 1.0, 10).unwrap();
        let at: Vec<f64> = p.iter().map(|t| t.at_ms).collect();
        assert_eq!(at.len(), 19, "{at:?}");
        assert!((at[0] - 50.0).abs() < 1e-9 && (at[18] - 950.0).abs() < 1e-6);
    }
}
