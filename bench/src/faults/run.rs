//! The orchestration: per fault, a fresh jitter lab, cloud service (mutual
//! TLS, QUIC and gRPC) and edge agent, the scenario driver sending the
//! workload, and the fault at a fixed time; then the soak run.

use super::load::{FloodReport, SlowLorisReport, StormReport};
use super::soak::{self, SoakPoint, SoakResult};
use super::{summarize, Fault, FaultDetail, FaultRow, SuiteResult};
use crate::scenarios::run::{lab_command, output, read_records};
use crate::support::procs::Proc;
use crate::support::stamp;
use anyhow::{bail, ensure, Context, Result};
use jitter_lab::lab::Ready;
use jitter_lab::scenario::Scenario;
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use serde::Deserialize;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

const CLOUD_GRPC_PORT: u16 = 50051;
const CLOUD_QUIC_PORT: u16 = 50052;
/// The edge's task API, on the edge namespace's own loopback.
const EDGE_API: &str = "127.0.0.1:50061";
/// How long a fault lasts where it has a length (link down, loss, floods).
const FAULT_LEN: Duration = Duration::from_secs(10);
/// The cloud stays dead this long before it is started again.
const CLOUD_DEAD: Duration = Duration::from_secs(3);
/// Soak samples of memory and descriptors.
const SOAK_EVERY: Duration = Duration::from_secs(5);

#[derive(Debug, Clone)]
pub struct Options {
    pub faults: Vec<Fault>,
    /// Link and workload (bench/faults/workload.toml).
    pub scenario: PathBuf,
    pub run_s: f64,
    pub fault_at_s: f64,
    /// The edge's policy during the faults (always-offload keeps tasks in
    /// flight to the cloud when a fault strikes).
    pub policy: String,
    /// Length of the soak run; `None`: no soak.
    pub soak_s: Option<f64>,
    pub soak_policy: String,
    /// Link and workload of the soak (bench/faults/soak.toml).
    pub soak_scenario: PathBuf,
    pub out_dir: PathBuf,
    pub work_dir: PathBuf,
    /// Where `agent`, `netem-tun` and `scenario-driver` are.
    pub bin_dir: PathBuf,
    pub command: String,
    /// The agents' log level (their stderr goes to the work folder).
    pub agent_log: String,
}

struct Ctx<'a> {
    o: &'a Options,
    agent: PathBuf,
    netem_tun: PathBuf,
    driver: PathBuf,
}

/// One fault's (or the soak's) lab, agents and certificates.
struct Stack {
    lab: Proc,
    net: Ready,
    certs: PathBuf,
    dir: PathBuf,
    cloud: Proc,
    edge: Proc,
    scenario: PathBuf,
}

