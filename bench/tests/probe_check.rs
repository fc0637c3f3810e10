//! The eBPF probe check as CI runs it (root, ~35 s): `probe-check --json`
//! in the jitter lab, 20 ms +- 5 ms one way, real TCP and QUIC (quinn)
//! traffic, then held to the tolerances here, field by field, and
//! the process's exit checked for leftovers.

use serde_json::Value;
use std::path::Path;
use std::process::Command;

fn require_root_and_object() {
    assert!(
        nix::unistd::geteuid().is_root(),
        "the probe check loads eBPF programs and builds network namespaces: run it as root \
         (CI does): sudo -E cargo test --release -p bench-ebpf --test probe_check"
    );
    let object = Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/bpf/agent-ebpf.o");
    assert!(
        object.is_file(),
        "eBPF object missing at {}: run `cargo xtask build-ebpf` first",
        object.display()
    );
}

fn f(r: &Value, path: &[&str]) -> f64 {
    let mut v = r;
    for k in path {
        v = &v[*k];
    }
    v.as_f64()
        .unwrap_or_else(|| panic!("{} missing in the report", path.join(".")))
}

/// `passive` mean within 2 ms and standard deviation within 20 % of `truth`.
fn within(r: &Value, what: &str, passive: (&str, &str), truth: (&str, &str)) {
    let (pm, ps) = (f(r, &[passive.0]), f(r, &[passive.1]));
    let (tm, ts) = (f(r, &[truth.0]), f(r, &[truth.1]));
    assert!(
        (pm - tm).abs() <= 2.0,
        "{what}: mean {pm} ms vs true {tm} ms"
    );
    assert!(
        (ps - ts).abs() <= 0.2 * ts,
        "{what}: jitter {ps} ms vs true {ts} ms"
    );
}

#[test]
fn passive_rtt_jitter_retransmits_filter_and_detach_meet_the_tolerances() {
    require_root_and_object();
    let out = Command::new(env!("CARGO_BIN_EXE_probe-check"))
        .arg("--json")
        .output()
        .expect("running probe-check");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    let last = stdout.lines().last().unwrap_or_default();
    let r: Value = serde_json::from_str(last)
        .unwrap_or_else(|e| panic!("last line is not JSON ({e}):\n{stdout}\n{stderr}"));
    eprintln!("{last}");

    // The traffic saw the configured link: the truth is the truth. The
    // emulator's spread is read from the exchanges' interquartile range:
    // one exchange stalled by the host (98 ms among 490 around 20 ms) took
    // their standard deviation from 5.0 to 6.1 ms, past the tolerance,
    // while the passive sources below saw the same stall and still match.
    assert_eq!(f(&r, &["configured_jitter_ms"]), 5.0);
    let (true_mean, configured_mean) = (f(&r, &["true_rtt_ms"]), f(&r, &["configured_rtt_ms"]));
    assert!(
        (true_mean - configured_mean).abs() <= 2.0,
        "TCP exchanges against the configuration: mean {true_mean} ms vs {configured_mean} ms"
    );
    let spread = f(&r, &["tcp_app", "robust_sd_ms"]);
    assert!(
        (spread - 5.0).abs() <= 0.2 * 5.0,
        "TCP exchanges against the configuration: jitter (IQR / 1.349) {spread} ms vs 5 ms"
    );
    // Each passive source against its traffic's own timing.
    within(
        &r,
        "sock_ops",
        ("tcp_rtt_ms", "tcp_jitter_ms"),
        ("true_rtt_ms", "true_jitter_ms"),
    );
    within(
        &r,
        "tc TCP timestamps",
        ("tc_ts_rtt_ms", "tc_ts_jitter_ms"),
        ("true_rtt_ms", "true_jitter_ms"),
    );
    within(
        &r,
        "QUIC spin bit",
        ("quic_rtt_ms", "quic_jitter_ms"),
        ("quic_true_rtt_ms", "quic_true_jitter_ms"),
    );
    for source in ["sockops", "tc_tcp_ts", "quic_spin", "tcp_app", "quic_app"] {
        let n = f(&r, &["samples", source]);
        assert!(n >= 100.0, "{source}: {n} samples");
    }

    // Retransmissions under 2 % loss: seen, and consistent with the
    // socket's own count (one tracepoint hit per skb of one or more segments).
    let rt = &r["retransmits"];
    assert_eq!(f(rt, &["configured_loss"]), 0.02);
    let (probe, kernel) = (
        f(rt, &["probe_retransmits"]),
        f(rt, &["kernel_total_retrans"]),
    );
    assert!(
        probe > 0.0 && probe <= kernel,
        "probe {probe}, socket {kernel}"
    );
    assert!(probe >= 0.5 * kernel, "probe {probe}, socket {kernel}");
    // The estimator's recent rate at the upload's end, which once covered
    // only the last round trip and read 2.6-4.1 %.
    let loss = f(rt, &["estimator", "loss_rate"]);
    assert!(
        (0.015..=0.025).contains(&loss),
        "the estimator's loss rate {loss} for 2 % loss"
    );

    // Nothing from flows outside the filter, nothing lost.
    assert_eq!(f(&r, &["unwatched", "records"]), 0.0);
    assert!(f(&r, &["unwatched", "tcp_exchanges"]) > 0.0);
    assert!(f(&r, &["unwatched", "quic_datagrams"]) > 0.0);
    assert_eq!(f(&r, &["kernel_drops"]), 0.0);
    assert_eq!(f(&r, &["channel_drops"]), 0.0);

    assert_eq!(r["within_tolerance"], Value::Bool(true), "{stderr}");
    assert!(out.status.success(), "probe-check failed:\n{stderr}");

    // Detached while running, and nothing of it left once it exited.
    let ids: Vec<u32> = r["detached"]["program_ids"]
        .as_array()
        .expect("program ids")
        .iter()
        .map(|v| v.as_u64().unwrap() as u32)
        .collect();
    assert_eq!(ids.len(), 5, "sock_ops, two tc, two tracepoints: {ids:?}");
    assert_eq!(r["detached"]["still_loaded"], serde_json::json!([]));
    assert_eq!(r["detached"]["tcx_left"], serde_json::json!([]));
    let loaded: Vec<u32> = aya::programs::loaded_programs()
        .filter_map(Result::ok)
        .map(|p| p.id())
        .filter(|id| ids.contains(id))
        .collect();
    assert!(loaded.is_empty(), "programs still loaded: {loaded:?}");
    let lab = r["lab"].as_str().unwrap();
    for ns in ["edge", "cloud"] {
        let p = Path::new("/run/netns").join(format!("{lab}-{ns}"));
        assert!(!p.exists(), "{} left behind", p.display());
    }
    let cgroup = r["cgroup"].as_str().unwrap();
    assert!(!Path::new(cgroup).exists(), "cgroup {cgroup} left behind");
}
