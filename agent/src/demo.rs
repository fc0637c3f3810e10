//! `agent demo`: the embedded default. Starts the cloud service (a child
//! process) and the edge agent on this machine, drives bursts of digits
//! images through the edge's task API, and prints every decision and a
//! summary.

use crate::config::Config;
use crate::edge::Edge;
use crate::submit::describe;
use agent_core::{Policy, Priority, TaskType};
use agent_net::task_api::{self, Submission};
use agent_net::tls::{self, Side, TlsConfig};
use anyhow::{bail, Context, Result};
use std::process::Stdio;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::sync::Mutex;

#[derive(clap::Args, Debug)]
pub struct DemoArgs {
    /// Stop sending after this many seconds.
    #[arg(long, default_value_t = 20)]
    pub seconds: u64,
    /// Print only the summary, as one JSON object on the last line.
    #[arg(long)]
    pub json: bool,
    /// Tasks arriving together in each burst.
    #[arg(long, default_value_t = 24)]
    pub burst: usize,
    /// Time between bursts.
    #[arg(long, default_value_t = 250)]
    pub burst_interval_ms: u64,
    /// Override the edge's policy (always-local, always-offload, threshold, cost-model).
    #[arg(long)]
    pub policy: Option<String>,
}

#[derive(Debug, Default)]
struct Tally {
    latencies_ms: Vec<f64>,
    local: u64,
    offloaded: u64,
    failed: u64,
    rejected: u64,
    correct: u64,
    answered: u64,
    fell_back: u64,
    quic: u64,
    grpc: u64,
}

/// The cloud child's addresses: gRPC, and QUIC unless it is off.
async fn start_cloud(
    cfg_path: Option<&std::path::Path>,
    tls_dir: Option<&std::path::Path>,
) -> Result<(tokio::process::Child, String, Option<String>)> {
    let exe = std::env::current_exe()?;
    let mut cmd = tokio::process::Command::new(exe);
    if let Some(p) = cfg_path {
        cmd.arg("--config").arg(p);
    }
    match tls_dir {
        Some(d) => cmd.arg("--tls-dir").arg(d),
        None => cmd.arg("--insecure"),
    };
    // The cloud gets its own loopback address: the passive probe watches the
    // cloud's address, and on 127.0.0.1 it would also see the demo's own
    // task-API traffic to the edge.
    cmd.args([
        "--log",
        "warn",
        "cloud",
        "--listen-grpc",
        "127.0.0.2:0",
        "--listen-quic",
        "127.0.0.2:0",
    ])
    .stdout(Stdio::piped())
    .kill_on_drop(true);
    let mut child = cmd.spawn().context("starting the cloud service")?;
    let stdout = child.stdout.take().expect("piped stdout");
    let mut lines = BufReader::new(stdout).lines();
    let line = tokio::time::timeout(Duration::from_secs(30), lines.next_line())
        .await
        .context("cloud service did not start within 30 s")??
        .context("cloud service exited before listening")?;
    let field = |k: &str| {
        line.split_whitespace()
            .find_map(|w| w.strip_prefix(k))
            .map(str::to_string)
    };
    let addr = field("grpc=").with_context(|| format!("unexpected cloud output {line:?}"))?;
    let quic = field("quic=").filter(|q| q != "off");
    Ok((child, addr, quic))
}

/// The demo's certificate folder, removed however the demo ends.
struct TempDir(std::path::PathBuf);

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn percentile(sorted: &[f64], q: f64) -> f64 {
    agent_core::quantile(sorted, q)
}

