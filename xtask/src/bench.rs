//! `cargo xtask bench [--quick] [--set all|scenarios|split] [-- ARGS]`: the
//! scenario benchmark. Builds the eBPF object (the edge agent measures
//! passively where it can), the agent, the jitter lab and the benchmark
//! programs (release), then runs `scenario-bench` on the scenario set
//! (every scenario x policy with the real agents across the emulated link:
//! bench/results/scenarios.md, the JSON data and the plots) and on the
//! split computing set (bench/split: bench/results/split.md); a quick run
//! writes scenarios-quick.md and split-quick.md. Needs root.
//! See bench/README.md.

use crate::util::{self, project_root};
use anyhow::{Context, Result};

/// The split computing set: its scenarios and the policies it compares
/// (local only, whole offload, every fixed split point of the image
/// classifier, and the policy that chooses per task).
const SPLIT_POLICIES: &str = "always-local,always-offload,split:stride4,split:stride8,split:stride16,split:stride32,deadline-aware";

pub fn run(quick: bool, set: &str, extra: &[String]) -> Result<()> {
    anyhow::ensure!(
        matches!(set, "all" | "scenarios" | "split"),
        "--set {set:?}: all, scenarios or split"
    );
    crate::lab_build::build()?;
    let mut base = String::from("cargo xtask bench");
    if quick {
        base.push_str(" --quick");
    }
    if set != "all" {
        base.push_str(&format!(" --set {set}"));
    }
    let shown = util::shown(base, extra);
    let bench = |args: &[&str]| -> Result<()> {
        let mut c =
            std::process::Command::new(project_root().join("target/release/scenario-bench"));
        c.current_dir(project_root()).args(["--command", &shown]);
        if quick {
            c.arg("--quick");
        }
        c.args(args).args(extra);
        // Ctrl-C reaches the benchmark too (same process group): it stops
        // its processes and removes its namespaces and cgroups, and this
        // waits for it.
        let st = c
            .status()
            .context("starting target/release/scenario-bench")?;
        anyhow::ensure!(st.success(), "scenario-bench failed: {st}");
        Ok(())
    };
    if set != "split" {
        bench(&[])?;
    }
    if set != "scenarios" {
        // A quick run of the split set covers 30 s around the first change:
        // the choice must settle on both sides of it.
        bench(&[
            "--scenarios",
            "bench/split",
            "--results-name",
            "split",
            "--policies",
            SPLIT_POLICIES,
            "--quick-seconds",
            "30",
        ])?;
    }
    Ok(())
}
