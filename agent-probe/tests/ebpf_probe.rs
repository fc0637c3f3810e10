//! The passive eBPF probe against the real kernel (needs root and the object
//! built by `cargo xtask build-ebpf`).
//!
//! Each test builds its own pair of network namespaces joined by a veth
//! pair (removed on drop, also when the test fails), attaches the probe's
//! tc programs to the veth end in namespace A and sock_ops to a cgroup of
//! its own, and runs real traffic between the namespaces: TCP (with loss
//! from an nftables rule in one test), and UDP flows shaped like QUIC
//! short-header packets whose spin bit follows the RFC 9000 rules (or does
//! not, to check that those flows are ignored).

use agent_core::{ProbeEvent, ProbeEventKind, SampleSource};
use agent_probe::privileges;
use agent_probe::{EbpfProbe, EbpfProbeConfig, EbpfUnavailable, ProbePart, TcAttach};
use aya::programs::{SchedClassifier, TcAttachType};
use nix::sched::CloneFlags;
use std::fs::File;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::os::fd::AsFd;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::mpsc as std_mpsc;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};
use tokio::sync::mpsc;

/// Environment of the helper process the tests start (see [`helper_process`]).
const HELPER_ENV: &str = "EBPF_PROBE_TEST_HELPER";

fn object() -> PathBuf {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/bpf/agent-ebpf.o");
    assert!(
        path.is_file(),
        "eBPF object missing at {}: run `cargo xtask build-ebpf` before these tests",
        path.display()
    );
    path
}

fn require_root() {
    assert!(
        nix::unistd::geteuid().is_root(),
        "the eBPF probe tests load programs into the kernel and create namespaces: run them as root"
    );
}

fn init_tracing() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .with_test_writer()
        .try_init();
}

fn run(args: &[&str]) -> String {
    let out = Command::new(args[0])
        .args(&args[1..])
        .output()
        .unwrap_or_else(|e| panic!("starting {args:?}: {e}"));
    assert!(
        out.status.success(),
        "{args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Unique small numbers for names and subnets, distinct across tests and processes.
fn unique() -> u32 {
    static NEXT: AtomicU32 = AtomicU32::new(0);
    (std::process::id() % 4000) * 16 + NEXT.fetch_add(1, Ordering::Relaxed)
}

/// Two namespaces, `a` (the agent's side) and `b` (the remote endpoints),
/// joined by veth `va` <-> `vb`; a holds host 1, b hosts 2 to 1 + `hosts`,
/// each with an IPv4 and an IPv6 address.
struct TestNet {
    a: String,
    b: String,
    va: String,
    subnet: (u8, u8),
}

impl TestNet {
    fn new(hosts: u8) -> TestNet {
        let id = unique();
        let net = TestNet {
            a: format!("ebpft-{id}-a"),
            b: format!("ebpft-{id}-b"),
            va: format!("eva{id}"),
            subnet: (100 + (id / 250 % 100) as u8, (id % 250) as u8),
        };
        let vb = format!("evb{id}");
        run(&["ip", "netns", "add", &net.a]);
        // From here on Drop removes what exists.
        run(&["ip", "netns", "add", &net.b]);
        run(&[
            "ip", "-n", &net.a, "link", "add", &net.va, "type", "veth", "peer", "name", &vb,
            "netns", &net.b,
        ]);
        let add = |ns: &str, dev: &str, host: u8| {
            let v4 = format!("{}/24", net.ip(host));
            let v6 = format!("{}/64", net.ip6(host));
            run(&["ip", "-n", ns, "addr", "add", &v4, "dev", dev]);
            run(&["ip", "-n", ns, "addr", "add", &v6, "dev", dev, "nodad"]);
        };
        add(&net.a, &net.va, 1);
        for h in 0..hosts {
            add(&net.b, &vb, 2 + h);
        }
        for (ns, dev) in [(&net.a, &net.va), (&net.b, &vb)] {
            run(&["ip", "-n", ns, "link", "set", "lo", "up"]);
            run(&["ip", "-n", ns, "link", "set", dev, "up"]);
        }
        net
    }

    fn ip(&self, host: u8) -> Ipv4Addr {
        Ipv4Addr::new(10, self.subnet.0, self.subnet.1, host)
    }

    fn ip6(&self, host: u8) -> Ipv6Addr {
        let (x, y) = (u16::from(self.subnet.0), u16::from(self.subnet.1));
        Ipv6Addr::new(0xfd00, x, y, 0, 0, 0, 0, u16::from(host))
    }

    /// Output of a command run inside namespace a.
    fn in_a(&self, args: &[&str]) -> String {
        let mut full = vec!["ip", "netns", "exec", &self.a];
        full.extend_from_slice(args);
        run(&full)
    }
}

impl Drop for TestNet {
    fn drop(&mut self) {
        // Deleting a namespace destroys the veth end inside it, and so the pair.
        for ns in [&self.a, &self.b] {
            let _ = Command::new("ip").args(["netns", "del", ns]).status();
        }
    }
}

fn enter_ns(ns: &str) {
    let f = File::open(format!("/run/netns/{ns}")).expect("namespace file");
    nix::sched::setns(f.as_fd(), CloneFlags::CLONE_NEWNET).expect("setns");
}

/// Runs `f` on a new thread inside namespace `ns`.
fn in_ns<T: Send + 'static>(ns: &str, f: impl FnOnce() -> T + Send + 'static) -> JoinHandle<T> {
    let ns = ns.to_string();
    std::thread::spawn(move || {
        enter_ns(&ns);
        f()
    })
}

/// A cgroup v2 of the test's own for sock_ops, removed on drop.
struct TestCgroup(PathBuf);

impl TestCgroup {
    fn new() -> TestCgroup {
        let root = agent_probe::default_cgroup().expect("a cgroup2 hierarchy");
        let path = root.join(format!("edge-agent-test-{}", unique()));
        std::fs::create_dir(&path).expect("creating a test cgroup");
        TestCgroup(path)
    }
}

impl Drop for TestCgroup {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir(&self.0);
    }
}

