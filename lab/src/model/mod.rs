//! The link model of one direction, free of I/O: given a packet's size and
//! arrival time it says when the packet leaves the link, or why it is
//! dropped. Time is a parameter (ns since an arbitrary start) and the
//! randomness comes from a seeded RNG, so runs are reproducible.

pub mod jitter;
pub mod loss;
pub mod shaper;

use crate::params::LinkParams;
use jitter::DelayModel;
use loss::LossModel;
use rand::rngs::StdRng;
use rand::SeedableRng;
use serde::Serialize;
use shaper::Shaper;

/// Nanoseconds on the emulator's monotonic clock.
pub type Nanos = u64;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DropReason {
    LinkDown,
    Loss,
    BufferFull,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Hand the packet to the far side at this time.
    Deliver(Nanos),
    Drop(DropReason),
}

/// Packet counters of one direction.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct DirStats {
    pub packets: u64,
    pub bytes: u64,
    pub delivered: u64,
    pub dropped_link_down: u64,
    pub dropped_loss: u64,
    pub dropped_buffer: u64,
}

/// One direction of the emulated link: link state, loss, rate limiter,
/// delay with held jitter, and the order policy, applied in that order.
#[derive(Debug)]
pub struct Direction {
    params: LinkParams,
    rng: StdRng,
    delay: DelayModel,
    loss: LossModel,
    shaper: Shaper,
    last_due: Nanos,
    stats: DirStats,
}

impl Direction {
    pub fn new(params: LinkParams, seed: u64) -> Self {
        Direction {
            rng: StdRng::seed_from_u64(seed),
            delay: DelayModel::new(&params),
            loss: LossModel::new(&params),
            shaper: Shaper::new(&params),
            last_due: 0,
            stats: DirStats::default(),
            params,
        }
    }

    pub fn params(&self) -> &LinkParams {
        &self.params
    }

    pub fn stats(&self) -> &DirStats {
        &self.stats
    }

    /// Restarts the random stream and the models' random state (held
    /// jitter, Gilbert-Elliott state) as if new; the shaper's queue stays.
    pub fn reseed(&mut self, seed: u64) {
        self.rng = StdRng::seed_from_u64(seed);
        self.delay = DelayModel::new(&self.params);
        self.loss = LossModel::new(&self.params);
    }

    /// Takes new conditions for packets arriving from now on; packets
    /// already accepted keep their due times.
    pub fn set_params(&mut self, params: LinkParams) {
        let delay_changed = params.delay_ms != self.params.delay_ms
            || params.jitter_ms != self.params.jitter_ms
            || params.jitter_distribution != self.params.jitter_distribution
            || params.jitter_hold_ms != self.params.jitter_hold_ms;
        if delay_changed {
            self.delay = DelayModel::new(&params);
        }
        self.loss.update(&params);
        self.shaper.update(&params);
        self.params = params;
    }

    /// Decides the fate of a `len`-byte packet arriving at `now`.
    pub fn on_packet(&mut self, now: Nanos, len: usize) -> Verdict {
        self.stats.packets += 1;
        self.stats.bytes += len as u64;
        let v = self.decide(now, len);
        match v {
            Verdict::Deliver(_) => self.stats.delivered += 1,
            Verdict::Drop(DropReason::LinkDown) => self.stats.dropped_link_down += 1,
            Verdict::Drop(DropReason::Loss) => self.stats.dropped_loss += 1,
            Verdict::Drop(DropReason::BufferFull) => self.stats.dropped_buffer += 1,
        }
        v
    }

    fn decide(&mut self, now: Nanos, len: usize) -> Verdict {
        if !self.params.up {
            return Verdict::Drop(DropReason::LinkDown);
        }
        if self.loss.lose(&mut self.rng) {
            return Verdict::Drop(DropReason::Loss);
        }
        let Some(departs) = self.shaper.admit(now, len) else {
            return Verdict::Drop(DropReason::BufferFull);
        };
        let mut due = departs + self.delay.delay(now, &mut self.rng);
        if !self.params.reorder {
            due = due.max(self.last_due);
        }
        self.last_due = self.last_due.max(due);
        Verdict::Deliver(due)
    }
}

#[cfg(test)]
pub(crate) mod test_util {
    use rand::rngs::StdRng;
    use rand::SeedableRng;

    pub fn rng(seed: u64) -> StdRng {
        StdRng::seed_from_u64(seed)
    }

    pub fn mean_sd(v: &[f64]) -> (f64, f64) {
        let n = v.len() as f64;
        let mean = v.iter().sum::<f64>() / n;
        let var = v.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / (n - 1.0);
        (mean, var.sqrt())
    }
}

#[cfg(test)]
mod tests {
    use super::test_util::mean_sd;
    use super::*;

    const MS: Nanos = 1_000_000;

    fn jittery(reorder: bool, hold_ms: f64) -> LinkParams {
        LinkParams {
            delay_ms: 20.0,
            jitter_ms: 5.0,
            jitter_hold_ms: hold_ms,
            reorder,
            ..Default::default()
        }
    }

    /// Packets sent every `gap`; returns (send time, due time) of delivered ones.
    fn send(d: &mut Direction, n: u64, gap: Nanos) -> Vec<(Nanos, Nanos)> {
        (0..n)
            .filter_map(|i| match d.on_packet(i * gap, 100) {
                Verdict::Deliver(due) => Some((i * gap, due)),
                Verdict::Drop(_) => None,
            })
            .collect()
    }

