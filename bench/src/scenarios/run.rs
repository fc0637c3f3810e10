//! The orchestration: per scenario, the jitter lab, the cloud service in
//! the cloud namespace, then per policy a fresh edge agent in the edge
//! namespace under a CPU quota and the workload driver beside it.

use super::quick_window::{quick_start, window};
use super::record::{DecisionView, TaskRecord};
use super::report::{self, BenchResult, Calibration, EdgeQuota, Job, Row, ScenarioResult};
use super::stats;
use crate::support::cpu_quota::{self as cgroup, Controller, CpuCgroup};
use crate::support::procs::{self, Proc};
use crate::support::stamp;
use anyhow::{bail, ensure, Context, Result};
use jitter_lab::lab::Ready;
use jitter_lab::scenario::Scenario;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

const CLOUD_GRPC_PORT: u16 = 50051;
const CLOUD_QUIC_PORT: u16 = 50052;
/// The edge's task API, on the edge namespace's own loopback.
const EDGE_API: &str = "127.0.0.1:50061";
/// Calibration job sizes (loop iterations; about 1, 4, 16 and 64 ms of one
/// core of this VM): a throttled cgroup slows a job more the longer it runs.
const CALIBRATION_ITERS: [u64; 4] = [250_000, 1_000_000, 4_000_000, 16_000_000];

#[derive(Debug, Clone)]
pub struct Options {
    pub scenario_files: Vec<PathBuf>,
    pub policies: Vec<String>,
    pub quick: bool,
    /// Run length per scenario: the quick window, or a cut of the full
    /// scenario; `None` means the quick default or the scenario's duration.
    pub duration_s: Option<f64>,
    pub quick_len_s: f64,
    pub out_dir: PathBuf,
    /// The report's file names (`NAME.md`, `NAME.json`).
    pub results_name: String,
    pub work_dir: PathBuf,
    /// Where `agent`, `netem-tun` and `scenario-driver` are.
    pub bin_dir: PathBuf,
    pub period_us: u64,
    /// Time the fresh edge agent gets to measure the link before the workload.
    pub warmup: Duration,
    pub command: String,
    pub plots: bool,
    /// Time the CPU calibration jobs (about 8 s per distinct profile).
    pub calibrate: bool,
    /// Runs per scenario, with seeds `workload.seed`, `+ 1`, ... (the
    /// workload and the link model's random stream both follow it).
    pub seeds: u64,
    /// Continue the run in `out_dir/NAME.json` (see [`continue_from`]).
    pub resume: bool,
    pub edge_cpu: EdgeCpu,
}

/// The edge's CPU beyond the scenario files' profiles (bench/README.md,
/// Device profile); scenario-bench and scenario-ab take it as options.
#[derive(Debug, Clone, Copy, PartialEq, clap::Args)]
pub struct EdgeCpu {
    /// Multiply every scenario's edge CPU share by this: where the edge's
    /// models run several times faster than on the host the scenarios
    /// were tuned on (the report's "Models under the profile" table), a
    /// smaller share stands for the same edge (bench/README.md).
    #[arg(long, default_value_t = 1.0)]
    pub edge_cpu_scale: f64,
    /// What the profile's edge CPU share bounds: `inference`, the edge's
    /// inference workers alone (a cgroup they join, the rest of the agent
    /// limited by --edge-agent-cpu), or `agent`, the whole edge agent
    /// (every result before this option; agent builds without
    /// --inference-cgroup need it).
    #[arg(long, value_enum, default_value = "inference")]
    pub edge_quota: EdgeQuota,
    /// CPUs of the edge agent around its inference workers (task API,
    /// decisions, offloads), with --edge-quota inference.
    #[arg(long, default_value_t = 1.0)]
    pub edge_agent_cpu: f64,
}

/// One policy's run of one scenario.
pub struct PolicyRun {
    pub policy: String,
    pub records: Vec<TaskRecord>,
    pub throttling: cgroup::Throttling,
}

struct Ctx<'a> {
    o: &'a Options,
    ctl: Controller,
    agent: PathBuf,
    netem_tun: PathBuf,
    driver: PathBuf,
    /// The agent has mutual TLS and QUIC (`gen-certs`, `--tls-dir`).
    tls: bool,
}

impl Ctx<'_> {
    fn in_ns(&self, ns: &str, program: &Path) -> Result<Command> {
        jitter_lab::sys::netns::command(ns, program)
    }

    fn cgroup_name(&self, scenario: &str, what: &str) -> String {
        format!("{}-{scenario}-{what}", std::process::id())
    }

    fn cgroup(&self, name: &str, share: f64) -> Result<CpuCgroup> {
        let cg = CpuCgroup::create(&self.ctl, name, share, self.o.period_us)?;
        procs::register_cgroup(&cg.path);
        Ok(cg)
    }
}

fn drop_cgroup(cg: CpuCgroup) {
    let path = cg.path.clone();
    drop(cg);
    procs::unregister_cgroup(&path);
}

