//! Process helpers shared by the xtask commands.

use anyhow::{bail, Context, Result};
use std::path::PathBuf;
use std::process::Command;

pub fn project_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("xtask lives one level below the workspace root")
        .to_path_buf()
}

pub fn cmd(program: &str) -> Command {
    let mut c = Command::new(program);
    c.current_dir(project_root());
    c
}

/// Runs a command to completion, failing with its command line on a non-zero exit.
pub fn run(c: &mut Command) -> Result<()> {
    let status = c
        .status()
        .with_context(|| format!("starting {:?}", c.get_program()))?;
    if !status.success() {
        bail!("{c:?} failed: {status}");
    }
    Ok(())
}

pub fn cargo() -> Command {
    cmd(&std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
}

/// `cargo build --release --quiet` with `args` (the packages and targets).
pub fn release_build(args: &[&str]) -> Result<()> {
    run(cargo().args(["build", "--release", "--quiet"]).args(args))
}

/// The command a results file says it was made by: `base`, then the extra
/// arguments after ` -- ` where there are any.
pub fn shown(mut base: String, extra: &[String]) -> String {
    if !extra.is_empty() {
        base.push_str(" -- ");
        base.push_str(&extra.join(" "));
    }
    base
}

/// Becomes `target/release/<program> --command <shown> <extra>`, so that
/// Ctrl-C reaches it and it removes its namespaces and cgroups before the
/// shell returns. Returns only if it could not start.
pub fn become_bench(program: &str, shown: &str, extra: &[String]) -> Result<()> {
    use std::os::unix::process::CommandExt;
    let path = project_root().join("target/release").join(program);
    let err = Command::new(&path)
        .current_dir(project_root())
        .args(["--command", shown])
        .args(extra)
        .exec();
    Err(err).with_context(|| format!("starting {}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_shown_command_carries_the_extra_arguments() {
        assert_eq!(
            shown("cargo xtask faults".into(), &[]),
            "cargo xtask faults"
        );
        let extra = ["--soak".to_string(), "600".to_string()];
        assert_eq!(
            shown("cargo xtask faults".into(), &extra),
            "cargo xtask faults -- --soak 600"
        );
    }
}
