//! The scenario benchmark end to end, kept short for CI: one scenario (wan,
//! 5 s) x two policies with the real emulator, agents, cgroup and driver.
//! Every sent task must be accounted for, the oracle and plots must be
//! there, and nothing (namespaces, cgroups, processes) may be left behind.
//! Needs root and the release (or debug) agent and scenario-driver beside
//! scenario-bench, as `cargo xtask test` builds them.

use std::path::Path;
use std::process::Command;

mod common;

use common::{bin_dir, leftovers};

const BIN: &str = env!("CARGO_BIN_EXE_scenario-bench");

#[test]
fn one_scenario_two_policies_accounts_for_every_task() {
    assert!(
        nix::unistd::geteuid().is_root(),
        "the scenario benchmark test needs root (namespaces, TUN, cgroups); CI runs as root"
    );
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap();
    let tmp = std::env::temp_dir().join(format!("scenario-bench-test-{}", std::process::id()));
    let out = tmp.join("results");
    let child = Command::new(BIN)
        .current_dir(root)
        .args(["--only", "wan", "--policies", "always-local,always-offload"])
        .args(["--duration", "5", "--no-calibrate"])
        .arg("--out")
        .arg(&out)
        .arg("--work")
        .arg(tmp.join("work"))
        .arg("--bin-dir")
        .arg(bin_dir(BIN))
        .spawn()
        .unwrap();
    let pid = child.id();
    let res = child.wait_with_output().unwrap();
    assert!(
        res.status.success(),
        "scenario-bench failed: {:?}",
        res.status
    );
    assert!(
        leftovers(pid).is_empty(),
        "left behind: {:?}",
        leftovers(pid)
    );

    let json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("scenarios.json")).unwrap())
            .unwrap();
    let sc = &json["scenarios"][0];
    assert_eq!(sc["name"], "wan");
    let rows = sc["rows"].as_array().unwrap();
    assert_eq!(rows.len(), 2);
    let seed_dir = tmp
        .join("work/wan")
        .join(format!("seed-{}", sc["seed"].as_u64().unwrap()));
    let records = |policy: &str| -> Vec<serde_json::Value> {
        let text = std::fs::read_to_string(seed_dir.join(format!("{policy}.jsonl"))).unwrap();
        text.lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    };
    let mut sent = Vec::new();
    for row in rows {
        let s = &row["summary"];
        let (tasks, completed, failed) = (
            s["tasks"].as_u64().unwrap(),
            s["completed"].as_u64().unwrap(),
            s["failed"].as_u64().unwrap(),
        );
        // 20 tasks/s for 5 s (Poisson): far from 0, and all accounted for.
        assert!(tasks > 50, "{row}");
        assert_eq!(completed + failed, tasks, "{row}");
        assert!(s["p50_ms"].as_f64().unwrap() > 0.0);
        // Only a deadline may fail a task on a calm WAN: none is refused or
        // lost. The 50 ms tasks are under a round trip plus the cloud's
        // inference, so offloading misses many of them by design; the rest
        // (100 ms or no deadline) mostly complete under either policy.
        let recs = records(row["policy"].as_str().unwrap());
        assert_eq!(recs.len() as u64, tasks, "{row}");
        for r in &recs {
            assert!(
                r["outcome"] == "ok" || (r["outcome"] == "failed" && r["deadline_ms"].is_u64()),
                "a task failed on a calm WAN for other than its deadline: {r}"
            );
        }
        let roomy: Vec<_> = recs
            .iter()
            .filter(|r| r["deadline_ms"].as_u64().is_none_or(|d| d >= 100))
            .collect();
        let roomy_done = roomy.iter().filter(|r| r["outcome"] == "ok").count();
        // Three in four: the edge runs at a quarter of a core, and on a
        // shared host whose speed swings twofold an always-local run was
        // throttled in 4087 of 4237 periods and completed 74 of 88 (84 %).
        assert!(
            roomy_done * 4 >= roomy.len() * 3,
            "only {roomy_done} of {} tasks with 100 ms or more complete on a calm WAN: {row}",
            roomy.len()
        );
        sent.push(tasks);
    }
    // The same seeded stream for both policies.
    assert_eq!(sent[0], sent[1]);
    let by = |p: &str| rows.iter().find(|r| r["policy"] == p).unwrap()["summary"].clone();
    assert_eq!(by("always-local")["offloaded"], 0);
    let off = by("always-offload");
    // Every task is sent to the cloud; a few may run locally after all
    // (an offload that failed, or was so late that only a local run could
    // still meet the deadline).
    let (offloaded, completed) = (
        off["offloaded"].as_u64().unwrap(),
        off["completed"].as_u64().unwrap(),
    );
    assert!(offloaded * 10 >= completed * 9, "{off}");
    // Offloading pays the 40 ms round trip; running locally does not. The
    // medians depend on how fast this machine runs the edge's CPU quota (the
    // local queue is busy in this scenario), so compare task by task: every
    // task answered by the cloud took at least the round trip, and cheap
    // tasks that found the local worker idle finished well within it.
    assert!(off["p50_ms"].as_f64().unwrap() > 35.0, "{off}");
    let latencies = |policy: &str, path: &str| -> Vec<f64> {
        records(policy)
            .into_iter()
            .filter(|r| r["outcome"] == "ok" && r["path"] == path)
            .map(|r| r["latency_ms"].as_f64().unwrap())
            .collect()
    };
    let cloud = latencies("always-offload", "cloud");
    assert!(cloud.len() as u64 >= offloaded * 9 / 10, "{off}");
    let fastest_cloud = cloud.iter().cloned().fold(f64::INFINITY, f64::min);
    assert!(
        fastest_cloud > 35.0,
        "a cloud answer under the RTT: {fastest_cloud} ms"
    );
    let local = latencies("always-local", "local");
    let quick_local = local.iter().filter(|&&ms| ms < 30.0).count();
    assert!(
        quick_local >= 5,
        "only {quick_local} of {} local tasks under 30 ms: {local:?}",
        local.len()
    );
    let oracle = &sc["oracle"];
    assert_eq!(oracle["tasks"].as_u64().unwrap(), sent[0]);
    // Per task, the oracle keeps the better outcome of the two runs
    // (deadline met first): it misses no more deadlines than either.
    let missed = |s: &serde_json::Value| s["deadline_missed"].as_u64().unwrap();
    assert!(missed(oracle) <= missed(&by("always-local")), "{oracle}");
    assert!(missed(oracle) <= missed(&off), "{oracle}");

    // The profile's share bounded the inference workers alone: they ran in
    // the child cgroup (its quota was in force in the periods they ran),
    // the rest of the agent outside it.
    assert_eq!(json["edge_quota"], "inference");
    assert_eq!(json["edge_agent_cpu"], 1.0);
    let local_row = rows.iter().find(|r| r["policy"] == "always-local").unwrap();
    let periods = local_row["throttling"]["periods"].as_u64().unwrap();
    assert!(periods > 100, "the inference cgroup ran {periods} periods");

    let md = std::fs::read_to_string(out.join("scenarios.md")).unwrap();
    assert!(md.contains("The edge's inference workers run in a cgroup of their own"));
    assert!(md.contains("| wan | always-local |") && md.contains("| wan | *oracle* |"));
    for png in ["cdf-wan.png", "timeline-wan.png"] {
        let bytes = std::fs::read(out.join(png)).unwrap();
        assert!(
            bytes.starts_with(b"\x89PNG") && bytes.len() > 10_000,
            "{png}"
        );
    }
    std::fs::remove_dir_all(&tmp).unwrap();
}
