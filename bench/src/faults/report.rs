//! bench/results/faults.md and soak.png from a suite's result.

use super::soak::SoakResult;
use super::SuiteResult;
use crate::support::stamp;
use anyhow::{anyhow, Result};
use plotters::prelude::*;
use std::fmt::Write;
use std::path::Path;

fn opt(v: Option<f64>) -> String {
    v.map_or("–".into(), |x| format!("{x:.2}"))
}

pub fn render(r: &SuiteResult) -> String {
    let mut s = String::new();
    let _ = writeln!(s, "# Fault and load suite\n");
    let _ = writeln!(
        s,
        "{} Wall time {:.0} s.\n",
        stamp::generated_by(&r.command, &r.date_utc, &r.machine, &r.commit),
        r.wall_s
    );
    let _ = writeln!(
        s,
        "Each fault runs on a fresh jitter lab with the real cloud service (mutual TLS, QUIC \
         first, gRPC as fallback) and edge agent (policy `{}`, so tasks are in flight to the \
         cloud when the fault strikes). The scenario driver sends the workload ({}) for {:.0} s \
         through the edge's task API; the fault begins {:.0} s in.\n",
        r.policy, r.scenario, r.run_s, r.fault_at_s
    );
    let _ = writeln!(
        s,
        "- **results**: tasks answered with a result; **errors**: answered with an explicit \
         error, or refused at connect (the task API was down); **lost**: no answer, or a \
         connection cut under an accepted request (must be 0).\n\
         - **recovery_s**: from the end of the fault to the completion of the first task sent \
         after it that ran in the cloud again.\n\
         - **worst_inflight_s**: the slowest answer among the tasks in flight when the fault \
         began.\n"
    );
    let _ = writeln!(
        s,
        "| fault | sent | results | errors | lost | recovery_s | worst_inflight_s | in flight | refused | fell back | offloaded |"
    );
    let _ = writeln!(s, "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
    for (row, d) in &r.faults {
        let _ = writeln!(
            s,
            "| {} | {} | {} | {} | **{}** | {} | {} | {} | {} | {} | {} |",
            row.fault,
            row.sent,
            row.results,
            row.errors,
            row.lost,
            opt(row.recovery_s),
            opt(row.worst_inflight_s),
            d.inflight,
            d.refused,
            d.fell_back,
            d.offloaded
        );
    }
    let _ = writeln!(s, "\n## Per fault\n");
    for (row, d) in &r.faults {
        let _ = writeln!(
            s,
            "### {}\n\n{} (from {:.1} s to {:.1} s).\n",
            row.fault,
            d.notes.join("; "),
            d.fault_start_s,
            d.fault_end_s
        );
        if !d.load.is_null() {
            let _ = writeln!(s, "Fault's own report: `{}`\n", d.load);
        }
        if d.error_kinds.is_empty() {
            let _ = writeln!(s, "Every task was answered with a result.\n");
        } else {
            let _ = writeln!(s, "Answers other than results:\n");
            for (k, n) in d.error_kinds.iter().take(8) {
                let _ = writeln!(s, "- {n} × {k}");
            }
            let _ = writeln!(s);
        }
    }
    if let Some(k) = &r.soak {
        render_soak(&mut s, k);
    }
    s
}

fn render_soak(s: &mut String, k: &SoakResult) {
    let _ = writeln!(
        s,
        "## Soak\n\n{:.0} s of {} with the `{}` policy: {} sent, {} results ({} ran in the \
         cloud), {} errors, **{} lost**. Memory (resident set) and open file descriptors of both \
         agents every few seconds; the last line is after the load stopped. Curve: \
         [soak.png](soak.png).\n",
        k.seconds,
        k.scenario,
        k.policy,
        k.row.sent,
        k.row.results,
        k.offloaded,
        k.row.errors,
        k.row.lost
    );
    if let Some(((em, ef), (cm, cf))) = k.second_half_growth() {
        let _ = writeln!(
            s,
            "Over the second half of the run: edge {em:+.1} MiB, {ef:+} descriptors; cloud \
             {cm:+.1} MiB, {cf:+} descriptors.\n"
        );
    }
    let _ = writeln!(
        s,
        "| t (s) | edge RSS (MiB) | edge fds | cloud RSS (MiB) | cloud fds |\n|---:|---:|---:|---:|---:|"
    );
    // About twenty rows: every n-th point and the last.
    let step = (k.points.len() / 20).max(1);
    for (i, p) in k.points.iter().enumerate() {
        if i % step == 0 || i + 1 == k.points.len() {
            let _ = writeln!(
                s,
                "| {:.0} | {:.1} | {} | {:.1} | {} |",
                p.t_s, p.edge_rss_mib, p.edge_fds, p.cloud_rss_mib, p.cloud_fds
            );
        }
    }
}

fn err<E: std::fmt::Display>(e: E) -> anyhow::Error {
    anyhow!("plotting: {e}")
}

/// Memory and descriptors of both agents over the soak run.
pub fn soak_plot(path: &Path, k: &SoakResult) -> Result<()> {
    let root = BitMapBackend::new(path, (1100, 700)).into_drawing_area();
    root.fill(&WHITE).map_err(err)?;
    let (top, bottom) = root.split_vertically(380);
    let t_max = k.points.iter().map(|p| p.t_s).fold(1.0, f64::max);
    let rss_max = k
        .points
        .iter()
        .map(|p| p.edge_rss_mib.max(p.cloud_rss_mib))
        .fold(1.0, f64::max)
        * 1.15;
    let fd_max = k
        .points
        .iter()
        .map(|p| p.edge_fds.max(p.cloud_fds) as f64)
        .fold(1.0, f64::max)
        * 1.15;
    let series = [
        ("edge", RGBColor(31, 119, 180)),
        ("cloud", RGBColor(255, 127, 14)),
    ];
    let mut chart = ChartBuilder::on(&top)
        .caption(
            format!("soak: resident memory, {:.0} s", k.seconds),
            ("sans-serif", 22),
        )
        .margin(10)
        .x_label_area_size(35)
        .y_label_area_size(60)
        .build_cartesian_2d(0.0..t_max, 0.0..rss_max)
        .map_err(err)?;
    chart
        .configure_mesh()
        .y_desc("RSS (MiB)")
        .draw()
        .map_err(err)?;
    for (i, (name, color)) in series.iter().enumerate() {
        let pts = k.points.iter().map(|p| {
            (
                p.t_s,
                if i == 0 {
                    p.edge_rss_mib
                } else {
                    p.cloud_rss_mib
                },
            )
        });
        chart
            .draw_series(LineSeries::new(pts, color.stroke_width(2)))
            .map_err(err)?
            .label(*name)
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], *color));
    }
    chart
        .configure_series_labels()
        .background_style(WHITE)
        .border_style(BLACK)
        .draw()
        .map_err(err)?;
    let mut chart = ChartBuilder::on(&bottom)
        .caption("open file descriptors", ("sans-serif", 22))
        .margin(10)
        .x_label_area_size(35)
        .y_label_area_size(60)
        .build_cartesian_2d(0.0..t_max, 0.0..fd_max)
        .map_err(err)?;
    chart
        .configure_mesh()
        .x_desc("seconds")
        .y_desc("descriptors")
        .draw()
        .map_err(err)?;
    for (i, (_, color)) in series.iter().enumerate() {
        let pts = k
            .points
            .iter()
            .map(|p| (p.t_s, if i == 0 { p.edge_fds } else { p.cloud_fds } as f64));
        chart
            .draw_series(LineSeries::new(pts, color.stroke_width(2)))
            .map_err(err)?;
    }
    root.present().map_err(err)?;
    Ok(())
}
