//! The overhead benchmark runs end to end (root, iperf3, ~15 s): one short
//! pair of rounds per workload. Throughput figures depend on the machine and its load,
//! so they are not judged here (bench/results/ebpf-overhead.md has a full
//! run); what must hold anywhere: both rounds moved data, the probe's
//! reader kept up without losing records, and nothing was left behind.

use serde_json::Value;
use std::process::{Command, Stdio};

#[test]
fn one_round_with_and_without_the_probe_leaves_nothing_behind() {
    assert!(
        nix::unistd::geteuid().is_root(),
        "the overhead benchmark loads eBPF programs and builds namespaces: run it as root (CI does)"
    );
    let child = Command::new(env!("CARGO_BIN_EXE_ebpf-overhead"))
        .args(["--rounds", "1", "--seconds", "1", "--json"])
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

    // Every workload ran once without and once with the probe, moved data,
    // and has a ratio; the programs' own run-time statistics were read.
    let rounds = r["rounds"].as_array().expect("rounds");
    for w in ["bulk", "small", "many"] {
        let of: Vec<&Value> = rounds.iter().filter(|x| x["workload"] == w).collect();
        assert_eq!(of.len(), 2, "{w}: {of:?}");
        assert!(of.iter().any(|x| x["arm"] == "off") && of.iter().any(|x| x["arm"] == "probe"));
        for x in &of {
            assert!(x["value"].as_f64().unwrap() > 0.0, "{x}");
        }
        assert!(r[format!("{w}_ratio")].as_f64().unwrap() > 0.0, "{last}");
    }
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
