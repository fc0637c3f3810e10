//! Rate limiter: a token bucket (rate, burst) in front of a FIFO byte
//! buffer with tail drop.
//!
//! Kept in virtual time: `empty_at` is the instant at which the bucket would
//! have held zero tokens, so at time `t` it holds `min(burst, rate * (t -
//! empty_at))`. A packet of `len` bytes departs once the bucket holds `len`
//! tokens and every packet before it has departed.

use super::Nanos;
use crate::params::LinkParams;
use std::collections::VecDeque;

#[derive(Debug, Clone)]
pub struct Shaper {
    /// Bytes per ns; 0 means unlimited.
    rate: f64,
    burst: f64,
    buffer: u64,
    empty_at: f64,
    /// Departure times and sizes of admitted packets not yet departed.
    waiting: VecDeque<(Nanos, u32)>,
    backlog: u64,
}

impl Shaper {
    pub fn new(params: &LinkParams) -> Self {
        let mut s = Shaper {
            rate: 0.0,
            burst: 0.0,
            buffer: 0,
            empty_at: f64::NEG_INFINITY,
            waiting: VecDeque::new(),
            backlog: 0,
        };
        s.update(params);
        s
    }

    /// New rate/buffer; packets already admitted keep their departure times.
    pub fn update(&mut self, params: &LinkParams) {
        self.rate = params.rate_mbit * 1e6 / 8.0 / 1e9;
        self.burst = params.burst_bytes as f64;
        self.buffer = params.effective_buffer_bytes();
    }

    /// Bytes admitted but not yet departed at `now`.
    pub fn backlog(&mut self, now: Nanos) -> u64 {
        while let Some(&(t, len)) = self.waiting.front() {
            if t > now {
                break;
            }
            self.waiting.pop_front();
            self.backlog -= len as u64;
        }
        self.backlog
    }

    /// Departure time of a `len`-byte packet arriving at `now`, or `None`
    /// when the buffer is full (tail drop).
    pub fn admit(&mut self, now: Nanos, len: usize) -> Option<Nanos> {
        if self.rate <= 0.0 {
            return Some(now);
        }
        let backlog = self.backlog(now);
        if backlog > 0 && backlog + len as u64 > self.buffer {
            return None;
        }
        let t = now as f64;
        let need = len as f64;
        // A full bucket does not grow: move the reference so it holds `burst`.
        self.empty_at = self.empty_at.max(t - self.burst / self.rate);
        let ready = self.empty_at + need / self.rate;
        let last = self.waiting.back().map_or(now, |&(d, _)| d);
        let depart = (ready.ceil() as Nanos).max(now).max(last);
        self.empty_at += need / self.rate;
        if depart > now {
            self.waiting.push_back((depart, len as u32));
            self.backlog += len as u64;
        }
        Some(depart)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn shaper(rate_mbit: f64, buffer: u64) -> Shaper {
        Shaper::new(&LinkParams {
            rate_mbit,
            buffer_bytes: buffer,
            ..Default::default()
        })
    }

    #[test]
    fn unlimited_passes_immediately() {
        let mut s = shaper(0.0, 0);
        assert_eq!(s.admit(123, 1500), Some(123));
    }

    /// Offered 20 Mbit/s into a 10 Mbit/s limiter for 10 s: what departs in
    /// that time is 10 Mbit/s, the excess is tail-dropped, and queueing delay
    /// stays bounded by the buffer.
    #[test]
    fn throughput_matches_rate_under_overload() {
        let mut s = shaper(10.0, 100_000);
        let gap = 600_000; // 1500 B every 0.6 ms = 20 Mbit/s
        let (mut departed_bytes, mut dropped, mut max_wait) = (0u64, 0u32, 0u64);
        let horizon = 10_000_000_000u64;
        let mut t = 0;
        while t < horizon {
            match s.admit(t, 1500) {
                Some(d) => {
                    max_wait = max_wait.max(d - t);
                    if d <= horizon {
                        departed_bytes += 1500;
                    }
                }
                None => dropped += 1,
            }
            t += gap;
        }
        let mbit = departed_bytes as f64 * 8.0 / 10.0 / 1e6;
        assert!((mbit - 10.0).abs() < 0.1, "throughput {mbit} Mbit/s");
        assert!(dropped > 7000, "about half dropped: {dropped}");
        // 100 kB at 10 Mbit/s is 80 ms of queue.
        assert!(max_wait <= 81_500_000, "max wait {max_wait} ns");
    }

    #[test]
    fn under_load_packets_pass_without_queueing() {
        let mut s = shaper(10.0, 100_000);
        // 1500 B every 2 ms = 6 Mbit/s.
        for i in 0..1000u64 {
            let t = i * 2_000_000;
            assert_eq!(s.admit(t, 1500), Some(t));
        }
    }

    #[test]
    fn burst_passes_at_once_then_paces() {
        let mut s = Shaper::new(&LinkParams {
            rate_mbit: 8.0, // 1 byte per us
            burst_bytes: 3000,
            buffer_bytes: 100_000,
            ..Default::default()
        });
        let t0 = 1_000_000_000;
        assert_eq!(s.admit(t0, 1500), Some(t0));
        assert_eq!(s.admit(t0, 1500), Some(t0));
        assert_eq!(s.admit(t0, 1500), Some(t0 + 1_500_000));
        assert_eq!(s.admit(t0, 1500), Some(t0 + 3_000_000));
        assert_eq!(s.backlog(t0), 3000);
        assert_eq!(s.backlog(t0 + 3_000_000), 0);
    }

    #[test]
    fn departures_stay_in_order_when_rate_drops() {
        let mut s = shaper(100.0, 1_000_000);
        let mut last = 0;
        for i in 0..2000u64 {
            if i == 1000 {
                s.update(&LinkParams {
                    rate_mbit: 2.0,
                    buffer_bytes: 1_000_000,
                    ..Default::default()
                });
            }
            if let Some(d) = s.admit(i * 50_000, 1500) {
                assert!(d >= last);
                last = d;
            }
        }
    }
}
