//! `cargo xtask bench-throughput [--quick] [--json]`: the edge agent's own
//! per-task costs. Builds `agent` and `bench-throughput` (release) and runs
//! `bench-throughput run`: the real cloud and edge on loopback and a bare
//! tonic echo service, driven in a closed loop at 1/4/16/64 tasks in flight
//! in alternating rounds, with the digits model (trivial) locally and
//! offloaded and each workload model locally. Writes
//! bench/results/throughput.md and throughput.json; the last line is the
//! JSON headline (`tasks_per_s`, `p99_ms`, `max_ms`, `overhead_us_p50`,
//! `echo_us_p50` of the trivial model at 1 in flight, `at_16` the same at
//! 16, and the memory of every stack).

use crate::util::{self, project_root};
use anyhow::Result;

pub fn run(quick: bool, json: bool, extra: &[String]) -> Result<()> {
    util::release_build(&[
        "-p",
        "agent",
        "-p",
        "bench",
        "--bin",
        "agent",
        "--bin",
        "bench-throughput",
    ])?;
    let shown = util::shown(
        format!(
            "cargo xtask bench-throughput{}{}",
            if quick { " --quick" } else { "" },
            if json { " --json" } else { "" }
        ),
        extra,
    );
    let mut c = util::cmd(
        project_root()
            .join("target/release/bench-throughput")
            .to_str()
            .expect("UTF-8 path"),
    );
    c.current_dir(project_root()).arg("run").args([
        "--out",
        "bench/results/throughput.md",
        "--json-out",
        "bench/results/throughput.json",
        "--command",
        &shown,
    ]);
    if quick {
        c.arg("--quick");
    }
    if json {
        c.arg("--json");
    }
    c.args(extra);
    util::run(&mut c)
}
