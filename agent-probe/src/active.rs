//! Active probe: times TCP handshakes to the cloud endpoint. It is the
//! fallback source for RTT and jitter, and the check that the service
//! itself (not just its host) answers.

use agent_core::{NetworkStatus, ProbeEvent, ProbeEventKind, SampleSource};
use std::net::SocketAddr;
use std::time::{Duration, Instant};
use tokio::net::TcpStream;
use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;

pub struct ActiveProbe {
    pub target: SocketAddr,
    pub interval: Duration,
    pub timeout: Duration,
    /// Passive samples younger than this make a probe unnecessary.
    pub passive_fresh_for: Duration,
}

/// One TCP connect; `None` when it failed or timed out.
pub async fn connect_rtt(target: SocketAddr, timeout: Duration) -> Option<Duration> {
    let started = Instant::now();
    match tokio::time::timeout(timeout, TcpStream::connect(target)).await {
        Ok(Ok(stream)) => {
            let rtt = started.elapsed();
            drop(stream);
            Some(rtt)
        }
        _ => None,
    }
}

/// How long one probe may take before it counts as lost: a few smoothed
/// RTTs once the path is known (so a dead link is noticed within about a
/// second, three lost probes in a row), never more than `max`.
pub fn probe_timeout(srtt_ms: f64, samples: usize, max: Duration) -> Duration {
    if samples < 3 || !srtt_ms.is_finite() || srtt_ms < 0.0 {
        return max;
    }
    Duration::from_secs_f64((4.0 * srtt_ms + 50.0) / 1e3)
        .max(Duration::from_millis(150))
        .min(max)
}

/// Most probes in flight at once: a dead link holds each one for its
/// timeout, and a new one starts every interval.
const MAX_IN_FLIGHT: usize = 16;

impl ActiveProbe {
    /// Probes until `events` is closed or `stop` is cancelled. While a passive source is fresh the
    /// path's figures come from it, and the probe only checks, ten times less
    /// often, that the service itself still accepts connections; after a
    /// failure it probes at the full rate again. A probe starts every
    /// interval whether or not the previous one has ended: waiting for a
    /// probe sent into a dead link to time out put off noticing that the
    /// link had come back by up to that timeout. A lost probe is reported
    /// at the moment it was sent, so that the estimator can tell a probe
    /// sent into an outage that has since ended from a loss of the link as
    /// it is now (`LinkEstimator`).
    pub async fn run(
        self,
        events: mpsc::Sender<ProbeEvent>,
        status: watch::Receiver<NetworkStatus>,
        stop: CancellationToken,
    ) {
        stop.run_until_cancelled(self.probe(events, status)).await;
    }

