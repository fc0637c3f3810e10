//! Checks that a probe left nothing behind in the kernel once dropped.

use aya::programs::{SchedClassifier, TcAttachType};
use serde::Serialize;
use std::time::{Duration, Instant};

/// Which of `ids` the kernel still has loaded.
pub fn still_loaded(ids: &[u32]) -> Vec<u32> {
    aya::programs::loaded_programs()
        .filter_map(Result::ok)
        .map(|p| p.id())
        .filter(|id| ids.contains(id))
        .collect()
}

/// tcx programs on `iface` in namespace `ns`, both directions.
pub fn tcx_programs(ns: &str, iface: &str) -> anyhow::Result<Vec<u32>> {
    let iface = iface.to_string();
    jitter_lab::sys::netns::run_in(ns, move || {
        Ok([TcAttachType::Ingress, TcAttachType::Egress]
            .into_iter()
            .flat_map(|t| {
                SchedClassifier::query_tcx(&iface, t)
                    .map(|(_, p)| p)
                    .unwrap_or_default()
            })
            .map(|p| p.id())
            .collect())
    })
}

#[derive(Debug, Clone, Serialize)]
pub struct Detached {
    /// Program ids the probe had loaded.
    pub program_ids: Vec<u32>,
    /// Of those, still loaded after it was dropped (should be none).
    pub still_loaded: Vec<u32>,
    /// tcx programs still on the measured interface (should be none).
    pub tcx_left: Vec<u32>,
}

impl Detached {
    pub fn clean(&self) -> bool {
        !self.program_ids.is_empty() && self.still_loaded.is_empty() && self.tcx_left.is_empty()
    }
}

/// After the probe is dropped: waits up to 5 s for its programs to be
/// released (the kernel frees them asynchronously) and lists what is left.
pub fn verify(program_ids: Vec<u32>, ns: &str, iface: &str) -> Detached {
    let deadline = Instant::now() + Duration::from_secs(5);
    let mut left = still_loaded(&program_ids);
    while !left.is_empty() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
        left = still_loaded(&program_ids);
    }
    let tcx_left = tcx_programs(ns, iface).unwrap_or_else(|e| {
        eprintln!("querying tcx programs on {iface} in {ns}: {e:#}");
        Vec::new()
    });
    Detached {
        program_ids,
        still_loaded: left,
        tcx_left,
    }
}
