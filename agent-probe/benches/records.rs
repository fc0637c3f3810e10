//! The eBPF probe's ring-buffer record conversion (issue 12, item 5): the
//! reader's path from the kernel's bytes to `ProbeEvent`s
//! (`record_from_bytes` + the stateful `Converter`, through
//! `agent_probe::convert_ring_items`), on a realistic mix of records.
//!
//! Criterion measures a batch of 256 records (per-record throughput) and a
//! batch of one (the fixed cost of a fresh converter included). After it,
//! 100,000 individually timed one-record batches print a `percall` line
//! (p50/p99/p99.9/max in ns) like agent-core's decision benchmark;
//! `cargo xtask bench-decision` collects both.

use agent_common::{
    Flow, Record, RecordBody, RttBody, StateBody, AF_INET, IPPROTO_TCP, IPPROTO_UDP, KIND_RTT,
    KIND_STATE, SOURCE_QUIC_SPIN, SOURCE_SOCKOPS, SOURCE_TC_TCP_TS, SOURCE_TRACEPOINT,
    TCP_ESTABLISHED,
};
use agent_probe::convert_ring_items;
use criterion::{criterion_group, Criterion, Throughput};
use std::hint::black_box;
use std::time::Instant;

fn flow(i: u32, proto: u8) -> Flow {
    Flow {
        local: [u32::from_ne_bytes([10, 0, 0, 1]), 0, 0, 0],
        remote: [u32::from_ne_bytes([10, 0, 1, 2]), 0, 0, 0],
        local_port: 40_000 + i as u16,
        remote_port: 50_051,
        family: AF_INET,
        proto,
        _pad: [0; 2],
    }
}

/// What the ring buffer carries under offload traffic: sock_ops RTT samples
/// over 16 TCP flows (most records, with cumulative segment counters), tc
/// timestamp samples, QUIC spin samples, and a few state changes.
fn records(n: usize) -> Vec<Record> {
    (0..n as u32)
        .map(|i| {
            let ts = 1_000_000_000 + u64::from(i) * 100_000;
            let rtt = |source, proto| {
                let mut r = Record::new(KIND_RTT, source, ts, flow(i % 16, proto));
                r.body = RecordBody {
                    rtt: RttBody {
                        rtt_ns: 20_000_000 + u64::from(i % 7) * 300_000,
                        srtt_ns: 20_000_000,
                        data_segs_out: i * 3,
                        total_retrans: i / 50,
                    },
                };
                r
            };
            match i % 16 {
                0..=10 => rtt(SOURCE_SOCKOPS, IPPROTO_TCP),
                11..=12 => rtt(SOURCE_TC_TCP_TS, IPPROTO_TCP),
                13..=14 => rtt(SOURCE_QUIC_SPIN, IPPROTO_UDP),
                _ => {
                    let mut r =
                        Record::new(KIND_STATE, SOURCE_TRACEPOINT, ts, flow(i % 16, IPPROTO_TCP));
                    r.body = RecordBody {
                        state: StateBody {
                            old_state: 2,
                            new_state: TCP_ESTABLISHED,
                            _pad: [0; 4],
                        },
                    };
                    r
                }
            }
        })
        .collect()
}

/// The records as the ring buffer hands them over: byte slices.
fn as_bytes(recs: &[Record]) -> Vec<&[u8]> {
    recs.iter()
        .map(|r| {
            // SAFETY: a Record is plain integers without padding bytes
            // (agent-common asserts its size); the slice borrows `r`.
            unsafe {
                std::slice::from_raw_parts(
                    (r as *const Record).cast::<u8>(),
                    std::mem::size_of::<Record>(),
                )
            }
        })
        .collect()
}

fn bench(c: &mut Criterion) {
    let recs = records(256);
    let items = as_bytes(&recs);
    let mut g = c.benchmark_group("convert");
    g.throughput(Throughput::Elements(items.len() as u64));
    g.bench_function("ring-items-256", |b| {
        b.iter(|| black_box(convert_ring_items(black_box(items.iter().copied()), true)))
    });
    g.throughput(Throughput::Elements(1));
    g.bench_function("ring-items-1", |b| {
        b.iter(|| black_box(convert_ring_items(black_box([items[0]]), true)))
    });
    g.finish();
}

fn per_call() {
    const N: usize = 100_000;
    let recs = records(16);
    let items = as_bytes(&recs);
    let one = |i: usize| black_box(convert_ring_items([items[i % items.len()]], true)).len();
    for i in 0..N / 10 {
        one(i);
    }
    let mut ns: Vec<u64> = (0..N)
        .map(|i| {
            let t = Instant::now();
            one(i);
            t.elapsed().as_nanos() as u64
        })
        .collect();
    ns.sort_unstable();
    let pct = |q: f64| ns[((N as f64 * q).ceil() as usize).clamp(1, N) - 1];
    println!(
        "percall convert/ring-items-1 n={N} p50_ns={} p99_ns={} p999_ns={} max_ns={}",
        pct(0.50),
        pct(0.99),
        pct(0.999),
        ns[N - 1]
    );
}

criterion_group!(benches, bench);

fn main() {
    // `cargo test --benches` runs the binary with no `--bench`: a smoke
    // run, no measurement.
    if !std::env::args().any(|a| a == "--bench") {
        let recs = records(16);
        let events = convert_ring_items(as_bytes(&recs), true);
        assert!(events.len() >= 15, "{} events", events.len());
        return;
    }
    benches();
    Criterion::default().configure_from_args().final_summary();
    per_call();
}
