//! `netem-tun`: the jitter lab's link emulator (see bench/README.md).
//!
//! run        build the lab for a scenario and keep it up until SIGINT/SIGTERM/stdin EOF
//! ctl        send a control command to a running lab
//! check      emulator accuracy check (20 ms +- 5 ms normal, 1 % loss, one way)
//! tc-script  print the tc netem gateway script of a scenario
//! validate   parse scenario files
//! backend    say whether this kernel gets tc netem or the userspace emulator
//! cleanup    remove what a crashed run left behind

use anyhow::{bail, Context, Result};
use clap::{Parser, Subcommand, ValueEnum};
use jitter_lab::accuracy::{self, CheckOptions};
use jitter_lab::control::{self, emit, ControlSocket, Controller};
use jitter_lab::lab::{self, Backend, Lab, LabConfig};
use jitter_lab::params::Dir;
use jitter_lab::scenario::Scenario;
use jitter_lab::sys::{self, netns};

use std::io::BufRead;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::Duration;

const DEFAULT_PREFIX: &str = "jlab";

#[derive(Parser)]
#[command(
    name = "netem-tun",
    about = "Jitter lab: userspace link emulator between two network namespaces"
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Clone, Copy, ValueEnum)]
enum BackendChoice {
    /// tc netem if the kernel has it, else the userspace emulator.
    Auto,
    Tun,
    Netem,
}

#[derive(Subcommand)]
enum Cmd {
    /// Build the lab for a scenario; print `ready ...` on stdout; run until
    /// SIGINT/SIGTERM or stdin closes; tear everything down.
    Run {
        #[arg(long)]
        scenario: PathBuf,
        /// Namespaces are <prefix>-edge and <prefix>-cloud.
        #[arg(long, default_value = DEFAULT_PREFIX)]
        ns_prefix: String,
        /// Control socket (default /run/netem-tun/<prefix>.sock).
        #[arg(long)]
        control: Option<PathBuf>,
        #[arg(long, value_enum, default_value = "auto")]
        backend: BackendChoice,
        /// Do not start the scenario schedule at ready; wait for `schedule start`.
        #[arg(long)]
        hold_schedule: bool,
        /// Tear down after this many seconds.
        #[arg(long)]
        stop_after: Option<f64>,
        /// Do not read commands from stdin and keep running when it closes
        /// (the end of stdin stops the lab only when stdin is a pipe, socket or terminal).
        #[arg(long)]
        ignore_stdin: bool,
        /// RNG seed of the link model (default: the scenario's workload.seed).
        #[arg(long)]
        seed: Option<u64>,
        /// Link number: addresses 198.18.N.1 (edge) and 198.18.N.2 (cloud)
        /// on interface jlabN.
        #[arg(long, default_value_t = 0)]
        subnet: u8,
        /// Put the edge end into this existing namespace (another lab's
        /// edge, with another --subnet) instead of creating <prefix>-edge:
        /// one edge, several clouds behind links of their own.
        #[arg(long)]
        join_edge_ns: Option<String>,
    },
    /// Send one command to a running lab, e.g. `ctl set uplink jitter_ms=25`.
    Ctl {
        #[arg(long)]
        control: Option<PathBuf>,
        #[arg(long, default_value = DEFAULT_PREFIX)]
        ns_prefix: String,
        #[arg(trailing_var_arg = true, allow_hyphen_values = true, required = true)]
        command: Vec<String>,
    },
    /// Accuracy check: 20 ms +- 5 ms (normal) and 1 % loss one way, measured
    /// with ICMP and a TCP flow; the last stdout line is JSON with --json.
    Check {
        #[arg(long)]
        json: bool,
        #[arg(long)]
        ns_prefix: Option<String>,
        #[arg(long, value_enum, default_value = "tun")]
        backend: Backend,
        #[arg(long, default_value_t = 500)]
        icmp_count: u32,
        #[arg(long, default_value_t = 10.0)]
        tcp_seconds: f64,
        #[arg(long, default_value_t = 5000)]
        loss_count: u32,
        #[arg(long, default_value_t = jitter_lab::params::DEFAULT_JITTER_HOLD_MS)]
        jitter_hold_ms: f64,
        #[arg(long)]
        reorder: bool,
        /// Link model seed (default: from the clock).
        #[arg(long)]
        seed: Option<u64>,
    },
    /// Print the standalone tc netem script of a scenario (bench/netem/<name>.sh).
    TcScript {
        #[arg(long)]
        scenario: PathBuf,
    },
    /// Parse scenario files (default: every file in bench/scenarios).
    Validate { paths: Vec<PathBuf> },
    /// Print which backend `--backend auto` picks here.
    Backend,
    /// Remove namespaces, lock and socket of a prefix left by a crashed run.
    Cleanup {
        #[arg(long, default_value = DEFAULT_PREFIX)]
        ns_prefix: String,
    },
}

