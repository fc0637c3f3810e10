//! `bench-throughput`: the edge agent's own per-task costs, against a bare
//! gRPC round trip on the same machine (issue 12, item 3).
//!
//! - `run`: starts the real `agent cloud` and `agent edge` (release
//!   binaries beside this one) on loopback and a bare echo service
//!   (`echo`, this binary), then drives the edge's task API and the echo in
//!   a closed loop at several concurrency levels, alternating the two in
//!   rounds; per round: tasks/s, latency p50/p99/max, per-task overhead
//!   (end to end minus the inference time the edge reports), CPU per task
//!   of the serving process, peak RSS of edge and cloud. Cases: the digits
//!   model (trivial, ~40 us) run locally, the same offloaded, and each
//!   workload model (image, detection, text) run locally. Writes the
//!   Markdown report and the JSON data; the last stdout line is the JSON
//!   headline (the trivial model at 1 and 16 in flight).
//! - `echo`: a tonic `EdgeAIService` that answers every request at once.

use anyhow::{bail, Context, Result};
use bench::support::procs::{self, Proc};
use bench::support::stamp;
use bench::throughput::{self, Round, Sample, StackMemory};
use clap::{Parser, Subcommand};
use futures::StreamExt;
use proto::edge_ai_service_server::{EdgeAiService, EdgeAiServiceServer};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::io::AsyncBufReadExt;

#[derive(Parser)]
#[command(
    name = "bench-throughput",
    about = "Edge agent throughput and per-task overhead vs a bare gRPC echo"
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Run every case; print the table, and the headline JSON as the last line.
    Run {
        /// Fewer levels and shorter rounds (about 3 minutes).
        #[arg(long)]
        quick: bool,
        /// Print only the JSON headline on stdout (the last line either way).
        #[arg(long)]
        json: bool,
        /// Rounds per level (each: one agent round and one echo round).
        #[arg(long)]
        rounds: Option<usize>,
        /// Seconds per round.
        #[arg(long)]
        seconds: Option<f64>,
        /// Only these cases (comma-separated: digits-local, digits-offload,
        /// image-local, detect-local, text-local, image-batching).
        #[arg(long, value_delimiter = ',')]
        only: Vec<String>,
        /// Write the Markdown report here (e.g. bench/results/throughput.md).
        #[arg(long)]
        out: Option<PathBuf>,
        /// Write every round and the summaries as JSON here.
        #[arg(long)]
        json_out: Option<PathBuf>,
        /// The command line to print in the report (default: this one).
        #[arg(long)]
        command: Option<String>,
        /// Where `agent` is (default: this program's folder).
        #[arg(long)]
        bin_dir: Option<PathBuf>,
        /// The agents' log level (their stderr goes to the work folder).
        #[arg(long, default_value = "warn")]
        agent_log: String,
        /// The edge's local workers (default: the configuration's, 1).
        #[arg(long)]
        edge_workers: Option<usize>,
    },
    /// Serve the bare echo on `listen` until stdin closes.
    Echo {
        #[arg(long, default_value = "127.0.0.1:0")]
        listen: String,
    },
}

fn main() -> Result<()> {
    match Cli::parse().cmd {
        Cmd::Echo { listen } => tokio::runtime::Runtime::new()?.block_on(echo(&listen)),
        Cmd::Run {
            quick,
            json,
            rounds,
            seconds,
            only,
            out,
            json_out,
            command,
            bin_dir,
            agent_log,
            edge_workers,
        } => {
            procs::install_signal_cleanup()?;
            let bin_dir = match bin_dir {
                Some(d) => d,
                None => std::env::current_exe()?
                    .parent()
                    .context("the program's folder")?
                    .to_path_buf(),
            };
            let o = Options {
                quick,
                json,
                rounds: rounds.unwrap_or(if quick { 3 } else { 5 }).max(1),
                seconds: seconds.unwrap_or(if quick { 1.5 } else { 5.0 }),
                only,
                out,
                json_out,
                command: command.unwrap_or_else(|| std::env::args().collect::<Vec<_>>().join(" ")),
                agent: bin_dir.join("agent"),
                agent_log,
                edge_workers,
            };
            run(&o)
        }
    }
}

// ---------------------------------------------------------------- echo

struct Echo;

#[tonic::async_trait]
impl EdgeAiService for Echo {
    async fn offload_task(
        &self,
        req: tonic::Request<proto::TaskRequest>,
    ) -> Result<tonic::Response<proto::TaskResponse>, tonic::Status> {
        let r = req.into_inner();
        Ok(tonic::Response::new(proto::TaskResponse {
            task_id: r.id,
            success: true,
            processed_by: "echo".into(),
            ..Default::default()
        }))
    }
}

