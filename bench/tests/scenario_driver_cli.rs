//! The command-line contract `scenario-bench` relies on (and, being an
//! integration test, it makes `cargo test` build `scenario-driver` for the
//! benchmark's own end-to-end test).

use std::process::Command;

const BIN: &str = env!("CARGO_BIN_EXE_scenario-driver");

fn stdout(args: &[&str]) -> String {
    let out = Command::new(BIN).args(args).output().unwrap();
    assert!(
        out.status.success(),
        "{args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

#[test]
fn policies_are_the_agents() {
    let names: Vec<String> = serde_json::from_str(&stdout(&["policies"])).unwrap();
    let expected: Vec<String> = agent_core::Policy::NAMES
        .iter()
        .map(|s| s.to_string())
        .collect();
    assert_eq!(names, expected);
}

#[test]
fn calibrate_reports_each_size() {
    let v: serde_json::Value = serde_json::from_str(&stdout(&[
        "calibrate",
        "--iters",
        "100000,800000",
        "--reps",
        "3",
        "--gap-ms",
        "1",
    ]))
    .unwrap();
    let sizes = v.as_array().unwrap();
    assert_eq!(sizes.len(), 2);
    let cpu: Vec<f64> = sizes
        .iter()
        .map(|s| s["cpu_ms"].as_f64().unwrap())
        .collect();
    assert!(cpu[0] > 0.0 && cpu[1] > cpu[0] * 4.0, "{v}");
    assert!(sizes.iter().all(|s| s["wall_ms"].as_f64().unwrap() > 0.0));
}

#[test]
fn run_refuses_an_unknown_policy_before_sending() {
    let scenario = concat!(env!("CARGO_MANIFEST_DIR"), "/scenarios/wan.toml");
    let out = Command::new(BIN)
        .current_dir(concat!(env!("CARGO_MANIFEST_DIR"), "/.."))
        .args(["run", "--edge", "127.0.0.1:1", "--scenario", scenario])
        .args([
            "--duration",
            "1",
            "--policy",
            "fastest",
            "--out",
            "/dev/null",
        ])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("unknown policy \"fastest\""), "{err}");
}
