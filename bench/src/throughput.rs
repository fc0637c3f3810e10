//! The throughput benchmark's rounds, their summary and
//! bench/results/throughput.md (`cargo xtask bench-throughput`): the edge
//! agent's task API driven in a closed loop at several concurrency levels,
//! beside a bare tonic echo service measured the same way in alternating
//! rounds.

use crate::scenarios::stats::percentile;
use crate::support::stamp::{self, Machine};
use serde::{Deserialize, Serialize};
use std::fmt::Write;

/// One service (the agent or the echo) at one concurrency in one round.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Round {
    /// What the agent ran: `digits-local`, `image-local`, `digits-offload`...
    pub case: String,
    /// `agent` or `echo`.
    pub service: String,
    pub concurrency: usize,
    pub round: usize,
    /// Answers with a result within the round.
    pub tasks: usize,
    /// Answers that were errors (none expected).
    pub errors: usize,
    pub seconds: f64,
    pub tasks_per_s: f64,
    pub p50_us: f64,
    pub p99_us: f64,
    pub max_us: f64,
    /// End to end minus the inference time the agent reported, per task
    /// (agent rounds only).
    pub overhead_p50_us: Option<f64>,
    pub overhead_p99_us: Option<f64>,
    /// The same minus the reported wait before inference as well.
    pub beyond_queue_p50_us: Option<f64>,
    pub beyond_queue_p99_us: Option<f64>,
    pub inference_p50_us: Option<f64>,
    pub queue_p50_us: Option<f64>,
    /// CPU time (user + system) of the serving process (the edge agent, or
    /// the echo service) per task.
    pub cpu_us_per_task: f64,
    /// The cloud service's, in agent rounds.
    pub cloud_cpu_us_per_task: Option<f64>,
    /// Peak resident memory of the serving process during the round.
    pub rss_kib: u64,
    pub cloud_rss_kib: Option<u64>,
}

/// Per-task figures of one round, from which a [`Round`] is made.
#[derive(Debug, Clone, Copy, Default)]
pub struct Sample {
    pub latency_us: f64,
    /// Reported by the agent (0 from the echo).
    pub inference_us: f64,
    pub queue_us: f64,
}

/// The percentiles of a round's samples: (p50, p99, max) of the latency,
/// and p50/p99 of the overheads and p50 of inference and queue.
pub struct Percentiles {
    pub latency: (f64, f64, f64),
    pub overhead: (f64, f64),
    pub beyond_queue: (f64, f64),
    pub inference_p50: f64,
    pub queue_p50: f64,
}

fn sorted(v: impl Iterator<Item = f64>) -> Vec<f64> {
    let mut v: Vec<f64> = v.collect();
    v.sort_by(f64::total_cmp);
    v
}

pub fn percentiles(samples: &[Sample]) -> Option<Percentiles> {
    if samples.is_empty() {
        return None;
    }
    let p = |v: &[f64], q| percentile(v, q).unwrap_or(f64::NAN);
    let lat = sorted(samples.iter().map(|s| s.latency_us));
    let over = sorted(samples.iter().map(|s| s.latency_us - s.inference_us));
    let beyond = sorted(
        samples
            .iter()
            .map(|s| s.latency_us - s.inference_us - s.queue_us),
    );
    let inf = sorted(samples.iter().map(|s| s.inference_us));
    let queue = sorted(samples.iter().map(|s| s.queue_us));
    Some(Percentiles {
        latency: (p(&lat, 0.5), p(&lat, 0.99), lat[lat.len() - 1]),
        overhead: (p(&over, 0.5), p(&over, 0.99)),
        beyond_queue: (p(&beyond, 0.5), p(&beyond, 0.99)),
        inference_p50: p(&inf, 0.5),
        queue_p50: p(&queue, 0.5),
    })
}

