//! `bench-transport`: QUIC vs gRPC, side by side in one run.
//!
//! Both transports are the agent's own offload clients (`QuicOffloader`,
//! `GrpcOffloader`) against the cloud service's own listeners, with mutual
//! TLS from a development CA made for the run. The cloud side answers with
//! a small response after checking the payload's size, so the figures are
//! the transports' and not a model's.
//!
//! - `run`: for each link (loopback; the jitter lab's lossy link when root),
//!   starts `serve` (in the lab's cloud namespace) and `client` (in its edge
//!   namespace), and collects the rows;
//! - `serve`: the cloud's listeners (gRPC and QUIC) over the size-checking handler;
//! - `client`: for each payload size, QUIC then gRPC: `requests` requests,
//!   `concurrency` in flight, per-request latency p50/p99 and throughput.

use agent_core::TaskError;
use agent_net::tls::{Side, TlsConfig};
use agent_net::{CloudListeners, Handler, ListenConfig};
use agent_net::{
    GrpcOffloader, OffloadConfig, OffloadRequest, Offloader, PacketCounts, QuicClientConfig,
    QuicOffloader,
};
use anyhow::{bail, Context, Result};
use bench::scenarios::stats::percentile;
use bench::support::stamp;
use bench::transport::{self, Row, QUIC_CUBIC};
use clap::{Parser, Subcommand};
use futures::StreamExt;
use jitter_lab::lab::Ready;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::process::{Child, Command};

const SIZES: [usize; 3] = [1024, 64 * 1024, 1024 * 1024];
const MAX_PAYLOAD: usize = 2 << 20;

#[derive(Parser)]
#[command(
    name = "bench-transport",
    about = "QUIC vs gRPC offload transport benchmark"
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Run every link and print the table (or, with --json, one JSON array on the last line).
    Run {
        /// Fewer requests per row (the whole run in about a minute or two).
        #[arg(long)]
        quick: bool,
        #[arg(long)]
        json: bool,
        /// The lossy link's scenario file (netem-tun).
        #[arg(long, default_value = "bench/transport-lossy.toml")]
        scenario: PathBuf,
        /// Loopback only (no namespaces, no root needed).
        #[arg(long)]
        loopback_only: bool,
        /// Rounds per link, each measuring both transports at every size.
        #[arg(long, default_value_t = 3)]
        rounds: usize,
        /// Write the Markdown report here (e.g. bench/results/transport.md).
        #[arg(long)]
        out: Option<PathBuf>,
        /// The command line to print in the report (default: this one).
        #[arg(long)]
        command: Option<String>,
    },
    /// Serve gRPC and QUIC over the size-checking handler.
    Serve {
        #[arg(long)]
        listen_grpc: String,
        #[arg(long)]
        listen_quic: String,
        /// Folder written by `agent gen-certs`.
        #[arg(long)]
        certs: PathBuf,
    },
    /// Measure both transports against a running `serve`; prints the rows as JSON.
    Client {
        #[arg(long)]
        grpc: String,
        #[arg(long)]
        quic: String,
        #[arg(long)]
        certs: PathBuf,
        /// Name of the link, for the rows.
        #[arg(long)]
        link: String,
        #[arg(long)]
        quick: bool,
        /// QUIC congestion controller (the agent's default unless given).
        #[arg(long)]
        quic_congestion: Option<String>,
    },
}

/// Answers every request with a small response naming the payload size it
/// received (the client checks it), like an inference result would be.
struct SizeCheck;

#[async_trait::async_trait]
impl Handler for SizeCheck {
    async fn handle(&self, req: proto::TaskRequest) -> Result<proto::TaskResponse, TaskError> {
        if req.payload.len() > MAX_PAYLOAD {
            return Err(TaskError::InvalidInput("payload too large".into()));
        }
        Ok(proto::TaskResponse {
            task_id: req.id,
            success: true,
            output: req.payload.len().to_string().into_bytes(),
            processed_by: "cloud".into(),
            ..Default::default()
        })
    }

    fn max_payload_bytes(&self) -> usize {
        MAX_PAYLOAD
    }
}

