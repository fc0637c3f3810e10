//! A/B comparison of two arms (two builds of the agent, or two policies)
//! over alternating scenario runs (`scenario-ab`, `cargo xtask bench-ab`).
//!
//! On this shared host the speed of the edge's CPU moves a run's miss rate
//! more than most changes to the decision do: the local image model's
//! median ran from 14 to 30 ms within one hour, and the miss rate moves by
//! about a point per ms. So each run is one observation (scenario, seed,
//! arm, the run's metric, the run's host speed) and the effect of the
//! variant is estimated by least squares with a fixed effect per scenario
//! and seed (each seed is its own link realisation and workload) and the
//! run's speed as a covariate: the local image model's median inference
//! time in that run, which the quota and the host's load both set.

use super::record::TaskRecord;
use super::stats;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// The task type whose local inference time stands for the host's speed.
pub const SPEED_TASK: &str = "image_classification";

/// One run of one arm on one scenario and seed.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Observation {
    pub scenario: String,
    pub seed: u64,
    /// The round it ran in (0-based) and the arm (0: base, 1: variant).
    pub round: usize,
    pub arm: usize,
    /// Deadline-miss rate (%) over the tasks with a deadline.
    pub miss_pct: f64,
    /// Mean latency, failures charged (ms).
    pub charged_mean_ms: f64,
    /// The run's host speed: the median local inference time (ms) of
    /// [`SPEED_TASK`]; `None` when no such task ran locally.
    pub speed_ms: Option<f64>,
    /// What moved the miss rate, for reading an effect: the share (%) of
    /// the tasks with a deadline refused before any path (no path was
    /// likely enough in time), the share (%) of all tasks that completed
    /// offloaded, and the Brier score of the predicted chance in time
    /// (`stats::calibration`; `None` without such predictions).
    #[serde(default)]
    pub refused_pct: f64,
    #[serde(default)]
    pub offloaded_pct: f64,
    #[serde(default)]
    pub brier: Option<f64>,
}

impl Observation {
    /// The observation of one run from its task records; `None` when no
    /// task had a deadline.
    pub fn from_records(
        scenario: &str,
        seed: u64,
        round: usize,
        arm: usize,
        records: &[TaskRecord],
    ) -> Option<Observation> {
        let s = stats::summarize(records);
        let mut speed: Vec<f64> = records
            .iter()
            .filter(|r| r.completed() && r.path.as_deref() == Some("local") && r.task == SPEED_TASK)
            .filter_map(|r| r.inference_ms)
            .collect();
        speed.sort_by(f64::total_cmp);
        let refused = records.iter().filter(|r| r.refused()).count();
        Some(Observation {
            scenario: scenario.to_string(),
            seed,
            round,
            arm,
            miss_pct: 100.0 * s.miss_rate()?,
            charged_mean_ms: s.charged_mean_ms?,
            speed_ms: stats::percentile(&speed, 0.5),
            refused_pct: 100.0 * refused as f64 / s.with_deadline as f64,
            offloaded_pct: 100.0 * s.offloaded as f64 / s.tasks.max(1) as f64,
            brier: stats::calibration(records).map(|c| c.brier),
        })
    }
}

/// The variant's effect on one metric (variant - base), from a set of runs.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Effect {
    /// Runs per arm.
    pub runs: [usize; 2],
    /// The metric's plain mean per arm.
    pub mean: [f64; 2],
    /// The estimated effect and its standard error (`None` without the
    /// degrees of freedom for one).
    pub effect: f64,
    pub se: Option<f64>,
    /// The metric's change per ms of the speed covariate; `None` when the
    /// fit went without it (a run without a speed, or no spread in it).
    pub per_speed_ms: Option<f64>,
}

