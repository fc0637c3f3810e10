//! The uplink as a FIFO shared by the edge's own uploads: an upload sent
//! now waits for the bytes sent before it that the link has not carried
//! yet (at the estimated rate). Without it, each decision would assume an
//! idle link, and a narrow uplink would be flooded by uploads each of which
//! looked cheap alone. Its recent load prices the uploads to come
//! ([`super::congestion_price_ms`]).
//!
//! The schedule runs at the estimated rate, and a rate measured before the
//! link narrowed is too fast: uploads still unanswered past their
//! predicted time (its p95, for the link's own jitter is priced already)
//! say so before any slow transfer has been measured, and
//! every later upload is predicted to wait that much longer. An upload
//! overtaken by a later one whose answer came back is not waiting in a
//! FIFO: it lost a packet (or its answer did), and its delay is its own.

use super::LoadMeter;
use std::collections::BTreeMap;
use std::time::{Duration, Instant};

/// The window the uplink's load is read over.
const LOAD_WINDOW: Duration = Duration::from_secs(1);

#[derive(Debug, Clone)]
pub struct UplinkQueue {
    /// When the link will have carried every upload sent so far.
    busy_until: Option<Instant>,
    /// When it was carrying them (at the estimated rate).
    meter: LoadMeter,
    /// Uploads not answered yet: their id and when the answer is due.
    pending: BTreeMap<u64, Instant>,
    next_id: u64,
    /// The newest upload whose answer came back over the link.
    newest_delivered: Option<u64>,
}

/// An upload sent through [`UplinkQueue::send`], until
/// [`UplinkQueue::answered`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UploadId(u64);

impl Default for UplinkQueue {
    fn default() -> Self {
        Self {
            busy_until: None,
            meter: LoadMeter::new(LOAD_WINDOW, 1),
            pending: BTreeMap::new(),
            next_id: 0,
            newest_delivered: None,
        }
    }
}

impl UplinkQueue {
    pub fn new() -> Self {
        Self::default()
    }

    /// The share of the last second the link spent carrying our uploads
    /// (at the rate estimated when each was sent).
    pub fn load(&self, now: Instant) -> f64 {
        self.meter.load(now)
    }

    /// How long an upload sent at `now` waits behind the earlier ones:
    /// the schedule's wait, plus how far the oldest unanswered upload is
    /// past its due time (the schedule slipped by at least that).
    pub fn wait(&self, now: Instant) -> Duration {
        self.scheduled_wait(now) + self.overdue(now)
    }

    fn scheduled_wait(&self, now: Instant) -> Duration {
        self.busy_until
            .map_or(Duration::ZERO, |b| b.saturating_duration_since(now))
    }

    /// How far the most overdue unanswered upload is past its due time,
    /// among those sent after the newest one answered: the link carries
    /// uploads in order, so one that a later answer overtook is delayed by
    /// a loss of its own, not by a queue the next upload will meet.
    pub fn overdue(&self, now: Instant) -> Duration {
        let after = self.newest_delivered.map_or(0, |id| id + 1);
        self.pending
            .range(after..)
            .map(|(_, due)| *due)
            .min()
            .map_or(Duration::ZERO, |due| now.saturating_duration_since(due))
    }

    /// An upload of `bytes` sent at `now` over a link of `bandwidth_bps`,
    /// whose answer is due `answer_after` after its own transfer starts:
    /// returns the wait it is predicted to have behind the earlier ones
    /// (the schedule's: what its measured transfer time is corrected by),
    /// and its id for [`UplinkQueue::answered`].
    pub fn send(
        &mut self,
        now: Instant,
        bytes: usize,
        bandwidth_bps: f64,
        answer_after: Duration,
    ) -> (Duration, UploadId) {
        let wait = self.scheduled_wait(now);
        let on_wire = if bandwidth_bps.is_finite() && bandwidth_bps > 0.0 {
            Duration::from_secs_f64((bytes as f64 * 8.0 / bandwidth_bps).min(3600.0))
        } else {
            Duration::ZERO
        };
        let start = now + wait;
        self.busy_until = Some(start + on_wire);
        self.meter.add(start, start + on_wire);
        let id = self.next_id;
        self.next_id += 1;
        self.pending.insert(id, start + answer_after.max(on_wire));
        (wait, UploadId(id))
    }

    /// The upload ended (answered, failed, cancelled or given up on): it
    /// waits no more.
    pub fn answered(&mut self, id: UploadId) {
        self.pending.remove(&id.0);
    }

    /// The upload's answer came back over the link (the link has carried
    /// it, and every upload sent before it that was in its queue).
    pub fn delivered(&mut self, id: UploadId) {
        self.newest_delivered = Some(self.newest_delivered.map_or(id.0, |n| n.max(id.0)));
        self.answered(id);
    }