fn main() -> Result<()> {
    let cli = Cli::parse();
    let rt = tokio::runtime::Runtime::new()?;
    match cli.cmd {
        Cmd::Run {
            quick,
            json,
            scenario,
            loopback_only,
            rounds,
            out,
            command,
        } => {
            let o = RunOptions {
                quick,
                json,
                loopback_only,
                rounds: rounds.max(1),
                out,
                command: command.unwrap_or_else(|| std::env::args().collect::<Vec<_>>().join(" ")),
            };
            rt.block_on(run(&o, &scenario))
        }
        Cmd::Serve {
            listen_grpc,
            listen_quic,
            certs,
        } => rt.block_on(serve(&listen_grpc, &listen_quic, &certs)),
        Cmd::Client {
            grpc,
            quic,
            certs,
            link,
            quick,
            quic_congestion,
        } => rt.block_on(async {
            let rows = client(&grpc, &quic, &certs, &link, quick, quic_congestion).await?;
            println!("{}", serde_json::to_string(&rows)?);
            Ok(())
        }),
    }
}

async fn serve(listen_grpc: &str, listen_quic: &str, certs: &Path) -> Result<()> {
    let tls = TlsConfig::from_dir(certs, Side::Server)
        .load(Side::Server)?
        .context("TLS required")?;
    let listen = ListenConfig {
        grpc: listen_grpc.to_string(),
        quic: listen_quic.to_string(),
        max_concurrent_streams: 256,
    };
    let svc = CloudListeners::start(Arc::new(SizeCheck), &listen, Some(&tls)).await?;
    let quic = svc.quic_addr.context("QUIC listener")?;
    println!("serving grpc={} quic={quic}", svc.grpc_addr);
    // Until stdin closes (the parent goes away) or a signal.
    let mut stdin = BufReader::new(tokio::io::stdin()).lines();
    tokio::select! {
        _ = async { while let Ok(Some(_)) = stdin.next_line().await {} } => {}
        _ = tokio::signal::ctrl_c() => {}
    }
    svc.shutdown().await
}

/// Requests per row and requests in flight.
fn plan(size: usize, link: &str, quick: bool) -> (usize, usize) {
    let lossy = link != "loopback";
    let n = match (size, quick) {
        (s, true) if s >= 1 << 20 => 100,
        (s, true) if s >= 64 << 10 => 500,
        (_, true) => 2000,
        (s, false) if s >= 1 << 20 => 400,
        (s, false) if s >= 64 << 10 => 2000,
        (_, false) => 10_000,
    };
    // The lossy link is slower; keep the run's length in check.
    let n = if lossy { n / 2 } else { n };
    (n, 8)
}

async fn client(
    grpc: &str,
    quic: &str,
    certs: &Path,
    link: &str,
    quick: bool,
    quic_congestion: Option<String>,
) -> Result<Vec<Row>> {
    let tls = TlsConfig::from_dir(certs, Side::Client)
        .load(Side::Client)?
        .context("TLS required")?;
    let mut cfg = OffloadConfig {
        connect_timeout_ms: 3000,
        ..OffloadConfig::default()
    };
    if let Some(c) = quic_congestion {
        cfg.quic_congestion = c;
    }
    let max = 4 << 20;
    let quic_addr = quic
        .parse()
        .with_context(|| format!("QUIC address {quic}"))?;
    let quic_with = |congestion: &str| -> Result<Arc<dyn Offloader>> {
        Ok(Arc::new(QuicOffloader::new(
            quic_addr,
            &tls,
            QuicClientConfig {
                max_message: max,
                congestion: congestion.into(),
                ..cfg.quic_client("localhost")
            },
        )?))
    };
    let mut transports: Vec<(&str, Arc<dyn Offloader>)> =
        vec![("quic", quic_with(&cfg.quic_congestion)?)];
    // The same client with Cubic beside the agent's controller, in the
    // same rounds: what the choice of controller costs on each link.
    if cfg.quic_congestion != "cubic" {
        transports.push((QUIC_CUBIC, quic_with("cubic")?));
    }
    transports.push((
        "grpc",
        Arc::new(GrpcOffloader::new(
            grpc,
            Some(tls.grpc_client("localhost")),
            max,
            Duration::from_secs(3),
            OffloadConfig::default().grpc_keep_alive(),
        )?),
    ));
    let mut rows = Vec::new();
    for size in SIZES {
        let (n, concurrency) = plan(size, link, quick);
        for (name, o) in &transports {
            let row = measure(o.clone(), name, size, link, n, concurrency).await?;
            eprintln!(
                "{link:>8} {name:>10} {size:>8} B: p50 {:>8} us  p99 {:>8} us  {:>8.1} req/s  ({n} requests, {concurrency} in flight){}",
                row.p50_us,
                row.p99_us,
                row.rps,
                match (row.packets_sent, row.packets_lost) {
                    (Some(s), Some(l)) => format!("  packets sent {s}, lost {l}"),
                    _ => String::new(),
                }
            );
            rows.push(row);
        }
    }
    Ok(rows)
}