pub(crate) fn output(cmd: &mut Command) -> Result<String> {
    procs::unblock_signals_at_spawn(cmd);
    let out = cmd.output().with_context(|| format!("starting {cmd:?}"))?;
    ensure!(
        out.status.success(),
        "{cmd:?} failed: {}",
        String::from_utf8_lossy(&out.stderr).trim()
    );
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
}

/// Sends a command to the emulator's stdin and waits for its reply.
pub(crate) fn lab_command(lab: &mut Proc, cmd: &str) -> Result<()> {
    lab.send_line(cmd)?;
    let reply = lab.wait_line(
        |l| l.starts_with("ok") || l.starts_with("error"),
        Duration::from_secs(10),
    )?;
    ensure!(
        reply.starts_with("ok"),
        "netem-tun refused {cmd:?}: {reply}"
    );
    Ok(())
}

/// (wall ms, CPU ms) of each calibration job size, optionally in a cgroup.
fn calibrate(ctx: &Ctx, cg: Option<&CpuCgroup>) -> Result<Vec<(f64, f64)>> {
    let sizes: Vec<String> = CALIBRATION_ITERS.iter().map(u64::to_string).collect();
    let mut cmd = Command::new(&ctx.driver);
    cmd.args(["calibrate", "--iters", &sizes.join(",")]);
    if let Some(cg) = cg {
        cg.join_at_spawn(&mut cmd)?;
    }
    let out = output(&mut cmd)?;
    let v: Vec<serde_json::Value> = serde_json::from_str(out.lines().last().unwrap_or(""))
        .with_context(|| format!("calibration output {out:?}"))?;
    v.iter()
        .map(|j| {
            let f = |k: &str| {
                j[k].as_f64()
                    .with_context(|| format!("calibration: no {k}"))
            };
            Ok((f("wall_ms")?, f("cpu_ms")?))
        })
        .collect()
}

/// What a run starts from its folder of binaries (`Options::bin_dir`).
pub const PROGRAMS: [&str; 3] = ["agent", "netem-tun", "scenario-driver"];

/// The path of `name` in `bin_dir`, which must hold it.
pub fn program(bin_dir: &Path, name: &str) -> Result<PathBuf> {
    let p = bin_dir.join(name);
    ensure!(
        p.exists(),
        "{} is missing (cargo build --release -p agent -p bench -p jitter-lab)",
        p.display()
    );
    Ok(p)
}

/// The scenario files to run: `path` (a scenario file or a folder of
/// them), only those named in `only` when it names any.
pub fn scenario_files(path: &Path, only: &[String]) -> Result<Vec<PathBuf>> {
    let mut files = if path.is_dir() {
        Scenario::load_dir(path)?
            .into_iter()
            .map(|(p, _)| p)
            .collect()
    } else {
        vec![path.to_path_buf()]
    };
    if !only.is_empty() {
        files.retain(|p| {
            p.file_stem()
                .is_some_and(|s| only.iter().any(|o| s.to_string_lossy() == *o))
        });
        if files.len() != only.len() {
            bail!(
                "--only {only:?}: not every name is a scenario in {}",
                path.display()
            );
        }
    }
    Ok(files)
}

/// Where one scenario and seed's records and logs go: `work/NAME`, or
/// `work/NAME/seed-SEED` in a run of several seeds.
pub fn seed_dir(work_dir: &Path, scenario: &str, seed: u64, seeds: u64) -> PathBuf {
    if seeds > 1 {
        work_dir.join(scenario).join(format!("seed-{seed}"))
    } else {
        work_dir.join(scenario)
    }
}

/// A policy's task records in a scenario and seed's folder ([`seed_dir`]).
pub fn policy_records(dir: &Path, policy: &str) -> Result<Vec<TaskRecord>> {
    read_records(&dir.join(format!("{policy}.jsonl")))
}

pub(crate) fn read_records(path: &Path) -> Result<Vec<TaskRecord>> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    text.lines()
        .map(|l| {
            serde_json::from_str(l).with_context(|| format!("{}: bad record {l:?}", path.display()))
        })
        .collect()
}

