//! `cargo xtask <command>`: the developer's front door.
//!
//! Every command first makes sure what it needs is installed (idempotently),
//! so a fresh machine needs nothing but this repository and rustup.

mod bench;
mod bench_ab;
mod bench_decision;
mod bench_ebpf;
mod bench_endpoints;
mod bench_throughput;
mod bench_transport;
mod demo;
mod deploy;
mod ebpf;
mod faults;
mod lab_build;
mod netem_check;
mod probe_check;
mod setup;
mod test;
mod util;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "xtask",
    about = "Build, demo, test and benchmark the edge offloading agent"
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Install everything the build and the tests need (apt packages, libtorch, bpf-linker, the deployment linters).
    Setup {
        /// Only what building the agent needs (apt packages, libtorch, bpf-linker): container builds.
        #[arg(long)]
        build_only: bool,
    },
    /// Build the eBPF object (agent-ebpf) and install it at target/bpf/agent-ebpf.o.
    BuildEbpf,
    /// Set up, build, start the cloud service and the edge agent here, and drive the default workload.
    Demo {
        /// Stop after this many seconds (default: the full demo workload).
        #[arg(long)]
        seconds: Option<u64>,
        /// Print the summary as one JSON object on the last line.
        #[arg(long)]
        json: bool,
    },
    /// Jitter lab emulator accuracy check (20 ms +- 5 ms, 1 % loss, one way; needs root).
    NetemCheck {
        /// Print the result as one JSON object on the last line.
        #[arg(long)]
        json: bool,
    },
    /// eBPF probe accuracy in the jitter lab: TCP and QUIC RTT vs the traffic's own timing, retransmits (needs root).
    ProbeCheck {
        /// Print the result as one JSON object on the last line.
        #[arg(long)]
        json: bool,
    },
    /// eBPF probe overhead: alternating rounds with and without the probe on a veth pair (bulk, 128-byte segments, 128 flows), ratios with 95 % intervals, ns per program run; writes bench/results/ebpf-overhead.md and .json (needs root, iperf3).
    BenchEbpf {
        /// Round pairs (one without the probe, one with) per workload.
        #[arg(long, default_value_t = 12)]
        rounds: u32,
        /// Seconds per iperf3 run.
        #[arg(long, default_value_t = 2)]
        seconds: u32,
        /// Where to write the Markdown report (default: bench/results/ebpf-overhead.md; the JSON goes beside it).
        #[arg(long)]
        out: Option<std::path::PathBuf>,
        /// Print one JSON object on the last line.
        #[arg(long)]
        json: bool,
        /// The probe's per-flow sample interval in ms (0: every sample; default: the probe's).
        #[arg(long)]
        sample_interval_ms: Option<f64>,
        /// Measure this eBPF object instead of the one just built.
        #[arg(long)]
        object: Option<std::path::PathBuf>,
        /// An older eBPF object measured as a third arm of the same alternating run (before/after).
        #[arg(long, conflicts_with = "hooks_only")]
        baseline_object: Option<std::path::PathBuf>,
        /// A third arm: every program attached but returning at once (what the hooks alone cost).
        #[arg(long)]
        hooks_only: bool,
    },
    /// QUIC vs gRPC offload latency and throughput (1 KB, 64 KB, 1 MB) on loopback and a 1 %-loss link.
    BenchTransport {
        /// Fewer requests per row (about a minute).
        #[arg(long)]
        quick: bool,
        /// Print the rows as one JSON array on the last line.
        #[arg(long)]
        json: bool,
    },
    /// The edge agent's throughput and per-task overhead vs a bare gRPC echo (closed loop at 1-64 in flight; trivial and workload models); writes bench/results/throughput.md and .json.
    BenchThroughput {
        /// Fewer levels and shorter rounds (about 3 minutes).
        #[arg(long)]
        quick: bool,
        /// Print the headline as one JSON object on the last line (always printed; this keeps stdout to it).
        #[arg(long)]
        json: bool,
        /// Extra arguments for `bench-throughput run` (e.g. -- --only digits-local --rounds 5).
        #[arg(trailing_var_arg = true)]
        args: Vec<String>,
    },
    /// Two offload endpoints behind different links (near: slow, then jittery, then calm; far: stable), the near cloud killed at 70 s: where tasks go; writes bench/results/endpoints.{md,json,png}. Needs root.
    BenchEndpoints {
        /// Extra arguments for `bench-endpoints` (e.g. -- --kill-at -1).
        #[arg(trailing_var_arg = true)]
        args: Vec<String>,
    },
    /// Criterion benchmarks of the decision, the estimators' updates and the eBPF record conversion, with per-call p50/p99; writes bench/results/decision.md.
    BenchDecision {
        /// Shorter criterion runs (1 s warm-up, 2 s measurement per benchmark).
        #[arg(long)]
        quick: bool,
    },
    /// Scenario benchmark: every scenario x policy with the real agents across the jitter lab; writes bench/results/scenarios.md and plots (`--quick`: scenarios-quick.md), and split.md for the split set (needs root).
    Bench {
        /// Reduced matrix: each scenario cut to a 12 s window around its first change (under 10 minutes).
        #[arg(long)]
        quick: bool,
        /// Which scenarios: `scenarios` (bench/scenarios, every policy), `split`
        /// (bench/split, split computing), or `all`.
        #[arg(long, default_value = "all")]
        set: String,
        /// Extra arguments for scenario-bench (e.g. -- --only wan,lan --policies cost-model).
        #[arg(trailing_var_arg = true)]
        args: Vec<String>,
    },
    /// A/B of two revisions of the agent on the scenario benchmark: both built (a revision in a worktree under target/bench-ab), then alternating quick runs of the same scenarios and seeds, the variant's effect on the miss rate and the charged mean with the host's speed taken out; writes target/bench-ab/report.md (needs root).
    BenchAb {
        /// The base: a git revision.
        #[arg(long)]
        base: String,
        /// The variant: a git revision, or `.` for the working tree as it is.
        #[arg(long, default_value = ".")]
        variant: String,
        /// Extra arguments for scenario-ab (e.g. -- --only lossy,outage --rounds 4 --policy threshold).
        #[arg(trailing_var_arg = true)]
        args: Vec<String>,
    },
    /// Fault and load suite: cloud killed, link down, 30 % loss, cancel storm, slow-loris, cloud overload, edge restart, with the real agents across the jitter lab; writes bench/results/faults.md (needs root). The last line is a JSON array, one object per fault.
    Faults {
        /// The JSON array is always the last line (kept for symmetry with the other checks).
        #[arg(long)]
        json: bool,
        /// Extra arguments for `faults` (e.g. -- --only cloud-kill --soak 600).
        #[arg(trailing_var_arg = true)]
        args: Vec<String>,
    },
    /// Check the deployment files offline: systemd-analyze verify (units), hadolint (Containerfiles), kubernetes-validate --strict (manifests), the agent parsing every configuration. Needs target/release/agent.
    CheckDeploy,
    /// Set up, build, check the deployment files, and run every test (unit, integration, eBPF, namespaces).
    Test {
        /// Extra arguments passed to `cargo test`.
        #[arg(trailing_var_arg = true)]
        args: Vec<String>,
    },
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match cli.cmd {
        Cmd::Setup { build_only: false } => setup::all(),
        Cmd::Setup { build_only: true } => setup::build_only(),
        Cmd::BuildEbpf => {
            setup::apt_packages()?;
            setup::bpf_linker()?;
            let object = ebpf::build()?;
            println!("{}", object.display());
            Ok(())
        }
        Cmd::Demo { seconds, json } => {
            setup::all()?;
            demo::run(seconds, json)
        }
        Cmd::NetemCheck { json } => {
            setup::all()?;
            netem_check::run(json)
        }
        Cmd::ProbeCheck { json } => {
            setup::all()?;
            probe_check::run(json)
        }
        Cmd::BenchEbpf {
            rounds,
            seconds,
            out,
            json,
            sample_interval_ms,
            object,
            baseline_object,
            hooks_only,
        } => {
            setup::all()?;
            bench_ebpf::run(bench_ebpf::Options {
                rounds,
                seconds,
                out,
                json,
                sample_interval_ms,
                object,
                baseline_object,
                hooks_only,
            })
        }
        Cmd::BenchTransport { quick, json } => {
            setup::all()?;
            bench_transport::run(quick, json)
        }
        Cmd::BenchThroughput { quick, json, args } => {
            setup::all()?;
            bench_throughput::run(quick, json, &args)
        }
        Cmd::BenchDecision { quick } => bench_decision::run(quick),
        Cmd::BenchEndpoints { args } => {
            setup::all()?;
            bench_endpoints::run(&args)
        }
        Cmd::Bench { quick, set, args } => {
            setup::all()?;
            bench::run(quick, &set, &args)
        }
        Cmd::BenchAb {
            base,
            variant,
            args,
        } => {
            setup::all()?;
            bench_ab::run(&base, &variant, &args)
        }
        Cmd::Faults { json: _, args } => {
            setup::all()?;
            faults::run(&args)
        }
        Cmd::CheckDeploy => {
            setup::check_apt_packages()?;
            setup::deploy_tools()?;
            deploy::run()
        }
        Cmd::Test { args } => {
            setup::all()?;
            test::run(&args)
        }
    }
}
