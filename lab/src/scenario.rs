//! Scenario files (`bench/scenarios/*.toml`): link conditions per direction,
//! a schedule of changes, and the device profile and workload the benchmark
//! harness uses. See bench/README.md for the schema.

use crate::params::{Dir, LinkParams, LinkPatch};
use anyhow::{bail, ensure, Context, Result};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

/// Task types the workload may name (the agent's `TaskType::as_str`).
pub const TASK_TYPES: [&str; 3] = ["image_classification", "object_detection", "nlp_analysis"];
pub const PRIORITIES: [&str; 4] = ["low", "medium", "high", "critical"];

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Scenario {
    pub name: String,
    pub description: String,
    /// How long the benchmark runs the scenario.
    pub duration_s: f64,
    /// Conditions of both directions (per direction, one way).
    #[serde(default)]
    pub link: LinkPatch,
    /// Overrides for edge -> cloud.
    #[serde(default)]
    pub uplink: LinkPatch,
    /// Overrides for cloud -> edge.
    #[serde(default)]
    pub downlink: LinkPatch,
    #[serde(default)]
    pub schedule: Vec<ScheduleEntry>,
    pub profile: Profile,
    pub workload: Workload,
}

/// A change of conditions `at_s` seconds after the schedule starts.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ScheduleEntry {
    pub at_s: f64,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub note: String,
    #[serde(default, skip_serializing_if = "LinkPatch::is_empty")]
    pub link: LinkPatch,
    #[serde(default, skip_serializing_if = "LinkPatch::is_empty")]
    pub uplink: LinkPatch,
    #[serde(default, skip_serializing_if = "LinkPatch::is_empty")]
    pub downlink: LinkPatch,
}

impl ScheduleEntry {
    /// The patch for one direction: `link` first, then the direction's own.
    pub fn apply(&self, dir: Dir, params: &mut LinkParams) {
        params.apply(&self.link);
        params.apply(match dir {
            Dir::Uplink => &self.uplink,
            Dir::Downlink => &self.downlink,
        });
    }
}

/// Device profile of the run: the edge agent runs under a CPU quota.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Profile {
    /// CPU quota of the edge agent in CPUs (0.25 = a quarter of one core).
    pub edge_cpu_share: f64,
    /// Local inference workers of the edge agent.
    pub local_workers: u32,
    /// CPU quota of the cloud service; absent means no quota.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cloud_cpu_share: Option<f64>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Arrival {
    /// Exponential gaps with mean 1/tasks_per_s.
    #[default]
    Poisson,
    /// Fixed gaps of 1/tasks_per_s.
    Uniform,
}

/// The task stream the harness submits to the edge agent.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Workload {
    pub seed: u64,
    /// Mean arrival rate at the start (0 = idle until the first phase).
    pub tasks_per_s: f64,
    #[serde(default)]
    pub arrival: Arrival,
    pub mix: Vec<TaskMix>,
    /// Rate changes over time (`[[workload.phase]]`): bursts, steps and
    /// idle periods; each rate holds until the next phase.
    #[serde(default, rename = "phase", skip_serializing_if = "Vec::is_empty")]
    pub phases: Vec<RatePhase>,
}

/// From `at_s` on, tasks arrive at `tasks_per_s` (0 = idle).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RatePhase {
    pub at_s: f64,
    pub tasks_per_s: f64,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub note: String,
}

impl Workload {
    /// The arrival rate in force at `t_s`.
    pub fn rate_at(&self, t_s: f64) -> f64 {
        self.phases
            .iter()
            .take_while(|p| p.at_s <= t_s)
            .last()
            .map_or(self.tasks_per_s, |p| p.tasks_per_s)
    }

    /// Piecewise-constant rate as `(start_s, tasks_per_s)`, from 0.
    pub fn segments(&self) -> Vec<(f64, f64)> {
        std::iter::once((0.0, self.tasks_per_s))
            .chain(self.phases.iter().map(|p| (p.at_s, p.tasks_per_s)))
            .collect()
    }

