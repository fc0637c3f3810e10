//! A time slice of a scenario, as a scenario of its own: the quick run
//! keeps the interesting part of each scenario (its first scheduled change
//! of the link or of the arrival rate) instead of the whole length, so the
//! full matrix fits in minutes.

use jitter_lab::params::{Dir, LinkParams, LinkPatch};
use jitter_lab::scenario::Scenario;

/// Seconds of unchanged conditions a quick window keeps before the first
/// scheduled change, so the agent's estimates settle first.
pub const LEAD_S: f64 = 4.0;

/// Where a window of `len_s` seconds starts: `LEAD_S` before the first
/// scheduled change (link or arrival rate), or at 0 for a scenario without
/// one; never past the end.
pub fn quick_start(s: &Scenario, len_s: f64) -> f64 {
    let first = s
        .schedule
        .iter()
        .map(|e| e.at_s)
        .chain(s.workload.phases.iter().map(|p| p.at_s))
        .reduce(f64::min)
        .unwrap_or(0.0);
    (first - LEAD_S).clamp(0.0, (s.duration_s - len_s).max(0.0))
}

/// The scenario from `start_s` for `len_s` seconds: the conditions at
/// `start_s` become the initial ones (per direction, every field), the
/// changes inside the window keep their offsets, and so do the arrival
/// rate's. Profile and task mix stay.
pub fn window(s: &Scenario, start_s: f64, len_s: f64) -> Scenario {
    let len_s = len_s.min(s.duration_s - start_s).max(0.0);
    let schedule = s
        .schedule
        .iter()
        .filter(|e| e.at_s > start_s && e.at_s <= start_s + len_s)
        .map(|e| {
            let mut e = e.clone();
            e.at_s -= start_s;
            e
        })
        .collect();
    Scenario {
        name: s.name.clone(),
        description: format!(
            "{} [{start_s:.0}-{:.0} s of the full scenario]",
            s.description,
            start_s + len_s
        ),
        duration_s: len_s,
        link: LinkPatch::default(),
        uplink: full_patch(&s.params_at(Dir::Uplink, start_s)),
        downlink: full_patch(&s.params_at(Dir::Downlink, start_s)),
        schedule,
        profile: s.profile.clone(),
        workload: {
            let mut w = s.workload.from_time(start_s);
            w.phases.retain(|p| p.at_s <= len_s);
            w
        },
    }
}

fn full_patch(p: &LinkParams) -> LinkPatch {
    LinkPatch {
        up: Some(p.up),
        delay_ms: Some(p.delay_ms),
        jitter_ms: Some(p.jitter_ms),
        jitter_distribution: Some(p.jitter_distribution),
        jitter_hold_ms: Some(p.jitter_hold_ms),
        reorder: Some(p.reorder),
        loss: Some(p.loss),
        ge_p: Some(p.ge_p),
        ge_r: Some(p.ge_r),
        ge_loss_good: Some(p.ge_loss_good),
        ge_loss_bad: Some(p.ge_loss_bad),
        rate_mbit: Some(p.rate_mbit),
        buffer_bytes: Some(p.buffer_bytes),
        burst_bytes: Some(p.burst_bytes),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TEXT: &str = r#"
name = "t"
description = "test"
duration_s = 120
[link]
delay_ms = 20.0
jitter_ms = 1.0
rate_mbit = 100.0
[[schedule]]
at_s = 60
note = "down"
link = { up = false }
[[schedule]]
at_s = 65
note = "up"
link = { up = true, delay_ms = 30.0 }
[[schedule]]
at_s = 100
link = { jitter_ms = 9.0 }
[profile]
edge_cpu_share = 0.25
local_workers = 1
[workload]
seed = 1
tasks_per_s = 10
mix = [{ task = "image_classification", weight = 1.0 }]
[[workload.phase]]
at_s = 66
tasks_per_s = 40
note = "backlog"
"#;

    #[test]
    fn window_keeps_conditions_and_shifts_changes() {
        let s = Scenario::parse(TEXT).unwrap();
        let start = quick_start(&s, 20.0);
        assert_eq!(start, 60.0 - LEAD_S);
        let w = window(&s, start, 20.0);
        w.validate().unwrap();
        assert_eq!(w.duration_s, 20.0);
        assert_eq!(w.schedule.len(), 2);
        assert_eq!(
            (w.schedule[0].at_s, w.schedule[1].at_s),
            (LEAD_S, LEAD_S + 5.0)
        );
        // Same conditions at every point of the window as in the original.
        for t in [0.0, 3.9, 4.0, 7.0, 9.0, 10.0, 19.0] {
            for d in Dir::BOTH {
                assert_eq!(w.params_at(d, t), s.params_at(d, start + t), "{t} {d:?}");
            }
        }
        // The arrival rate too.
        for t in [0.0, 9.9, 10.0, 19.0] {
            assert_eq!(w.workload.rate_at(t), s.workload.rate_at(start + t), "{t}");
        }
        assert_eq!(w.workload.phases[0].at_s, 10.0);
        // It survives the trip through a file.
        let back = Scenario::parse(&toml::to_string(&w).unwrap()).unwrap();
        assert_eq!(back, w);
    }

    #[test]
    fn quick_start_clamps() {
        let mut s = Scenario::parse(TEXT).unwrap();
        assert_eq!(quick_start(&s, 80.0), 40.0);
        s.schedule.clear();
        // Only the arrival rate changes: the window leads up to that.
        assert_eq!(quick_start(&s, 20.0), 66.0 - LEAD_S);
        s.workload.phases.clear();
        assert_eq!(quick_start(&s, 20.0), 0.0);
        let w = window(&s, 110.0, 20.0);
        assert_eq!(w.duration_s, 10.0);
        // Rate changes after the window's end are left out.
        let w = window(&Scenario::parse(TEXT).unwrap(), 50.0, 10.0);
        w.validate().unwrap();
        assert!(w.workload.phases.is_empty());
    }
}
