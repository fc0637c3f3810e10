//! How long a run in flight has left. Before its estimate is spent, the
//! estimate less the time it has run; after, a run counted as finished
//! would let the queue promise waits it cannot keep (under a CPU quota a
//! run estimated at 45 ms took 81 ms, and the tasks behind it missed), so
//! the recent runs that took longer say how much longer it may take.

use std::time::Duration;

/// The shape of a model's recent run times: each over the estimate of its
/// time, sorted. Taken when a run starts, read while it runs.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct RunShape {
    ratios: Vec<f64>,
}

impl RunShape {
    /// From the run-time distribution (ms, as
    /// [`ExecTimeModel::distribution_ms_at`](super::ExecTimeModel::distribution_ms_at)
    /// gives it) and the estimate it is centred on (ms).
    pub fn new(dist_ms: &[f64], estimate_ms: f64) -> Self {
        if estimate_ms <= 0.0 || !estimate_ms.is_finite() {
            return Self::default();
        }
        let mut ratios: Vec<f64> = dist_ms
            .iter()
            .map(|ms| ms / estimate_ms)
            .filter(|r| r.is_finite())
            .collect();
        ratios.sort_by(f64::total_cmp);
        Self { ratios }
    }

    /// The time left of a run `expected` to take, `elapsed` into it: the
    /// estimate's remainder; once overrun, the median of the recent runs
    /// (scaled to this one) that took longer than it has so far, less
    /// `elapsed`; past all of them, as long again as it has overrun, at
    /// most one more `expected`.
    pub fn time_left(&self, expected: Duration, elapsed: Duration) -> Duration {
        if elapsed < expected {
            return expected - elapsed;
        }
        let (x, e) = (expected.as_secs_f64(), elapsed.as_secs_f64());
        let from = self.ratios.partition_point(|r| r * x <= e);
        let longer = &self.ratios[from..];
        if longer.is_empty() {
            return (elapsed - expected).min(expected);
        }
        let median = longer[longer.len() / 2] * x;
        Duration::from_secs_f64((median - e).max(0.0))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(v: u64) -> Duration {
        Duration::from_millis(v)
    }

    #[test]
    fn a_run_past_its_estimate_keeps_the_time_longer_runs_took() {
        // Recent runs of a 10 ms model: mostly 10 ms, some throttled to 20
        // and 30 ms.
        let shape = RunShape::new(&[10.0, 10.0, 10.0, 10.0, 20.0, 20.0, 30.0], 10.0);
        let cases = [
            // (expected, elapsed, left)
            (ms(10), ms(0), ms(10)),
            (ms(10), ms(4), ms(6)),
            // Overrun: of the runs longer than 12 ms (20, 20, 30) the
            // median is 20.
            (ms(10), ms(12), ms(8)),
            // Longer than 20 ms: only the 30 ms run.
            (ms(10), ms(25), ms(5)),
            // A batch expected at 40 ms scales the shape: 80, 80, 120.
            (ms(40), ms(50), ms(30)),
            // Past every recent run: as long again as the overrun (25
            // ms), at most one more estimate.
            (ms(10), ms(35), ms(10)),
        ];
        for (expected, elapsed, left) in cases {
            let got = shape.time_left(expected, elapsed);
            assert!(
                got.abs_diff(left) < Duration::from_micros(1),
                "{expected:?} {elapsed:?}: {got:?}, want {left:?}"
            );
        }
        // A shape of runs that never took long: past them, the overrun.
        let tight = RunShape::new(&[10.0, 11.0], 10.0);
        assert_eq!(tight.time_left(ms(10), ms(14)), ms(4));
        assert_eq!(tight.time_left(ms(10), ms(60)), ms(10));
        // Nothing measured: the same rule.
        assert_eq!(RunShape::default().time_left(ms(10), ms(16)), ms(6));
        assert_eq!(RunShape::new(&[5.0], 0.0), RunShape::default());
    }
}