#[allow(clippy::too_many_arguments)]
fn run_policy(
    ctx: &Ctx,
    lab: &mut Proc,
    sc: &Scenario,
    file: &Path,
    dir: &Path,
    net: &Ready,
    certs: &Path,
    policy: &str,
) -> Result<PolicyRun> {
    let (edge_ns, cloud_addr) = (&net.edge_ns, &net.cloud_addr);
    // Back to the scenario's initial conditions while the edge starts.
    lab_command(lab, "schedule start")?;
    let name = ctx.cgroup_name(&sc.name, policy);
    let share = sc.profile.edge_cpu_share;
    // The profile's share: on the inference workers (a child cgroup they
    // join), the rest of the agent above it; or on the whole agent.
    let (cg, inference_cg) = match ctx.o.edge_cpu.edge_quota {
        EdgeQuota::Agent => (ctx.cgroup(&name, share)?, None),
        EdgeQuota::Inference => {
            let agent = ctx.cgroup(&name, ctx.o.edge_cpu.edge_agent_cpu)?;
            let inference = agent.create_threaded_child("inference", share, ctx.o.period_us)?;
            procs::register_cgroup(&inference.path);
            (agent, Some(inference))
        }
    };
    let mut cmd = ctx.in_ns(edge_ns, &ctx.agent)?;
    cmd.args(["--log", "warn"]);
    if ctx.tls {
        cmd.arg("--tls-dir").arg(certs);
    }
    cmd.args(["edge", "--listen", EDGE_API])
        .args(["--cloud-grpc", &format!("{cloud_addr}:{CLOUD_GRPC_PORT}")]);
    if ctx.tls {
        cmd.args(["--cloud-quic", &format!("{cloud_addr}:{CLOUD_QUIC_PORT}")]);
    }
    cmd.args(["--policy", policy])
        .args(["--workers", &sc.profile.local_workers.to_string()]);
    if let Some(inference) = &inference_cg {
        cmd.arg("--inference-cgroup").arg(&inference.path);
    }
    cg.join_at_spawn(&mut cmd)?;
    let mut edge = Proc::spawn(
        &format!("edge agent ({policy})"),
        cmd,
        &dir.join(format!("{policy}.edge.log")),
    )?;
    edge.wait_line(|l| l.starts_with("edge listening"), Duration::from_secs(60))?;
    std::thread::sleep(ctx.o.warmup);

    let out = dir.join(format!("{policy}.jsonl"));
    let _ = std::fs::remove_file(&out);
    let mut cmd = ctx.in_ns(edge_ns, &ctx.driver)?;
    cmd.args(["run", "--edge", EDGE_API, "--policy", policy])
        .arg("--scenario")
        .arg(file)
        .args(["--duration", &sc.duration_s.to_string()])
        .arg("--out")
        .arg(&out);
    let mut driver = Proc::spawn(
        &format!("driver ({policy})"),
        cmd,
        &dir.join(format!("{policy}.driver.log")),
    )?;
    driver.wait_line(|l| l.starts_with("ready"), Duration::from_secs(30))?;
    // The link's schedule and the workload start together.
    lab_command(lab, "schedule start")?;
    driver.send_line("go")?;
    let limit = Duration::from_secs_f64(sc.duration_s) + Duration::from_secs(120);
    let done = driver.wait_line(|l| l.starts_with("done"), limit)?;
    let st = driver.wait_timeout(Duration::from_secs(10))?;
    ensure!(
        st.is_some_and(|s| s.success()),
        "driver ({policy}) did not exit cleanly: {st:?}"
    );
    let throttling = inference_cg.as_ref().unwrap_or(&cg).throttling();
    edge.stop(Duration::from_secs(15))?;
    drop(edge);
    if let Some(inference) = inference_cg {
        drop_cgroup(inference);
    }
    drop_cgroup(cg);
    let records = read_records(&out)?;
    eprintln!("scenario-bench: {} / {policy}: {done}", sc.name);
    Ok(PolicyRun {
        policy: policy.to_string(),
        records,
        throttling,
    })
}

/// The order the policies of a seed's run go in: the listed order turned
/// by one per seed, so that a slow spell of the shared host, or a cloud
/// still warming up, does not fall on the same policy in every seed.
pub fn run_order(policies: usize, seed_index: u64) -> Vec<usize> {
    let turn = seed_index.checked_rem(policies as u64).unwrap_or(0) as usize;
    (0..policies).map(|i| (i + turn) % policies).collect()
}

/// Runs every policy of one seed, in `order` (indices into the listed
/// policies, see [`run_order`]), against one emulated link and cloud; the
/// runs come back in the listed order.
fn run_scenario(
    ctx: &Ctx,
    sc: &Scenario,
    order: &[usize],
    file: &Path,
    dir: &Path,
) -> Result<Vec<PolicyRun>> {
    let prefix = format!("sb{}", std::process::id());
    let mut cmd = Command::new(&ctx.netem_tun);
    cmd.args(["run", "--scenario"])
        .arg(file)
        .args(["--ns-prefix", &prefix, "--hold-schedule"]);
    let mut lab = Proc::spawn("netem-tun", cmd, &dir.join("netem-tun.log"))?;
    let ready = lab.wait_line(|l| l.starts_with("ready "), Duration::from_secs(30))?;
    let net = Ready::parse(&ready)?;
    let cloud_addr = &net.cloud_addr;
    let certs = dir.join("certs");
    if ctx.tls {
        output(
            Command::new(&ctx.agent)
                .args(["--log", "warn", "gen-certs", "--out"])
                .arg(&certs)
                .args(["--san", cloud_addr]),
        )?;
    }
    let cloud_cg = match sc.profile.cloud_cpu_share {
        Some(share) => Some(ctx.cgroup(&ctx.cgroup_name(&sc.name, "cloud"), share)?),
        None => None,
    };
    let mut cmd = ctx.in_ns(&net.cloud_ns, &ctx.agent)?;
    cmd.args(["--log", "warn"]);
    if ctx.tls {
        cmd.arg("--tls-dir").arg(&certs);
    }
    cmd.args([
        "cloud",
        "--listen-grpc",
        &format!("{cloud_addr}:{CLOUD_GRPC_PORT}"),
    ]);
    if ctx.tls {
        cmd.args(["--listen-quic", &format!("{cloud_addr}:{CLOUD_QUIC_PORT}")]);
    }
    if let Some(cg) = &cloud_cg {
        cg.join_at_spawn(&mut cmd)?;
    }
    let mut cloud = Proc::spawn("cloud service", cmd, &dir.join("cloud.log"))?;
    cloud.wait_line(
        |l| l.starts_with("cloud listening"),
        Duration::from_secs(60),
    )?;

    let mut runs: Vec<Option<PolicyRun>> = ctx.o.policies.iter().map(|_| None).collect();
    for &i in order {
        let policy = &ctx.o.policies[i];
        runs[i] = Some(run_policy(
            ctx, &mut lab, sc, file, dir, &net, &certs, policy,
        )?);
    }
    let runs: Vec<PolicyRun> = runs.into_iter().flatten().collect();
    cloud.stop(Duration::from_secs(10))?;
    drop(cloud);
    if let Some(cg) = cloud_cg {
        drop_cgroup(cg);
    }
    // Closing stdin stops the emulator, which removes its namespaces.
    lab.close_stdin();
    if lab.wait_timeout(Duration::from_secs(20))?.is_none() {
        lab.stop(Duration::from_secs(10))?;
    }
    Ok(runs)
}