fn main() {
    let cli = Cli::parse();
    let code = match dispatch(cli.cmd) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("netem-tun: error: {e:#}");
            1
        }
    };
    std::process::exit(code);
}

fn dispatch(cmd: Cmd) -> Result<i32> {
    match cmd {
        Cmd::Run {
            scenario,
            ns_prefix,
            control,
            backend,
            hold_schedule,
            stop_after,
            ignore_stdin,
            seed,
            subnet,
            join_edge_ns,
        } => {
            let control = control
                .unwrap_or_else(|| Path::new(netns::RUN_DIR).join(format!("{ns_prefix}.sock")));
            run(RunArgs {
                scenario,
                prefix: ns_prefix,
                control,
                backend,
                hold_schedule,
                stop_after,
                ignore_stdin,
                seed,
                subnet,
                join_edge_ns,
            })
        }
        Cmd::Ctl {
            control,
            ns_prefix,
            command,
        } => {
            let path = control
                .unwrap_or_else(|| Path::new(netns::RUN_DIR).join(format!("{ns_prefix}.sock")));
            let reply = control::send(&path, &command.join(" "))?;
            println!("{reply}");
            Ok(if reply.starts_with("ok") { 0 } else { 1 })
        }
        Cmd::Check {
            json,
            ns_prefix,
            backend,
            icmp_count,
            tcp_seconds,
            loss_count,
            jitter_hold_ms,
            reorder,
            seed,
        } => {
            let mut opts = CheckOptions {
                backend,
                icmp_count,
                tcp_seconds,
                loss_count,
                jitter_hold_ms,
                reorder,
                seed,
                ..Default::default()
            };
            if let Some(p) = ns_prefix {
                opts.prefix = p;
            }
            run_check(&opts, json)
        }
        Cmd::TcScript { scenario } => {
            let s = Scenario::load(&scenario)?;
            print!(
                "{}",
                jitter_lab::tc::gateway_script(&s, &scenario.display().to_string())
            );
            Ok(0)
        }
        Cmd::Validate { paths } => validate(paths),
        Cmd::Backend => {
            sys::require_root("netem-tun backend")?;
            let (b, why) = lab::detect_backend();
            println!("backend={} ({why})", b.as_str());
            Ok(0)
        }
        Cmd::Cleanup { ns_prefix } => {
            sys::require_root("netem-tun cleanup")?;
            netns::check_prefix(&ns_prefix)?;
            let lock = netns::PrefixLock::acquire(&ns_prefix)?;
            for ns in [format!("{ns_prefix}-edge"), format!("{ns_prefix}-cloud")] {
                if netns::exists(&ns) {
                    netns::delete(&ns)?;
                    eprintln!("removed namespace {ns}");
                }
            }
            let _ =
                std::fs::remove_file(Path::new(netns::RUN_DIR).join(format!("{ns_prefix}.sock")));
            drop(lock);
            Ok(0)
        }
    }
}

