//! Emulator accuracy check against real traffic: runs `netem-tun check
//! --json` (20 ms +- 5 ms normal, 1 % loss, one way) and holds it to the
//! tolerances: delay within 10 %, jitter within 20 %, loss near 1 %.
//! Needs root (namespaces, TUN devices), as CI runs it.

use serde_json::Value;
use std::process::Command;

fn require_root() {
    assert!(
        nix::unistd::geteuid().is_root(),
        "netem accuracy test needs root (network namespaces and TUN devices); CI runs as root. \
         Run it as root: sudo -E cargo test -p bench --test netem_accuracy"
    );
}

#[test]
fn netem_check_meets_tolerances() {
    require_root();
    let out = Command::new(env!("CARGO_BIN_EXE_netem-tun"))
        .args(["check", "--json"])
        .output()
        .expect("running netem-tun check");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    let last = stdout.lines().last().unwrap_or_default();
    let r: Value = serde_json::from_str(last)
        .unwrap_or_else(|e| panic!("last line is not JSON ({e}):\n{stdout}\n{stderr}"));
    eprintln!("{last}");
    let f = |k: &str| {
        r[k].as_f64()
            .unwrap_or_else(|| panic!("{k} missing: {last}"))
    };

    let (cd, md) = (f("configured_delay_ms"), f("measured_delay_ms"));
    assert_eq!(cd, 20.0);
    assert!(
        (md - cd).abs() <= 0.10 * cd,
        "delay {md} ms vs {cd} ms: {last}"
    );
    let (cj, mj) = (f("configured_jitter_ms"), f("measured_jitter_ms"));
    assert_eq!(cj, 5.0);
    assert!(
        (mj - cj).abs() <= 0.20 * cj,
        "jitter {mj} ms vs {cj} ms: {last}"
    );
    // Each method on its own, too, above the lab's own round trip (the
    // baseline, measured unimpaired): a TCP exchange also waits for both
    // ends' scheduling, which a busy 2-core host stretches by a few
    // hundred microseconds.
    let baseline = f("baseline_rtt_ms");
    for method in ["icmp", "tcp"] {
        let m = &r[method];
        let (mean, sd) = (m["mean_ms"].as_f64().unwrap(), m["sd_ms"].as_f64().unwrap());
        assert!(m["samples"].as_u64().unwrap() >= 100, "{method}: {last}");
        assert!(
            (mean - baseline - cd).abs() <= 0.10 * cd,
            "{method} delay {mean} (baseline {baseline}): {last}"
        );
        assert!((sd - cj).abs() <= 0.20 * cj, "{method} jitter {sd}: {last}");
    }
    let (cl, ml) = (f("configured_loss"), f("measured_loss"));
    assert_eq!(cl, 0.01);
    assert!(
        (0.004..=0.02).contains(&ml),
        "loss {ml} not near 1 %: {last}"
    );
    assert!(out.status.success(), "netem-tun check failed:\n{stderr}");
}