    async fn probe(
        &self,
        events: mpsc::Sender<ProbeEvent>,
        status: watch::Receiver<NetworkStatus>,
    ) {
        let mut tick = tokio::time::interval(self.interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        // Dropped with this future (the caller's stop): the probes in
        // flight are aborted with it.
        let mut in_flight = tokio::task::JoinSet::new();
        let mut last_ok: Option<Instant> = None;
        loop {
            let (sent, rtt) = tokio::select! {
                _ = tick.tick() => {
                    let passive_fresh = {
                        let s = status.borrow();
                        s.source.is_some_and(|src| src.is_passive())
                            && s.age.is_some_and(|a| a < self.passive_fresh_for)
                    };
                    if passive_fresh && last_ok.is_some_and(|t| t.elapsed() < self.interval * 10) {
                        continue;
                    }
                    if in_flight.len() >= MAX_IN_FLIGHT {
                        continue;
                    }
                    let timeout = {
                        let s = status.borrow();
                        probe_timeout(s.rtt.srtt_ms, s.rtt.samples, self.timeout)
                    };
                    let target = self.target;
                    in_flight.spawn(async move { (Instant::now(), connect_rtt(target, timeout).await) });
                    continue;
                }
                Some(done) = in_flight.join_next() => match done {
                    Ok(result) => result,
                    // Aborted or panicked: there is nothing to report.
                    Err(_) => continue,
                },
            };
            let (at, kind) = match rtt {
                Some(rtt) => {
                    let now = Instant::now();
                    last_ok = Some(now);
                    (now, ProbeEventKind::Rtt(rtt))
                }
                None => {
                    last_ok = None;
                    (sent, ProbeEventKind::ProbeLost)
                }
            };
            let ev = ProbeEvent {
                dest: self.target.ip(),
                source: SampleSource::ActiveTcpConnect,
                at,
                kind,
            };
            if events.send(ev).await.is_err() {
                return;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn probe_timeout_follows_the_rtt_within_bounds() {
        let max = Duration::from_secs(1);
        let ms = Duration::from_millis;
        let cases = [
            // (srtt ms, samples, expected)
            (40.0, 60, ms(210)),
            (1.0, 60, ms(150)),
            (500.0, 60, max),
            (40.0, 2, max),
            (f64::NAN, 60, max),
            (-1.0, 60, max),
        ];
        for (srtt, n, want) in cases {
            assert_eq!(probe_timeout(srtt, n, max), want, "{srtt} {n}");
        }
    }

    /// A listener whose accept queue is full drops new handshakes, as a
    /// dead link does; draining it is the link coming back. The probe must
    /// see that within a few intervals, not after the timeout of the probe
    /// that was in flight when it happened.
    #[tokio::test]
    async fn a_link_that_comes_back_is_seen_within_a_few_intervals() {
        let socket = tokio::net::TcpSocket::new_v4().unwrap();
        socket.bind("127.0.0.1:0".parse().unwrap()).unwrap();
        let listener = socket.listen(0).unwrap();
        let target = listener.local_addr().unwrap();
        // Fill the accept queue (backlog 0 holds one connection).
        let _held = TcpStream::connect(target).await.unwrap();
        let blocked = connect_rtt(target, Duration::from_millis(200)).await;
        assert!(blocked.is_none(), "the full queue should drop handshakes");

        let (tx, mut rx) = mpsc::channel(64);
        let (_status_tx, status) = watch::channel(NetworkStatus::default());
        let stop = CancellationToken::new();
        let probe = ActiveProbe {
            target,
            interval: Duration::from_millis(20),
            timeout: Duration::from_millis(800),
            passive_fresh_for: Duration::from_millis(100),
        };
        let started = Instant::now();
        let task = tokio::spawn(probe.run(tx, status, stop.clone()));
        tokio::time::sleep(Duration::from_millis(300)).await;
        let back = Instant::now();
        let accepting = tokio::spawn(async move {
            let mut kept = Vec::new();
            while let Ok((s, _)) = listener.accept().await {
                kept.push(s);
            }
        });
        let mut first_ok = None;
        let (mut lost_sent_before_back, mut lost_sent_after_back) = (0, 0);
        while started.elapsed() < Duration::from_millis(1500) {
            let Ok(Some(ev)) = tokio::time::timeout(Duration::from_millis(100), rx.recv()).await
            else {
                continue;
            };
            match ev.kind {
                ProbeEventKind::Rtt(rtt) => {
                    first_ok.get_or_insert(ev.at);
                    assert!(
                        rtt < Duration::from_millis(200),
                        "a stale round trip: {rtt:?}"
                    );
                }
                // Lost probes carry the moment they were sent.
                ProbeEventKind::ProbeLost if ev.at > back => lost_sent_after_back += 1,
                ProbeEventKind::ProbeLost => lost_sent_before_back += 1,
                _ => {}
            }
        }
        stop.cancel();
        task.await.unwrap();
        accepting.abort();
        let first_ok = first_ok.expect("no probe succeeded once the queue drained");
        let seen = first_ok.duration_since(back);
        // One probe at a time would have waited for the 800 ms timeout of
        // the probe started at 0 ms.
        assert!(
            seen < Duration::from_millis(250),
            "seen {seen:?} after it came back"
        );
        assert_eq!(
            lost_sent_after_back, 0,
            "probes sent after it came back were lost"
        );
        // The probes sent into it time out after it came back, stamped
        // with when they were sent.
        assert!(
            lost_sent_before_back > 0,
            "no probe sent into the dead link was lost"
        );
    }
}
