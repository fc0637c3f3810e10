//! PNG plots of a scenario's runs (plotters, bitmap backend, system fonts):
//! the latency CDF of every policy, and a per-policy timeline of what the
//! agent measured and decided.

use super::record::TaskRecord;
use anyhow::{anyhow, Result};
use jitter_lab::params::Dir;
use jitter_lab::scenario::Scenario;
use plotters::coord::combinators::IntoLogRange;
use plotters::prelude::*;
use std::path::Path;

const PALETTE: [RGBColor; 8] = [
    RGBColor(31, 119, 180),
    RGBColor(255, 127, 14),
    RGBColor(44, 160, 44),
    RGBColor(214, 39, 40),
    RGBColor(148, 103, 189),
    RGBColor(140, 86, 75),
    RGBColor(227, 119, 194),
    RGBColor(23, 190, 207),
];
const LOCAL: RGBColor = RGBColor(31, 119, 180);
const CLOUD: RGBColor = RGBColor(255, 127, 14);
const FAILED: RGBColor = RGBColor(214, 39, 40);

fn err<E: std::fmt::Display>(e: E) -> anyhow::Error {
    anyhow!("plotting: {e}")
}

/// (latency, fraction of all tasks answered within it) for the completed tasks.
fn cdf_points(records: &[TaskRecord]) -> Vec<(f64, f64)> {
    let mut lat: Vec<f64> = records
        .iter()
        .filter(|r| r.completed())
        .map(|r| r.latency_ms)
        .collect();
    lat.sort_by(f64::total_cmp);
    let n = records.len().max(1) as f64;
    lat.iter()
        .enumerate()
        .map(|(i, l)| (*l, (i + 1) as f64 / n))
        .collect()
}

/// Latency CDF, one line per run (y: share of all tasks sent, so failed
/// tasks keep a curve below 1).
pub fn cdf(path: &Path, title: &str, runs: &[(String, &[TaskRecord])]) -> Result<()> {
    let curves: Vec<(String, Vec<(f64, f64)>)> = runs
        .iter()
        .map(|(name, recs)| (name.clone(), cdf_points(recs)))
        .collect();
    let all = curves.iter().flat_map(|(_, c)| c.iter().map(|p| p.0));
    let lo = all.clone().fold(f64::INFINITY, f64::min).max(0.01);
    let hi = all.fold(0.0, f64::max).max(lo * 10.0);
    let (lo, hi) = if lo.is_finite() {
        (lo * 0.8, hi * 1.2)
    } else {
        (0.1, 1000.0)
    };

    let root = BitMapBackend::new(path, (1100, 650)).into_drawing_area();
    root.fill(&WHITE).map_err(err)?;
    let mut chart = ChartBuilder::on(&root)
        .caption(title, ("sans-serif", 24))
        .margin(12)
        .x_label_area_size(45)
        .y_label_area_size(60)
        .build_cartesian_2d((lo..hi).log_scale(), 0.0..1.0)
        .map_err(err)?;
    chart
        .configure_mesh()
        .x_desc("latency (ms, log scale)")
        .y_desc("share of tasks answered within")
        .draw()
        .map_err(err)?;
    // The oracle first, dashed, so a policy that matches it stays visible.
    let mut order: Vec<usize> = (0..curves.len()).collect();
    order.sort_by_key(|i| !curves[*i].0.contains("oracle"));
    for i in order {
        let (name, pts) = &curves[i];
        // A step function: each completion raises the curve.
        let mut steps = Vec::with_capacity(pts.len() * 2);
        let mut prev = 0.0;
        for &(x, y) in pts {
            steps.push((x, prev));
            steps.push((x, y));
            prev = y;
        }
        if name.contains("oracle") {
            let style = BLACK.stroke_width(3);
            chart
                .draw_series(DashedLineSeries::new(steps, 8, 6, style))
                .map_err(err)?
                .label(name.clone())
                .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], style));
        } else {
            let color = PALETTE[i % PALETTE.len()];
            chart
                .draw_series(LineSeries::new(steps, color.stroke_width(2)))
                .map_err(err)?
                .label(name.clone())
                .legend(move |(x, y)| {
                    PathElement::new(vec![(x, y), (x + 20, y)], color.stroke_width(2))
                });
        }
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::LowerRight)
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK)
        .draw()
        .map_err(err)?;
    root.present().map_err(err)
}

