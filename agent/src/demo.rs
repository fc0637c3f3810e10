//! `agent demo`: the embedded default. Starts the cloud service (a child
//! process) and the edge agent on this machine, drives bursts of the three
//! task types (images to classify, scenes to search for objects, reviews
//! to read; from the models' held-out sets) through the edge's task API,
//! and prints every decision and a summary, per task type too.

use crate::config::Config;
use crate::edge::Edge;
use crate::submit::describe;
use agent_core::{Policy, Priority, TaskType};
use agent_net::task_api::{self, Submission};
use agent_net::tls::{self, Side, TlsConfig};
use anyhow::{bail, Context, Result};
use datasets::heldout::TruthBox;
use datasets::quality::{mean_ap, ScoredBox};
use datasets::workload::{Truth, Workload};
use std::collections::BTreeMap;
use std::process::Stdio;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::sync::Mutex;

#[derive(clap::Args, Debug, Clone)]
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
    /// Override the edge's policy (deadline-aware, cost-model, threshold, always-local, always-offload).
    #[arg(long)]
    pub policy: Option<String>,
}

/// What happened to the tasks of one type.
#[derive(Debug, Default)]
struct TypeTally {
    tasks: u64,
    local: u64,
    offloaded: u64,
    failed: u64,
    answered: u64,
    correct: u64,
    /// Detection: the boxes answered and the truths, scene by scene.
    dets: Vec<Vec<ScoredBox>>,
    truths: Vec<Vec<TruthBox>>,
}

impl TypeTally {
    /// Accuracy for the classifiers, mAP@0.5 for detection, over the answered tasks.
    fn quality(&self, task_type: TaskType) -> f64 {
        let q = match task_type {
            TaskType::ObjectDetection => mean_ap(&self.dets, &self.truths, 10, 0.5),
            _ if self.answered > 0 => self.correct as f64 / self.answered as f64,
            _ => 0.0,
        };
        (q * 10000.0).round() / 10000.0
    }
}

/// The task type, priority and deadline of the `k`-th task of a burst: half
/// images (every fourth of them urgent), a quarter reviews, a quarter scenes.
fn mix(k: usize) -> (TaskType, Priority, Option<Duration>) {
    match k % 8 {
        7 => (
            TaskType::ImageClassification,
            Priority::Critical,
            Some(Duration::from_millis(500)),
        ),
        0 | 2 | 4 => (TaskType::ImageClassification, Priority::Medium, None),
        1 | 5 => (TaskType::NlpAnalysis, Priority::Low, None),
        _ => (
            TaskType::ObjectDetection,
            Priority::High,
            Some(Duration::from_secs(2)),
        ),
    }
}

