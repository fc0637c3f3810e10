//! Whether an endpoint has gone silent: an offload is overdue and nothing
//! has come back from the endpoint since it was sent (no answer, no RTT
//! sample of its host). A dead link takes seconds to show in the network
//! estimate (its samples go stale after 3 s, or three probes in a row must
//! time out, and a passive source that is still fresh slows the probes
//! down); the offloads in flight show it as soon as the first one is
//! overdue, and every task sent there meanwhile would be lost to it.
//! Pure: time is always a parameter.

use std::time::Instant;

#[derive(Debug, Clone, Default)]
pub struct Silence {
    /// The newest answer from the endpoint.
    answered: Option<Instant>,
    /// Silent: the send time of the overdue offload nothing has been heard
    /// after.
    quiet_from: Option<Instant>,
}

impl Silence {
    pub fn new() -> Self {
        Self::default()
    }

    /// An answer came back at `at` (any answer: a rejection is a sign of
    /// life too).
    pub fn answered(&mut self, at: Instant) {
        self.answered = Some(self.answered.map_or(at, |a| a.max(at)));
    }

    /// The newest thing heard from the endpoint: an answer, or the newest
    /// RTT sample of its host (`sampled`, from the network estimate).
    fn heard(&self, sampled: Option<Instant>) -> Option<Instant> {
        self.answered.max(sampled)
    }

    /// An offload sent at `sent` is overdue: the endpoint is silent from
    /// then unless something was heard after it was sent. Returns whether
    /// it is silent. An endpoint that has never answered cannot fall
    /// silent: until its first answer, the transport's own connect
    /// timeouts and failover are what is waited for.
    pub fn overdue(&mut self, sent: Instant, sampled: Option<Instant>) -> bool {
        let heard = self.heard(sampled);
        if self.answered.is_none() || heard.is_some_and(|h| h > sent) {
            return false;
        }
        // The earliest such send of this silence (an earlier one that
        // has ended does not count): whatever is heard after it ends it.
        let ongoing = self.quiet_from.filter(|q| heard.is_none_or(|h| h <= *q));
        self.quiet_from = Some(ongoing.map_or(sent, |q| q.min(sent)));
        true
    }

    /// A silence that something heard has ended: returns when it began
    /// (the overdue offload's send time), once. What was learnt about the
    /// endpoint from then on describes the outage, not the endpoint.
    pub fn recovered(&mut self, sampled: Option<Instant>) -> Option<Instant> {
        let q = self.quiet_from?;
        if self.heard(sampled).is_some_and(|h| h > q) {
            self.quiet_from = None;
            return Some(q);
        }
        None
    }

    /// Whether the endpoint is silent: an offload was overdue and nothing
    /// has been heard since it was sent.
    pub fn is_silent(&self, sampled: Option<Instant>) -> bool {
        self.quiet_from
            .is_some_and(|q| self.heard(sampled).is_none_or(|h| h <= q))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn at(t0: Instant, ms: u64) -> Instant {
        t0 + Duration::from_millis(ms)
    }

    #[test]
    fn an_overdue_offload_with_nothing_heard_since_makes_it_silent() {
        let t0 = Instant::now();
        // (answered at, last sample at, sent at, silent)
        let cases: [(Option<u64>, Option<u64>, u64, bool); 8] = [
            // Never answered: not silent, whatever else.
            (None, None, 100, false),
            (None, Some(50), 100, false),
            (Some(50), Some(90), 100, true),
            (Some(150), None, 100, false),
            (None, Some(150), 100, false),
            // Heard exactly when it was sent: not after.
            (Some(100), Some(100), 100, true),
            (Some(20), Some(101), 100, false),
            (Some(20), None, 100, true),
        ];
        for (answered, sampled, sent, want) in cases {
            let mut s = Silence::new();
            if let Some(a) = answered {
                s.answered(at(t0, a));
            }
            let sampled = sampled.map(|m| at(t0, m));
            assert_eq!(
                s.overdue(at(t0, sent), sampled),
                want,
                "{answered:?} {sampled:?}"
            );
            assert_eq!(s.is_silent(sampled), want, "{answered:?} {sampled:?}");
        }
    }

    #[test]
    fn anything_heard_after_the_overdue_send_ends_the_silence() {
        let t0 = Instant::now();
        let mut s = Silence::new();
        s.answered(at(t0, 10));
        assert!(!s.is_silent(None), "nothing overdue yet");
        assert!(s.overdue(at(t0, 100), Some(at(t0, 40))));
        // A later overdue offload keeps the earliest quiet start.
        assert!(s.overdue(at(t0, 300), Some(at(t0, 40))));
        assert!(s.is_silent(Some(at(t0, 40))));
        // A sample from after the first send ends it...
        assert!(!s.is_silent(Some(at(t0, 120))));
        // ...and so does an answer.
        s.answered(at(t0, 110));
        assert!(!s.is_silent(None));
        // Answers never go back in time.
        s.answered(at(t0, 50));
        assert!(!s.is_silent(None));
        // A new silence after the first ended.
        assert!(s.overdue(at(t0, 500), Some(at(t0, 120))));
        assert!(s.is_silent(Some(at(t0, 120))));
        assert!(!s.is_silent(Some(at(t0, 501))));
    }

    #[test]
    fn a_silence_that_ended_is_reported_once_with_its_start() {
        let t0 = Instant::now();
        let mut s = Silence::new();
        s.answered(at(t0, 10));
        assert_eq!(s.recovered(None), None, "never silent");
        assert!(s.overdue(at(t0, 100), Some(at(t0, 40))));
        assert_eq!(s.recovered(Some(at(t0, 100))), None, "still silent");
        assert_eq!(s.recovered(Some(at(t0, 150))), Some(at(t0, 100)));
        assert_eq!(s.recovered(Some(at(t0, 150))), None, "reported once");
        assert!(!s.is_silent(Some(at(t0, 150))));
        // An answer ends one too.
        assert!(s.overdue(at(t0, 400), Some(at(t0, 150))));
        s.answered(at(t0, 420));
        assert_eq!(s.recovered(Some(at(t0, 150))), Some(at(t0, 400)));
    }
}
