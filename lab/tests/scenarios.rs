//! The scenario files parse, say what the issue asks of them, and the
//! generated tc netem scripts in bench/netem/ agree with them.

use jitter_lab::params::Dir;
use jitter_lab::scenario::Scenario;
use std::path::{Path, PathBuf};
use std::process::Command;

/// The benchmark's folder, which holds the scenario files and scripts.
fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../bench")
}

fn scenarios() -> Vec<(PathBuf, Scenario)> {
    Scenario::load_dir(&root().join("scenarios")).expect("every scenario file parses")
}

fn get(name: &str) -> Scenario {
    scenarios()
        .into_iter()
        .map(|(_, s)| s)
        .find(|s| s.name == name)
        .unwrap_or_else(|| panic!("scenario {name} missing"))
}

/// RTT mean and standard deviation when both directions are as given.
fn rtt(s: &Scenario, t: f64) -> (f64, f64) {
    let (u, d) = (s.params_at(Dir::Uplink, t), s.params_at(Dir::Downlink, t));
    (
        u.delay_ms + d.delay_ms,
        (u.jitter_ms.powi(2) + d.jitter_ms.powi(2)).sqrt(),
    )
}

#[test]
fn all_scenario_files_parse_and_are_named_after_their_file() {
    let all = scenarios();
    assert!(all.len() >= 7);
    for (path, s) in &all {
        assert_eq!(path.file_stem().unwrap().to_str().unwrap(), s.name);
        assert!(s.profile.edge_cpu_share > 0.0 && s.profile.local_workers >= 1);
        assert!(!s.workload.mix.is_empty());
    }
}

#[test]
fn scenarios_have_the_required_conditions() {
    let close = |a: f64, b: f64, tol: f64| (a - b).abs() <= tol;
    let (m, sd) = rtt(&get("lan"), 0.0);
    assert!(close(m, 1.0, 1e-9) && close(sd, 0.2, 0.01), "lan {m} {sd}");
    let (m, sd) = rtt(&get("wan"), 0.0);
    assert!(close(m, 40.0, 1e-9) && close(sd, 2.0, 0.01), "wan {m} {sd}");
    let (m, sd) = rtt(&get("jittery"), 0.0);
    assert!(
        close(m, 40.0, 1e-9) && close(sd, 25.0, 0.1),
        "jittery {m} {sd}"
    );

    let bursty = get("bursty");
    let calm = rtt(&bursty, 0.0).1;
    let storms = bursty
        .schedule
        .iter()
        .filter(|e| rtt(&bursty, e.at_s).1 > 10.0 * calm)
        .count();
    assert!(storms >= 2, "bursty needs repeated storms, has {storms}");
    assert!(rtt(&bursty, bursty.duration_s).1 < 2.0 * calm, "ends calm");

    let bc = get("bandwidth-collapse");
    assert_eq!(bc.params_at(Dir::Uplink, 0.0).rate_mbit, 100.0);
    assert_eq!(bc.params_at(Dir::Uplink, bc.duration_s).rate_mbit, 2.0);

    let lossy = get("lossy").params_at(Dir::Uplink, 0.0);
    assert!(lossy.gilbert_elliott());
    assert!(close(lossy.expected_loss(), 0.05, 0.005));

    let outage = get("outage");
    let down: Vec<f64> = (0..=outage.duration_s as u32 * 10)
        .map(|i| i as f64 / 10.0)
        .filter(|&t| !outage.params_at(Dir::Uplink, t).up)
        .collect();
    let span = down.last().unwrap() - down.first().unwrap() + 0.1;
    assert!(close(span, 5.0, 0.11), "outage lasts {span} s");
    assert!(*down.first().unwrap() > 10.0, "outage is mid-run");
}

#[test]
fn gateway_scripts_match_the_scenarios() {
    for (path, s) in scenarios() {
        let rel = format!(
            "bench/scenarios/{}",
            path.file_name().unwrap().to_str().unwrap()
        );
        let want = jitter_lab::tc::gateway_script(&s, &rel);
        let script = root().join("netem").join(format!("{}.sh", s.name));
        let have = std::fs::read_to_string(&script).unwrap_or_default();
        assert!(
            have == want,
            "{} is out of date; regenerate from the repository root with:\n  for f in bench/scenarios/*.toml; do \
             cargo run -q -p jitter-lab --bin netem-tun -- tc-script --scenario $f > bench/netem/$(basename $f .toml).sh; done",
            script.display()
        );
    }
}

fn sh(script: &Path, args: &[&str], env: &[(&str, &str)]) -> (bool, String) {
    let out = Command::new("sh")
        .arg(script)
        .args(args)
        .envs(env.iter().copied())
        .output()
        .expect("running sh");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr),
    )
}

#[test]
fn gateway_scripts_are_valid_sh_and_dry_run() {
    for (_, s) in scenarios() {
        let script = root().join("netem").join(format!("{}.sh", s.name));
        let syntax = Command::new("sh").arg("-n").arg(&script).status().unwrap();
        assert!(syntax.success(), "{} has a syntax error", script.display());
        let (ok, out) = sh(&script, &["run", "eth9"], &[("DRY_RUN", "1")]);
        assert!(ok, "{out}");
        assert!(
            out.contains("tc qdisc replace dev eth9 root netem"),
            "{out}"
        );
        assert!(
            out.contains("tc qdisc replace dev ifb-jlab root netem"),
            "{out}"
        );
        assert!(
            out.contains("ip link del ifb-jlab"),
            "teardown at the end: {out}"
        );
        assert_eq!(
            out.matches("dev eth9 root netem").count(),
            s.schedule.len() + 1,
            "one uplink change per step: {out}"
        );
    }
    let outage = root().join("netem/outage.sh");
    let (ok, out) = sh(
        &outage,
        &["apply", "eth9"],
        &[("DRY_RUN", "1"), ("AT_S", "62")],
    );
    assert!(ok && out.contains("loss 100%"), "{out}");
}
