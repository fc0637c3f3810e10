//! `probe-check`: the passive eBPF probe against the jitter lab (see
//! `bench_ebpf::check`). Prints a summary, or with `--json` one JSON object
//! on the last line; exits 1 when outside the tolerances. Needs root and
//! the object from `cargo xtask build-ebpf`.

use bench::ebpf::probe_accuracy::{
    self as check, CheckOptions, JITTER_TOLERANCE, RTT_TOLERANCE_MS,
};
use bench::support::cleanup::Cleanup;
use clap::Parser;
use std::path::PathBuf;

#[derive(Parser)]
#[command(
    name = "probe-check",
    about = "eBPF probe accuracy against the jitter lab (needs root)"
)]
struct Args {
    /// Print the report as one JSON object on the last line.
    #[arg(long)]
    json: bool,
    /// Seconds of TCP request/response.
    #[arg(long, default_value_t = 10.0)]
    tcp_seconds: f64,
    /// Seconds of QUIC datagram echo (after the spin-bit warm-up).
    #[arg(long, default_value_t = 8.0)]
    quic_seconds: f64,
    /// Seconds of bulk upload under loss.
    #[arg(long, default_value_t = 4.0)]
    loss_seconds: f64,
    /// Link model seed (default: from the clock).
    #[arg(long)]
    seed: Option<u64>,
    /// The eBPF object (default: target/bpf/agent-ebpf.o, found as the agent finds it).
    #[arg(long)]
    object: Option<PathBuf>,
}

fn main() {
    // Before any thread exists, so every later one has the signals blocked.
    let cleanup = Cleanup::install("probe-check");
    let args = Args::parse();
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn".into()),
        )
        .with_writer(std::io::stderr)
        .try_init();
    let opts = CheckOptions {
        tcp_seconds: args.tcp_seconds,
        quic_seconds: args.quic_seconds,
        loss_seconds: args.loss_seconds,
        seed: args.seed,
        object: args.object,
        ..CheckOptions::default()
    };
    let progress = |m: &str| eprintln!("probe-check: {m}");
    let report = match check::run(&opts, &cleanup, &progress) {
        Ok(r) => r,
        Err(e) => {
            drop(cleanup);
            eprintln!("probe-check: {e:#}");
            std::process::exit(2);
        }
    };
    drop(cleanup);
    if args.json {
        println!(
            "{}",
            serde_json::to_string(&report).expect("the report serializes")
        );
    } else {
        println!(
            "true RTT (TCP exchanges, app-timed): {} ms +- {} ms ({} samples); configured {} ms +- {} ms",
            report.true_rtt_ms,
            report.true_jitter_ms,
            report.samples.tcp_app,
            report.configured_rtt_ms,
            report.configured_jitter_ms
        );
        println!(
            "sock_ops:          {} ms +- {} ms ({} samples)",
            report.tcp_rtt_ms, report.tcp_jitter_ms, report.samples.sockops
        );
        println!(
            "tc TCP timestamps: {} ms +- {} ms ({} samples)",
            report.tc_ts_rtt_ms, report.tc_ts_jitter_ms, report.samples.tc_tcp_ts
        );
        println!(
            "QUIC truth (datagram echoes): {} ms +- {} ms ({} samples); spin bit: {} ms +- {} ms ({} samples, connection {} of those opened)",
            report.quic_true_rtt_ms,
            report.quic_true_jitter_ms,
            report.samples.quic_app,
            report.quic_rtt_ms,
            report.quic_jitter_ms,
            report.samples.quic_spin,
            report.quic_connections
        );
        let r = &report.retransmits;
        println!(
            "{} % loss: probe {} retransmits over {} segments; socket {} over {}; emulator dropped {}",
            r.configured_loss * 100.0,
            r.probe_retransmits,
            r.probe_segments,
            r.kernel_total_retrans,
            r.kernel_data_segs_out,
            r.emulator_drops
        );
        println!(
            "unwatched flows: {} records; detached: {}; tolerances: mean +-{RTT_TOLERANCE_MS} ms, jitter +-{} %",
            report.unwatched.records,
            report.detached.clean(),
            JITTER_TOLERANCE * 100.0
        );
    }
    for f in &report.failures {
        eprintln!("probe-check: OUT OF TOLERANCE: {f}");
    }
    std::process::exit(if report.within_tolerance { 0 } else { 1 });
}
