//! `ebpf-overhead`: throughput on a veth pair with and without the passive
//! probe attached, alternating, for bulk TCP, small segments and many
//! flows, and the programs' own run time (see `bench::ebpf::overhead`).
//! Prints the report as Markdown (also written to `--out`, with the full
//! JSON beside it), or with `--json` one JSON object on the last line.
//! Needs root, iperf3 and the eBPF object.

use bench::ebpf::overhead::{self, OverheadOptions, Parts, ThirdArm, Workload};
use bench::support::cleanup::Cleanup;
use clap::Parser;
use std::path::PathBuf;
use std::time::Duration;

#[derive(Parser)]
#[command(
    name = "ebpf-overhead",
    about = "Throughput cost of the eBPF probe (needs root, iperf3)"
)]
struct Args {
    /// Round pairs (one without the probe, one with) per workload.
    #[arg(long, default_value_t = 12)]
    rounds: u32,
    /// Seconds per iperf3 run.
    #[arg(long, default_value_t = 2)]
    seconds: u32,
    /// Workloads to run (default: all three).
    #[arg(long, value_enum, value_delimiter = ',')]
    workloads: Vec<Workload>,
    /// The one CPU everything runs on (iperf3 client and server, the probe's
    /// reader); the kernel programs run there too, in the packets' path.
    #[arg(long, default_value_t = 0)]
    cpu: usize,
    /// Which programs the measured flows pass through in the rounds with the probe.
    #[arg(long, value_enum, default_value_t = Parts::All)]
    parts: Parts,
    /// The probe's per-flow sample interval in milliseconds (0: every sample;
    /// default: the probe's default).
    #[arg(long)]
    sample_interval_ms: Option<f64>,
    /// Also write the Markdown report here, and the JSON report beside it (.json).
    #[arg(long)]
    out: Option<PathBuf>,
    /// Print one JSON object on the last line instead of the Markdown.
    #[arg(long)]
    json: bool,
    /// The command line to record in the report (default: this one).
    #[arg(long)]
    command: Option<String>,
    #[arg(long)]
    object: Option<PathBuf>,
    /// Another object measured as a third arm of the same alternating run
    /// (every sample kept): an older build, for a before/after.
    #[arg(long, conflicts_with = "hooks_only")]
    baseline_object: Option<PathBuf>,
    /// A third arm of the same run: the object attached the same way with
    /// every program returning at once (what the hooks cost by themselves)
    #[arg(long)]
    hooks_only: bool,
}

fn main() {
    let args = Args::parse();
    // Before any other thread exists: every later thread and child (iperf3
    // on both ends, the probe's reader) inherits both settings.
    let placement = overhead::place(args.cpu);
    let cleanup = Cleanup::install("ebpf-overhead");
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn".into()),
        )
        .with_writer(std::io::stderr)
        .try_init();
    let defaults = OverheadOptions::default();
    let opts = OverheadOptions {
        rounds: args.rounds,
        seconds: args.seconds,
        workloads: if args.workloads.is_empty() {
            defaults.workloads
        } else {
            args.workloads
        },
        parts: args.parts,
        object: args.object,
        sample_interval: args
            .sample_interval_ms
            .map_or(defaults.sample_interval, |ms| {
                Duration::from_secs_f64(ms.max(0.0) / 1e3)
            }),
        third: match args.baseline_object {
            Some(obj) => Some(ThirdArm::Baseline(obj)),
            None => args.hooks_only.then_some(ThirdArm::HooksOnly),
        },
        placement,
    };
    let progress = |m: &str| eprintln!("ebpf-overhead: {m}");
    let report = match overhead::run(&opts, &cleanup, &progress) {
        Ok(r) => r,
        Err(e) => {
            drop(cleanup);
            eprintln!("ebpf-overhead: {e:#}");
            std::process::exit(2);
        }
    };
    drop(cleanup);
    let command = args
        .command
        .unwrap_or_else(|| std::env::args().collect::<Vec<_>>().join(" "));
    let md = report.markdown(&command);
    let json = serde_json::to_string(&report).expect("the report serializes");
    if let Some(out) = &args.out {
        let pretty = serde_json::to_string_pretty(&report).expect("the report serializes");
        for (path, text) in [(out.clone(), &md), (out.with_extension("json"), &pretty)] {
            if let Err(e) = std::fs::write(&path, text) {
                eprintln!("ebpf-overhead: writing {}: {e}", path.display());
                std::process::exit(2);
            }
        }
    }
    if args.json {
        eprint!("{md}");
        println!("{json}");
    } else {
        print!("{md}");
    }
}