impl Ctx<'_> {
    fn in_ns(&self, ns: &str, program: &Path) -> Result<Command> {
        jitter_lab::sys::netns::command(ns, program)
    }

    fn start_cloud(&self, s: &Ready, certs: &Path, dir: &Path, tag: &str) -> Result<Proc> {
        let addr = &s.cloud_addr;
        let mut cmd = self.in_ns(&s.cloud_ns, &self.agent)?;
        cmd.args(["--log", &self.o.agent_log, "--tls-dir"])
            .arg(certs)
            .args([
                "cloud",
                "--listen-grpc",
                &format!("{addr}:{CLOUD_GRPC_PORT}"),
            ])
            .args(["--listen-quic", &format!("{addr}:{CLOUD_QUIC_PORT}")]);
        let cloud = Proc::spawn(
            &format!("cloud service ({tag})"),
            cmd,
            &dir.join(format!("cloud.{tag}.log")),
        )?;
        cloud.wait_line(
            |l| l.starts_with("cloud listening"),
            Duration::from_secs(60),
        )?;
        Ok(cloud)
    }

    fn start_edge(
        &self,
        s: &Ready,
        certs: &Path,
        dir: &Path,
        policy: &str,
        tag: &str,
    ) -> Result<Proc> {
        let addr = &s.cloud_addr;
        let mut cmd = self.in_ns(&s.edge_ns, &self.agent)?;
        cmd.args(["--log", &self.o.agent_log, "--tls-dir"])
            .arg(certs)
            .args(["edge", "--listen", EDGE_API])
            .args(["--cloud-grpc", &format!("{addr}:{CLOUD_GRPC_PORT}")])
            .args(["--cloud-quic", &format!("{addr}:{CLOUD_QUIC_PORT}")])
            .args(["--policy", policy]);
        let edge = Proc::spawn(
            &format!("edge agent ({tag})"),
            cmd,
            &dir.join(format!("edge.{tag}.log")),
        )?;
        edge.wait_line(|l| l.starts_with("edge listening"), Duration::from_secs(60))?;
        Ok(edge)
    }

    fn start_stack(&self, name: &str, policy: &str, scenario: &Path) -> Result<Stack> {
        let dir = self.o.work_dir.join(name);
        std::fs::create_dir_all(&dir)?;
        let prefix = format!("fs{}", std::process::id());
        let mut cmd = Command::new(&self.netem_tun);
        cmd.args(["run", "--scenario"])
            .arg(scenario)
            .args(["--ns-prefix", &prefix]);
        let lab = Proc::spawn("netem-tun", cmd, &dir.join("netem-tun.log"))?;
        let ready = lab.wait_line(|l| l.starts_with("ready "), Duration::from_secs(30))?;
        let net = Ready::parse(&ready)?;
        let certs = dir.join("certs");
        output(
            Command::new(&self.agent)
                .args(["--log", "warn", "gen-certs", "--out"])
                .arg(&certs)
                .args(["--san", &net.cloud_addr]),
        )?;
        let cloud = self.start_cloud(&net, &certs, &dir, "1")?;
        let edge = self.start_edge(&net, &certs, &dir, policy, "1")?;
        Ok(Stack {
            lab,
            net,
            certs,
            dir,
            cloud,
            edge,
            scenario: scenario.to_path_buf(),
        })
    }

    /// The driver, connected and waiting for `go`.
    fn start_driver(&self, s: &Stack, seconds: f64, policy: &str) -> Result<(Proc, PathBuf)> {
        let out = s.dir.join("tasks.jsonl");
        let _ = std::fs::remove_file(&out);
        let mut cmd = self.in_ns(&s.net.edge_ns, &self.driver)?;
        cmd.args(["run", "--edge", EDGE_API, "--policy", policy])
            .arg("--scenario")
            .arg(&s.scenario)
            .args(["--duration", &seconds.to_string()])
            .arg("--out")
            .arg(&out);
        let driver = Proc::spawn("driver", cmd, &s.dir.join("driver.log"))?;
        driver.wait_line(|l| l.starts_with("ready"), Duration::from_secs(30))?;
        Ok((driver, out))
    }

    /// Runs a load subcommand of the driver in `ns` and returns its JSON.
    fn load(&self, ns: &str, dir: &Path, name: &str, args: &[String]) -> Result<Proc> {
        let mut cmd = self.in_ns(ns, &self.driver)?;
        cmd.args(args);
        Proc::spawn(name, cmd, &dir.join(format!("{name}.log")))
    }
}

fn json_of<T: for<'de> Deserialize<'de>>(p: &Proc, limit: Duration) -> Result<T> {
    let line = p.wait_line(|l| l.starts_with('{'), limit)?;
    serde_json::from_str(&line).with_context(|| format!("{}: bad report {line:?}", p.name))
}

fn stop_stack(mut s: Stack) -> Result<()> {
    s.edge.stop(Duration::from_secs(15))?;
    s.cloud.stop(Duration::from_secs(10))?;
    s.lab.close_stdin();
    if s.lab.wait_timeout(Duration::from_secs(20))?.is_none() {
        s.lab.stop(Duration::from_secs(10))?;
    }
    Ok(())
}

fn cloud_target(s: &Stack) -> String {
    format!("{}:{CLOUD_GRPC_PORT}", s.net.cloud_addr)
}