/// Least squares of `metric` on the arm (and the speed, where every run has
/// one and they differ), within each scenario and seed. `None` when no
/// scenario and seed has runs of both arms.
pub fn effect(obs: &[&Observation], metric: fn(&Observation) -> f64) -> Option<Effect> {
    let mut groups: BTreeMap<(&str, u64), Vec<&Observation>> = BTreeMap::new();
    for o in obs {
        groups.entry((&o.scenario, o.seed)).or_default().push(o);
    }
    let with_speed = obs.iter().all(|o| o.speed_ms.is_some());
    // Each run's values less its group's mean: (metric, speed, arm).
    let mut d: Vec<(f64, f64, f64)> = Vec::with_capacity(obs.len());
    for runs in groups.values() {
        let n = runs.len() as f64;
        let my = runs.iter().map(|o| metric(o)).sum::<f64>() / n;
        let mx = runs.iter().map(|o| o.speed_ms.unwrap_or(0.0)).sum::<f64>() / n;
        let mt = runs.iter().map(|o| o.arm as f64).sum::<f64>() / n;
        d.extend(runs.iter().map(|o| {
            (
                metric(o) - my,
                o.speed_ms.unwrap_or(0.0) - mx,
                o.arm as f64 - mt,
            )
        }));
    }
    let sum = |f: fn(&(f64, f64, f64)) -> f64| d.iter().map(f).sum::<f64>();
    let (sxx, stt, sxt) = (sum(|v| v.1 * v.1), sum(|v| v.2 * v.2), sum(|v| v.1 * v.2));
    let (sxy, sty) = (sum(|v| v.1 * v.0), sum(|v| v.2 * v.0));
    if stt <= 1e-12 {
        return None;
    }
    let det = sxx * stt - sxt * sxt;
    // Without a usable speed (missing, or collinear with the arm) the fit
    // is the arm alone.
    let (per_speed, effect, var_factor, k) = if with_speed && det > 1e-9 * sxx.max(1.0) * stt {
        let b = (stt * sxy - sxt * sty) / det;
        let c = (sxx * sty - sxt * sxy) / det;
        (Some(b), c, sxx / det, 2)
    } else {
        (None, sty / stt, 1.0 / stt, 1)
    };
    let resid2: f64 = d
        .iter()
        .map(|v| (v.0 - per_speed.unwrap_or(0.0) * v.1 - effect * v.2).powi(2))
        .sum();
    let dof = d.len() as i64 - groups.len() as i64 - k;
    let se = (dof > 0).then(|| (resid2 / dof as f64 * var_factor).sqrt());
    let arm_runs = |a: usize| obs.iter().filter(move |o| o.arm == a).map(|o| metric(o));
    let mean = |a: usize| {
        let v: Vec<f64> = arm_runs(a).collect();
        v.iter().sum::<f64>() / v.len().max(1) as f64
    };
    Some(Effect {
        runs: [arm_runs(0).count(), arm_runs(1).count()],
        mean: [mean(0), mean(1)],
        effect,
        se,
        per_speed_ms: per_speed,
    })
}

/// The order of the arms in a round: base first in even rounds, the
/// variant first in odd ones (ABBA), so neither arm always runs first
/// after the other's processes (or the host's slow spells).
pub fn round_order(round: usize) -> [usize; 2] {
    if round.is_multiple_of(2) {
        [0, 1]
    } else {
        [1, 0]
    }
}

