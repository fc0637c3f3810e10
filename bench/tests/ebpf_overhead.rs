//! The overhead benchmark runs end to end (root, iperf3, ~25 s): one short
//! round per workload and arm (without the probe, with it, and with its
//! hooks only). Throughput figures depend on the machine and its load,
//! so they are not judged here (bench/results/ebpf-overhead.md has a full
//! run); what must hold anywhere: every round moved data, the probe's
//! reader kept up without losing records, the hooks-only programs ran but
//! sent nothing, and nothing was left behind.

use serde_json::Value;
use std::process::{Command, Stdio};

#[test]
fn one_round_with_and_without_the_probe_leaves_nothing_behind() {
    assert!(
        nix::unistd::geteuid().is_root(),
        "the overhead benchmark loads eBPF programs and builds namespaces: run it as root (CI does)"
    );
    let child = Command::new(env!("CARGO_BIN_EXE_ebpf-overhead"))
        .args(["--rounds", "1", "--seconds", "1", "--hooks-only", "--json"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("starting ebpf-overhead");
    let pid = child.id();
    let out = child.wait_with_output().expect("running ebpf-overhead");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "ebpf-overhead failed:\n{stderr}");
    let last = stdout.lines().last().unwrap_or_default();
    let r: Value = serde_json::from_str(last)
        .unwrap_or_else(|e| panic!("last line is not JSON ({e}):\n{stdout}\n{stderr}"));

    // Every workload ran once without the probe, once with it and once
    // with its hooks only, moved data, and has a ratio; the programs' own
    // run-time statistics were read.
    let rounds = r["rounds"].as_array().expect("rounds");
    for w in ["bulk", "small", "many"] {
        let of: Vec<&Value> = rounds.iter().filter(|x| x["workload"] == w).collect();
        assert_eq!(of.len(), 3, "{w}: {of:?}");
        for arm in ["off", "probe", "hooks-only"] {
            assert!(of.iter().any(|x| x["arm"] == arm), "{w}: no {arm} round");
        }
        for x in &of {
            assert!(x["value"].as_f64().unwrap() > 0.0, "{x}");
            if x["arm"] == "hooks-only" {
                assert_eq!(x["reader"]["records"], 0, "hooks only sent records: {x}");
            }
        }
        assert!(r[format!("{w}_ratio")].as_f64().unwrap() > 0.0, "{last}");
    }
    assert_eq!(r["third_arm"], "hooks-only", "{last}");
    let bulk_probe = rounds
        .iter()
        .find(|x| x["workload"] == "bulk" && x["arm"] == "probe")
        .unwrap();
    let reader = &bulk_probe["reader"];
    assert!(reader["sockops_rtt"].as_u64().unwrap() > 0, "{reader}");
    assert!(reader["tc_tcp_ts_rtt"].as_u64().unwrap() > 0, "{reader}");
    for p in ["sockops_rtt", "tc_egress", "tc_ingress"] {
        let ns = r["ns_per_packet"][p].as_f64().unwrap_or(0.0);
        assert!(ns > 0.0, "{p}: no run-time statistics: {last}");
        // The hooks-only programs ran (sock_ops still turned the RTT
        // callbacks on).
        let floor = r["baseline_ns_per_packet"][p].as_f64().unwrap_or(0.0);
        assert!(floor > 0.0, "{p}: the hooks-only program never ran: {last}");
    }
    assert_eq!(r["kernel_drops"], 0, "{last}");
    assert_eq!(r["channel_drops"], 0, "{last}");
    assert_eq!(r["detached"], Value::Bool(true), "{last}");

    // Its namespaces and cgroup went with it.
    for ns in ["a", "b"] {
        let p = format!("/run/netns/povh{pid}-{ns}");
        assert!(!std::path::Path::new(&p).exists(), "{p} left behind");
    }
    let cgroup = r["attachments"][0]
        .as_str()
        .and_then(|a| a.strip_prefix("sock_ops on cgroup "))
        .expect("the sock_ops attachment names its cgroup");
    assert!(
        !std::path::Path::new(cgroup).exists(),
        "{cgroup} left behind"
    );
}