#[derive(Debug, Default)]
struct Tally {
    by_type: BTreeMap<TaskType, TypeTally>,
    answered_classified: u64,
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

fn ty_failed(t: &mut Tally, task_type: TaskType) {
    t.by_type.entry(task_type).or_default().failed += 1;
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
    let workload = Arc::new(
        Workload::load().context("the demo sends the models' held-out sets (models/heldout_*)")?,
    );
    let model_names = |m: &std::collections::HashMap<TaskType, crate::infer::ModelSpec>| {
        let mut v: Vec<_> = m.values().map(|s| s.name.clone()).collect();
        v.sort();
        v.join(", ")
    };
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
            "cloud service: quic={} grpc={cloud_addr} ({}; child process, models {})",
            quic_addr.as_deref().unwrap_or("off"),
            if certs.is_some() {
                "mutual TLS, development CA"
            } else {
                "PLAINTEXT, --insecure"
            },
            model_names(&cfg.cloud.models)
        );
        println!(
            "edge agent:    api={api} policy={} local workers={} (models {})",
            cfg.edge.policy.name(),
            cfg.edge.workers,
            model_names(&cfg.edge.models)
        );
        println!(
            "workload: bursts of {} tasks every {} ms for {} s: half images to classify (96x96 \
             JPEG; one in four urgent, 500 ms deadline), a quarter reviews to read (text, low \
             priority), a quarter scenes to search for objects (256x256 JPEG, high priority, 2 s \
             deadline). Within a burst the local queue grows, so the first tasks run locally (an \
             idle worker beats a round trip) and later ones wait longer than the offload would \
             take and go to the cloud; between bursts the queue drains and local wins again. \
             Each line says why.",
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
            let (task_type, priority, deadline) = mix(k);
            let item = workload
                .item(task_type.as_str(), next)
                .context("a held-out set for every task type")?;
            next += 1;
            let mut c = client.clone();
            let tally = tally.clone();
            let json = args.json;
            let id = format!("t{next:05}");
            handles.push(tokio::spawn(async move {
                let submission = Submission {
                    id: id.clone(),
                    task_type,
                    payload: item.payload,
                    priority,
                    deadline,
                };
                let (r, lat) = task_api::send(&mut c, submission).await;
                let mut t = tally.lock().await;
                let label = match &item.truth {
                    Truth::Class(l) => Some(*l),
                    Truth::Boxes(_) => None,
                };
                t.by_type.entry(task_type).or_default().tasks += 1;
                match r {
                    Ok(resp) => {
                        if !json {
                            println!("{:<20} {}", task_type.as_str(), describe(&resp, label, lat));
                        }
                        let ty = t.by_type.entry(task_type).or_default();
                        if resp.success {
                            ty.answered += 1;
                            match &item.truth {
                                Truth::Class(l) => {
                                    if resp.predicted_class == i32::from(*l) {
                                        ty.correct += 1;
                                    }
                                }
                                Truth::Boxes(b) => {
                                    ty.truths.push(b.clone());
                                    ty.dets.push(
                                        resp.boxes
                                            .iter()
                                            .map(|b| ScoredBox {
                                                x1: b.x1,
                                                y1: b.y1,
                                                x2: b.x2,
                                                y2: b.y2,
                                                score: b.score,
                                                class: u8::try_from(b.class_id).unwrap_or(u8::MAX),
                                            })
                                            .collect(),
                                    );
                                }
                            }
                            if resp.processed_by.starts_with("cloud") {
                                ty.offloaded += 1;
                            } else {
                                ty.local += 1;
                            }
                            if label.is_some() {
                                t.answered_classified += 1;
                                if resp.predicted_class == label.map_or(-1, i32::from) {
                                    t.correct += 1;
                                }
                            }
                            t.answered += 1;
                            t.latencies_ms.push(lat.as_secs_f64() * 1e3);
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
                            ty_failed(&mut t, task_type);
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
                        ty_failed(&mut t, task_type);
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
    // Classification accuracy over the images and reviews answered.
    let accuracy = if t.answered_classified > 0 {
        t.correct as f64 / t.answered_classified as f64
    } else {
        0.0
    };
    let by_type: serde_json::Map<String, serde_json::Value> = t
        .by_type
        .iter()
        .map(|(ty, x)| {
            (
                ty.as_str().to_string(),
                serde_json::json!({
                    "tasks": x.tasks,
                    "local": x.local,
                    "offloaded": x.offloaded,
                    "failed": x.failed,
                    "quality": x.quality(*ty),
                    "quality_measure": if *ty == TaskType::ObjectDetection { "map50" } else { "accuracy" },
                }),
            )
        })
        .collect();
    let summary = serde_json::json!({
        "tasks": tasks,
        "local": t.local,
        "offloaded": t.offloaded,
        "failed": t.failed + t.rejected,
        "accuracy": (accuracy * 10000.0).round() / 10000.0,
        "by_type": by_type,
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
        for (ty, x) in &t.by_type {
            println!(
                "{:<20} {} tasks: {} local, {} offloaded, {} failed, {} {:.4}",
                ty.as_str(),
                x.tasks,
                x.local,
                x.offloaded,
                x.failed,
                if *ty == TaskType::ObjectDetection {
                    "mAP@0.5"
                } else {
                    "accuracy"
                },
                x.quality(*ty)
            );
        }
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
