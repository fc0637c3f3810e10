//! The decision path's costs (issue 12, item 5): `agent_core::decide` with
//! the default policy on realistic inputs (a full 60-sample RTT window, 32
//! recent execution times per path, 32 residuals per path, a deadline;
//! 128 such inputs from different random streams, taken in turn), the
//! same with the inputs gathered from the estimators as the manager does,
//! and the estimators' updates (an RTT sample into `RttWindow` and
//! `LinkEstimator`, the shift detector included; `ExecTimeModel::observe`).
//!
//! Criterion gives each one's mean and median with their confidence
//! intervals. A single decision's tail is not in those, so after criterion
//! the binary times 100,000 individual calls of each with `Instant` and
//! prints one `percall` line per benchmark (p50/p90/p99/p99.9/max in ns; each
//! timing includes one `Instant::now()` pair, about 20-40 ns).
//! `cargo xtask bench-decision` runs it and writes bench/results/decision.md.

use agent_core::{
    decide, CloudStatus, DecisionInput, ExecPath, ExecTimeModel, LinkConfig, LinkEstimator,
    LocalStatus, NetworkStatus, Policy, Priority, ProbeEvent, ProbeEventKind, Residuals, RttWindow,
    SampleSource, TaskType,
};
use criterion::{criterion_group, Criterion};
use std::hint::black_box;
use std::net::{IpAddr, Ipv4Addr};
use std::time::{Duration, Instant};

/// Deterministic noise (xorshift64*), so every run measures the same inputs.
struct Noise(u64);

impl Noise {
    fn next(&mut self) -> f64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        (self.0.wrapping_mul(0x2545_f491_4f6c_dd1d) >> 11) as f64 / (1u64 << 53) as f64
    }

    /// Roughly normal (sum of uniforms), mean 0, sd 1.
    fn gauss(&mut self) -> f64 {
        (0..12).map(|_| self.next()).sum::<f64>() - 6.0
    }
}

const DEST: IpAddr = IpAddr::V4(Ipv4Addr::new(10, 0, 0, 2));

/// A jittery 20 ms link: 20 ms +- 3 ms, never below 5 ms.
fn rtt_sample(n: &mut Noise) -> Duration {
    Duration::from_secs_f64((20.0 + 3.0 * n.gauss()).max(5.0) / 1e3)
}

fn rtt_event(at: Instant, rtt: Duration) -> ProbeEvent {
    ProbeEvent {
        dest: DEST,
        source: SampleSource::SockOps,
        at,
        kind: ProbeEventKind::Rtt(rtt),
    }
}

/// What the edge holds after a while of traffic: a link estimator with a
/// full window (a sample every 10 ms), execution-time models and residuals
/// with their 32 recent values each.
struct State {
    now: Instant,
    link: LinkEstimator,
    local_times: ExecTimeModel<TaskType>,
    cloud_times: ExecTimeModel<TaskType>,
    residuals: Residuals<(ExecPath, TaskType)>,
}

const TT: TaskType = TaskType::ImageClassification;

/// A state per seed: the benchmarks of `decide` go round a set of them,
/// as the agent's decisions see a different window each time (with one
/// input repeated, a branch predictor learns a merge's every comparison).
fn state_seeded(seed: u64) -> State {
    let mut n = Noise(0x9e37_79b9_7f4a_7c15 ^ seed.wrapping_mul(0xbf58_476d_1ce4_e5b9));
    let t0 = Instant::now();
    let mut link = LinkEstimator::new(LinkConfig::default());
    let mut at = t0;
    for _ in 0..120 {
        at += Duration::from_millis(10);
        link.on_event(&rtt_event(at, rtt_sample(&mut n)));
    }
    let mut local_times = ExecTimeModel::new(0.2, Duration::from_millis(15));
    let mut cloud_times = ExecTimeModel::new(0.2, Duration::from_millis(8));
    let mut residuals = Residuals::new(32, 4);
    for _ in 0..64 {
        local_times.observe(
            TT,
            Duration::from_secs_f64((15.0 + n.gauss()).max(1.0) / 1e3),
        );
        cloud_times.observe(
            TT,
            Duration::from_secs_f64((8.0 + n.gauss()).max(1.0) / 1e3),
        );
        residuals.observe((ExecPath::Local, TT), 0.5 + n.gauss());
        residuals.observe((ExecPath::Cloud, TT), 1.5 + 2.0 * n.gauss());
    }
    State {
        now: at + Duration::from_millis(5),
        link,
        local_times,
        cloud_times,
        residuals,
    }
}

fn state() -> State {
    state_seeded(0)
}

/// How many different inputs the `decide` benchmarks go round.
const INPUT_SETS: u64 = 128;

/// The inputs of every seeded state, and a cursor going round them.
struct Rotation {
    sets: Vec<Inputs>,
    next: usize,
}

impl Rotation {
    fn new() -> Rotation {
        Rotation {
            sets: (0..INPUT_SETS)
                .map(|seed| Inputs::gather(&state_seeded(seed)))
                .collect(),
            next: 0,
        }
    }

