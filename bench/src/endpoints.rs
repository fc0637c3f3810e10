//! `bench-endpoints`: one edge, two cloud services behind links of their
//! own (two jitter labs sharing the edge namespace: a near link that turns
//! jittery for a while, a far stable one), the real agents, the scenario
//! driver's workload. Measures where tasks go as the links change (the
//! share of each endpoint per second), and what happens when the near
//! cloud is killed: every task must still be answered, and the killed
//! endpoint's share must fall to zero within seconds.

use crate::scenarios::record::{Outcome, TaskRecord};
use crate::scenarios::run::{lab_command, output, read_records};
use crate::support::cpu_quota::{self, CpuCgroup};
use crate::support::procs::{self, Proc};
use crate::support::stamp;
use anyhow::{ensure, Context, Result};
use jitter_lab::lab::Ready;
use jitter_lab::scenario::Scenario;
use plotters::prelude::*;
use serde::Serialize;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

const GRPC_PORT: u16 = 50051;
const QUIC_PORT: u16 = 50052;
const EDGE_API: &str = "127.0.0.1:50061";
/// The endpoints' names in the edge's configuration.
pub const NEAR: &str = "near";
pub const FAR: &str = "far";

#[derive(Debug, Clone)]
pub struct Options {
    /// The near link and the workload.
    pub near: PathBuf,
    /// The far link.
    pub far: PathBuf,
    /// When the near cloud is killed (seconds after the workload starts);
    /// `None`: never.
    pub kill_at_s: Option<f64>,
    pub out_dir: PathBuf,
    pub work_dir: PathBuf,
    pub bin_dir: PathBuf,
    pub policy: String,
    pub warmup: Duration,
    pub period_us: u64,
    pub command: String,
}

/// One second of the run: how many tasks were sent, and where they ran.
#[derive(Debug, Clone, Serialize)]
pub struct Bin {
    pub t_s: f64,
    pub sent: usize,
    pub near: usize,
    pub far: usize,
    pub local: usize,
    pub failed: usize,
}

/// A stretch of the run between two link changes (or the kill).
#[derive(Debug, Clone, Serialize)]
pub struct Phase {
    pub from_s: f64,
    pub to_s: f64,
    pub note: String,
    pub sent: usize,
    pub near_share: f64,
    pub far_share: f64,
    pub local_share: f64,
    pub deadline_missed: usize,
    pub with_deadline: usize,
    pub p50_ms: Option<f64>,
    pub p95_ms: Option<f64>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub commit: String,
    pub machine: stamp::Machine,
    pub command: String,
    pub policy: String,
    pub near: String,
    pub far: String,
    pub kill_at_s: Option<f64>,
    pub tasks: usize,
    /// Answered with a result.
    pub ok: usize,
    /// Accepted and answered with an error, refused, or never answered.
    pub failed: usize,
    pub rejected: usize,
    pub lost: usize,
    /// Tasks sent after the kill that were still offloaded to the killed
    /// endpoint, and the last such task's send time after the kill.
    pub to_killed_after_kill: usize,
    pub last_to_killed_after_s: Option<f64>,
    pub phases: Vec<Phase>,
    pub bins: Vec<Bin>,
}

/// Where a task ran: an endpoint's name, "local", or "failed".
fn ran_at(r: &TaskRecord) -> &str {
    match (r.outcome, r.path.as_deref()) {
        (Outcome::Ok, Some("local")) => "local",
        (Outcome::Ok, Some(_)) => r.decision.as_ref().map_or("cloud", |d| d.endpoint.as_str()),
        _ => "failed",
    }
}

fn percentile(sorted: &[f64], q: f64) -> Option<f64> {
    if sorted.is_empty() {
        return None;
    }
    let i = ((sorted.len() - 1) as f64 * q).round() as usize;
    Some(sorted[i])
}

