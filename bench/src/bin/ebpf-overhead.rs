//! `ebpf-overhead`: TCP throughput on a veth pair with and without the
//! passive probe attached, alternating (see `bench::ebpf::overhead`).
//! Prints the report as Markdown (also written to `--out`), then one JSON
//! object on the last line. Needs root, iperf3 and the eBPF object.

use bench::ebpf::overhead::{self, OverheadOptions, Parts};
use bench::support::cleanup::Cleanup;
use clap::Parser;
use std::path::PathBuf;

#[derive(Parser)]
#[command(
    name = "ebpf-overhead",
    about = "Throughput cost of the eBPF probe (needs root, iperf3)"
)]
struct Args {
    /// Pairs of rounds (one without the probe, one with).
    #[arg(long, default_value_t = 5)]
    rounds: u32,
    /// Seconds per iperf3 run.
    #[arg(long, default_value_t = 5)]
    seconds: u32,
    /// Parallel TCP streams per run.
    #[arg(long, default_value_t = 1)]
    streams: u32,
    /// Seconds of the small-message stress round (0 skips it).
    #[arg(long, default_value_t = 5)]
    stress_seconds: u32,
    /// The one CPU everything runs on (iperf3 client and server, the probe's
    /// reader); the kernel programs run there too, in the packets' path.
    #[arg(long, default_value_t = 0)]
    cpu: usize,
    /// Which programs the measured flows pass through in the rounds with the probe.
    #[arg(long, value_enum, default_value_t = Parts::All)]
    parts: Parts,
    /// Also write the Markdown report here.
    #[arg(long)]
    out: Option<PathBuf>,
    /// The command line to record in the report (default: this one).
    #[arg(long)]
    command: Option<String>,
    #[arg(long)]
    object: Option<PathBuf>,
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
    let opts = OverheadOptions {
        rounds: args.rounds,
        seconds: args.seconds,
        streams: args.streams,
        stress_seconds: args.stress_seconds,
        parts: args.parts,
        object: args.object,
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
    print!("{md}");
    if let Some(out) = &args.out {
        if let Err(e) = std::fs::write(out, &md) {
            eprintln!("ebpf-overhead: writing {}: {e}", out.display());
            std::process::exit(2);
        }
    }
    println!(
        "{}",
        serde_json::to_string(&report).expect("the report serializes")
    );
}