/// The slice of a scenario a run covers and the scenario to run.
pub fn plan_scenario(full: &Scenario, o: &Options) -> ((f64, f64), Scenario) {
    let (start, len) = if o.quick {
        let len = o.duration_s.unwrap_or(o.quick_len_s);
        (quick_start(full, len), len)
    } else {
        (0.0, o.duration_s.unwrap_or(full.duration_s))
    };
    let sc = window(full, start, len);
    ((start, start + sc.duration_s), sc)
}

fn median(values: impl Iterator<Item = f64>) -> Option<f64> {
    let mut v: Vec<f64> = values.filter(|x| x.is_finite()).collect();
    v.sort_by(f64::total_cmp);
    stats::percentile(&v, 0.5)
}

/// The scenario's rows, oracle and the agents' own timing estimates.
pub fn assemble(
    sc: &Scenario,
    span_s: (f64, f64),
    edge_quota: String,
    runs: &[PolicyRun],
) -> ScenarioResult {
    let by_name = |n: &str| {
        runs.iter()
            .find(|r| r.policy == n)
            .map(|r| r.records.as_slice())
    };
    let oracle = match (by_name("always-local"), by_name("always-offload")) {
        (Some(l), Some(c)) => Some(stats::oracle(&[l, c])),
        _ => None,
    };
    let rows = runs
        .iter()
        .map(|r| Row {
            policy: r.policy.clone(),
            summary: stats::summarize(&r.records),
            vs_oracle_ms: oracle
                .as_deref()
                .and_then(|o| stats::mean_excess(&r.records, o)),
            throttling: r.throttling,
        })
        .collect();
    // Per task type, the median of what a run's decisions estimated.
    let per_type = |n: &str, pick: fn(&DecisionView) -> f64| {
        let mut by: BTreeMap<String, Vec<f64>> = BTreeMap::new();
        for r in by_name(n).unwrap_or_default() {
            if let Some(d) = &r.decision {
                by.entry(r.task.clone()).or_default().push(pick(d));
            }
        }
        by.into_iter()
            .filter_map(|(task, v)| median(v.into_iter()).map(|m| (task, m)))
            .collect::<BTreeMap<_, _>>()
    };
    ScenarioResult {
        name: sc.name.clone(),
        seed: sc.workload.seed,
        description: sc.description.clone(),
        span_s,
        profile: sc.profile.clone(),
        edge_quota,
        local_inference_ms: per_type("always-local", |d| d.local_inference_ms),
        cloud_inference_ms: per_type("always-offload", |d| d.cloud_inference_ms),
        network_sources: runs
            .iter()
            .flat_map(|r| &r.records)
            .filter_map(|r| r.decision.as_ref())
            .fold(Default::default(), |mut m, d| {
                *m.entry(d.network_source.clone()).or_default() += 1;
                m
            }),
        rows,
        oracle: oracle.as_deref().map(stats::summarize),
        // Where tasks ran per phase, for a split computing comparison (a
        // run with a fixed split point): of the runs that split.
        choices: runs
            .iter()
            .filter(|_| runs.iter().any(|r| r.policy.starts_with("split:")))
            .filter(|r| {
                r.records.iter().any(|t| {
                    t.variant() != "local" && t.variant() != "whole" && t.variant() != "failed"
                })
            })
            .flat_map(|r| stats::choices(&r.policy, &r.records, sc))
            .collect(),
    }
}