fn phase(records: &[TaskRecord], from_s: f64, to_s: f64, note: &str) -> Phase {
    let inside: Vec<&TaskRecord> = records
        .iter()
        .filter(|r| r.sent_ms / 1e3 >= from_s && r.sent_ms / 1e3 < to_s)
        .collect();
    let n = inside.len().max(1) as f64;
    let share = |at: &str| inside.iter().filter(|r| ran_at(r) == at).count() as f64 / n;
    let mut lat: Vec<f64> = inside
        .iter()
        .filter(|r| r.outcome == Outcome::Ok)
        .map(|r| r.latency_ms)
        .collect();
    lat.sort_by(f64::total_cmp);
    let with_deadline: Vec<&&TaskRecord> =
        inside.iter().filter(|r| r.deadline_ms.is_some()).collect();
    let missed = with_deadline
        .iter()
        .filter(|r| {
            r.outcome != Outcome::Ok || r.deadline_ms.is_some_and(|d| r.latency_ms > d as f64)
        })
        .count();
    Phase {
        from_s,
        to_s,
        note: note.to_string(),
        sent: inside.len(),
        near_share: share(NEAR),
        far_share: share(FAR),
        local_share: share("local"),
        deadline_missed: missed,
        with_deadline: with_deadline.len(),
        p50_ms: percentile(&lat, 0.5),
        p95_ms: percentile(&lat, 0.95),
    }
}

/// The phases: the near link's schedule, cut at the kill.
pub fn analyse(
    records: &[TaskRecord],
    near: &Scenario,
    kill_at_s: Option<f64>,
) -> (Vec<Phase>, Vec<Bin>) {
    let mut cuts: Vec<(f64, String)> = vec![(0.0, "start".into())];
    cuts.extend(
        near.schedule
            .iter()
            .map(|e| (e.at_s, e.note.clone()))
            .filter(|(t, _)| *t < near.duration_s),
    );
    if let Some(k) = kill_at_s {
        cuts.push((k, format!("{NEAR} cloud killed")));
    }
    cuts.sort_by(|a, b| a.0.total_cmp(&b.0));
    let mut phases = Vec::new();
    for (i, (from, note)) in cuts.iter().enumerate() {
        let to = cuts.get(i + 1).map_or(near.duration_s, |c| c.0);
        phases.push(phase(records, *from, to, note));
    }
    let secs = near.duration_s.ceil() as usize;
    let mut bins: Vec<Bin> = (0..secs)
        .map(|s| Bin {
            t_s: s as f64,
            sent: 0,
            near: 0,
            far: 0,
            local: 0,
            failed: 0,
        })
        .collect();
    for r in records {
        let Some(b) = bins.get_mut((r.sent_ms / 1e3) as usize) else {
            continue;
        };
        b.sent += 1;
        match ran_at(r) {
            NEAR => b.near += 1,
            FAR => b.far += 1,
            "local" => b.local += 1,
            _ => b.failed += 1,
        }
    }
    (phases, bins)
}

/// Starts one lab; `join` puts its edge end into another lab's edge.
fn start_lab(
    o: &Options,
    file: &Path,
    prefix: &str,
    subnet: u8,
    join: Option<&str>,
) -> Result<(Proc, Ready)> {
    let mut cmd = Command::new(o.bin_dir.join("netem-tun"));
    cmd.args(["run", "--scenario"])
        .arg(file)
        .args(["--ns-prefix", prefix, "--hold-schedule"])
        .args(["--subnet", &subnet.to_string()]);
    if let Some(ns) = join {
        cmd.args(["--join-edge-ns", ns]);
    }
    let lab = Proc::spawn(
        &format!("netem-tun ({prefix})"),
        cmd,
        &o.work_dir.join(format!("{prefix}.netem-tun.log")),
    )?;
    let ready = lab.wait_line(|l| l.starts_with("ready "), Duration::from_secs(30))?;
    let net = Ready::parse(&ready)?;
    Ok((lab, net))
}