/// Applies `fault` to the stack; returns when the fault is over (the
/// cloud or edge back, the link restored, the load finished) with what the
/// fault's own load reported.
fn apply(ctx: &Ctx, s: &mut Stack, fault: Fault) -> Result<serde_json::Value> {
    let certs = s.certs.display().to_string();
    let lim = FAULT_LEN + Duration::from_secs(120);
    Ok(match fault {
        Fault::CloudKill => {
            kill(Pid::from_raw(s.cloud.pid() as i32), Signal::SIGKILL)?;
            s.cloud.wait_timeout(Duration::from_secs(5))?;
            std::thread::sleep(CLOUD_DEAD);
            s.cloud = ctx.start_cloud(&s.net, &s.certs, &s.dir, "2")?;
            serde_json::json!({ "dead_s": CLOUD_DEAD.as_secs_f64() })
        }
        Fault::LinkDown => {
            lab_command(&mut s.lab, "down")?;
            std::thread::sleep(FAULT_LEN);
            lab_command(&mut s.lab, "up")?;
            serde_json::Value::Null
        }
        Fault::Loss30 => {
            lab_command(&mut s.lab, "set loss=0.3")?;
            std::thread::sleep(FAULT_LEN);
            lab_command(&mut s.lab, "set loss=0")?;
            serde_json::Value::Null
        }
        Fault::CancelStorm => {
            let storm = |target: &str, tls: bool| {
                let mut a = vec!["storm".to_string(), "--target".into(), target.into()];
                if tls {
                    a.extend(["--tls-dir".into(), certs.clone()]);
                }
                a
            };
            let cloud = ctx.load(
                &s.net.cloud_ns,
                &s.dir,
                "storm-cloud",
                &storm(&cloud_target(s), true),
            )?;
            let edge = ctx.load(
                &s.net.edge_ns,
                &s.dir,
                "storm-edge",
                &storm(EDGE_API, false),
            )?;
            let c: StormReport = json_of(&cloud, lim)?;
            let e: StormReport = json_of(&edge, lim)?;
            serde_json::json!({ "cloud": c, "edge": e })
        }
        Fault::SlowLoris => {
            let a: Vec<String> = [
                "slowloris",
                "--target",
                EDGE_API,
                "--conns",
                "500",
                "--seconds",
            ]
            .iter()
            .map(|s| s.to_string())
            .chain([FAULT_LEN.as_secs().to_string()])
            .collect();
            let p = ctx.load(&s.net.edge_ns, &s.dir, "slowloris", &a)?;
            let r: SlowLorisReport = json_of(&p, lim)?;
            serde_json::to_value(r)?
        }
        Fault::CloudOverload => {
            let a: Vec<String> = vec![
                "flood".into(),
                "--target".into(),
                cloud_target(s),
                "--tls-dir".into(),
                certs.clone(),
                "--concurrency".into(),
                "600".into(),
                "--seconds".into(),
                FAULT_LEN.as_secs().to_string(),
            ];
            let p = ctx.load(&s.net.cloud_ns, &s.dir, "flood", &a)?;
            let r: FloodReport = json_of(&p, lim)?;
            serde_json::to_value(r)?
        }
        Fault::EdgeRestart => {
            let t = Instant::now();
            let st = s.edge.stop(Duration::from_secs(30))?;
            let drained_s = t.elapsed().as_secs_f64();
            s.edge = ctx.start_edge(&s.net, &s.certs, &s.dir, &ctx.o.policy, "2")?;
            serde_json::json!({
                "drain_s": drained_s,
                "exit": st.code(),
                "down_s": t.elapsed().as_secs_f64(),
            })
        }
    })
}

fn run_fault(ctx: &Ctx, fault: Fault) -> Result<(FaultRow, FaultDetail)> {
    let o = ctx.o;
    let mut s = ctx.start_stack(fault.name(), &o.policy, &o.scenario)?;
    // The edge measures the link before the workload starts.
    std::thread::sleep(Duration::from_secs(3));
    let (mut driver, out) = ctx.start_driver(&s, o.run_s, &o.policy)?;
    driver.send_line("go")?;
    let t0 = Instant::now();
    std::thread::sleep(Duration::from_secs_f64(o.fault_at_s));
    let start_s = t0.elapsed().as_secs_f64();
    eprintln!("faults: {} at {start_s:.1} s", fault.name());
    let load = apply(ctx, &mut s, fault)?;
    let end_s = t0.elapsed().as_secs_f64();
    eprintln!("faults: {} over at {end_s:.1} s", fault.name());
    let done = driver.wait_line(
        |l| l.starts_with("done"),
        Duration::from_secs_f64(o.run_s) + Duration::from_secs(120),
    )?;
    eprintln!("faults: {}: {done}", fault.name());
    let st = driver.wait_timeout(Duration::from_secs(10))?;
    ensure!(
        st.is_some_and(|s| s.success()),
        "driver did not exit cleanly: {st:?}"
    );
    drop(driver);
    stop_stack(s)?;
    let records = read_records(&out)?;
    let (row, mut d) = summarize(fault.name(), &records, start_s, end_s);
    d.load = load;
    d.notes.push(fault.describe().to_string());
    Ok((row, d))
}