/// The configured round trip (sum of both directions' delays) over the
/// run, as steps; `None` while either direction is down.
fn configured_rtt(s: &Scenario, duration_s: f64) -> Vec<(f64, Option<f64>)> {
    let mut at: Vec<f64> = vec![0.0];
    at.extend(
        s.schedule
            .iter()
            .map(|e| e.at_s)
            .filter(|t| *t < duration_s),
    );
    at.push(duration_s);
    at.iter()
        .map(|&t| {
            let (u, d) = (s.params_at(Dir::Uplink, t), s.params_at(Dir::Downlink, t));
            (t, (u.up && d.up).then_some(u.delay_ms + d.delay_ms))
        })
        .collect()
}

/// One panel per run: the agent's RTT and jitter at each decision, the
/// configured RTT, and each task at its latency, coloured by where it ran.
pub fn timeline(
    path: &Path,
    title: &str,
    scenario: &Scenario,
    duration_s: f64,
    runs: &[(String, &[TaskRecord])],
) -> Result<()> {
    let panel_h = 300u32;
    let root =
        BitMapBackend::new(path, (1300, 60 + panel_h * runs.len() as u32)).into_drawing_area();
    root.fill(&WHITE).map_err(err)?;
    let root = root.titled(title, ("sans-serif", 24)).map_err(err)?;
    let panels = root.split_evenly((runs.len().max(1), 1));
    let top = runs
        .iter()
        .flat_map(|(_, r)| r.iter().map(|t| t.latency_ms))
        .fold(100.0, f64::max)
        * 1.5;
    let conf = configured_rtt(scenario, duration_s);
    for ((name, recs), area) in runs.iter().zip(panels.iter()) {
        let mut chart = ChartBuilder::on(area)
            .caption(name.as_str(), ("sans-serif", 18))
            .margin(8)
            .x_label_area_size(35)
            .y_label_area_size(60)
            .build_cartesian_2d(0.0..duration_s, (0.1..top).log_scale())
            .map_err(err)?;
        chart
            .configure_mesh()
            .x_desc("time since the workload started (s)")
            .y_desc("ms (log scale)")
            .draw()
            .map_err(err)?;
        // Configured RTT: a grey step line, broken while the link is down.
        for w in conf.windows(2) {
            if let (t0, Some(v)) = w[0] {
                chart
                    .draw_series(LineSeries::new(
                        vec![(t0, v), (w[1].0, v)],
                        RGBColor(150, 150, 150).stroke_width(3),
                    ))
                    .map_err(err)?;
            } else {
                let (t0, t1) = (w[0].0, w[1].0);
                chart
                    .draw_series(std::iter::once(Rectangle::new(
                        [(t0, 0.1), (t1, top)],
                        FAILED.mix(0.12).filled(),
                    )))
                    .map_err(err)?;
            }
        }
        let decided: Vec<&TaskRecord> = recs
            .iter()
            .filter(|r| r.decision.as_ref().is_some_and(|d| d.jitter_ms.is_some()))
            .collect();
        let rtt: Vec<(f64, f64)> = decided
            .iter()
            .map(|r| {
                (
                    r.sent_ms / 1e3,
                    r.decision.as_ref().map_or(0.0, |d| d.rtt_ms).max(0.1),
                )
            })
            .collect();
        let jit: Vec<(f64, f64)> = decided
            .iter()
            .filter_map(|r| {
                let j = r.decision.as_ref()?.jitter_ms?;
                Some((r.sent_ms / 1e3, j.max(0.1)))
            })
            .collect();
        chart
            .draw_series(LineSeries::new(rtt, RGBColor(0, 0, 0).stroke_width(2)))
            .map_err(err)?
            .label("measured RTT (srtt)")
            .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], BLACK.stroke_width(2)));
        chart
            .draw_series(LineSeries::new(jit, RGBColor(44, 160, 44).stroke_width(2)))
            .map_err(err)?
            .label("measured jitter (RTT sd)")
            .legend(|(x, y)| {
                PathElement::new(
                    vec![(x, y), (x + 20, y)],
                    RGBColor(44, 160, 44).stroke_width(2),
                )
            });
        let pts = |want: &str| -> Vec<(f64, f64)> {
            recs.iter()
                .filter(|r| r.completed() && r.path.as_deref() == Some(want))
                .map(|r| (r.sent_ms / 1e3, r.latency_ms.max(0.1)))
                .collect()
        };
        chart
            .draw_series(
                pts("local")
                    .into_iter()
                    .map(|p| Circle::new(p, 2, LOCAL.filled())),
            )
            .map_err(err)?
            .label("task ran locally (at its latency)")
            .legend(|(x, y)| Circle::new((x + 10, y), 3, LOCAL.filled()));
        chart
            .draw_series(
                pts("cloud")
                    .into_iter()
                    .map(|p| Circle::new(p, 2, CLOUD.filled())),
            )
            .map_err(err)?
            .label("task offloaded (at its latency)")
            .legend(|(x, y)| Circle::new((x + 10, y), 3, CLOUD.filled()));
        let failed: Vec<(f64, f64)> = recs
            .iter()
            .filter(|r| !r.completed())
            .map(|r| (r.sent_ms / 1e3, r.latency_ms.clamp(0.1, top)))
            .collect();
        chart
            .draw_series(
                failed
                    .into_iter()
                    .map(|p| Cross::new(p, 4, FAILED.stroke_width(2))),
            )
            .map_err(err)?
            .label("task failed")
            .legend(|(x, y)| Cross::new((x + 10, y), 4, FAILED.stroke_width(2)));
        chart
            .draw_series(std::iter::once(PathElement::new(
                vec![(0.0, 0.1), (0.0, 0.1)],
                RGBColor(150, 150, 150).stroke_width(3),
            )))
            .map_err(err)?
            .label("configured RTT (red band: link down)")
            .legend(|(x, y)| {
                PathElement::new(
                    vec![(x, y), (x + 20, y)],
                    RGBColor(150, 150, 150).stroke_width(3),
                )
            });
        chart
            .configure_series_labels()
            .position(SeriesLabelPosition::UpperRight)
            .background_style(WHITE.mix(0.85))
            .border_style(BLACK)
            .label_font(("sans-serif", 12))
            .draw()
            .map_err(err)?;
    }
    root.present().map_err(err)
}

