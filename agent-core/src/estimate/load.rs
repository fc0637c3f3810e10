//! How busy a resource has been lately (the edge's workers, an uplink):
//! the share of a recent window its servers spent busy. The decision
//! prices the work a path adds to a busy resource, because that work also
//! delays every task that arrives behind it, which each task's own
//! latency prediction does not see.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

/// Busy time of `servers` identical servers over a sliding window, kept in
/// [`SLOTS`] slots of the window's length each (bounded memory, and a
/// reading costs the same at 10 or 10,000 runs a second: it happens under
/// the manager's lock, on every decision).
#[derive(Debug, Clone)]
pub struct LoadMeter {
    window: Duration,
    slot: Duration,
    servers: f64,
    /// The first reading or interval: slot 0 starts here.
    origin: Option<Instant>,
    /// (slot index, busy time in it), by index.
    busy: VecDeque<(u64, Duration)>,
}

/// Slots per window: a reading is exact to a slot's length (50 ms of a
/// 1 s window).
pub const SLOTS: u32 = 20;

impl LoadMeter {
    /// A meter over the last `window` for `servers` servers (at least 1).
    pub fn new(window: Duration, servers: usize) -> Self {
        let window = window.max(Duration::from_millis(SLOTS as u64));
        Self {
            window,
            slot: window / SLOTS,
            servers: servers.max(1) as f64,
            origin: None,
            busy: VecDeque::new(),
        }
    }

    fn index(&self, origin: Instant, t: Instant) -> u64 {
        (t.saturating_duration_since(origin).as_nanos() / self.slot.as_nanos()) as u64
    }

    /// One server was busy from `start` to `end` (time after a reading's
    /// `now` counts from then on; an interval longer than twice the window
    /// counts for twice the window).
    pub fn add(&mut self, start: Instant, end: Instant) {
        if end <= start {
            return;
        }
        let origin = *self.origin.get_or_insert(start);
        let start = start.max(origin);
        let end = end.min(start + self.window * 2);
        let (first, last) = (self.index(origin, start), self.index(origin, end));
        for i in first..=last {
            let from = origin + self.slot * i as u32;
            let overlap = end
                .min(from + self.slot)
                .saturating_duration_since(start.max(from));
            if overlap.is_zero() {
                continue;
            }
            match self.busy.iter_mut().rev().find(|(j, _)| *j <= i) {
                Some((j, d)) if *j == i => *d += overlap,
                _ => {
                    let at = self.busy.partition_point(|(j, _)| *j < i);
                    self.busy.insert(at, (i, overlap));
                }
            }
        }
        // Slots no reading from here on can see go (readings move forward
        // with the intervals).
        let keep_from = first.saturating_sub(2 * SLOTS as u64);
        while self.busy.front().is_some_and(|(j, _)| *j < keep_from) {
            self.busy.pop_front();
        }
    }