/// A state directory of the test's own, removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new() -> TempDir {
        let p = std::env::temp_dir().join(format!("edge-agent-ebpf-test-{}", unique()));
        let _ = std::fs::remove_dir_all(&p);
        TempDir(p)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

/// Starts the probe on a thread inside namespace a (where its tc programs go).
fn start_probe(
    rt: &tokio::runtime::Runtime,
    net: &TestNet,
    cfg: EbpfProbeConfig,
) -> (EbpfProbe, mpsc::Receiver<ProbeEvent>) {
    let handle = rt.handle().clone();
    in_ns(&net.a, move || {
        let _guard = handle.enter();
        EbpfProbe::start(&cfg)
    })
    .join()
    .unwrap()
    .unwrap_or_else(|e| panic!("starting the eBPF probe: {e}"))
}

fn drain(rx: &mut mpsc::Receiver<ProbeEvent>, settle: Duration) -> Vec<ProbeEvent> {
    std::thread::sleep(settle);
    let mut out = Vec::new();
    while let Ok(ev) = rx.try_recv() {
        out.push(ev);
    }
    out
}

fn rtts(events: &[ProbeEvent], dest: impl Into<IpAddr>, source: SampleSource) -> Vec<Duration> {
    let dest = dest.into();
    events
        .iter()
        .filter(|e| e.dest == dest && e.source == source)
        .filter_map(|e| match e.kind {
            ProbeEventKind::Rtt(d) => Some(d),
            _ => None,
        })
        .collect()
}

fn median(v: &[Duration]) -> Duration {
    let mut v = v.to_vec();
    v.sort();
    v[v.len() / 2]
}

