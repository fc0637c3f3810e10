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
}

/// Every task sent in `duration_s` seconds; `samples` is the test set size.
pub fn plan(w: &Workload, duration_s: f64, samples: usize) -> Result<Vec<PlannedTask>> {
    ensure!(samples > 0, "the test set is empty");
    ensure!(w.tasks_per_s > 0.0, "tasks_per_s must be > 0");
    let weights: Vec<f64> = w.mix.iter().map(|m| m.weight).collect();
    let pick = WeightedIndex::new(&weights)?;
    let gap = Exp::new(w.tasks_per_s)?;
    let mut rng = StdRng::seed_from_u64(w.seed);
    let end_ms = duration_s * 1e3;
    let mut out = Vec::new();
    let mut t_s = 0.0;
    loop {
        // One draw per field, always in this order, so the stream depends on
        // the seed only (and a shorter run is a prefix of a longer one).
        t_s = match w.arrival {
            Arrival::Poisson => t_s + gap.sample(&mut rng),
            Arrival::Uniform => (out.len() + 1) as f64 / w.tasks_per_s,
        };
        let mix = &w.mix[pick.sample(&mut rng)];
        let sample = rng.random_range(0..samples);
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
        });
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use jitter_lab::scenario::TaskMix;

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
                },
                TaskMix {
                    task: "image_classification".into(),
                    weight: 0.25,
                    deadline_ms: None,
                    priority: "low".into(),
                },
            ],
        }
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
