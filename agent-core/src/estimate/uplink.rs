//! The uplink as a FIFO shared by the edge's own uploads: an upload sent
//! now waits for the bytes sent before it that the link has not carried
//! yet (at the estimated rate). Without it, each decision would assume an
//! idle link, and a narrow uplink would be flooded by uploads each of which
//! looked cheap alone.

use std::time::{Duration, Instant};

#[derive(Debug, Clone, Default)]
pub struct UplinkQueue {
    /// When the link will have carried every upload sent so far.
    busy_until: Option<Instant>,
}

impl UplinkQueue {
    pub fn new() -> Self {
        Self::default()
    }

    /// How long an upload sent at `now` waits behind the earlier ones.
    pub fn wait(&self, now: Instant) -> Duration {
        self.busy_until
            .map_or(Duration::ZERO, |b| b.saturating_duration_since(now))
    }

    /// An upload of `bytes` sent at `now` over a link of `bandwidth_bps`:
    /// returns the wait it is predicted to have behind the earlier ones.
    pub fn send(&mut self, now: Instant, bytes: usize, bandwidth_bps: f64) -> Duration {
        let wait = self.wait(now);
        let on_wire = if bandwidth_bps.is_finite() && bandwidth_bps > 0.0 {
            Duration::from_secs_f64((bytes as f64 * 8.0 / bandwidth_bps).min(3600.0))
        } else {
            Duration::ZERO
        };
        self.busy_until = Some(now + wait + on_wire);
        wait
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uploads_queue_behind_each_other_and_the_queue_drains() {
        let t0 = Instant::now();
        let mut q = UplinkQueue::new();
        assert_eq!(q.wait(t0), Duration::ZERO);
        // 12.5 kB at 10 Mbit/s: 10 ms each.
        assert_eq!(q.send(t0, 12_500, 10e6), Duration::ZERO);
        assert_eq!(q.send(t0, 12_500, 10e6), Duration::from_millis(10));
        assert_eq!(q.wait(t0), Duration::from_millis(20));
        assert_eq!(
            q.wait(t0 + Duration::from_millis(15)),
            Duration::from_millis(5)
        );
        assert_eq!(q.wait(t0 + Duration::from_millis(30)), Duration::ZERO);
        // After the queue drained, a new upload starts at once.
        let later = t0 + Duration::from_millis(50);
        assert_eq!(q.send(later, 1_250, 10e6), Duration::ZERO);
        assert_eq!(q.wait(later), Duration::from_millis(1));
        // No usable rate: nothing is predicted.
        let mut q = UplinkQueue::new();
        q.send(t0, 1_000, f64::NAN);
        assert_eq!(q.wait(t0), Duration::ZERO);
    }
}
