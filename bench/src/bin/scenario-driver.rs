//! `scenario-driver`, the scenario benchmark's helper (started by
//! `scenario-bench`, see bench/README.md):
//!
//! - `run`, inside the edge namespace: sends a scenario's seeded task stream
//!   to the edge agent's task API on schedule, records every task's fate,
//!   writes JSON lines;
//! - `calibrate`: times fixed CPU jobs (inside and outside the edge's cgroup);
//! - `policies`: the agent's policy names, so the benchmark runs every one;
//! - `storm`, `slowloris`, `flood`: the load of the fault suite's faults
//!   (`faults`, bench/src/faults).

use agent_core::Policy;
use agent_net::tls::{Side, TlsConfig};
use anyhow::{bail, Context, Result};
use bench::faults::load;
use bench::scenarios::record::{path_of, DecisionView, Outcome, TaskRecord};
use bench::scenarios::workload::{plan, PlannedTask};
use clap::{Parser, Subcommand};
use datasets::workload::Truth;
use jitter_lab::Scenario;
use proto::edge_ai_service_client::EdgeAiServiceClient;
use std::io::Write;
use std::path::PathBuf;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use tokio::io::AsyncBufReadExt;
use tonic::transport::Channel;

/// How long the driver waits for an answer beyond the task's deadline.
const ANSWER_GRACE: Duration = Duration::from_secs(30);

#[derive(Parser)]
#[command(name = "scenario-driver")]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Send the scenario's seeded workload to the edge API after `go` on stdin.
    Run(DriverArgs),
    /// Time a fixed CPU job; prints {"median_ms":..,"runs_ms":[..]}.
    /// Time fixed CPU jobs of several sizes; prints, per size, the fastest
    /// run's wall time and the least CPU time: [{"iters":..,"wall_ms":..,"cpu_ms":..},..].
    Calibrate {
        /// Job sizes (loop iterations), comma-separated.
        #[arg(long, value_delimiter = ',', required = true)]
        iters: Vec<u64>,
        #[arg(long, default_value_t = 5)]
        reps: usize,
        /// Idle time before each job, so each starts with a fresh quota.
        #[arg(long, default_value_t = 30)]
        gap_ms: u64,
    },
    /// Print the agent's policy names as a JSON array.
    Policies,
    /// Impatient clients: requests abandoned after a few ms, then one
    /// valid request; prints a JSON report (fault suite).
    Storm {
        #[command(flatten)]
        target: Target,
        #[arg(long, default_value_t = 1500)]
        count: usize,
        #[arg(long, default_value_t = 100)]
        batch: usize,
        #[arg(long, default_value_t = 2)]
        give_up_ms: u64,
    },
    /// Connections that dribble the HTTP/2 preface one byte a second and
    /// never send a request; prints a JSON report (fault suite).
    Slowloris {
        #[arg(long)]
        target: String,
        #[arg(long, default_value_t = 500)]
        conns: usize,
        #[arg(long, default_value_t = 10)]
        seconds: u64,
    },
    /// Valid requests back to back from many clients; prints a JSON report
    /// of the answers by status (fault suite).
    Flood {
        #[command(flatten)]
        target: Target,
        #[arg(long, default_value_t = 600)]
        concurrency: usize,
        #[arg(long, default_value_t = 10)]
        seconds: u64,
    },
}

/// A service speaking `EdgeAIService`: the edge's task API (plaintext) or
/// the cloud (mutual TLS with the client certificate of `--tls-dir`).
#[derive(clap::Args, Debug, Clone)]
struct Target {
    #[arg(long)]
    target: String,
    /// Certificates from `agent gen-certs` (the client's).
    #[arg(long)]
    tls_dir: Option<PathBuf>,
    /// The name the server's certificate carries.
    #[arg(long, default_value = "localhost")]
    server_name: String,
}

#[derive(clap::Args, Debug, Clone)]
struct DriverArgs {
    /// The edge agent's task API.
    #[arg(long)]
    edge: String,
    /// The scenario file (its [workload] section gives the stream).
    #[arg(long)]
    scenario: PathBuf,
    /// Seconds of the stream to send.
    #[arg(long)]
    duration: f64,
    /// The edge's policy (it labels the tasks).
    #[arg(long)]
    policy: String,
    /// JSON lines, one record per task.
    #[arg(long)]
    out: PathBuf,
}