fn request(id: String, size: usize) -> OffloadRequest {
    OffloadRequest {
        request: proto::TaskRequest {
            id,
            r#type: proto::TaskType::ImageClassification as i32,
            // Not all zeros, so no layer can shortcut it.
            payload: (0..size).map(|i| (i % 251) as u8).collect(),
            priority: proto::Priority::Medium as i32,
            deadline_unix_nano: 0,
            context: Default::default(),
            features: None,
        },
        deadline: None,
    }
}

/// One request: its latency and, over QUIC, the connection's packet counts after it.
async fn one(
    o: &dyn Offloader,
    req: &OffloadRequest,
    size: usize,
) -> Result<(Duration, Option<PacketCounts>)> {
    let started = Instant::now();
    let reply = o
        .offload(req)
        .await
        .with_context(|| format!("request {}", req.request.id))?;
    let elapsed = started.elapsed();
    if reply.response.output != size.to_string().into_bytes() {
        bail!(
            "request {}: the server saw a different payload size",
            req.request.id
        );
    }
    Ok((elapsed, reply.packets))
}

/// Percentile of sorted latencies in microseconds (the benchmarks' one
/// definition, [`bench::scenarios::stats::percentile`]).
fn percentile_us(sorted: &[Duration], q: f64) -> u64 {
    let us: Vec<f64> = sorted.iter().map(|d| d.as_secs_f64() * 1e6).collect();
    percentile(&us, q).unwrap_or(0.0).round() as u64
}

async fn measure(
    o: Arc<dyn Offloader>,
    name: &str,
    size: usize,
    link: &str,
    n: usize,
    concurrency: usize,
) -> Result<Row> {
    // Warm-up: connection, TLS session, congestion window.
    let mut before = None;
    for i in 0..concurrency {
        before = one(o.as_ref(), &request(format!("warm-{i}"), size), size)
            .await?
            .1;
    }
    let reqs: Vec<OffloadRequest> = (0..n)
        .map(|i| request(format!("{name}-{size}-{i}"), size))
        .collect();
    let started = Instant::now();
    let done: Vec<(Duration, Option<PacketCounts>)> = futures::stream::iter(reqs.iter())
        .map(|r| one(o.as_ref(), r, size))
        .buffer_unordered(concurrency)
        .collect::<Vec<_>>()
        .await
        .into_iter()
        .collect::<Result<_>>()?;
    let total = started.elapsed();
    // The counters are cumulative per connection: the largest seen is the last.
    let after = done
        .iter()
        .filter_map(|(_, p)| *p)
        .filter(|p| Some(p.connection) == before.map(|b| b.connection))
        .max_by_key(|p| (p.sent, p.lost));
    let (packets_sent, packets_lost) = match (before, after) {
        (Some(b), Some(a)) => (Some(a.sent - b.sent), Some(a.lost - b.lost)),
        _ => (None, None),
    };
    let mut lat: Vec<Duration> = done.into_iter().map(|(d, _)| d).collect();
    lat.sort();
    Ok(Row {
        transport: name.into(),
        payload_bytes: size,
        link: link.into(),
        p50_us: percentile_us(&lat, 0.50),
        p99_us: percentile_us(&lat, 0.99),
        rps: ((n as f64 / total.as_secs_f64()) * 10.0).round() / 10.0,
        packets_sent,
        packets_lost,
        requests: n,
    })
}

