//! `scenario-ab`: two arms (two builds of the agent, or two policies) run
//! in alternating rounds on the same scenarios and seeds (quick runs), then
//! the variant's effect on the miss rate and the charged mean with the
//! host's speed taken out (`bench::scenarios::ab`). Needs root.
//! `cargo xtask bench-ab` builds the arms from git revisions and runs this.

use anyhow::{bail, ensure, Context, Result};
use bench::scenarios::{ab, run};
use bench::support::{procs, stamp};
use clap::Parser;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

#[derive(Parser)]
#[command(
    name = "scenario-ab",
    about = "A/B comparison of two agent builds or policies over alternating scenario runs"
)]
struct Args {
    /// An arm: NAME=BIN_DIR (the folder with agent, netem-tun and
    /// scenario-driver), or NAME=BIN_DIR@POLICY to run it with its own
    /// policy. Twice: the base, then the variant.
    #[arg(long = "arm", required = true, num_args = 1)]
    arms: Vec<String>,
    /// The policy both arms run (where an arm names none).
    #[arg(long, default_value = "deadline-aware")]
    policy: String,
    /// Rounds; each runs both arms once, in alternating order.
    #[arg(long, default_value_t = 3)]
    rounds: usize,
    /// Seeds per scenario in each run (consecutive from the scenario's).
    #[arg(long, default_value_t = 3)]
    seeds: u64,
    /// A scenario file or a folder of them.
    #[arg(long, default_value = "bench/scenarios")]
    scenarios: PathBuf,
    /// Only these scenarios (comma-separated names).
    #[arg(long, value_delimiter = ',')]
    only: Vec<String>,
    /// Length of each quick run's window (s).
    #[arg(long, default_value_t = 12.0)]
    quick_seconds: f64,
    /// Seconds a fresh edge agent measures the link before the workload starts.
    #[arg(long, default_value_t = 1.5)]
    warmup: f64,
    #[command(flatten)]
    edge_cpu: run::EdgeCpu,
    /// CFS period of the edge's CPU quota.
    #[arg(long, default_value_t = 4000)]
    cpu_period_us: u64,
    /// Per-run records, logs and summaries.
    #[arg(long, default_value = "target/bench-ab/runs")]
    work: PathBuf,
    /// The report (markdown); the observations go beside it as JSON.
    #[arg(long, default_value = "target/bench-ab/report.md")]
    report: PathBuf,
    /// The command line to print in the report (default: this one).
    #[arg(long)]
    command: Option<String>,
}

struct Arm {
    name: String,
    bin_dir: PathBuf,
    policy: String,
}

fn parse_arm(spec: &str, policy: &str) -> Result<Arm> {
    let (name, rest) = spec
        .split_once('=')
        .with_context(|| format!("--arm {spec:?}: NAME=BIN_DIR[@POLICY]"))?;
    let (dir, policy) = rest.split_once('@').unwrap_or((rest, policy));
    ensure!(
        !name.is_empty() && !dir.is_empty() && !policy.is_empty(),
        "--arm {spec:?}: NAME=BIN_DIR[@POLICY]"
    );
    let bin_dir = PathBuf::from(dir);
    for b in run::PROGRAMS {
        run::program(&bin_dir, b).with_context(|| format!("--arm {spec:?}"))?;
    }
    let known = run::policy_names(&bin_dir)?;
    ensure!(
        known.iter().any(|k| k == policy),
        "--arm {spec:?}: unknown policy {policy:?} (this build has {known:?})"
    );
    Ok(Arm {
        name: name.to_string(),
        bin_dir,
        policy: policy.to_string(),
    })
}

fn main() -> Result<()> {
    let a = Args::parse();
    if a.arms.len() != 2 {
        bail!("--arm: exactly two (the base, then the variant)");
    }
    ensure!(
        a.rounds > 0 && a.seeds > 0,
        "--rounds and --seeds: at least 1"
    );
    let arms = [
        parse_arm(&a.arms[0], &a.policy)?,
        parse_arm(&a.arms[1], &a.policy)?,
    ];
    ensure!(arms[0].name != arms[1].name, "--arm: two different names");
    let files = run::scenario_files(&a.scenarios, &a.only)?;
    let command = a
        .command
        .clone()
        .unwrap_or_else(|| std::env::args().collect::<Vec<_>>().join(" "));
    procs::install_signal_cleanup()?;
    let t0 = Instant::now();
    let mut obs = Vec::new();
    for round in 0..a.rounds {
        for arm_ix in ab::round_order(round) {
            let arm = &arms[arm_ix];
            let work = a.work.join(format!("{round}-{}", arm.name));
            eprintln!(
                "scenario-ab: round {} of {}: {} ({})",
                round + 1,
                a.rounds,
                arm.name,
                arm.policy
            );
            let opts = run::Options {
                scenario_files: files.clone(),
                policies: vec![arm.policy.clone()],
                quick: true,
                duration_s: None,
                quick_len_s: a.quick_seconds,
                out_dir: work.join("summary"),
                results_name: "scenarios-quick".into(),
                work_dir: work.clone(),
                bin_dir: arm.bin_dir.clone(),
                period_us: a.cpu_period_us,
                warmup: Duration::from_secs_f64(a.warmup),
                command: command.clone(),
                plots: false,
                calibrate: false,
                seeds: a.seeds,
                resume: false,
                edge_cpu: a.edge_cpu,
            };
            let result = match run::run(&opts) {
                Ok(r) => r,
                // Interrupted: the signal thread stops everything and exits.
                Err(_) if procs::stopping() => loop {
                    std::thread::park();
                },
                Err(e) => return Err(e),
            };
            for sc in &result.scenarios {
                let dir = run::seed_dir(&work, &sc.name, sc.seed, a.seeds);
                let records = run::policy_records(&dir, &arm.policy)?;
                obs.extend(ab::Observation::from_records(
                    &sc.name, sc.seed, round, arm_ix, &records,
                ));
            }
        }
    }
    write_report(&a, &arms, &command, &obs, t0.elapsed())?;
    println!("wrote {}", a.report.display());
    Ok(())
}

fn write_report(
    a: &Args,
    arms: &[Arm; 2],
    command: &str,
    obs: &[ab::Observation],
    took: Duration,
) -> Result<()> {
    let mut md = format!(
        "# A/B: {} against {}\n\n{} The runs took {:.1} min.\n\n",
        arms[1].name,
        arms[0].name,
        stamp::generated_by(
            command,
            &run::now_utc(),
            &stamp::machine(),
            &stamp::source_commit()
        ),
        took.as_secs_f64() / 60.0,
    );
    for arm in arms {
        md.push_str(&format!(
            "- {}: `{}` with policy {}\n",
            arm.name,
            arm.bin_dir.display(),
            arm.policy
        ));
    }
    md.push_str(&format!(
        "- {} rounds, {} seeds per scenario, quick windows of {} s; records in `{}`\n\n",
        a.rounds,
        a.seeds,
        a.quick_seconds,
        a.work.display()
    ));
    md.push_str(&ab::report([&arms[0].name, &arms[1].name], obs));
    if let Some(dir) = a.report.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir)?;
    }
    std::fs::write(&a.report, md).with_context(|| format!("writing {}", a.report.display()))?;
    let json: &Path = &a.report.with_extension("json");
    std::fs::write(json, serde_json::to_string_pretty(obs)?)?;
    Ok(())
}