/// (min, median, max); NaN for no values.
pub fn spread(mut v: Vec<f64>) -> (f64, f64, f64) {
    v.retain(|x| x.is_finite());
    v.sort_by(f64::total_cmp);
    let n = v.len();
    if n == 0 {
        return (f64::NAN, f64::NAN, f64::NAN);
    }
    let med = if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    };
    (v[0], med, v[n - 1])
}

/// One case at one concurrency over the rounds: the agent's figures and
/// the echo's, medians with their range.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Summary {
    pub case: String,
    pub concurrency: usize,
    pub rounds: usize,
    pub tasks: usize,
    pub errors: usize,
    pub tasks_per_s: (f64, f64, f64),
    pub p50_ms: (f64, f64, f64),
    pub p99_ms: (f64, f64, f64),
    pub max_ms: (f64, f64, f64),
    pub overhead_p50_us: (f64, f64, f64),
    pub overhead_p99_us: (f64, f64, f64),
    pub beyond_queue_p50_us: (f64, f64, f64),
    pub inference_p50_us: (f64, f64, f64),
    pub queue_p50_us: (f64, f64, f64),
    pub echo_p50_us: (f64, f64, f64),
    pub echo_p99_us: (f64, f64, f64),
    pub echo_tasks_per_s: (f64, f64, f64),
    /// The agent's overhead p50 over the echo's p50, paired by round.
    pub overhead_over_echo: (f64, f64, f64),
    pub cpu_us_per_task: (f64, f64, f64),
    pub echo_cpu_us_per_task: (f64, f64, f64),
    pub cloud_cpu_us_per_task: (f64, f64, f64),
    /// Peak over the rounds (MiB).
    pub edge_rss_mib: f64,
    pub cloud_rss_mib: Option<f64>,
}

/// Groups the rounds by (case, concurrency), in the order they appear.
pub fn summarize(rounds: &[Round]) -> Vec<Summary> {
    let mut keys: Vec<(String, usize)> = Vec::new();
    for r in rounds {
        let k = (r.case.clone(), r.concurrency);
        if !keys.contains(&k) {
            keys.push(k);
        }
    }
    keys.into_iter()
        .map(|(case, c)| {
            let of = |svc: &str| -> Vec<&Round> {
                rounds
                    .iter()
                    .filter(|r| r.case == case && r.concurrency == c && r.service == svc)
                    .collect()
            };
            let (agent, echo) = (of("agent"), of("echo"));
            let a = |f: &dyn Fn(&Round) -> f64| spread(agent.iter().map(|r| f(r)).collect());
            let e = |f: &dyn Fn(&Round) -> f64| spread(echo.iter().map(|r| f(r)).collect());
            let ratios = agent
                .iter()
                .filter_map(|ar| {
                    let er = echo.iter().find(|er| er.round == ar.round)?;
                    Some(ar.overhead_p50_us? / er.p50_us)
                })
                .collect();
            let mib = |k: u64| k as f64 / 1024.0;
            Summary {
                rounds: agent.len(),
                tasks: agent.iter().map(|r| r.tasks).sum(),
                errors: agent.iter().map(|r| r.errors).sum(),
                tasks_per_s: a(&|r| r.tasks_per_s),
                p50_ms: a(&|r| r.p50_us / 1e3),
                p99_ms: a(&|r| r.p99_us / 1e3),
                max_ms: a(&|r| r.max_us / 1e3),
                overhead_p50_us: a(&|r| r.overhead_p50_us.unwrap_or(f64::NAN)),
                overhead_p99_us: a(&|r| r.overhead_p99_us.unwrap_or(f64::NAN)),
                beyond_queue_p50_us: a(&|r| r.beyond_queue_p50_us.unwrap_or(f64::NAN)),
                inference_p50_us: a(&|r| r.inference_p50_us.unwrap_or(f64::NAN)),
                queue_p50_us: a(&|r| r.queue_p50_us.unwrap_or(f64::NAN)),
                echo_p50_us: e(&|r| r.p50_us),
                echo_p99_us: e(&|r| r.p99_us),
                echo_tasks_per_s: e(&|r| r.tasks_per_s),
                overhead_over_echo: spread(ratios),
                cpu_us_per_task: a(&|r| r.cpu_us_per_task),
                echo_cpu_us_per_task: e(&|r| r.cpu_us_per_task),
                cloud_cpu_us_per_task: a(&|r| r.cloud_cpu_us_per_task.unwrap_or(f64::NAN)),
                edge_rss_mib: mib(agent.iter().map(|r| r.rss_kib).max().unwrap_or(0)),
                cloud_rss_mib: agent.iter().filter_map(|r| r.cloud_rss_kib).max().map(mib),
                case,
                concurrency: c,
            }
        })
        .collect()
}