    fn next(&mut self) -> &Inputs {
        self.next = (self.next + 1) % self.sets.len();
        &self.sets[self.next]
    }
}

/// The inputs the manager passes for one image task: 20 KB payload, a
/// 100 ms deadline, one task ahead in the queue.
struct Inputs {
    net: NetworkStatus,
    local_dist: Vec<f64>,
    cloud_dist: Vec<f64>,
    local_res: Vec<f64>,
    cloud_res: Vec<f64>,
}

impl Inputs {
    fn gather(s: &State) -> Inputs {
        Inputs {
            net: s.link.snapshot(s.now),
            local_dist: s.local_times.distribution_ms(TT),
            cloud_dist: s.cloud_times.distribution_ms(TT),
            local_res: s.residuals.sorted_ms((ExecPath::Local, TT)),
            cloud_res: s.residuals.sorted_ms((ExecPath::Cloud, TT)),
        }
    }

    fn input(&self, time_left: Option<Duration>) -> DecisionInput<'_> {
        DecisionInput {
            uplink_wait: std::time::Duration::ZERO,
            edge_load: 0.0,
            uplink_load: 0.0,
            split: None,
            task_type: TT,
            priority: Priority::High,
            payload_bytes: 20_000,
            response_bytes: 128,
            time_left,
            net: &self.net,
            local: LocalStatus {
                queue_wait: Duration::from_millis(15),
                inference: Duration::from_millis(15),
                supported: true,
                overtakes: 0,
            },
            cloud: CloudStatus {
                inference: Duration::from_millis(8),
            },
            local_dist_ms: &self.local_dist,
            cloud_dist_ms: &self.cloud_dist,
            previous: Some(ExecPath::Local),
            local_residual_ms: &self.local_res,
            cloud_residual_ms: &self.cloud_res,
        }
    }
}

const DEADLINE: Option<Duration> = Some(Duration::from_millis(100));

