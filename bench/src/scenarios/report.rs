//! The benchmark's results as data (`scenarios.json`) and as the markdown
//! report (`scenarios.md`). Rendering is pure: everything measured comes in.

use super::stats::{host_pace, Summary, CONFIDENT_P, PACE_MIN_TASKS};
use crate::support::cpu_quota::Throttling;
use jitter_lab::scenario::Profile;
use serde::{Deserialize, Serialize};
use std::fmt::Write;

pub use crate::support::stamp::Machine;

/// One CPU job size: the CPU time it needs, its wall time unconstrained
/// and in the edge's cgroup (each the fastest of a few runs).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Job {
    pub cpu_ms: f64,
    pub unconstrained_ms: f64,
    pub edge_ms: f64,
}

impl Job {
    /// Edge wall time over the work's CPU time: the slowdown the device
    /// profile adds (on top of any contention for the cores).
    pub fn slowdown(&self) -> f64 {
        self.edge_ms / self.cpu_ms
    }
}

/// How much slower the edge's cgroup runs fixed CPU jobs.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Calibration {
    pub share: f64,
    pub quota: String,
    pub jobs: Vec<Job>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Row {
    pub policy: String,
    pub summary: Summary,
    /// Mean extra latency over the oracle on tasks both completed (ms).
    pub vs_oracle_ms: Option<f64>,
    /// During the run, the throttling of the cgroup with the profile's
    /// share: the inference workers', or the whole edge agent's.
    pub throttling: Throttling,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ScenarioResult {
    pub name: String,
    /// The workload's seed (the link model's too) of this run.
    #[serde(default)]
    pub seed: u64,
    pub description: String,
    /// Seconds of the full scenario this run covered (`[from, to]`).
    pub span_s: (f64, f64),
    pub profile: Profile,
    pub edge_quota: String,
    /// Per task type, the median of the agent's own (self-calibrating)
    /// estimates over the run: local inference (decoding included) in the
    /// always-local run, the cloud's server time in the always-offload run.
    pub local_inference_ms: std::collections::BTreeMap<String, f64>,
    pub cloud_inference_ms: std::collections::BTreeMap<String, f64>,
    /// Decisions per source of the network estimate they used, all runs.
    pub network_sources: std::collections::BTreeMap<String, usize>,
    pub rows: Vec<Row>,
    pub oracle: Option<Summary>,
    /// Split computing: where the tasks of the policies that chose among
    /// split points ran, per phase of the schedule.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub choices: Vec<super::stats::PhaseChoice>,
}

impl ScenarioResult {
    /// A policy's summary in this run; `*oracle*`: the oracle's.
    fn summary_of(&self, policy: &str) -> Option<&Summary> {
        if policy == "*oracle*" {
            self.oracle.as_ref()
        } else {
            self.rows
                .iter()
                .find(|rw| rw.policy == policy)
                .map(|rw| &rw.summary)
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BenchResult {
    pub command: String,
    /// The code measured (`support::stamp::source_commit`).
    pub commit: String,
    pub date_utc: String,
    /// Where the per-task records and logs of the run are.
    pub records_dir: String,
    pub wall_s: f64,
    pub quick: bool,
    pub machine: Machine,
    pub backend: String,
    pub transport: String,
    pub calibrations: Vec<Calibration>,
    pub scenarios: Vec<ScenarioResult>,
    /// Set when the report was written again from this data by a later
    /// build (`scenario-bench --render`): that command and its commit.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rendered_again: Option<String>,
    /// Offloads completed over (QUIC, gRPC), every run.
    #[serde(default)]
    pub offloads: (usize, usize),
    /// When the run was continued with `--resume` (UTC), if it was.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub resumed: Vec<String>,
    /// Scenario runs (scenario x seed) of the command not yet run when
    /// this was written: more than 0 while a run is under way or after it
    /// was interrupted.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub left: usize,
    /// What every scenario's edge CPU share was multiplied by
    /// (`--edge-cpu-scale`); the scenarios' profiles hold the shares run.
    #[serde(default = "one", skip_serializing_if = "is_one")]
    pub edge_cpu_scale: f64,
    /// What the profile's edge CPU share bounded (results from before the
    /// option: the whole agent).
    #[serde(default = "whole_agent")]
    pub edge_quota: EdgeQuota,
    /// With the share on inference only: the CPUs the rest of the edge
    /// agent had (task API, decisions, offloads).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub edge_agent_cpu: Option<f64>,
}

/// What the scenario profile's edge CPU share bounds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum EdgeQuota {
    /// The edge's inference workers alone (a cgroup of their own, the
    /// agent's `--inference-cgroup`): the device's accelerator. The rest
    /// of the agent has a quota of its own (`--edge-agent-cpu`).
    Inference,
    /// The whole edge agent: a spent quota stalls its task API and
    /// offloads as well as its models.
    Agent,
}

fn whole_agent() -> EdgeQuota {
    EdgeQuota::Agent
}

fn is_zero(n: &usize) -> bool {
    *n == 0
}

fn one() -> f64 {
    1.0
}

fn is_one(x: &f64) -> bool {
    *x == 1.0
}

/// `image 18.2, detect 55.0, text 0.9`: one figure per task type.
fn per_type(m: &std::collections::BTreeMap<String, f64>) -> String {
    if m.is_empty() {
        return "-".into();
    }
    m.iter()
        .map(|(task, v)| {
            let short = match task.as_str() {
                "image_classification" => "image",
                "object_detection" => "detect",
                "nlp_analysis" => "text",
                other => other,
            };
            format!("{short} {}", ms(Some(*v)))
        })
        .collect::<Vec<_>>()
        .join(", ")
}

/// The published device figures each task type's edge model stands in for
/// (cited, not measured here).
fn jetson_reference(task: &str) -> &'static str {
    match task {
        "image_classification" => {
            "ResNet-18, 224x224, Jetson Nano: 34.7 ms PyTorch fp16, 11.4 ms TensorRT (torch2trt)"
        }
        "object_detection" => {
            "YOLOv8n, Jetson Orin Nano: 21.9 ms PyTorch on the GPU; YOLO-class on a Nano: ~70 ms"
        }
        "nlp_analysis" => "small text classifiers (no published Jetson figure quoted)",
        _ => "-",
    }
}

/// Per task type, the median over scenarios of the measured local (under
/// the profile) and cloud inference, beside the device it stands for.
fn model_costs(o: &mut String, r: &BenchResult) {
    let mut local: std::collections::BTreeMap<&str, Vec<f64>> = Default::default();
    let mut cloud: std::collections::BTreeMap<&str, Vec<f64>> = Default::default();
    for s in &r.scenarios {
        for (t, v) in &s.local_inference_ms {
            local.entry(t).or_default().push(*v);
        }
        for (t, v) in &s.cloud_inference_ms {
            cloud.entry(t).or_default().push(*v);
        }
    }
    if local.is_empty() {
        return;
    }
    let median = |v: Option<&Vec<f64>>| {
        v.and_then(|v| {
            let mut v = v.clone();
            v.sort_by(f64::total_cmp);
            super::stats::percentile(&v, 0.5)
        })
    };
    let _ = writeln!(
        o,
        "Models under the profile (median over the scenarios above):\n\n\
         | task type | edge model, local (ms) | cloud model, cloud (ms) | edge / cloud | the edge stands for |\n\
         |---|---|---|---|---|"
    );
    for (task, l) in &local {
        let l = median(Some(l));
        let c = median(cloud.get(task));
        let ratio = match (l, c) {
            (Some(l), Some(c)) if c > 0.0 => format!("{:.1}x", l / c),
            _ => "-".into(),
        };
        let _ = writeln!(
            o,
            "| {task} | {} | {} | {ratio} | {} |",
            ms(l),
            ms(c),
            jetson_reference(task)
        );
    }
    let _ = writeln!(o);
}

fn ms(v: Option<f64>) -> String {
    v.map_or("-".into(), |v| {
        if v.abs() >= 100.0 {
            format!("{v:.0}")
        } else {
            format!("{v:.1}")
        }
    })
}

fn pct(v: Option<f64>) -> String {
    v.map_or("-".into(), |v| format!("{:.1} %", v * 100.0))
}

fn row(out: &mut String, scenario: &str, policy: &str, s: &Summary, vs: &str) {
    let _ = writeln!(
        out,
        "| {scenario} | {policy} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {vs} |",
        s.tasks,
        pct(s.miss_rate()),
        s.failed,
        ms(s.charged_mean_ms),
        ms(s.p50_ms),
        ms(s.p95_ms),
        ms(s.p99_ms),
        pct(s.offload_ratio()),
        pct(s.accuracy()),
    );
}

/// Per scenario and policy, the spread over seeds of the headline figures.
fn across_seeds(o: &mut String, r: &BenchResult) {
    let _ = writeln!(
        o,
        "\n### Across seeds\n\nMean over the seeds, [min - max] in brackets.\n\n\
         | scenario | policy | seeds | deadline miss | mean ms (failures charged) | offloaded |\n\
         |---|---|---|---|---|---|"
    );
    let mut names: Vec<&str> = r.scenarios.iter().map(|s| s.name.as_str()).collect();
    names.dedup();
    for name in names {
        let runs: Vec<&ScenarioResult> = r.scenarios.iter().filter(|s| s.name == name).collect();
        let mut policies: Vec<String> = runs[0].rows.iter().map(|rw| rw.policy.clone()).collect();
        policies.push("*oracle*".into());
        for policy in policies {
            let sums: Vec<&Summary> = runs.iter().filter_map(|s| s.summary_of(&policy)).collect();
            let spread = |f: &dyn Fn(&Summary) -> Option<f64>,
                          show: &dyn Fn(Option<f64>) -> String| {
                let v: Vec<f64> = sums.iter().filter_map(|s| f(s)).collect();
                if v.is_empty() {
                    return "-".to_string();
                }
                let mean = v.iter().sum::<f64>() / v.len() as f64;
                let (lo, hi) = v
                    .iter()
                    .fold((f64::INFINITY, f64::NEG_INFINITY), |(a, b), x| {
                        (a.min(*x), b.max(*x))
                    });
                format!(
                    "{} [{} - {}]",
                    show(Some(mean)),
                    show(Some(lo)),
                    show(Some(hi))
                )
            };
            let _ = writeln!(
                o,
                "| {name} | {policy} | {} | {} | {} | {} |",
                sums.len(),
                spread(&|s| s.miss_rate(), &pct),
                spread(&|s| s.charged_mean_ms, &ms),
                spread(&|s| s.offload_ratio(), &pct),
            );
        }
    }
}

/// Prediction error of the path taken, per scenario and policy.
fn prediction_errors(o: &mut String, r: &BenchResult) {
    let _ = writeln!(
        o,
        "## Prediction error\n\n\
         |predicted - actual| / actual of the path each task took, against the agent's own \
         measure from the decision to the answer (what the decision could still change), over \
         completed tasks that neither fell back nor were hedged: median / p90. The prediction \
         is the median of the path's predicted distribution where the policy predicts one \
         (deadline-aware, predictive: the point that minimises the absolute error; their \
         expected latency is that distribution's mean, whose error the mean columns give), \
         else the decision's expected latency. Outside: the median of what the submitter saw \
         beyond that (the way to and from the task API, and its waits for CPU), the same \
         for every path. Hedged: tasks run on both paths.\n\n\
         | scenario | policy | local | cloud | local, mean | cloud, mean | outside (ms) | hedged |\n|---|---|---|---|---|---|---|---|"
    );
    let show = |e: Option<(f64, f64)>| {
        e.map_or("-".into(), |(m, p)| {
            format!("{:.0} % / {:.0} %", m * 100.0, p * 100.0)
        })
    };
    for s in &r.scenarios {
        for rw in &s.rows {
            if rw.summary.pred_err_local.is_none() && rw.summary.pred_err_cloud.is_none() {
                continue;
            }
            let _ = writeln!(
                o,
                "| {} (seed {}) | {} | {} | {} | {} | {} | {} | {} |",
                s.name,
                s.seed,
                rw.policy,
                show(rw.summary.pred_err_local),
                show(rw.summary.pred_err_cloud),
                show(rw.summary.pred_err_local_mean),
                show(rw.summary.pred_err_cloud_mean),
                ms(rw.summary.outside_ms),
                rw.summary.hedged
            );
        }
    }
    let _ = writeln!(o);
    local_error_by_type(o, r);
    calibration_table(o, r);
}

/// How well each policy's predicted chance of meeting the deadline held.
fn calibration_table(o: &mut String, r: &BenchResult) {
    let _ = writeln!(
        o,
        "Calibration of the predicted chance of meeting the deadline (`p_meet` of the path each \
         task was sent to, every policy's decisions predict it for the record) against what \
         happened, over tasks with a deadline, except those moved from the local queue: the \
         Brier score (mean of (p - met)^2), the expected calibration error (ten bins of p, \
         |mean p - share met| weighed by their tasks; 0 is perfectly calibrated), and the \
         tasks predicted at >= {:.0} % with the share of them that met their deadline.\n\n\
         | scenario | policy | tasks | Brier | calibration error | p >= {:.0} % | of those, met |\n\
         |---|---|---|---|---|---|---|",
        CONFIDENT_P * 100.0,
        CONFIDENT_P * 100.0
    );
    for s in &r.scenarios {
        for rw in &s.rows {
            let Some(c) = rw.summary.calibration else {
                continue;
            };
            let _ = writeln!(
                o,
                "| {} (seed {}) | {} | {} | {:.3} | {:.3} | {:.0} % | {} |",
                s.name,
                s.seed,
                rw.policy,
                c.tasks,
                c.brier,
                c.ece,
                c.confident * 100.0,
                c.confident_met
                    .map_or("-".into(), |m| format!("{:.1} %", m * 100.0))
            );
        }
    }
    let _ = writeln!(o);
}

/// The default policy's local prediction error per task type: under the
/// edge's CPU quota the models differ most in how often a run outlasts
/// the period's allowance.
fn local_error_by_type(o: &mut String, r: &BenchResult) {
    let rows: Vec<_> = r
        .scenarios
        .iter()
        .flat_map(|s| {
            s.rows
                .iter()
                .filter(|rw| rw.policy == DEFAULT_POLICY)
                .map(move |rw| (s, &rw.summary))
        })
        .filter(|(_, sum)| !sum.pred_err_local_by_type.is_empty())
        .collect();
    if rows.is_empty() {
        return;
    }
    let types: std::collections::BTreeSet<&String> = rows
        .iter()
        .flat_map(|(_, sum)| sum.pred_err_local_by_type.keys())
        .collect();
    let _ = writeln!(
        o,
        "Local prediction error of deadline-aware per task type (the local column above, \
         split): median / p90 (tasks). Under the edge's quota a run often overruns its \
         period's allowance until the kernel's next tick and ends at its own speed; the run \
         after it waits for that debt, one or more periods (ARCHITECTURE.md, \
         `ExecTimeModel`). All types: the local column above; in hindsight: its error had \
         each run been predicted at the median actual of its task type's runs that were (or \
         were not) predicted to queue in the whole run, a reference for what the runs' own \
         spread leaves to a prediction that knows no more of a task than that.\n"
    );
    let mut head = String::from("| scenario |");
    let mut rule = String::from("|---|");
    for t in &types {
        head.push_str(&format!(" {t} |"));
        rule.push_str("---|");
    }
    head.push_str(" all types | in hindsight |");
    rule.push_str("---|---|");
    let pct = |(m, p90): (f64, f64)| format!("{:.0} % / {:.0} %", m * 100.0, p90 * 100.0);
    let _ = writeln!(o, "{head}\n{rule}");
    for (s, sum) in rows {
        let mut line = format!("| {} (seed {}) |", s.name, s.seed);
        for t in &types {
            line.push_str(&match sum.pred_err_local_by_type.get(*t) {
                Some(&(m, p90, n)) => format!(" {} ({n}) |", pct((m, p90))),
                None => " - |".into(),
            });
        }
        for e in [sum.pred_err_local, sum.pred_err_local_hindsight] {
            line.push_str(&format!(" {} |", e.map_or("-".into(), pct)));
        }
        let _ = writeln!(o, "{line}");
    }
    let _ = writeln!(o);
}

/// The default policy: the one the report's targets are about.
const DEFAULT_POLICY: &str = "deadline-aware";
/// The static policies it must not miss more deadlines than.
const STATIC_POLICIES: [&str; 4] = ["always-local", "always-offload", "threshold", "cost-model"];
/// The calm scenarios whose prediction error has a target.
const CALM: [&str; 2] = ["lan", "wan"];

/// Mean over `v`, `None` when empty.
fn mean(v: &[f64]) -> Option<f64> {
    (!v.is_empty()).then(|| v.iter().sum::<f64>() / v.len() as f64)
}

/// The default policy against the static ones and the oracle, per scenario
/// (means over the seeds), and its prediction error in the calm
/// scenarios: the decision engine's targets, checked on this run. Only
/// for a run with the default policy, every static one and the oracle.
fn targets(o: &mut String, r: &BenchResult) {
    let mut names: Vec<&str> = r.scenarios.iter().map(|s| s.name.as_str()).collect();
    names.dedup();
    // Per scenario: the mean over its seeds of `f` for `policy`.
    let over_seeds = |name: &str, policy: &str, f: &dyn Fn(&Summary) -> Option<f64>| {
        let v: Vec<f64> = r
            .scenarios
            .iter()
            .filter(|s| s.name == name)
            .filter_map(|s| s.summary_of(policy))
            .filter_map(f)
            .collect();
        mean(&v)
    };
    let complete = names.iter().all(|&n| {
        STATIC_POLICIES
            .iter()
            .chain([&DEFAULT_POLICY, &"*oracle*"])
            .all(|&p| over_seeds(n, p, &|s| s.miss_rate()).is_some())
    });
    if names.is_empty() || !complete {
        return;
    }
    let _ = writeln!(
        o,
        "## Targets\n\n\
         {DEFAULT_POLICY} against the static policies ({}) and the oracle, on this run: \
         deadline-miss rate and mean latency (failures charged), each the mean over the \
         seeds. Targets: a miss rate no higher than any static policy's in every scenario, \
         strictly lower than the best of them in at least 4, a mean latency within 15 % of \
         the oracle's in at least 5.\n\n\
         | scenario | {DEFAULT_POLICY} miss | best static miss | no higher than any static | strictly lower | mean / oracle mean | within 15 % |\n\
         |---|---|---|---|---|---|---|",
        STATIC_POLICIES.join(", ")
    );
    let yes = |b: bool| if b { "yes" } else { "no" };
    let (mut no_higher, mut lower, mut near) = (0, 0, 0);
    for &name in &names {
        let miss = |p: &str| over_seeds(name, p, &|s| s.miss_rate()).unwrap_or(f64::NAN);
        let own = miss(DEFAULT_POLICY);
        let (best, best_miss) = STATIC_POLICIES
            .iter()
            .map(|&p| (p, miss(p)))
            .fold(("", f64::INFINITY), |a, b| if b.1 < a.1 { b } else { a });
        let ok_higher = own <= best_miss;
        let ok_lower = own < best_miss;
        let ratio = match (
            over_seeds(name, DEFAULT_POLICY, &|s| s.charged_mean_ms),
            over_seeds(name, "*oracle*", &|s| s.charged_mean_ms),
        ) {
            (Some(a), Some(b)) if b > 0.0 => Some(a / b),
            _ => None,
        };
        let ok_near = ratio.is_some_and(|x| x <= 1.15);
        no_higher += usize::from(ok_higher);
        lower += usize::from(ok_lower);
        near += usize::from(ok_near);
        let _ = writeln!(
            o,
            "| {name} | {} | {} ({best}) | {} | {} | {} | {} |",
            pct(Some(own)),
            pct(Some(best_miss)),
            yes(ok_higher),
            yes(ok_lower),
            ratio.map_or("-".into(), |x| format!("{x:.2}")),
            yes(ok_near),
        );
    }
    let n = names.len();
    let _ = writeln!(
        o,
        "\nNo higher than any static policy in {no_higher} of {n} scenarios (target: all): {}; \
         strictly lower than the best in {lower} (target: at least 4): {}; within 15 % of the \
         oracle in {near} (target: at least 5): {}.\n",
        yes(no_higher == n),
        yes(lower >= 4),
        yes(near >= 5)
    );
    // Prediction error, per seed, in the calm scenarios.
    let calm: Vec<&ScenarioResult> = r
        .scenarios
        .iter()
        .filter(|s| CALM.contains(&s.name.as_str()))
        .collect();
    if calm.is_empty() {
        return;
    }
    let _ = writeln!(
        o,
        "{DEFAULT_POLICY}'s median prediction error per path in the calm scenarios, per seed \
         (target: at most 25 % for each path; from the prediction error table below), and \
         the local runs' error in hindsight (each at the median of its task type's runs that \
         were, or were not, predicted to queue: what their spread leaves to such a prediction):\n\n\
         | scenario | local | cloud | at most 25 % | local in hindsight |\n|---|---|---|---|---|"
    );
    for s in calm {
        let Some(rw) = s.rows.iter().find(|rw| rw.policy == DEFAULT_POLICY) else {
            continue;
        };
        let show = |e: Option<(f64, f64)>| e.map_or("-".into(), |(m, _)| pct(Some(m)));
        let within = [rw.summary.pred_err_local, rw.summary.pred_err_cloud]
            .iter()
            .flatten()
            .all(|(m, _)| *m <= 0.25);
        let _ = writeln!(
            o,
            "| {} (seed {}) | {} | {} | {} | {} |",
            s.name,
            s.seed,
            show(rw.summary.pred_err_local),
            show(rw.summary.pred_err_cloud),
            yes(within),
            show(rw.summary.pred_err_local_hindsight)
        );
    }
    let _ = writeln!(o);
}

/// File names of a scenario's plots, next to the report (a quick run's
/// end in `-quick`, as its report does).
pub fn plot_names(scenario: &str, quick: bool) -> (String, String) {
    let q = quick_suffix(quick);
    (
        format!("cdf-{scenario}{q}.png"),
        format!("timeline-{scenario}{q}.png"),
    )
}

/// File name of a scenario's split-choices plot.
pub fn split_plot_name(scenario: &str, quick: bool) -> String {
    format!("split-{scenario}{}.png", quick_suffix(quick))
}

fn quick_suffix(quick: bool) -> &'static str {
    if quick {
        "-quick"
    } else {
        ""
    }
}

/// The split computing comparison: per scenario, the mean latency of
/// local only, whole offload, the best fixed split point and each policy
/// that chooses; then where the choosing policies' tasks ran per phase.
fn split_section(o: &mut String, r: &BenchResult) {
    let splits = r
        .scenarios
        .iter()
        .any(|s| s.rows.iter().any(|rw| rw.policy.starts_with("split:")));
    if !splits {
        return;
    }
    let _ = writeln!(
        o,
        "## Split computing
"
    );
    let _ = writeln!(
        o,
        "Mean latency (ms, failures charged) of running locally, offloading whole, the best \
         fixed split point (the `split:<point>` run with the lowest mean), and the policies \
         that choose per task among local, whole and every split point; ratios below 1 mean \
         the choosing policy was faster.\n"
    );
    let _ = writeln!(
        o,
        "| scenario | policy | mean ms | always-local | always-offload | best fixed split | vs local | vs whole | vs best split |"
    );
    let _ = writeln!(o, "|---|---|---|---|---|---|---|---|---|");
    for s in &r.scenarios {
        let mean = |p: &str| {
            s.rows
                .iter()
                .find(|rw| rw.policy == p)
                .and_then(|rw| rw.summary.charged_mean_ms)
        };
        let best = s
            .rows
            .iter()
            .filter(|rw| rw.policy.starts_with("split:"))
            .filter_map(|rw| rw.summary.charged_mean_ms.map(|m| (rw.policy.as_str(), m)))
            .min_by(|a, b| a.1.total_cmp(&b.1));
        let ratio = |a: Option<f64>, b: Option<f64>| match (a, b) {
            (Some(a), Some(b)) if b > 0.0 => format!("{:.2}", a / b),
            _ => "-".into(),
        };
        for rw in s.rows.iter().filter(|rw| {
            !rw.policy.starts_with("split:")
                && rw.policy != "always-local"
                && rw.policy != "always-offload"
        }) {
            let m = rw.summary.charged_mean_ms;
            let _ = writeln!(
                o,
                "| {} (seed {}) | {} | {} | {} | {} | {} | {} | {} | {} |",
                s.name,
                s.seed,
                rw.policy,
                ms(m),
                ms(mean("always-local")),
                ms(mean("always-offload")),
                best.map_or("-".into(), |(p, v)| format!("{} ({p})", ms(Some(v)))),
                ratio(m, mean("always-local")),
                ratio(m, mean("always-offload")),
                ratio(m, best.map(|b| b.1)),
            );
        }
    }
    let mut variants: Vec<String> = vec!["local".into(), "whole".into()];
    for s in &r.scenarios {
        for c in &s.choices {
            for v in c.shares.keys() {
                if v != "failed" && !variants.contains(v) {
                    variants.push(v.clone());
                }
            }
        }
    }
    variants.push("failed".into());
    let _ = writeln!(
        o,
        "\nWhere the choosing policies' tasks ran, per phase of the link's schedule (share of \
         the phase's tasks; a split point's name: its head ran on the edge, its tail in the \
         cloud; `whole`: offloaded as submitted):\n"
    );
    let _ = writeln!(
        o,
        "| scenario | policy | phase (s) | link change | tasks | {} |",
        variants.join(" | ")
    );
    let _ = writeln!(o, "|---|---|---|---|---|{}", "---|".repeat(variants.len()));
    for s in &r.scenarios {
        for c in &s.choices {
            let cells: Vec<String> = variants
                .iter()
                .map(|v| match c.shares.get(v) {
                    Some(x) if *x > 0.0 => format!("{:.0} %", x * 100.0),
                    _ => "-".into(),
                })
                .collect();
            let _ = writeln!(
                o,
                "| {} (seed {}) | {} | {:.0}-{:.0} | {} | {} | {} |",
                s.name,
                s.seed,
                c.policy,
                s.span_s.0 + c.from_s,
                s.span_s.0 + c.to_s,
                c.note,
                c.tasks,
                cells.join(" | ")
            );
        }
    }
    let _ = writeln!(o);
    for s in &r.scenarios {
        if !s.choices.is_empty() {
            let _ = writeln!(o, "![{}](./{})", s.name, split_plot_name(&s.name, r.quick));
        }
    }
    let _ = writeln!(o);
}

pub fn render(r: &BenchResult) -> String {
    let mut o = String::new();
    let _ = writeln!(o, "# Scenario benchmark\n");
    let _ = writeln!(
        o,
        "Generated by `{}` at commit {} on {} ({} run, {:.1} min). Regenerate with the \
         same command; the per-task records and the logs are in `{}/`.\n",
        r.command,
        r.commit,
        r.date_utc,
        if r.quick { "quick" } else { "full" },
        r.wall_s / 60.0,
        r.records_dir
    );
    if !r.resumed.is_empty() {
        let _ = writeln!(
            o,
            "The run was interrupted and continued with `--resume` (same command, same code) \
             on {}: each scenario and seed ran whole in one part (one cut short ran again), \
             and the time above adds up the parts.\n",
            r.resumed.join(", ")
        );
    }
    if r.left > 0 {
        let _ = writeln!(
            o,
            "**Not complete:** {} more scenario runs (scenario x seed) of this command are \
             still to run. `--resume` continues it (`cargo xtask bench ... -- --resume`): \
             the runs below are kept, the others run, and this report is rewritten.\n",
            r.left
        );
    }
    if let Some(by) = &r.rendered_again {
        let _ = writeln!(
            o,
            "Report written again from that run's JSON by {by}: the figures, plots and stamps \
             above are the run's; only the rendering is newer.\n"
        );
    }
    let m = &r.machine;
    let _ = writeln!(
        o,
        "- machine: Linux {}, {} ({} cores), {:.1} GiB memory\n- link emulator: {}\n- offload transport: {}\n",
        m.kernel, m.cpu_model, m.cores, m.memory_gib, r.backend, r.transport
    );

    let _ = writeln!(o, "## Device profile\n");
    let _ = match (r.edge_quota, r.edge_agent_cpu) {
        (EdgeQuota::Inference, agent_cpu) => writeln!(
            o,
            "The edge's inference workers run in a cgroup of their own with the profile's CPU \
             share (`edge CPU`, the device's accelerator; the agent's `--inference-cgroup`); the \
             rest of the edge agent (task API, decisions, offloads) runs in its parent cgroup, \
             limited to {} CPU (`--edge-agent-cpu`). The cloud service runs without a quota \
             (unless the profile gives it one); the workload driver runs beside the edge, \
             unconstrained.\n",
            agent_cpu.map_or("an unstated".into(), |c| c.to_string())
        ),
        (EdgeQuota::Agent, _) => writeln!(
            o,
            "The whole edge agent runs in a cgroup with the profile's CPU share: its task API, \
             decisions and offloads stall with its models when the quota is spent \
             (`--edge-quota agent`). The cloud service runs without a quota (unless the profile \
             gives it one); the workload driver runs beside the edge, unconstrained.\n"
        ),
    };
    if r.edge_cpu_scale != 1.0 {
        let _ = writeln!(
            o,
            "Edge CPU: the scenario files' share times {} (`--edge-cpu-scale`). What a scale \
             does to the edge's model times: bench/README.md, Device profile.\n",
            r.edge_cpu_scale
        );
    }
    let _ = writeln!(
        o,
        "| scenario | span (s) | edge CPU | edge quota | local workers | cloud CPU | local inference (ms) | cloud inference (ms) | network estimate (decisions) |"
    );
    let _ = writeln!(o, "|---|---|---|---|---|---|---|---|---|");
    for s in &r.scenarios {
        let _ = writeln!(
            o,
            "| {} | {:.0}-{:.0} | {} | {} | {} | {} | {} | {} | {} |",
            s.name,
            s.span_s.0,
            s.span_s.1,
            s.profile.edge_cpu_share,
            s.edge_quota,
            s.profile.local_workers,
            s.profile
                .cloud_cpu_share
                .map_or("unlimited".into(), |c| c.to_string()),
            per_type(&s.local_inference_ms),
            per_type(&s.cloud_inference_ms),
            s.network_sources
                .iter()
                .map(|(k, v)| format!("{k} {v}"))
                .collect::<Vec<_>>()
                .join(", "),
        );
    }
    let _ = writeln!(
        o,
        "\nLocal and cloud inference, per task type: the median of the agent's own \
         self-calibrating estimates (local: the edge model's measured decoding and inference \
         under the quota, always-local run; cloud: the cloud's measured server time, \
         always-offload run). Network estimate: where the \
         RTT/jitter behind each decision came from (`none`: no estimate yet).\n"
    );
    model_costs(&mut o, r);
    for c in &r.calibrations {
        let _ = writeln!(
            o,
            "Calibration, edge CPU {} ({}): fixed CPU jobs, each after an idle gap, fastest of 5 runs \
             (CPU time: the work itself; unconstrained: wall time outside the cgroup, which other \
             load on the machine stretches):\n",
            c.share, c.quota
        );
        let _ = writeln!(
            o,
            "| job CPU time (ms) | unconstrained (ms) | in the edge's cgroup (ms) | edge / CPU time |"
        );
        let _ = writeln!(o, "|---|---|---|---|");
        for j in &c.jobs {
            let _ = writeln!(
                o,
                "| {:.2} | {:.2} | {:.2} | {:.1}x |",
                j.cpu_ms,
                j.unconstrained_ms,
                j.edge_ms,
                j.slowdown()
            );
        }
        let _ = writeln!(
            o,
            "\nCFS bandwidth control caps the CPU time per period, not the speed of an \
             instruction: a job shorter than the quota that starts after an idle gap runs at \
             full speed; longer or back-to-back work runs at about the share.\n"
        );
    }
    let _ = writeln!(o, "## Results\n");
    let _ = writeln!(
        o,
        "| scenario | policy | tasks | deadline miss | failed | mean ms (failures charged) | p50 ms | p95 ms | p99 ms | offloaded | accuracy | vs oracle ms |"
    );
    let _ = writeln!(o, "|---|---|---|---|---|---|---|---|---|---|---|---|");
    let several_seeds = several_seeds(r);
    for s in &r.scenarios {
        let name = run_name(s, several_seeds);
        for rw in &s.rows {
            row(&mut o, &name, &rw.policy, &rw.summary, &ms(rw.vs_oracle_ms));
        }
        if let Some(orc) = &s.oracle {
            row(&mut o, &name, "*oracle*", orc, "0");
        }
    }
    if several_seeds {
        across_seeds(&mut o, r);
    }
    let _ = writeln!(
        o,
        "\n- **tasks**: sent (the same seeded stream for every policy of a scenario; the \
         policies of a seed run one after another, in the listed order turned by one place per \
         seed, so a slow spell of the shared host does not fall on one policy in every seed);\n\
         - **deadline miss**: of the tasks with a deadline, those not answered with a result \
         within it (a failed task misses);\n\
         - **failed**: sent but not answered with a result (failed early, rejected, or no answer);\n\
         - **mean ms (failures charged)**: over every task sent; a task that did not complete \
         counts as its deadline or its latency, whichever is longer (no deadline: 1000 ms or \
         its latency);\n\
         - **p50/p95/p99**: latency seen by the submitter, over completed tasks;\n\
         - **offloaded**: completed tasks that ran in the cloud;\n\
         - **accuracy**: completed classification tasks (image and text) whose predicted class \
         matches the label (detections are scored by mAP in the README's model table);\n\
         - **vs oracle**: mean extra latency per task over the oracle, on tasks both completed.\n\n\
         **Oracle**: for each task, the better of its two measured outcomes in the always-local \
         and always-offload runs (within its deadline beats late beats failed, then lower \
         latency): the right path per task in hindsight. It is a reference, not a strict \
         bound: a policy that mixes paths changes the queueing both paths see.\n"
    );

    targets(&mut o, r);
    split_section(&mut o, r);
    prediction_errors(&mut o, r);
    let _ = writeln!(o, "## Edge CPU throttling\n");
    let _ = writeln!(
        o,
        "Of the cgroup with the profile's share: the inference workers' (`--edge-quota \
         inference`) or the whole edge agent's (`agent`).\n"
    );
    let _ = writeln!(
        o,
        "| scenario | policy | periods | throttled periods | throttled time (s) |"
    );
    let _ = writeln!(o, "|---|---|---|---|---|");
    for s in &r.scenarios {
        for rw in &s.rows {
            let t = &rw.throttling;
            let _ = writeln!(
                o,
                "| {} | {} | {} | {} | {:.2} |",
                s.name,
                rw.policy,
                t.periods,
                t.throttled_periods,
                t.throttled_ms / 1e3
            );
        }
    }

    host_pace_section(&mut o, r);

    let _ = writeln!(o, "\n## Plots\n");
    let _ = writeln!(
        o,
        "Per scenario: the latency CDF of every policy and the oracle; and a timeline, one \
         panel per policy, of the RTT and jitter (RTT standard deviation) the agent measured \
         when deciding, the configured RTT, and every task at its latency, marked by where \
         it ran.\n"
    );
    for s in &r.scenarios {
        let (cdf, tl) = plot_names(&s.name, r.quick);
        let _ = writeln!(o, "### {}\n\n{}\n", s.name, s.description);
        let _ = writeln!(o, "![{} latency CDF]({cdf})\n", s.name);
        let _ = writeln!(o, "![{} timeline]({tl})\n", s.name);
    }
    o
}

/// Whether some scenario ran with more than one seed.
fn several_seeds(r: &BenchResult) -> bool {
    r.scenarios.iter().any(|s| {
        r.scenarios
            .iter()
            .any(|t| t.name == s.name && t.seed != s.seed)
    })
}

/// A scenario's run in a table: its seed named where seeds differ.
fn run_name(s: &ScenarioResult, several_seeds: bool) -> String {
    if several_seeds {
        format!("{} (seed {})", s.name, s.seed)
    } else {
        s.name.clone()
    }
}

/// How fast the shared host ran during each policy's run, from the cloud's
/// own inference times ([`host_pace`]): the policies of a seed run one after
/// another, and a slow spell of the host falls on whichever runs then.
fn host_pace_section(o: &mut String, r: &BenchResult) {
    let mut rows = r.scenarios.iter().flat_map(|s| &s.rows);
    if rows.all(|rw| rw.summary.cloud_server_ms.is_empty()) {
        // Results from before the runs kept their cloud times.
        return;
    }
    let _ = writeln!(o, "\n## Host pace\n");
    let _ = writeln!(
        o,
        "The cloud service runs unconstrained on the same host as the edge, and its own \
         inference time per task depends little on the policy (on how many tasks it \
         sends); so it shows how fast the shared host ran during each policy's run. Pace: \
         per task type (with at least {} tasks offloaded), the run's median cloud \
         inference time over the median of the seed's runs, and the median over the types; \
         1.30 means that run's cloud work took 30 % longer than usual, on the cores the \
         edge's local inference shares. Paces of 1.15 and over are in bold: compare those \
         rows with care.\n",
        PACE_MIN_TASKS
    );
    let _ = writeln!(
        o,
        "| scenario | policy | cloud inference ms, median (tasks) | pace |\n|---|---|---|---|"
    );
    let several_seeds = several_seeds(r);
    for s in &r.scenarios {
        let name = run_name(s, several_seeds);
        let summaries: Vec<&Summary> = s.rows.iter().map(|rw| &rw.summary).collect();
        for (rw, pace) in s.rows.iter().zip(host_pace(&summaries)) {
            if rw.summary.cloud_server_ms.is_empty() {
                continue;
            }
            let times: Vec<String> = rw
                .summary
                .cloud_server_ms
                .iter()
                .map(|(t, (m, n))| format!("{t} {m:.1} ({n})"))
                .collect();
            let pace = match pace {
                Some(p) if p >= 1.15 => format!("**{p:.2}**"),
                Some(p) => format!("{p:.2}"),
                None => "–".into(),
            };
            let _ = writeln!(
                o,
                "| {name} | {} | {} | {pace} |",
                rw.policy,
                times.join(", ")
            );
        }
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    pub(crate) fn result() -> BenchResult {
        let summary = Summary {
            tasks: 200,
            completed: 198,
            failed: 2,
            with_deadline: 180,
            deadline_missed: 9,
            p50_ms: Some(4.25),
            p95_ms: Some(41.0),
            p99_ms: Some(130.4),
            mean_ms: Some(10.0),
            offloaded: 99,
            labelled: 198,
            correct: 190,
            fell_back: 0,
            charged_mean_ms: Some(12.5),
            pred_err_local: Some((0.1, 0.3)),
            pred_err_cloud: None,
            pred_err_local_mean: Some((0.2, 0.4)),
            pred_err_cloud_mean: None,
            pred_err_local_by_type: [
                ("image_classification".to_string(), (0.4, 0.9, 20)),
                ("nlp_analysis".to_string(), (0.1, 0.3, 12)),
            ]
            .into(),
            pred_err_local_hindsight: Some((0.05, 0.2)),
            hedged: 3,
            outside_ms: Some(2.5),
            calibration: Some(super::super::stats::Calibration {
                tasks: 180,
                brier: 0.0641,
                ece: 0.031,
                confident: 0.6,
                confident_met: Some(0.972),
            }),
            cloud_server_ms: Default::default(),
        };
        BenchResult {
            command: "cargo xtask bench --quick".into(),
            commit: "0123456789ab".into(),
            date_utc: "2025-01-01 00:00 UTC".into(),
            records_dir: "target/scenario-bench".into(),
            wall_s: 300.0,
            quick: true,
            machine: Machine {
                kernel: "6.1".into(),
                cpu_model: "Some CPU".into(),
                cores: 2,
                memory_gib: 7.8,
            },
            backend: "tun".into(),
            transport: "QUIC".into(),
            calibrations: vec![Calibration {
                share: 0.25,
                quota: "q".into(),
                jobs: vec![Job {
                    cpu_ms: 2.0,
                    unconstrained_ms: 2.5,
                    edge_ms: 7.0,
                }],
            }],
            rendered_again: None,
            edge_cpu_scale: 1.0,
            edge_quota: EdgeQuota::Inference,
            edge_agent_cpu: Some(1.0),
            offloads: (0, 0),
            resumed: Vec::new(),
            left: 0,
            scenarios: vec![ScenarioResult {
                name: "wan".into(),
                seed: 106,
                description: "d".into(),
                span_s: (0.0, 15.0),
                profile: Profile {
                    edge_cpu_share: 0.25,
                    local_workers: 1,
                    cloud_cpu_share: None,
                },
                edge_quota: "1000 us every 4000 us".into(),
                local_inference_ms: [("image_classification".to_string(), 0.6)].into(),
                cloud_inference_ms: [("image_classification".to_string(), 0.4)].into(),
                network_sources: [("active-tcp".to_string(), 3)].into(),
                rows: vec![Row {
                    policy: "cost-model".into(),
                    summary: summary.clone(),
                    vs_oracle_ms: Some(1.25),
                    throttling: Throttling::default(),
                }],
                oracle: Some(summary),
                choices: Vec::new(),
            }],
        }
    }

    #[test]
    fn table_rows_carry_the_figures() {
        let md = render(&result());
        assert!(md.contains("`cargo xtask bench --quick`"));
        assert!(
            md.contains(
                "| wan | cost-model | 200 | 5.0 % | 2 | 12.5 | 4.2 | 41.0 | 130 | 50.0 % | 96.0 % | 1.2 |"
            ),
            "{md}"
        );
        assert!(md.contains("| wan | *oracle* | 200 |"));
        assert!(md.contains("| 2.00 | 2.50 | 7.00 | 3.5x |"));
        assert!(
            md.contains("| cost-model | 180 | 0.064 | 0.031 | 60 % | 97.2 % |"),
            "{md}"
        );
        assert!(
            md.contains("| wan | 0-15 | 0.25 | 1000 us every 4000 us | 1 | unlimited | image 0.6 | image 0.4 | active-tcp 3 |")
        );
        assert!(
            md.contains("| image_classification | 0.6 | 0.4 | 1.5x | ResNet-18"),
            "{md}"
        );
        assert!(md.contains("at commit 0123456789ab"));
        assert!(!md.contains("Not complete"), "{md}");
        let mut part = result();
        part.left = 5;
        assert!(
            render(&part).contains("**Not complete:** 5 more scenario runs"),
            "a run under way or interrupted says so"
        );
        assert!(
            md.contains(
                "| wan (seed 106) | cost-model | 10 % / 30 % | - | 20 % / 40 % | - | 2.5 | 3 |"
            ),
            "{md}"
        );
        assert!(!md.contains("### Across seeds"));
        // The per-type table is the default policy's alone.
        assert!(!md.contains("per task type (the local column"), "{md}");
        let mut typed = result();
        typed.scenarios[0].rows[0].policy = "deadline-aware".into();
        let md = render(&typed);
        assert!(
            md.contains(
                "| scenario | image_classification | nlp_analysis | all types | in hindsight |\n\
                 |---|---|---|---|---|\n\
                 | wan (seed 106) | 40 % / 90 % (20) | 10 % / 30 % (12) | 10 % / 30 % | 5 % / 20 % |"
            ),
            "{md}"
        );
        // A second seed: rows name their seed and the spread table appears.
        let mut two = result();
        let mut other = two.scenarios[0].clone();
        other.seed = 107;
        other.rows[0].summary.charged_mean_ms = Some(22.5);
        two.scenarios.push(other);
        let md = render(&two);
        assert!(md.contains("| wan (seed 107) | cost-model | 200 |"), "{md}");
        assert!(
            md.contains("| wan | cost-model | 2 | 5.0 % [5.0 % - 5.0 %] | 17.5 [12.5 - 22.5] |"),
            "{md}"
        );
        assert!(
            md.contains("![wan latency CDF](cdf-wan-quick.png)"),
            "a quick run's plots"
        );
        let json = serde_json::to_string(&result()).unwrap();
        assert_eq!(
            serde_json::from_str::<BenchResult>(&json).unwrap(),
            result()
        );
    }

    #[test]
    fn host_pace_marks_a_policy_run_on_a_slow_host() {
        let mut r = result();
        let cloud = |ms: f64| -> std::collections::BTreeMap<String, (f64, usize)> {
            [("image_classification".to_string(), (ms, 300))].into()
        };
        let template = r.scenarios[0].rows[0].clone();
        r.scenarios[0].rows = [
            ("threshold", 4.0),
            ("cost-model", 4.2),
            ("deadline-aware", 6.0),
        ]
        .into_iter()
        .map(|(policy, ms)| {
            let mut rw = template.clone();
            rw.policy = policy.into();
            rw.summary.cloud_server_ms = cloud(ms);
            rw
        })
        .collect();
        let mut local = template;
        local.policy = "always-local".into();
        r.scenarios[0].rows.push(local);
        let md = render(&r);
        assert!(md.contains("## Host pace"), "{md}");
        assert!(
            md.contains("| wan | threshold | image_classification 4.0 (300) | 0.95 |"),
            "{md}"
        );
        assert!(
            md.contains("| wan | deadline-aware | image_classification 6.0 (300) | **1.43** |"),
            "{md}"
        );
        // A run with nothing offloaded has no row.
        assert!(!md.contains("| wan | always-local | image"), "{md}");
    }

    #[test]
    fn a_run_s_report_is_written_again_from_its_json() {
        let dir = tempfile::tempdir().unwrap();
        let json = dir.path().join("scenarios.json");
        std::fs::write(&json, serde_json::to_string(&result()).unwrap()).unwrap();
        let md =
            crate::scenarios::run::render_again(&json, "`scenario-bench --render x` at commit abc")
                .unwrap();
        assert_eq!(md, dir.path().join("scenarios.md"));
        let text = std::fs::read_to_string(&md).unwrap();
        assert!(
            text.contains("Generated by `cargo xtask bench --quick` at commit 0123456789ab"),
            "{text}"
        );
        assert!(
            text.contains("Report written again from that run's JSON by `scenario-bench --render x` at commit abc"),
            "{text}"
        );
        assert!(
            text.contains("| wan | cost-model | 200 | 5.0 % |"),
            "{text}"
        );
        // The data file is left as it was.
        assert_eq!(
            serde_json::from_str::<BenchResult>(&std::fs::read_to_string(&json).unwrap()).unwrap(),
            result()
        );
        // Something else than a result: a clear error.
        std::fs::write(&json, "{}").unwrap();
        let err = crate::scenarios::run::render_again(&json, "x").unwrap_err();
        assert!(
            format!("{err:#}").contains("not a scenario-bench result"),
            "{err:#}"
        );
        // The report of a run (not rendered again) says nothing of it.
        assert!(!render(&result()).contains("written again"));
    }

    #[test]
    fn a_scaled_edge_share_is_stated_and_older_results_read_as_unscaled() {
        let plain = render(&result());
        assert!(!plain.contains("--edge-cpu-scale"), "{plain}");
        let scaled = BenchResult {
            edge_cpu_scale: 0.2,
            ..result()
        };
        let md = render(&scaled);
        assert!(
            md.contains("Edge CPU: the scenario files' share times 0.2 (`--edge-cpu-scale`)"),
            "{md}"
        );
        let json = serde_json::to_value(&scaled).unwrap();
        assert_eq!(json["edge_cpu_scale"], 0.2);
        // Results written before the option have no such field: unscaled.
        let mut old = serde_json::to_value(result()).unwrap();
        assert!(old.get("edge_cpu_scale").is_none(), "{old}");
        old.as_object_mut().unwrap().remove("edge_cpu_scale");
        let read: BenchResult = serde_json::from_value(old).unwrap();
        assert_eq!(read.edge_cpu_scale, 1.0);
    }

    #[test]
    fn the_report_says_what_the_edge_quota_bounds_and_older_results_read_as_whole_agent() {
        let md = render(&result());
        assert!(
            md.contains("The edge's inference workers run in a cgroup of their own"),
            "{md}"
        );
        assert!(md.contains("limited to 1 CPU (`--edge-agent-cpu`)"), "{md}");
        let whole = BenchResult {
            edge_quota: EdgeQuota::Agent,
            edge_agent_cpu: None,
            ..result()
        };
        let md = render(&whole);
        assert!(md.contains("The whole edge agent runs in a cgroup"), "{md}");
        assert!(!md.contains("inference workers run in a cgroup"), "{md}");
        // Results written before the option have neither field.
        let mut old = serde_json::to_value(result()).unwrap();
        assert_eq!(old["edge_quota"], "inference");
        old.as_object_mut().unwrap().remove("edge_quota");
        old.as_object_mut().unwrap().remove("edge_agent_cpu");
        let read: BenchResult = serde_json::from_value(old).unwrap();
        assert_eq!(
            (read.edge_quota, read.edge_agent_cpu),
            (EdgeQuota::Agent, None)
        );
    }

    #[test]
    fn targets_compare_the_default_policy_with_every_static_one() {
        // Without every static policy (the split set, a partial run): no section.
        assert!(!render(&result()).contains("## Targets"));
        let base = result();
        let sc0 = &base.scenarios[0];
        let with = |name: &str, seed: u64, missed: &[(&str, usize)], charged: f64| {
            let mut sc = sc0.clone();
            sc.name = name.into();
            sc.seed = seed;
            sc.rows = missed
                .iter()
                .map(|&(policy, m)| {
                    let mut rw = sc0.rows[0].clone();
                    rw.policy = policy.into();
                    rw.summary.deadline_missed = m;
                    rw.summary.charged_mean_ms = Some(charged);
                    rw
                })
                .collect();
            if let Some(o) = sc.oracle.as_mut() {
                o.charged_mean_ms = Some(10.0);
            }
            sc
        };
        // Misses of 180 tasks with a deadline: always-local, always-offload,
        // threshold, cost-model, deadline-aware.
        let policies = |m: [usize; 5]| {
            [
                ("always-local", m[0]),
                ("always-offload", m[1]),
                ("threshold", m[2]),
                ("cost-model", m[3]),
                ("deadline-aware", m[4]),
            ]
        };
        let mut r = base.clone();
        r.scenarios = vec![
            // wan: lower than the best static (9 -> 5.0 %), mean 1.10x the oracle's.
            with("wan", 1, &policies([30, 20, 9, 12, 3]), 11.0),
            with("wan", 2, &policies([30, 20, 9, 12, 3]), 11.0),
            // lossy: a tie with cost-model (not strictly lower), 2x the oracle.
            with("lossy", 1, &policies([40, 30, 20, 18, 18]), 20.0),
            // bursty: higher than threshold.
            with("bursty", 1, &policies([40, 30, 20, 25, 27]), 9.0),
        ];
        let md = render(&r);
        assert!(
            md.contains("| wan | 1.7 % | 5.0 % (threshold) | yes | yes | 1.10 | yes |"),
            "{md}"
        );
        assert!(
            md.contains("| lossy | 10.0 % | 10.0 % (cost-model) | yes | no | 2.00 | no |"),
            "{md}"
        );
        assert!(
            md.contains("| bursty | 15.0 % | 11.1 % (threshold) | no | no | 0.90 | yes |"),
            "{md}"
        );
        assert!(
            md.contains(
                "No higher than any static policy in 2 of 3 scenarios (target: all): no; \
                 strictly lower than the best in 1 (target: at least 4): no; within 15 % of \
                 the oracle in 2 (target: at least 5): no."
            ),
            "{md}"
        );
        // Prediction error per seed in the calm scenarios (10 % local, no cloud figure).
        assert!(
            md.contains("| wan (seed 1) | 10.0 % | - | yes | 5.0 % |"),
            "{md}"
        );
        assert!(
            md.contains("| wan (seed 2) | 10.0 % | - | yes | 5.0 % |"),
            "{md}"
        );
        assert!(!md.contains("| lossy (seed 1) | 10.0 % | - |"), "{md}");
    }
}