/// Whether stdin is a pipe, socket or terminal, whose end means "stop".
/// /dev/null or a file (a backgrounded shell job) ends at once and is not.
fn stdin_is_a_channel() -> bool {
    use std::os::unix::fs::FileTypeExt;
    if nix::unistd::isatty(std::io::stdin()).unwrap_or(false) {
        return true;
    }
    std::fs::metadata("/proc/self/fd/0")
        .map(|m| m.file_type().is_fifo() || m.file_type().is_socket())
        .unwrap_or(false)
}

struct RunArgs {
    scenario: PathBuf,
    prefix: String,
    control: PathBuf,
    backend: BackendChoice,
    hold_schedule: bool,
    stop_after: Option<f64>,
    ignore_stdin: bool,
    seed: Option<u64>,
    subnet: u8,
    join_edge_ns: Option<String>,
}

fn run(a: RunArgs) -> Result<i32> {
    sys::require_root("netem-tun run")?;
    let scenario = Scenario::load(&a.scenario)?;
    let (exit_tx, exit_rx) = mpsc::channel::<(String, i32)>();
    let tx = exit_tx.clone();
    if let Err(e) = sys::on_termination_signal(move |sig| {
        let _ = tx.send((format!("signal {}", sig.as_str()), 0));
    }) {
        eprintln!("netem-tun: {e:#}");
    }
    let backend = match a.backend {
        BackendChoice::Tun => Backend::Tun,
        BackendChoice::Netem => Backend::Netem,
        BackendChoice::Auto => {
            let (b, why) = lab::detect_backend();
            eprintln!("netem-tun: {why}");
            b
        }
    };
    if backend == Backend::Netem {
        eprintln!("netem-tun: note: netem has no jitter hold and no token-bucket burst; order is kept via `rate`");
    }
    let cfg = LabConfig {
        prefix: a.prefix.clone(),
        backend,
        seed: a.seed.unwrap_or(scenario.workload.seed),
        uplink: scenario.initial(Dir::Uplink),
        downlink: scenario.initial(Dir::Downlink),
        subnet: a.subnet,
        join_edge_ns: a.join_edge_ns.clone(),
    };
    let (fatal_tx, fatal_rx) = mpsc::channel::<String>();
    let lab = Arc::new(Lab::create(&cfg, Some(fatal_tx))?);
    let tx = exit_tx.clone();
    std::thread::spawn(move || {
        if let Ok(msg) = fatal_rx.recv() {
            let _ = tx.send((msg, 1));
        }
    });
    let ctl = Controller::new(lab.clone(), scenario.clone());
    let socket = ControlSocket::serve(&a.control, ctl.clone())?;
    let sched = {
        let ctl = ctl.clone();
        std::thread::Builder::new()
            .name("schedule".into())
            .spawn(move || ctl.schedule_loop())?
    };
    if !a.ignore_stdin {
        let (ctl, tx) = (ctl.clone(), exit_tx.clone());
        std::thread::Builder::new()
            .name("stdin".into())
            .spawn(move || {
                for line in std::io::stdin().lock().lines() {
                    let Ok(line) = line else { break };
                    if !line.trim().is_empty() {
                        emit(&ctl.exec(&line));
                    }
                }
                if stdin_is_a_channel() {
                    let _ = tx.send(("stdin closed".into(), 0));
                }
            })?;
    }
    eprintln!(
        "netem-tun: scenario {} ({}); control socket {}",
        scenario.name,
        scenario.description,
        a.control.display()
    );
    emit(&format!(
        "{} control={} scenario={}",
        lab.ready_line(),
        a.control.display(),
        scenario.name
    ));
    if !a.hold_schedule {
        ctl.start_schedule()?;
    }
    std::thread::sleep(Duration::from_millis(20));
    if backend == Backend::Tun && !lab.realtime() {
        eprintln!("netem-tun: warning: relay threads could not get SCHED_FIFO; timing may suffer under load");
    }
    let (reason, code) = match a.stop_after {
        Some(s) => exit_rx
            .recv_timeout(Duration::from_secs_f64(s))
            .unwrap_or_else(|_| (format!("stop-after {s}s"), 0)),
        None => exit_rx
            .recv()
            .unwrap_or_else(|_| ("no exit source".into(), 0)),
    };
    eprintln!("netem-tun: stopping ({reason}), tearing down");
    ctl.shutdown();
    let _ = sched.join();
    lab.teardown();
    drop(socket);
    emit(&format!("stopped reason={:?}", reason));
    Ok(code)
}

