//! `cargo xtask bench-endpoints [-- ARGS]`: one edge agent, two cloud
//! services behind links of their own (bench/endpoints/), the near one
//! killed near the end. Builds the eBPF object, the agent, the jitter lab
//! and the benchmark programs (release), then becomes `bench-endpoints`,
//! which writes bench/results/endpoints.{md,json,png}. Needs root.

use crate::util;
use anyhow::Result;

pub fn run(extra: &[String]) -> Result<()> {
    crate::lab_build::build()?;
    let shown = util::shown("cargo xtask bench-endpoints".into(), extra);
    util::become_bench("bench-endpoints", &shown, extra)
}