fn plots(
    o: &Options,
    sc: &Scenario,
    runs: &[PolicyRun],
    oracle: Option<Vec<TaskRecord>>,
) -> Result<()> {
    let (cdf_name, tl_name) = report::plot_names(&sc.name, o.quick);
    let mut all: Vec<(String, &[TaskRecord])> = runs
        .iter()
        .map(|r| (r.policy.clone(), r.records.as_slice()))
        .collect();
    let panels = all.clone();
    if let Some(orc) = &oracle {
        all.push(("oracle".into(), orc.as_slice()));
    }
    super::plot::cdf(
        &o.out_dir.join(cdf_name),
        &format!("{}: latency CDF", sc.name),
        &all,
    )?;
    super::plot::timeline(
        &o.out_dir.join(tl_name),
        &format!("{}: measured RTT/jitter and decisions", sc.name),
        sc,
        sc.duration_s,
        &panels,
    )?;
    // Split computing: where each task ran, for the policies that choose
    // among split points (not the fixed ones).
    let compared = runs.iter().any(|r| r.policy.starts_with("split:"));
    let choosing: Vec<(String, &[TaskRecord])> = panels
        .into_iter()
        .filter(|_| compared)
        .filter(|(name, recs)| {
            !name.starts_with("split:")
                && recs.iter().any(|r| {
                    r.decision
                        .as_ref()
                        .is_some_and(|d| !d.split_point.is_empty())
                })
        })
        .collect();
    if !choosing.is_empty() {
        super::plot::split_choices(
            &o.out_dir.join(report::split_plot_name(&sc.name, o.quick)),
            &format!("{}: where each task ran, and the uplink's rate", sc.name),
            sc,
            sc.duration_s,
            &choosing,
        )?;
    }
    Ok(())
}

/// Every policy the agent has (`scenario-driver policies`).
pub fn policy_names(bin_dir: &Path) -> Result<Vec<String>> {
    let out = output(Command::new(bin_dir.join("scenario-driver")).arg("policies"))?;
    serde_json::from_str(&out).with_context(|| format!("policy list {out:?}"))
}

/// The time now, as the results files give it.
pub fn now_utc() -> String {
    output(Command::new("date").args(["-u", "+%Y-%m-%d %H:%M UTC"])).unwrap_or_default()
}

