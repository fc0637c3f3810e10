//! Per-run summaries and the hindsight oracle, from task records alone.

use super::record::TaskRecord;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet};

#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct Summary {
    /// Tasks sent.
    pub tasks: usize,
    /// Answered with a result.
    pub completed: usize,
    /// Sent but not completed (failed, rejected or lost): `tasks - completed`.
    pub failed: usize,
    /// Tasks that had a deadline, and those of them that did not complete
    /// within it (failing counts as missing).
    pub with_deadline: usize,
    pub deadline_missed: usize,
    /// Latency percentiles over completed tasks (ms); `None` if none completed.
    pub p50_ms: Option<f64>,
    pub p95_ms: Option<f64>,
    pub p99_ms: Option<f64>,
    pub mean_ms: Option<f64>,
    /// Completed in the cloud.
    pub offloaded: usize,
    /// Completed with a label to check, and of those, correct.
    pub labelled: usize,
    pub correct: usize,
    /// Completed locally after a failed offload.
    pub fell_back: usize,
    /// Mean latency over every task, a task that did not complete charged
    /// at its deadline or its latency, whichever is longer (without a
    /// deadline: [`FAILURE_CHARGE_MS`] or its latency): failing slow tasks
    /// cannot make a policy look fast.
    #[serde(default)]
    pub charged_mean_ms: Option<f64>,
    /// Prediction error of the path taken, |predicted - actual| / actual
    /// over completed tasks that did not fall back, `actual` being the
    /// agent's own measure (decision to answer): median and p90. The
    /// prediction is the median of the path's predicted distribution
    /// where the decision has one, else its expected latency.
    #[serde(default)]
    pub pred_err_local: Option<(f64, f64)>,
    #[serde(default)]
    pub pred_err_cloud: Option<(f64, f64)>,
    /// The same with the expected latency (a distribution's mean) as the
    /// prediction.
    #[serde(default)]
    pub pred_err_local_mean: Option<(f64, f64)>,
    #[serde(default)]
    pub pred_err_cloud_mean: Option<(f64, f64)>,
    /// `pred_err_local` per task type: the median, the p90 and how many
    /// tasks they are over.
    #[serde(default)]
    pub pred_err_local_by_type: BTreeMap<String, (f64, f64, usize)>,
    /// `pred_err_local`'s reference: the error had each of those local
    /// runs been predicted at the median actual of the runs of its task
    /// type that were (or were not) predicted to queue, in the whole run;
    /// known only in hindsight. What the runs' own spread leaves to any
    /// prediction that knows no more of a task than its type and the queue.
    #[serde(default)]
    pub pred_err_local_hindsight: Option<(f64, f64)>,
    /// Tasks the agent ran on both paths.
    #[serde(default)]
    pub hedged: usize,
    /// Median of what the submitter saw beyond the agent's own measure
    /// (the way to and from the task API, and its waits for CPU).
    #[serde(default)]
    pub outside_ms: Option<f64>,
    /// How well the chance of meeting the deadline that each decision
    /// predicted for its path held; `None` without such predictions.
    #[serde(default)]
    pub calibration: Option<Calibration>,
    /// The cloud's own inference time (the server's measure) per task type,
    /// over the completed tasks offloaded whole: median and how many. The
    /// cloud runs unconstrained on the same host as the edge, so this shows
    /// how fast the shared host ran during the run ([`host_pace`]).
    #[serde(default)]
    pub cloud_server_ms: BTreeMap<String, (f64, usize)>,
}

/// The predicted chance of meeting the deadline (`p_meet`, of the path
/// each task was sent to) against what happened, over the tasks with a
/// deadline and a prediction, except those moved from the local queue
/// (predicted at the move).
#[derive(Debug, Clone, Copy, PartialEq, Default, Serialize, Deserialize)]
pub struct Calibration {
    pub tasks: usize,
    /// Mean of (p - met)^2, met being 1 or 0: lower is better.
    pub brier: f64,
    /// Expected calibration error: in ten bins of p, |mean p - share met|
    /// weighed by the bin's tasks.
    pub ece: f64,
    /// Share of the tasks predicted at >= 0.95, and the share of those
    /// that met their deadline.
    pub confident: f64,
    pub confident_met: Option<f64>,
}

