//! Per-destination link estimator: folds probe events into a
//! [`NetworkStatus`] snapshot. Pure: time is always a parameter.

use super::rtt_window::{RttWindow, WindowStats};
use crate::sample::{ProbeEvent, ProbeEventKind, SampleSource};
use std::collections::{BTreeMap, VecDeque};
use std::time::{Duration, Instant};

#[derive(Debug, Clone)]
pub struct LinkConfig {
    /// RTT samples kept per source (the jitter window).
    pub window: usize,
    /// ...and for at most this long behind the newest: a source fed only a
    /// trickle otherwise kept an old spell's samples for a minute.
    pub window_max_age: Duration,
    /// A source whose newest sample is older than this is stale.
    pub stale_after: Duration,
    /// Active probe attempts kept for the loss rate.
    pub loss_window: usize,
    /// Consecutive failed probes after which the endpoint counts as unreachable.
    pub unreachable_after: u32,
    /// Throughput assumed until a transfer has been measured (bits/s).
    pub default_bandwidth_bps: f64,
    /// Transfers smaller than this say more about scheduling than about
    /// the link's capacity and are not used for the bandwidth estimate.
    pub min_transfer_bytes: u64,
    /// Recent transfers the bandwidth is measured over (their bytes over
    /// their time: a small transfer weighs by its bytes, so scheduling
    /// noise on it barely moves the estimate).
    pub transfer_window: usize,
}

impl Default for LinkConfig {
    fn default() -> Self {
        Self {
            window: 60,
            window_max_age: Duration::from_secs(5),
            stale_after: Duration::from_secs(3),
            loss_window: 100,
            unreachable_after: 3,
            default_bandwidth_bps: 100e6,
            min_transfer_bytes: 1024,
            transfer_window: 8,
        }
    }
}

/// What the decision engine knows about the path to one endpoint.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct NetworkStatus {
    pub reachable: bool,
    /// The source whose figures are reported (freshest passive one preferred).
    pub source: Option<SampleSource>,
    pub rtt: WindowStats,
    /// The same window's samples, sorted (ms): the RTT distribution.
    pub rtt_sorted_ms: Vec<f64>,
    /// Shifts of the RTT level detected in that window so far.
    pub rtt_shifts: u64,
    /// The RTT's short-term trend in that window (Holt), ms per second.
    pub rtt_trend_ms_per_s: f64,
    /// Loss rate: failed probes over attempts, or lost over sent packets
    /// where they are counted (the kernel's TCP retransmits, the QUIC
    /// offload connection's losses), over about the last
    /// [`LOSS_SEGMENTS`] packets.
    pub loss_rate: f64,
    pub bandwidth_bps: f64,
    /// True while `bandwidth_bps` is the configured default, not a measurement.
    pub bandwidth_assumed: bool,
    /// Age of the newest RTT sample used.
    pub age: Option<Duration>,
    /// When the newest RTT sample of any source was taken: the last time
    /// anything was heard from the host (see `Silence`).
    pub heard_at: Option<Instant>,
}

/// How long an unfinished transfer counts in the bandwidth estimate. It
/// tells that the link is slow, not how slow, and once the estimate keeps
/// offloads away nothing finishes to replace it: it expires, and an
/// offload then measures the link again.
pub const UNFINISHED_MAX_AGE: Duration = Duration::from_secs(5);

/// A transfer the bandwidth is measured over.
#[derive(Debug, Clone, Copy)]
struct Transfer {
    bytes: u64,
    /// Time on the wire (a lower bound for an unfinished one).
    secs: f64,
    /// When an unfinished transfer was given up on; `None`: finished.
    unfinished_at: Option<Instant>,
}

/// How many packets the loss rate remembers at least: both counts halve
/// beyond it, but at most once per [`LOSS_HALVING_INTERVAL`].
pub const LOSS_SEGMENTS: u64 = 2000;

/// The least time between two halvings of the loss counts, so that a fast
/// flow's rate covers about the last half second (as the RTT window does)
/// rather than its last round trip. One round trip of a bulk upload can
/// be the whole 2000 packets, and the last one's packets are mostly
/// retransmissions of the losses before it: counted over that alone, 2 %
/// loss read as 2.6-4.1 % at the end of an upload.
pub const LOSS_HALVING_INTERVAL: Duration = Duration::from_millis(250);

/// Nothing heard from the host for this long while packets went out is an
/// outage, not loss: when the host is heard again, what was counted
/// meanwhile (retransmissions into a dead link, probes that could not
/// answer) leaves the loss rate. Kept, it priced every offload after the
/// link came back as if a packet in two were lost.
pub const OUTAGE_GAP: Duration = Duration::from_secs(1);