/// Runs the whole matrix and writes `scenarios.md`, `scenarios.json` and
/// the plots into `out_dir` (rewritten after every scenario).
pub fn run(o: &Options) -> Result<BenchResult> {
    let t0 = Instant::now();
    jitter_lab::sys::require_root("scenario-bench")?;
    ensure!(!o.policies.is_empty(), "no policies to run");
    ensure!(!o.scenario_files.is_empty(), "no scenarios to run");
    ensure!(
        o.edge_cpu.edge_cpu_scale.is_finite() && o.edge_cpu.edge_cpu_scale > 0.0,
        "--edge-cpu-scale {}: must be a number above 0",
        o.edge_cpu.edge_cpu_scale
    );
    ensure!(
        o.edge_cpu.edge_agent_cpu.is_finite() && o.edge_cpu.edge_agent_cpu > 0.0,
        "--edge-agent-cpu {}: must be a number above 0",
        o.edge_cpu.edge_agent_cpu
    );
    let bin = |n: &str| program(&o.bin_dir, n);
    if o.edge_cpu.edge_quota == EdgeQuota::Inference {
        let help = output(Command::new(bin("agent")?).args(["edge", "--help"]))?;
        ensure!(
            help.contains("--inference-cgroup"),
            "this agent build has no --inference-cgroup, so its inference cannot have a quota \
             of its own: run it with --edge-quota agent"
        );
    }
    let ctl = cgroup::detect()?;
    cgroup::sweep_stale(&ctl);
    let parent = ctl.root.join(cgroup::PARENT);
    procs::register_cgroup(&parent);
    let agent = bin("agent")?;
    let ctx = Ctx {
        o,
        tls: Command::new(&agent)
            .args(["gen-certs", "--help"])
            .output()
            .is_ok_and(|out| out.status.success()),
        ctl,
        agent,
        netem_tun: bin("netem-tun")?,
        driver: bin("scenario-driver")?,
    };
    std::fs::create_dir_all(&o.out_dir)?;
    std::fs::create_dir_all(&o.work_dir)?;
    let backend = output(Command::new(&ctx.netem_tun).arg("backend"))?;
    let mut result = BenchResult {
        command: o.command.clone(),
        date_utc: now_utc(),
        records_dir: o.work_dir.display().to_string(),
        wall_s: 0.0,
        quick: o.quick,
        commit: stamp::source_commit(),
        machine: stamp::machine(),
        backend: backend.lines().last().unwrap_or("").to_string(),
        transport: String::new(),
        calibrations: Vec::new(),
        scenarios: Vec::new(),
        rendered_again: None,
        offloads: (0, 0),
        resumed: Vec::new(),
        left: 0,
        edge_cpu_scale: o.edge_cpu.edge_cpu_scale,
        edge_quota: o.edge_cpu.edge_quota,
        edge_agent_cpu: (o.edge_cpu.edge_quota == EdgeQuota::Inference)
            .then_some(o.edge_cpu.edge_agent_cpu),
    };
    if o.resume {
        continue_from(o, &mut result)?;
    }
    let planned = o.scenario_files.len() * o.seeds.max(1) as usize;
    let wall_before = result.wall_s;
    let (mut quic, mut grpc) = result.offloads;
    for file in &o.scenario_files {
        let mut full = Scenario::load(file)?;
        // Rounded to a millionth: 0.25 x 0.2 is 0.05000000000000001 in
        // binary, and the share is printed in the report.
        full.profile.edge_cpu_share =
            (full.profile.edge_cpu_share * o.edge_cpu.edge_cpu_scale * 1e6).round() / 1e6;
        ensure!(
            full.profile.edge_cpu_share > 0.0,
            "{}: --edge-cpu-scale {} leaves the edge no CPU",
            full.name,
            o.edge_cpu.edge_cpu_scale
        );
        let (span, base) = plan_scenario(&full, o);
        ensure!(base.duration_s > 0.0, "{}: nothing to run", full.name);
        for k in 0..o.seeds.max(1) {
            let mut sc = base.clone();
            sc.workload.seed = base.workload.seed + k;
            if result
                .scenarios
                .iter()
                .any(|s| s.name == sc.name && s.seed == sc.workload.seed)
            {
                eprintln!(
                    "scenario-bench: {} seed {}: kept from the run resumed",
                    sc.name, sc.workload.seed
                );
                continue;
            }
            let dir = seed_dir(&o.work_dir, &sc.name, sc.workload.seed, o.seeds);
            std::fs::create_dir_all(&dir)?;
            let sc_file = dir.join("scenario.toml");
            std::fs::write(&sc_file, toml::to_string(&sc)?)?;
            let share = sc.profile.edge_cpu_share;
            let probe = ctx.cgroup(&ctx.cgroup_name(&sc.name, "calibrate"), share)?;
            let quota = format!("{} us every {} us", probe.quota_us, probe.period_us);
            if o.calibrate
                && !result
                    .calibrations
                    .iter()
                    .any(|c| c.share == share && c.quota == quota)
            {
                let free = calibrate(&ctx, None)?;
                let edge = calibrate(&ctx, Some(&probe))?;
                let c = Calibration {
                    share,
                    quota: quota.clone(),
                    jobs: free
                        .iter()
                        .zip(&edge)
                        .map(|(&(unconstrained_ms, cpu_ms), &(edge_ms, _))| Job {
                            cpu_ms,
                            unconstrained_ms,
                            edge_ms,
                        })
                        .collect(),
                };
                for j in &c.jobs {
                    eprintln!(
                        "scenario-bench: calibration, {}: a {:.2} ms CPU job takes {:.2} ms \
                     unconstrained, {:.2} ms in the cgroup ({:.1}x)",
                        probe.describe(),
                        j.cpu_ms,
                        j.unconstrained_ms,
                        j.edge_ms,
                        j.slowdown()
                    );
                }
                result.calibrations.push(c);
            }
            drop_cgroup(probe);
            let order = run_order(o.policies.len(), k);
            let names: Vec<&str> = order.iter().map(|&i| o.policies[i].as_str()).collect();
            eprintln!(
                "scenario-bench: {} ({:.0}-{:.0} s, seed {}), policies in this order: {}",
                sc.name,
                span.0,
                span.1,
                sc.workload.seed,
                names.join(", ")
            );
            let runs = run_scenario(&ctx, &sc, &order, &sc_file, &dir)?;
            for r in runs.iter().flat_map(|r| &r.records) {
                match (r.completed(), r.transport.as_str()) {
                    (true, "quic") => quic += 1,
                    (true, "grpc") => grpc += 1,
                    _ => {}
                }
            }
            let res = assemble(&sc, span, quota, &runs);
            // Plots show the first seed.
            if o.plots && k == 0 {
                let by = |n: &str| {
                    runs.iter()
                        .find(|r| r.policy == n)
                        .map(|r| r.records.as_slice())
                };
                let orc = match (by("always-local"), by("always-offload")) {
                    (Some(l), Some(c)) => Some(stats::oracle(&[l, c])),
                    _ => None,
                };
                plots(o, &sc, &runs, orc)?;
            }
            result.scenarios.push(res);
            result.wall_s = wall_before + t0.elapsed().as_secs_f64();
            result.offloads = (quic, grpc);
            result.left = planned.saturating_sub(result.scenarios.len());
            result.transport = format!(
                "{}; offloads completed: {quic} over QUIC, {grpc} over gRPC",
                if ctx.tls {
                    "the agent's default: QUIC with mutual TLS (development CA from `agent gen-certs`), gRPC over TLS as fallback"
                } else {
                    "gRPC (this agent build has no TLS/QUIC options)"
                }
            );
            write_outputs(o, &result)?;
        }
    }
    // Shared with any concurrent run: removed only once empty.
    if std::fs::remove_dir(&parent).is_ok() {
        procs::unregister_cgroup(&parent);
    }
    if result.scenarios.is_empty() {
        bail!("no scenario ran");
    }
    Ok(result)
}