/// The bare service: tonic's defaults, the same message limit and
/// TCP_NODELAY as the edge's task API, on a multi-threaded runtime like it.
async fn echo(listen: &str) -> Result<()> {
    let l = tokio::net::TcpListener::bind(listen).await?;
    println!("echo listening {}", l.local_addr()?);
    let incoming = tokio_stream::wrappers::TcpListenerStream::new(l).map(|c| {
        c.inspect(|s| {
            let _ = s.set_nodelay(true);
        })
    });
    let stop = async {
        let mut stdin = tokio::io::BufReader::new(tokio::io::stdin()).lines();
        while let Ok(Some(_)) = stdin.next_line().await {}
    };
    tonic::transport::Server::builder()
        .add_service(EdgeAiServiceServer::new(Echo).max_decoding_message_size(16 << 20))
        .serve_with_incoming_shutdown(incoming, stop)
        .await?;
    Ok(())
}

// ---------------------------------------------------------------- run

struct Options {
    quick: bool,
    json: bool,
    rounds: usize,
    seconds: f64,
    only: Vec<String>,
    out: Option<PathBuf>,
    json_out: Option<PathBuf>,
    command: String,
    agent: PathBuf,
    agent_log: String,
    edge_workers: Option<usize>,
}

/// One case: what the edge runs and the payloads it gets.
struct Case {
    name: &'static str,
    task_type: proto::TaskType,
    payloads: Vec<Vec<u8>>,
    levels: Vec<usize>,
}

fn wanted(o: &Options, name: &str) -> bool {
    o.only.is_empty() || o.only.iter().any(|n| n == name)
}

/// The digits test set's first 64 images (raw 8x8 grayscale, 64 bytes).
fn digits_payloads() -> Result<Vec<Vec<u8>>> {
    let set = datasets::digits::load_default().context("models/digits_test.bin")?;
    Ok(set.into_iter().take(64).map(|s| s.pixels).collect())
}

/// The first 64 items of a held-out set, as the scenario driver sends them.
fn workload_payloads(sets: &datasets::workload::Workload, task: &str) -> Result<Vec<Vec<u8>>> {
    (0..64)
        .map(|i| {
            sets.item(task, i)
                .map(|it| it.payload)
                .with_context(|| format!("no held-out {task} item"))
        })
        .collect()
}

fn model_path(rel: &str) -> Result<String> {
    let p = datasets::resolve(Path::new(rel), None);
    if !p.exists() {
        bail!("{} missing (models/README.md)", p.display());
    }
    Ok(p.display().to_string())
}

/// The digits models on both sides (as `Config::with_digits_models`), the
/// passive probe off.
fn digits_config() -> Result<String> {
    Ok(format!(
        "[edge]\ncloud_expected_ms = 2.0\n\n[edge.probe]\npassive = false\n\n\
         [edge.models.image_classification]\npath = {:?}\nname = \"digits_edge\"\nexpected_ms = 0.2\n\n\
         [cloud.models.image_classification]\npath = {:?}\nname = \"digits_cloud\"\nexpected_ms = 1.0\n",
        model_path("models/digits_edge.pt")?,
        model_path("models/digits_cloud.pt")?
    ))
}

/// The default configuration (the workload models), the passive probe off.
fn workload_config() -> String {
    "[edge.probe]\npassive = false\n".into()
}

fn field(line: &str, key: &str) -> Result<String> {
    line.split_whitespace()
        .find_map(|w| w.strip_prefix(key).and_then(|v| v.strip_prefix('=')))
        .map(str::to_string)
        .with_context(|| format!("no {key}= in {line:?}"))
}

/// CPU time (user + system) of a process, from /proc/PID/stat.
fn cpu_time(pid: u32) -> Result<Duration> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    // Fields after the command name (which may hold spaces) end with ')'.
    let rest = stat.rsplit_once(')').context("/proc/PID/stat")?.1;
    let f: Vec<&str> = rest.split_whitespace().collect();
    // utime and stime are fields 14 and 15 of the line: 12 and 13 here.
    let ticks: u64 = f[11].parse::<u64>()? + f[12].parse::<u64>()?;
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as u64;
    Ok(Duration::from_nanos(ticks * 1_000_000_000 / hz))
}

/// Resident memory of a process (KiB), from /proc/PID/status.
fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        })
        .unwrap_or(0)
}

