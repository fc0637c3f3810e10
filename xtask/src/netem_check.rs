//! `cargo xtask netem-check [--json]`: the jitter lab's emulator accuracy
//! check. Builds `netem-tun` (release) and runs `netem-tun check`, which
//! configures 20 ms +- 5 ms (normal) and 1 % loss one way between two
//! network namespaces, measures with ICMP and a TCP flow, and prints the
//! comparison (one JSON object on the last line with --json). Fails when
//! the measurement is outside the tolerances (delay 10 %, jitter 20 %).
//! Needs root.

use crate::util::{self, cargo};
use anyhow::Result;

pub fn run(json: bool) -> Result<()> {
    let mut c = cargo();
    c.args([
        "run",
        "--release",
        "--quiet",
        "-p",
        "jitter-lab",
        "--bin",
        "netem-tun",
        "--",
        "check",
    ]);
    if json {
        c.arg("--json");
    }
    util::run(&mut c)
}