/// `--resume`: a full run outlasts a working session here (about 2 min
/// per scenario, policy and seed). The run in `out_dir/NAME.json`, made
/// by the same command at the same commit with no uncommitted changes,
/// is continued: the scenarios and seeds it has are kept, and the others
/// run. Nothing there: a fresh run. Anything else is refused, since its
/// figures would not be of the code measured now.
fn continue_from(o: &Options, fresh: &mut BenchResult) -> Result<()> {
    let json = o.out_dir.join(format!("{}.json", o.results_name));
    let text = match std::fs::read_to_string(&json) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            eprintln!(
                "scenario-bench: --resume: no {}; a fresh run",
                json.display()
            );
            return Ok(());
        }
        Err(e) => return Err(e).with_context(|| format!("reading {}", json.display())),
    };
    let prior: BenchResult = serde_json::from_str(&text)
        .with_context(|| format!("{}: not a scenario-bench result", json.display()))?;
    check_resumable(&prior, fresh, stamp::same_code)
        .with_context(|| format!("--resume: cannot continue {}", json.display()))?;
    eprintln!(
        "scenario-bench: --resume: continuing the run of {} ({} scenario runs kept)",
        prior.date_utc,
        prior.scenarios.len()
    );
    let part = resumed_part(&prior, fresh);
    *fresh = BenchResult {
        resumed: prior.resumed.iter().cloned().chain([part]).collect(),
        ..prior
    };
    Ok(())
}

/// Whether `prior` is a part of the run `fresh` is starting; `same_code`
/// tells whether two commits hold the same code ([`stamp::same_code`]).
fn check_resumable(
    prior: &BenchResult,
    fresh: &BenchResult,
    same_code: impl Fn(&str, &str) -> bool,
) -> Result<()> {
    ensure!(
        stamp::is_clean_commit(&fresh.commit),
        "this checkout is {}: only committed code can be continued",
        fresh.commit
    );
    ensure!(
        same_code(&prior.commit, &fresh.commit),
        "it was made at {}, this checkout is {} and its code differs; run without --resume",
        prior.commit,
        fresh.commit
    );
    ensure!(
        prior.command == fresh.command && prior.quick == fresh.quick,
        "it was made by `{}`, this is `{}`",
        prior.command,
        fresh.command
    );
    ensure!(
        prior.machine.same_kind(&fresh.machine) && prior.backend == fresh.backend,
        "it was made on another kind of machine or link emulator"
    );
    Ok(())
}

/// How the report names a part of a continued run: when it started, and
/// the commit and kernel where they differ from the first part's.
fn resumed_part(prior: &BenchResult, fresh: &BenchResult) -> String {
    let mut part = fresh.date_utc.clone();
    if fresh.commit != prior.commit {
        part.push_str(&format!(" at commit {}", fresh.commit));
    }
    if fresh.machine.kernel != prior.machine.kernel {
        part.push_str(&format!(" on kernel {}", fresh.machine.kernel));
    }
    part
}

/// The command as the report shows it: `--resume` continues a run of the
/// same command, so it is not part of it.
pub fn without_resume(command: &str) -> String {
    let mut words: Vec<&str> = command
        .split_whitespace()
        .filter(|w| *w != "--resume")
        .collect();
    if words.last() == Some(&"--") {
        words.pop();
    }
    words.join(" ")
}

/// Writes the report of `json` (a run's `NAME.json`) again as `NAME.md`
/// beside it, with the current rendering, stamped `by` (the command and
/// commit that rendered it). The data file and the plots stay as they are.
pub fn render_again(json: &Path, by: &str) -> Result<PathBuf> {
    let text =
        std::fs::read_to_string(json).with_context(|| format!("reading {}", json.display()))?;
    let mut r: BenchResult = serde_json::from_str(&text)
        .with_context(|| format!("{}: not a scenario-bench result", json.display()))?;
    r.rendered_again = Some(by.to_string());
    let md = json.with_extension("md");
    std::fs::write(&md, report::render(&r)).with_context(|| format!("writing {}", md.display()))?;
    Ok(md)
}

