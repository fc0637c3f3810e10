//! `cargo xtask faults [--json] [-- ARGS]`: the fault and load suite. Builds
//! the eBPF object, the agent, the jitter lab and the benchmark programs
//! (release), then runs `faults`: per fault a fresh lab with the real cloud
//! and edge agents, the workload from the scenario driver and the fault at a
//! fixed time; writes bench/results/faults.md. The last line of its output
//! is the JSON array of {fault, sent, results, errors, lost, recovery_s,
//! worst_inflight_s}. Needs root. See bench/README.md.

use crate::util;
use anyhow::Result;

pub fn run(extra: &[String]) -> Result<()> {
    crate::lab_build::build()?;
    let shown = util::shown("cargo xtask faults".into(), extra);
    util::become_bench("faults", &shown, extra)
}
