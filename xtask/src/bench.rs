//! `cargo xtask bench [--quick] [-- ARGS]`: the scenario benchmark. Builds
//! the eBPF object (the edge agent measures passively where it can), the
//! agent, the jitter lab and the benchmark programs (release), then becomes
//! `scenario-bench`, which runs every scenario x policy with the real agents
//! across the emulated link and writes bench/results/scenarios.md, the JSON
//! data and the plots. Needs root. See bench/README.md.

use crate::util::{self, cargo, project_root};
use anyhow::{Context, Result};
use std::os::unix::process::CommandExt;

pub fn run(quick: bool, extra: &[String]) -> Result<()> {
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
    let mut shown = String::from("cargo xtask bench");
    if quick {
        shown.push_str(" --quick");
    }
    if !extra.is_empty() {
        shown.push_str(" -- ");
        shown.push_str(&extra.join(" "));
    }
    let mut c = std::process::Command::new(project_root().join("target/release/scenario-bench"));
    c.current_dir(project_root()).args(["--command", &shown]);
    if quick {
        c.arg("--quick");
    }
    c.args(extra);
    // Become the benchmark: Ctrl-C then reaches it directly and the shell
    // waits until it has stopped its processes and removed its namespaces
    // and cgroups.
    Err(c.exec()).context("starting target/release/scenario-bench")
}
