//! `cargo xtask test`: builds everything (the eBPF object included) and runs
//! every test of the workspace. Tests that need root, namespaces or the eBPF
//! object run for real; the test runner is cargo test.

use crate::util::{self, cargo};
use anyhow::Result;

pub fn run(extra: &[String]) -> Result<()> {
    util::run(cargo().args(["build", "--release", "--quiet", "-p", "agent"]))?;
    util::run(cargo().args(["test", "--release", "--workspace"]).args(extra))
}

