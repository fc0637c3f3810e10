//! `cargo xtask bench-ab --base REV [--variant REV|.] [-- ARGS]`: two
//! revisions of the agent on the scenario benchmark, in alternating rounds,
//! with the host's speed taken out of the comparison (`scenario-ab`).
//!
//! Each revision is checked out in one worktree (`target/bench-ab/tree`)
//! and built there with its own eBPF object, in a target folder of its own
//! (`target/bench-ab/target`) that the revisions share, so that only the
//! crates that differ build again; its agent, emulator and driver are
//! copied to `target/bench-ab/bin/SHA` (kept: a revision already there is
//! not built again). `.` is the working tree as it is, built in this
//! checkout's target folder. The report goes to `target/bench-ab/report.md`.

use crate::util::{self, project_root};
use anyhow::{ensure, Context, Result};
use std::path::{Path, PathBuf};
use std::process::Command;

/// What an arm's folder holds: what `scenario-bench` starts.
const BINS: [&str; 3] = ["agent", "netem-tun", "scenario-driver"];

fn git(dir: &Path, args: &[&str]) -> Result<String> {
    let out = Command::new("git")
        .current_dir(dir)
        .args(args)
        .output()
        .context("starting git")?;
    ensure!(
        out.status.success(),
        "git {args:?}: {}",
        String::from_utf8_lossy(&out.stderr).trim()
    );
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
}

fn copy_bins(from: &Path, to: &Path) -> Result<()> {
    std::fs::create_dir_all(to)?;
    for b in BINS {
        let (src, dst) = (from.join(b), to.join(b));
        let tmp = dst.with_extension("partial");
        std::fs::copy(&src, &tmp).with_context(|| format!("copying {}", src.display()))?;
        std::fs::rename(&tmp, &dst)?;
    }
    Ok(())
}

/// Builds revision `sha` in the worktree, once; returns its binaries' folder.
fn build_revision(sha: &str) -> Result<PathBuf> {
    let root = project_root();
    let bins = root.join("target/bench-ab/bin").join(&sha[..12]);
    if BINS.iter().all(|b| bins.join(b).is_file()) {
        eprintln!("bench-ab: {} already built", &sha[..12]);
        return Ok(bins);
    }
    let tree = root.join("target/bench-ab/tree");
    if tree.join(".git").exists() {
        git(&tree, &["checkout", "--quiet", "--force", "--detach", sha])?;
    } else {
        git(
            &root,
            &["worktree", "add", "--force", "--detach"]
                .into_iter()
                .chain([tree.to_str().context("worktree path")?, sha])
                .collect::<Vec<_>>(),
        )?;
    }
    eprintln!("bench-ab: building {} in {}", &sha[..12], tree.display());
    crate::ebpf::build_in(&tree)?;
    // Not this checkout's target folder: cargo names a crate's build by
    // its path in the workspace, the same in both trees, so the worktree's
    // sources took the place of this checkout's in the build records, and
    // an edit here then went unseen by the next build here.
    let target = root.join("target/bench-ab/target");
    util::run(
        util::cargo()
            .current_dir(&tree)
            .env("CARGO_TARGET_DIR", &target)
            // This checkout's libtorch, by the same path for every
            // revision: the crates that link it stay built across them.
            .env("LIBTORCH", root.join(".libtorch"))
            .args(["build", "--release", "--quiet"])
            .args(["-p", "agent", "-p", "bench", "-p", "jitter-lab"]),
    )?;
    copy_bins(&target.join("release"), &bins)?;
    Ok(bins)
}

/// Resolves an arm: a revision's built folder, or `None` for the working tree.
fn resolve(rev: &str) -> Result<Option<String>> {
    if rev == "." {
        return Ok(None);
    }
    let sha = git(
        &project_root(),
        &["rev-parse", "--verify", &format!("{rev}^{{commit}}")],
    )
    .with_context(|| format!("{rev:?} is not a revision of this repository"))?;
    Ok(Some(sha))
}

pub fn run(base: &str, variant: &str, extra: &[String]) -> Result<()> {
    let revs = [resolve(base)?, resolve(variant)?];
    let mut dirs: [Option<PathBuf>; 2] = [None, None];
    for (i, rev) in revs.iter().enumerate() {
        if let Some(sha) = rev {
            dirs[i] = Some(build_revision(sha)?);
        }
    }
    // This checkout last: scenario-ab itself, and the `.` arm.
    crate::lab_build::build()?;
    let release = project_root().join("target/release");
    let worktree_bins = project_root().join("target/bench-ab/bin/worktree");
    if revs.iter().any(Option::is_none) {
        copy_bins(&release, &worktree_bins)?;
    }
    let dirs = dirs.map(|d| d.unwrap_or_else(|| worktree_bins.clone()));
    let shown = util::shown(
        format!("cargo xtask bench-ab --base {base} --variant {variant}"),
        extra,
    );
    let mut args = vec![
        "--arm".to_string(),
        format!("base={}", dirs[0].display()),
        "--arm".to_string(),
        format!("variant={}", dirs[1].display()),
    ];
    args.extend(extra.iter().cloned());
    util::become_bench("scenario-ab", &shown, &args)
}
