//! `cargo xtask build-ebpf`: builds `agent-ebpf` for `bpfel-unknown-none` and
//! copies the object to `target/bpf/agent-ebpf.o`, where the agent looks.
//!
//! Two routes, picked by what the machine has:
//! - Debian: `/usr/bin/rustc` (rustc-web) ships a precompiled `core` for the
//!   BPF targets; it is driven by full path with `RUSTC_BOOTSTRAP=1` (aya-ebpf
//!   uses an unstable feature), leaving the rustup default toolchain alone.
//! - rustup nightly with rust-src: `-Z build-std=core`.
//!
//! Either way bpf-linker links. The build has its own target directory, so it
//! never waits on the workspace's, and cargo's own freshness check makes a
//! second run a no-op.

use crate::setup;
use crate::util::project_root;
use anyhow::{bail, Context, Result};
use std::path::{Path, PathBuf};
use std::process::Command;

const TARGET: &str = "bpfel-unknown-none";

enum Route {
    /// Debian's rustc-web with its precompiled BPF core.
    Debian,
    /// rustup's nightly toolchain with rust-src (build-std).
    Nightly,
}

/// Environment a parent cargo or the developer's shell may set that must not
/// leak into a cross build for the BPF target.
const SCRUB_ENV: &[&str] = &[
    "RUSTC",
    "RUSTC_WRAPPER",
    "RUSTC_WORKSPACE_WRAPPER",
    "RUSTFLAGS",
    "CARGO_ENCODED_RUSTFLAGS",
    "CARGO_BUILD_RUSTFLAGS",
    "CARGO_BUILD_TARGET",
    "CARGO_TARGET_DIR",
    "CARGO_BUILD_TARGET_DIR",
    "RUSTUP_TOOLCHAIN",
    "LIBTORCH",
];

/// Where a checkout's object goes (and its agent-probe looks).
const OBJECT: &str = "target/bpf/agent-ebpf.o";

/// Builds the object (if out of date) and returns where it was installed.
pub fn build() -> Result<PathBuf> {
    build_in(&project_root())
}

/// The same for the checkout at `root` (another revision's worktree):
/// its `agent-ebpf`, installed at its `target/bpf/agent-ebpf.o`.
pub fn build_in(root: &Path) -> Result<PathBuf> {
    let route = pick_route()?;
    let crate_dir = root.join("agent-ebpf");
    let target_dir = root.join("target/bpf/build");
    let linker_dir = setup::bpf_linker_path()
        .parent()
        .map(Path::to_path_buf)
        .context("bpf-linker path has no parent")?;
    let path = std::env::join_paths(
        std::iter::once(linker_dir.clone()).chain(
            std::env::split_paths(&std::env::var_os("PATH").unwrap_or_default())
                .filter(|p| *p != linker_dir),
        ),
    )
    .context("PATH")?;
    // `--cfg bpf_target_arch` picks aya-ebpf's bindings for the host's
    // kernel ABI; `--btf` makes bpf-linker emit BTF (needed for the maps).
    let rustflags = [
        format!("--cfg=bpf_target_arch=\"{}\"", std::env::consts::ARCH),
        "-Cdebuginfo=2".to_string(),
        "-Clink-arg=--btf".to_string(),
    ]
    .join("\x1f");

    let mut cmd = match route {
        Route::Debian => Command::new("/usr/bin/cargo"),
        Route::Nightly => {
            let mut c = Command::new("rustup");
            c.args(["run", "nightly", "cargo"]);
            c
        }
    };
    for var in SCRUB_ENV {
        cmd.env_remove(var);
    }
    cmd.args(["build", "--release", "--locked", "--target", TARGET]);
    match route {
        Route::Debian => {
            cmd.env("RUSTC", "/usr/bin/rustc")
                .env("RUSTC_BOOTSTRAP", "1");
        }
        Route::Nightly => {
            cmd.args(["-Z", "build-std=core"]);
        }
    }
    cmd.current_dir(&crate_dir)
        .env("PATH", path)
        .env("CARGO_TARGET_DIR", &target_dir)
        .env("CARGO_ENCODED_RUSTFLAGS", rustflags);
    let status = cmd
        .status()
        .with_context(|| format!("starting {:?}", cmd.get_program()))?;
    if !status.success() {
        bail!("building agent-ebpf failed ({status}): {cmd:?}");
    }

    let built = target_dir.join(TARGET).join("release/agent-ebpf");
    let dest = root.join(OBJECT);
    install(&built, &dest)?;
    Ok(dest)
}

/// Copies `built` to `dest` unless it already holds the same bytes, so an
/// up-to-date object keeps its modification time.
fn install(built: &Path, dest: &Path) -> Result<()> {
    let new = std::fs::read(built).with_context(|| format!("reading {}", built.display()))?;
    if std::fs::read(dest).ok().as_deref() == Some(new.as_slice()) {
        return Ok(());
    }
    let dir = dest.parent().context("object path has no parent")?;
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let tmp = dest.with_extension("o.partial");
    std::fs::write(&tmp, &new).with_context(|| format!("writing {}", tmp.display()))?;
    std::fs::rename(&tmp, dest).with_context(|| format!("installing {}", dest.display()))?;
    Ok(())
}

fn pick_route() -> Result<Route> {
    if debian_bpf_core() {
        return Ok(Route::Debian);
    }
    if nightly_with_rust_src() {
        return Ok(Route::Nightly);
    }
    bail!(
        "no Rust compiler that can target {TARGET}: install Debian's rustc-web, cargo-web and \
         libstd-rust-web-dev-bpf (`cargo xtask setup` does), or `rustup toolchain install nightly \
         --component rust-src`"
    )
}

fn sysroot(cmd: &mut Command) -> Option<PathBuf> {
    for var in SCRUB_ENV {
        cmd.env_remove(var);
    }
    let out = cmd.arg("--print").arg("sysroot").output().ok()?;
    out.status
        .success()
        .then(|| PathBuf::from(String::from_utf8_lossy(&out.stdout).trim()))
}

/// `/usr/bin/rustc` with a precompiled `core` for the BPF target, and `/usr/bin/cargo`.
fn debian_bpf_core() -> bool {
    if !Path::new("/usr/bin/cargo").exists() {
        return false;
    }
    let Some(root) = sysroot(&mut Command::new("/usr/bin/rustc")) else {
        return false;
    };
    let lib = root.join("lib/rustlib").join(TARGET).join("lib");
    std::fs::read_dir(lib)
        .map(|entries| {
            entries.flatten().any(|e| {
                let name = e.file_name();
                let name = name.to_string_lossy();
                name.starts_with("libcore-") && name.ends_with(".rlib")
            })
        })
        .unwrap_or(false)
}

fn nightly_with_rust_src() -> bool {
    let mut cmd = Command::new("rustup");
    cmd.args(["run", "nightly", "rustc"]);
    sysroot(&mut cmd)
        .map(|root| root.join("lib/rustlib/src/rust/library/core").is_dir())
        .unwrap_or(false)
}