    /// The share of the window before `now` the servers were busy, in
    /// 0..=1 (to a slot's length: the window is the last [`SLOTS`] whole
    /// slots and the current one, in proportion).
    pub fn load(&self, now: Instant) -> f64 {
        let Some(origin) = self.origin else {
            return 0.0;
        };
        let current = self.index(origin, now);
        let first = current.saturating_sub(SLOTS as u64);
        // The current slot counts only what can have happened by now (an
        // upload scheduled past now is in it already).
        let elapsed = now.saturating_duration_since(origin + self.slot * current as u32);
        let so_far = elapsed.mul_f64(self.servers);
        let busy: Duration = self
            .busy
            .iter()
            .filter(|(j, _)| (first..=current).contains(j))
            .map(|(j, d)| if *j == current { (*d).min(so_far) } else { *d })
            .sum();
        // The span those slots cover up to now.
        let span = now.saturating_duration_since(origin + self.slot * first as u32);
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

/// The wait before a task starts behind `ahead` of work queued before it,
/// while work of higher priority keeps coming at `higher_load` (its share
/// of the servers, lately): that work goes first too, so the wait is
/// W = ahead + load x W (a non-preemptive priority queue). Without it, a
/// task below a busy priority is predicted to start when the work now
/// queued ahead is done, and waits several times that. Loads above
/// [`LOAD_CAP`] count as that cap (at most 10x the work ahead).
pub fn wait_behind_higher(ahead: Duration, higher_load: f64) -> Duration {
    if !higher_load.is_finite() || higher_load <= 0.0 {
        return ahead;
    }
    ahead.div_f64(1.0 - higher_load.min(LOAD_CAP))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    fn close(a: f64, b: f64) -> bool {
        (a - b).abs() < 1e-9
    }

    #[test]
    fn load_is_the_busy_share_of_the_window() {
        let t0 = Instant::now();
        let mut m = LoadMeter::new(ms(1000), 1);
        assert_eq!(m.load(t0 + ms(1000)), 0.0);
        // 250 ms busy within the first second (slots of 50 ms).
        m.add(t0, t0 + ms(100));
        m.add(t0 + ms(500), t0 + ms(650));
        assert!(
            close(m.load(t0 + ms(1000)), 0.25),
            "{}",
            m.load(t0 + ms(1000))
        );
        // Later, the first interval has left the window, and 100 ms of the
        // second are in it (its first slot has left), over 1000 ms of
        // slots and the 25 ms of the current one.
        assert!(close(m.load(t0 + ms(1575)), 0.1 / 1.025));
        // An interval still running counts up to now.
        m.add(t0 + ms(1500), t0 + ms(3000));
        assert!(close(m.load(t0 + ms(2000)), 0.5));
        assert!(close(m.load(t0 + ms(2500)), 1.0));
        // Empty and reversed intervals change nothing.
        m.add(t0 + ms(2010), t0 + ms(2010));
        m.add(t0 + ms(2020), t0 + ms(2010));
        assert!(close(m.load(t0 + ms(2500)), 1.0));
    }

    #[test]
    fn servers_share_the_load_and_memory_stays_bounded() {
        let t0 = Instant::now();
        let mut m = LoadMeter::new(ms(100), 2);
        m.add(t0, t0 + ms(100));
        assert!(close(m.load(t0 + ms(100)), 0.5));
        m.add(t0, t0 + ms(100));
        assert!(close(m.load(t0 + ms(100)), 1.0));
        // A run every 10 ms for 5 ms, for 10 s: only what a reading can
        // still see is kept.
        for i in 0..1000 {
            m.add(t0 + ms(i * 10), t0 + ms(i * 10 + 5));
        }
        assert!(
            m.busy.len() <= 3 * SLOTS as usize,
            "{} slots kept",
            m.busy.len()
        );
        assert!(close(m.load(t0 + ms(10_000)), 0.25));
        // An interval far longer than the window counts for two windows.
        let mut m = LoadMeter::new(ms(100), 1);
        m.add(t0, t0 + Duration::from_secs(3600));
        assert!(close(m.load(t0 + ms(150)), 1.0));
        assert_eq!(m.load(t0 + ms(400)), 0.0);
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

    #[test]
    fn higher_priority_work_stretches_the_wait() {
        // (work ahead, higher-priority load) -> wait.
        let cases = [
            (ms(10), 0.0, ms(10)),
            (ms(10), 0.5, ms(20)),
            (ms(10), 0.75, ms(40)),
            // At or past the cap: 10x.
            (ms(10), 0.9, ms(100)),
            (ms(10), 1.0, ms(100)),
            (ms(0), 0.8, ms(0)),
            // Nonsense loads leave the wait as it was.
            (ms(10), -0.5, ms(10)),
            (ms(10), f64::NAN, ms(10)),
        ];
        for (ahead, load, want) in cases {
            let got = wait_behind_higher(ahead, load);
            let diff = got.abs_diff(want);
            assert!(
                diff < Duration::from_micros(1),
                "{ahead:?} at {load}: {got:?}"
            );
        }
    }
}