#[derive(Debug, Clone)]
pub struct LinkEstimator {
    cfg: LinkConfig,
    windows: BTreeMap<SampleSource, RttWindow>,
    probes: VecDeque<bool>,
    consecutive_failures: u32,
    retransmits: u64,
    segments: u64,
    /// When the loss counts last halved.
    loss_halved_at: Option<Instant>,
    /// Recent transfers, finished or not.
    transfers: VecDeque<Transfer>,
    /// The newest RTT sample's time, of any source.
    heard_at: Option<Instant>,
    /// Counted since the newest RTT sample: (retransmits, segments, failed
    /// probes); forgotten after an outage (see [`OUTAGE_GAP`]).
    unheard: (u64, u64, usize),
    /// When the newest offload's packet counts came, and whether they
    /// were heard counts: within [`OUTAGE_GAP`] of the counts before them.
    offload_counts_at: Option<Instant>,
    offload_counts_heard: bool,
    /// The newest successful probe's time.
    probe_ok_at: Option<Instant>,
    /// The last outage that has ended: from the last sample before it to
    /// the first after it. A probe sent into it whose timeout comes only
    /// later is the outage's, not a loss.
    last_outage: Option<(Instant, Instant)>,
}

impl LinkEstimator {
    pub fn new(cfg: LinkConfig) -> Self {
        Self {
            cfg,
            windows: BTreeMap::new(),
            probes: VecDeque::new(),
            consecutive_failures: 0,
            retransmits: 0,
            segments: 0,
            loss_halved_at: None,
            transfers: VecDeque::new(),
            heard_at: None,
            unheard: (0, 0, 0),
            offload_counts_at: None,
            offload_counts_heard: false,
            probe_ok_at: None,
            last_outage: None,
        }
    }

    pub fn on_event(&mut self, ev: &ProbeEvent) {
        match ev.kind {
            ProbeEventKind::Rtt(rtt) => {
                if let Some(h) = self
                    .heard_at
                    .filter(|&h| ev.at.saturating_duration_since(h) > OUTAGE_GAP)
                {
                    self.forget_unheard();
                    self.last_outage = Some((h, ev.at));
                }
                self.unheard = (0, 0, 0);
                self.heard_at = Some(self.heard_at.map_or(ev.at, |h| h.max(ev.at)));
                let (window, max_age) = (self.cfg.window, self.cfg.window_max_age);
                self.windows
                    .entry(ev.source)
                    .or_insert_with(|| RttWindow::new(window).with_max_age(max_age))
                    .push(ev.at, rtt);
                // Passive samples describe the path to the host, not whether
                // our service on it answers: only a probe or an offload that
                // reached the service clears a run of failures.
                if ev.source == SampleSource::ActiveTcpConnect {
                    self.probe_ok_at = Some(self.probe_ok_at.map_or(ev.at, |t| t.max(ev.at)));
                    self.remember_probe(true);
                    self.consecutive_failures = 0;
                }
            }
            ProbeEventKind::ProbeLost => {
                // `at` is when the lost probe was sent.
                if self
                    .last_outage
                    .is_some_and(|(from, to)| from < ev.at && ev.at < to)
                {
                    return;
                }
                self.remember_probe(false);
                self.unheard.2 += 1;
                // A probe has been answered since this one was sent: a
                // loss, but not a sign that the service does not answer now.
                if self.probe_ok_at.is_none_or(|ok| ok < ev.at) {
                    self.consecutive_failures += 1;
                }
            }
            ProbeEventKind::Retransmits(n) => {
                self.age_loss_counts(ev.at);
                self.retransmits += u64::from(n);
                // An offload's count comes after its packets sent (below).
                if !(ev.source == SampleSource::OffloadTransfer && self.offload_counts_heard) {
                    self.unheard.0 += u64::from(n);
                }
            }
            ProbeEventKind::SegmentsSent(n) => {
                self.age_loss_counts(ev.at);
                self.segments += u64::from(n);
                if ev.source == SampleSource::OffloadTransfer {
                    // An offload's counts come with its answer, and the
                    // ones before them with the answer before: both ends
                    // of what they count were heard from the host, so it
                    // is the link's loss, not an outage's, unless the
                    // answers were far apart. The passive sources may
                    // hear the host only once a second, and counted
                    // from those alone, a lossy link's counts were
                    // mostly forgotten as an outage's.
                    self.offload_counts_heard = self
                        .offload_counts_at
                        .is_some_and(|t| ev.at.saturating_duration_since(t) <= OUTAGE_GAP);
                    self.offload_counts_at = Some(ev.at);
                    if self.offload_counts_heard {
                        return;
                    }
                }
                self.unheard.1 += u64::from(n);
            }
            ProbeEventKind::Transfer { bytes, elapsed } => {
                self.consecutive_failures = 0;
                if bytes < self.cfg.min_transfer_bytes {
                    return;
                }
                // `elapsed` is the transfer's time on the wire beyond one RTT and
                // the server's own time (and the wait behind the edge's own
                // earlier uploads), as measured by the offload client.
                self.remember_transfer(Transfer {
                    bytes,
                    secs: elapsed.as_secs_f64().max(1e-5),
                    unfinished_at: None,
                });
            }
            ProbeEventKind::TransferUnfinished { bytes, at_least } => {
                let secs = at_least.as_secs_f64();
                if bytes < self.cfg.min_transfer_bytes || secs <= 0.0 {
                    return;
                }
                // A host silent now, or silent for a while during the
                // transfer, is a dead link's: its transfers say nothing
                // of the link's speed once it is back.
                let since = ev.at.checked_sub(at_least).unwrap_or(ev.at);
                let silent_now = self
                    .heard_at
                    .is_none_or(|h| ev.at.saturating_duration_since(h) > OUTAGE_GAP);
                let outage_during = self
                    .last_outage
                    .is_some_and(|(from, to)| from < ev.at && to > since);
                if silent_now || outage_during {
                    return;
                }
                // Only one slower than the estimate says anything: a
                // transfer cut short early is no evidence of a slow link.
                let estimate = self
                    .bandwidth(ev.at)
                    .unwrap_or(self.cfg.default_bandwidth_bps);
                if bytes as f64 * 8.0 / secs < estimate {
                    self.remember_transfer(Transfer {
                        bytes,
                        secs,
                        unfinished_at: Some(ev.at),
                    });
                }
            }
        }
    }

