//! The admin listeners of real agents (`agent cloud` and `agent edge` as
//! processes: each process has its own metrics recorder): `/healthz`,
//! `/readyz`, `/metrics` linted by `promtool check metrics`; the alerting
//! rules' unit tests (`promtool test rules`); every metric the Grafana
//! dashboard and the alerts use exists in a live scrape.
//!
//! promtool comes from the Debian package `prometheus` (`cargo xtask
//! setup` installs it); without it these tests fail, they do not skip.

use agent_core::Priority;
use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};
use tests::*;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt};
use tokio::process::{Child, Command};

fn repo_file(rel: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..").join(rel)
}

/// promtool, or a failure that says how to get it.
fn promtool() -> Command {
    let found = std::process::Command::new("promtool")
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    assert!(
        found,
        "promtool not found: install the Debian package `prometheus` \
         (apt-get install -y --no-install-recommends prometheus; `cargo xtask setup` does)"
    );
    Command::new("promtool")
}

/// GET `path` from `addr` over plain HTTP/1.1: (status, body).
async fn get(addr: &str, path: &str) -> std::io::Result<(u16, String)> {
    let mut s = tokio::net::TcpStream::connect(addr).await?;
    s.write_all(
        format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n").as_bytes(),
    )
    .await?;
    let mut raw = String::new();
    s.read_to_string(&mut raw).await?;
    let (head, body) = raw.split_once("\r\n\r\n").unwrap_or((&raw, ""));
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    Ok((status, body.to_string()))
}