/// Samples the peak RSS of some processes every 100 ms until dropped.
struct RssPeak {
    stop: Arc<AtomicBool>,
    peaks: Arc<Vec<AtomicU64>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl RssPeak {
    fn start(pids: Vec<u32>) -> RssPeak {
        let stop = Arc::new(AtomicBool::new(false));
        let peaks: Arc<Vec<AtomicU64>> = Arc::new(pids.iter().map(|_| AtomicU64::new(0)).collect());
        let (s, p) = (stop.clone(), peaks.clone());
        let thread = std::thread::spawn(move || loop {
            for (pid, peak) in pids.iter().zip(p.iter()) {
                peak.fetch_max(rss_kib(*pid), Ordering::Relaxed);
            }
            if s.load(Ordering::Relaxed) {
                break;
            }
            std::thread::sleep(Duration::from_millis(100));
        });
        RssPeak {
            stop,
            peaks,
            thread: Some(thread),
        }
    }

    fn finish(mut self) -> Vec<u64> {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        self.peaks
            .iter()
            .map(|p| p.load(Ordering::Relaxed))
            .collect()
    }
}

/// What a closed-loop round measured.
struct Measured {
    samples: Vec<Sample>,
    errors: usize,
    first_error: String,
    seconds: f64,
}

static NEXT_ID: AtomicU64 = AtomicU64::new(0);

fn request(t: proto::TaskType, payload: &[u8]) -> proto::TaskRequest {
    proto::TaskRequest {
        id: format!("tp-{}", NEXT_ID.fetch_add(1, Ordering::Relaxed)),
        r#type: t as i32,
        payload: payload.to_vec(),
        priority: proto::Priority::Medium as i32,
        deadline_unix_nano: 0,
        context: Default::default(),
        features: None,
    }
}

/// One task, payload `i`: its latency and what the answer reports.
async fn one(
    mut c: agent_net::task_api::TaskApiClient,
    t: proto::TaskType,
    payloads: Arc<Vec<Vec<u8>>>,
    i: usize,
) -> Result<Sample, String> {
    let req = request(t, &payloads[i % payloads.len()]);
    let started = Instant::now();
    let answer = c.offload_task(req).await;
    let latency_us = started.elapsed().as_secs_f64() * 1e6;
    match answer {
        Ok(r) if r.get_ref().success => {
            let r = r.into_inner();
            Ok(Sample {
                latency_us,
                inference_us: r.inference_nano as f64 / 1e3,
                queue_us: r.queue_nano as f64 / 1e3,
            })
        }
        Ok(r) => Err(r.into_inner().error_message),
        Err(s) => Err(format!("{:?}: {}", s.code(), s.message())),
    }
}

/// `concurrency` submitters on one connection, each sending its next task
/// as soon as the last is answered, for `length` (tasks started before the
/// end are waited for); `warm` tasks first, not measured.
async fn closed_loop(
    client: &agent_net::task_api::TaskApiClient,
    t: proto::TaskType,
    payloads: &Arc<Vec<Vec<u8>>>,
    concurrency: usize,
    length: Duration,
    warm: usize,
) -> Result<Measured> {
    let warmed: Vec<_> = futures::stream::iter(0..warm)
        .map(|i| one(client.clone(), t, payloads.clone(), i))
        .buffer_unordered(concurrency)
        .collect()
        .await;
    if let Some(Err(e)) = warmed.iter().find(|r| r.is_err()) {
        bail!("warm-up: {e}");
    }
    let start = Instant::now();
    let end = start + length;
    let workers: Vec<_> = (0..concurrency)
        .map(|w| {
            let client = client.clone();
            let payloads = payloads.clone();
            tokio::spawn(async move {
                let (mut ok, mut errors, mut first) = (Vec::new(), 0usize, String::new());
                let mut i = w;
                while Instant::now() < end {
                    match one(client.clone(), t, payloads.clone(), i).await {
                        Ok(s) => ok.push(s),
                        Err(e) => {
                            errors += 1;
                            if first.is_empty() {
                                first = e;
                            }
                        }
                    }
                    i += concurrency;
                }
                (ok, errors, first)
            })
        })
        .collect();
    let mut m = Measured {
        samples: Vec::new(),
        errors: 0,
        first_error: String::new(),
        seconds: 0.0,
    };
    for w in workers {
        let (ok, errors, first) = w.await?;
        m.samples.extend(ok);
        m.errors += errors;
        if m.first_error.is_empty() {
            m.first_error = first;
        }
    }
    m.seconds = start.elapsed().as_secs_f64();
    Ok(m)
}

/// A service under test: its address and the processes whose CPU and
/// memory count (the serving one first).
struct Target {
    service: &'static str,
    addr: String,
    client: agent_net::task_api::TaskApiClient,
    pids: Vec<u32>,
}

#[allow(clippy::too_many_arguments)]
fn measure_round(
    rt: &tokio::runtime::Runtime,
    target: &Target,
    case: &Case,
    payloads: &Arc<Vec<Vec<u8>>>,
    concurrency: usize,
    round: usize,
    length: Duration,
) -> Result<Round> {
    let warm = concurrency.max(8);
    let cpu0: Vec<Duration> = target
        .pids
        .iter()
        .map(|p| cpu_time(*p))
        .collect::<Result<_>>()?;
    let rss = RssPeak::start(target.pids.clone());
    let m = rt.block_on(closed_loop(
        &target.client,
        case.task_type,
        payloads,
        concurrency,
        length,
        warm,
    ));
    let peaks = rss.finish();
    let m = m.with_context(|| format!("{} at {} ({})", case.name, target.service, target.addr))?;
    let cpu1: Vec<Duration> = target
        .pids
        .iter()
        .map(|p| cpu_time(*p))
        .collect::<Result<_>>()?;
    if m.samples.is_empty() {
        bail!(
            "{} {}: no task answered ({} errors: {})",
            case.name,
            target.service,
            m.errors,
            m.first_error
        );
    }
    if m.errors > 0 {
        eprintln!(
            "{} {} c={concurrency}: {} errors, first: {}",
            case.name, target.service, m.errors, m.first_error
        );
    }
    // The warm-up's CPU is in the delta too: count its tasks.
    let n = m.samples.len();
    let per_task = |i: usize| (cpu1[i] - cpu0[i]).as_secs_f64() * 1e6 / (n + warm) as f64;
    let p = throughput::percentiles(&m.samples).expect("samples");
    let agent = target.service == "agent";
    let r1 = |v: f64| (v * 10.0).round() / 10.0;
    let row = Round {
        case: case.name.into(),
        service: target.service.into(),
        concurrency,
        round,
        tasks: n,
        errors: m.errors,
        seconds: (m.seconds * 1000.0).round() / 1000.0,
        tasks_per_s: r1(n as f64 / m.seconds),
        p50_us: r1(p.latency.0),
        p99_us: r1(p.latency.1),
        max_us: r1(p.latency.2),
        overhead_p50_us: agent.then_some(r1(p.overhead.0)),
        overhead_p99_us: agent.then_some(r1(p.overhead.1)),
        beyond_queue_p50_us: agent.then_some(r1(p.beyond_queue.0)),
        beyond_queue_p99_us: agent.then_some(r1(p.beyond_queue.1)),
        inference_p50_us: agent.then_some(r1(p.inference_p50)),
        queue_p50_us: agent.then_some(r1(p.queue_p50)),
        cpu_us_per_task: r1(per_task(0)),
        cloud_cpu_us_per_task: (agent && target.pids.len() > 1).then(|| r1(per_task(1))),
        rss_kib: peaks[0],
        cloud_rss_kib: (target.pids.len() > 1).then(|| peaks[1]),
    };
    {
        eprintln!(
            "{:>15} {:>5} c={:<3} r{}: {:>7.0} tasks/s  p50 {:>7.0} us  p99 {:>7.0} us  max {:>7.0} us{}",
            row.case,
            row.service,
            concurrency,
            round,
            row.tasks_per_s,
            row.p50_us,
            row.p99_us,
            row.max_us,
            row.overhead_p50_us
                .map(|o| format!("  overhead p50 {o:.0} us  inference p50 {:.0} us  cpu {:.0} us/task", p.inference_p50, row.cpu_us_per_task))
                .unwrap_or_default()
        );
    }
    Ok(row)
}

/// The cloud and one edge, started with a configuration file.
struct Stack {
    cloud: Proc,
    edge: Proc,
    edge_addr: String,
}

struct Lab<'a> {
    o: &'a Options,
    dir: PathBuf,
    certs: PathBuf,
}