/// Waits until none of `ids` is loaded in the kernel any more.
fn assert_unloaded(ids: &[u32]) {
    assert!(!ids.is_empty());
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let loaded: Vec<u32> = aya::programs::loaded_programs()
            .filter_map(Result::ok)
            .map(|p| p.id())
            .filter(|id| ids.contains(id))
            .collect();
        if loaded.is_empty() {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "programs {loaded:?} still loaded after the probe was dropped"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// No tcx program of ours on namespace a's veth.
fn assert_no_tcx(net: &TestNet) {
    let va = net.va.clone();
    let left = in_ns(&net.a, move || {
        [TcAttachType::Ingress, TcAttachType::Egress]
            .into_iter()
            .flat_map(|t| {
                SchedClassifier::query_tcx(&va, t)
                    .map(|(_, p)| p)
                    .unwrap_or_default()
            })
            .map(|p| p.id())
            .collect::<Vec<_>>()
    })
    .join()
    .unwrap();
    assert!(left.is_empty(), "tcx programs left on {}: {left:?}", net.va);
}

// ------------------------------------------------------------------ traffic

/// TCP echo server in namespace b on every address it holds (v4 and v6), port 5001.
fn tcp_echo_server(net: &TestNet, stop: Arc<AtomicBool>) -> JoinHandle<()> {
    let (ready_tx, ready_rx) = std_mpsc::channel();
    let handle = in_ns(&net.b, move || {
        let listener = TcpListener::bind("[::]:5001").unwrap();
        listener.set_nonblocking(true).unwrap();
        ready_tx.send(()).unwrap();
        let mut conns = Vec::new();
        while !stop.load(Ordering::Relaxed) {
            match listener.accept() {
                Ok((mut s, _)) => conns.push(std::thread::spawn(move || {
                    s.set_nonblocking(false).unwrap();
                    let mut buf = [0u8; 16384];
                    while let Ok(n) = s.read(&mut buf) {
                        if n == 0 || s.write_all(&buf[..n]).is_err() {
                            break;
                        }
                    }
                })),
                Err(_) => std::thread::sleep(Duration::from_millis(5)),
            }
        }
        for c in conns {
            let _ = c.join();
        }
    });
    ready_rx.recv().unwrap();
    handle
}

/// Request/response exchanges, then a bulk transfer echoed back.
fn tcp_workload(target: SocketAddr) {
    let mut s = TcpStream::connect_timeout(&target, Duration::from_secs(2)).unwrap();
    s.set_nodelay(true).unwrap();
    let mut buf = vec![0u8; 16384];
    for _ in 0..100 {
        s.write_all(&buf[..512]).unwrap();
        s.read_exact(&mut buf[..512]).unwrap();
        std::thread::sleep(Duration::from_millis(2));
    }
    for _ in 0..64 {
        s.write_all(&buf).unwrap();
        s.read_exact(&mut buf).unwrap();
    }
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Spin {
    /// Spin bit per RFC 9000 17.4 (client inverts, server reflects).
    Real,
    /// Spinning disabled with a random value per packet.
    Random,
    /// Spinning disabled with a constant value.
    Constant,
}

/// Delay the server adds before each reply, standing in for path delay.
const QUIC_SERVER_DELAY: Duration = Duration::from_millis(5);

fn short_header(spin: bool) -> [u8; 200] {
    let mut p = [0u8; 200];
    // Header form 0, spin, protected bits at random, and the fixed bit
    // greased on half the packets (RFC 9287), as quinn does.
    let fixed = if rand::random() { 0x40 } else { 0 };
    p[0] = fixed | if spin { 0x20 } else { 0 } | (rand::random::<u8>() & 0x1f);
    p
}

/// QUIC-shaped UDP server on `addr`:4433 in namespace b. Each reply carries
/// the spin value of the packet it answers (or none, per `mode`) and leaves
/// QUIC_SERVER_DELAY later.
fn quic_server(net: &TestNet, addr: Ipv4Addr, mode: Spin, stop: Arc<AtomicBool>) -> JoinHandle<()> {
    let (ready_tx, ready_rx) = std_mpsc::channel();
    let handle = in_ns(&net.b, move || {
        let sock = UdpSocket::bind((addr, 4433)).unwrap();
        sock.set_read_timeout(Some(Duration::from_millis(20)))
            .unwrap();
        let tx_sock = sock.try_clone().unwrap();
        let (q_tx, q_rx) = std_mpsc::channel::<(Instant, [u8; 200], SocketAddr)>();
        let sender = std::thread::spawn(move || {
            while let Ok((due, pkt, peer)) = q_rx.recv() {
                let now = Instant::now();
                if due > now {
                    std::thread::sleep(due - now);
                }
                let _ = tx_sock.send_to(&pkt, peer);
            }
        });
        ready_tx.send(()).unwrap();
        let mut buf = [0u8; 1500];
        while !stop.load(Ordering::Relaxed) {
            let Ok((n, peer)) = sock.recv_from(&mut buf) else {
                continue;
            };
            if n == 0 {
                continue;
            }
            let spin = match mode {
                Spin::Real => buf[0] & 0x20 != 0,
                Spin::Random => rand::random(),
                Spin::Constant => false,
            };
            let _ = q_tx.send((Instant::now() + QUIC_SERVER_DELAY, short_header(spin), peer));
        }
        drop(q_tx);
        let _ = sender.join();
    });
    ready_rx.recv().unwrap();
    handle
}

/// QUIC-shaped client flow from namespace a for `secs`: bursts of four
/// packets every millisecond (continuous traffic), spin per `mode`.
fn quic_client(net: &TestNet, server: Ipv4Addr, mode: Spin, dur: Duration) -> JoinHandle<()> {
    in_ns(&net.a, move || {
        let sock = UdpSocket::bind("0.0.0.0:0").unwrap();
        sock.connect((server, 4433)).unwrap();
        sock.set_read_timeout(Some(Duration::from_millis(20)))
            .unwrap();
        let last_rx_spin = Arc::new(AtomicBool::new(false));
        let done = Arc::new(AtomicBool::new(false));
        let rx_sock = sock.try_clone().unwrap();
        let receiver = {
            let (last, done) = (Arc::clone(&last_rx_spin), Arc::clone(&done));
            std::thread::spawn(move || {
                let mut buf = [0u8; 1500];
                while !done.load(Ordering::Relaxed) {
                    if let Ok(n) = rx_sock.recv(&mut buf) {
                        if n > 0 {
                            last.store(buf[0] & 0x20 != 0, Ordering::Relaxed);
                        }
                    }
                }
            })
        };
        let end = Instant::now() + dur;
        while Instant::now() < end {
            for _ in 0..4 {
                let spin = match mode {
                    Spin::Real => !last_rx_spin.load(Ordering::Relaxed),
                    Spin::Random => rand::random(),
                    Spin::Constant => false,
                };
                let _ = sock.send(&short_header(spin));
            }
            std::thread::sleep(Duration::from_millis(1));
        }
        done.store(true, Ordering::Relaxed);
        let _ = receiver.join();
    })
}

// ------------------------------------------------------------------- tests

#[test]
fn tcp_rtt_from_sockops_and_tc_timestamps_only_for_watched_endpoints() {
    require_root();
    init_tracing();
    let object = object();
    let net = TestNet::new(2);
    let cgroup = TestCgroup::new();
    let state = TempDir::new();
    let watched: [IpAddr; 2] = [net.ip(2).into(), net.ip6(2).into()];
    let unwatched: [IpAddr; 2] = [net.ip(3).into(), net.ip6(3).into()];
    let rt = runtime();
    let cfg = EbpfProbeConfig {
        object: Some(object),
        cgroup: Some(cgroup.0.clone()),
        tc_interface: Some(net.va.clone()),
        endpoints: watched.to_vec(),
        state_dir: state.0.clone(),
        // Every sample: these tests count them (the rate limit has its own test).
        sample_interval: Duration::ZERO,
        ..EbpfProbeConfig::default()
    };
    let (probe, mut rx) = start_probe(&rt, &net, cfg);
    assert!(
        probe.attachments().iter().any(|a| a.contains("tcx")),
        "{:?}",
        probe.attachments()
    );

    let stop = Arc::new(AtomicBool::new(false));
    let server = tcp_echo_server(&net, Arc::clone(&stop));
    // The client runs in a helper process inside the test cgroup, so its
    // sockets are the ones sock_ops sees.
    let targets: Vec<String> = watched
        .iter()
        .chain(&unwatched)
        .map(|ip| SocketAddr::new(*ip, 5001).to_string())
        .collect();
    let out = Command::new(std::env::current_exe().unwrap())
        .args(["--exact", "helper_process", "--ignored", "--nocapture"])
        .env(HELPER_ENV, "tcp-client")
        .env("EBPF_TEST_NS", &net.a)
        .env("EBPF_TEST_CGROUP", &cgroup.0)
        .env("EBPF_TEST_TARGETS", targets.join(","))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "TCP client failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let events = drain(&mut rx, Duration::from_millis(500));
    stop.store(true, Ordering::Relaxed);
    server.join().unwrap();

    let stats = probe.stats();
    for dest in watched {
        let sockops = rtts(&events, dest, SampleSource::SockOps);
        let tc_ts = rtts(&events, dest, SampleSource::TcTimestamp);
        eprintln!(
            "{dest}: sock_ops {} samples, median {:?}, max {:?}; \
             tc timestamps {} samples, median {:?}, max {:?}",
            sockops.len(),
            median(&sockops),
            sockops.iter().max(),
            tc_ts.len(),
            median(&tc_ts),
            tc_ts.iter().max()
        );
        assert!(
            sockops.len() >= 50,
            "{dest}: {} sock_ops samples",
            sockops.len()
        );
        assert!(
            tc_ts.len() >= 50,
            "{dest}: {} tc timestamp samples",
            tc_ts.len()
        );
        for (name, v) in [("sock_ops", &sockops), ("tc timestamps", &tc_ts)] {
            assert!(
                v.iter().all(|d| *d > Duration::ZERO),
                "{dest} {name}: zero RTT"
            );
            // veth: tens of microseconds; allow for a busy two-core machine.
            let m = median(v);
            assert!(m < Duration::from_millis(5), "{dest} {name}: median {m:?}");
            assert!(
                v.iter().all(|d| *d < Duration::from_millis(250)),
                "{dest} {name}: {v:?}"
            );
        }
        let segments: u32 = events
            .iter()
            .filter_map(|e| match e.kind {
                ProbeEventKind::SegmentsSent(n) if e.dest == dest => Some(n),
                _ => None,
            })
            .sum();
        // 100 requests, then 1 MiB in 16 KiB writes.
        assert!(segments >= 100, "{dest}: segments sent: {segments}");
    }
    eprintln!("{stats:?}");
    let strays: Vec<_> = events
        .iter()
        .filter(|e| !watched.contains(&e.dest))
        .collect();
    assert!(
        strays.is_empty(),
        "events for unwatched endpoints: {strays:?}"
    );
    if probe.has_retransmit_tracepoint() {
        assert!(stats.flows_started >= 2, "{stats:?}");
        assert!(stats.flows_ended >= 2, "{stats:?}");
    }
    assert_eq!(stats.kernel_drops, 0);

    let ids = probe.program_ids().to_vec();
    assert_eq!(ids.len(), 5, "sock_ops, two tc, two tracepoints: {ids:?}");
    drop(probe);
    assert_unloaded(&ids);
    assert_no_tcx(&net);
}

#[test]
fn the_per_flow_rate_limit_bounds_samples_and_keeps_segment_counts() {
    require_root();
    init_tracing();
    let object = object();
    let net = TestNet::new(1);
    let cgroup = TestCgroup::new();
    let state = TempDir::new();
    let target = net.ip(2);
    let rt = runtime();
    let interval = Duration::from_millis(25);
    let cfg = EbpfProbeConfig {
        object: Some(object),
        cgroup: Some(cgroup.0.clone()),
        tc_interface: Some(net.va.clone()),
        endpoints: vec![IpAddr::V4(target)],
        state_dir: state.0.clone(),
        sample_interval: interval,
        ..EbpfProbeConfig::default()
    };
    let (probe, mut rx) = start_probe(&rt, &net, cfg);
    let stop = Arc::new(AtomicBool::new(false));
    let server = tcp_echo_server(&net, Arc::clone(&stop));
    let started = Instant::now();
    let out = Command::new(std::env::current_exe().unwrap())
        .args(["--exact", "helper_process", "--ignored", "--nocapture"])
        .env(HELPER_ENV, "tcp-client")
        .env("EBPF_TEST_NS", &net.a)
        .env("EBPF_TEST_CGROUP", &cgroup.0)
        .env(
            "EBPF_TEST_TARGETS",
            SocketAddr::from((target, 5001)).to_string(),
        )
        .output()
        .unwrap();
    let elapsed = started.elapsed();
    assert!(
        out.status.success(),
        "TCP client failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let events = drain(&mut rx, Duration::from_millis(300));
    stop.store(true, Ordering::Relaxed);
    server.join().unwrap();

    // One flow: at most one sample per interval and source (plus the first).
    let most = (elapsed.as_secs_f64() / interval.as_secs_f64()).ceil() as usize + 1;
    for source in [SampleSource::SockOps, SampleSource::TcTimestamp] {
        let n = rtts(&events, target, source).len();
        eprintln!("{source:?}: {n} samples in {elapsed:?} (at most {most})");
        assert!(n >= 2, "{source:?}: {n} samples");
        assert!(
            n <= most,
            "{source:?}: {n} samples in {elapsed:?}, limit {interval:?}"
        );
    }
    // The cumulative counters make the skipped samples' segments count
    // anyway, up to the last sample sent (100 requests, then 1 MiB).
    let segments: u32 = events
        .iter()
        .filter_map(|e| match e.kind {
            ProbeEventKind::SegmentsSent(n) => Some(n),
            _ => None,
        })
        .sum();
    assert!(segments >= 80, "segments sent: {segments}");
    let ids = probe.program_ids().to_vec();
    drop(probe);
    assert_unloaded(&ids);
    assert_no_tcx(&net);
}

#[test]
fn quic_spin_bit_rtt_only_from_spinning_watched_flows() {
    require_root();
    init_tracing();
    let object = object();
    let net = TestNet::new(4);
    let cgroup = TestCgroup::new();
    let state = TempDir::new();
    let (real, random, constant, unwatched) = (net.ip(2), net.ip(3), net.ip(4), net.ip(5));
    let rt = runtime();
    let cfg = EbpfProbeConfig {
        object: Some(object),
        cgroup: Some(cgroup.0.clone()),
        tc_interface: Some(net.va.clone()),
        endpoints: [real, random, constant].map(IpAddr::V4).to_vec(),
        state_dir: state.0.clone(),
        // Every sample: these tests count them (the rate limit has its own test).
        sample_interval: Duration::ZERO,
        ..EbpfProbeConfig::default()
    };
    let (probe, mut rx) = start_probe(&rt, &net, cfg);
    let stop = Arc::new(AtomicBool::new(false));
    let flows = [
        (real, Spin::Real),
        (random, Spin::Random),
        (constant, Spin::Constant),
        (unwatched, Spin::Real),
    ];
    let servers: Vec<_> = flows
        .iter()
        .map(|&(ip, mode)| quic_server(&net, ip, mode, Arc::clone(&stop)))
        .collect();
    let clients: Vec<_> = flows
        .iter()
        .map(|&(ip, mode)| quic_client(&net, ip, mode, Duration::from_secs(2)))
        .collect();
    for c in clients {
        c.join().unwrap();
    }
    let events = drain(&mut rx, Duration::from_millis(300));
    stop.store(true, Ordering::Relaxed);
    for s in servers {
        s.join().unwrap();
    }

    let spin = rtts(&events, real, SampleSource::QuicSpin);
    eprintln!(
        "spin-bit samples: {}, median {:?}, min {:?}, max {:?}; {:?}",
        spin.len(),
        median(&spin),
        spin.iter().min(),
        spin.iter().max(),
        probe.stats()
    );
    // 2 s at one round trip (5 ms + scheduling) per sample, minus the warm-up.
    assert!(
        spin.len() >= 100,
        "too few spin-bit samples: {}",
        spin.len()
    );
    let m = median(&spin);
    assert!(
        m >= QUIC_SERVER_DELAY && m < QUIC_SERVER_DELAY + Duration::from_millis(3),
        "median spin-bit RTT {m:?} for a {QUIC_SERVER_DELAY:?} round trip"
    );
    assert!(spin
        .iter()
        .all(|d| *d > Duration::ZERO && *d < Duration::from_millis(50)));
    for (ip, what) in [
        (random, "random"),
        (constant, "constant"),
        (unwatched, "unwatched"),
    ] {
        let n = events.iter().filter(|e| e.dest == IpAddr::V4(ip)).count();
        assert_eq!(n, 0, "{n} events from the {what} spin flow");
    }
    let ids = probe.program_ids().to_vec();
    drop(probe);
    assert_unloaded(&ids);
    assert_no_tcx(&net);
}

#[test]
fn a_filter_change_reaches_flows_already_measured() {
    require_root();
    init_tracing();
    let object = object();
    let net = TestNet::new(2);
    let cgroup = TestCgroup::new();
    let state = TempDir::new();
    let (first, second) = (net.ip(2), net.ip(3));
    let rt = runtime();
    let cfg = EbpfProbeConfig {
        object: Some(object),
        cgroup: Some(cgroup.0.clone()),
        tc_interface: Some(net.va.clone()),
        endpoints: vec![IpAddr::V4(first)],
        state_dir: state.0.clone(),
        sample_interval: Duration::ZERO,
        ..EbpfProbeConfig::default()
    };
    let (probe, mut rx) = start_probe(&rt, &net, cfg);
    let stop = Arc::new(AtomicBool::new(false));
    let servers: Vec<_> = [first, second]
        .iter()
        .map(|&ip| quic_server(&net, ip, Spin::Real, Arc::clone(&stop)))
        .collect();
    let clients: Vec<_> = [first, second]
        .iter()
        .map(|&ip| quic_client(&net, ip, Spin::Real, Duration::from_secs(3)))
        .collect();
    // Both flows run throughout; the filter moves from the first to the
    // second halfway. The first flow's state was admitted under the old
    // filter: the change must reach it, not wait for the flow to end.
    let before = drain(&mut rx, Duration::from_millis(1200));
    probe.set_endpoints(&[IpAddr::V4(second)]).unwrap();
    let _in_transit = drain(&mut rx, Duration::from_millis(200));
    for c in clients {
        c.join().unwrap();
    }
    let after = drain(&mut rx, Duration::from_millis(300));
    stop.store(true, Ordering::Relaxed);
    for s in servers {
        s.join().unwrap();
    }
    let count =
        |events: &[ProbeEvent], ip: Ipv4Addr| rtts(events, ip, SampleSource::QuicSpin).len();
    let (a1, b1, a2, b2) = (
        count(&before, first),
        count(&before, second),
        count(&after, first),
        count(&after, second),
    );
    eprintln!("before: first {a1}, second {b1}; after: first {a2}, second {b2}");
    assert!(a1 >= 50, "the watched flow gave {a1} samples");
    assert_eq!(b1, 0, "the unwatched flow gave samples");
    assert_eq!(a2, 0, "the flow no longer watched kept giving samples");
    assert!(b2 >= 50, "the newly watched flow gave {b2} samples");
    let ids = probe.program_ids().to_vec();
    drop(probe);
    assert_unloaded(&ids);
    assert_no_tcx(&net);
}

#[test]
fn retransmits_are_reported_under_packet_loss() {
    require_root();
    init_tracing();
    let object = object();
    let net = TestNet::new(1);
    let cgroup = TestCgroup::new();
    let state = TempDir::new();
    let server_ip = net.ip(2);
    // Namespace b drops 1 in 20 segments arriving for the server (nftables).
    let nft = |args: &[&str]| {
        let mut full = vec!["ip", "netns", "exec", &net.b, "nft"];
        full.extend_from_slice(args);
        run(&full);
    };
    nft(&["add", "table", "inet", "loss"]);
    nft(&[
        "add",
        "chain",
        "inet",
        "loss",
        "in",
        "{ type filter hook input priority 0; }",
    ]);
    nft(&[
        "add", "rule", "inet", "loss", "in", "tcp", "dport", "5001", "numgen", "random", "mod",
        "20", "==", "0", "drop",
    ]);
    let rt = runtime();
    let cfg = EbpfProbeConfig {
        object: Some(object),
        cgroup: Some(cgroup.0.clone()),
        tc_interface: Some(net.va.clone()),
        endpoints: vec![IpAddr::V4(server_ip)],
        state_dir: state.0.clone(),
        ..EbpfProbeConfig::default()
    };
    let (probe, mut rx) = start_probe(&rt, &net, cfg);
    assert!(
        probe.has_retransmit_tracepoint(),
        "{:?}",
        probe.attachments()
    );
    let stop = Arc::new(AtomicBool::new(false));
    let server = tcp_echo_server(&net, Arc::clone(&stop));
    let out = Command::new(std::env::current_exe().unwrap())
        .args(["--exact", "helper_process", "--ignored", "--nocapture"])
        .env(HELPER_ENV, "tcp-client")
        .env("EBPF_TEST_NS", &net.a)
        .env("EBPF_TEST_CGROUP", &cgroup.0)
        .env(
            "EBPF_TEST_TARGETS",
            SocketAddr::from((server_ip, 5001)).to_string(),
        )
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let events = drain(&mut rx, Duration::from_millis(500));
    stop.store(true, Ordering::Relaxed);
    server.join().unwrap();

    let sum = |want: fn(&ProbeEventKind) -> Option<u32>| -> u32 {
        events
            .iter()
            .filter(|e| e.dest == IpAddr::V4(server_ip) && e.source == SampleSource::SockOps)
            .filter_map(|e| want(&e.kind))
            .sum()
    };
    let retransmits = sum(|k| match k {
        ProbeEventKind::Retransmits(n) => Some(*n),
        _ => None,
    });
    let segments = sum(|k| match k {
        ProbeEventKind::SegmentsSent(n) => Some(*n),
        _ => None,
    });
    eprintln!(
        "5 % loss: {retransmits} retransmits over {segments} segments sent; {:?}",
        probe.stats()
    );
    assert!(retransmits >= 3, "retransmits seen: {retransmits}");
    assert!(
        segments > retransmits,
        "segments {segments}, retransmits {retransmits}"
    );
    assert_eq!(u64::from(retransmits), probe.stats().retransmits);
}

#[test]
fn netlink_tc_left_by_a_killed_agent_is_removed_at_the_next_start() {
    require_root();
    init_tracing();
    let object = object();
    let net = TestNet::new(1);
    let cgroup = TestCgroup::new();
    let state = TempDir::new();
    let filters = |net: &TestNet| {
        let ingress = net.in_a(&["tc", "filter", "show", "dev", &net.va, "ingress"]);
        let egress = net.in_a(&["tc", "filter", "show", "dev", &net.va, "egress"]);
        // One line per filter, naming our program (twice: filter and program name).
        let count = |out: &str, name: &str| out.lines().filter(|l| l.contains(name)).count();
        (count(&ingress, "tc_ingress"), count(&egress, "tc_egress"))
    };
    let clsact = |net: &TestNet| {
        net.in_a(&["tc", "qdisc", "show", "dev", &net.va])
            .contains("clsact")
    };
    assert!(!clsact(&net));

    // An agent attaches through netlink and is killed.
    let mut child = Command::new(std::env::current_exe().unwrap())
        .args(["--exact", "helper_process", "--ignored", "--nocapture"])
        .env(HELPER_ENV, "netlink-holder")
        .env("EBPF_TEST_NS", &net.a)
        .env("EBPF_TEST_CGROUP", &cgroup.0)
        .env("EBPF_TEST_IFACE", &net.va)
        .env("EBPF_TEST_STATE", &state.0)
        .env("EBPF_TEST_OBJECT", &object)
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let attached = lines.any(|l| l.is_ok_and(|l| l.contains("HELPER ATTACHED")));
    child.kill().unwrap();
    child.wait().unwrap();
    assert!(attached, "the helper agent did not attach");
    assert_eq!(filters(&net), (1, 1), "netlink filters survive the kill");
    assert!(clsact(&net));
    assert_eq!(std::fs::read_dir(&state.0).unwrap().count(), 1);

    // The next start removes them and attaches its own.
    let rt = runtime();
    let cfg = EbpfProbeConfig {
        object: Some(object),
        cgroup: Some(cgroup.0.clone()),
        tc_interface: Some(net.va.clone()),
        endpoints: vec![IpAddr::V4(net.ip(2))],
        tc_attach: TcAttach::Netlink,
        state_dir: state.0.clone(),
        ..EbpfProbeConfig::default()
    };
    let (probe, mut rx) = start_probe(&rt, &net, cfg);
    assert_eq!(
        filters(&net),
        (1, 1),
        "exactly our own filters after the restart"
    );
    assert_eq!(std::fs::read_dir(&state.0).unwrap().count(), 1);
    assert_eq!(
        probe.capabilities_to_keep(),
        vec![caps::Capability::CAP_NET_ADMIN]
    );

    // The netlink filters measure too.
    let stop = Arc::new(AtomicBool::new(false));
    let server = tcp_echo_server(&net, Arc::clone(&stop));
    let target = SocketAddr::from((net.ip(2), 5001));
    in_ns(&net.a, move || tcp_workload(target)).join().unwrap();
    let events = drain(&mut rx, Duration::from_millis(300));
    stop.store(true, Ordering::Relaxed);
    server.join().unwrap();
    let tc_ts = rtts(&events, net.ip(2), SampleSource::TcTimestamp);
    assert!(
        tc_ts.len() >= 20,
        "tc timestamp samples through netlink filters: {}",
        tc_ts.len()
    );

    let ids = probe.program_ids().to_vec();
    drop(probe);
    assert_eq!(filters(&net), (0, 0), "filters left after a clean exit");
    assert!(!clsact(&net), "the clsact qdisc we added is still there");
    assert_eq!(std::fs::read_dir(&state.0).unwrap().count(), 0);
    assert_unloaded(&ids);
}

#[test]
fn after_dropping_privileges_the_probe_still_reads_and_refilters_then_detaches() {
    require_root();
    init_tracing();
    let object = object();
    let net = TestNet::new(2);
    let cgroup = TestCgroup::new();
    let state = TempDir::new();
    let (first, second) = (net.ip(2), net.ip(3));
    let rt = runtime();
    let stop = Arc::new(AtomicBool::new(false));
    let server = tcp_echo_server(&net, Arc::clone(&stop));
    let handle = rt.handle().clone();
    let cfg = EbpfProbeConfig {
        object: Some(object.clone()),
        cgroup: Some(cgroup.0.clone()),
        tc_interface: Some(net.va.clone()),
        endpoints: vec![IpAddr::V4(first)],
        state_dir: state.0.clone(),
        // Every sample: these tests count them (the rate limit has its own test).
        sample_interval: Duration::ZERO,
        ..EbpfProbeConfig::default()
    };
    // Capability sets are per thread: this thread plays the agent's main thread.
    let (ids, events, reload) = in_ns(&net.a, move || {
        let _guard = handle.enter();
        let (probe, mut rx) = EbpfProbe::start(&cfg).unwrap();
        let dropped = probe.drop_privileges().unwrap();
        assert!(dropped.contains(&caps::Capability::CAP_BPF));
        assert!(caps::read(None, caps::CapSet::Effective)
            .unwrap()
            .is_empty());
        assert!(caps::read(None, caps::CapSet::Permitted)
            .unwrap()
            .is_empty());
        // Loading anything now is refused up front, with the reason.
        let reload = EbpfProbe::load(&cfg).err().map(|e| e.to_string());
        // The filter map is updated through the descriptor we hold.
        probe.set_endpoints(&[IpAddr::V4(second)]).unwrap();
        tcp_workload(SocketAddr::from((first, 5001)));
        tcp_workload(SocketAddr::from((second, 5001)));
        let events = drain(&mut rx, Duration::from_millis(300));
        let ids = probe.program_ids().to_vec();
        // Detaching closes link descriptors: no capability needed.
        drop(probe);
        (ids, events, reload)
    })
    .join()
    .unwrap();
    stop.store(true, Ordering::Relaxed);
    server.join().unwrap();

    let reload = reload.expect("loading without capabilities must fail");
    assert!(reload.contains("CAP_BPF"), "{reload}");
    assert!(rtts(&events, second, SampleSource::TcTimestamp).len() >= 20);
    assert!(
        events.iter().all(|e| e.dest == IpAddr::V4(second)),
        "events for the endpoint removed from the filter"
    );
    assert_unloaded(&ids);
    assert_no_tcx(&net);
}

/// Without a usable cgroup (as in an agent started with `ip netns exec`),
/// the tc programs still attach and measure; sock_ops is reported failed
/// with its reason; dropping the probe removes everything it attached.
#[test]
fn without_a_cgroup2_the_tc_parts_attach_and_sock_ops_is_reported() {
    require_root();
    init_tracing();
    let object = object();
    let net = TestNet::new(1);
    let state = TempDir::new();
    let plain_dir = TempDir::new();
    std::fs::create_dir_all(&plain_dir.0).unwrap();
    let missing = PathBuf::from(format!("/nonexistent/edge-agent-cgroup-{}", unique()));
    let rt = runtime();
    let stop = Arc::new(AtomicBool::new(false));
    let server = tcp_echo_server(&net, Arc::clone(&stop));
    let target = SocketAddr::from((net.ip(2), 5001));
    for (cgroup, tc_attach, why) in [
        (missing, TcAttach::Auto, "No such file"),
        (
            plain_dir.0.clone(),
            TcAttach::Netlink,
            "not a cgroup v2 folder",
        ),
    ] {
        let cfg = EbpfProbeConfig {
            object: Some(object.clone()),
            cgroup: Some(cgroup.clone()),
            tc_interface: Some(net.va.clone()),
            endpoints: vec![IpAddr::V4(net.ip(2))],
            tc_attach,
            state_dir: state.0.clone(),
            ..EbpfProbeConfig::default()
        };
        let (probe, mut rx) = start_probe(&rt, &net, cfg);
        let ctx = format!("{tc_attach:?}: attached {:?}", probe.attachments());
        assert!(probe.is_attached(ProbePart::TcIngress), "{ctx}");
        assert!(probe.is_attached(ProbePart::TcEgress), "{ctx}");
        assert!(!probe.is_attached(ProbePart::SockOps), "{ctx}");
        let failed: Vec<_> = probe
            .failed_parts()
            .iter()
            .filter(|(p, _)| *p == ProbePart::SockOps)
            .collect();
        assert_eq!(failed.len(), 1, "{ctx}; failed {:?}", probe.failed_parts());
        let reason = &failed[0].1;
        assert!(
            reason.contains(&cgroup.display().to_string()) && reason.contains(why),
            "{tc_attach:?}: sock_ops reason {reason:?}"
        );
        assert!(
            probe
                .failed_parts()
                .iter()
                .all(|(p, _)| !matches!(p, ProbePart::TcIngress | ProbePart::TcEgress)),
            "{:?}",
            probe.failed_parts()
        );

        // The tc parts measure.
        in_ns(&net.a, move || tcp_workload(target)).join().unwrap();
        let events = drain(&mut rx, Duration::from_millis(300));
        let tc_ts = rtts(&events, net.ip(2), SampleSource::TcTimestamp);
        assert!(
            tc_ts.len() >= 20,
            "{tc_attach:?}: tc samples {}",
            tc_ts.len()
        );
        assert!(
            rtts(&events, net.ip(2), SampleSource::SockOps).is_empty(),
            "sock_ops samples without sock_ops"
        );

        let ids = probe.program_ids().to_vec();
        drop(probe);
        assert_unloaded(&ids);
        assert_no_tcx(&net);
        let qdiscs = net.in_a(&["tc", "qdisc", "show", "dev", &net.va]);
        assert!(!qdiscs.contains("clsact"), "{tc_attach:?}: {qdiscs}");
        let records = std::fs::read_dir(&state.0).map_or(0, |d| d.count());
        assert_eq!(
            records, 0,
            "{tc_attach:?}: records left in the state folder"
        );
    }
    stop.store(true, Ordering::Relaxed);
    server.join().unwrap();
}

#[test]
fn unavailability_is_explained() {
    let missing = EbpfProbe::load(&EbpfProbeConfig {
        object: Some(PathBuf::from("/nonexistent/agent-ebpf.o")),
        ..EbpfProbeConfig::default()
    })
    .err()
    .expect("no object, no probe");
    let msg = missing.to_string();
    if nix::unistd::geteuid().is_root() {
        assert!(
            matches!(missing, EbpfUnavailable::ObjectMissing { .. }),
            "{msg}"
        );
        assert!(
            msg.contains("cargo xtask build-ebpf") && msg.contains("/nonexistent"),
            "{msg}"
        );
    }
    // Without the capabilities the probe says which ones and why.
    let msg = std::thread::spawn(|| {
        privileges::drop_all_except(&[]).unwrap();
        EbpfProbe::load(&EbpfProbeConfig::default())
            .err()
            .unwrap()
            .to_string()
    })
    .join()
    .unwrap();
    assert!(msg.contains("CAP_NET_ADMIN"), "{msg}");
}

/// Not a test: the body of helper processes the tests above start (it does
/// nothing unless started by them).
#[test]
#[ignore = "helper process for the other tests in this file"]
fn helper_process() {
    let Ok(role) = std::env::var(HELPER_ENV) else {
        return;
    };
    let env = |k: &str| std::env::var(k).unwrap_or_else(|_| panic!("{k} not set"));
    // Join the cgroup (the whole process) and the namespace (this thread).
    std::fs::write(
        Path::new(&env("EBPF_TEST_CGROUP")).join("cgroup.procs"),
        "0",
    )
    .unwrap();
    enter_ns(&env("EBPF_TEST_NS"));
    match role.as_str() {
        "tcp-client" => {
            for target in env("EBPF_TEST_TARGETS").split(',') {
                tcp_workload(target.parse().unwrap());
            }
        }
        "netlink-holder" => {
            let cfg = EbpfProbeConfig {
                object: Some(env("EBPF_TEST_OBJECT").into()),
                cgroup: Some(env("EBPF_TEST_CGROUP").into()),
                tc_interface: Some(env("EBPF_TEST_IFACE")),
                tc_attach: TcAttach::Netlink,
                state_dir: env("EBPF_TEST_STATE").into(),
                ..EbpfProbeConfig::default()
            };
            let probe = EbpfProbe::load(&cfg).unwrap();
            println!("HELPER ATTACHED {:?}", probe.attachments());
            std::io::stdout().flush().unwrap();
            // Wait to be killed; the probe is never dropped.
            let _probe = probe;
            loop {
                std::thread::sleep(Duration::from_secs(1));
            }
        }
        other => panic!("unknown helper role {other}"),
    }
}