pub async fn run(mut cfg: Config, args: DemoArgs) -> Result<()> {
    if let Some(p) = &args.policy {
        cfg.edge.policy = Policy::from_name(p).with_context(|| format!("unknown policy {p:?}"))?;
    }
    let samples = Arc::new(
        datasets::digits::load_default().context("the demo needs models/digits_test.bin")?,
    );
    // Mutual TLS with a development CA made for this run, unless --insecure.
    let certs = if cfg.edge.tls.insecure {
        None
    } else {
        let dir =
            std::env::temp_dir().join(format!("edge-offload-demo-certs-{}", std::process::id()));
        let guard = TempDir(dir.clone());
        tls::gen_certs(&dir, &[]).context("generating the demo's certificates")?;
        cfg.edge.tls = TlsConfig::from_dir(&dir, Side::Client);
        Some(guard)
    };
    let started_cloud = start_cloud(
        std::env::var_os("EDGE_AGENT_CONFIG")
            .as_deref()
            .map(std::path::Path::new),
        certs.as_ref().map(|d| d.0.as_path()),
    )
    .await;
    let (mut cloud, cloud_addr, quic_addr) = started_cloud?;
    cfg.edge.cloud_grpc = cloud_addr.clone();
    cfg.edge.cloud_quic = quic_addr.clone().unwrap_or_default();
    cfg.edge.cloud_server_name = "localhost".into();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let edge = Edge::start(&cfg.edge, Some(listener)).await?;
    let api = edge.api_addr.to_string();
    if !args.json {
        println!(
            "cloud service: quic={} grpc={cloud_addr} ({}; child process, model digits_cloud)",
            quic_addr.as_deref().unwrap_or("off"),
            if certs.is_some() {
                "mutual TLS, development CA"
            } else {
                "PLAINTEXT, --insecure"
            }
        );
        println!(
            "edge agent:    api={api} policy={} local workers={} (model digits_edge)",
            cfg.edge.policy.name(),
            cfg.edge.workers
        );
        println!(
            "workload: bursts of {} images every {} ms for {} s. Within a burst the local queue \
             grows, so the first images run locally (an idle worker beats a round trip) and later \
             ones wait longer than the offload would take and go to the cloud; between bursts the \
             queue drains and local wins again.",
            args.burst, args.burst_interval_ms, args.seconds
        );
    }
    // Let the active probe measure the link before the first decision.
    let t0 = Instant::now();
    while !edge.manager.network_status().reachable {
        if t0.elapsed() > Duration::from_secs(5) {
            bail!("the cloud service at {cloud_addr} is not reachable");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    let client = task_api::connect(&api).await?;
    let tally = Arc::new(Mutex::new(Tally::default()));
    let started = Instant::now();
    let mut next = 0usize;
    let mut burst_no = 0u64;
    let mut handles = Vec::new();
    while started.elapsed() < Duration::from_secs(args.seconds) {
        for k in 0..args.burst {
            let s = samples[next % samples.len()].clone();
            next += 1;
            // Every eighth task is urgent, with a deadline.
            let (priority, deadline) = if k % 8 == 7 {
                (Priority::Critical, Some(Duration::from_millis(50)))
            } else {
                (Priority::Medium, None)
            };
            let mut c = client.clone();
            let tally = tally.clone();
            let json = args.json;
            let id = format!("t{next:05}");
            handles.push(tokio::spawn(async move {
                let submission = Submission {
                    id: id.clone(),
                    task_type: TaskType::ImageClassification,
                    payload: s.pixels,
                    priority,
                    deadline,
                };
                let (r, lat) = task_api::send(&mut c, submission).await;
                let mut t = tally.lock().await;
                match r {
                    Ok(resp) => {
                        if !json {
                            println!("{}", describe(&resp, Some(s.label), lat));
                        }
                        if resp.success {
                            t.answered += 1;
                            t.latencies_ms.push(lat.as_secs_f64() * 1e3);
                            if resp.predicted_class == i32::from(s.label) {
                                t.correct += 1;
                            }
                            if resp.processed_by.starts_with("cloud") {
                                t.offloaded += 1;
                            } else {
                                t.local += 1;
                            }
                            match resp.transport.as_str() {
                                "quic" => t.quic += 1,
                                "grpc" => t.grpc += 1,
                                _ => {}
                            }
                        } else {
                            t.failed += 1;
                        }
                        if resp.fell_back {
                            t.fell_back += 1;
                        }
                    }
                    Err(status) => {
                        if !json {
                            println!("{id:<10} rejected: {}", status.message());
                        }
                        t.rejected += 1;
                    }
                }
            }));
        }
        burst_no += 1;
        let due = started + Duration::from_millis(args.burst_interval_ms * burst_no);
        tokio::time::sleep_until(due.into()).await;
    }
    for h in handles {
        h.await?;
    }
    let stats = edge.manager.stats();
    edge.shutdown().await?;
    let _ = cloud.start_kill();
    let _ = cloud.wait().await;
    drop(certs);

    let mut t = Arc::try_unwrap(tally)
        .expect("all tasks joined")
        .into_inner();
    t.latencies_ms.sort_by(|a, b| a.total_cmp(b));
    let tasks = t.answered + t.failed + t.rejected;
    let accuracy = if t.answered > 0 {
        t.correct as f64 / t.answered as f64
    } else {
        0.0
    };
    let summary = serde_json::json!({
        "tasks": tasks,
        "local": t.local,
        "offloaded": t.offloaded,
        "failed": t.failed + t.rejected,
        "accuracy": (accuracy * 10000.0).round() / 10000.0,
        "p50_ms": (percentile(&t.latencies_ms, 0.50) * 1000.0).round() / 1000.0,
        "p95_ms": (percentile(&t.latencies_ms, 0.95) * 1000.0).round() / 1000.0,
        "p99_ms": (percentile(&t.latencies_ms, 0.99) * 1000.0).round() / 1000.0,
        "fell_back": t.fell_back,
        "quic": t.quic,
        "grpc": t.grpc,
        "policy": cfg.edge.policy.name(),
        "seconds": args.seconds,
        "agent_stats": stats,
    });
    if !args.json {
        println!(
            "\nsummary: {tasks} tasks, {} local, {} offloaded ({} over QUIC, {} over gRPC), {} failed, \
             accuracy {:.2}%, latency p50 {:.2} ms p95 {:.2} ms p99 {:.2} ms",
            t.local,
            t.offloaded,
            t.quic,
            t.grpc,
            t.failed + t.rejected,
            accuracy * 100.0,
            percentile(&t.latencies_ms, 0.5),
            percentile(&t.latencies_ms, 0.95),
            percentile(&t.latencies_ms, 0.99)
        );
    }
    println!("{summary}");
    Ok(())
}
