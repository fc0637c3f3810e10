//! The emulator as the benchmark harness uses it: `netem-tun run` comes up
//! with a `ready` line, carries traffic with the scenario's delay, obeys
//! control commands, removes leftovers of a crashed run, and tears
//! everything down on SIGTERM. Needs root, as CI runs it.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_netem-tun");

fn require_root() {
    assert!(
        nix::unistd::geteuid().is_root(),
        "lab lifecycle test needs root (network namespaces and TUN devices); CI runs as root"
    );
}

fn ns_exists(name: &str) -> bool {
    Path::new("/run/netns").join(name).exists()
}

fn ping(ns: &str, count: u32) -> (u32, f64) {
    ping_to(ns, count, "198.18.0.2")
}

fn ping_to(ns: &str, count: u32, addr: &str) -> (u32, f64) {
    let out = Command::new("ip")
        .args([
            "netns", "exec", ns, "ping", "-n", "-q", "-W", "1", "-i", "0.05",
        ])
        .args(["-c", &count.to_string(), addr])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    let received = text
        .lines()
        .find(|l| l.contains("packets transmitted"))
        .and_then(|l| l.split(',').nth(1)?.split_whitespace().next()?.parse().ok())
        .unwrap_or(0);
    let avg = text
        .lines()
        .find(|l| l.starts_with("rtt"))
        .and_then(|l| l.split('=').nth(1)?.split('/').nth(1)?.trim().parse().ok())
        .unwrap_or(f64::NAN);
    (received, avg)
}