impl Lab<'_> {
    fn agent(&self, config: &Path) -> Command {
        let mut c = Command::new(&self.o.agent);
        c.arg("--config")
            .arg(config)
            .args(["--log", &self.o.agent_log, "--tls-dir"])
            .arg(&self.certs);
        c
    }

    fn start_cloud(&self, config: &Path, tag: &str) -> Result<(Proc, String, String)> {
        let mut c = self.agent(config);
        c.args([
            "cloud",
            "--listen-grpc",
            "127.0.0.1:0",
            "--listen-quic",
            "127.0.0.1:0",
        ]);
        let cloud = Proc::spawn(
            &format!("cloud ({tag})"),
            c,
            &self.dir.join(format!("cloud.{tag}.log")),
        )?;
        let line = cloud.wait_line(
            |l| l.starts_with("cloud listening"),
            Duration::from_secs(60),
        )?;
        let (grpc, quic) = (field(&line, "grpc")?, field(&line, "quic")?);
        Ok((cloud, grpc, quic))
    }

    fn start_edge(
        &self,
        config: &Path,
        grpc: &str,
        quic: &str,
        policy: &str,
        tag: &str,
    ) -> Result<(Proc, String)> {
        let mut c = self.agent(config);
        c.args(["edge", "--listen", "127.0.0.1:0"])
            .args(["--cloud-grpc", grpc, "--cloud-quic", quic])
            .args(["--policy", policy]);
        if let Some(w) = self.o.edge_workers {
            c.args(["--workers", &w.to_string()]);
        }
        let edge = Proc::spawn(
            &format!("edge ({tag})"),
            c,
            &self.dir.join(format!("edge.{tag}.log")),
        )?;
        let line = edge.wait_line(|l| l.starts_with("edge listening"), Duration::from_secs(60))?;
        let addr = field(&line, "api")?;
        Ok((edge, addr))
    }
}

