//! The held-out test sets shipped beside the models (the digits set and
//! the workload sets of `models/train_workloads.py`), and how files that
//! ship with the repository (models, test sets) are found. No models are
//! run here: the demo, the benchmark driver and the tests read the same sets.

pub mod digits;
pub mod heldout;
pub mod quality;
pub mod workload;

use std::path::{Path, PathBuf};

/// Resolves a relative path against the config file's folder, the current
/// folder, and the folders above the executable (so `target/release/agent`
/// finds the repository's `models/`).
pub fn resolve(path: &Path, base: Option<&Path>) -> PathBuf {
    if path.is_absolute() {
        return path.to_path_buf();
    }
    let mut candidates: Vec<PathBuf> = Vec::new();
    if let Some(b) = base {
        candidates.push(b.join(path));
    }
    candidates.push(path.to_path_buf());
    if let Ok(exe) = std::env::current_exe() {
        candidates.extend(exe.ancestors().skip(1).map(|d| d.join(path)));
    }
    candidates
        .iter()
        .find(|c| c.exists())
        .cloned()
        .unwrap_or_else(|| path.to_path_buf())
}