/// Bins of predicted chance for [`Calibration::ece`].
const CALIBRATION_BINS: usize = 10;
/// A prediction this sure is "confident" in [`Calibration`].
pub const CONFIDENT_P: f64 = 0.95;

/// [`Calibration`] of the records' predictions; `None` without any.
pub fn calibration(records: &[TaskRecord]) -> Option<Calibration> {
    let moved = agent_core::Reason::MovedFromLateQueue.to_string();
    let pairs: Vec<(f64, f64)> = records
        .iter()
        .filter_map(|r| {
            let d = r.decision.as_ref()?;
            let p = d.p_meet.filter(|p| p.is_finite())?;
            let met = r.deadline_met()?;
            (d.reason != moved).then_some((p, if met { 1.0 } else { 0.0 }))
        })
        .collect();
    if pairs.is_empty() {
        return None;
    }
    let n = pairs.len() as f64;
    // Per bin, the sums of p and of met: |mean p - share met| weighed by
    // the bin's tasks is |their difference| / n (0 for an empty bin).
    let mut bins = [(0.0, 0.0); CALIBRATION_BINS];
    for &(p, met) in &pairs {
        let b = &mut bins[((p * CALIBRATION_BINS as f64) as usize).min(CALIBRATION_BINS - 1)];
        b.0 += p;
        b.1 += met;
    }
    let confident: Vec<f64> = pairs
        .iter()
        .filter(|(p, _)| *p >= CONFIDENT_P)
        .map(|(_, m)| *m)
        .collect();
    Some(Calibration {
        tasks: pairs.len(),
        brier: pairs.iter().map(|(p, m)| (p - m).powi(2)).sum::<f64>() / n,
        ece: bins.iter().map(|(p, m)| (p - m).abs()).sum::<f64>() / n,
        confident: confident.len() as f64 / n,
        confident_met: (!confident.is_empty())
            .then(|| confident.iter().sum::<f64>() / confident.len() as f64),
    })
}

/// What a failed task without a deadline costs in the charged mean (ms).
pub const FAILURE_CHARGE_MS: f64 = 1000.0;

impl Summary {
    pub fn miss_rate(&self) -> Option<f64> {
        ratio(self.deadline_missed, self.with_deadline)
    }

    pub fn offload_ratio(&self) -> Option<f64> {
        ratio(self.offloaded, self.completed)
    }

    pub fn accuracy(&self) -> Option<f64> {
        ratio(self.correct, self.labelled)
    }
}

fn ratio(a: usize, b: usize) -> Option<f64> {
    (b > 0).then(|| a as f64 / b as f64)
}

/// Linear interpolation between closest ranks of a sorted slice (q in
/// 0..=1), the one definition every benchmark and the agent use
/// ([`agent_core::quantile`]); `None` for no values.
/// Where one policy's tasks ran during one phase of the schedule.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PhaseChoice {
    pub policy: String,
    pub from_s: f64,
    pub to_s: f64,
    /// The schedule entry that began the phase (`start` for the first).
    pub note: String,
    pub tasks: usize,
    /// Share of the phase's tasks per [`TaskRecord::variant`].
    pub shares: BTreeMap<String, f64>,
}