    /// The same workload seen from `start_s` on: the rate in force there
    /// becomes the initial one, later phases keep their offsets.
    pub fn from_time(&self, start_s: f64) -> Workload {
        Workload {
            tasks_per_s: self.rate_at(start_s),
            phases: self
                .phases
                .iter()
                .filter(|p| p.at_s > start_s)
                .map(|p| RatePhase {
                    at_s: p.at_s - start_s,
                    ..p.clone()
                })
                .collect(),
            ..self.clone()
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TaskMix {
    /// One of [`TASK_TYPES`].
    pub task: String,
    /// Relative share of the stream.
    pub weight: f64,
    /// Relative deadline; absent means none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deadline_ms: Option<u64>,
    /// One of [`PRIORITIES`].
    #[serde(default = "default_priority")]
    pub priority: String,
}

fn default_priority() -> String {
    "medium".into()
}

impl Scenario {
    pub fn parse(text: &str) -> Result<Self> {
        let s: Scenario = toml::from_str(text)?;
        s.validate()?;
        Ok(s)
    }

    pub fn load(path: &Path) -> Result<Self> {
        let text =
            std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
        Scenario::parse(&text).with_context(|| format!("scenario {}", path.display()))
    }

    /// Every `*.toml` in a directory, sorted by file name.
    pub fn load_dir(dir: &Path) -> Result<Vec<(PathBuf, Scenario)>> {
        let mut paths: Vec<PathBuf> = std::fs::read_dir(dir)
            .with_context(|| format!("listing {}", dir.display()))?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|e| e == "toml"))
            .collect();
        paths.sort();
        paths
            .into_iter()
            .map(|p| Scenario::load(&p).map(|s| (p, s)))
            .collect()
    }

    /// Conditions of a direction at the start (before any schedule entry).
    pub fn initial(&self, dir: Dir) -> LinkParams {
        let mut p = LinkParams::default();
        p.apply(&self.link);
        p.apply(match dir {
            Dir::Uplink => &self.uplink,
            Dir::Downlink => &self.downlink,
        });
        p
    }

    /// Conditions of a direction `t_s` seconds into the schedule.
    pub fn params_at(&self, dir: Dir, t_s: f64) -> LinkParams {
        let mut p = self.initial(dir);
        for e in self.schedule.iter().take_while(|e| e.at_s <= t_s) {
            e.apply(dir, &mut p);
        }
        p
    }

    pub fn validate(&self) -> Result<()> {
        ensure!(!self.name.is_empty(), "name is empty");
        ensure!(
            self.duration_s.is_finite() && self.duration_s > 0.0,
            "duration_s must be > 0"
        );
        for dir in Dir::BOTH {
            let mut p = self.initial(dir);
            p.validate()
                .with_context(|| format!("{} at start", dir.as_str()))?;
            let mut prev = 0.0;
            for (i, e) in self.schedule.iter().enumerate() {
                ensure!(
                    e.at_s >= prev && e.at_s <= self.duration_s,
                    "schedule[{i}].at_s = {} must be sorted and within 0..=duration_s",
                    e.at_s
                );
                prev = e.at_s;
                e.apply(dir, &mut p);
                p.validate()
                    .with_context(|| format!("{} after schedule[{i}]", dir.as_str()))?;
            }
        }
        let pr = &self.profile;
        ensure!(
            pr.edge_cpu_share > 0.0 && pr.edge_cpu_share <= 1024.0,
            "profile.edge_cpu_share must be > 0"
        );
        ensure!(pr.local_workers >= 1, "profile.local_workers must be >= 1");
        if let Some(c) = pr.cloud_cpu_share {
            ensure!(c > 0.0, "profile.cloud_cpu_share must be > 0");
        }
        let w = &self.workload;
        ensure!(
            w.tasks_per_s.is_finite() && w.tasks_per_s >= 0.0,
            "workload.tasks_per_s must be >= 0"
        );
        let mut prev = 0.0;
        for (i, p) in w.phases.iter().enumerate() {
            ensure!(
                p.at_s >= prev && p.at_s <= self.duration_s,
                "workload.phase[{i}].at_s = {} must be sorted and within 0..=duration_s",
                p.at_s
            );
            ensure!(
                p.tasks_per_s.is_finite() && p.tasks_per_s >= 0.0,
                "workload.phase[{i}].tasks_per_s must be >= 0"
            );
            prev = p.at_s;
        }
        ensure!(
            w.segments().iter().any(|&(_, r)| r > 0.0),
            "workload: no task would ever arrive (every rate is 0)"
        );
        ensure!(!w.mix.is_empty(), "workload.mix is empty");
        for m in &w.mix {
            if !TASK_TYPES.contains(&m.task.as_str()) {
                bail!(
                    "workload.mix: unknown task {:?} (one of {TASK_TYPES:?})",
                    m.task
                );
            }
            if !PRIORITIES.contains(&m.priority.as_str()) {
                bail!(
                    "workload.mix: unknown priority {:?} (one of {PRIORITIES:?})",
                    m.priority
                );
            }
            ensure!(m.weight > 0.0, "workload.mix: weight must be > 0");
        }
        Ok(())
    }
}

/// Runtime cursor over a scenario's schedule.
#[derive(Debug, Clone)]
pub struct ScheduleCursor {
    entries: Vec<ScheduleEntry>,
    next: usize,
}

impl ScheduleCursor {
    pub fn new(entries: Vec<ScheduleEntry>) -> Self {
        ScheduleCursor { entries, next: 0 }
    }

