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
    /// How an image is sent: `jpeg` (default, the held-out file as it is)
    /// or `png` (the same pixels, lossless: frames from a camera that sends
    /// raw images).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub format: String,
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
            match m.format.as_str() {
                "" | "jpeg" => {}
                "png" if m.task != "nlp_analysis" => {}
                other => bail!(
                    "workload.mix: format {other:?} for {} (jpeg, or png for images)",
                    m.task
                ),
            }
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

/// Property tests of scenario files: whatever text a file holds, parsing
/// answers with a valid scenario or an error, never a panic; a valid
/// scenario written out parses back equal.
#[cfg(test)]
mod proptests {
    use super::*;
    use proptest::prelude::*;

    prop_compose! {
        fn patch()(
            up in prop::option::of(any::<bool>()),
            delay_ms in prop::option::of(0.0..500.0f64),
            jitter_ms in prop::option::of(0.0..100.0f64),
            loss in prop::option::of(0.0..=1.0f64),
            rate_mbit in prop::option::of(prop_oneof![Just(0.0), 0.01..1000.0f64]),
            buffer_bytes in prop::option::of(0..1u64 << 40),
        ) -> LinkPatch {
            LinkPatch { up, delay_ms, jitter_ms, loss, rate_mbit, buffer_bytes, ..LinkPatch::default() }
        }
    }

    /// Sorted times within `0..=duration`.
    fn times(duration: f64, n: usize) -> impl Strategy<Value = Vec<f64>> {
        prop::collection::vec(0.0..=1.0f64, 0..n).prop_map(move |mut f| {
            f.sort_by(f64::total_cmp);
            f.into_iter().map(|x| x * duration).collect()
        })
    }

    fn mix() -> impl Strategy<Value = TaskMix> {
        (
            prop::sample::select(TASK_TYPES.to_vec()),
            0.01..10.0f64,
            prop::option::of(1..100_000u64),
            prop::sample::select(PRIORITIES.to_vec()),
        )
            .prop_map(|(task, weight, deadline_ms, priority)| TaskMix {
                task: task.into(),
                weight,
                deadline_ms,
                priority: priority.into(),
                format: String::new(),
            })
    }

    fn scenario() -> impl Strategy<Value = Scenario> {
        (1.0..3600.0f64).prop_flat_map(|duration_s| {
            (
                ("[a-z][a-z0-9_-]{0,11}", ".{0,24}"),
                (patch(), patch(), patch()),
                (
                    times(duration_s, 4),
                    prop::collection::vec((patch(), "[ -~]{0,8}"), 4),
                ),
                (0.01..64.0f64, 1..16u32, prop::option::of(0.1..64.0f64)),
                (0..=i64::MAX as u64, 0.1..200.0f64, any::<bool>()),
                prop::collection::vec(mix(), 1..4),
                (
                    times(duration_s, 3),
                    prop::collection::vec(0.0..200.0f64, 3),
                ),
            )
                .prop_map(
                    move |(
                        (name, description),
                        (link, uplink, downlink),
                        (at, entries),
                        (edge_cpu_share, local_workers, cloud_cpu_share),
                        (seed, tasks_per_s, uniform),
                        mix,
                        (phase_at, rates),
                    )| Scenario {
                        name,
                        description,
                        duration_s,
                        link,
                        uplink,
                        downlink,
                        schedule: at
                            .into_iter()
                            .zip(entries)
                            .map(|(at_s, (link, note))| ScheduleEntry {
                                at_s,
                                note,
                                link,
                                uplink: LinkPatch::default(),
                                downlink: LinkPatch::default(),
                            })
                            .collect(),
                        profile: Profile {
                            edge_cpu_share,
                            local_workers,
                            cloud_cpu_share,
                        },
                        workload: Workload {
                            seed,
                            tasks_per_s,
                            arrival: if uniform {
                                Arrival::Uniform
                            } else {
                                Arrival::Poisson
                            },
                            mix,
                            phases: phase_at
                                .into_iter()
                                .zip(rates)
                                .map(|(at_s, tasks_per_s)| RatePhase {
                                    at_s,
                                    tasks_per_s,
                                    note: String::new(),
                                })
                                .collect(),
                        },
                    },
                )
        })
    }

    /// What a successful parse promises the benchmark harness.
    fn check_invariants(s: &Scenario) -> Result<(), TestCaseError> {
        prop_assert!(!s.name.is_empty());
        prop_assert!(s.duration_s.is_finite() && s.duration_s > 0.0);
        prop_assert!(s.schedule.windows(2).all(|w| w[0].at_s <= w[1].at_s));
        prop_assert!(s
            .schedule
            .iter()
            .all(|e| (0.0..=s.duration_s).contains(&e.at_s)));
        prop_assert!(!s.workload.mix.is_empty());
        prop_assert!(s.workload.segments().iter().any(|&(_, r)| r > 0.0));
        for dir in Dir::BOTH {
            prop_assert!(s.params_at(dir, s.duration_s).validate().is_ok());
        }
        Ok(())
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(128))]

        #[test]
        fn valid_scenarios_round_trip_through_toml(s in scenario()) {
            let text = toml::to_string(&s).unwrap();
            let back = Scenario::parse(&text);
            prop_assert!(back.is_ok(), "{:?}\n{text}", back.err());
            let back = back.unwrap();
            check_invariants(&back)?;
            prop_assert_eq!(back, s);
        }

        #[test]
        fn arbitrary_text_parses_or_fails_without_panicking(text in ".{0,300}") {
            if let Ok(s) = Scenario::parse(&text) {
                check_invariants(&s)?;
            }
        }

        #[test]
        fn edited_scenarios_parse_to_valid_ones_or_fail(
            s in scenario(),
            cut in any::<prop::sample::Index>(),
            insert in prop_oneof![Just(String::new()), ".{1,8}", Just("-1".to_string()), Just("nan".to_string())],
        ) {
            // Truncated files, and files with text spliced in (negative
            // numbers, NaN, stray characters), anywhere.
            let text = toml::to_string(&s).unwrap();
            let mut at = cut.index(text.len() + 1);
            while !text.is_char_boundary(at) {
                at -= 1;
            }
            let edited = format!("{}{insert}", &text[..at]);
            if let Ok(s) = Scenario::parse(&edited) {
                check_invariants(&s)?;
            }
            let spliced = format!("{}{insert}{}", &text[..at], &text[at..]);
            if let Ok(s) = Scenario::parse(&spliced) {
                check_invariants(&s)?;
            }
        }

        #[test]
        fn out_of_range_values_are_refused(s in scenario(), which in 0..6usize, bad in prop_oneof![Just(f64::NAN), -1e6..-0.001f64]) {
            let mut s = s;
            match which {
                0 => s.duration_s = bad,
                // Direction patches apply last, so nothing shadows these.
                1 => s.downlink.loss = Some(1.0 - bad),
                2 => s.uplink.delay_ms = Some(bad),
                3 => s.profile.edge_cpu_share = bad,
                4 => s.workload.mix[0].weight = bad,
                _ => s.workload.tasks_per_s = bad,
            }
            prop_assert!(Scenario::parse(&toml::to_string(&s).unwrap()).is_err());
        }
    }
}
