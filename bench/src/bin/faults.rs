//! `faults`: the fault and load suite with the real agents across the
//! jitter lab (`cargo xtask faults`); writes bench/results/faults.md,
//! faults.json and, with a soak run, soak.png. Needs root. The last line of
//! its output is a JSON array of {fault, sent, results, errors, lost,
//! recovery_s, worst_inflight_s}; it exits with an error when a task was
//! lost or the tasks in flight at a cloud kill waited 2 s or more.

use anyhow::{bail, Context, Result};
use bench::faults::load::StormReport;
use bench::faults::{self, Fault};
use bench::support::procs;
use clap::Parser;
use std::path::PathBuf;

/// The worst latency allowed to a task in flight when the cloud dies.
const CLOUD_KILL_INFLIGHT_LIMIT_S: f64 = 2.0;

#[derive(Parser)]
#[command(
    name = "faults",
    about = "Fault and load suite of the edge offloading agent"
)]
struct Args {
    /// Faults to run (comma-separated; default: all; `soak` alone: only the soak).
    #[arg(long, value_delimiter = ',')]
    only: Vec<String>,
    /// Link and workload.
    #[arg(long, default_value = "bench/faults/workload.toml")]
    scenario: PathBuf,
    /// Seconds of workload per fault.
    #[arg(long, default_value_t = 30.0)]
    seconds: f64,
    /// When the fault begins, seconds into the workload.
    #[arg(long, default_value_t = 8.0)]
    fault_at: f64,
    /// The edge's policy during the faults.
    #[arg(long, default_value = "always-offload")]
    policy: String,
    /// Also soak for this many seconds (memory and descriptors sampled).
    #[arg(long)]
    soak: Option<f64>,
    /// Link and workload of the soak.
    #[arg(long, default_value = "bench/faults/soak.toml")]
    soak_scenario: PathBuf,
    /// The edge's policy during the soak.
    #[arg(long, default_value = "deadline-aware")]
    soak_policy: String,
    #[arg(long, default_value = "bench/results")]
    out: PathBuf,
    #[arg(long, default_value = "target/faults")]
    work: PathBuf,
    /// Folder with agent, netem-tun and scenario-driver (default: this program's).
    #[arg(long)]
    bin_dir: Option<PathBuf>,
    /// The command line to print in the report (default: this one).
    #[arg(long)]
    command: Option<String>,
    /// The agents' log level; their logs are in the work folder.
    #[arg(long, default_value = "warn")]
    agent_log: String,
}

fn main() -> Result<()> {
    let a = Args::parse();
    procs::install_signal_cleanup()?;
    let bin_dir = match &a.bin_dir {
        Some(d) => d.clone(),
        None => std::env::current_exe()?
            .parent()
            .context("the program's folder")?
            .to_path_buf(),
    };
    // `--only soak` runs the soak alone.
    let faults = if a.only.is_empty() {
        Fault::ALL.to_vec()
    } else {
        a.only
            .iter()
            .filter(|n| *n != "soak")
            .map(|n| {
                Fault::from_name(n).with_context(|| {
                    let names: Vec<&str> = Fault::ALL.iter().map(|f| f.name()).collect();
                    format!("unknown fault {n:?} (one of {names:?})")
                })
            })
            .collect::<Result<_>>()?
    };
    if a.fault_at <= 0.0 || a.fault_at >= a.seconds {
        bail!(
            "--fault-at must fall inside the run (0 < {} < {})",
            a.fault_at,
            a.seconds
        );
    }
    let opts = faults::Options {
        faults,
        scenario: a.scenario.clone(),
        run_s: a.seconds,
        fault_at_s: a.fault_at,
        policy: a.policy.clone(),
        soak_s: a.soak,
        soak_policy: a.soak_policy.clone(),
        soak_scenario: a.soak_scenario.clone(),
        out_dir: a.out.clone(),
        work_dir: a.work.clone(),
        bin_dir,
        command: a
            .command
            .clone()
            .unwrap_or_else(|| std::env::args().collect::<Vec<_>>().join(" ")),
        agent_log: a.agent_log.clone(),
    };
    let r = match faults::run(&opts) {
        Ok(r) => r,
        Err(_) if procs::stopping() => loop {
            std::thread::park();
        },
        Err(e) => return Err(e),
    };
    eprintln!(
        "wrote {} ({:.1} min)",
        opts.out_dir.join("faults.md").display(),
        r.wall_s / 60.0
    );
    let mut bad = Vec::new();
    for (row, d) in &r.faults {
        if row.fault != Fault::CancelStorm.name() {
            continue;
        }
        for side in ["cloud", "edge"] {
            let served = serde_json::from_value::<StormReport>(d.load[side].clone())
                .is_ok_and(|s| s.served_after());
            if !served {
                bad.push(format!(
                    "{}: no valid request served by the {side} after the storm",
                    row.fault
                ));
            }
        }
    }
    let mut rows: Vec<_> = r.faults.iter().map(|(row, _)| row.clone()).collect();
    if let Some(s) = &r.soak {
        rows.push(s.row.clone());
    }
    println!("{}", serde_json::to_string(&rows)?);
    for row in &rows {
        if row.lost > 0 {
            bad.push(format!("{}: {} tasks lost", row.fault, row.lost));
        }
        if row.fault == Fault::CloudKill.name()
            && row
                .worst_inflight_s
                .is_none_or(|w| w >= CLOUD_KILL_INFLIGHT_LIMIT_S)
        {
            bad.push(format!(
                "{}: tasks in flight waited {:?} s (limit {CLOUD_KILL_INFLIGHT_LIMIT_S} s)",
                row.fault, row.worst_inflight_s
            ));
        }
    }
    if !bad.is_empty() {
        bail!("{}", bad.join("; "));
    }
    Ok(())
}