/// Per phase of `sc`'s schedule (split at its changes), the share of
/// `policy`'s tasks that ran locally, whole in the cloud, through each
/// split point, or failed.
pub fn choices(
    policy: &str,
    records: &[TaskRecord],
    sc: &jitter_lab::Scenario,
) -> Vec<PhaseChoice> {
    let mut bounds: Vec<(f64, String)> = vec![(0.0, "start".into())];
    bounds.extend(
        sc.schedule
            .iter()
            .filter(|e| e.at_s > 0.0 && e.at_s < sc.duration_s)
            .map(|e| (e.at_s, e.note.clone())),
    );
    bounds
        .iter()
        .enumerate()
        .map(|(i, (from, note))| {
            let to = bounds.get(i + 1).map_or(sc.duration_s, |b| b.0);
            let inside: Vec<&TaskRecord> = records
                .iter()
                .filter(|r| (*from..to).contains(&(r.sent_ms / 1e3)))
                .collect();
            let mut shares = BTreeMap::new();
            for r in &inside {
                *shares.entry(r.variant()).or_insert(0.0) += 1.0 / inside.len() as f64;
            }
            PhaseChoice {
                policy: policy.to_string(),
                from_s: *from,
                to_s: to,
                note: note.clone(),
                tasks: inside.len(),
                shares,
            }
        })
        .collect()
}

pub fn percentile(sorted: &[f64], q: f64) -> Option<f64> {
    (!sorted.is_empty()).then(|| agent_core::quantile(sorted, q))
}

pub fn summarize(records: &[TaskRecord]) -> Summary {
    let mut lat: Vec<f64> = records
        .iter()
        .filter(|r| r.completed())
        .map(|r| r.latency_ms)
        .collect();
    lat.sort_by(f64::total_cmp);
    let completed = lat.len();
    let deadlines: Vec<bool> = records
        .iter()
        .filter_map(TaskRecord::deadline_met)
        .collect();
    let checked: Vec<bool> = records.iter().filter_map(TaskRecord::correct).collect();
    Summary {
        tasks: records.len(),
        completed,
        failed: records.len() - completed,
        with_deadline: deadlines.len(),
        deadline_missed: deadlines.iter().filter(|m| !**m).count(),
        p50_ms: percentile(&lat, 0.50),
        p95_ms: percentile(&lat, 0.95),
        p99_ms: percentile(&lat, 0.99),
        mean_ms: (completed > 0).then(|| lat.iter().sum::<f64>() / completed as f64),
        offloaded: records.iter().filter(|r| r.offloaded()).count(),
        labelled: checked.len(),
        correct: checked.iter().filter(|c| **c).count(),
        fell_back: records
            .iter()
            .filter(|r| r.completed() && r.fell_back)
            .count(),
        charged_mean_ms: (!records.is_empty())
            .then(|| records.iter().map(charged_ms).sum::<f64>() / records.len() as f64),
        pred_err_local: prediction_error(records, "local", Forecast::Median),
        pred_err_cloud: prediction_error(records, "cloud", Forecast::Median),
        pred_err_local_mean: prediction_error(records, "local", Forecast::Expected),
        pred_err_cloud_mean: prediction_error(records, "cloud", Forecast::Expected),
        pred_err_local_by_type: {
            let types: BTreeSet<&str> = records.iter().map(|r| r.task.as_str()).collect();
            types
                .into_iter()
                .filter_map(|t| {
                    let errs = errors(records, "local", Forecast::Median, |r| r.task == t);
                    let (m, p90) = (percentile(&errs, 0.5)?, percentile(&errs, 0.9)?);
                    Some((t.to_string(), (m, p90, errs.len())))
                })
                .collect()
        },
        pred_err_local_hindsight: hindsight_local_error(records),
        hedged: records
            .iter()
            .filter(|r| r.decision.as_ref().is_some_and(|d| d.hedged))
            .count(),
        outside_ms: {
            let mut v: Vec<f64> = records
                .iter()
                .filter(|r| r.completed())
                .filter_map(|r| r.agent_ms.map(|a| r.latency_ms - a))
                .collect();
            v.sort_by(f64::total_cmp);
            percentile(&v, 0.5)
        },
        calibration: calibration(records),
        cloud_server_ms: cloud_server_ms(records),
    }
}

