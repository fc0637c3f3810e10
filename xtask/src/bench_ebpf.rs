//! `cargo xtask bench-ebpf`: the probe's overhead benchmark. Builds the
//! eBPF object and runs `ebpf-overhead` (crate bench, release): iperf3
//! on a veth pair, alternating rounds with and without the probe attached,
//! plus the reader's sustained record rate; writes the Markdown report to
//! bench/results/ebpf-overhead.md (or `--out`). Needs root and iperf3.

use crate::util::{self, cargo, project_root};
use anyhow::Result;
use std::path::PathBuf;

pub fn run(rounds: u32, seconds: u32, out: Option<PathBuf>) -> Result<()> {
    let object = crate::ebpf::build()?;
    let out = out.unwrap_or_else(|| project_root().join("bench/results/ebpf-overhead.md"));
    if let Some(dir) = out.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let command = format!("cargo xtask bench-ebpf --rounds {rounds} --seconds {seconds}");
    util::run(
        cargo()
            .args([
                "run",
                "--release",
                "--quiet",
                "-p",
                "bench",
                "--bin",
                "ebpf-overhead",
                "--",
                "--rounds",
                &rounds.to_string(),
                "--seconds",
                &seconds.to_string(),
                "--command",
                &command,
                "--object",
            ])
            .arg(&object)
            .arg("--out")
            .arg(&out),
    )
}