/// The comparison's report: per scenario and pooled over them, the effect
/// on the miss rate and on the charged mean, then every run.
pub fn report(arms: [&str; 2], obs: &[Observation]) -> String {
    use std::fmt::Write as _;
    let mut md = String::new();
    let _ = writeln!(
        md,
        "Effect: {} - {} per run, least squares with a fixed effect per scenario and seed and the run's host speed (the median local inference of {SPEED_TASK}, ms) as covariate; se: its standard error.\n",
        arms[1], arms[0]
    );
    let _ = writeln!(
        md,
        "| scenario | runs ({}, {}) | miss % ({}) | miss % ({}) | miss effect (pt) | charged mean ({}) | charged mean ({}) | charged effect (ms) | pt per ms of speed |",
        arms[0], arms[1], arms[0], arms[1], arms[0], arms[1]
    );
    let _ = writeln!(md, "|---|---|---|---|---|---|---|---|---|");
    let mut scenarios: Vec<&str> = obs.iter().map(|o| o.scenario.as_str()).collect();
    scenarios.sort();
    scenarios.dedup();
    let mut rows: Vec<(String, Vec<&Observation>)> = scenarios
        .iter()
        .map(|s| {
            (
                s.to_string(),
                obs.iter().filter(|o| o.scenario == *s).collect(),
            )
        })
        .collect();
    if scenarios.len() > 1 {
        rows.push(("pooled".into(), obs.iter().collect()));
    }
    let fmt = |e: &Effect| match e.se {
        Some(se) => format!("{:+.1} ({se:.1})", e.effect),
        None => format!("{:+.1}", e.effect),
    };
    for (name, runs) in &rows {
        let (Some(m), Some(c)) = (
            effect(runs, |o| o.miss_pct),
            effect(runs, |o| o.charged_mean_ms),
        ) else {
            let _ = writeln!(
                md,
                "| {name} | {} | no runs of both arms |||||||",
                runs.len()
            );
            continue;
        };
        let _ = writeln!(
            md,
            "| {name} | {}, {} | {:.1} | {:.1} | {} | {:.1} | {:.1} | {} | {} |",
            m.runs[0],
            m.runs[1],
            m.mean[0],
            m.mean[1],
            fmt(&m),
            c.mean[0],
            c.mean[1],
            fmt(&c),
            m.per_speed_ms
                .map_or("-".to_string(), |b| format!("{b:+.2}"))
        );
    }
    let _ = writeln!(
        md,
        "\nWhat moved: per arm, the mean over the runs of the share of tasks with a deadline refused before any path, the share of tasks completed offloaded, and the Brier score of the predicted chance in time (lower is better); the refusal effect as above.\n"
    );
    let _ = writeln!(
        md,
        "| scenario | refused % ({0}) | refused % ({1}) | refused effect (pt) | offloaded % ({0}) | offloaded % ({1}) | Brier ({0}) | Brier ({1}) |",
        arms[0], arms[1]
    );
    let _ = writeln!(md, "|---|---|---|---|---|---|---|---|");
    for (name, runs) in &rows {
        let Some(r) = effect(runs, |o| o.refused_pct) else {
            continue;
        };
        // The mean of an arm's runs that have the metric.
        let mean = |arm: usize, metric: fn(&Observation) -> Option<f64>| {
            let v: Vec<f64> = runs
                .iter()
                .filter(|o| o.arm == arm)
                .filter_map(|o| metric(o))
                .collect();
            (!v.is_empty()).then(|| v.iter().sum::<f64>() / v.len() as f64)
        };
        let offloaded = |arm| mean(arm, |o| Some(o.offloaded_pct)).unwrap_or(0.0);
        let brier = |arm| mean(arm, |o| o.brier).map_or("-".to_string(), |b| format!("{b:.3}"));
        let _ = writeln!(
            md,
            "| {name} | {:.1} | {:.1} | {} | {:.1} | {:.1} | {} | {} |",
            r.mean[0],
            r.mean[1],
            fmt(&r),
            offloaded(0),
            offloaded(1),
            brier(0),
            brier(1),
        );
    }
    let _ = writeln!(md, "\n## Runs\n");
    let _ = writeln!(
        md,
        "| round | arm | scenario | seed | miss % | charged mean (ms) | speed (ms) |"
    );
    let _ = writeln!(md, "|---|---|---|---|---|---|---|");
    for o in obs {
        let _ = writeln!(
            md,
            "| {} | {} | {} | {} | {:.1} | {:.1} | {} |",
            o.round,
            arms[o.arm],
            o.scenario,
            o.seed,
            o.miss_pct,
            o.charged_mean_ms,
            o.speed_ms.map_or("-".to_string(), |s| format!("{s:.1}"))
        );
    }
    md
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::scenarios::record::tests::rec;
    use crate::scenarios::record::Outcome;

    fn obs(scenario: &str, seed: u64, arm: usize, miss: f64, speed: Option<f64>) -> Observation {
        Observation {
            scenario: scenario.into(),
            seed,
            round: 0,
            arm,
            miss_pct: miss,
            charged_mean_ms: 2.0 * miss,
            speed_ms: speed,
            refused_pct: miss / 2.0,
            offloaded_pct: 50.0,
            brier: None,
        }
    }

    #[test]
    fn recovers_the_effect_the_speed_would_hide() {
        // miss = seed level + 1 pt per ms of speed - 3 pt for the variant;
        // the variant happened to run on a slower host (+4 ms), so its
        // plain mean is higher although it misses less.
        let mut v = Vec::new();
        for (seed, level) in [(1, 20.0), (2, 30.0)] {
            for (arm, speed) in [(0, 15.0), (0, 17.0), (1, 19.0), (1, 21.0)] {
                let miss = level + speed - 3.0 * arm as f64;
                v.push(obs("lossy", seed, arm, miss, Some(speed)));
            }
        }
        let refs: Vec<&Observation> = v.iter().collect();
        let e = effect(&refs, |o| o.miss_pct).unwrap();
        assert_eq!(e.runs, [4, 4]);
        assert!(e.mean[1] > e.mean[0], "{e:?}");
        assert!((e.effect + 3.0).abs() < 1e-9, "{e:?}");
        assert!((e.per_speed_ms.unwrap() - 1.0).abs() < 1e-9, "{e:?}");
        // An exact fit leaves no residual.
        assert!(e.se.unwrap() < 1e-6, "{e:?}");
        let c = effect(&refs, |o| o.charged_mean_ms).unwrap();
        assert!((c.effect + 6.0).abs() < 1e-9, "{c:?}");
    }

    #[test]
    fn noise_gives_a_standard_error_and_no_speed_gives_the_paired_difference() {
        // Without speeds: the mean within-seed difference, and its spread.
        let v = [
            obs("jittery", 1, 0, 10.0, None),
            obs("jittery", 1, 1, 12.0, Some(20.0)),
            obs("jittery", 2, 0, 20.0, None),
            obs("jittery", 2, 1, 24.0, None),
            obs("jittery", 3, 0, 30.0, None),
            obs("jittery", 3, 1, 30.0, None),
        ];
        let refs: Vec<&Observation> = v.iter().collect();
        let e = effect(&refs, |o| o.miss_pct).unwrap();
        assert_eq!(e.per_speed_ms, None);
        assert!((e.effect - 2.0).abs() < 1e-9, "{e:?}");
        // Residuals within the seeds (the arm coded -1/2, +1/2): 0 and 0,
        // -1 and +1, +1 and -1; 4 over 6 - 3 - 1 = 2 degrees of freedom,
        // and the arm's spread is 6 / 4.
        let se = e.se.unwrap();
        assert!((se - (4.0f64 / 2.0 / 1.5).sqrt()).abs() < 1e-9, "{se}");
    }

    #[test]
    fn no_pair_no_effect_and_the_order_alternates() {
        let v = [
            obs("lan", 1, 0, 1.0, Some(3.0)),
            obs("lan", 2, 1, 2.0, Some(3.0)),
        ];
        let refs: Vec<&Observation> = v.iter().collect();
        assert_eq!(effect(&refs, |o| o.miss_pct), None);
        assert_eq!(round_order(0), [0, 1]);
        assert_eq!(round_order(1), [1, 0]);
        assert_eq!(round_order(2), [0, 1]);
        let md = report(["base", "variant"], &v);
        assert!(md.contains("| lan | 2 | no runs of both arms |"), "{md}");
    }

    #[test]
    fn the_report_shows_what_moved() {
        let mut v = vec![
            obs("wan", 1, 0, 20.0, None),
            obs("wan", 1, 1, 40.0, None),
            obs("wan", 2, 0, 20.0, None),
            obs("wan", 2, 1, 40.0, None),
        ];
        v[0].brier = Some(0.1);
        v[2].brier = Some(0.2);
        let md = report(["base", "variant"], &v);
        // Refused: half the miss rate (10 and 20 %), a paired +10 points;
        // offloaded 50 % in both; Brier only for the base's runs.
        assert!(
            md.contains("| wan | 10.0 | 20.0 | +10.0 (0.0) | 50.0 | 50.0 | 0.150 | - |"),
            "{md}"
        );
    }

    #[test]
    fn an_observation_from_records() {
        let mut r = vec![
            rec(0, Outcome::Ok, 40.0, "local"),
            rec(1, Outcome::Ok, 140.0, "cloud/quic"),
            rec(2, Outcome::Failed, 1.0, ""),
            rec(3, Outcome::Ok, 60.0, "local"),
        ];
        r[0].inference_ms = Some(20.0);
        r[3].inference_ms = Some(30.0);
        r[2].error = "deadline cannot be met: 40.00ms left, expected local 90.00ms".into();
        let o = Observation::from_records("wan", 7, 1, 0, &r).unwrap();
        // Missed: the late cloud answer and the failure, of 4.
        assert_eq!(o.miss_pct, 50.0);
        assert_eq!(o.speed_ms, Some(25.0));
        assert_eq!(o.charged_mean_ms, (40.0 + 140.0 + 100.0 + 60.0) / 4.0);
        // The failure was a refusal; one of 4 completed offloaded; no
        // decision predicted a chance, so no Brier score.
        assert_eq!(
            (o.refused_pct, o.offloaded_pct, o.brier),
            (25.0, 25.0, None)
        );
        // A failure of another kind, or after a decision, is no refusal.
        r[2].error = "cloud unavailable: no route".into();
        let o = Observation::from_records("wan", 7, 1, 0, &r).unwrap();
        assert_eq!(o.refused_pct, 0.0);
        r[2].error = "deadline cannot be met: expired while queued locally".into();
        r[2].decision = Some(Default::default());
        let o = Observation::from_records("wan", 7, 1, 0, &r).unwrap();
        assert_eq!(o.refused_pct, 0.0);
        assert_eq!(Observation::from_records("wan", 7, 1, 0, &[]), None);
    }
}
