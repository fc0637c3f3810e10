//! The edge agent as an operator runs it (the `agent` binary, a
//! configuration file): JSON logs with one structured event per task, the
//! decision audit log with one line per task, and a configuration reload
//! on SIGHUP that changes the policy live and refuses a broken file.

use agent_core::{Policy, Priority};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use serde_json::Value;
use std::collections::HashSet;
use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, Instant};
use tests::*;
use tokio::io::{AsyncBufReadExt, BufReader};

fn json_lines(path: &Path) -> Vec<Value> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .collect()
}

async fn wait_for_log(path: &Path, message: &str) {
    let t0 = Instant::now();
    while !json_lines(path)
        .iter()
        .any(|v| v["message"].as_str().is_some_and(|m| m.contains(message)))
    {
        assert!(
            t0.elapsed() < Duration::from_secs(20),
            "no log line {message:?}:\n{}",
            std::fs::read_to_string(path).unwrap_or_default()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_logs_audit_log_and_a_live_policy_change_on_sighup() {
    let dir = tempfile::Builder::new()
        .prefix("operations-test-")
        .tempdir()
        .unwrap();
    let cloud = start_cloud(defaults().cloud).await;

    let mut cfg = defaults();
    cfg.edge.listen = "127.0.0.1:0".into();
    cfg.edge.cloud_grpc = cloud.grpc_addr.to_string();
    cfg.edge.cloud_quic = String::new();
    cfg.edge.policy = Policy::AlwaysLocal;
    cfg.edge.hedge_budget = 0.0;
    cfg.edge.probe.passive = false;
    cfg.edge.audit_log = Some(dir.path().join("audit.jsonl"));
    let config = dir.path().join("agent.toml");
    std::fs::write(&config, toml::to_string(&cfg).unwrap()).unwrap();
    let log = dir.path().join("edge.log");

    let mut edge = tokio::process::Command::new(agent_binary())
        .arg("--config")
        .arg(&config)
        .arg("--tls-dir")
        .arg(certs())
        .args(["--log", "info,agent=debug", "--log-format", "json", "edge"])
        .stdout(Stdio::piped())
        .stderr(std::fs::File::create(&log).unwrap())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let pid = Pid::from_raw(edge.id().unwrap() as i32);
    let mut stdout = BufReader::new(edge.stdout.take().unwrap()).lines();
    let line = tokio::time::timeout(Duration::from_secs(60), stdout.next_line())
        .await
        .expect("the edge starts")
        .unwrap()
        .expect("a listening line");
    let api = line
        .split_whitespace()
        .find_map(|w| w.strip_prefix("api="))
        .unwrap_or_else(|| panic!("{line}"))
        .to_string();
    let mut c = agent_net::task_api::connect(&api).await.unwrap();
    let set = test_set();
    let mut send = async |id: String| {
        let (r, _) = send_image(&mut c, id, set[0].pixels.clone(), Priority::Medium, None).await;
        let r = r.expect("task answered");
        assert!(r.success, "{}", r.error_message);
        r.processed_by
    };

    let mut ids = Vec::new();
    for i in 0..5 {
        let id = format!("before-{i}");
        assert_eq!(send(id.clone()).await, "local");
        ids.push(id);
    }

    // The policy changes in the file; SIGHUP applies it to the next tasks.
    cfg.edge.policy = Policy::AlwaysOffload;
    std::fs::write(&config, toml::to_string(&cfg).unwrap()).unwrap();
    kill(pid, Signal::SIGHUP).unwrap();
    wait_for_log(&log, "SIGHUP: configuration reloaded").await;
    for i in 0..5 {
        let id = format!("after-{i}");
        assert!(
            send(id.clone()).await.starts_with("cloud"),
            "{id} not offloaded"
        );
        ids.push(id);
    }

    // A broken file changes nothing, and the edge keeps serving.
    std::fs::write(&config, "[edge\npolicy = ").unwrap();
    kill(pid, Signal::SIGHUP).unwrap();
    wait_for_log(&log, "configuration not reloaded").await;
    let id = "after-broken".to_string();
    assert!(send(id.clone()).await.starts_with("cloud"));
    ids.push(id);

    kill(pid, Signal::SIGTERM).unwrap();
    let status = tokio::time::timeout(Duration::from_secs(30), edge.wait())
        .await
        .expect("the edge stops on SIGTERM")
        .unwrap();
    assert!(status.success(), "{status}");

    // Every log line is a JSON object with a level and a message; each task
    // has its structured event.
    let lines = json_lines(&log);
    assert!(lines
        .iter()
        .all(|v| v["level"].is_string() && v["message"].is_string()));
    let events: Vec<&Value> = lines
        .iter()
        .filter(|v| v["message"] == "task finished")
        .collect();
    let logged: HashSet<&str> = events
        .iter()
        .filter_map(|v| v["task_id"].as_str())
        .collect();
    for id in &ids {
        assert!(logged.contains(id.as_str()), "no log event for {id}");
    }
    let after = events.iter().find(|v| v["task_id"] == "after-0").unwrap();
    assert_eq!(after["policy"], "always-offload");
    assert_eq!(after["path"], "cloud");
    assert!(after["duration_ms"].as_f64().unwrap() > 0.0);

    // The audit log: exactly one line per task, with the explanation.
    let audit = json_lines(&dir.path().join("audit.jsonl"));
    assert_eq!(audit.len(), ids.len(), "{audit:?}");
    for (line, id) in audit.iter().zip(&ids) {
        assert_eq!(line["task_id"], id.as_str());
        assert_eq!(line["ok"], true);
        assert_eq!(line["task_type"], "image_classification");
        assert!(line["model_version"].is_string());
        let d = &line["decision"];
        let (policy, path) = if id.starts_with("before") {
            ("always-local", "local")
        } else {
            ("always-offload", "cloud")
        };
        assert_eq!(d["policy"], policy, "{line}");
        assert_eq!(line["processed_by"], path, "{line}");
        assert!(d["local"]["total_ms"].as_f64().is_some(), "{line}");
        assert!(d["reason"].as_str().is_some_and(|r| !r.is_empty()));
    }
    cloud.shutdown().await.unwrap();
}
