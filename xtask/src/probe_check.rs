//! `cargo xtask probe-check [--json]`: the passive eBPF probe's accuracy
//! against the jitter lab. Builds the eBPF object and runs `probe-check`
//! (crate bench, release): 20 ms +- 5 ms one way, real TCP and QUIC
//! (quinn) traffic, 2 % loss for retransmissions; compares sock_ops, tc
//! TCP timestamps and the QUIC spin bit with the traffic's own timing and
//! fails outside the tolerances (mean 2 ms, jitter 20 %). With --json the
//! last line is one JSON object. Needs root; ~35 s.

use crate::util::{self, cargo};
use anyhow::Result;

pub fn run(json: bool) -> Result<()> {
    let object = crate::ebpf::build()?;
    let mut c = cargo();
    c.args([
        "run",
        "--release",
        "--quiet",
        "-p",
        "bench",
        "--bin",
        "probe-check",
        "--",
        "--object",
    ])
    .arg(&object);
    if json {
        c.arg("--json");
    }
    util::run(&mut c)
}
