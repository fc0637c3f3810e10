//! `cargo xtask demo`: builds the agent and runs `agent demo`, which starts
//! the cloud service and the edge agent on this machine and drives the
//! default workload (image classification, object detection and text) through them.

use crate::util::{self, project_root};
use anyhow::Result;

pub fn run(seconds: Option<u64>, json: bool) -> Result<()> {
    // The edge agent measures the link passively when the object is there.
    crate::ebpf::build()?;
    util::release_build(&["-p", "agent"])?;
    let mut agent = std::process::Command::new(project_root().join("target/release/agent"));
    agent.current_dir(project_root()).arg("demo");
    if let Some(s) = seconds {
        agent.args(["--seconds", &s.to_string()]);
    }
    if json {
        agent.arg("--json");
    }
    util::run(&mut agent)
}