    fn remember_transfer(&mut self, t: Transfer) {
        if self.transfers.len() == self.cfg.transfer_window.max(1) {
            self.transfers.pop_front();
        }
        self.transfers.push_back(t);
    }

    /// The recent transfers' bytes over their time on the wire, counting
    /// unfinished ones for [`UNFINISHED_MAX_AGE`].
    fn bandwidth(&self, now: Instant) -> Option<f64> {
        let (bytes, secs) = self
            .transfers
            .iter()
            .filter(|t| {
                t.unfinished_at
                    .is_none_or(|at| now.saturating_duration_since(at) <= UNFINISHED_MAX_AGE)
            })
            .fold((0u64, 0.0), |(b, s), t| (b + t.bytes, s + t.secs));
        (secs > 0.0).then(|| bytes as f64 * 8.0 / secs)
    }

    /// Both loss counts halve as packets go by, so the rate is the recent
    /// link's and a loss that began shows up; at most once per
    /// [`LOSS_HALVING_INTERVAL`], since halving down to the bound at once
    /// would leave a fast flow's last round trip alone again. Done before
    /// a count is added, so a report's packets and the losses among them,
    /// whichever comes first, are not halved apart.
    fn age_loss_counts(&mut self, at: Instant) {
        let due = self
            .loss_halved_at
            .is_none_or(|t| at.saturating_duration_since(t) >= LOSS_HALVING_INTERVAL);
        if due && self.segments > LOSS_SEGMENTS {
            self.segments /= 2;
            self.retransmits /= 2;
            self.unheard.0 /= 2;
            self.unheard.1 /= 2;
            self.loss_halved_at = Some(at);
        }
    }

    /// The host was silent for longer than [`OUTAGE_GAP`]: what was
    /// counted since it was last heard described the outage, not the link.
    fn forget_unheard(&mut self) {
        let (retransmits, segments, mut failed) = self.unheard;
        self.retransmits = self.retransmits.saturating_sub(retransmits);
        self.segments = self.segments.saturating_sub(segments);
        while failed > 0 {
            // The newest failures are the outage's.
            let Some(i) = self.probes.iter().rposition(|ok| !ok) else {
                break;
            };
            self.probes.remove(i);
            failed -= 1;
        }
    }

    /// One probe's outcome in the loss window.
    fn remember_probe(&mut self, ok: bool) {
        if self.probes.len() == self.cfg.loss_window {
            self.probes.pop_front();
        }
        self.probes.push_back(ok);
    }