fn cloud_server_ms(records: &[TaskRecord]) -> BTreeMap<String, (f64, usize)> {
    let mut by_type: BTreeMap<String, Vec<f64>> = BTreeMap::new();
    for r in records {
        if let (true, "whole", Some(ms)) = (r.offloaded(), r.variant().as_str(), r.inference_ms) {
            by_type.entry(r.task.clone()).or_default().push(ms);
        }
    }
    by_type
        .into_iter()
        .filter_map(|(t, mut v)| {
            v.sort_by(f64::total_cmp);
            Some((t, (percentile(&v, 0.5)?, v.len())))
        })
        .collect()
}

/// Task types with fewer cloud-completed tasks in a run do not count
/// towards its [`host_pace`].
pub const PACE_MIN_TASKS: usize = 20;

/// How slow the shared host ran during each of several runs of one
/// scenario and seed, against the others: per task type, a run's median
/// cloud inference time over the median of those medians, and the median
/// of those ratios over the types (1.3: that run's cloud work took 30 %
/// longer than usual). `None` for a run with no task type of at least
/// [`PACE_MIN_TASKS`] cloud tasks that another run also has.
pub fn host_pace(runs: &[&Summary]) -> Vec<Option<f64>> {
    let usable = |s: &Summary, t: &str| {
        s.cloud_server_ms
            .get(t)
            .filter(|(_, n)| *n >= PACE_MIN_TASKS)
            .map(|(m, _)| *m)
    };
    let types: BTreeSet<&str> = runs
        .iter()
        .flat_map(|s| s.cloud_server_ms.keys().map(String::as_str))
        .collect();
    let reference: BTreeMap<&str, f64> = types
        .into_iter()
        .filter_map(|t| {
            let mut v: Vec<f64> = runs.iter().filter_map(|s| usable(s, t)).collect();
            v.sort_by(f64::total_cmp);
            (v.len() >= 2).then(|| (t, percentile(&v, 0.5).expect("two values")))
        })
        .collect();
    runs.iter()
        .map(|s| {
            let mut ratios: Vec<f64> = reference
                .iter()
                .filter(|(_, r)| **r > 0.0)
                .filter_map(|(t, r)| usable(s, t).map(|m| m / r))
                .collect();
            ratios.sort_by(f64::total_cmp);
            percentile(&ratios, 0.5)
        })
        .collect()
}

fn charged_ms(r: &TaskRecord) -> f64 {
    if r.completed() {
        r.latency_ms
    } else {
        r.latency_ms
            .max(r.deadline_ms.map_or(FAILURE_CHARGE_MS, |d| d as f64))
    }
}

/// Which point of a decision's prediction is compared with the outcome.
#[derive(Clone, Copy, PartialEq)]
enum Forecast {
    /// The median of the path's predicted distribution where there is one
    /// (the point that minimises the absolute error), else `Expected`.
    Median,
    /// The decision's expected latency (for a distribution, its mean).
    Expected,
}

/// Median and p90 of |predicted - actual| / actual on `path`.
fn prediction_error(records: &[TaskRecord], path: &str, f: Forecast) -> Option<(f64, f64)> {
    let errs = errors(records, path, f, |_| true);
    Some((percentile(&errs, 0.5)?, percentile(&errs, 0.9)?))
}

/// See [`Summary::pred_err_local_hindsight`]: over the tasks that
/// `pred_err_local` is over.
fn hindsight_local_error(records: &[TaskRecord]) -> Option<(f64, f64)> {
    let mut groups: BTreeMap<(&str, bool), Vec<f64>> = BTreeMap::new();
    for r in records {
        if !error_counted(r, "local") {
            continue;
        }
        let (Some(d), Some(actual)) = (r.decision.as_ref(), measured_ms(r)) else {
            continue;
        };
        // The agent's own test of a run that queued.
        let queued = agent_core::predicted_to_queue(
            std::time::Duration::try_from_secs_f64(d.local_queue_ms / 1e3).unwrap_or_default(),
        );
        groups
            .entry((r.task.as_str(), queued))
            .or_default()
            .push(actual);
    }
    let mut errs = Vec::new();
    for v in groups.values_mut() {
        v.sort_by(f64::total_cmp);
        let Some(m) = percentile(v, 0.5) else {
            continue;
        };
        errs.extend(v.iter().map(|a| (m - a).abs() / a));
    }
    errs.sort_by(f64::total_cmp);
    Some((percentile(&errs, 0.5)?, percentile(&errs, 0.9)?))
}