/// Split computing: one panel per choosing policy, every task at the
/// variant it ran as (local, whole, a split point, failed) against its send
/// time, above a panel of the uplink's configured rate.
pub fn split_choices(
    path: &Path,
    title: &str,
    scenario: &Scenario,
    duration_s: f64,
    runs: &[(String, &[TaskRecord])],
) -> Result<()> {
    let mut variants: Vec<String> = vec!["failed".into(), "local".into(), "whole".into()];
    let mut splits: Vec<String> = runs
        .iter()
        .flat_map(|(_, r)| r.iter().map(TaskRecord::variant))
        .filter(|v| !variants.contains(v))
        .collect();
    splits.sort();
    splits.dedup();
    variants.extend(splits);
    let root = BitMapBackend::new(path, (1100, 260 + 300 * runs.len() as u32)).into_drawing_area();
    root.fill(&WHITE).map_err(err)?;
    let root = root.titled(title, ("sans-serif", 24)).map_err(err)?;
    let (top, rest) = root.split_vertically(220);
    // The uplink's configured rate over the run (0: unlimited, drawn at the top).
    let mut at: Vec<f64> = vec![0.0];
    at.extend(
        scenario
            .schedule
            .iter()
            .map(|e| e.at_s)
            .filter(|t| *t < duration_s),
    );
    at.push(duration_s);
    let rates: Vec<f64> = at
        .iter()
        .map(|t| scenario.params_at(Dir::Uplink, *t).rate_mbit)
        .collect();
    let hi = rates.iter().copied().fold(1.0, f64::max) * 1.2;
    let mut chart = ChartBuilder::on(&top)
        .caption("uplink rate (configured)", ("sans-serif", 18))
        .margin(8)
        .x_label_area_size(30)
        .y_label_area_size(60)
        .build_cartesian_2d(0.0..duration_s, 0.0..hi)
        .map_err(err)?;
    chart
        .configure_mesh()
        .y_desc("Mbit/s")
        .draw()
        .map_err(err)?;
    let mut steps = Vec::new();
    for (i, w) in at.windows(2).enumerate() {
        let r = if rates[i] > 0.0 { rates[i] } else { hi };
        steps.push((w[0], r));
        steps.push((w[1], r));
    }
    chart
        .draw_series(LineSeries::new(steps, BLACK.stroke_width(3)))
        .map_err(err)?;
    let panels = rest.split_evenly((runs.len().max(1), 1));
    let n = variants.len();
    for ((name, recs), area) in runs.iter().zip(panels.iter()) {
        let labels = variants.clone();
        let mut chart = ChartBuilder::on(area)
            .caption(format!("{name}: where each task ran"), ("sans-serif", 18))
            .margin(8)
            .x_label_area_size(35)
            .y_label_area_size(80)
            .build_cartesian_2d(0.0..duration_s, -0.5..(n as f64 - 0.5))
            .map_err(err)?;
        chart
            .configure_mesh()
            .x_desc("time since the workload started (s)")
            .y_labels(n)
            .y_label_formatter(&|y| {
                let i = y.round();
                if (y - i).abs() < 0.01 && i >= 0.0 {
                    labels.get(i as usize).cloned().unwrap_or_default()
                } else {
                    String::new()
                }
            })
            .draw()
            .map_err(err)?;
        for (i, v) in variants.iter().enumerate() {
            let color = match v.as_str() {
                "failed" => FAILED,
                "local" => LOCAL,
                "whole" => CLOUD,
                _ => PALETTE[(i + 2) % PALETTE.len()],
            };
            // A little vertical spread by latency keeps dense phases legible.
            let pts: Vec<(f64, f64)> = recs
                .iter()
                .filter(|r| r.variant() == *v)
                .map(|r| {
                    let spread = (r.latency_ms.max(1.0).log10() / 3.0).clamp(0.0, 1.0) * 0.6 - 0.3;
                    (r.sent_ms / 1e3, i as f64 + spread)
                })
                .collect();
            chart
                .draw_series(pts.into_iter().map(|p| Circle::new(p, 2, color.filled())))
                .map_err(err)?;
        }
    }
    root.present().map_err(err)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::scenarios::record::tests::rec;
    use crate::scenarios::record::Outcome;

    #[test]
    fn cdf_counts_failures_in_the_denominator() {
        let r = vec![
            rec(0, Outcome::Ok, 30.0, "local"),
            rec(1, Outcome::Failed, 1.0, ""),
            rec(2, Outcome::Ok, 10.0, "cloud"),
            rec(3, Outcome::Ok, 20.0, "local"),
        ];
        assert_eq!(
            cdf_points(&r),
            vec![(10.0, 0.25), (20.0, 0.5), (30.0, 0.75)]
        );
    }

    #[test]
    fn configured_rtt_follows_the_schedule() {
        let s = Scenario::parse(
            r#"
name = "t"
description = "t"
duration_s = 30
[link]
delay_ms = 20.0
[[schedule]]
at_s = 10
link = { up = false }
[[schedule]]
at_s = 15
link = { up = true, delay_ms = 5.0 }
[profile]
edge_cpu_share = 0.25
local_workers = 1
[workload]
seed = 1
tasks_per_s = 1
mix = [{ task = "image_classification", weight = 1.0 }]
"#,
        )
        .unwrap();
        assert_eq!(
            configured_rtt(&s, 30.0),
            vec![
                (0.0, Some(40.0)),
                (10.0, None),
                (15.0, Some(10.0)),
                (30.0, Some(10.0))
            ]
        );
    }
}