fn ctl(prefix: &str, cmd: &[&str]) -> String {
    let out = Command::new(BIN)
        .args(["ctl", "--ns-prefix", prefix])
        .args(cmd)
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

fn start(prefix: &str, scenario: &Path, extra: &[&str]) -> (Child, String) {
    let mut child = Command::new(BIN)
        .args([
            "run",
            "--backend",
            "tun",
            "--ns-prefix",
            prefix,
            "--scenario",
        ])
        .arg(scenario)
        .args(extra)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let ready = lines.next().unwrap().unwrap();
    // Keep draining stdout so the emulator never blocks on it.
    std::thread::spawn(move || for _ in lines {});
    (child, ready)
}

fn wait_exit(child: &mut Child, limit: Duration) -> std::process::ExitStatus {
    let end = Instant::now() + limit;
    loop {
        if let Some(s) = child.try_wait().unwrap() {
            return s;
        }
        assert!(Instant::now() < end, "emulator did not exit");
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn run_ctl_and_clean_teardown_on_sigterm() {
    require_root();
    let prefix = format!("jlt{}", std::process::id());
    let (edge, cloud) = (format!("{prefix}-edge"), format!("{prefix}-cloud"));
    // A crashed run left a namespace behind: it is removed and rebuilt.
    Command::new("ip")
        .args(["netns", "add", &edge])
        .status()
        .unwrap();
    let wan = Path::new(env!("CARGO_MANIFEST_DIR")).join("../bench/scenarios/wan.toml");
    let (mut child, ready) = start(&prefix, &wan, &[]);
    assert!(ready.starts_with("ready backend=tun "), "{ready}");
    assert!(
        ready.contains(&format!("edge_ns={edge} cloud_ns={cloud}")),
        "{ready}"
    );
    assert!(
        ready.contains("edge_addr=198.18.0.1 cloud_addr=198.18.0.2"),
        "{ready}"
    );

    let (got, avg) = ping(&edge, 20);
    assert_eq!(got, 20);
    // Coarse bounds: this test is about control, netem_accuracy about precision.
    assert!((avg - 40.0).abs() < 8.0, "wan RTT {avg} ms");

    assert_eq!(ctl(&prefix, &["set", "uplink", "delay_ms=60"]), "ok");
    let (_, avg) = ping(&edge, 10);
    assert!((avg - 80.0).abs() < 15.0, "RTT after set {avg} ms");
    assert_eq!(ctl(&prefix, &["down"]), "ok");
    assert_eq!(ping(&edge, 5).0, 0, "link down drops everything");
    assert_eq!(ctl(&prefix, &["up"]), "ok");
    assert_eq!(ping(&edge, 5).0, 5);
    assert!(ctl(&prefix, &["stats"]).contains("\"dropped_link_down\":5"));
    assert!(ctl(&prefix, &["set", "loss=7"]).starts_with("error"));

    // A second run with the same prefix is refused while this one lives.
    let second = Command::new(BIN)
        .args(["run", "--ns-prefix", &prefix, "--scenario"])
        .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("../bench/scenarios/lan.toml"))
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert!(!second.status.success());
    assert!(String::from_utf8_lossy(&second.stderr).contains("in use"));

    // A process left inside a namespace does not keep it alive.
    let mut sleeper = Command::new("ip")
        .args(["netns", "exec", &cloud, "sleep", "600"])
        .spawn()
        .unwrap();
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(child.id() as i32),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap();
    let status = wait_exit(&mut child, Duration::from_secs(10));
    assert!(status.success(), "{status}");
    let _ = sleeper.wait();
    assert!(
        !ns_exists(&edge) && !ns_exists(&cloud),
        "namespaces removed"
    );
    assert!(!Path::new(&format!("/run/netem-tun/{prefix}.sock")).exists());
    assert!(!Path::new(&format!("/run/netem-tun/{prefix}.pid")).exists());
}

const SCHEDULED: &str = r#"
name = "t"
description = "schedule test"
duration_s = 10
[link]
delay_ms = 5.0
[[schedule]]
at_s = 1.0
note = "slow"
link = { delay_ms = 40.0 }
[profile]
edge_cpu_share = 0.5
local_workers = 1
[workload]
seed = 1
tasks_per_s = 1
mix = [{ task = "image_classification", weight = 1.0 }]
"#;

#[test]
fn held_schedule_starts_on_command_and_stdin_eof_stops() {
    require_root();
    let prefix = format!("jls{}", std::process::id());
    let file = std::env::temp_dir().join(format!("{prefix}.toml"));
    std::fs::write(&file, SCHEDULED).unwrap();
    let (mut child, _) = start(&prefix, &file, &["--hold-schedule"]);
    std::thread::sleep(Duration::from_millis(1500));
    let show = ctl(&prefix, &["show"]);
    assert!(
        show.contains("\"delay_ms\":5.0") && show.contains("\"schedule_elapsed_s\":null"),
        "{show}"
    );
    let (_, avg) = ping(&format!("{prefix}-edge"), 5);
    // Five pings on a loaded 2-core CI machine: the bounds only need to tell
    // the 10 ms regime from the 80 ms one.
    assert!((avg - 10.0).abs() < 8.0, "RTT before the schedule {avg}");
    {
        use std::io::Write;
        let stdin = child.stdin.as_mut().unwrap();
        writeln!(stdin, "schedule start").unwrap();
    }
    std::thread::sleep(Duration::from_millis(1500));
    let show = ctl(&prefix, &["show"]);
    assert!(show.contains("\"delay_ms\":40.0"), "{show}");
    let (_, avg) = ping(&format!("{prefix}-edge"), 5);
    assert!(
        (avg - 80.0).abs() < 15.0,
        "RTT after the scheduled change {avg}"
    );
    drop(child.stdin.take());
    let status = wait_exit(&mut child, Duration::from_secs(10));
    assert!(status.success());
    assert!(!ns_exists(&format!("{prefix}-edge")));
    let _ = std::fs::remove_file(file);
}

#[test]
fn refuses_clearly_when_not_root() {
    let out = Command::new("setpriv")
        .args([
            "--reuid=65534",
            "--regid=65534",
            "--clear-groups",
            BIN,
            "check",
        ])
        .output();
    let Ok(out) = out else {
        eprintln!("SKIP: setpriv not available");
        return;
    };
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("must run as root"), "{err}");
}

/// A second lab joins the first one's edge namespace with a link of its
/// own (subnet 1): one edge, two clouds with different delays; stopping
/// the second lab removes its cloud and its link, not the shared edge.
#[test]
fn a_second_link_joins_an_existing_edge() {
    require_root();
    let (first, second) = (
        format!("jla{}", std::process::id()),
        format!("jlb{}", std::process::id()),
    );
    let scenarios = Path::new(env!("CARGO_MANIFEST_DIR")).join("../bench/scenarios");
    let (mut a, ready_a) = start(&first, &scenarios.join("wan.toml"), &[]);
    let edge = format!("{first}-edge");
    assert!(ready_a.contains(&format!("edge_ns={edge} ")), "{ready_a}");
    let (mut b, ready_b) = start(
        &second,
        &scenarios.join("lan.toml"),
        &["--subnet", "1", "--join-edge-ns", &edge],
    );
    assert!(
        ready_b.contains(&format!("edge_ns={edge} cloud_ns={second}-cloud"))
            && ready_b.contains("edge_addr=198.18.1.1 cloud_addr=198.18.1.2")
            && ready_b.contains("dev=jlab1"),
        "{ready_b}"
    );
    assert!(!ns_exists(&format!("{second}-edge")));
    let (got_a, wan) = ping_to(&edge, 10, "198.18.0.2");
    let (got_b, lan) = ping_to(&edge, 10, "198.18.1.2");
    assert_eq!((got_a, got_b), (10, 10));
    assert!(wan > 30.0 && lan < wan / 4.0, "wan {wan} ms, lan {lan} ms");

    drop(b.stdin.take());
    assert!(wait_exit(&mut b, Duration::from_secs(20)).success());
    assert!(!ns_exists(&format!("{second}-cloud")));
    assert!(ns_exists(&edge), "the joined edge namespace stays");
    assert_eq!(
        ping_to(&edge, 3, "198.18.0.2").0,
        3,
        "the first link still works"
    );
    drop(a.stdin.take());
    assert!(wait_exit(&mut a, Duration::from_secs(20)).success());
    assert!(!ns_exists(&edge));
}