fn run_check(opts: &CheckOptions, json: bool) -> Result<i32> {
    sys::require_root("netem-tun check")?;
    lab::sweep_stale_check_namespaces();
    let slot: Arc<Mutex<Option<Arc<Lab>>>> = Arc::new(Mutex::new(None));
    let stop = Arc::new(AtomicBool::new(false));
    {
        let (slot, stop) = (slot.clone(), stop.clone());
        let installed = sys::on_termination_signal(move |sig| {
            eprintln!("netem-tun: {}; tearing down", sig.as_str());
            stop.store(true, Ordering::Relaxed);
            if let Some(lab) = slot.lock().unwrap_or_else(|e| e.into_inner()).take() {
                lab.teardown();
            }
            std::process::exit(130);
        });
        if let Err(e) = installed {
            eprintln!("netem-tun: {e:#}");
        }
    }
    let progress = |m: &str| eprintln!("netem-check: {m}");
    let report = accuracy::run(opts, &slot, &stop, &progress);
    if let Some(lab) = slot.lock().unwrap_or_else(|e| e.into_inner()).take() {
        lab.teardown();
    }
    let report = report?;
    let failures = report.tolerance_failures();
    if json {
        println!("{}", serde_json::to_string(&report)?);
    } else {
        println!(
            "configured: {} ms +- {} ms (normal, hold {} ms), loss {}",
            report.configured_delay_ms,
            report.configured_jitter_ms,
            report.jitter_hold_ms,
            report.configured_loss
        );
        println!(
            "measured:   {} ms +- {} ms, loss {} ({} of {})",
            report.measured_delay_ms,
            report.measured_jitter_ms,
            report.measured_loss,
            report.loss_packets_lost,
            report.loss_packets_sent
        );
        println!(
            "  ICMP {} samples: {} +- {} ms; TCP {} samples: {} +- {} ms; baseline RTT {} ms",
            report.icmp.samples,
            report.icmp.mean_ms,
            report.icmp.sd_ms,
            report.tcp.samples,
            report.tcp.mean_ms,
            report.tcp.sd_ms,
            report.baseline_rtt_ms
        );
    }
    for f in &failures {
        eprintln!("netem-check: OUT OF TOLERANCE: {f}");
    }
    Ok(if failures.is_empty() { 0 } else { 1 })
}

fn validate(paths: Vec<PathBuf>) -> Result<i32> {
    let paths = if paths.is_empty() {
        let dir = [
            PathBuf::from("bench/scenarios"),
            PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("scenarios"),
        ]
        .into_iter()
        .find(|p| p.is_dir())
        .context("no bench/scenarios directory here; name the files")?;
        Scenario::load_dir(&dir)?
            .into_iter()
            .map(|(p, _)| p)
            .collect()
    } else {
        paths
    };
    if paths.is_empty() {
        bail!("no scenario files");
    }
    for p in paths {
        let s = Scenario::load(&p)?;
        let up = s.initial(Dir::Uplink);
        println!(
            "{}: {} ({} s, {} schedule entries, {} arrival phases; uplink {} ms +- {} ms {}, loss {:.3}, rate {})",
            p.display(),
            s.name,
            s.duration_s,
            s.schedule.len(),
            s.workload.phases.len(),
            up.delay_ms,
            up.jitter_ms,
            up.jitter_distribution,
            up.expected_loss(),
            if up.rate_mbit > 0.0 { format!("{} Mbit/s", up.rate_mbit) } else { "unlimited".into() }
        );
    }
    Ok(0)
}