    #[test]
    fn sparse_traffic_sees_the_configured_distribution() {
        // One packet per 50 ms: no two packets are ever in flight together,
        // so order keeping and hold change nothing.
        let mut d = Direction::new(jittery(false, 10.0), 5);
        let delays: Vec<f64> = send(&mut d, 100_000, 50 * MS)
            .iter()
            .map(|(s, due)| (due - s) as f64 / 1e6)
            .collect();
        let (m, sd) = mean_sd(&delays);
        assert!((m - 20.0).abs() < 0.05, "mean {m}");
        assert!((sd - 5.0).abs() < 0.05, "sd {sd}");
    }

    #[test]
    fn reseeding_replays_the_same_draws() {
        // Different traffic before the restart, the same draws after it.
        let mut a = Direction::new(jittery(true, 0.0), 3);
        let mut b = Direction::new(jittery(true, 0.0), 3);
        send(&mut a, 50, 10 * MS);
        send(&mut b, 7, 3 * MS);
        a.reseed(42);
        b.reseed(42);
        let delay = |d: &mut Direction| -> Vec<Nanos> {
            (0..200u64)
                .map(|i| {
                    let at = 10_000 * MS + i * 50 * MS;
                    match d.on_packet(at, 100) {
                        Verdict::Deliver(due) => due - at,
                        Verdict::Drop(_) => 0,
                    }
                })
                .collect()
        };
        let (da, db) = (delay(&mut a), delay(&mut b));
        assert_eq!(da, db);
        assert!(da.iter().any(|&x| x != da[0]), "the draws vary");
    }

    #[test]
    fn without_reorder_packets_never_overtake() {
        let mut d = Direction::new(jittery(false, 0.0), 9);
        let out = send(&mut d, 10_000, MS / 10);
        assert!(out.windows(2).all(|w| w[1].1 >= w[0].1));
    }

    #[test]
    fn with_reorder_packets_may_overtake() {
        let mut d = Direction::new(jittery(true, 0.0), 9);
        let out = send(&mut d, 10_000, MS / 10);
        assert!(out.windows(2).any(|w| w[1].1 < w[0].1));
    }

    #[test]
    fn jitter_hold_keeps_dense_traffic_close_to_the_distribution() {
        // 10k packets/s for 100 s, order kept. Where a new draw is lower than
        // the held one, the first packets of the new hold interval wait for
        // the last of the previous one: that adds jitter^2 / (2 * hold) to
        // the mean (1.25 ms here) and leaves the spread close to the target.
        let mut d = Direction::new(jittery(false, 10.0), 4);
        let out = send(&mut d, 1_000_000, MS / 10);
        let delays: Vec<f64> = out.iter().map(|(s, due)| (due - s) as f64 / 1e6).collect();
        let (m, sd) = mean_sd(&delays);
        let expected = 20.0 + 5.0 * 5.0 / (2.0 * 10.0);
        assert!((m - expected).abs() < 0.3, "mean {m}, expected {expected}");
        assert!((sd - 5.0).abs() < 0.75, "sd {sd}");
        // Allowing reordering gives the distribution exactly, at any rate.
        let mut d = Direction::new(jittery(true, 10.0), 4);
        let out = send(&mut d, 1_000_000, MS / 10);
        let delays: Vec<f64> = out.iter().map(|(s, due)| (due - s) as f64 / 1e6).collect();
        let (m, sd) = mean_sd(&delays);
        assert!((m - 20.0).abs() < 0.2, "mean {m}");
        assert!((sd - 5.0).abs() < 0.2, "sd {sd}");
    }

    #[test]
    fn link_down_drops_everything_and_up_restores() {
        let mut d = Direction::new(LinkParams::default(), 1);
        d.set_params(LinkParams {
            up: false,
            ..Default::default()
        });
        assert_eq!(d.on_packet(0, 10), Verdict::Drop(DropReason::LinkDown));
        d.set_params(LinkParams::default());
        assert_eq!(d.on_packet(5, 10), Verdict::Deliver(5));
        assert_eq!(d.stats().dropped_link_down, 1);
        assert_eq!(d.stats().delivered, 1);
    }

    #[test]
    fn rate_limit_then_delay() {
        let p = LinkParams {
            delay_ms: 10.0,
            rate_mbit: 8.0, // 1 byte/us
            burst_bytes: 1514,
            buffer_bytes: 10_000,
            ..Default::default()
        };
        let mut d = Direction::new(p, 1);
        let t = 1_000_000_000;
        assert_eq!(d.on_packet(t, 1000), Verdict::Deliver(t + 10 * MS));
        // Bucket now holds 514 bytes: the next 1000 B wait 486 us.
        assert_eq!(
            d.on_packet(t, 1000),
            Verdict::Deliver(t + 10 * MS + 486_000)
        );
    }

    #[test]
    fn same_seed_same_outcome() {
        let p = LinkParams {
            loss: 0.1,
            ..jittery(true, 0.0)
        };
        let a = send(&mut Direction::new(p.clone(), 42), 1000, MS);
        let b = send(&mut Direction::new(p, 42), 1000, MS);
        assert_eq!(a, b);
    }
}