fn main() -> Result<()> {
    match Cli::parse().cmd {
        Cmd::Run(a) => block_on(run(a)),
        Cmd::Calibrate {
            iters,
            reps,
            gap_ms,
        } => {
            let sizes: Vec<serde_json::Value> = iters
                .iter()
                .map(|&n| {
                    let runs = calibrate(n, reps, Duration::from_millis(gap_ms));
                    serde_json::json!({
                        "iters": n,
                        "wall_ms": min(runs.iter().map(|r| r.0)),
                        "cpu_ms": min(runs.iter().map(|r| r.1)),
                    })
                })
                .collect();
            println!("{}", serde_json::Value::Array(sizes));
            Ok(())
        }
        Cmd::Policies => {
            println!("{}", serde_json::json!(Policy::NAMES));
            Ok(())
        }
        Cmd::Storm {
            target,
            count,
            batch,
            give_up_ms,
        } => block_on(async move {
            let client = connect_target(&target).await?;
            let req = valid_request()?;
            let mut r = load::storm(
                &client,
                &req,
                count,
                batch.max(1),
                Duration::from_millis(give_up_ms),
                Duration::from_secs(5),
            )
            .await;
            if !r.after_ok {
                // The server may have closed the storm's connection: a
                // client that reconnects must be served at once.
                let fresh = connect_target(&target).await?;
                let timeout = Duration::from_secs(5);
                r.fresh = Some(load::one_request(&fresh, &req, "after-storm-fresh", timeout).await);
            }
            println!("{}", serde_json::to_string(&r)?);
            Ok(())
        }),
        Cmd::Slowloris {
            target,
            conns,
            seconds,
        } => block_on(async move {
            let r = load::slow_loris(
                &target,
                conns,
                Duration::from_secs(seconds),
                Duration::from_secs(1),
            )
            .await?;
            println!("{}", serde_json::to_string(&r)?);
            Ok(())
        }),
        Cmd::Flood {
            target,
            concurrency,
            seconds,
        } => block_on(async move {
            let client = connect_target(&target).await?;
            let r = load::flood(
                &client,
                &valid_request()?,
                concurrency,
                Duration::from_secs(seconds),
                Duration::from_secs(10),
            )
            .await;
            println!("{}", serde_json::to_string(&r)?);
            Ok(())
        }),
    }
}

fn block_on(f: impl std::future::Future<Output = Result<()>>) -> Result<()> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?
        .block_on(f)
}

async fn connect_target(t: &Target) -> Result<EdgeAiServiceClient<Channel>> {
    match &t.tls_dir {
        None => connect(&t.target).await,
        Some(dir) => {
            let material = TlsConfig::from_dir(dir, Side::Client)
                .load(Side::Client)?
                .with_context(|| format!("no client certificate in {}", dir.display()))?;
            agent_net::task_api::connect_with(&t.target, Some((&material, &t.server_name))).await
        }
    }
}

/// A valid image classification request (the first held-out image).
fn valid_request() -> Result<proto::TaskRequest> {
    let sets = datasets::workload::Workload::load()
        .context("the load sends held-out images (models/heldout_*)")?;
    let item = sets
        .item("image_classification", 0)
        .context("no held-out image")?;
    Ok(proto::TaskRequest {
        id: String::new(),
        r#type: proto::TaskType::ImageClassification as i32,
        payload: item.payload,
        priority: proto::Priority::Medium as i32,
        deadline_unix_nano: 0,
        context: Default::default(),
        features: None,
    })
}

fn priority(name: &str) -> Result<proto::Priority> {
    Ok(match name {
        "low" => proto::Priority::Low,
        "medium" => proto::Priority::Medium,
        "high" => proto::Priority::High,
        "critical" => proto::Priority::Critical,
        _ => bail!("unknown priority {name:?}"),
    })
}

fn task_type(name: &str) -> Result<proto::TaskType> {
    Ok(match name {
        "image_classification" => proto::TaskType::ImageClassification,
        "object_detection" => proto::TaskType::ObjectDetection,
        "nlp_analysis" => proto::TaskType::NlpAnalysis,
        _ => bail!("unknown task type {name:?}"),
    })
}

/// Refuses a policy name the agent would not know.
fn check_policy(policy: &str) -> Result<()> {
    match Policy::from_name(policy) {
        Some(_) => Ok(()),
        None => bail!("unknown policy {policy:?} (one of {:?})", Policy::NAMES),
    }
}

