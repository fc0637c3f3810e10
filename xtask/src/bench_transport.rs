//! `cargo xtask bench-transport [--quick] [--json]`: QUIC vs gRPC offload
//! latency (p50/p99) and throughput for 1 KB, 64 KB and 1 MB payloads, on
//! loopback and across the jitter lab's emulated link (RTT 10 ms, 1 %
//! loss; needs root). Builds `bench-transport` and `netem-tun` (release)
//! and runs `bench-transport run`; with --json the last line is one JSON
//! array of `{transport, payload_bytes, link, p50_us, p99_us, rps}` (every
//! round's rows). Writes bench/results/transport.md: three alternating
//! rounds, medians with their range, QUIC/gRPC p99 ratios.

use crate::util::{self, project_root};
use anyhow::Result;

pub fn run(quick: bool, json: bool) -> Result<()> {
    util::release_build(&[
        "-p",
        "bench",
        "-p",
        "jitter-lab",
        "--bin",
        "bench-transport",
        "--bin",
        "netem-tun",
    ])?;
    let mut c = util::cmd(
        project_root()
            .join("target/release/bench-transport")
            .to_str()
            .expect("UTF-8 path"),
    );
    let shown = format!(
        "cargo xtask bench-transport{}{}",
        if quick { " --quick" } else { "" },
        if json { " --json" } else { "" }
    );
    c.current_dir(project_root()).arg("run").args([
        "--out",
        "bench/results/transport.md",
        "--command",
        &shown,
    ]);
    if quick {
        c.arg("--quick");
    }
    if json {
        c.arg("--json");
    }
    util::run(&mut c)
}