fn start_cloud(o: &Options, net: &Ready, certs: &Path, name: &str) -> Result<Proc> {
    let mut cmd = jitter_lab::sys::netns::command(&net.cloud_ns, o.bin_dir.join("agent"))?;
    cmd.args(["--log", "warn", "--tls-dir"])
        .arg(certs)
        .args(["cloud", "--listen-grpc"])
        .arg(format!("{}:{GRPC_PORT}", net.cloud_addr))
        .arg("--listen-quic")
        .arg(format!("{}:{QUIC_PORT}", net.cloud_addr));
    let cloud = Proc::spawn(
        &format!("cloud service ({name})"),
        cmd,
        &o.work_dir.join(format!("{name}.cloud.log")),
    )?;
    cloud.wait_line(
        |l| l.starts_with("cloud listening"),
        Duration::from_secs(60),
    )?;
    Ok(cloud)
}

/// The edge's configuration: the two endpoints, QUIC first.
fn edge_config(near: &Ready, far: &Ready) -> String {
    let ep = |name: &str, net: &Ready| {
        format!(
            "[[edge.endpoints]]\nname = \"{name}\"\naddress = \"{a}:{GRPC_PORT}\"\n\
             quic = \"{a}:{QUIC_PORT}\"\n\n",
            a = net.cloud_addr
        )
    };
    format!("{}{}", ep(NEAR, near), ep(FAR, far))
}

/// Runs the benchmark and writes endpoints.md, endpoints.json and
/// endpoints.png into `o.out_dir`.
pub fn run(o: &Options) -> Result<Report> {
    std::fs::create_dir_all(&o.work_dir)?;
    std::fs::create_dir_all(&o.out_dir)?;
    let near_sc = Scenario::load(&o.near)?;
    let far_sc = Scenario::load(&o.far)?;
    let pid = std::process::id();
    let (mut near_lab, near) = start_lab(o, &o.near, &format!("ep{pid}n"), 0, None)?;
    let (mut far_lab, far) = start_lab(o, &o.far, &format!("ep{pid}f"), 1, Some(&near.edge_ns))?;
    let certs = o.work_dir.join("certs");
    output(
        Command::new(o.bin_dir.join("agent"))
            .args(["--log", "warn", "gen-certs", "--out"])
            .arg(&certs)
            .args(["--san", &near.cloud_addr, "--san", &far.cloud_addr]),
    )?;
    let mut near_cloud = start_cloud(o, &near, &certs, NEAR)?;
    let mut far_cloud = start_cloud(o, &far, &certs, FAR)?;

    let config = o.work_dir.join("edge.toml");
    std::fs::write(&config, edge_config(&near, &far))?;
    let ctl = cpu_quota::detect()?;
    let cg = CpuCgroup::create(
        &ctl,
        &format!("{pid}-endpoints-edge"),
        near_sc.profile.edge_cpu_share,
        o.period_us,
    )?;
    procs::register_cgroup(&cg.path);
    let mut cmd = jitter_lab::sys::netns::command(&near.edge_ns, o.bin_dir.join("agent"))?;
    cmd.args(["--log", "warn", "--tls-dir"])
        .arg(&certs)
        .arg("--config")
        .arg(&config)
        .args(["edge", "--listen", EDGE_API, "--policy", &o.policy])
        .args(["--workers", &near_sc.profile.local_workers.to_string()]);
    cg.join_at_spawn(&mut cmd)?;
    let mut edge = Proc::spawn("edge agent", cmd, &o.work_dir.join("edge.log"))?;
    edge.wait_line(|l| l.starts_with("edge listening"), Duration::from_secs(60))?;
    std::thread::sleep(o.warmup);

    let out = o.work_dir.join("tasks.jsonl");
    let _ = std::fs::remove_file(&out);
    let mut cmd =
        jitter_lab::sys::netns::command(&near.edge_ns, o.bin_dir.join("scenario-driver"))?;
    cmd.args(["run", "--edge", EDGE_API, "--policy", &o.policy])
        .arg("--scenario")
        .arg(&o.near)
        .args(["--duration", &near_sc.duration_s.to_string()])
        .arg("--out")
        .arg(&out);
    let mut driver = Proc::spawn("driver", cmd, &o.work_dir.join("driver.log"))?;
    driver.wait_line(|l| l.starts_with("ready"), Duration::from_secs(30))?;
    // Both links' schedules and the workload start together.
    lab_command(&mut near_lab, "schedule start")?;
    lab_command(&mut far_lab, "schedule start")?;
    driver.send_line("go")?;
    let started = Instant::now();
    if let Some(k) = o.kill_at_s {
        let at = started + Duration::from_secs_f64(k);
        std::thread::sleep(at.saturating_duration_since(Instant::now()));
        // Abruptly: no goodbye on any connection.
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(near_cloud.pid() as i32),
            nix::sys::signal::Signal::SIGKILL,
        )
        .context("killing the near cloud")?;
        eprintln!(
            "bench-endpoints: killed the {NEAR} cloud at {:.1} s",
            started.elapsed().as_secs_f64()
        );
    }
    let limit = Duration::from_secs_f64(near_sc.duration_s) + Duration::from_secs(120);
    let done = driver.wait_line(|l| l.starts_with("done"), limit)?;
    eprintln!("bench-endpoints: {done}");
    let st = driver.wait_timeout(Duration::from_secs(10))?;
    ensure!(
        st.is_some_and(|s| s.success()),
        "the driver did not exit cleanly: {st:?}"
    );
    edge.stop(Duration::from_secs(15))?;
    drop(edge);
    let path = cg.path.clone();
    drop(cg);
    procs::unregister_cgroup(&path);
    let _ = near_cloud.stop(Duration::from_secs(5));
    far_cloud.stop(Duration::from_secs(10))?;
    drop((near_cloud, far_cloud));
    // The far lab first: its link lives in the near lab's edge namespace.
    for lab in [&mut far_lab, &mut near_lab] {
        lab.close_stdin();
        if lab.wait_timeout(Duration::from_secs(20))?.is_none() {
            lab.stop(Duration::from_secs(10))?;
        }
    }

    let records = read_records(&out)?;
    let report = summarize(o, &records, &near_sc, &far_sc);
    write(o, &report, &records, &near_sc)?;
    Ok(report)
}