async fn connect(addr: &str) -> Result<EdgeAiServiceClient<Channel>> {
    let t0 = Instant::now();
    loop {
        match agent_net::task_api::connect(addr).await {
            Ok(c) => return Ok(c),
            Err(e) if t0.elapsed() > Duration::from_secs(10) => return Err(e),
            Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    }
}

/// Sample indices are drawn from 0..SAMPLES and wrap around each held-out set.
const SAMPLES: usize = 10_000;

struct Sent {
    planned: PlannedTask,
    /// The class a classifier should answer (none for detection).
    label: Option<u8>,
    payload: Vec<u8>,
}

async fn send_one(
    mut client: EdgeAiServiceClient<Channel>,
    s: Sent,
    policy: String,
    t0: Instant,
) -> Result<TaskRecord> {
    let t = &s.planned;
    let prio = priority(&t.priority)?;
    let deadline = t.deadline_ms.map(Duration::from_millis);
    let deadline_unix_nano = match deadline {
        Some(d) => (SystemTime::now() + d)
            .duration_since(UNIX_EPOCH)?
            .as_nanos() as i64,
        None => 0,
    };
    let req = proto::TaskRequest {
        id: format!("{policy}-{}", t.seq),
        r#type: task_type(&t.task)? as i32,
        payload: s.payload,
        priority: prio as i32,
        deadline_unix_nano,
        context: Default::default(),
        features: None,
    };
    let limit = deadline.unwrap_or_default() + ANSWER_GRACE;
    let started = Instant::now();
    let answer = tokio::time::timeout(limit, client.offload_task(req)).await;
    let latency_ms = started.elapsed().as_secs_f64() * 1e3;
    let mut rec = TaskRecord {
        seq: t.seq,
        sent_ms: started.duration_since(t0).as_secs_f64() * 1e3,
        latency_ms,
        task: t.task.clone(),
        priority: t.priority.clone(),
        deadline_ms: t.deadline_ms,
        outcome: Outcome::Lost,
        error: String::new(),
        path: None,
        transport: String::new(),
        fell_back: false,
        label: s.label,
        predicted: None,
        decision: None,
        agent_ms: None,
        queue_ms: None,
        inference_ms: None,
    };
    match answer {
        Err(_) => rec.error = format!("no answer within {limit:?}"),
        Ok(Err(status)) => {
            rec.outcome = Outcome::Rejected;
            rec.error = format!("{:?}: {}", status.code(), status.message());
        }
        Ok(Ok(resp)) => {
            let r = resp.into_inner();
            rec.outcome = if r.success {
                Outcome::Ok
            } else {
                Outcome::Failed
            };
            rec.error = r.error_message.clone();
            rec.path = path_of(&r.processed_by);
            rec.transport = r.transport.clone();
            rec.fell_back = r.fell_back;
            rec.agent_ms = Some(r.duration_nano as f64 / 1e6);
            if r.inference_nano > 0 {
                rec.queue_ms = Some(r.queue_nano as f64 / 1e6);
                rec.inference_ms = Some(r.inference_nano as f64 / 1e6);
            }
            rec.predicted = r.success.then_some(i64::from(r.predicted_class));
            rec.decision = r.decision.map(|d| {
                let estimated = d.network_source != "none" && d.offload_total_ms > 0.0;
                let path_outlook = match d.path.as_str() {
                    "local" => d.local_outlook,
                    _ => d.offload_outlook,
                };
                DecisionView {
                    p_meet: path_outlook.and_then(|o| o.p_meet),
                    correction_ms: path_outlook.map(|o| o.correction_ms),
                    p50_ms: path_outlook.map(|o| o.p50_ms),
                    hedged: d.hedged,
                    jitter_ms: estimated.then_some(d.jitter_ms),
                    policy: d.policy,
                    path: d.path,
                    reason: d.reason,
                    rtt_ms: d.rtt_ms,
                    jitter_penalty_ms: d.jitter_penalty_ms,
                    local_queue_ms: d.local_queue_ms,
                    local_inference_ms: d.local_inference_ms,
                    local_total_ms: d.local_total_ms,
                    cloud_inference_ms: d.cloud_inference_ms,
                    offload_total_ms: d.offload_total_ms,
                    network_source: d.network_source,
                    endpoint: d.endpoint,
                    split_point: d.split_point,
                    upload_ms: d.upload_ms,
                    head_ms: d.head_ms,
                    local_congestion_ms: d.local_congestion_ms,
                    offload_congestion_ms: d.offload_congestion_ms,
                    loss_rate: d.loss_rate,
                    p_loss: d.p_loss,
                    loss_delay_ms: d.loss_delay_ms,
                }
            });
        }
    }
    Ok(rec)
}

/// The image's pixels as a lossless PNG.
fn to_png(encoded: &[u8]) -> Result<Vec<u8>> {
    let img = image::load_from_memory(encoded).context("decoding a held-out image")?;
    let mut out = std::io::Cursor::new(Vec::new());
    img.to_rgb8()
        .write_to(&mut out, image::ImageFormat::Png)
        .context("encoding PNG")?;
    Ok(out.into_inner())
}

/// Connects, prints `ready tasks=N`, waits for `go` on stdin, then sends
/// the stream on schedule and writes one record per task to `out`.
async fn run(a: DriverArgs) -> Result<()> {
    let scenario = Scenario::load(&a.scenario)?;
    let sets = datasets::workload::Workload::load()
        .context("the driver sends the models' held-out sets (models/heldout_*)")?;
    // Sample indices cycle through each set (see Workload::item).
    let tasks = plan(&scenario.workload, a.duration, SAMPLES)?;
    check_policy(&a.policy)?;
    // Every payload ready before the start: re-encoding is not send time.
    let mut items = Vec::with_capacity(tasks.len());
    for t in &tasks {
        let mut item = sets
            .item(&t.task, t.sample)
            .with_context(|| format!("no held-out set for task type {:?}", t.task))?;
        if t.format == "png" {
            item.payload = to_png(&item.payload)?;
        }
        items.push(item);
    }
    let client = connect(&a.edge).await?;
    println!("ready tasks={}", tasks.len());
    std::io::stdout().flush()?;
    let mut go = String::new();
    tokio::io::BufReader::new(tokio::io::stdin())
        .read_line(&mut go)
        .await?;
    if go.trim() != "go" {
        bail!("expected `go` on stdin, got {go:?}");
    }
    let t0 = Instant::now();
    let mut handles = Vec::with_capacity(tasks.len());
    for (t, item) in tasks.into_iter().zip(items) {
        tokio::time::sleep_until((t0 + Duration::from_secs_f64(t.at_ms / 1e3)).into()).await;
        let sent = Sent {
            label: match item.truth {
                Truth::Class(l) => Some(l),
                Truth::Boxes(_) => None,
            },
            payload: item.payload,
            planned: t,
        };
        handles.push(tokio::spawn(send_one(
            client.clone(),
            sent,
            a.policy.clone(),
            t0,
        )));
    }
    let mut records = Vec::with_capacity(handles.len());
    for h in handles {
        records.push(h.await??);
    }
    records.sort_by_key(|r| r.seq);
    let tmp = a.out.with_extension("tmp");
    let mut f = std::io::BufWriter::new(std::fs::File::create(&tmp)?);
    for r in &records {
        serde_json::to_writer(&mut f, r)?;
        f.write_all(b"\n")?;
    }
    f.into_inner()?.sync_all()?;
    std::fs::rename(&tmp, &a.out)?;
    let ok = records.iter().filter(|r| r.completed()).count();
    println!(
        "done sent={} completed={ok} wall_s={:.1}",
        records.len(),
        t0.elapsed().as_secs_f64()
    );
    Ok(())
}

/// A fixed amount of CPU work (no memory traffic, nothing to optimize away).
fn cpu_job(iters: u64) -> u64 {
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    for i in 0..iters {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x = x.wrapping_add(i);
    }
    std::hint::black_box(x)
}

/// Wall time (ms) of `reps` runs of the job, `gap` apart, sorted.
/// CPU time this thread has used.
fn thread_cpu_time() -> Duration {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes into the timespec we own.
    unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32)
}

