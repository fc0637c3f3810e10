//! How busy a resource has been lately (the edge's workers, an uplink):
//! the share of a recent window its servers spent busy. The decision
//! prices the work a path adds to a busy resource, because that work also
//! delays every task that arrives behind it, which each task's own
//! latency prediction does not see.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

/// Busy intervals of `servers` identical servers over a sliding window.
#[derive(Debug, Clone)]
pub struct LoadMeter {
    window: Duration,
    servers: f64,
    /// Busy intervals (start, end), in the order they were added.
    busy: VecDeque<(Instant, Instant)>,
}

impl LoadMeter {
    /// A meter over the last `window` for `servers` servers (at least 1).
    pub fn new(window: Duration, servers: usize) -> Self {
        Self {
            window: window.max(Duration::from_millis(1)),
            servers: servers.max(1) as f64,
            busy: VecDeque::new(),
        }
    }

    /// One server was busy from `start` to `end` (an interval that ends
    /// in the future counts up to each reading's `now`).
    pub fn add(&mut self, start: Instant, end: Instant) {
        if end <= start {
            return;
        }
        // Intervals that ended before any window that can still be read
        // (readings move forward with the latest interval) go.
        let horizon = end.checked_sub(self.window * 2);
        while let (Some(&(_, e)), Some(h)) = (self.busy.front(), horizon) {
            if e >= h {
                break;
            }
            self.busy.pop_front();
        }
        self.busy.push_back((start, end));
    }

    /// The share of `(now - window, now]` the servers were busy, in 0..=1.
    pub fn load(&self, now: Instant) -> f64 {
        let from = now.checked_sub(self.window).unwrap_or(now);
        let busy: Duration = self
            .busy
            .iter()
            .map(|&(s, e)| e.min(now).saturating_duration_since(s.max(from)))
            .sum();
        let span = now.saturating_duration_since(from);
        if span.is_zero() {
            return 0.0;
        }
        (busy.as_secs_f64() / (span.as_secs_f64() * self.servers)).clamp(0.0, 1.0)
    }
}

/// Loads above this count as this: the price stays finite (at most 9x the
/// work) for a resource that is busy all the time.
pub const LOAD_CAP: f64 = 0.9;

/// The price, in ms of other tasks' waiting, of adding `work_ms` to a
/// resource at `load`: in a queue at load ρ about ρ/(1 − ρ) later tasks
/// wait behind each unit of work (the M/M/1 queue's length per server).
pub fn congestion_price_ms(work_ms: f64, load: f64) -> f64 {
    if !work_ms.is_finite() || work_ms <= 0.0 || !load.is_finite() || load <= 0.0 {
        return 0.0;
    }
    let rho = load.min(LOAD_CAP);
    work_ms * rho / (1.0 - rho)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn load_is_the_busy_share_of_the_window() {
        let t0 = Instant::now();
        let mut m = LoadMeter::new(ms(1000), 1);
        assert_eq!(m.load(t0 + ms(1000)), 0.0);
        // 250 ms busy within the last second.
        m.add(t0 + ms(100), t0 + ms(200));
        m.add(t0 + ms(500), t0 + ms(650));
        assert!((m.load(t0 + ms(1000)) - 0.25).abs() < 1e-9);
        // Later, the first interval has left the window, half of the
        // second is in it.
        assert!((m.load(t0 + ms(1575)) - 0.075).abs() < 1e-9);
        // An interval still running counts up to now.
        m.add(t0 + ms(1500), t0 + ms(3000));
        assert!((m.load(t0 + ms(2000)) - 0.5).abs() < 1e-9);
        assert!((m.load(t0 + ms(2500)) - 1.0).abs() < 1e-9);
        // Empty and reversed intervals change nothing.
        m.add(t0 + ms(10), t0 + ms(10));
        m.add(t0 + ms(20), t0 + ms(10));
        assert!((m.load(t0 + ms(2500)) - 1.0).abs() < 1e-9);
    }

    #[test]
    fn servers_share_the_load_and_old_intervals_go() {
        let t0 = Instant::now();
        let mut m = LoadMeter::new(ms(100), 2);
        m.add(t0, t0 + ms(100));
        assert!((m.load(t0 + ms(100)) - 0.5).abs() < 1e-9);
        m.add(t0, t0 + ms(100));
        assert!((m.load(t0 + ms(100)) - 1.0).abs() < 1e-9);
        for i in 0..1000 {
            m.add(t0 + ms(i * 10), t0 + ms(i * 10 + 5));
        }
        // Only what a reading can still see is kept.
        assert!(m.busy.len() <= 21, "{} intervals kept", m.busy.len());
        assert!((m.load(t0 + ms(10_000)) - 0.25).abs() < 1e-9);
    }

    #[test]
    fn price_grows_with_load_and_stays_finite() {
        let cases = [
            (10.0, 0.0, 0.0),
            (10.0, 0.5, 10.0),
            (10.0, 0.75, 30.0),
            (10.0, 0.9, 90.0),
            (10.0, 1.0, 90.0),
            (0.0, 0.8, 0.0),
            (f64::NAN, 0.5, 0.0),
            (10.0, f64::NAN, 0.0),
        ];
        for (work, load, want) in cases {
            let got = congestion_price_ms(work, load);
            assert!((got - want).abs() < 1e-9, "{work} at {load}: {got}");
        }
    }
}
