//! The overhead benchmark runs end to end (root, iperf3, ~15 s): one short
//! pair of rounds. Throughput figures depend on the machine and its load,
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
        .args(["--rounds", "1", "--seconds", "2", "--stress-seconds", "2"])
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
    assert!(stdout.contains("| round | probe | Gbit/s"), "{stdout}");

    let rounds = r["rounds"].as_array().expect("rounds");
    assert_eq!(rounds.len(), 2);
    assert_eq!(
        rounds
            .iter()
            .filter(|x| x["probe"] == Value::Bool(true))
            .count(),
        1
    );
    for x in rounds {
        assert!(x["gbit_s"].as_f64().unwrap() > 0.0, "{x}");
    }
    let with = rounds
        .iter()
        .find(|x| x["probe"] == Value::Bool(true))
        .unwrap();
    let reader = &with["reader"];
    assert!(reader["sockops_rtt"].as_u64().unwrap() > 0, "{reader}");
    assert!(reader["tc_tcp_ts_rtt"].as_u64().unwrap() > 0, "{reader}");
    assert!(r["ratio"].as_f64().unwrap() > 0.0);
    let stress = &r["stress"]["reader"];
    assert!(stress["records"].as_u64().unwrap() > 0, "{stress}");
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
