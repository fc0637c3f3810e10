//! Emulator accuracy check: configures a known one-way delay, jitter and
//! loss on the uplink (the downlink stays perfect), sends real traffic
//! across (ICMP echo and a TCP request/response flow) and compares what
//! the traffic saw with what was configured.
//!
//! Phases run one after another so that no two measurement packets share
//! the link or one held jitter value: ICMP every 30 ms (RTT samples), TCP
//! ping-pong with one segment in flight and requests at least one jitter
//! hold apart (RTT samples; exchanges that needed a retransmission are left
//! out), then 5000 more echoes (five concurrent pings) for the loss rate.
//! (Traffic denser than the hold samples each held value several times;
//! that is the emulator's intended behaviour, not a measurement error.)

use crate::lab::{Backend, Lab, LabConfig, CLOUD_ADDR};
use crate::params::{Dir, JitterDistribution, LinkParams};
use crate::traffic::{ping, tcp_pingpong, PingResult};
use anyhow::{bail, Result};
use serde::Serialize;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Tolerances of the CI check.
pub const DELAY_TOLERANCE: f64 = 0.10;
pub const JITTER_TOLERANCE: f64 = 0.20;
pub const LOSS_BOUNDS: (f64, f64) = (0.004, 0.02);

#[derive(Debug, Clone)]
pub struct CheckOptions {
    pub prefix: String,
    pub backend: Backend,
    pub delay_ms: f64,
    pub jitter_ms: f64,
    pub loss: f64,
    pub jitter_hold_ms: f64,
    pub reorder: bool,
    pub icmp_count: u32,
    pub tcp_seconds: f64,
    pub loss_count: u32,
    /// Link model seed (default: from the clock; printed in the report).
    pub seed: Option<u64>,
}