/// Memory and descriptors of both agents now.
fn soak_point(s: &Stack, t0: Instant) -> Result<SoakPoint> {
    let (edge_rss_mib, edge_fds) = soak::sample(s.edge.pid())?;
    let (cloud_rss_mib, cloud_fds) = soak::sample(s.cloud.pid())?;
    Ok(SoakPoint {
        t_s: t0.elapsed().as_secs_f64(),
        edge_rss_mib,
        edge_fds,
        cloud_rss_mib,
        cloud_fds,
    })
}

fn run_soak(ctx: &Ctx, seconds: f64) -> Result<SoakResult> {
    let policy = &ctx.o.soak_policy;
    let mut s = ctx.start_stack("soak", policy, &ctx.o.soak_scenario)?;
    std::thread::sleep(Duration::from_secs(3));
    let (driver, out) = ctx.start_driver(&s, seconds, policy)?;
    let mut driver = driver;
    driver.send_line("go")?;
    let t0 = Instant::now();
    let mut points = Vec::new();
    let mut next = Duration::ZERO;
    while t0.elapsed().as_secs_f64() < seconds {
        std::thread::sleep(next.saturating_sub(t0.elapsed()));
        points.push(soak_point(&s, t0)?);
        next += SOAK_EVERY;
    }
    driver.wait_line(|l| l.starts_with("done"), Duration::from_secs(180))?;
    let st = driver.wait_timeout(Duration::from_secs(10))?;
    ensure!(st.is_some_and(|s| s.success()), "soak driver: {st:?}");
    // Memory once the load has stopped.
    points.push(soak_point(&s, t0)?);
    drop(driver);
    let _ = &mut s;
    stop_stack(s)?;
    let records = read_records(&out)?;
    let (row, _) = summarize("soak", &records, seconds, seconds);
    let sc = Scenario::load(&ctx.o.soak_scenario)?;
    Ok(SoakResult {
        seconds,
        scenario: sc.description.clone(),
        tasks_per_s: sc.workload.tasks_per_s,
        policy: policy.clone(),
        offloaded: records.iter().filter(|r| r.offloaded()).count(),
        row,
        points,
    })
}

fn now_utc() -> String {
    output(Command::new("date").args(["-u", "+%Y-%m-%d %H:%M UTC"])).unwrap_or_default()
}

/// Runs the suite, writing `faults.md` and `faults.json` into `out_dir`
/// after every fault.
pub fn run(o: &Options) -> Result<SuiteResult> {
    let t0 = Instant::now();
    jitter_lab::sys::require_root("faults")?;
    let bin = |n: &str| -> Result<PathBuf> {
        let p = o.bin_dir.join(n);
        ensure!(
            p.exists(),
            "{} is missing (cargo build --release -p agent -p bench -p jitter-lab)",
            p.display()
        );
        Ok(p)
    };
    let ctx = Ctx {
        o,
        agent: bin("agent")?,
        netem_tun: bin("netem-tun")?,
        driver: bin("scenario-driver")?,
    };
    let sc = Scenario::load(&o.scenario)?;
    std::fs::create_dir_all(&o.out_dir)?;
    std::fs::create_dir_all(&o.work_dir)?;
    let mut result = SuiteResult {
        command: o.command.clone(),
        date_utc: now_utc(),
        commit: stamp::source_commit(),
        machine: stamp::machine(),
        scenario: sc.description.clone(),
        policy: o.policy.clone(),
        run_s: o.run_s,
        fault_at_s: o.fault_at_s,
        faults: Vec::new(),
        soak: None,
        wall_s: 0.0,
    };
    for &f in &o.faults {
        result.faults.push(run_fault(&ctx, f)?);
        result.wall_s = t0.elapsed().as_secs_f64();
        write_outputs(o, &result)?;
    }
    if let Some(secs) = o.soak_s {
        eprintln!("faults: soak for {secs:.0} s ({})", o.soak_policy);
        result.soak = Some(run_soak(&ctx, secs)?);
        result.wall_s = t0.elapsed().as_secs_f64();
        write_outputs(o, &result)?;
    }
    if result.faults.is_empty() && result.soak.is_none() {
        bail!("nothing ran");
    }
    Ok(result)
}

fn write_outputs(o: &Options, r: &SuiteResult) -> Result<()> {
    std::fs::write(o.out_dir.join("faults.md"), super::render(r))?;
    std::fs::write(
        o.out_dir.join("faults.json"),
        serde_json::to_string_pretty(r)? + "\n",
    )?;
    if let Some(s) = &r.soak {
        super::report::soak_plot(&o.out_dir.join("soak.png"), s)?;
    }
    Ok(())
}