fn date_utc() -> String {
    Command::new("date")
        .args(["-u", "+%Y-%m-%d %H:%M UTC"])
        .output()
        .map(|d| String::from_utf8_lossy(&d.stdout).trim().to_string())
        .unwrap_or_default()
}

fn mib(kib: u64) -> f64 {
    (kib as f64 / 1024.0 * 10.0).round() / 10.0
}

/// Runs the cases of one stack (the same cloud and edge) level by level,
/// alternating agent and echo rounds.
#[allow(clippy::too_many_arguments)]
fn run_cases(
    o: &Options,
    rt: &tokio::runtime::Runtime,
    stack: &Stack,
    echo: &Target,
    cases: &[Case],
    label: &str,
    rows: &mut Vec<Round>,
    memory: &mut Vec<StackMemory>,
) -> Result<()> {
    let (edge_pid, cloud_pid) = (stack.edge.pid(), stack.cloud.pid());
    let client = rt.block_on(connect(&stack.edge_addr))?;
    let agent = Target {
        service: "agent",
        addr: stack.edge_addr.clone(),
        client,
        pids: vec![edge_pid, cloud_pid],
    };
    // Settle: the models loaded, the active probe running.
    std::thread::sleep(Duration::from_millis(500));
    let (edge_idle, cloud_idle) = (rss_kib(edge_pid), rss_kib(cloud_pid));
    let start = rows.len();
    let length = Duration::from_secs_f64(o.seconds);
    for case in cases {
        let payloads = Arc::new(case.payloads.clone());
        for &c in &case.levels {
            for r in 0..o.rounds {
                let order: [&Target; 2] = if r % 2 == 0 {
                    [&agent, echo]
                } else {
                    [echo, &agent]
                };
                for t in order {
                    rows.push(measure_round(rt, t, case, &payloads, c, r, length)?);
                }
            }
        }
    }
    close(rt, agent);
    std::thread::sleep(Duration::from_millis(500));
    let agent_rows = rows[start..].iter().filter(|r| r.service == "agent");
    let (mut edge_peak, mut cloud_peak) = (edge_idle, cloud_idle);
    for r in agent_rows {
        edge_peak = edge_peak.max(r.rss_kib);
        cloud_peak = cloud_peak.max(r.cloud_rss_kib.unwrap_or(0));
    }
    memory.push(StackMemory {
        stack: label.into(),
        edge_idle_mib: mib(edge_idle),
        edge_peak_mib: mib(edge_peak),
        edge_after_mib: mib(rss_kib(edge_pid)),
        cloud_idle_mib: mib(cloud_idle),
        cloud_peak_mib: mib(cloud_peak),
        cloud_after_mib: mib(rss_kib(cloud_pid)),
    });
    Ok(())
}

/// Drops a target's client and runs the runtime until its connection has
/// closed: this driver's runtime runs only inside `block_on`, and an agent
/// stopping with a client connection still open waits out its shutdown
/// grace for it.
fn close(rt: &tokio::runtime::Runtime, t: Target) {
    rt.block_on(async move {
        drop(t);
        tokio::time::sleep(Duration::from_millis(100)).await;
    });
}

