//! `cargo xtask bench-endpoints [-- ARGS]`: one edge agent, two cloud
//! services behind links of their own (bench/endpoints/), the near one
//! killed near the end. Builds the eBPF object, the agent, the jitter lab
//! and the benchmark programs (release), then becomes `bench-endpoints`,
//! which writes bench/results/endpoints.{md,json,png}. Needs root.

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
    let mut shown = String::from("cargo xtask bench-endpoints");
    if !extra.is_empty() {
        shown.push_str(" -- ");
        shown.push_str(&extra.join(" "));
    }
    let mut c = std::process::Command::new(project_root().join("target/release/bench-endpoints"));
    c.current_dir(project_root()).args(["--command", &shown]);
    c.args(extra);
    // Become the benchmark: Ctrl-C reaches it, and it removes its
    // namespaces and cgroups before the shell returns.
    Err(c.exec()).context("starting target/release/bench-endpoints")
}
