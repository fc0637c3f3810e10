//! What the tests that start the scenario benchmark's programs share.

use std::path::{Path, PathBuf};

/// The folder of `program` (a benchmark binary), which must also hold the
/// agent, the driver and the emulator it starts.
pub fn bin_dir(program: &str) -> PathBuf {
    let dir = Path::new(program).parent().unwrap().to_path_buf();
    for b in bench::scenarios::run::PROGRAMS {
        assert!(
            dir.join(b).exists(),
            "{} is missing: build the agent and the driver first \
             (cargo build --release -p agent -p bench -p jitter-lab, or cargo xtask test)",
            dir.join(b).display()
        );
    }
    dir
}

/// The namespaces and cgroups a benchmark process `pid` left behind.
pub fn leftovers(pid: u32) -> Vec<String> {
    let mut found: Vec<String> = std::fs::read_dir("/run/netns")
        .map(|d| {
            d.filter_map(|e| e.ok()?.file_name().into_string().ok())
                .filter(|n| n.starts_with(&format!("sb{pid}-")))
                .collect()
        })
        .unwrap_or_default();
    for root in [
        "/sys/fs/cgroup/cpu",
        "/sys/fs/cgroup/unified",
        "/sys/fs/cgroup",
    ] {
        let dir = Path::new(root).join("edge-offload-bench");
        if let Ok(d) = std::fs::read_dir(&dir) {
            found.extend(
                d.filter_map(|e| e.ok()?.file_name().into_string().ok())
                    .filter(|n| n.starts_with(&format!("{pid}-"))),
            );
        }
    }
    found
}