impl Default for CheckOptions {
    fn default() -> Self {
        CheckOptions {
            prefix: format!("jchk{}", std::process::id()),
            backend: Backend::Tun,
            delay_ms: 20.0,
            jitter_ms: 5.0,
            loss: 0.01,
            jitter_hold_ms: crate::params::DEFAULT_JITTER_HOLD_MS,
            reorder: false,
            icmp_count: 500,
            tcp_seconds: 10.0,
            loss_count: 5000,
            seed: None,
        }
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct SampleSummary {
    pub samples: usize,
    pub mean_ms: f64,
    pub sd_ms: f64,
    /// The standard deviation a normal distribution with the samples'
    /// interquartile range has (IQR / 1.349): the spread of the bulk,
    /// which one host stall among hundreds of samples leaves alone.
    pub robust_sd_ms: f64,
    pub min_ms: f64,
    pub max_ms: f64,
}

#[derive(Debug, Clone, Serialize)]
pub struct CheckReport {
    pub configured_delay_ms: f64,
    pub configured_jitter_ms: f64,
    /// The mean RTT of the ICMP and TCP samples less `baseline_rtt_ms`.
    pub measured_delay_ms: f64,
    pub measured_jitter_ms: f64,
    pub configured_loss: f64,
    pub measured_loss: f64,
    pub jitter_distribution: JitterDistribution,
    pub jitter_hold_ms: f64,
    pub reorder: bool,
    pub backend: Backend,
    pub seed: u64,
    pub relay_realtime: bool,
    /// RTT across the lab with no impairment (relay and stack overhead).
    pub baseline_rtt_ms: f64,
    pub icmp: SampleSummary,
    pub tcp: SampleSummary,
    pub tcp_exchanges_retransmitted: u64,
    pub loss_packets_sent: u64,
    pub loss_packets_lost: u64,
    pub within_tolerance: bool,
    pub duration_s: f64,
}

pub fn summarize(v: &[f64]) -> SampleSummary {
    let n = v.len();
    let mean = v.iter().sum::<f64>() / n.max(1) as f64;
    let var = v.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / (n.max(2) - 1) as f64;
    let r = |x: f64| (x * 1000.0).round() / 1000.0;
    let mut sorted = v.to_vec();
    sorted.sort_by(f64::total_cmp);
    let iqr = quantile(&sorted, 0.75) - quantile(&sorted, 0.25);
    SampleSummary {
        samples: n,
        mean_ms: r(mean),
        sd_ms: r(var.sqrt()),
        robust_sd_ms: r(iqr / 1.349),
        min_ms: r(sorted.first().copied().unwrap_or(f64::INFINITY)),
        max_ms: r(sorted.last().copied().unwrap_or(f64::NEG_INFINITY)),
    }
}

/// The `q` quantile of sorted values, interpolated between neighbours
/// (0 for none).
fn quantile(sorted: &[f64], q: f64) -> f64 {
    let Some(last) = sorted.len().checked_sub(1) else {
        return 0.0;
    };
    let pos = q.clamp(0.0, 1.0) * last as f64;
    let (lo, hi) = (pos.floor() as usize, pos.ceil() as usize);
    sorted[lo] + (sorted[hi] - sorted[lo]) * (pos - lo as f64)
}

impl CheckReport {
    pub fn tolerance_failures(&self) -> Vec<String> {
        let mut f = Vec::new();
        let rel = |m: f64, c: f64| (m - c).abs() / c;
        let delay_err = rel(self.measured_delay_ms, self.configured_delay_ms);
        if delay_err > DELAY_TOLERANCE {
            f.push(format!(
                "delay {} ms is {:.1} % off {} ms (allowed {} %)",
                self.measured_delay_ms,
                delay_err * 100.0,
                self.configured_delay_ms,
                DELAY_TOLERANCE * 100.0
            ));
        }
        let jitter_err = rel(self.measured_jitter_ms, self.configured_jitter_ms);
        if jitter_err > JITTER_TOLERANCE {
            f.push(format!(
                "jitter {} ms is {:.1} % off {} ms (allowed {} %)",
                self.measured_jitter_ms,
                jitter_err * 100.0,
                self.configured_jitter_ms,
                JITTER_TOLERANCE * 100.0
            ));
        }
        let (lo, hi) = LOSS_BOUNDS;
        if self.configured_loss == 0.01 && !(lo..=hi).contains(&self.measured_loss) {
            f.push(format!(
                "loss {} outside the plausible {lo}..{hi} for 1 %",
                self.measured_loss
            ));
        }
        f
    }
}

/// Concurrent ping processes of the loss phase (one ping with a 2 ms
/// interval slows down to keep few echoes outstanding at 20 ms RTT).
const LOSS_PINGERS: u32 = 5;

fn ping_parallel(ns: &str, total: u32) -> Result<PingResult> {
    let each = total.div_ceil(LOSS_PINGERS);
    let handles: Vec<_> = (0..LOSS_PINGERS)
        .map(|_| {
            let ns = ns.to_string();
            std::thread::spawn(move || ping(&ns, CLOUD_ADDR, each, 0.01))
        })
        .collect();
    let mut sum = PingResult::default();
    for h in handles {
        let r = h
            .join()
            .map_err(|_| anyhow::anyhow!("ping thread panicked"))??;
        sum.sent += r.sent;
        sum.received += r.received;
        sum.rtts_ms.extend(r.rtts_ms);
    }
    Ok(sum)
}

fn ensure_running(stop: &AtomicBool) -> Result<()> {
    if stop.load(Ordering::Relaxed) {
        bail!("interrupted");
    }
    Ok(())
}

/// Runs the check. `lab_slot` receives the lab so a signal handler can tear
/// it down; `stop` aborts between phases.
pub fn run(
    opts: &CheckOptions,
    lab_slot: &std::sync::Mutex<Option<Arc<Lab>>>,
    stop: &AtomicBool,
    progress: &dyn Fn(&str),
) -> Result<CheckReport> {
    let started = Instant::now();
    let impaired = LinkParams {
        delay_ms: opts.delay_ms,
        jitter_ms: opts.jitter_ms,
        jitter_distribution: JitterDistribution::Normal,
        jitter_hold_ms: opts.jitter_hold_ms,
        reorder: opts.reorder,
        loss: opts.loss,
        ..Default::default()
    };
    let seed = opts.seed.unwrap_or_else(|| {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as u64)
    });
    let cfg = LabConfig::new(
        opts.prefix.clone(),
        opts.backend,
        seed,
        LinkParams::default(),
        LinkParams::default(),
    );
    let lab = Arc::new(Lab::create(&cfg, None)?);
    *lab_slot.lock().expect("lab slot") = Some(lab.clone());
    let (edge, cloud) = (lab.edge_ns.clone(), lab.cloud_ns.clone());

    progress("baseline: 100 pings with no impairment");
    let base = ping(&edge, CLOUD_ADDR, 100, 0.01)?;
    ensure_running(stop)?;
    lab.set(Dir::Uplink, impaired.clone())?;
    std::thread::sleep(Duration::from_millis(100));

    progress(&format!(
        "ICMP: {} pings every 30 ms across {} ms +- {} ms (normal), {} loss",
        opts.icmp_count, opts.delay_ms, opts.jitter_ms, opts.loss
    ));
    let icmp = ping(&edge, CLOUD_ADDR, opts.icmp_count, 0.03)?;
    ensure_running(stop)?;

    progress(&format!("TCP: request/response for {} s", opts.tcp_seconds));
    // Requests closer together than the jitter hold would share one draw.
    let spacing = Duration::from_secs_f64((opts.jitter_hold_ms + 1.0) / 1e3);
    let tcp = tcp_pingpong(&edge, &cloud, CLOUD_ADDR, opts.tcp_seconds, spacing)?;
    ensure_running(stop)?;

    progress(&format!(
        "loss: {} pings from {LOSS_PINGERS} pingers, each every 10 ms",
        opts.loss_count
    ));
    let flood = ping_parallel(&edge, opts.loss_count)?;
    ensure_running(stop)?;
    let realtime = lab.realtime();
    lab.teardown();

    let lost = |p: &PingResult| p.sent.saturating_sub(p.received);
    let sent = icmp.sent + flood.sent;
    let lost_total = lost(&icmp) + lost(&flood);
    let pooled: Vec<f64> = icmp.rtts_ms.iter().chain(&tcp.rtts_ms).copied().collect();
    let all = summarize(&pooled);
    if icmp.rtts_ms.len() < 10 || tcp.rtts_ms.len() < 10 {
        bail!(
            "too few samples: {} ICMP, {} TCP",
            icmp.rtts_ms.len(),
            tcp.rtts_ms.len()
        );
    }
    let baseline_rtt_ms = summarize(&base.rtts_ms).mean_ms;
    let mut report = CheckReport {
        configured_delay_ms: opts.delay_ms,
        configured_jitter_ms: opts.jitter_ms,
        // What the emulator added: the lab's own round trip (relay and
        // stacks, longer on a busy host) is not the link's delay.
        measured_delay_ms: ((all.mean_ms - baseline_rtt_ms) * 1000.0).round() / 1000.0,
        measured_jitter_ms: all.sd_ms,
        configured_loss: opts.loss,
        measured_loss: (lost_total as f64 / sent.max(1) as f64 * 1e5).round() / 1e5,
        jitter_distribution: JitterDistribution::Normal,
        jitter_hold_ms: opts.jitter_hold_ms,
        reorder: opts.reorder,
        backend: opts.backend,
        seed,
        relay_realtime: realtime,
        baseline_rtt_ms,
        icmp: summarize(&icmp.rtts_ms),
        tcp: summarize(&tcp.rtts_ms),
        tcp_exchanges_retransmitted: tcp.retransmitted,
        loss_packets_sent: sent,
        loss_packets_lost: lost_total,
        within_tolerance: false,
        duration_s: (started.elapsed().as_secs_f64() * 10.0).round() / 10.0,
    };
    report.within_tolerance = report.tolerance_failures().is_empty();
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn summary_statistics() {
        let s = summarize(&[1.0, 2.0, 3.0, 4.0]);
        assert_eq!(s.samples, 4);
        assert_eq!(s.mean_ms, 2.5);
        assert_eq!(s.sd_ms, 1.291);
        assert_eq!((s.min_ms, s.max_ms), (1.0, 4.0));
        // IQR 3.25 - 1.75 = 1.5, over 1.349.
        assert_eq!(s.robust_sd_ms, 1.112);
        assert_eq!(summarize(&[]).robust_sd_ms, 0.0);
    }

    #[test]
    fn one_stall_moves_the_sd_but_not_the_robust_sd() {
        // 20 ms +- 5 ms (quartiles at 0.674 sd, as a normal's), then one
        // exchange stalled to 98 ms.
        let mut v: Vec<f64> = (1..500)
            .map(|i| {
                let q = (f64::from(i) / 500.0 - 0.5) * 2.0;
                // A smooth stand-in for the normal quantile on (-1, 1).
                20.0 + 5.055 * q / (1.0 - q.abs() * 0.5)
            })
            .collect();
        let clean = summarize(&v);
        v.push(98.0);
        let stalled = summarize(&v);
        assert!(stalled.sd_ms > clean.sd_ms * 1.2, "{clean:?} {stalled:?}");
        assert!(
            (stalled.robust_sd_ms - clean.robust_sd_ms).abs() < 0.02 * clean.robust_sd_ms,
            "{clean:?} {stalled:?}"
        );
        assert!((clean.robust_sd_ms - 5.0).abs() < 0.1, "{clean:?}");
    }
}
