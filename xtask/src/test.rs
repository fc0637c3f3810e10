//! `cargo xtask test`: builds everything (the eBPF object included), checks
//! the deployment files (`cargo xtask check-deploy`) and runs every test of
//! the workspace. Tests that need root, namespaces or the eBPF
//! object run for real; the test runner is cargo test.

use crate::util::{self, cargo};
use anyhow::Result;

pub fn run(extra: &[String]) -> Result<()> {
    let object = crate::ebpf::build()?;
    eprintln!("test: eBPF object at {}", object.display());
    util::release_build(&["--workspace", "--bins"])?;
    // Before the tests, so that cargo test's summary stays the last lines.
    crate::deploy::run()?;
    util::run(
        cargo()
            .args(["test", "--release", "--workspace", "--no-fail-fast"])
            .args(extra),
    )
}
