//! Change-point detection for the RTT level: a two-sided CUSUM over
//! samples standardized against the window (median and MAD), so that one
//! threshold serves a 1 ms LAN and a 60 ms WAN alike. A lasting step (a
//! handover, a reroute, a storm) raises an alarm within a few samples; the
//! window then forgets what came before the step instead of averaging the
//! old link into the new one for a whole window.

/// Which way the level moved.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Shift {
    Up,
    Down,
}

#[derive(Debug, Clone)]
pub struct ShiftDetector {
    /// Drift allowance per sample, in standardized units.
    k: f64,
    /// Alarm threshold of either sum.
    h: f64,
    /// Standardized samples are clipped to +-`clip`, so one outlier of a
    /// heavy tail cannot raise an alarm alone.
    clip: f64,
    up: f64,
    down: f64,
    /// Samples since the sum that alarmed was last at zero: where the
    /// shift began.
    up_run: usize,
    down_run: usize,
}

impl Default for ShiftDetector {
    fn default() -> Self {
        // A step of 4 scale units or more alarms on its 4th sample; a
        // heavy tail needs four extreme samples in a row.
        Self::new(1.0, 11.0, 4.0)
    }
}

impl ShiftDetector {
    pub fn new(k: f64, h: f64, clip: f64) -> Self {
        Self {
            k,
            h,
            clip,
            up: 0.0,
            down: 0.0,
            up_run: 0,
            down_run: 0,
        }
    }

    /// Feeds one sample `x` against the reference level and scale; on an
    /// alarm returns the direction and how many of the latest samples
    /// belong to the new level, and starts over.
    pub fn push(&mut self, x: f64, level: f64, scale: f64) -> Option<(Shift, usize)> {
        if !(x.is_finite() && level.is_finite() && scale.is_finite() && scale > 0.0) {
            return None;
        }
        let z = ((x - level) / scale).clamp(-self.clip, self.clip);
        self.up = (self.up + z - self.k).max(0.0);
        self.down = (self.down - z - self.k).max(0.0);
        self.up_run = if self.up > 0.0 { self.up_run + 1 } else { 0 };
        self.down_run = if self.down > 0.0 {
            self.down_run + 1
        } else {
            0
        };
        let alarm = if self.up > self.h {
            Some((Shift::Up, self.up_run))
        } else if self.down > self.h {
            Some((Shift::Down, self.down_run))
        } else {
            None
        };
        if alarm.is_some() {
            *self = Self::new(self.k, self.h, self.clip);
        }
        alarm
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Feeds `xs` against a fixed reference; the index of each alarm.
    fn alarms(
        d: &mut ShiftDetector,
        xs: &[f64],
        level: f64,
        scale: f64,
    ) -> Vec<(usize, Shift, usize)> {
        xs.iter()
            .enumerate()
            .filter_map(|(i, &x)| d.push(x, level, scale).map(|(s, n)| (i, s, n)))
            .collect()
    }

    #[test]
    fn a_step_alarms_within_a_few_samples_and_counts_its_samples() {
        let cases = [
            // (samples, expected alarms: index, direction, run)
            (vec![40.0; 20], vec![]),
            // Against a fixed reference the new level alarms again after
            // each reset (in a window the reference moves to it).
            (
                [vec![40.0; 10], vec![60.0; 10]].concat(),
                vec![(13, Shift::Up, 4), (17, Shift::Up, 4)],
            ),
            (
                [vec![40.0; 10], vec![20.0; 6]].concat(),
                vec![(13, Shift::Down, 4)],
            ),
            // Noise within the scale never alarms.
            (
                (0..200)
                    .map(|i| 40.0 + if i % 2 == 0 { 2.0 } else { -2.0 })
                    .collect(),
                vec![],
            ),
        ];
        for (xs, want) in cases {
            let mut d = ShiftDetector::default();
            assert_eq!(alarms(&mut d, &xs, 40.0, 2.0), want, "{xs:?}");
        }
    }

    #[test]
    fn isolated_outliers_do_not_alarm_but_a_run_does() {
        let mut d = ShiftDetector::default();
        let mut xs = Vec::new();
        for _ in 0..50 {
            xs.push(500.0);
            xs.extend([40.0; 9]);
        }
        assert!(alarms(&mut d, &xs, 40.0, 2.0).is_empty());
        let run = [vec![500.0; 3], vec![40.0]].concat();
        assert!(alarms(&mut d, &run, 40.0, 2.0).is_empty());
        assert_eq!(alarms(&mut d, &[500.0; 5], 40.0, 2.0).len(), 1);
    }

    #[test]
    fn bad_inputs_are_ignored() {
        let mut d = ShiftDetector::default();
        for x in [f64::NAN, f64::INFINITY] {
            assert_eq!(d.push(x, 40.0, 2.0), None);
        }
        assert_eq!(d.push(100.0, 40.0, 0.0), None);
    }
}