/// Memory of one stack of agents (MiB): at idle after start, peak under
/// load, and at idle after the load.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StackMemory {
    pub stack: String,
    pub edge_idle_mib: f64,
    pub edge_peak_mib: f64,
    pub edge_after_mib: f64,
    pub cloud_idle_mib: f64,
    pub cloud_peak_mib: f64,
    pub cloud_after_mib: f64,
}

/// The figures the issue asks for, for the last JSON line: the trivial
/// model at one concurrency.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Headline {
    pub concurrency: usize,
    pub tasks_per_s: f64,
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub max_ms: f64,
    pub overhead_us_p50: f64,
    pub echo_us_p50: f64,
    pub overhead_over_echo: f64,
    pub cpu_us_per_task: f64,
}

pub fn headline(summaries: &[Summary], case: &str, concurrency: usize) -> Option<Headline> {
    let s = summaries
        .iter()
        .find(|s| s.case == case && s.concurrency == concurrency)?;
    let r1 = |v: f64| (v * 10.0).round() / 10.0;
    let r3 = |v: f64| (v * 1000.0).round() / 1000.0;
    Some(Headline {
        concurrency,
        tasks_per_s: r1(s.tasks_per_s.1),
        p50_ms: r3(s.p50_ms.1),
        p99_ms: r3(s.p99_ms.1),
        max_ms: r3(s.max_ms.1),
        overhead_us_p50: r1(s.overhead_p50_us.1),
        echo_us_p50: r1(s.echo_p50_us.1),
        overhead_over_echo: (s.overhead_over_echo.1 * 100.0).round() / 100.0,
        cpu_us_per_task: r1(s.cpu_us_per_task.1),
    })
}

pub struct Report<'a> {
    pub command: &'a str,
    pub date_utc: &'a str,
    pub commit: &'a str,
    pub machine: &'a Machine,
    pub quick: bool,
    pub rounds: usize,
    pub round_seconds: f64,
    pub cases: &'a [(String, String)],
    pub rows: &'a [Round],
    pub memory: &'a [StackMemory],
    pub notes: &'a [String],
}

fn range((lo, med, hi): (f64, f64, f64), digits: usize) -> String {
    if !med.is_finite() {
        return "–".into();
    }
    format!("{med:.digits$} ({lo:.digits$}–{hi:.digits$})")
}

