//! `cargo xtask bench-ebpf`: the probe's overhead benchmark. Builds the
//! eBPF object and runs `ebpf-overhead` (crate bench, release): on a veth
//! pair between two namespaces it creates, alternating rounds with and
//! without the probe for bulk TCP, 128-byte segments and 128 flows, the
//! ratios of medians with 95 % bootstrap intervals, and each program's
//! nanoseconds per run from the kernel's BPF statistics; writes the
//! Markdown report to bench/results/ebpf-overhead.md (or `--out`) and the
//! JSON beside it. `--json`: one JSON object on the last line. Needs root
//! and iperf3.

use crate::util::{self, cargo, project_root};
use anyhow::Result;
use std::path::PathBuf;

pub struct Options {
    pub rounds: u32,
    pub seconds: u32,
    pub out: Option<PathBuf>,
    pub json: bool,
    /// The probe's per-flow sample interval (ms); `None`: its default.
    pub sample_interval_ms: Option<f64>,
    /// Another eBPF object to measure instead of the one just built.
    pub object: Option<PathBuf>,
    /// An older object measured as a third arm of the same run (before/after).
    pub baseline_object: Option<PathBuf>,
    /// A third arm: the programs attached but returning at once (the hooks' floor).
    pub hooks_only: bool,
}

pub fn run(o: Options) -> Result<()> {
    let built = crate::ebpf::build()?;
    let object = o.object.clone().unwrap_or(built);
    let out = o
        .out
        .clone()
        .unwrap_or_else(|| project_root().join("bench/results/ebpf-overhead.md"));
    if let Some(dir) = out.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let mut command = format!(
        "cargo xtask bench-ebpf --rounds {} --seconds {}",
        o.rounds, o.seconds
    );
    if let Some(ms) = o.sample_interval_ms {
        command.push_str(&format!(" --sample-interval-ms {ms}"));
    }
    if let Some(obj) = &o.object {
        command.push_str(&format!(" --object {}", obj.display()));
    }
    if let Some(obj) = &o.baseline_object {
        command.push_str(&format!(" --baseline-object {}", obj.display()));
    }
    if o.hooks_only {
        command.push_str(" --hooks-only");
    }
    if o.json {
        command.push_str(" --json");
    }
    let mut c = cargo();
    c.args([
        "run",
        "--release",
        "--quiet",
        "-p",
        "bench",
        "--bin",
        "ebpf-overhead",
        "--",
        "--rounds",
        &o.rounds.to_string(),
        "--seconds",
        &o.seconds.to_string(),
        "--command",
        &command,
        "--object",
    ])
    .arg(&object)
    .arg("--out")
    .arg(&out);
    if let Some(ms) = o.sample_interval_ms {
        c.args(["--sample-interval-ms", &ms.to_string()]);
    }
    if let Some(obj) = &o.baseline_object {
        c.arg("--baseline-object").arg(obj);
    }
    if o.hooks_only {
        c.arg("--hooks-only");
    }
    if o.json {
        c.arg("--json");
    }
    util::run(&mut c)
}