/// A child process whose first stdout line matching `prefix` is returned.
async fn spawn_until(mut cmd: Command, prefix: &str, what: &str) -> Result<(Child, String)> {
    cmd.stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .kill_on_drop(true);
    let mut child = cmd.spawn().with_context(|| format!("starting {what}"))?;
    let mut lines = BufReader::new(child.stdout.take().expect("piped")).lines();
    let line = tokio::time::timeout(Duration::from_secs(60), async {
        while let Some(l) = lines.next_line().await? {
            if l.starts_with(prefix) {
                return Ok(l);
            }
        }
        bail!("{what} exited before printing {prefix:?}")
    })
    .await
    .with_context(|| format!("{what} did not start within 60 s"))??;
    // Keep draining its stdout so it never blocks on a full pipe.
    tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
    Ok((child, line))
}

fn field(line: &str, key: &str) -> Result<String> {
    line.split_whitespace()
        .find_map(|w| w.strip_prefix(key).and_then(|v| v.strip_prefix('=')))
        .map(str::to_string)
        .with_context(|| format!("no {key}= in {line:?}"))
}

fn in_ns(ns: Option<&str>, exe: &Path) -> Result<Command> {
    Ok(match ns {
        Some(ns) => Command::from(jitter_lab::sys::netns::command(ns, exe)?),
        None => Command::new(exe),
    })
}

/// One link: the server in `cloud_ns`, the client in `edge_ns`.
async fn run_link(
    exe: &Path,
    certs: &Path,
    link: &str,
    ns: Option<(&str, &str)>,
    listen_ip: &str,
    quick: bool,
) -> Result<Vec<Row>> {
    let mut serve = in_ns(ns.map(|n| n.1), exe)?;
    serve
        .arg("serve")
        .args(["--listen-grpc", &format!("{listen_ip}:0")])
        .args(["--listen-quic", &format!("{listen_ip}:0")])
        .arg("--certs")
        .arg(certs);
    let (mut server, line) = spawn_until(serve, "serving", "the benchmark server").await?;
    let (grpc, quic) = (field(&line, "grpc")?, field(&line, "quic")?);
    let mut client = in_ns(ns.map(|n| n.0), exe)?;
    client
        .arg("client")
        .args(["--grpc", &grpc, "--quic", &quic, "--link", link])
        .arg("--certs")
        .arg(certs);
    if quick {
        client.arg("--quick");
    }
    let out = client
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .context("starting the benchmark client")?
        .wait_with_output()
        .await
        .context("running the benchmark client")?;
    drop(server.stdin.take());
    let _ = tokio::time::timeout(Duration::from_secs(10), server.wait()).await;
    let _ = server.start_kill();
    if !out.status.success() {
        bail!("benchmark client on {link} failed: {}", out.status);
    }
    let stdout = String::from_utf8(out.stdout)?;
    let last = stdout.lines().last().context("no output from the client")?;
    Ok(serde_json::from_str(last)?)
}

/// The jitter lab, up: (netem-tun, edge_ns, cloud_ns, cloud_addr).
async fn start_lab(scenario: &Path) -> Result<(Child, String, String, String)> {
    let netem = std::env::current_exe()?.with_file_name("netem-tun");
    if !netem.exists() {
        bail!(
            "{} missing: cargo build --release -p jitter-lab --bin netem-tun",
            netem.display()
        );
    }
    let mut cmd = Command::new(&netem);
    cmd.arg("run").arg("--scenario").arg(scenario).args([
        "--ns-prefix",
        &format!("tb{}", std::process::id() % 100_000),
    ]);
    let (child, line) = spawn_until(cmd, "ready", "netem-tun").await?;
    let r = Ready::parse(&line)?;
    Ok((child, r.edge_ns, r.cloud_ns, r.cloud_addr))
}