/// Polls `path` until it answers `want` (or panics after `within`).
async fn wait_status(addr: &str, path: &str, want: u16, within: Duration) -> String {
    let start = Instant::now();
    loop {
        let last = get(addr, path).await;
        match &last {
            Ok((code, body)) if *code == want => return body.clone(),
            _ if start.elapsed() > within => {
                panic!("{addr}{path} did not answer {want} within {within:?}: {last:?}")
            }
            _ => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    }
}

/// An agent process and its first stdout line.
async fn spawn(args: &[&str]) -> (Child, String) {
    let mut child = Command::new(agent_binary())
        .arg("--config")
        .arg(defaults_file())
        .arg("--tls-dir")
        .arg(certs())
        .args(["--log", "warn"])
        .args(args)
        .stdout(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("agent starts");
    let mut lines = tokio::io::BufReader::new(child.stdout.take().unwrap()).lines();
    let line = tokio::time::timeout(Duration::from_secs(120), lines.next_line())
        .await
        .expect("the agent prints its listening line")
        .unwrap()
        .expect("listening line");
    (child, line)
}

fn field(line: &str, key: &str) -> String {
    line.split_whitespace()
        .find_map(|w| w.strip_prefix(key))
        .unwrap_or_else(|| panic!("{key} in {line:?}"))
        .to_string()
}

/// A cloud on `ip` with its admin listener on `admin`: (process, grpc, quic).
async fn spawn_cloud(ip: &str, admin: &str) -> (Child, String, String) {
    let any_port = format!("{ip}:0");
    let (child, line) = spawn(&[
        "cloud",
        "--listen-grpc",
        &any_port,
        "--listen-quic",
        &any_port,
        "--metrics-listen",
        admin,
    ])
    .await;
    (child, field(&line, "grpc="), field(&line, "quic="))
}

/// An edge offloading to `grpc`/`quic` with its admin listener on `admin`:
/// (process, task API address).
async fn spawn_edge(admin: &str, grpc: &str, quic: &str, extra: &[&str]) -> (Child, String) {
    let mut args = vec![
        "edge",
        "--listen",
        "127.0.0.1:0",
        "--cloud-grpc",
        grpc,
        "--cloud-quic",
        quic,
        "--metrics-listen",
        admin,
    ];
    args.extend_from_slice(extra);
    let (child, line) = spawn(&args).await;
    (child, field(&line, "api="))
}

/// Runs promtool with `args` and `stdin`: (success, stdout + stderr).
async fn run_promtool(args: &[&str], stdin: &str) -> (bool, String) {
    let mut child = promtool()
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("promtool runs");
    let mut input = child.stdin.take().unwrap();
    input.write_all(stdin.as_bytes()).await.unwrap();
    drop(input);
    let out = child.wait_with_output().await.unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

/// The metric families a scrape declares (`# TYPE name kind`).
fn families(scrape: &str) -> BTreeSet<String> {
    scrape
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|l| l.split_whitespace().next())
        .map(str::to_string)
        .collect()
}

/// The value of the sample `series` (name and labels exactly as rendered).
fn sample(scrape: &str, series: &str) -> Option<f64> {
    scrape.lines().find_map(|l| {
        l.strip_prefix(series)?
            .strip_prefix(' ')?
            .trim()
            .parse()
            .ok()
    })
}

/// Metric names in a PromQL expression: the identifiers with the agents'
/// prefixes outside string literals, histogram suffixes stripped.
fn metric_names(expr: &str) -> BTreeSet<String> {
    let mut unquoted = String::new();
    let mut in_string = false;
    for c in expr.chars() {
        match c {
            '"' => in_string = !in_string,
            _ if in_string => {}
            c => unquoted.push(c),
        }
    }
    unquoted
        .split(|c: char| !(c.is_ascii_alphanumeric() || c == '_' || c == ':'))
        .filter(|w| w.starts_with("edge_") || w.starts_with("cloud_"))
        .map(|w| {
            ["_bucket", "_sum", "_count"]
                .iter()
                .find_map(|s| w.strip_suffix(s))
                .unwrap_or(w)
                .to_string()
        })
        .collect()
}

/// Every `expr` of the dashboard's panels and its variables' queries.
fn dashboard_exprs(dashboard: &serde_json::Value) -> Vec<String> {
    fn walk(v: &serde_json::Value, out: &mut Vec<String>) {
        match v {
            serde_json::Value::Object(m) => {
                for (k, v) in m {
                    match (k.as_str(), v) {
                        ("expr", serde_json::Value::String(e)) => out.push(e.clone()),
                        ("query", serde_json::Value::Object(q)) => {
                            if let Some(serde_json::Value::String(e)) = q.get("query") {
                                out.push(e.clone());
                            }
                        }
                        _ => walk(v, out),
                    }
                }
            }
            serde_json::Value::Array(a) => a.iter().for_each(|v| walk(v, out)),
            _ => {}
        }
    }
    let mut out = Vec::new();
    walk(dashboard, &mut out);
    out
}

/// Every `expr:` of a rules file: one line, or a `|` / `>` block.
fn alert_exprs(yaml: &str) -> Vec<String> {
    let lines: Vec<&str> = yaml.lines().collect();
    let mut out = Vec::new();
    for (i, line) in lines.iter().enumerate() {
        let item = line.trim_start();
        let Some(rest) = item
            .strip_prefix("- ")
            .unwrap_or(item)
            .trim_start()
            .strip_prefix("expr:")
        else {
            continue;
        };
        let rest = rest.trim();
        if !rest.starts_with('|') && !rest.starts_with('>') {
            out.push(rest.to_string());
            continue;
        }
        // The block is what is indented deeper than the `expr` key.
        let indent = line.find("expr:").unwrap_or(0);
        let block: Vec<&str> = lines[i + 1..]
            .iter()
            .take_while(|l| l.trim().is_empty() || l.len() - l.trim_start().len() > indent)
            .copied()
            .collect();
        out.push(block.join("\n"));
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn admin_endpoints_of_real_agents_scrape_clean_and_cover_the_dashboard() {
    let (cloud_admin, edge_admin) = (dead_address(), dead_address());
    let (_cloud, grpc, quic) = spawn_cloud("127.0.0.1", &cloud_admin).await;
    let (_edge, api) = spawn_edge(&edge_admin, &grpc, &quic, &[]).await;

    for admin in [&cloud_admin, &edge_admin] {
        assert_eq!(get(admin, "/healthz").await.unwrap().0, 200, "{admin}");
        // Models loaded; the edge has measured the cloud.
        let body = wait_status(admin, "/readyz", 200, Duration::from_secs(30)).await;
        assert_eq!(body.trim(), "ready");
        let (code, _) = get(admin, "/nothing-here").await.unwrap();
        assert_eq!(code, 404);
    }

    // Tasks through the edge so the counters and histograms exist: a burst
    // of 150 at once on one worker builds a queue, so both paths are used.
    let client = agent_net::task_api::connect(&api).await.unwrap();
    let set = test_set();
    let burst = (0..150).map(|i| {
        let mut c = client.clone();
        let pixels = set[i % set.len()].pixels.clone();
        async move {
            let (r, _) =
                send_image(&mut c, format!("obs-{i}"), pixels, Priority::Medium, None).await;
            r.expect("task answered")
        }
    });
    let answers = futures::future::join_all(burst).await;
    assert!(answers.iter().all(|r| r.success));
    // The gauges are sampled every second.
    tokio::time::sleep(Duration::from_millis(1500)).await;

    let mut scrapes = Vec::new();
    for admin in [&cloud_admin, &edge_admin] {
        let (code, text) = get(admin, "/metrics").await.unwrap();
        assert_eq!(code, 200);
        let (ok, problems) = run_promtool(&["check", "metrics"], &text).await;
        assert!(
            ok && problems.trim().is_empty(),
            "promtool check metrics on {admin}: {problems}\n{text}"
        );
        scrapes.push(text);
    }
    let (cloud, edge) = (&scrapes[0], &scrapes[1]);

    // The edge: tasks by path, transport, type and outcome; both paths seen.
    let done: f64 = edge
        .lines()
        .filter(|l| l.starts_with("edge_tasks_total{"))
        .filter(|l| {
            l.contains("task_type=\"image_classification\"") && l.contains("outcome=\"ok\"")
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum();
    assert_eq!(done, 150.0, "{edge}");
    assert!(edge.contains("edge_decisions_total{policy=\"deadline-aware\""));
    assert!(edge.contains("edge_queue_wait_seconds_bucket{task_type=\"image_classification\""));
    assert_eq!(
        sample(edge, "edge_breaker_state{transport=\"quic\"}"),
        Some(0.0)
    );
    assert_eq!(
        sample(edge, "edge_breaker_state{transport=\"grpc\"}"),
        Some(0.0)
    );
    assert_eq!(sample(edge, "edge_cloud_reachable"), Some(1.0));
    assert!(sample(edge, "edge_process_resident_memory_bytes").unwrap() > 1e6);
    assert!(sample(edge, "edge_process_cpu_seconds_total").unwrap() > 0.0);
    assert!(sample(edge, "edge_local_queue_capacity").unwrap() > 0.0);
    // The cloud: what it answered, by transport; its inference histogram.
    let offloaded: f64 = edge
        .lines()
        .filter(|l| l.starts_with("edge_tasks_total{path=\"cloud\""))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum();
    let answered: f64 = cloud
        .lines()
        .filter(|l| l.starts_with("cloud_requests_total{") && l.contains("outcome=\"ok\""))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum();
    assert!(
        offloaded > 0.0 && answered >= offloaded,
        "cloud answered {answered}, edge offloaded {offloaded}"
    );
    assert!(cloud.contains("cloud_requests_total{transport=\"quic\",task_type=\"image_classification\",outcome=\"ok\"}"));
    assert!(cloud
        .contains("cloud_inference_duration_seconds_bucket{task_type=\"image_classification\""));
    assert_eq!(sample(cloud, "cloud_pending_requests"), Some(0.0));
    assert!(sample(cloud, "cloud_process_resident_memory_bytes").unwrap() > 1e6);

    // Every metric the dashboard and the alerts use exists in a scrape.
    let live: BTreeSet<String> = families(cloud).into_iter().chain(families(edge)).collect();
    let dashboard: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(repo_file("deploy/grafana/edge-agent.json")).unwrap(),
    )
    .expect("the dashboard is JSON");
    assert_eq!(dashboard["schemaVersion"], 39);
    assert_eq!(dashboard["__inputs"][0]["name"], "DS_PROMETHEUS");
    let alerts = std::fs::read_to_string(repo_file("deploy/prometheus/alerts.yml")).unwrap();
    let exprs: Vec<(&str, String)> = dashboard_exprs(&dashboard)
        .into_iter()
        .map(|e| ("dashboard", e))
        .chain(alert_exprs(&alerts).into_iter().map(|e| ("alerts.yml", e)))
        .collect();
    assert!(exprs.iter().filter(|(f, _)| *f == "alerts.yml").count() >= 6);
    assert!(exprs.iter().filter(|(f, _)| *f == "dashboard").count() >= 30);
    for (file, expr) in &exprs {
        let names = metric_names(expr);
        assert!(!names.is_empty(), "{file}: no metric in {expr:?}");
        for name in names {
            assert!(
                live.contains(&name),
                "{file} uses {name}, which neither agent exposes ({expr:?}); live: {live:?}"
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn edge_without_a_cloud_is_alive_but_not_ready() {
    let admin = dead_address();
    // A loopback address nothing uses: the passive probe, which watches
    // the cloud's IP, sees no other test's traffic there.
    let port = dead_address().rsplit_once(':').unwrap().1.to_string();
    let (_edge, _api) = spawn_edge(&admin, &format!("127.0.0.3:{port}"), "", &[]).await;
    assert_eq!(get(&admin, "/healthz").await.unwrap().0, 200);
    // Past the start (models loaded), still no RTT sample from a dead address.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let (code, body) = get(&admin, "/readyz").await.unwrap();
    assert_eq!(code, 503, "{body}");
    assert!(body.contains("no estimate of the cloud"), "{body}");
    assert_eq!(body.trim_end().lines().count(), 1, "one line: {body:?}");
    assert_eq!(get(&admin, "/healthz").await.unwrap().0, 200);
    // The metrics still say why.
    let (_, text) = get(&admin, "/metrics").await.unwrap();
    assert_eq!(sample(&text, "edge_cloud_reachable"), Some(0.0));
}

/// Sends `n` digits tasks one after the other; all must succeed.
async fn send_tasks(api: &str, tag: &str, n: usize) {
    let mut client = agent_net::task_api::connect(api).await.unwrap();
    let set = test_set();
    for i in 0..n {
        let pixels = set[i % set.len()].pixels.clone();
        let (r, _) = send_image(
            &mut client,
            format!("{tag}-{i}"),
            pixels,
            Priority::Medium,
            None,
        )
        .await;
        assert!(r.expect("task answered").success);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn breaker_failover_and_reachability_gauges_follow_a_cloud_that_dies() {
    // The cloud on its own loopback address: the passive probe, which
    // watches the cloud's IP, sees only this test's traffic.
    let (cloud_admin, edge_admin) = (dead_address(), dead_address());
    let (mut cloud, grpc, quic) = spawn_cloud("127.0.0.4", &cloud_admin).await;
    let (_edge, api) = spawn_edge(&edge_admin, &grpc, &quic, &["--policy", "always-offload"]).await;
    wait_status(&edge_admin, "/readyz", 200, Duration::from_secs(30)).await;
    send_tasks(&api, "before", 10).await;
    tokio::time::sleep(Duration::from_millis(1200)).await;
    let (_, text) = get(&edge_admin, "/metrics").await.unwrap();
    assert_eq!(
        sample(&text, "edge_offload_transport_active{transport=\"quic\"}"),
        Some(1.0)
    );
    assert_eq!(
        sample(&text, "edge_breaker_state{transport=\"quic\"}"),
        Some(0.0)
    );
    assert_eq!(sample(&text, "edge_cloud_reachable"), Some(1.0));
    assert_eq!(sample(&text, "edge_offload_fallbacks_total"), Some(0.0));

    cloud.start_kill().unwrap();
    cloud.wait().await.unwrap();
    // Every offload fails now; the tasks run locally.
    send_tasks(&api, "after", 30).await;
    tokio::time::sleep(Duration::from_millis(1200)).await;
    let (_, text) = get(&edge_admin, "/metrics").await.unwrap();
    let value = |series: &str| sample(&text, series).unwrap_or_else(|| panic!("{series}\n{text}"));
    assert!(value("edge_offload_fallbacks_total") >= 25.0, "{text}");
    assert_eq!(value("edge_cloud_reachable"), 0.0);
    // QUIC failed over to gRPC, and a circuit is open (2) or waiting for
    // its trial (1).
    assert_eq!(
        value("edge_offload_transport_active{transport=\"grpc\"}"),
        1.0
    );
    assert_eq!(
        value("edge_offload_transport_active{transport=\"quic\"}"),
        0.0
    );
    assert!(value("edge_failover_switches_total{to=\"grpc\"}") >= 1.0);
    let worst = value("edge_breaker_state{transport=\"grpc\"}")
        .max(value("edge_breaker_state{transport=\"quic\"}"));
    assert!(worst >= 1.0, "no circuit opened: {text}");
    // Alive, and still ready: the edge has an estimate and runs locally.
    assert_eq!(get(&edge_admin, "/healthz").await.unwrap().0, 200);
    let (ok, problems) = run_promtool(&["check", "metrics"], &text).await;
    assert!(ok && problems.trim().is_empty(), "{problems}");
}

#[tokio::test]
async fn metrics_endpoint_refuses_a_public_address_without_insecure() {
    let out = Command::new(agent_binary())
        .arg("--config")
        .arg(defaults_file())
        .arg("--tls-dir")
        .arg(certs())
        .args(["--log", "warn", "cloud", "--listen-grpc", "127.0.0.1:0"])
        .args([
            "--listen-quic",
            "127.0.0.1:0",
            "--metrics-listen",
            "0.0.0.0:0",
        ])
        .output()
        .await
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("metrics endpoint"), "{err}");
}

#[tokio::test]
async fn alert_rules_pass_their_unit_tests() {
    let tests = repo_file("deploy/prometheus/tests.yml");
    let (ok, out) = run_promtool(&["test", "rules", tests.to_str().unwrap()], "").await;
    assert!(ok && out.contains("SUCCESS"), "promtool test rules: {out}");
    let rules = repo_file("deploy/prometheus/alerts.yml");
    let (ok, out) = run_promtool(&["check", "rules", rules.to_str().unwrap()], "").await;
    assert!(
        ok && out.contains("6 rules found"),
        "promtool check rules: {out}"
    );
}

#[test]
fn metric_names_are_found_in_exprs() {
    let names = metric_names(
        r#"histogram_quantile(0.95, sum by (le, path) (rate(edge_task_latency_seconds_bucket{path="cloud_x"}[5m]))) / cloud_pending_requests"#,
    );
    assert_eq!(
        names.into_iter().collect::<Vec<_>>(),
        ["cloud_pending_requests", "edge_task_latency_seconds"]
    );
    let exprs = alert_exprs(
        "  - expr: a_b > 1\n    for: 1m\n  - expr: |\n      sum(x)\n        / y\n    for: 2m\n",
    );
    assert_eq!(exprs, ["a_b > 1", "      sum(x)\n        / y"]);
}