fn summarize(o: &Options, records: &[TaskRecord], near: &Scenario, far: &Scenario) -> Report {
    let (phases, bins) = analyse(records, near, o.kill_at_s);
    let count = |k: Outcome| records.iter().filter(|r| r.outcome == k).count();
    let after_kill: Vec<&TaskRecord> = o.kill_at_s.map_or_else(Vec::new, |k| {
        records
            .iter()
            .filter(|r| r.sent_ms / 1e3 >= k)
            .filter(|r| r.decision.as_ref().is_some_and(|d| d.endpoint == NEAR))
            .filter(|r| r.decision.as_ref().is_some_and(|d| d.path == "cloud"))
            .collect()
    });
    Report {
        commit: stamp::source_commit(),
        machine: stamp::machine(),
        command: o.command.clone(),
        policy: o.policy.clone(),
        near: near.description.clone(),
        far: far.description.clone(),
        kill_at_s: o.kill_at_s,
        tasks: records.len(),
        ok: count(Outcome::Ok),
        failed: count(Outcome::Failed),
        rejected: count(Outcome::Rejected),
        lost: count(Outcome::Lost),
        to_killed_after_kill: after_kill.len(),
        last_to_killed_after_s: o.kill_at_s.and_then(|k| {
            after_kill
                .iter()
                .map(|r| r.sent_ms / 1e3 - k)
                .fold(None, |m: Option<f64>, v| Some(m.map_or(v, |m| m.max(v))))
        }),
        phases,
        bins,
    }
}

fn fmt_ms(v: Option<f64>) -> String {
    v.map_or("-".into(), |v| format!("{v:.1}"))
}