pub fn render(r: &Report) -> String {
    let mut s = String::new();
    let _ = writeln!(s, "# Throughput benchmark: the agent's own costs\n");
    let _ = writeln!(
        s,
        "{}\n",
        stamp::generated_by(r.command, r.date_utc, r.machine, r.commit)
    );
    let _ = writeln!(
        s,
        "The real `agent cloud` and `agent edge` run as processes on loopback (mutual TLS \
         between them, the edge's default single local worker, the active probe only: no \
         eBPF programs, whose cost `cargo xtask bench-ebpf` measures). The benchmark submits \
         tasks to the edge's task API over one HTTP/2 connection (TCP_NODELAY) in a closed \
         loop, from a single thread (a driver with a thread per core took CPU from the \
         agent it measures): N tasks in flight, each answered task replaced at once. \
         Beside it, a bare tonic service implementing the same `EdgeAIService`, which answers at once \
         (`bench-throughput echo`, its own process), is driven the same way with the same \
         payloads: the cost of a gRPC round trip on this machine. Each round runs {:.1} s \
         after a warm-up; {} rounds per level alternate the two (agent first in even rounds, \
         echo first in odd ones), and every figure is the median over the rounds with its \
         range{}.\n",
        r.round_seconds,
        r.rounds,
        if r.quick { " (`--quick`)" } else { "" }
    );
    let _ = writeln!(
        s,
        "- **overhead** = end-to-end latency − the inference time the edge reports \
         (`TaskResponse.inference_nano`: the model, decoding included); it includes the \
         gRPC round trip, the decision, the queue wait and the hand-offs between threads. \
         **beyond queue** also subtracts the reported wait before inference \
         (`queue_nano`), which grows with the tasks in flight when one worker serves them.\n\
         - **echo** = the bare service's round trip at the same concurrency; **ratio** = \
         overhead p50 / echo p50, paired by round (the issue's target: at most 2).\n\
         - **CPU/task** = user + system time of the edge process (`/proc/PID/stat`) over \
         the round / tasks answered (for the echo: the echo process's); everything the \
         agent does per task, the inference included.\n\
         - p99 of a round with fewer than 100 tasks is its maximum; `tasks` is the total \
         over the rounds.\n"
    );
    let _ = writeln!(s, "Cases:\n");
    for (name, what) in r.cases {
        let _ = writeln!(s, "- `{name}`: {what}");
    }
    let _ = writeln!(
        s,
        "\n| case | in flight | tasks | tasks/s | p50 (ms) | p99 (ms) | max (ms) | overhead p50 (µs) | overhead p99 (µs) | beyond queue p50 (µs) | inference p50 (µs) | echo p50 (µs) | ratio | CPU/task (µs) | echo CPU/task (µs) |\n\
         |---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
    );
    for m in summarize(r.rows) {
        let _ = writeln!(
            s,
            "| {} | {} | {}{} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} |",
            m.case,
            m.concurrency,
            m.tasks,
            if m.errors > 0 {
                format!(" ({} errors)", m.errors)
            } else {
                String::new()
            },
            range(m.tasks_per_s, 0),
            range(m.p50_ms, 2),
            range(m.p99_ms, 2),
            range(m.max_ms, 1),
            range(m.overhead_p50_us, 0),
            range(m.overhead_p99_us, 0),
            range(m.beyond_queue_p50_us, 0),
            range(m.inference_p50_us, 0),
            range(m.echo_p50_us, 0),
            range(m.overhead_over_echo, 2),
            range(m.cpu_us_per_task, 0),
            range(m.echo_cpu_us_per_task, 0),
        );
    }
    let _ = writeln!(
        s,
        "\nMemory (resident set, `VmRSS`, MiB): after start before any task, the peak \
         sampled every 100 ms under load, and after the load.\n\n\
         | agents | edge idle | edge peak | edge after | cloud idle | cloud peak | cloud after |\n\
         |---|---:|---:|---:|---:|---:|---:|"
    );
    for m in r.memory {
        let _ = writeln!(
            s,
            "| {} | {:.1} | {:.1} | {:.1} | {:.1} | {:.1} | {:.1} |",
            m.stack,
            m.edge_idle_mib,
            m.edge_peak_mib,
            m.edge_after_mib,
            m.cloud_idle_mib,
            m.cloud_peak_mib,
            m.cloud_after_mib
        );
    }
    if !r.notes.is_empty() {
        let _ = writeln!(s);
        for n in r.notes {
            let _ = writeln!(s, "{n}\n");
        }
    }
    let _ = writeln!(
        s,
        "\nEvery round (JSON, also in bench/results/throughput.json):\n\n```json\n{}\n```",
        serde_json::to_string(r.rows).unwrap_or_default()
    );
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    fn round(service: &str, c: usize, n: usize, p50: f64, over: Option<f64>) -> Round {
        Round {
            case: "digits-local".into(),
            service: service.into(),
            concurrency: c,
            round: n,
            tasks: 100,
            errors: 0,
            seconds: 1.0,
            tasks_per_s: 100.0 * (n + 1) as f64,
            p50_us: p50,
            p99_us: p50 * 2.0,
            max_us: p50 * 3.0,
            overhead_p50_us: over,
            overhead_p99_us: over.map(|o| o * 2.0),
            beyond_queue_p50_us: over,
            beyond_queue_p99_us: over,
            inference_p50_us: over.map(|_| 40.0),
            queue_p50_us: over.map(|_| 5.0),
            cpu_us_per_task: 50.0,
            cloud_cpu_us_per_task: over.map(|_| 1.0),
            rss_kib: 2048 * (n as u64 + 1),
            cloud_rss_kib: over.map(|_| 1024),
        }
    }

    #[test]
    fn percentiles_of_a_round() {
        let samples: Vec<Sample> = (1..=100)
            .map(|i| Sample {
                latency_us: f64::from(i) * 10.0,
                inference_us: 5.0,
                queue_us: 1.0,
            })
            .collect();
        let p = percentiles(&samples).unwrap();
        assert_eq!(p.latency.2, 1000.0);
        assert!((p.latency.0 - 505.0).abs() < 1e-9);
        assert!((p.overhead.0 - 500.0).abs() < 1e-9);
        assert!((p.beyond_queue.0 - 499.0).abs() < 1e-9);
        assert_eq!(p.inference_p50, 5.0);
        assert!(percentiles(&[]).is_none());
    }

    #[test]
    fn rounds_pair_agent_and_echo() {
        let rows = vec![
            round("agent", 1, 0, 300.0, Some(200.0)),
            round("echo", 1, 0, 100.0, None),
            round("echo", 1, 1, 200.0, None),
            round("agent", 1, 1, 300.0, Some(300.0)),
            round("agent", 1, 2, 300.0, Some(100.0)),
            round("echo", 1, 2, 100.0, None),
            round("agent", 16, 0, 900.0, Some(800.0)),
        ];
        let s = summarize(&rows);
        assert_eq!(s.len(), 2);
        assert_eq!(s[0].rounds, 3);
        assert_eq!(s[0].echo_p50_us, (100.0, 100.0, 200.0));
        // Ratios 2.0, 1.5, 1.0.
        assert_eq!(s[0].overhead_over_echo, (1.0, 1.5, 2.0));
        assert_eq!(s[0].overhead_p50_us, (100.0, 200.0, 300.0));
        assert_eq!(s[0].edge_rss_mib, 6.0);
        assert!(s[1].echo_p50_us.1.is_nan());
        let h = headline(&s, "digits-local", 1).unwrap();
        assert_eq!((h.overhead_us_p50, h.echo_us_p50), (200.0, 100.0));
        assert_eq!(h.p99_ms, 0.6);
        assert!(headline(&s, "digits-local", 4).is_none());
    }

    #[test]
    fn the_report_names_its_origin_and_every_level() {
        let rows = vec![
            round("agent", 1, 0, 300.0, Some(200.0)),
            round("echo", 1, 0, 100.0, None),
        ];
        let m = crate::support::stamp::machine();
        let md = render(&Report {
            command: "cargo xtask bench-throughput --quick",
            date_utc: "now",
            commit: "abc",
            machine: &m,
            quick: true,
            rounds: 1,
            round_seconds: 1.0,
            cases: &[("digits-local".into(), "the digits model".into())],
            rows: &rows,
            memory: &[],
            notes: &[],
        });
        assert!(md.contains("source commit abc"));
        assert!(md.contains("`cargo xtask bench-throughput --quick`"));
        assert!(
            md.contains("| digits-local | 1 | 100 | 100 (100–100) |"),
            "{md}"
        );
        assert!(md.contains("| 2.00 (2.00–2.00) |"));
    }
}
