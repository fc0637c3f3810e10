//! `scenario-bench`: every scenario x every policy with the real agents
//! across the jitter lab; writes bench/results/scenarios.md, scenarios.json
//! and PNG plots. Needs root. See bench/README.md.

use anyhow::{bail, Context, Result};
use bench::scenarios::run;
use bench::support::procs;
use clap::Parser;
use std::path::PathBuf;
use std::time::Duration;

#[derive(Parser)]
#[command(
    name = "scenario-bench",
    about = "Scenario x policy benchmark of the edge offloading agent"
)]
struct Args {
    /// Reduced matrix: every scenario cut to a window around its first change.
    #[arg(long)]
    quick: bool,
    /// A scenario file or a folder of them.
    #[arg(long, default_value = "bench/scenarios")]
    scenarios: PathBuf,
    /// Only these scenarios (comma-separated names).
    #[arg(long, value_delimiter = ',')]
    only: Vec<String>,
    /// Policies to run (comma-separated; default: every policy the agent has).
    #[arg(long, value_delimiter = ',')]
    policies: Vec<String>,
    /// Seconds per run (quick: the window's length; full: a cut from 0).
    #[arg(long)]
    duration: Option<f64>,
    /// Window length of a quick run.
    #[arg(long, default_value_t = 12.0)]
    quick_seconds: f64,
    /// Report and plots.
    #[arg(long, default_value = "bench/results")]
    out: PathBuf,
    /// The report's file names: NAME.md and NAME.json in `--out`; a quick
    /// run's are NAME-quick.md and NAME-quick.json, so that a quick run
    /// and a full one stand side by side.
    #[arg(long, default_value = "scenarios")]
    results_name: String,
    /// Per-run records and logs.
    #[arg(long, default_value = "target/scenario-bench")]
    work: PathBuf,
    /// Folder with agent, netem-tun and scenario-driver (default: this program's).
    #[arg(long)]
    bin_dir: Option<PathBuf>,
    #[command(flatten)]
    edge_cpu: run::EdgeCpu,
    /// CFS period of the CPU quota (stretched where the quota would be under 1 ms).
    #[arg(long, default_value_t = 4000)]
    cpu_period_us: u64,
    /// Seconds a fresh edge agent measures the link before the workload starts.
    #[arg(long, default_value_t = 1.5)]
    warmup: f64,
    /// The command line to print in the report (default: this one).
    #[arg(long)]
    command: Option<String>,
    #[arg(long)]
    no_plots: bool,
    /// Skip timing the CPU calibration jobs.
    #[arg(long)]
    no_calibrate: bool,
    /// Runs per scenario with consecutive seeds (default: 3, quick: 1).
    #[arg(long)]
    seeds: Option<u64>,
    /// Runs nothing: writes the report of a finished run again from its
    /// JSON (bench/results/scenarios.json -> scenarios.md), with this
    /// build's rendering (a section added since the run). The figures,
    /// plots and stamps stay the run's; the report says it was rendered again.
    #[arg(long, value_name = "JSON", conflicts_with_all = ["quick", "only", "policies", "seeds"])]
    render: Option<PathBuf>,
    /// Continue an interrupted run: the scenarios and seeds already in
    /// `--out`'s NAME.json are kept, the others run. Only a run of the same
    /// command at the same commit (no uncommitted changes) on this machine.
    #[arg(long)]
    resume: bool,
}

fn main() -> Result<()> {
    let a = Args::parse();
    if let Some(json) = &a.render {
        let by = format!(
            "`{}` at commit {}",
            a.command
                .clone()
                .unwrap_or_else(|| std::env::args().collect::<Vec<_>>().join(" ")),
            bench::support::stamp::source_commit()
        );
        let md = run::render_again(json, &by)?;
        println!("wrote {}", md.display());
        return Ok(());
    }
    procs::install_signal_cleanup()?;
    let bin_dir = match &a.bin_dir {
        Some(d) => d.clone(),
        None => std::env::current_exe()?
            .parent()
            .context("the program's folder")?
            .to_path_buf(),
    };
    // The agent's own list, through the driver (which links the agent).
    let known = run::policy_names(&bin_dir)?;
    let policies: Vec<String> = if a.policies.is_empty() {
        known
    } else {
        for p in &a.policies {
            // `split:<point>` names a split point of the models.
            let split = p.strip_prefix("split:").is_some_and(|s| !s.is_empty());
            if !known.contains(p) && !split {
                bail!("unknown policy {p:?} (one of {known:?}, or split:<point>)");
            }
        }
        a.policies.clone()
    };
    let opts = run::Options {
        scenario_files: run::scenario_files(&a.scenarios, &a.only)?,
        policies,
        quick: a.quick,
        duration_s: a.duration,
        quick_len_s: a.quick_seconds,
        out_dir: a.out.clone(),
        results_name: if a.quick {
            format!("{}-quick", a.results_name)
        } else {
            a.results_name.clone()
        },
        work_dir: a.work.clone(),
        bin_dir,
        period_us: a.cpu_period_us,
        warmup: Duration::from_secs_f64(a.warmup),
        command: run::without_resume(
            &a.command
                .clone()
                .unwrap_or_else(|| std::env::args().collect::<Vec<_>>().join(" ")),
        ),
        plots: !a.no_plots,
        calibrate: !a.no_calibrate,
        seeds: a.seeds.unwrap_or(if a.quick { 1 } else { 3 }),
        resume: a.resume,
        edge_cpu: a.edge_cpu,
    };
    let r = match run::run(&opts) {
        Ok(r) => r,
        // Interrupted: the signal thread is stopping everything and exits
        // with 130 when done; the children's errors it caused are noise.
        Err(_) if procs::stopping() => loop {
            std::thread::park();
        },
        Err(e) => return Err(e),
    };
    println!(
        "wrote {} ({} scenarios x {} policies, {:.1} min)",
        opts.out_dir
            .join(format!("{}.md", opts.results_name))
            .display(),
        r.scenarios.len(),
        opts.policies.len(),
        r.wall_s / 60.0
    );
    Ok(())
}