fn markdown(r: &Report) -> String {
    let mut s = String::new();
    s.push_str("# Offload endpoints: two clouds behind different links\n\n");
    s.push_str(&format!(
        "Generated by `{}` at commit {} on {} ({} cores, {:.0} GiB, kernel {}). Policy `{}`.\n\n",
        r.command,
        r.commit,
        r.machine.cpu_model,
        r.machine.cores,
        r.machine.memory_gib,
        r.machine.kernel,
        r.policy
    ));
    s.push_str(&format!("- `{NEAR}`: {}\n- `{FAR}`: {}\n\n", r.near, r.far));
    s.push_str(
        "One edge agent (two jitter labs share its namespace, one link each) with both \
         clouds as `[[edge.endpoints]]`; the workload driver sends the near scenario's \
         stream. Shares are of the tasks sent in each phase, by where they ran.\n\n",
    );
    s.push_str("| phase | from-to (s) | tasks | near | far | local | deadline missed | p50 ms | p95 ms |\n");
    s.push_str("|---|---|---|---|---|---|---|---|---|\n");
    for p in &r.phases {
        s.push_str(&format!(
            "| {} | {:.0}-{:.0} | {} | {:.0} % | {:.0} % | {:.0} % | {}/{} | {} | {} |\n",
            p.note,
            p.from_s,
            p.to_s,
            p.sent,
            p.near_share * 100.0,
            p.far_share * 100.0,
            p.local_share * 100.0,
            p.deadline_missed,
            p.with_deadline,
            fmt_ms(p.p50_ms),
            fmt_ms(p.p95_ms)
        ));
    }
    s.push_str(&format!(
        "\nTasks: {} sent, {} answered with a result, {} failed, {} refused, {} lost.\n",
        r.tasks, r.ok, r.failed, r.rejected, r.lost
    ));
    if let Some(k) = r.kill_at_s {
        s.push_str(&format!(
            "\nThe `{NEAR}` cloud was killed (SIGKILL) at {k:.0} s: {} tasks sent after that \
             were still offloaded to it (then answered elsewhere), the last {} s after the kill.\n",
            r.to_killed_after_kill,
            r.last_to_killed_after_s
                .map_or("-".into(), |v| format!("{v:.2}"))
        ));
    }
    s.push_str("\n![share of tasks per endpoint per second](endpoints.png)\n");
    s
}

fn write(o: &Options, r: &Report, records: &[TaskRecord], near: &Scenario) -> Result<()> {
    std::fs::write(o.out_dir.join("endpoints.md"), markdown(r))?;
    std::fs::write(
        o.out_dir.join("endpoints.json"),
        serde_json::to_string_pretty(r)?,
    )?;
    plot(&o.out_dir.join("endpoints.png"), r, records, near)
}

fn err<E: std::fmt::Display>(e: E) -> anyhow::Error {
    anyhow::anyhow!("plotting: {e}")
}