fn write_outputs(o: &Options, r: &BenchResult) -> Result<()> {
    let name = &o.results_name;
    std::fs::write(o.out_dir.join(format!("{name}.md")), report::render(r))?;
    std::fs::write(
        o.out_dir.join(format!("{name}.json")),
        serde_json::to_string_pretty(r)? + "\n",
    )?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::scenarios::record::tests::rec;
    use crate::scenarios::record::{DecisionView, Outcome};

    #[test]
    fn assembles_rows_oracle_and_estimates() {
        let sc = Scenario::parse(
            r#"
name = "t"
description = "t"
duration_s = 10
[profile]
edge_cpu_share = 0.25
local_workers = 1
[workload]
seed = 1
tasks_per_s = 1
mix = [{ task = "image_classification", weight = 1.0, deadline_ms = 100 }]
"#,
        )
        .unwrap();
        let with = |mut r: TaskRecord, local_inf: f64, cloud_inf: f64| {
            r.decision = Some(DecisionView {
                local_inference_ms: local_inf,
                cloud_inference_ms: cloud_inf,
                ..Default::default()
            });
            r
        };
        let run = |policy: &str, records: Vec<TaskRecord>| PolicyRun {
            policy: policy.into(),
            records,
            throttling: Default::default(),
        };
        let runs = vec![
            run(
                "always-local",
                vec![
                    with(rec(0, Outcome::Ok, 5.0, "local"), 1.0, 9.0),
                    with(rec(1, Outcome::Ok, 150.0, "local"), 3.0, 9.0),
                ],
            ),
            run(
                "always-offload",
                vec![
                    with(rec(0, Outcome::Ok, 45.0, "cloud"), 7.0, 2.0),
                    with(rec(1, Outcome::Ok, 50.0, "cloud"), 7.0, 4.0),
                ],
            ),
            run(
                "cost-model",
                vec![
                    rec(0, Outcome::Ok, 6.0, "local"),
                    rec(1, Outcome::Failed, 1.0, ""),
                ],
            ),
        ];
        let r = assemble(&sc, (0.0, 10.0), "q".into(), &runs);
        assert_eq!(r.rows.len(), 3);
        let orc = r.oracle.unwrap();
        assert_eq!((orc.tasks, orc.deadline_missed, orc.offloaded), (2, 0, 1));
        assert_eq!(r.rows[2].vs_oracle_ms, Some(1.0));
        assert_eq!(r.rows[2].summary.failed, 1);
        let image = |m: &BTreeMap<String, f64>| m.get("image_classification").copied();
        assert_eq!(image(&r.local_inference_ms), Some(2.0));
        assert_eq!(image(&r.cloud_inference_ms), Some(3.0));
        // Without both fixed policies there is no oracle.
        let r = assemble(&sc, (0.0, 10.0), "q".into(), &runs[2..]);
        assert!(r.oracle.is_none() && r.rows[0].vs_oracle_ms.is_none());
    }

    #[test]
    fn each_policy_takes_each_place_in_turn_across_seeds() {
        assert_eq!(run_order(5, 0), vec![0, 1, 2, 3, 4]);
        assert_eq!(run_order(5, 1), vec![1, 2, 3, 4, 0]);
        assert_eq!(run_order(5, 7), vec![2, 3, 4, 0, 1]);
        assert!(run_order(0, 3).is_empty());
        // Over as many seeds as policies, every policy runs once in
        // every place, and each seed runs every policy once.
        let n = 6;
        let mut seen = vec![vec![0; n]; n];
        for k in 0..n as u64 {
            let order = run_order(n, k);
            let mut sorted = order.clone();
            sorted.sort();
            assert_eq!(sorted, (0..n).collect::<Vec<_>>());
            for (place, &p) in order.iter().enumerate() {
                seen[p][place] += 1;
            }
        }
        assert!(seen.iter().flatten().all(|&c| c == 1), "{seen:?}");
    }

    #[test]
    fn a_run_is_continued_only_by_the_same_command_on_the_same_code() {
        assert_eq!(
            without_resume("cargo xtask bench --set scenarios -- --resume"),
            "cargo xtask bench --set scenarios"
        );
        assert_eq!(
            without_resume("scenario-bench --resume --only wan"),
            "scenario-bench --only wan"
        );
        let prior = crate::scenarios::report::tests::result();
        let fresh = |f: fn(&mut BenchResult)| {
            let mut r = prior.clone();
            r.scenarios.clear();
            f(&mut r);
            r
        };
        // Commits whose code is the same as the prior's: only results
        // were committed between them.
        let same_code = |a: &str, b: &str| a == b || [a, b] == ["0123456789ab", "00000000000c"];
        // (what changed, resumable)
        let cases: [(&str, BenchResult, bool); 8] = [
            ("nothing", fresh(|_| {}), true),
            (
                "a commit of results alone",
                fresh(|r| r.commit = "00000000000c".into()),
                true,
            ),
            (
                "the kernel build",
                fresh(|r| r.machine.kernel.push_str("-v2")),
                true,
            ),
            (
                "uncommitted changes",
                fresh(|r| r.commit.push_str(" + uncommitted changes")),
                false,
            ),
            (
                "another commit",
                fresh(|r| r.commit = "fedcba987654".into()),
                false,
            ),
            (
                "another command",
                fresh(|r| r.command.push_str(" --seeds 5")),
                false,
            ),
            (
                "quick instead of full",
                fresh(|r| r.quick = !r.quick),
                false,
            ),
            ("another machine", fresh(|r| r.machine.cores += 1), false),
        ];
        for (what, f, want) in cases {
            assert_eq!(
                check_resumable(&prior, &f, same_code).is_ok(),
                want,
                "{what}"
            );
        }
        let later = fresh(|r| {
            r.date_utc = "2026-12-04 12:40 UTC".into();
            r.commit = "00000000000c".into();
            r.machine.kernel = "6.18.44-fc-v1252".into();
        });
        assert_eq!(
            resumed_part(&prior, &later),
            "2026-12-04 12:40 UTC at commit 00000000000c on kernel 6.18.44-fc-v1252"
        );
        assert_eq!(
            resumed_part(&prior, &fresh(|r| r.date_utc = "d".into())),
            "d"
        );
    }
}
