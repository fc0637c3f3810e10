//! `cargo xtask faults [--json] [-- ARGS]`: the fault and load suite. Builds
//! the eBPF object, the agent, the jitter lab and the benchmark programs
//! (release), then runs `faults`: per fault a fresh lab with the real cloud
//! and edge agents, the workload from the scenario driver and the fault at a
//! fixed time; writes bench/results/faults.md. The last line of its output
//! is the JSON array of {fault, sent, results, errors, lost, recovery_s,
//! worst_inflight_s}. Needs root. See bench/README.md.

use crate::util::{self, cargo, project_root};
use anyhow::{Context, Result};
use std::os::unix::process::CommandExt;

pub fn run(extra: &[String]) -> Result<()> {
    crate::ebpf::build()?;
    util::run(cargo().args([
        "build",
        "--release",
        "--quiet",
        "-p",
        "agent",
        "-p",
        "bench",
        "-p",
        "jitter-lab",
    ]))?;
    let mut shown = String::from("cargo xtask faults");
    if !extra.is_empty() {
        shown.push_str(" -- ");
        shown.push_str(&extra.join(" "));
    }
    let mut c = std::process::Command::new(project_root().join("target/release/faults"));
    c.current_dir(project_root())
        .args(["--command", &shown])
        .args(extra);
    // Become the suite, so Ctrl-C reaches it and it cleans up.
    Err(c.exec()).context("starting target/release/faults")
}