/// Top: the share of each endpoint (and local) per second; bottom: the
/// RTT each offloaded task's decision saw, by endpoint.
fn plot(path: &Path, r: &Report, records: &[TaskRecord], near: &Scenario) -> Result<()> {
    let colors = [
        (NEAR, RGBColor(214, 39, 40)),
        (FAR, RGBColor(31, 119, 180)),
        ("local", RGBColor(44, 160, 44)),
    ];
    let root = BitMapBackend::new(path, (1300, 760)).into_drawing_area();
    root.fill(&WHITE).map_err(err)?;
    let root = root
        .titled(
            "Two offload endpoints: share per second and the RTT the decisions saw",
            ("sans-serif", 24),
        )
        .map_err(err)?;
    let (top, bottom) = root.split_vertically(380);
    let dur = near.duration_s;
    let mut marks: Vec<f64> = near.schedule.iter().map(|e| e.at_s).collect();
    marks.extend(r.kill_at_s);
    let mut chart = ChartBuilder::on(&top)
        .margin(8)
        .x_label_area_size(35)
        .y_label_area_size(60)
        .build_cartesian_2d(0.0..dur, 0.0..1.05)
        .map_err(err)?;
    chart
        .configure_mesh()
        .x_desc("time since the workload started (s)")
        .y_desc("share of tasks")
        .draw()
        .map_err(err)?;
    for (name, color) in colors {
        let pts: Vec<(f64, f64)> = r
            .bins
            .iter()
            .filter(|b| b.sent > 0)
            .map(|b| {
                let n = match name {
                    NEAR => b.near,
                    FAR => b.far,
                    _ => b.local,
                };
                (b.t_s + 0.5, n as f64 / b.sent as f64)
            })
            .collect();
        chart
            .draw_series(LineSeries::new(pts, color.stroke_width(3)))
            .map_err(err)?
            .label(name)
            .legend(move |(x, y)| {
                PathElement::new(vec![(x, y), (x + 20, y)], color.stroke_width(3))
            });
    }
    for m in &marks {
        chart
            .draw_series(LineSeries::new(
                vec![(*m, 0.0), (*m, 1.05)],
                RGBColor(120, 120, 120).stroke_width(1),
            ))
            .map_err(err)?;
    }
    chart
        .configure_series_labels()
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .draw()
        .map_err(err)?;

    let rtt_top = records
        .iter()
        .filter_map(|t| t.decision.as_ref().map(|d| d.rtt_ms))
        .fold(10.0, f64::max)
        * 1.2;
    let mut chart = ChartBuilder::on(&bottom)
        .margin(8)
        .x_label_area_size(35)
        .y_label_area_size(60)
        .build_cartesian_2d(0.0..dur, 0.0..rtt_top)
        .map_err(err)?;
    chart
        .configure_mesh()
        .x_desc("time since the workload started (s)")
        .y_desc("RTT of the chosen endpoint (ms)")
        .draw()
        .map_err(err)?;
    for (name, color) in colors.iter().take(2) {
        let pts = records.iter().filter_map(|t| {
            let d = t.decision.as_ref()?;
            (d.endpoint == *name && d.rtt_ms > 0.0)
                .then(|| Circle::new((t.sent_ms / 1e3, d.rtt_ms), 2, color.filled()))
        });
        chart.draw_series(pts).map_err(err)?;
    }
    root.present().map_err(err)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::scenarios::record::DecisionView;

    fn rec(sent_s: f64, path: Option<&str>, endpoint: &str, outcome: Outcome) -> TaskRecord {
        TaskRecord {
            seq: 0,
            sent_ms: sent_s * 1e3,
            latency_ms: 20.0,
            task: "image_classification".into(),
            priority: "medium".into(),
            deadline_ms: Some(100),
            outcome,
            error: String::new(),
            path: path.map(|p| if p == "local" { "local" } else { "cloud" }.to_string()),
            transport: String::new(),
            fell_back: false,
            label: None,
            predicted: None,
            decision: Some(DecisionView {
                path: if path == Some("local") {
                    "local"
                } else {
                    "cloud"
                }
                .into(),
                endpoint: endpoint.into(),
                ..Default::default()
            }),
            agent_ms: None,
            queue_ms: None,
            inference_ms: None,
        }
    }

    #[test]
    fn phases_and_bins_count_where_tasks_ran() {
        let sc: Scenario = toml::from_str(
            r#"
name = "t"
description = "test"
duration_s = 4
[link]
delay_ms = 1.0
[[schedule]]
at_s = 2
note = "change"
link = { jitter_ms = 5.0 }
[profile]
edge_cpu_share = 0.5
local_workers = 1
[workload]
seed = 1
tasks_per_s = 1
mix = [{ task = "image_classification", weight = 1.0 }]
"#,
        )
        .unwrap();
        let records = vec![
            rec(0.1, Some("cloud/quic"), NEAR, Outcome::Ok),
            rec(0.5, Some("cloud/quic"), NEAR, Outcome::Ok),
            rec(1.2, Some("local"), NEAR, Outcome::Ok),
            rec(2.1, Some("cloud/grpc"), FAR, Outcome::Ok),
            rec(3.5, None, FAR, Outcome::Failed),
        ];
        let (phases, bins) = analyse(&records, &sc, Some(3.0));
        assert_eq!(phases.len(), 3);
        assert_eq!((phases[0].sent, phases[0].note.as_str()), (3, "start"));
        assert!((phases[0].near_share - 2.0 / 3.0).abs() < 1e-9);
        assert!((phases[0].local_share - 1.0 / 3.0).abs() < 1e-9);
        assert_eq!(phases[1].far_share, 1.0);
        assert_eq!(phases[2].note, "near cloud killed");
        assert_eq!(phases[2].deadline_missed, 1);
        assert_eq!(bins.len(), 4);
        assert_eq!(
            (bins[0].near, bins[1].local, bins[2].far, bins[3].failed),
            (2, 1, 1, 1)
        );
    }
}
