//! What the benchmarks on emulated links run, built before they start.

use crate::util;
use anyhow::Result;

/// The eBPF object, then (release) the agent, the benchmark programs and
/// the jitter lab.
pub fn build() -> Result<()> {
    crate::ebpf::build()?;
    util::release_build(&["-p", "agent", "-p", "bench", "-p", "jitter-lab"])
}
