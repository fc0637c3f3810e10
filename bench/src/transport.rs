//! The transport benchmark's rows, their summary over alternating rounds
//! and bench/results/transport.md (`cargo xtask bench-transport`).

use crate::support::stamp::{self, Machine};
use serde::{Deserialize, Serialize};
use std::fmt::Write;

/// One transport on one link at one payload size, in one round.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Row {
    pub transport: String,
    pub payload_bytes: usize,
    pub link: String,
    pub p50_us: u64,
    pub p99_us: u64,
    pub rps: f64,
    /// QUIC only: packets the client sent and declared lost during the
    /// measured requests (quinn's path statistics; the warm-up excluded).
    #[serde(default)]
    pub packets_sent: Option<u64>,
    #[serde(default)]
    pub packets_lost: Option<u64>,
    /// Requests measured (after the warm-up).
    #[serde(default)]
    pub requests: usize,
}

/// A (link, size, transport) over the rounds: medians and ranges.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Summary {
    pub link: String,
    pub payload_bytes: usize,
    pub transport: String,
    pub rounds: usize,
    pub p50_ms: (f64, f64, f64),
    pub p99_ms: (f64, f64, f64),
    pub rps: (f64, f64, f64),
    /// QUIC: packets sent per request and the share of them lost, over the rounds.
    pub packets_per_request: Option<(f64, f64, f64)>,
    pub lost_pct: Option<(f64, f64, f64)>,
}

/// (min, median, max).
fn spread(mut v: Vec<f64>) -> (f64, f64, f64) {
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

fn of_some(v: Vec<f64>) -> Option<(f64, f64, f64)> {
    (!v.is_empty()).then(|| spread(v))
}

/// Groups the rows of every round by (link, size, transport), in the order
/// they first appear.
pub fn summarize(rows: &[Row]) -> Vec<Summary> {
    let mut keys: Vec<(String, usize, String)> = Vec::new();
    for r in rows {
        let k = (r.link.clone(), r.payload_bytes, r.transport.clone());
        if !keys.contains(&k) {
            keys.push(k);
        }
    }
    keys.into_iter()
        .map(|(link, size, transport)| {
            let of: Vec<&Row> = rows
                .iter()
                .filter(|r| r.link == link && r.payload_bytes == size && r.transport == transport)
                .collect();
            Summary {
                rounds: of.len(),
                p50_ms: spread(of.iter().map(|r| r.p50_us as f64 / 1e3).collect()),
                p99_ms: spread(of.iter().map(|r| r.p99_us as f64 / 1e3).collect()),
                rps: spread(of.iter().map(|r| r.rps).collect()),
                packets_per_request: of_some(
                    of.iter()
                        .filter(|r| r.requests > 0)
                        .filter_map(|r| Some(r.packets_sent? as f64 / r.requests as f64))
                        .collect(),
                ),
                lost_pct: of_some(
                    of.iter()
                        .filter_map(|r| {
                            let sent = r.packets_sent.filter(|s| *s > 0)?;
                            Some(100.0 * r.packets_lost? as f64 / sent as f64)
                        })
                        .collect(),
                ),
                link,
                payload_bytes: size,
                transport,
            }
        })
        .collect()
}

/// Per round, QUIC's p99 over gRPC's for the same link and size: (min,
/// median, max) across rounds. Rounds pair by order of appearance.
pub fn p99_ratio(rows: &[Row], link: &str, size: usize) -> Option<(f64, f64, f64)> {
    let pick = |t: &str| -> Vec<f64> {
        rows.iter()
            .filter(|r| r.link == link && r.payload_bytes == size && r.transport == t)
            .map(|r| r.p99_us as f64)
            .collect()
    };
    let (q, g) = (pick("quic"), pick("grpc"));
    let ratios: Vec<f64> = q
        .iter()
        .zip(&g)
        .filter(|(_, g)| **g > 0.0)
        .map(|(q, g)| q / g)
        .collect();
    (!ratios.is_empty()).then(|| spread(ratios))
}

fn size_name(b: usize) -> String {
    match b {
        b if b >= 1 << 20 => format!("{} MB", b >> 20),
        b if b >= 1 << 10 => format!("{} KB", b >> 10),
        b => format!("{b} B"),
    }
}

fn range((lo, med, hi): (f64, f64, f64), digits: usize) -> String {
    format!("{med:.digits$} ({lo:.digits$}–{hi:.digits$})")
}

pub struct Report<'a> {
    pub command: &'a str,
    pub date_utc: &'a str,
    pub commit: &'a str,
    pub machine: &'a Machine,
    pub quick: bool,
    pub rounds: usize,
    pub rows: &'a [Row],
}