    /// The freshest non-stale source, preferring passive ones: they measure
    /// the traffic itself rather than a handshake.
    fn best_window(&self, now: Instant) -> Option<(SampleSource, &RttWindow)> {
        let fresh = |w: &RttWindow| {
            w.last_at()
                .is_some_and(|t| now.saturating_duration_since(t) <= self.cfg.stale_after)
        };
        let mut candidates: Vec<_> = self
            .windows
            .iter()
            .filter(|(_, w)| w.len() >= 2 && fresh(w))
            .collect();
        candidates.sort_by_key(|(s, w)| (!s.is_passive(), std::cmp::Reverse(w.last_at())));
        candidates.first().map(|(s, w)| (**s, *w)).or_else(|| {
            // Nothing fresh: fall back to the newest window of any age.
            self.windows
                .iter()
                .filter(|(_, w)| !w.is_empty())
                .max_by_key(|(_, w)| w.last_at())
                .map(|(s, w)| (*s, w))
        })
    }

    pub fn snapshot(&self, now: Instant) -> NetworkStatus {
        let best = self.best_window(now);
        let loss_rate = if self.segments >= 100 {
            self.retransmits as f64 / self.segments as f64
        } else if self.probes.is_empty() {
            0.0
        } else {
            self.probes.iter().filter(|ok| !**ok).count() as f64 / self.probes.len() as f64
        };
        let age = best
            .and_then(|(_, w)| w.last_at())
            .map(|t| now.saturating_duration_since(t));
        let fresh = age.is_some_and(|a| a <= self.cfg.stale_after);
        NetworkStatus {
            reachable: fresh && self.consecutive_failures < self.cfg.unreachable_after,
            source: best.map(|(s, _)| s),
            rtt: best.and_then(|(_, w)| w.stats()).unwrap_or_default(),
            rtt_sorted_ms: best.map(|(_, w)| w.sorted_ms()).unwrap_or_default(),
            rtt_shifts: best.map_or(0, |(_, w)| w.shifts().0),
            rtt_trend_ms_per_s: best.map_or(0.0, |(_, w)| w.trend_ms_per_s()),
            loss_rate,
            bandwidth_bps: self
                .bandwidth(now)
                .unwrap_or(self.cfg.default_bandwidth_bps),
            bandwidth_assumed: self.bandwidth(now).is_none(),
            age,
            heard_at: self.heard_at,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::{IpAddr, Ipv4Addr};

    const DEST: IpAddr = IpAddr::V4(Ipv4Addr::LOCALHOST);

    fn ev(at: Instant, source: SampleSource, kind: ProbeEventKind) -> ProbeEvent {
        ProbeEvent {
            dest: DEST,
            source,
            at,
            kind,
        }
    }

    fn rtt(at: Instant, source: SampleSource, ms: u64) -> ProbeEvent {
        ev(at, source, ProbeEventKind::Rtt(Duration::from_millis(ms)))
    }

    #[test]
    fn no_samples_means_unreachable() {
        let est = LinkEstimator::new(LinkConfig::default());
        let s = est.snapshot(Instant::now());
        assert!(!s.reachable);
        assert_eq!(s.source, None);
        assert!(s.bandwidth_assumed);
    }

    #[test]
    fn passive_source_preferred_while_fresh_then_active_fills_in() {
        let t0 = Instant::now();
        let mut est = LinkEstimator::new(LinkConfig::default());
        for i in 0..10 {
            est.on_event(&rtt(
                t0 + Duration::from_millis(i * 100),
                SampleSource::ActiveTcpConnect,
                30,
            ));
            est.on_event(&rtt(
                t0 + Duration::from_millis(i * 100),
                SampleSource::SockOps,
                20,
            ));
        }
        let s = est.snapshot(t0 + Duration::from_secs(1));
        assert_eq!(s.source, Some(SampleSource::SockOps));
        assert!((s.rtt.mean_ms - 20.0).abs() < 1e-9);
        assert!(s.reachable);

        // The passive source goes quiet; the active probe keeps going.
        for i in 10..60 {
            est.on_event(&rtt(
                t0 + Duration::from_millis(i * 100),
                SampleSource::ActiveTcpConnect,
                30,
            ));
        }
        let s = est.snapshot(t0 + Duration::from_millis(6000));
        assert_eq!(s.source, Some(SampleSource::ActiveTcpConnect));
        assert!((s.rtt.mean_ms - 30.0).abs() < 1e-9);
    }

    #[test]
    fn failed_probes_make_the_endpoint_unreachable_and_count_as_loss() {
        let t0 = Instant::now();
        let mut est = LinkEstimator::new(LinkConfig::default());
        for i in 0..7 {
            est.on_event(&rtt(
                t0 + Duration::from_millis(i),
                SampleSource::ActiveTcpConnect,
                5,
            ));
        }
        for i in 7..10 {
            est.on_event(&ev(
                t0 + Duration::from_millis(i),
                SampleSource::ActiveTcpConnect,
                ProbeEventKind::ProbeLost,
            ));
        }
        let s = est.snapshot(t0 + Duration::from_millis(10));
        assert!(!s.reachable);
        assert!((s.loss_rate - 0.3).abs() < 1e-9);
        est.on_event(&rtt(
            t0 + Duration::from_millis(11),
            SampleSource::ActiveTcpConnect,
            5,
        ));
        assert!(est.snapshot(t0 + Duration::from_millis(12)).reachable);
    }

    #[test]
    fn passive_samples_do_not_hide_a_dead_service() {
        let t0 = Instant::now();
        let mut est = LinkEstimator::new(LinkConfig::default());
        for i in 0..3 {
            est.on_event(&ev(
                t0 + Duration::from_millis(i),
                SampleSource::ActiveTcpConnect,
                ProbeEventKind::ProbeLost,
            ));
        }
        for i in 3..20 {
            est.on_event(&rtt(
                t0 + Duration::from_millis(i),
                SampleSource::SockOps,
                1,
            ));
        }
        let s = est.snapshot(t0 + Duration::from_millis(20));
        assert_eq!(s.source, Some(SampleSource::SockOps));
        assert!(!s.reachable, "the host answers TCP, the service does not");
    }

    /// Probes overlap, so a lost one is reported a timeout after it was
    /// sent, at the moment it was sent, often after later ones answered.
    #[test]
    fn a_lost_probe_counts_by_when_it_was_sent() {
        let t0 = Instant::now();
        let at = |ms: u64| t0 + Duration::from_millis(ms);
        let probe = SampleSource::ActiveTcpConnect;
        let lost = |sent: u64| ev(at(sent), probe, ProbeEventKind::ProbeLost);
        // (events in the order they arrive, reachable, loss rate)
        let cases: [(&str, Vec<ProbeEvent>, bool, f64); 4] = [
            (
                "a probe lost on a working link: a loss, the service answers",
                vec![rtt(at(0), probe, 5), lost(100), rtt(at(205), probe, 5)],
                true,
                1.0 / 3.0,
            ),
            (
                "three lost after the last answer: the service does not answer",
                vec![rtt(at(0), probe, 5), lost(100), lost(200), lost(300)],
                false,
                3.0 / 4.0,
            ),
            (
                "lost before an answer they arrive after: not in a row",
                vec![
                    rtt(at(0), probe, 5),
                    rtt(at(305), probe, 5),
                    lost(100),
                    lost(200),
                    lost(300),
                ],
                true,
                3.0 / 5.0,
            ),
            (
                "sent into an outage that ended before they timed out: neither",
                vec![
                    rtt(at(0), probe, 5),
                    lost(1100),
                    rtt(at(2000), probe, 5),
                    lost(1500),
                    lost(1900),
                ],
                true,
                0.0,
            ),
        ];
        for (what, events, reachable, loss) in cases {
            let mut est = LinkEstimator::new(LinkConfig::default());
            for e in &events {
                est.on_event(e);
            }
            let s = est.snapshot(at(2100));
            assert_eq!(s.reachable, reachable, "{what}");
            assert!((s.loss_rate - loss).abs() < 1e-9, "{what}: {}", s.loss_rate);
        }
    }

    #[test]
    fn stale_samples_are_not_reachable() {
        let t0 = Instant::now();
        let mut est = LinkEstimator::new(LinkConfig::default());
        est.on_event(&rtt(t0, SampleSource::ActiveTcpConnect, 5));
        est.on_event(&rtt(t0, SampleSource::ActiveTcpConnect, 5));
        assert!(est.snapshot(t0 + Duration::from_secs(1)).reachable);
        assert!(!est.snapshot(t0 + Duration::from_secs(10)).reachable);
    }

    #[test]
    fn the_newest_sample_of_any_source_is_when_the_host_was_heard() {
        let t0 = Instant::now();
        let mut est = LinkEstimator::new(LinkConfig::default());
        assert_eq!(est.snapshot(t0).heard_at, None);
        let later = t0 + Duration::from_millis(30);
        est.on_event(&rtt(later, SampleSource::SockOps, 5));
        // An older sample (of another source) arriving late changes nothing.
        est.on_event(&rtt(t0, SampleSource::ActiveTcpConnect, 5));
        assert_eq!(est.snapshot(later).heard_at, Some(later));
    }

    #[test]
    fn kernel_retransmits_define_loss_once_enough_segments_seen() {
        let t0 = Instant::now();
        let mut est = LinkEstimator::new(LinkConfig::default());
        est.on_event(&ev(
            t0,
            SampleSource::SockOps,
            ProbeEventKind::SegmentsSent(1000),
        ));
        est.on_event(&ev(
            t0,
            SampleSource::SockOps,
            ProbeEventKind::Retransmits(20),
        ));
        assert!((est.snapshot(t0).loss_rate - 0.02).abs() < 1e-9);
    }

    /// `sent` packets counted at `at`, `lost` of them lost.
    fn packets(est: &mut LinkEstimator, at: Instant, source: SampleSource, sent: u32, lost: u32) {
        est.on_event(&ev(at, source, ProbeEventKind::SegmentsSent(sent)));
        est.on_event(&ev(at, source, ProbeEventKind::Retransmits(lost)));
    }

    #[test]
    fn loss_fades_as_clean_packets_go_by() {
        let t0 = Instant::now();
        let mut est = LinkEstimator::new(LinkConfig::default());
        // Sparse traffic: each report comes a halving interval after the last.
        let mut n = 0;
        let mut send = |est: &mut LinkEstimator, sent, lost| {
            n += 1;
            let at = t0 + LOSS_HALVING_INTERVAL * n;
            packets(est, at, SampleSource::OffloadTransfer, sent, lost);
        };
        // (packets sent, lost among them, loss rate expected after)
        send(&mut est, 1000, 100);
        assert!((est.snapshot(t0).loss_rate - 0.1).abs() < 1e-9);
        for _ in 0..8 {
            send(&mut est, 1000, 0);
        }
        let faded = est.snapshot(t0).loss_rate;
        assert!(faded < 0.02, "old loss still counts: {faded}");
        // A loss that begins shows at once, not diluted by all history.
        send(&mut est, 500, 50);
        let rate = est.snapshot(t0).loss_rate;
        assert!(rate > 0.03, "new loss diluted: {rate}");
    }

    #[test]
    fn a_fast_flows_loss_rate_covers_more_than_its_last_round_trip() {
        // A bulk upload: one count every 40 ms round trip of 2000 packets,
        // losing 1 % and 3 % in turn (2 % on average), then its last
        // round trip: a few packets, mostly retransmissions.
        let t0 = Instant::now();
        let mut est = LinkEstimator::new(LinkConfig::default());
        let send = |est: &mut LinkEstimator, round: u32, sent, lost| {
            let at = t0 + Duration::from_millis(40) * round;
            packets(est, at, SampleSource::SockOps, sent, lost);
            est.snapshot(at).loss_rate
        };
        for round in 0..100 {
            send(&mut est, round, 2000, if round % 2 == 0 { 20 } else { 60 });
        }
        let rate = send(&mut est, 100, 20, 10);
        assert!((rate - 0.02).abs() <= 0.003, "2 % loss read as {rate}");
        // Loss that rises to 10 % shows within half a second.
        let mut rate = 0.0;
        for round in 101..=113 {
            rate = send(&mut est, round, 2000, 200);
        }
        assert!(rate > 0.05, "10 % loss read as {rate} after 0.5 s");
    }

    #[test]
    fn offload_counts_between_close_answers_are_the_links_loss() {
        let t0 = Instant::now();
        let at = |ms: u64| t0 + Duration::from_millis(ms);
        let answer = |est: &mut LinkEstimator, ms: u64, sent: u32, lost: u32| {
            let src = SampleSource::OffloadTransfer;
            est.on_event(&ev(at(ms), src, ProbeEventKind::SegmentsSent(sent)));
            if lost > 0 {
                est.on_event(&ev(at(ms), src, ProbeEventKind::Retransmits(lost)));
            }
        };
        // (answers with their counts (ms, sent, lost) between RTT samples
        // at 0 and 1100 ms, the loss rate after the second sample)
        type Case<'a> = (&'a [(u64, u32, u32)], f64);
        let cases: [Case; 4] = [
            // Answers 100 ms apart on a link that loses 5 %: the first
            // one's counts reach back to an unknown time and go with the
            // silence; the rest are the link's.
            (
                &[(100, 100, 5), (200, 100, 5), (300, 100, 5), (400, 100, 5)],
                0.05,
            ),
            // A lone answer: nothing says when its counts began.
            (&[(100, 100, 5)], 0.0),
            // Answers 1.05 s apart: an outage's retransmissions may be in
            // the second one's counts.
            (&[(20, 100, 0), (1070, 100, 60)], 0.0),
            // Close again after a far one: the close one counts.
            (&[(20, 100, 0), (1070, 100, 60), (1090, 100, 5)], 0.05),
        ];
        for (answers, want) in cases {
            let mut est = LinkEstimator::new(LinkConfig::default());
            est.on_event(&rtt(at(0), SampleSource::SockOps, 40));
            for &(ms, sent, lost) in answers {
                answer(&mut est, ms, sent, lost);
            }
            est.on_event(&rtt(at(1100), SampleSource::SockOps, 40));
            let rate = est.snapshot(at(1100)).loss_rate;
            assert!((rate - want).abs() < 1e-9, "answers {answers:?}: {rate}");
        }
    }

    #[test]
    fn what_an_outage_counted_leaves_the_loss_rate_when_the_host_is_heard_again() {
        let t0 = Instant::now();
        let at = |ms: u64| t0 + Duration::from_millis(ms);
        let count = |est: &mut LinkEstimator, ms, kind| {
            est.on_event(&ev(at(ms), SampleSource::SockOps, kind));
        };
        // (gap in ms before the host is heard again, loss rate after)
        let cases = [
            (500, 0.55 / 1.5),
            (1010, 0.55 / 1.5),
            (1500, 0.05),
            (5000, 0.05),
        ];
        for (gap, want) in cases {
            let mut est = LinkEstimator::new(LinkConfig::default());
            // A working link that loses 5 %.
            est.on_event(&rtt(at(0), SampleSource::SockOps, 40));
            count(&mut est, 10, ProbeEventKind::SegmentsSent(1000));
            count(&mut est, 10, ProbeEventKind::Retransmits(50));
            est.on_event(&rtt(at(15), SampleSource::SockOps, 40));
            // Then nothing answers: every packet sent is a retransmission,
            // and the active probes time out.
            count(&mut est, 20, ProbeEventKind::SegmentsSent(500));
            count(&mut est, 20, ProbeEventKind::Retransmits(500));
            est.on_event(&ev(
                at(30),
                SampleSource::ActiveTcpConnect,
                ProbeEventKind::ProbeLost,
            ));
            assert!((est.snapshot(at(30)).loss_rate - 0.55 / 1.5).abs() < 1e-9);
            est.on_event(&rtt(at(gap), SampleSource::SockOps, 40));
            let rate = est.snapshot(at(gap)).loss_rate;
            assert!((rate - want).abs() < 1e-9, "gap {gap} ms: {rate}");
            // The probe that failed in a long silence is forgotten too.
            let mut est = LinkEstimator::new(LinkConfig::default());
            est.on_event(&rtt(at(0), SampleSource::ActiveTcpConnect, 40));
            est.on_event(&ev(
                at(30),
                SampleSource::ActiveTcpConnect,
                ProbeEventKind::ProbeLost,
            ));
            est.on_event(&rtt(at(gap), SampleSource::ActiveTcpConnect, 40));
            let probe_rate = est.snapshot(at(gap)).loss_rate;
            let want = if gap > 1000 { 0.0 } else { 1.0 / 3.0 };
            assert!(
                (probe_rate - want).abs() < 1e-9,
                "gap {gap} ms: {probe_rate}"
            );
        }
    }

    #[test]
    fn bandwidth_is_measured_from_transfers() {
        let t0 = Instant::now();
        let mut est = LinkEstimator::new(LinkConfig::default());
        est.on_event(&ev(
            t0,
            SampleSource::OffloadTransfer,
            ProbeEventKind::Transfer {
                bytes: 1_000_000,
                elapsed: Duration::from_millis(80),
            },
        ));
        let s = est.snapshot(t0);
        assert!(!s.bandwidth_assumed);
        assert!((s.bandwidth_bps - 100e6).abs() < 1.0);
        // A tiny transfer is not a measurement; a small one slowed by
        // scheduling weighs by its bytes.
        est.on_event(&ev(
            t0,
            SampleSource::OffloadTransfer,
            ProbeEventKind::Transfer {
                bytes: 100,
                elapsed: Duration::from_millis(5),
            },
        ));
        assert!((est.snapshot(t0).bandwidth_bps - 100e6).abs() < 1.0);
        est.on_event(&ev(
            t0,
            SampleSource::OffloadTransfer,
            ProbeEventKind::Transfer {
                bytes: 2_000,
                elapsed: Duration::from_millis(5),
            },
        ));
        let b = est.snapshot(t0).bandwidth_bps;
        assert!(b > 94e6 && b < 100e6, "{b}");
    }

    #[test]
    fn unfinished_transfers_slower_than_the_estimate_lower_it_for_a_while() {
        let t0 = Instant::now();
        let at = |ms: u64| t0 + Duration::from_millis(ms);
        let transfer = |ms: u64| ProbeEventKind::Transfer {
            bytes: 100_000,
            elapsed: Duration::from_millis(ms),
        };
        let unfinished = |ms: u64| ProbeEventKind::TransferUnfinished {
            bytes: 100_000,
            at_least: Duration::from_millis(ms),
        };
        let mut est = LinkEstimator::new(LinkConfig::default());
        // Eight transfers at 100 Mbit/s (8 ms for 100 kB).
        for i in 0..8 {
            est.on_event(&ev(at(i), SampleSource::OffloadTransfer, transfer(8)));
        }
        let bw = |est: &LinkEstimator, ms| est.snapshot(at(ms)).bandwidth_bps;
        // The host is heard from throughout: a slow link, not a dead one.
        let heard = |est: &mut LinkEstimator, ms| {
            est.on_event(&rtt(at(ms), SampleSource::SockOps, 30));
        };
        assert!((bw(&est, 100) - 100e6).abs() < 1.0);
        // (at ms, on the wire for at least ms, the estimate after it)
        let cases: [(u64, u64, f64); 2] = [
            // Given up on after 1 ms: faster than the estimate, no news.
            (500, 1, 100e6),
            // Still on the wire after 400 ms: seven finished transfers
            // and this one, 800 kB over 456 ms.
            (1_000, 400, 800_000.0 * 8.0 / 0.456),
        ];
        for (t, secs, want) in cases {
            heard(&mut est, t);
            est.on_event(&ev(at(t), SampleSource::OffloadTransfer, unfinished(secs)));
            let got = bw(&est, t);
            assert!((got - want).abs() < 1.0, "{secs} ms: {got}");
        }
        // It counts for UNFINISHED_MAX_AGE, then the finished ones alone.
        assert!(bw(&est, 5_900) < 20e6);
        assert!((bw(&est, 6_100) - 100e6).abs() < 1.0);
        // With nothing finished, an unfinished transfer is a measurement
        // while it counts; then the default is assumed again.
        let mut est = LinkEstimator::new(LinkConfig::default());
        heard(&mut est, 0);
        est.on_event(&ev(at(0), SampleSource::OffloadTransfer, unfinished(400)));
        let s = est.snapshot(at(10));
        assert!(!s.bandwidth_assumed);
        assert!((s.bandwidth_bps - 2e6).abs() < 1.0);
        let s = est.snapshot(at(5_100));
        assert!(s.bandwidth_assumed);
        assert!((s.bandwidth_bps - 100e6).abs() < 1.0);
        // A transfer that a dead link held up says nothing of its speed:
        // the host silent now, or silent for over OUTAGE_GAP during it.
        let fresh = || {
            let mut est = LinkEstimator::new(LinkConfig::default());
            for i in 0..8 {
                est.on_event(&ev(at(i), SampleSource::OffloadTransfer, transfer(8)));
            }
            est
        };
        // (heard at ms, the transfer given up on at ms after at least ms,
        // whether it counts)
        let cases: [(&[u64], u64, u64, bool); 4] = [
            (&[0, 500, 900], 1_000, 400, true),
            (&[0, 500], 2_000, 400, false),
            (&[0, 500, 2_000], 2_100, 1_900, false),
            (&[0, 500, 2_000, 2_500, 3_000], 3_500, 900, true),
        ];
        for (heard_at, t, secs, counts) in cases {
            let mut est = fresh();
            for &h in heard_at {
                heard(&mut est, h);
            }
            est.on_event(&ev(at(t), SampleSource::OffloadTransfer, unfinished(secs)));
            assert_eq!(
                bw(&est, t) < 50e6,
                counts,
                "heard at {heard_at:?}, given up at {t} after {secs} ms"
            );
        }
        // A tiny one is no measurement.
        let mut est = LinkEstimator::new(LinkConfig::default());
        heard(&mut est, 0);
        est.on_event(&ev(
            at(0),
            SampleSource::OffloadTransfer,
            ProbeEventKind::TransferUnfinished {
                bytes: 100,
                at_least: Duration::from_secs(1),
            },
        ));
        assert!(est.snapshot(at(10)).bandwidth_assumed);
    }

    #[test]
    fn a_narrow_link_is_measured_from_small_transfers() {
        // 14 kB frames over 3 Mbit/s: about 37 ms each on the wire.
        let t0 = Instant::now();
        let mut est = LinkEstimator::new(LinkConfig::default());
        for _ in 0..20 {
            est.on_event(&ev(
                t0,
                SampleSource::OffloadTransfer,
                ProbeEventKind::Transfer {
                    bytes: 14_000,
                    elapsed: Duration::from_micros(37_333),
                },
            ));
        }
        let b = est.snapshot(t0).bandwidth_bps;
        assert!((b - 3e6).abs() < 1e4, "{b}");
    }
}