async fn connect(addr: &str) -> Result<agent_net::task_api::TaskApiClient> {
    let t0 = Instant::now();
    loop {
        match agent_net::task_api::connect(addr).await {
            Ok(c) => return Ok(c),
            Err(e) if t0.elapsed() > Duration::from_secs(10) => return Err(e),
            Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    }
}

fn run(o: &Options) -> Result<()> {
    if !o.agent.exists() {
        bail!(
            "{} missing: cargo build --release -p agent",
            o.agent.display()
        );
    }
    let commit = stamp::source_commit();
    let started = Instant::now();
    // Certificates and the agents' logs (their tails go into errors);
    // removed when `run` returns, on every path.
    let tmp = tempfile::Builder::new()
        .prefix("bench-throughput-")
        .tempdir()?;
    let dir = tmp.path().to_path_buf();
    let certs = dir.join("certs");
    let out = Command::new(&o.agent)
        .args(["--log", "warn", "gen-certs", "--out"])
        .arg(&certs)
        .output()?;
    if !out.status.success() {
        bail!("agent gen-certs: {}", String::from_utf8_lossy(&out.stderr));
    }
    let lab = Lab {
        o,
        dir: dir.clone(),
        certs,
    };
    // One thread: on a small machine a driver with a worker per core
    // competes with the agent it measures (at 16 in flight its p99 was
    // about 2 ms higher with two workers).
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;

    let mut echo_cmd = Command::new(std::env::current_exe()?);
    echo_cmd.arg("echo");
    let echo_proc = Proc::spawn("echo", echo_cmd, &dir.join("echo.log"))?;
    let line = echo_proc.wait_line(|l| l.starts_with("echo listening"), Duration::from_secs(10))?;
    let echo_addr = line
        .split_whitespace()
        .nth(2)
        .context("echo address")?
        .to_string();
    let echo = Target {
        service: "echo",
        client: rt.block_on(connect(&echo_addr))?,
        addr: echo_addr,
        pids: vec![echo_proc.pid()],
    };

    let trivial_levels = vec![1, 4, 16, 64];
    let model_levels = if o.quick { vec![1, 16] } else { vec![1, 4, 16] };
    let offload_levels = if o.quick {
        vec![1, 16]
    } else {
        vec![1, 4, 16, 64]
    };
    let (mut rows, mut memory) = (Vec::new(), Vec::new());
    let mut described: Vec<(String, String)> = Vec::new();

    // The trivial model: digits on both sides.
    let digits_cfg = dir.join("digits.toml");
    std::fs::write(&digits_cfg, digits_config()?)?;
    let digits = digits_payloads()?;
    for (name, policy, levels, describe) in [
        (
            "digits-local",
            "always-local",
            trivial_levels.clone(),
            "the digits model (8x8 grayscale, 64-byte payloads from the digits test set), \
             policy always-local: the trivial model",
        ),
        (
            "digits-offload",
            "always-offload",
            offload_levels,
            "the same, policy always-offload: every task to the cloud (QUIC, mutual TLS), \
             the cloud's digits model; the reported inference time is the cloud's",
        ),
    ] {
        if !wanted(o, name) {
            continue;
        }
        let (cloud, grpc, quic) = lab.start_cloud(&digits_cfg, name)?;
        let (edge, edge_addr) = lab.start_edge(&digits_cfg, &grpc, &quic, policy, name)?;
        let stack = Stack {
            cloud,
            edge,
            edge_addr,
        };
        let case = Case {
            name,
            task_type: proto::TaskType::ImageClassification,
            payloads: digits.clone(),
            levels,
        };
        described.push((name.into(), describe.into()));
        run_cases(
            o,
            &rt,
            &stack,
            &echo,
            std::slice::from_ref(&case),
            &format!("digits models, {policy}"),
            &mut rows,
            &mut memory,
        )?;
        stop(stack)?;
    }

    // The workload models (the default configuration).
    let model_cases = [
        (
            "image-local",
            "image_classification",
            proto::TaskType::ImageClassification,
            "image classification (`image_edge`, 96x96, held-out JPEG/PNG payloads), always-local",
        ),
        (
            "detect-local",
            "object_detection",
            proto::TaskType::ObjectDetection,
            "object detection (`detect_edge`, 256x256 scenes), always-local",
        ),
        (
            "text-local",
            "nlp_analysis",
            proto::TaskType::NlpAnalysis,
            "review sentiment (`text_edge`, held-out reviews), always-local",
        ),
    ];
    if model_cases.iter().any(|c| wanted(o, c.0)) {
        let sets =
            datasets::workload::Workload::load().context("the held-out sets (models/heldout_*)")?;
        let mut cases = Vec::new();
        for (name, task, t, describe) in model_cases {
            if !wanted(o, name) {
                continue;
            }
            described.push((name.into(), describe.into()));
            cases.push(Case {
                name,
                task_type: t,
                payloads: workload_payloads(&sets, task)?,
                levels: model_levels.clone(),
            });
        }
        let cfg = dir.join("workload.toml");
        std::fs::write(&cfg, workload_config())?;
        let (cloud, grpc, quic) = lab.start_cloud(&cfg, "workload")?;
        let (edge, edge_addr) = lab.start_edge(&cfg, &grpc, &quic, "always-local", "workload")?;
        let stack = Stack {
            cloud,
            edge,
            edge_addr,
        };
        run_cases(
            o,
            &rt,
            &stack,
            &echo,
            &cases,
            "workload models, always-local",
            &mut rows,
            &mut memory,
        )?;
        stop(stack)?;
    }
    // Dynamic batching: the image model without and with batching, two
    // edges (one cloud) driven in alternating rounds.
    if wanted(o, "image-batching") {
        let sets =
            datasets::workload::Workload::load().context("the held-out sets (models/heldout_*)")?;
        let payloads = Arc::new(workload_payloads(&sets, "image_classification")?);
        let plain_cfg = dir.join("batching-off.toml");
        std::fs::write(&plain_cfg, workload_config())?;
        let batched_cfg = dir.join("batching-on.toml");
        std::fs::write(&batched_cfg, batching_config(o, BATCH, BATCH_DELAY_MS)?)?;
        let (mut cloud, grpc, quic) = lab.start_cloud(&plain_cfg, "batching")?;
        let (mut plain, plain_addr) =
            lab.start_edge(&plain_cfg, &grpc, &quic, "always-local", "batching-off")?;
        let (mut batched, batched_addr) =
            lab.start_edge(&batched_cfg, &grpc, &quic, "always-local", "batching-on")?;
        let target = |service, addr: &str, pid| -> Result<Target> {
            Ok(Target {
                service,
                client: rt.block_on(connect(addr))?,
                addr: addr.to_string(),
                pids: vec![pid],
            })
        };
        let targets = [
            (
                Case {
                    name: "image-unbatched",
                    task_type: proto::TaskType::ImageClassification,
                    payloads: Vec::new(),
                    levels: Vec::new(),
                },
                target("agent", &plain_addr, plain.pid())?,
            ),
            (
                Case {
                    name: "image-batched",
                    task_type: proto::TaskType::ImageClassification,
                    payloads: Vec::new(),
                    levels: Vec::new(),
                },
                target("agent", &batched_addr, batched.pid())?,
            ),
        ];
        described.push((
            "image-unbatched".into(),
            "the image model (`image_edge`), always-local, without batching; beside it, in \
             alternating rounds on a second edge"
                .into(),
        ));
        described.push((
            "image-batched".into(),
            format!(
                "the same with dynamic batching (`max_batch = {BATCH}`, `max_batch_delay_ms = \
                 {BATCH_DELAY_MS}`)"
            ),
        ));
        std::thread::sleep(Duration::from_millis(500));
        let length = Duration::from_secs_f64(o.seconds);
        let levels: &[usize] = if o.quick { &[16] } else { &[16, 64] };
        for &c in levels {
            for r in 0..o.rounds {
                let order = if r % 2 == 0 { [0, 1] } else { [1, 0] };
                for i in order {
                    let (case, t) = &targets[i];
                    rows.push(measure_round(&rt, t, case, &payloads, c, r, length)?);
                }
            }
        }
        for (_, t) in targets {
            close(&rt, t);
        }
        plain.stop(Duration::from_secs(15))?;
        batched.stop(Duration::from_secs(15))?;
        cloud.stop(Duration::from_secs(10))?;
    }
    drop(echo_proc);

    let summaries = throughput::summarize(&rows);
    let h1 = throughput::headline(&summaries, "digits-local", 1);
    let h16 = throughput::headline(&summaries, "digits-local", 16);
    let mut notes = target_notes(h1.as_ref(), h16.as_ref());
    notes.extend(breakdown_notes(&summaries));
    let batching = batching_notes(&summaries);
    notes.extend(batching.iter().map(|b| b.note.clone()));
    if !o.json {
        for n in &notes {
            println!("{n}");
        }
    }
    let date = date_utc();
    let machine = stamp::machine();
    if let Some(out) = &o.out {
        let md = throughput::render(&throughput::Report {
            command: &o.command,
            date_utc: &date,
            commit: &commit,
            machine: &machine,
            quick: o.quick,
            rounds: o.rounds,
            round_seconds: o.seconds,
            cases: &described,
            rows: &rows,
            memory: &memory,
            notes: &notes,
        });
        std::fs::write(out, md).with_context(|| format!("writing {}", out.display()))?;
        eprintln!("wrote {}", out.display());
    }
    if let Some(out) = &o.json_out {
        let data = serde_json::json!({
            "command": o.command,
            "date_utc": date,
            "commit": commit,
            "machine": machine,
            "quick": o.quick,
            "rounds": o.rounds,
            "round_seconds": o.seconds,
            "summaries": summaries,
            "memory": memory,
            "rows": rows,
        });
        std::fs::write(out, serde_json::to_string_pretty(&data)? + "\n")
            .with_context(|| format!("writing {}", out.display()))?;
        eprintln!("wrote {}", out.display());
    }
    eprintln!("done in {:.0} s", started.elapsed().as_secs_f64());
    let mut last = match &h1 {
        Some(h) => serde_json::to_value(h)?,
        None => serde_json::json!({}),
    };
    last["commit"] = commit.into();
    last["at_16"] = serde_json::to_value(&h16)?;
    last["memory"] = serde_json::to_value(&memory)?;
    last["batching"] = serde_json::to_value(&batching)?;
    println!("{last}");
    Ok(())
}

/// The targets against the trivial model's figures.
fn target_notes(
    h1: Option<&throughput::Headline>,
    h16: Option<&throughput::Headline>,
) -> Vec<String> {
    let mut n = Vec::new();
    let verdict = |ok: bool| if ok { "met" } else { "missed" };
    if let Some(h) = h1 {
        n.push(format!(
            "Target, agent overhead at most 2x the bare echo round trip (digits-local, 1 in \
             flight): overhead p50 {:.0} µs vs echo p50 {:.0} µs, ratio {:.2}: {}.",
            h.overhead_us_p50,
            h.echo_us_p50,
            h.overhead_over_echo,
            verdict(h.overhead_over_echo <= 2.0)
        ));
    }
    if let Some(h) = h16 {
        n.push(format!(
            "Target, trivial model at 16 in flight: p99 {:.2} ms (target < 5 ms): {}; max \
             {:.2} ms (target < 20 ms): {}. Ratio at 16 in flight: {:.2}.",
            h.p99_ms,
            verdict(h.p99_ms < 5.0),
            h.max_ms,
            verdict(h.max_ms < 20.0),
            h.overhead_over_echo
        ));
    }
    n
}

/// Where the trivial model's time goes, from the same figures: the wait
/// for the worker, the rest of the overhead, CPU per task against the echo's.
fn breakdown_notes(summaries: &[throughput::Summary]) -> Vec<String> {
    summaries
        .iter()
        .filter(|s| s.case == "digits-local")
        .map(|s| {
            format!(
                "digits-local at {} in flight: of the {:.0} µs overhead (p50), {:.0} µs is the \
                 wait for the worker (queue_nano) and {:.0} µs the rest (the echo's whole round \
                 trip: {:.0} µs); inference {:.0} µs. The edge burns {:.0} µs of CPU per task \
                 (the echo {:.0} µs), which bounds it at about {:.0} tasks/s per core; it served \
                 {:.0}.",
                s.concurrency,
                s.overhead_p50_us.1,
                s.queue_p50_us.1,
                s.beyond_queue_p50_us.1,
                s.echo_p50_us.1,
                s.inference_p50_us.1,
                s.cpu_us_per_task.1,
                s.echo_cpu_us_per_task.1,
                1e6 / s.cpu_us_per_task.1,
                s.tasks_per_s.1
            )
        })
        .collect()
}

/// Dynamic batching in the comparison: most tasks per batch, longest wait.
const BATCH: usize = 16;
const BATCH_DELAY_MS: f64 = 2.0;

/// The default configuration with the edge's image model batching: the
/// agent's own defaults (`agent print-config`) with the two settings set.
fn batching_config(o: &Options, max_batch: usize, delay_ms: f64) -> Result<String> {
    let out = Command::new(&o.agent).arg("print-config").output()?;
    if !out.status.success() {
        bail!(
            "agent print-config: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let mut cfg: toml::Table = toml::from_str(&String::from_utf8(out.stdout)?)?;
    let image = cfg
        .get_mut("edge")
        .and_then(|e| e.get_mut("models"))
        .and_then(|m| m.get_mut("image_classification"))
        .and_then(toml::Value::as_table_mut)
        .context("no [edge.models.image_classification] in the defaults")?;
    image.insert("max_batch".into(), (max_batch as i64).into());
    image.insert("max_batch_delay_ms".into(), delay_ms.into());
    let probe = cfg
        .get_mut("edge")
        .and_then(|e| e.get_mut("probe"))
        .and_then(toml::Value::as_table_mut)
        .context("no [edge.probe] in the defaults")?;
    probe.insert("passive".into(), false.into());
    Ok(toml::to_string(&cfg)?)
}

/// Batching against none at one concurrency.
#[derive(serde::Serialize)]
struct BatchingVerdict {
    concurrency: usize,
    tasks_per_s_ratio: f64,
    unbatched_tasks_per_s: f64,
    batched_tasks_per_s: f64,
    unbatched_p99_ms: f64,
    batched_p99_ms: f64,
    #[serde(skip)]
    note: String,
}

/// The batching target: throughput at least 1.5x, p99 no worse.
fn batching_notes(summaries: &[throughput::Summary]) -> Vec<BatchingVerdict> {
    let find = |case: &str, c: usize| {
        summaries
            .iter()
            .find(|s| s.case == case && s.concurrency == c)
    };
    let mut levels: Vec<usize> = summaries
        .iter()
        .filter(|s| s.case == "image-batched")
        .map(|s| s.concurrency)
        .collect();
    levels.dedup();
    levels
        .into_iter()
        .filter_map(|c| {
            let (off, on) = (find("image-unbatched", c)?, find("image-batched", c)?);
            let ratio = on.tasks_per_s.1 / off.tasks_per_s.1;
            let verdict = |ok: bool| if ok { "met" } else { "missed" };
            let note = format!(
                "Target, batching (image model, {c} in flight, medians over alternating \
                 rounds): {:.0} tasks/s with batching against {:.0} without, {ratio:.2}x \
                 (target >= 1.5): {}; p99 {:.1} ms against {:.1} ms (no worse): {}.",
                on.tasks_per_s.1,
                off.tasks_per_s.1,
                verdict(ratio >= 1.5),
                on.p99_ms.1,
                off.p99_ms.1,
                verdict(on.p99_ms.1 <= off.p99_ms.1)
            );
            Some(BatchingVerdict {
                concurrency: c,
                tasks_per_s_ratio: ratio,
                unbatched_tasks_per_s: off.tasks_per_s.1,
                batched_tasks_per_s: on.tasks_per_s.1,
                unbatched_p99_ms: off.p99_ms.1,
                batched_p99_ms: on.p99_ms.1,
                note,
            })
        })
        .collect()
}

fn stop(mut s: Stack) -> Result<()> {
    s.edge.stop(Duration::from_secs(15))?;
    s.cloud.stop(Duration::from_secs(10))?;
    Ok(())
}
