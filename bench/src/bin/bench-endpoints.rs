//! `bench-endpoints`: one edge agent, two cloud services behind links of
//! their own (bench/endpoints/near.toml, far.toml), the near one killed
//! near the end; writes bench/results/endpoints.{md,json,png}. Needs root.
//! The last stdout line is the JSON headline.

use anyhow::{bail, Context, Result};
use bench::endpoints::{self, Options};
use bench::support::procs;
use clap::Parser;
use std::path::PathBuf;
use std::time::Duration;

#[derive(Parser)]
#[command(
    name = "bench-endpoints",
    about = "Where tasks go with two offload endpoints behind changing links"
)]
struct Args {
    /// The near link and the workload.
    #[arg(long, default_value = "bench/endpoints/near.toml")]
    near: PathBuf,
    /// The far link.
    #[arg(long, default_value = "bench/endpoints/far.toml")]
    far: PathBuf,
    /// Kill the near cloud this many seconds into the workload (negative: never).
    #[arg(long, default_value_t = 70.0, allow_hyphen_values = true)]
    kill_at: f64,
    #[arg(long, default_value = "deadline-aware")]
    policy: String,
    #[arg(long, default_value = "bench/results")]
    out: PathBuf,
    #[arg(long, default_value = "target/bench-endpoints")]
    work: PathBuf,
    /// Folder with agent, netem-tun and scenario-driver (default: this program's).
    #[arg(long)]
    bin_dir: Option<PathBuf>,
    #[arg(long, default_value_t = 4000)]
    cpu_period_us: u64,
    /// Seconds the edge measures both links before the workload starts.
    #[arg(long, default_value_t = 2.0)]
    warmup: f64,
    /// The command line to print in the report (default: this one).
    #[arg(long)]
    command: Option<String>,
}

fn main() -> Result<()> {
    let a = Args::parse();
    if !nix::unistd::geteuid().is_root() {
        bail!("bench-endpoints needs root (namespaces, TUN devices, cgroups)");
    }
    procs::install_signal_cleanup()?;
    let bin_dir = match a.bin_dir {
        Some(d) => d,
        None => std::env::current_exe()?
            .parent()
            .context("executable folder")?
            .to_path_buf(),
    };
    let command = a
        .command
        .unwrap_or_else(|| std::env::args().collect::<Vec<_>>().join(" "));
    let o = Options {
        near: a.near,
        far: a.far,
        kill_at_s: (a.kill_at >= 0.0).then_some(a.kill_at),
        out_dir: a.out,
        work_dir: a.work,
        bin_dir,
        policy: a.policy,
        warmup: Duration::from_secs_f64(a.warmup),
        period_us: a.cpu_period_us,
        command,
    };
    let r = endpoints::run(&o)?;
    println!(
        "{}",
        serde_json::json!({
            "tasks": r.tasks,
            "ok": r.ok,
            "lost": r.lost,
            "failed": r.failed,
            "to_killed_after_kill": r.to_killed_after_kill,
            "last_to_killed_after_s": r.last_to_killed_after_s,
            "phases": r.phases.iter().map(|p| serde_json::json!({
                "note": p.note, "near": p.near_share, "far": p.far_share, "local": p.local_share,
            })).collect::<Vec<_>>(),
        })
    );
    Ok(())
}