    /// Uploads not answered yet.
    pub fn pending(&self) -> usize {
        self.pending.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn uploads_queue_behind_each_other_and_the_queue_drains() {
        let t0 = Instant::now();
        let mut q = UplinkQueue::new();
        let later_answer = Duration::from_secs(10);
        assert_eq!(q.wait(t0), Duration::ZERO);
        // 12.5 kB at 10 Mbit/s: 10 ms each.
        assert_eq!(q.send(t0, 12_500, 10e6, later_answer).0, Duration::ZERO);
        assert_eq!(q.send(t0, 12_500, 10e6, later_answer).0, ms(10));
        assert_eq!(q.wait(t0), ms(20));
        assert_eq!(q.wait(t0 + ms(15)), ms(5));
        assert_eq!(q.wait(t0 + ms(30)), Duration::ZERO);
        // After the queue drained, a new upload starts at once.
        let later = t0 + ms(50);
        assert_eq!(q.send(later, 1_250, 10e6, later_answer).0, Duration::ZERO);
        assert_eq!(q.wait(later), ms(1));
        assert_eq!(q.pending(), 3);
        // Busy 21 ms of the second before `later + 950 ms`.
        let load = q.load(later + ms(950));
        assert!((load - 0.021).abs() < 1e-9, "load {load}");
        // No usable rate: nothing is predicted.
        let mut q = UplinkQueue::new();
        q.send(t0, 1_000, f64::NAN, later_answer);
        assert_eq!(q.wait(t0), Duration::ZERO);
    }

    #[test]
    fn unanswered_uploads_past_due_delay_the_next_ones() {
        let t0 = Instant::now();
        let mut q = UplinkQueue::new();
        // Two 10 ms uploads, answers due 40 ms after each transfer starts.
        let (_, a) = q.send(t0, 12_500, 10e6, ms(40));
        let (wait_b, b) = q.send(t0, 12_500, 10e6, ms(40));
        assert_eq!(wait_b, ms(10));
        // In time: no slip.
        assert_eq!(q.wait(t0 + ms(40)), Duration::ZERO);
        assert_eq!(q.overdue(t0 + ms(40)), Duration::ZERO);
        // The link narrowed: at 100 ms neither has been answered; the
        // first is 60 ms late, and the schedule with it.
        assert_eq!(q.overdue(t0 + ms(100)), ms(60));
        assert_eq!(q.wait(t0 + ms(100)), ms(60));
        // Once it is answered, the second (due at 50 ms) is the measure.
        q.answered(a);
        assert_eq!(q.wait(t0 + ms(100)), ms(50));
        q.answered(b);
        q.answered(b);
        assert_eq!((q.wait(t0 + ms(100)), q.pending()), (Duration::ZERO, 0));
        // An answer is never due before the upload's own transfer ends.
        let (_, _c) = q.send(t0 + ms(200), 12_500, 10e6, Duration::ZERO);
        assert_eq!(q.overdue(t0 + ms(210)), Duration::ZERO);
        assert_eq!(q.overdue(t0 + ms(215)), ms(5));
    }

    #[test]
    fn an_upload_overtaken_by_a_later_answer_does_not_delay_the_next() {
        let t0 = Instant::now();
        let mut q = UplinkQueue::new();
        // Three 1 ms uploads, answers due 40 ms after each transfer starts.
        let (_, a) = q.send(t0, 1_250, 10e6, ms(40));
        let (_, b) = q.send(t0, 1_250, 10e6, ms(40));
        let (_, c) = q.send(t0, 1_250, 10e6, ms(40));
        // At 100 ms all three are late: the schedule slipped by a's 60 ms.
        assert_eq!(q.wait(t0 + ms(100)), ms(60));
        // b's answer comes back, a's not: a lost a packet; only c, sent
        // after b, can still be waiting in a queue (due at 42 ms).
        q.delivered(b);
        assert_eq!(q.pending(), 2);
        assert_eq!(q.overdue(t0 + ms(100)), ms(58));
        // c's answer too: a's delay is its own.
        q.delivered(c);
        assert_eq!(q.overdue(t0 + ms(100)), Duration::ZERO);
        assert_eq!(q.wait(t0 + ms(100)), Duration::ZERO);
        // A later upload that failed or was given up on overtakes nothing.
        let (_, d) = q.send(t0 + ms(100), 1_250, 10e6, ms(40));
        let (_, e) = q.send(t0 + ms(100), 1_250, 10e6, ms(40));
        q.answered(e);
        assert_eq!(q.overdue(t0 + ms(200)), ms(60));
        q.answered(d);
        q.answered(a);
        assert_eq!((q.wait(t0 + ms(200)), q.pending()), (Duration::ZERO, 0));
    }
}