    /// Seconds (schedule time) of the next entry, if any.
    pub fn next_at(&self) -> Option<f64> {
        self.entries.get(self.next).map(|e| e.at_s)
    }

    /// Entries due at `elapsed_s`, in order; each is returned once.
    pub fn pop_due(&mut self, elapsed_s: f64) -> Vec<ScheduleEntry> {
        let start = self.next;
        while self.next < self.entries.len() && self.entries[self.next].at_s <= elapsed_s {
            self.next += 1;
        }
        self.entries[start..self.next].to_vec()
    }

    pub fn rewind(&mut self) {
        self.next = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TEXT: &str = r#"
name = "t"
description = "test"
duration_s = 60
[link]
delay_ms = 20.0
jitter_ms = 1.0
[uplink]
rate_mbit = 100.0
[[schedule]]
at_s = 10
note = "storm"
link = { jitter_ms = 20.0 }
[[schedule]]
at_s = 20
uplink = { rate_mbit = 2.0 }
downlink = { up = false }
[profile]
edge_cpu_share = 0.25
local_workers = 1
[workload]
seed = 1
tasks_per_s = 10
mix = [{ task = "image_classification", weight = 1.0, deadline_ms = 100 }]
"#;

    #[test]
    fn parses_and_resolves_directions_over_time() {
        let s = Scenario::parse(TEXT).unwrap();
        let up0 = s.params_at(Dir::Uplink, 0.0);
        assert_eq!(
            (up0.delay_ms, up0.jitter_ms, up0.rate_mbit),
            (20.0, 1.0, 100.0)
        );
        assert_eq!(s.params_at(Dir::Downlink, 0.0).rate_mbit, 0.0);
        assert_eq!(s.params_at(Dir::Uplink, 10.0).jitter_ms, 20.0);
        let up20 = s.params_at(Dir::Uplink, 25.0);
        assert_eq!((up20.rate_mbit, up20.up, up20.jitter_ms), (2.0, true, 20.0));
        assert!(!s.params_at(Dir::Downlink, 25.0).up);
        assert_eq!(s.workload.mix[0].priority, "medium");
    }

    #[test]
    fn workload_phases_give_the_rate_over_time() {
        let text = format!(
            "{TEXT}{}",
            r#"
[[workload.phase]]
at_s = 30
tasks_per_s = 0
note = "idle"
[[workload.phase]]
at_s = 40
tasks_per_s = 50
"#
        );
        let s = Scenario::parse(&text).unwrap();
        let w = &s.workload;
        assert_eq!(
            [0.0, 29.9, 30.0, 35.0, 40.0, 100.0].map(|t| w.rate_at(t)),
            [10.0, 10.0, 0.0, 0.0, 50.0, 50.0]
        );
        let later = w.from_time(35.0);
        assert_eq!(later.tasks_per_s, 0.0);
        assert_eq!(later.phases.len(), 1);
        assert_eq!((later.phases[0].at_s, later.rate_at(5.0)), (5.0, 50.0));
        let back = Scenario::parse(&toml::to_string(&s).unwrap()).unwrap();
        assert_eq!(back, s);
        // Every rate 0, unsorted phases and negative rates are refused.
        let silent = text
            .replace("tasks_per_s = 10", "tasks_per_s = 0")
            .replace("tasks_per_s = 50", "tasks_per_s = 0");
        assert!(Scenario::parse(&silent).is_err());
        assert!(Scenario::parse(&text.replace("at_s = 40", "at_s = 25")).is_err());
        assert!(Scenario::parse(&text.replace("tasks_per_s = 50", "tasks_per_s = -1")).is_err());
    }

    #[test]
    fn rejects_typos_and_bad_values() {
        let typo = TEXT.replace("jitter_ms = 1.0", "jiter_ms = 1.0");
        assert!(Scenario::parse(&typo).is_err());
        let unsorted = TEXT.replace("at_s = 20", "at_s = 5");
        assert!(Scenario::parse(&unsorted).is_err());
        let bad_task = TEXT.replace("image_classification", "image");
        assert!(Scenario::parse(&bad_task).is_err());
        let bad_loss = TEXT.replace("jitter_ms = 1.0", "loss = 1.5");
        assert!(Scenario::parse(&bad_loss).is_err());
    }

    #[test]
    fn cursor_pops_each_entry_once() {
        let s = Scenario::parse(TEXT).unwrap();
        let mut c = ScheduleCursor::new(s.schedule.clone());
        assert_eq!(c.next_at(), Some(10.0));
        assert!(c.pop_due(9.9).is_empty());
        assert_eq!(c.pop_due(30.0).len(), 2);
        assert!(c.pop_due(40.0).is_empty());
        assert_eq!(c.next_at(), None);
        c.rewind();
        assert_eq!(c.pop_due(10.0)[0].note, "storm");
    }
}