/// Whether a task counts in the prediction error of `path`: completed
/// where its decision sent it, neither fallen back nor hedged.
fn error_counted(r: &TaskRecord, path: &str) -> bool {
    r.completed()
        && !r.fell_back
        && r.path.as_deref() == Some(path)
        && r.decision
            .as_ref()
            .is_some_and(|d| !d.hedged && d.path == path)
}

/// From the decision to the answer, as the agent measured it: what the
/// decision could affect (the way to the agent's API has already happened
/// when it decides; `outside_ms` reports it). `None` unless positive.
fn measured_ms(r: &TaskRecord) -> Option<f64> {
    Some(r.agent_ms.unwrap_or(r.latency_ms)).filter(|a| *a > 0.0)
}

/// |predicted - actual| / actual of the `keep` tasks that ran on `path`
/// where their decision sent them, sorted.
fn errors(
    records: &[TaskRecord],
    path: &str,
    f: Forecast,
    keep: impl Fn(&TaskRecord) -> bool,
) -> Vec<f64> {
    let mut errs: Vec<f64> = records
        .iter()
        .filter(|r| keep(r) && error_counted(r, path))
        .filter_map(|r| {
            let d = r.decision.as_ref()?;
            let expected = match d.path.as_str() {
                "local" => d.local_total_ms,
                "cloud" => d.offload_total_ms,
                _ => return None,
            };
            let predicted = match (f, d.p50_ms) {
                (Forecast::Median, Some(p50)) => p50,
                _ => expected,
            };
            let actual = measured_ms(r)?;
            predicted
                .is_finite()
                .then(|| (predicted - actual).abs() / actual)
        })
        .collect();
    errs.sort_by(f64::total_cmp);
    errs
}

/// How good one task's outcome is: completed within its deadline (or with
/// none) beats completed late beats not completed; then lower latency.
fn rank(r: &TaskRecord) -> (u8, f64) {
    let class = match (r.completed(), r.deadline_met()) {
        (true, Some(false)) => 1,
        (true, _) => 0,
        (false, _) => 2,
    };
    (
        class,
        if r.completed() {
            r.latency_ms
        } else {
            f64::INFINITY
        },
    )
}

/// The hindsight oracle: per task (`seq`), the best measured outcome over
/// the given runs of the same seeded workload (in the benchmark: the
/// always-local and always-offload runs, i.e. the right path per task).
pub fn oracle(runs: &[&[TaskRecord]]) -> Vec<TaskRecord> {
    let mut best: BTreeMap<u32, &TaskRecord> = BTreeMap::new();
    for r in runs.iter().flat_map(|run| run.iter()) {
        best.entry(r.seq)
            .and_modify(|b| {
                let (rc, rl) = rank(r);
                let (bc, bl) = rank(b);
                if rc < bc || (rc == bc && rl < bl) {
                    *b = r;
                }
            })
            .or_insert(r);
    }
    best.into_values().cloned().collect()
}