/// (wall ms, CPU ms) of each of `reps` runs of the job, `gap` apart: the
/// CPU time is the work itself, whatever else competes for the cores.
fn calibrate(iters: u64, reps: usize, gap: Duration) -> Vec<(f64, f64)> {
    (0..reps)
        .map(|_| {
            std::thread::sleep(gap);
            let (t, c) = (Instant::now(), thread_cpu_time());
            cpu_job(iters);
            let cpu = thread_cpu_time() - c;
            (t.elapsed().as_secs_f64() * 1e3, cpu.as_secs_f64() * 1e3)
        })
        .collect()
}

fn min(v: impl Iterator<Item = f64>) -> f64 {
    v.fold(f64::INFINITY, f64::min)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_map_to_the_wire() {
        assert_eq!(priority("high").unwrap(), proto::Priority::High);
        assert!(priority("urgent").is_err());
        assert_eq!(
            task_type("nlp_analysis").unwrap(),
            proto::TaskType::NlpAnalysis
        );
        assert!(task_type("video").is_err());
        for name in Policy::NAMES {
            check_policy(name).unwrap();
        }
        assert!(check_policy("random").is_err());
    }

    #[test]
    fn cpu_job_scales_with_work() {
        let small = calibrate(200_000, 3, Duration::ZERO);
        let big = calibrate(2_000_000, 3, Duration::ZERO);
        // Least CPU time of three: the job is not optimized away and costs
        // what its size says, whatever else runs.
        let (s, b) = (min(small.iter().map(|r| r.1)), min(big.iter().map(|r| r.1)));
        assert!(b > s * 5.0 && s > 0.0, "{small:?} {big:?}");
        // Wall time is never below the CPU time of a single thread.
        assert!(big.iter().all(|(w, c)| w + 0.05 >= *c), "{big:?}");
    }
}