async fn stop_lab(mut lab: Child) {
    // Closing stdin stops it; it removes its namespaces on the way out.
    if let Some(mut stdin) = lab.stdin.take() {
        let _ = stdin.shutdown().await;
    }
    if tokio::time::timeout(Duration::from_secs(20), lab.wait())
        .await
        .is_err()
    {
        let _ = lab.start_kill();
        let _ = lab.wait().await;
    }
}

struct RunOptions {
    quick: bool,
    json: bool,
    loopback_only: bool,
    rounds: usize,
    out: Option<PathBuf>,
    command: String,
}

async fn run(o: &RunOptions, scenario: &Path) -> Result<()> {
    let (quick, json, loopback_only) = (o.quick, o.json, o.loopback_only);
    let commit = stamp::source_commit();
    let exe = std::env::current_exe()?;
    // Removed when `run` returns, on every path.
    let certs_dir = tempfile::Builder::new()
        .prefix("bench-transport-certs-")
        .tempdir()?;
    let certs = certs_dir.path().to_path_buf();
    agent_net::tls::gen_certs(&certs, &[])?;
    let result = async {
        let mut rows = Vec::new();
        for _ in 0..o.rounds {
            rows.extend(run_link(&exe, &certs, "loopback", None, "127.0.0.1", quick).await?);
        }
        if loopback_only {
            eprintln!("lossy link skipped (--loopback-only)");
        } else if !is_root() {
            bail!("the lossy link needs root (network namespaces); use --loopback-only without it");
        } else {
            let (lab, edge_ns, cloud_ns, cloud_addr) = start_lab(scenario).await?;
            let mut r = Ok(());
            for _ in 0..o.rounds {
                match run_link(
                    &exe,
                    &certs,
                    "lossy-1pct",
                    Some((&edge_ns, &cloud_ns)),
                    &cloud_addr,
                    quick,
                )
                .await
                {
                    Ok(more) => rows.extend(more),
                    Err(e) => {
                        r = Err(e);
                        break;
                    }
                }
            }
            stop_lab(lab).await;
            r?;
        }
        Ok(rows)
    }
    .await;
    let rows: Vec<Row> = result?;
    if !json {
        println!("| link | transport | payload | p50 (us) | p99 (us) | req/s |");
        println!("|---|---|---:|---:|---:|---:|");
        for r in &rows {
            println!(
                "| {} | {} | {} | {} | {} | {} |",
                r.link, r.transport, r.payload_bytes, r.p50_us, r.p99_us, r.rps
            );
        }
    }
    if let Some(out) = &o.out {
        let date = std::process::Command::new("date")
            .args(["-u", "+%Y-%m-%d %H:%M UTC"])
            .output()
            .map(|d| String::from_utf8_lossy(&d.stdout).trim().to_string())
            .unwrap_or_default();
        let md = transport::render(&transport::Report {
            command: &o.command,
            date_utc: &date,
            commit: &commit,
            machine: &stamp::machine(),
            quick,
            rounds: o.rounds,
            rows: &rows,
        });
        std::fs::write(out, md).with_context(|| format!("writing {}", out.display()))?;
        eprintln!("wrote {}", out.display());
    }
    println!("{}", serde_json::to_string(&rows)?);
    Ok(())
}

fn is_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("Uid:"))
                .and_then(|l| l.split_whitespace().nth(2).map(|euid| euid == "0"))
        })
        .unwrap_or(false)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_interpolate_in_microseconds() {
        let v: Vec<Duration> = (1..=101).map(Duration::from_micros).collect();
        assert_eq!(percentile_us(&v, 0.5), 51);
        assert_eq!(percentile_us(&v, 0.99), 100);
        assert_eq!(percentile_us(&v[..1], 0.99), 1);
        assert_eq!(percentile_us(&[], 0.5), 0);
    }

    #[test]
    fn listening_lines_parse() {
        let l = "serving grpc=127.0.0.1:4001 quic=127.0.0.1:4002";
        assert_eq!(field(l, "grpc").unwrap(), "127.0.0.1:4001");
        assert_eq!(field(l, "quic").unwrap(), "127.0.0.1:4002");
        assert!(field(l, "cloud_ns").is_err());
    }
}