/// Mean extra latency of a run over the oracle, over the tasks both
/// completed (ms); `None` when there are none.
pub fn mean_excess(run: &[TaskRecord], oracle: &[TaskRecord]) -> Option<f64> {
    let best: BTreeMap<u32, &TaskRecord> = oracle.iter().map(|r| (r.seq, r)).collect();
    let diffs: Vec<f64> = run
        .iter()
        .filter(|r| r.completed())
        .filter_map(|r| {
            best.get(&r.seq)
                .filter(|b| b.completed())
                .map(|b| r.latency_ms - b.latency_ms)
        })
        .collect();
    (!diffs.is_empty()).then(|| diffs.iter().sum::<f64>() / diffs.len() as f64)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::scenarios::record::tests::rec;
    use crate::scenarios::record::Outcome;

    #[test]
    fn hindsight_error_predicts_each_group_at_its_median() {
        use crate::scenarios::record::DecisionView;
        // (task, predicted wait ms, predicted ms, actual ms)
        let local = |task: &str, wait: f64, p50: f64, actual: f64| TaskRecord {
            task: task.into(),
            agent_ms: Some(actual),
            decision: Some(DecisionView {
                path: "local".into(),
                local_queue_ms: wait,
                p50_ms: Some(p50),
                ..DecisionView::default()
            }),
            ..rec(0, Outcome::Ok, actual + 1.0, "local")
        };
        let records = [
            // Idle-worker images, predicted 10 ms: 10, 20 and 30 ms.
            local("image_classification", 0.0, 10.0, 10.0),
            local("image_classification", 0.0, 10.0, 20.0),
            local("image_classification", 0.0, 10.0, 30.0),
            // Queued images, a group of their own: predicted at 40 ms,
            // its median, both 40 ms.
            local("image_classification", 5.0, 10.0, 40.0),
            local("image_classification", 5.0, 10.0, 40.0),
            // Text, predicted spot on.
            local("nlp_analysis", 0.0, 2.0, 2.0),
            // Not counted: hedged, fallen back, in the cloud.
            TaskRecord {
                decision: Some(DecisionView {
                    path: "local".into(),
                    hedged: true,
                    ..DecisionView::default()
                }),
                ..local("nlp_analysis", 0.0, 2.0, 500.0)
            },
            TaskRecord {
                fell_back: true,
                ..local("nlp_analysis", 0.0, 2.0, 500.0)
            },
            rec(1, Outcome::Ok, 500.0, "cloud"),
        ];
        let s = summarize(&records);
        // Predicted: 0, 0.5, 0.67 (images), 0.75, 0.75 (queued), 0 (text).
        let (med, _) = s.pred_err_local.unwrap();
        assert!((med - (0.5 + 2.0 / 3.0) / 2.0).abs() < 1e-12, "{med}");
        // In hindsight: 1, 0, 0.33 (images at 20 ms), 0, 0, 0.
        let (med, p90) = s.pred_err_local_hindsight.unwrap();
        assert!((med - 0.0).abs() < 1e-12, "{med}");
        assert!((p90 - (1.0 + 1.0 / 3.0) / 2.0).abs() < 1e-12, "{p90}");
        assert_eq!(summarize(&records[6..]).pred_err_local_hindsight, None);
    }

    #[test]
    fn calibration_compares_the_predicted_chance_with_what_happened() {
        use crate::scenarios::record::DecisionView;
        // (p_meet, reason, outcome, latency ms; deadline 100 ms).
        let with = |p: Option<f64>, reason: &str, outcome, latency| TaskRecord {
            decision: Some(DecisionView {
                p_meet: p,
                reason: reason.into(),
                ..DecisionView::default()
            }),
            ..rec(0, outcome, latency, "local")
        };
        let sure = "local likelier to meet the deadline";
        let records = [
            // Sure, and in time three times out of four.
            with(Some(1.0), sure, Outcome::Ok, 50.0),
            with(Some(1.0), sure, Outcome::Ok, 60.0),
            with(Some(1.0), sure, Outcome::Ok, 70.0),
            with(Some(1.0), sure, Outcome::Ok, 150.0),
            // A coin flip, lost by failing.
            with(Some(0.5), sure, Outcome::Failed, 100.0),
            // Not counted: no prediction, no deadline, predicted at a move.
            with(None, sure, Outcome::Ok, 50.0),
            TaskRecord {
                deadline_ms: None,
                ..with(Some(0.2), sure, Outcome::Ok, 50.0)
            },
            with(
                Some(0.0),
                &agent_core::Reason::MovedFromLateQueue.to_string(),
                Outcome::Ok,
                50.0,
            ),
        ];
        let c = calibration(&records).unwrap();
        assert_eq!(c.tasks, 5);
        // (0 + 0 + 0 + 1 + 0.25) / 5
        assert!((c.brier - 0.25).abs() < 1e-12, "{c:?}");
        // Bins: p = 1 (4 tasks, 3 met): |4 - 3|; p = 0.5 (1, none): 0.5.
        assert!((c.ece - 1.5 / 5.0).abs() < 1e-12, "{c:?}");
        assert_eq!((c.confident, c.confident_met), (0.8, Some(0.75)));
        assert_eq!(calibration(&records[5..]), None);
        assert_eq!(summarize(&records).calibration, Some(c));
    }

    #[test]
    fn host_pace_compares_each_run_with_the_others() {
        let with = |types: &[(&str, f64, usize)]| Summary {
            cloud_server_ms: types
                .iter()
                .map(|(t, m, n)| (t.to_string(), (*m, *n)))
                .collect(),
            ..Summary::default()
        };
        let usual = with(&[("image", 4.0, 300), ("detect", 15.0, 100)]);
        let slow = with(&[("image", 6.0, 200), ("detect", 22.5, 80)]);
        let fast = with(&[("image", 3.6, 250), ("detect", 13.5, 90)]);
        // Detections too few to say: the image tasks alone.
        let partly = with(&[("image", 5.0, 200), ("detect", 40.0, 19)]);
        // Too few of every type: no pace.
        let few = with(&[("image", 9.0, 5), ("detect", 40.0, 19)]);
        let none = Summary::default();
        let pace = host_pace(&[&usual, &usual, &slow, &fast, &partly, &few, &none]);
        let want = [
            Some(1.0),
            Some(1.0),
            Some(1.5),
            Some(0.9),
            Some(1.25),
            None,
            None,
        ];
        assert_eq!(pace.len(), want.len());
        for (got, want) in pace.iter().zip(want) {
            match (got, want) {
                (Some(g), Some(w)) => assert!((g - w).abs() < 1e-9, "{pace:?}"),
                _ => assert_eq!(*got, want, "{pace:?}"),
            }
        }
        // One run alone has nothing to be compared with.
        assert_eq!(host_pace(&[&slow]), vec![None]);
        // Only cloud-completed whole offloads count.
        let mut ok = rec(0, Outcome::Ok, 20.0, "cloud/quic");
        ok.inference_ms = Some(4.0);
        let mut local = rec(1, Outcome::Ok, 5.0, "local");
        local.inference_ms = Some(9.0);
        let mut failed = rec(2, Outcome::Failed, 100.0, "");
        failed.inference_ms = Some(50.0);
        let s = summarize(&[ok, local, failed]);
        assert_eq!(
            s.cloud_server_ms.get("image_classification"),
            Some(&(4.0, 1))
        );
        assert_eq!(s.cloud_server_ms.len(), 1);
    }

    #[test]
    fn percentiles_interpolate() {
        let v: Vec<f64> = (1..=101).map(f64::from).collect();
        assert_eq!(percentile(&v, 0.5), Some(51.0));
        assert_eq!(percentile(&v, 0.99), Some(100.0));
        assert_eq!(percentile(&[1.0, 2.0], 0.5), Some(1.5));
        assert_eq!(percentile(&[], 0.5), None);
        assert_eq!(percentile(&[7.0], 0.95), Some(7.0));
    }

    #[test]
    fn summary_accounts_for_every_task() {
        let mut runs = vec![
            rec(0, Outcome::Ok, 10.0, "local"),
            rec(1, Outcome::Ok, 150.0, "cloud/quic"),
            rec(2, Outcome::Failed, 3.0, ""),
            rec(3, Outcome::Rejected, 0.2, ""),
            rec(4, Outcome::Ok, 30.0, "cloud/grpc"),
        ];
        runs[4].predicted = Some(9);
        runs[4].deadline_ms = None;
        runs[0].decision = Some(crate::scenarios::record::DecisionView {
            path: "local".into(),
            local_total_ms: 8.0,
            offload_total_ms: 50.0,
            ..Default::default()
        });
        let s = summarize(&runs);
        // Failed and rejected tasks are charged their 100 ms deadline.
        assert_eq!(
            s.charged_mean_ms,
            Some((10.0 + 150.0 + 100.0 + 100.0 + 30.0) / 5.0)
        );
        // |8 - 10| / 10 on the one local task with a decision; none in the cloud.
        let (med, p90) = s.pred_err_local.unwrap();
        assert!((med - 0.2).abs() < 1e-12 && (p90 - 0.2).abs() < 1e-12);
        assert_eq!(
            s.pred_err_local_mean, s.pred_err_local,
            "no distribution: the same"
        );
        assert_eq!(s.pred_err_cloud, None);
        // With a predicted distribution, its median is the prediction;
        // the expected latency (its mean) stays reported beside it.
        let mut with_median = runs.clone();
        if let Some(d) = with_median[0].decision.as_mut() {
            d.p50_ms = Some(9.5);
        }
        let m = summarize(&with_median);
        let (med, _) = m.pred_err_local.unwrap();
        assert!((med - 0.05).abs() < 1e-12, "{med}");
        assert_eq!(m.pred_err_local_mean, s.pred_err_local);
        // Per task type: the one local task with a decision.
        assert_eq!(
            m.pred_err_local_by_type.len(),
            1,
            "{:?}",
            m.pred_err_local_by_type
        );
        let (t, &(med, p90, n)) = m.pred_err_local_by_type.iter().next().unwrap();
        assert_eq!((t.as_str(), n), (runs[0].task.as_str(), 1));
        assert!((med - 0.05).abs() < 1e-12 && (p90 - 0.05).abs() < 1e-12);
        assert_eq!((s.tasks, s.completed, s.failed), (5, 3, 2));
        assert_eq!((s.with_deadline, s.deadline_missed), (4, 3));
        assert_eq!(s.miss_rate(), Some(0.75));
        assert_eq!((s.offloaded, s.offload_ratio()), (2, Some(2.0 / 3.0)));
        assert_eq!((s.labelled, s.correct), (3, 2));
        assert_eq!(s.p50_ms, Some(30.0));
        assert_eq!(s.mean_ms, Some(190.0 / 3.0));
        let empty = summarize(&[]);
        assert_eq!(
            (empty.tasks, empty.p50_ms, empty.miss_rate()),
            (0, None, None)
        );
    }

    #[test]
    fn oracle_takes_the_best_outcome_per_task() {
        let local = vec![
            rec(0, Outcome::Ok, 5.0, "local"),
            rec(1, Outcome::Ok, 120.0, "local"),
            rec(2, Outcome::Failed, 1.0, ""),
            rec(3, Outcome::Ok, 130.0, "local"),
        ];
        let cloud = vec![
            rec(0, Outcome::Ok, 42.0, "cloud"),
            rec(1, Outcome::Ok, 45.0, "cloud"),
            rec(2, Outcome::Ok, 200.0, "cloud"),
            rec(3, Outcome::Ok, 110.0, "cloud"),
        ];
        let o = oracle(&[&local, &cloud]);
        let got: Vec<(u32, f64, Option<String>)> = o
            .iter()
            .map(|r| (r.seq, r.latency_ms, r.path.clone()))
            .collect();
        assert_eq!(
            got,
            vec![
                (0, 5.0, Some("local".into())),
                (1, 45.0, Some("cloud".into())),
                // late beats failed; between two late ones, the faster
                (2, 200.0, Some("cloud".into())),
                (3, 110.0, Some("cloud".into())),
            ]
        );
        assert_eq!(mean_excess(&local, &o), Some((0.0 + 75.0 + 20.0) / 3.0));
        assert_eq!(mean_excess(&o, &o), Some(0.0));
        // A task inside its deadline beats a faster one that failed.
        let a = vec![rec(9, Outcome::Failed, 0.1, "")];
        let b = vec![rec(9, Outcome::Ok, 90.0, "local")];
        assert_eq!(oracle(&[&a, &b])[0].outcome, Outcome::Ok);
    }
}