/// A named benchmark body.
type Case = (&'static str, Box<dyn FnMut()>);

/// Every benchmark as a closure over its own state, so criterion and the
/// per-call timing run the very same code.
fn cases() -> Vec<Case> {
    let policy = Policy::default();
    let s = state();
    let inputs = Inputs::gather(&s);
    assert_eq!(inputs.net.rtt_sorted_ms.len(), 60, "a full window");
    assert_eq!(inputs.local_dist.len(), 32);
    assert_eq!(inputs.local_res.len(), 32);
    let mut cases: Vec<Case> = Vec::new();
    for (name, policy, deadline) in [
        ("decide/deadline-aware", policy.clone(), DEADLINE),
        ("decide/deadline-aware-no-deadline", policy.clone(), None),
        (
            "decide/cost-model",
            Policy::CostModel { jitter_k: 1.0 },
            DEADLINE,
        ),
    ] {
        let mut sets = Rotation::new();
        cases.push((
            name,
            Box::new(move || {
                let inputs = sets.next();
                black_box(decide(black_box(&inputs.input(deadline)), &policy).ok());
            }),
        ));
    }
    {
        // The manager's whole step: the estimators' figures copied out
        // (network snapshot, distributions, sorted residuals), then decide.
        let s = state();
        let policy = policy.clone();
        cases.push((
            "decide/with-inputs",
            Box::new(move || {
                let inputs = Inputs {
                    net: black_box(&s.link).snapshot(s.now),
                    local_dist: s.local_times.distribution_ms(TT),
                    cloud_dist: s.cloud_times.distribution_ms(TT),
                    local_res: s.residuals.sorted_ms((ExecPath::Local, TT)),
                    cloud_res: s.residuals.sorted_ms((ExecPath::Cloud, TT)),
                };
                black_box(decide(&inputs.input(DEADLINE), &policy).ok());
            }),
        ));
    }
    {
        let mut w = RttWindow::new(60);
        let mut n = Noise(7);
        let mut at = Instant::now();
        for _ in 0..60 {
            at += Duration::from_millis(10);
            w.push(at, rtt_sample(&mut n));
        }
        cases.push((
            "estimate/rtt-window-push",
            Box::new(move || {
                at += Duration::from_millis(10);
                w.push(at, rtt_sample(&mut n));
                black_box(&w);
            }),
        ));
    }
    {
        let mut s = state();
        let mut n = Noise(11);
        let mut at = s.now;
        cases.push((
            "estimate/link-estimator-rtt-event",
            Box::new(move || {
                at += Duration::from_millis(10);
                s.link.on_event(&rtt_event(at, rtt_sample(&mut n)));
                black_box(&s.link);
            }),
        ));
    }
    {
        let s = state();
        cases.push((
            "estimate/link-estimator-snapshot",
            Box::new(move || {
                black_box(black_box(&s.link).snapshot(s.now));
            }),
        ));
    }
    {
        let mut s = state();
        let mut n = Noise(13);
        cases.push((
            "estimate/exec-time-observe",
            Box::new(move || {
                let d = Duration::from_secs_f64((15.0 + n.gauss()).max(1.0) / 1e3);
                s.local_times.observe(TT, d);
                black_box(&s.local_times);
            }),
        ));
    }
    cases
}

fn bench(c: &mut Criterion) {
    for (name, mut f) in cases() {
        // Criterion's folder per benchmark: target/criterion/GROUP/NAME.
        let (group, id) = name.split_once('/').expect("group/name");
        let mut g = c.benchmark_group(group);
        g.bench_function(id, |b| b.iter(&mut f));
        g.finish();
    }
}

/// Nearest-rank percentile of sorted values.
fn pct(sorted: &[u64], q: f64) -> u64 {
    let i = ((sorted.len() as f64 * q).ceil() as usize).clamp(1, sorted.len()) - 1;
    sorted[i]
}

/// 100,000 individually timed calls of each case (after 10,000 to warm
/// up): one `percall NAME n=.. p50_ns=.. p99_ns=.. p999_ns=.. max_ns=..`
/// line each; with `DECISION_PERCALL_ONLY` set, only the case it names
/// (for a profiler or `perf stat` on one case).
fn per_call() {
    const N: usize = 100_000;
    let only = std::env::var("DECISION_PERCALL_ONLY").ok();
    let time = |f: &mut dyn FnMut()| {
        for _ in 0..N / 10 {
            f();
        }
        let mut ns: Vec<u64> = (0..N)
            .map(|_| {
                let t = Instant::now();
                f();
                t.elapsed().as_nanos() as u64
            })
            .collect();
        ns.sort_unstable();
        ns
    };
    let print = |name: &str, ns: &[u64]| {
        println!(
            "percall {name} n={N} p50_ns={} p90_ns={} p99_ns={} p999_ns={} max_ns={}",
            pct(ns, 0.50),
            pct(ns, 0.90),
            pct(ns, 0.99),
            pct(ns, 0.999),
            ns[N - 1]
        );
    };
    for (name, mut f) in cases() {
        if only.as_deref().is_some_and(|o| o != name) {
            continue;
        }
        if name != "decide/deadline-aware" {
            print(name, &time(&mut f));
            continue;
        }
        // The machine's own tail: code as long as a decision's median that
        // is not the agent's, timed the same way in alternating blocks.
        // Plain arithmetic (registers only) shows the interruptions; a loop
        // that loads and stores over a few KB, as a decision does, also
        // shows what a busy neighbour on the same core costs memory
        // access. What these rows show at p99, no code of that length and
        // kind can beat here.
        let median = pct(&time(&mut f), 0.50) as f64;
        let tuned = |g: fn(u64) -> u64| {
            let per_iter = pct(
                &time(&mut || {
                    black_box(g(1000));
                }),
                0.50,
            ) as f64
                / 1000.0;
            (median / per_iter.max(0.01)) as u64
        };
        let (arith_iters, memory_iters) = (tuned(arithmetic), tuned(memory));
        let mut arith = || {
            black_box(arithmetic(arith_iters));
        };
        let mut mem = || {
            black_box(memory(memory_iters));
        };
        const BLOCK: usize = 1000;
        let mut out: [Vec<u64>; 3] = std::array::from_fn(|_| Vec::with_capacity(N));
        for _ in 0..N / BLOCK {
            let bodies: [&mut dyn FnMut(); 3] = [&mut f, &mut arith, &mut mem];
            for (g, out) in bodies.into_iter().zip(out.iter_mut()) {
                out.extend((0..BLOCK).map(|_| {
                    let t = Instant::now();
                    g();
                    t.elapsed().as_nanos() as u64
                }));
            }
        }
        for (label, mut ns) in [name, "machine/arithmetic-loop", "machine/memory-loop"]
            .into_iter()
            .zip(out)
        {
            ns.sort_unstable();
            print(label, &ns);
        }
    }
}

/// `iters` steps over two 4 KB arrays: each step loads two values and
/// stores one that a later step loads (a decision's merges go back and
/// forth between two stack buffers).
fn memory(iters: u64) -> u64 {
    let mut a = black_box([1.0f64; 512]);
    let mut b = [0.0f64; 512];
    let mut acc = 0.0;
    for i in 0..iters as usize {
        let k = (i * 8) % 512;
        b[k] = a[(k * 7) % 512] + a[k];
        a[(k + 256) % 512] = b[k] * 0.5;
        acc += b[k];
    }
    black_box(&b);
    acc as u64
}

/// `iters` dependent multiply-adds.
fn arithmetic(iters: u64) -> u64 {
    let mut x = 1u64;
    for i in 0..iters {
        x = black_box(x.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(i));
    }
    x
}

criterion_group!(benches, bench);

fn main() {
    // `cargo test --benches` runs the binary with no `--bench`: a smoke
    // run of every case, no measurement.
    let measuring = std::env::args().any(|a| a == "--bench");
    if !measuring {
        for (_, mut f) in cases() {
            f();
        }
        return;
    }
    benches();
    Criterion::default().configure_from_args().final_summary();
    per_call();
}