/// The rows of the QUIC client with quinn's Cubic, measured beside the
/// agent's controller (BBR).
pub const QUIC_CUBIC: &str = "quic-cubic";

pub fn render(r: &Report) -> String {
    let mut s = String::new();
    let _ = writeln!(s, "# Transport benchmark: QUIC vs gRPC\n");
    let _ = writeln!(
        s,
        "{}\n",
        stamp::generated_by(r.command, r.date_utc, r.machine, r.commit)
    );
    let _ = writeln!(
        s,
        "Both transports are the agent's own offload clients (`QuicOffloader`, \
         `GrpcOffloader`) against the cloud service's own listeners, mutual TLS 1.3 from a \
         development CA made for the run. The server checks the payload's size and answers \
         with a small response, so the figures are the transports' and not a model's. Per \
         row: a warm-up of 8 requests, then the requests with 8 in flight on one connection \
         (one QUIC connection, a stream per request; one HTTP/2 connection, a stream per \
         request); latency per request, throughput = requests / wall time. `quic` is the \
         agent's QUIC client as configured (quinn's BBR), `quic-cubic` the same client with \
         quinn's Cubic. Within a round, the three in that order for each size; {} rounds, \
         and the table gives each figure's median over the rounds with its range{}.\n",
        r.rounds,
        if r.quick {
            " (`--quick`: 2000 / 500 / 100 requests for 1 KB / 64 KB / 1 MB on loopback, half \
             of that on the lossy link)"
        } else {
            " (10000 / 2000 / 400 requests for 1 KB / 64 KB / 1 MB on loopback, half of that \
             on the lossy link)"
        }
    );
    let _ = writeln!(
        s,
        "Links: `loopback` (client and server processes on 127.0.0.1); `lossy-1pct` (the \
         jitter lab, `bench/transport-lossy.toml`: 5 ms each way, no jitter, 1 % random loss \
         each way, no rate limit; server in the lab's cloud namespace, client in its edge \
         namespace).\n"
    );
    let _ = writeln!(
        s,
        "| link | transport | payload | p50 (ms) | p99 (ms) | req/s | QUIC packets / request | QUIC packets lost (%) |\n|---|---|---:|---:|---:|---:|---:|---:|"
    );
    for m in summarize(r.rows) {
        let _ = writeln!(
            s,
            "| {} | {} | {} | {} | {} | {} | {} | {} |",
            m.link,
            m.transport,
            size_name(m.payload_bytes),
            range(m.p50_ms, 2),
            range(m.p99_ms, 2),
            range(m.rps, 0),
            m.packets_per_request.map_or("–".into(), |v| range(v, 0)),
            m.lost_pct.map_or("–".into(), |v| range(v, 2)),
        );
    }
    let _ = writeln!(
        s,
        "\nQUIC's p99 over gRPC's, paired by round (below 1: QUIC's tail is lower):\n\n\
         | link | payload | p99 ratio, median (range) |\n|---|---:|---:|"
    );
    let mut seen = Vec::new();
    for row in r.rows {
        let k = (row.link.clone(), row.payload_bytes);
        if seen.contains(&k) {
            continue;
        }
        seen.push(k);
        if let Some(ratio) = p99_ratio(r.rows, &row.link, row.payload_bytes) {
            let _ = writeln!(
                s,
                "| {} | {} | {} |",
                row.link,
                size_name(row.payload_bytes),
                range(ratio, 2)
            );
        }
    }
    let _ = writeln!(
        s,
        "\nBoth ends' UDP sockets ask for {} MiB receive and send buffers \
         (`SOCKET_BUFFER_BYTES`; beyond `net.core.rmem_max` only with CAP_NET_ADMIN): with the \
         kernel's default of 208 KiB a burst of 1 MB requests overflowed the server's socket, \
         and the lost packets' recovery set QUIC's tail. QUIC moves every request in packets \
         of at most 1452 bytes (quinn's path-MTU ceiling), each encrypted, sent, received and \
         acknowledged on its own in user space, where TCP on loopback moves 64 KB segments \
         through the kernel: the packets per request above are that cost. Where QUIC is \
         slower than gRPC on loopback at 1 MB, that per-packet work on 2 cores is the reason; \
         on the lossy link, where recovery and not CPU sets the pace, QUIC is the faster.",
        agent_net::SOCKET_BUFFER_BYTES >> 20
    );
    let _ = writeln!(
        s,
        "\nThe agent's QUIC uses quinn's BBR (`[edge.offload] quic_congestion`): with \
         Cubic every random loss reads as congestion and bulk uploads on the lossy link \
         collapse (the `quic-cubic` rows). BBR has a cost of its own where requests outgrow \
         its 240 KB initial window (8 x 64 KB and 8 x 1 MB in flight here): quinn-proto \
         0.11's BBR enters ProbeRtt on the first acknowledgement that is not \
         application-limited (its ProbeRtt timer starts unset, so the minimum RTT counts as \
         expired) and holds its window at 0.75 of the estimated bandwidth-delay product, at \
         least 4 packets, for 200 ms, and again every 10 s of such sending. On loopback that \
         floor is 4 packets, and a round that falls into it stalls: compare the 64 KB p99 of \
         `quic` and `quic-cubic` on loopback. The whole-task offloads of the scenario \
         workloads (a few to a few tens of KB each) stay application-limited and do not meet \
         it. Not measured here: connection migration, 0-RTT resumption latency, links with \
         jitter or rate limits (the scenario benchmark covers those for the agent as a \
         whole).\n\n\
         Every round's rows (JSON):\n\n```json\n{}\n```",
        serde_json::to_string(r.rows).unwrap_or_default()
    );
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(link: &str, t: &str, size: usize, p99_us: u64, rps: f64) -> Row {
        Row {
            transport: t.into(),
            payload_bytes: size,
            link: link.into(),
            p50_us: p99_us / 2,
            p99_us,
            rps,
            packets_sent: None,
            packets_lost: None,
            requests: 0,
        }
    }

    #[test]
    fn summaries_and_ratios_over_rounds() {
        let rows = vec![
            row("l", "quic", 1024, 1000, 10.0),
            row("l", "grpc", 1024, 2000, 5.0),
            row("l", "quic", 1024, 3000, 30.0),
            row("l", "grpc", 1024, 2000, 7.0),
            row("l", "quic", 1024, 2000, 20.0),
            row("l", "grpc", 1024, 4000, 6.0),
        ];
        let s = summarize(&rows);
        assert_eq!(s.len(), 2);
        assert_eq!(s[0].transport, "quic");
        assert_eq!(s[0].rounds, 3);
        assert_eq!(s[0].p99_ms, (1.0, 2.0, 3.0));
        assert_eq!(s[1].rps, (5.0, 6.0, 7.0));
        // Ratios per round: 0.5, 1.5, 0.5.
        assert_eq!(p99_ratio(&rows, "l", 1024), Some((0.5, 0.5, 1.5)));
        assert_eq!(p99_ratio(&rows, "l", 9), None);
        assert_eq!(size_name(1 << 20), "1 MB");
        assert_eq!(size_name(65536), "64 KB");
    }

    #[test]
    fn the_report_names_its_origin_and_every_row() {
        let rows = vec![
            row("loopback", "quic", 1024, 1000, 10.0),
            row("loopback", "grpc", 1024, 2000, 5.0),
        ];
        let m = crate::support::stamp::machine();
        let md = render(&Report {
            command: "cargo xtask bench-transport --quick",
            date_utc: "now",
            commit: "abc",
            machine: &m,
            quick: true,
            rounds: 1,
            rows: &rows,
        });
        assert!(md.contains("source commit abc"));
        assert!(md.contains("`cargo xtask bench-transport --quick`"));
        assert!(md.contains("| loopback | quic | 1 KB |"));
        assert!(md.contains("| loopback | 1 KB | 0.50 (0.50–0.50) |"));
    }
}
