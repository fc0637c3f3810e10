//! Choosing among several offload endpoints. Each endpoint gets its own
//! [`Decision`] (its own network estimate, server times and residuals); the
//! task goes to the endpoint whose offload outlook is best, and that
//! endpoint's decision then says local or offload. With more than two
//! endpoints, two are drawn at random and the better one taken
//! (power of two choices): tasks spread over the good endpoints instead of
//! all chasing the one whose estimate happens to be lowest right now.

use crate::decide::Decision;

/// Two deadline probabilities closer than this count as equal, and the
/// expected latency decides.
const P_MEET_TIE: f64 = 0.01;

/// A split offload must beat the whole one to the same endpoint by this
/// share of its mean: its head takes the edge's own CPU (which the local
/// queue and every later task share), and near a tie the noise in the
/// estimates, not the link, would pick the variant.
pub const SPLIT_MARGIN: f64 = 0.1;

/// Whether `a`'s offload outlook is better than `b`'s: for a task with a
/// deadline the higher chance of meeting it, then the lower mean plus
/// congestion price (a split against the whole offload to its endpoint by
/// [`SPLIT_MARGIN`]).
fn better(a: &Decision, b: &Decision) -> bool {
    let (Some(oa), Some(ob)) = (a.offload_outlook, b.offload_outlook) else {
        return a.offload_outlook.is_some()
            || (b.offload_outlook.is_none() && offload_ms(a) < offload_ms(b));
    };
    if let (Some(pa), Some(pb)) = (oa.p_meet, ob.p_meet) {
        if (pa - pb).abs() > P_MEET_TIE {
            return pa > pb;
        }
    }
    let same_endpoint = a.endpoint == b.endpoint;
    let (ca, cb) = (oa.mean_ms + price(a), ob.mean_ms + price(b));
    match (a.split, b.split) {
        (Some(_), None) if same_endpoint => ca < cb * (1.0 - SPLIT_MARGIN),
        (None, Some(_)) if same_endpoint => ca * (1.0 - SPLIT_MARGIN) <= cb,
        _ => ca < cb,
    }
}

fn price(d: &Decision) -> f64 {
    d.offload.map_or(0.0, |o| o.congestion_ms)
}

fn offload_ms(d: &Decision) -> f64 {
    d.offload.map_or(f64::INFINITY, |o| o.total_ms)
}

/// The endpoints to evaluate for one task among `usable` (indices of
/// endpoints whose circuit is not open): all of them when there are two or
/// fewer, else two distinct ones drawn with `random` (any `u64`).
pub fn endpoint_candidates(usable: &[usize], random: u64) -> Vec<usize> {
    if usable.len() <= 2 {
        return usable.to_vec();
    }
    let n = usable.len() as u64;
    let first = (random % n) as usize;
    // The second from the rest: a distinct endpoint whatever `random` is.
    let second = (first + 1 + ((random / n) % (n - 1)) as usize) % usable.len();
    vec![usable[first], usable[second]]
}

/// The best of the evaluated endpoints' decisions: its position in
/// `decisions`. `None` when `decisions` is empty.
pub fn pick_endpoint(decisions: &[Decision]) -> Option<usize> {
    let mut best: Option<usize> = None;
    for (i, d) in decisions.iter().enumerate() {
        best = match best {
            Some(b) if !better(d, &decisions[b]) => Some(b),
            _ => Some(i),
        };
    }
    best
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::decide::{LocalCost, OffloadCost, Outlook, Reason};
    use crate::ExecPath;

    fn decision(mean_ms: f64, p_meet: Option<f64>) -> Decision {
        Decision {
            policy: "deadline-aware",
            path: ExecPath::Cloud,
            reason: Reason::FixedByPolicy,
            local: LocalCost::default(),
            offload: Some(OffloadCost {
                total_ms: mean_ms,
                ..OffloadCost::default()
            }),
            network_source: None,
            local_outlook: None,
            offload_outlook: Some(Outlook {
                mean_ms,
                p95_ms: mean_ms * 1.5,
                p50_ms: mean_ms,
                p_meet,
                correction_ms: 0.0,
            }),
            hedge: false,
            endpoint: 0,
            split: None,
        }
    }

    #[test]
    fn lower_mean_wins_without_deadline() {
        let ds = [
            decision(40.0, None),
            decision(12.0, None),
            decision(30.0, None),
        ];
        assert_eq!(pick_endpoint(&ds), Some(1));
        assert_eq!(pick_endpoint(&[]), None);
    }

    #[test]
    fn deadline_probability_beats_mean() {
        // A near, jittery endpoint (low mean, often late) against a far,
        // stable one: with a deadline the stable one wins.
        let ds = [decision(20.0, Some(0.80)), decision(35.0, Some(0.99))];
        assert_eq!(pick_endpoint(&ds), Some(1));
        // Equal chances: the mean decides.
        let ds = [decision(20.0, Some(0.995)), decision(35.0, Some(0.999))];
        assert_eq!(pick_endpoint(&ds), Some(0));
    }

    #[test]
    fn a_split_must_beat_the_whole_offload_clearly() {
        let split = |mean_ms, p| {
            let mut d = decision(mean_ms, p);
            d.split = Some(1);
            d
        };
        // Within the margin: the whole offload.
        assert_eq!(
            pick_endpoint(&[decision(20.0, None), split(19.0, None)]),
            Some(0)
        );
        assert_eq!(
            pick_endpoint(&[split(19.0, None), decision(20.0, None)]),
            Some(1)
        );
        // Clearly faster: the split.
        assert_eq!(
            pick_endpoint(&[decision(60.0, None), split(30.0, None)]),
            Some(1)
        );
        assert_eq!(
            pick_endpoint(&[split(30.0, None), decision(60.0, None)]),
            Some(0)
        );
        // Likelier in time wins whatever the means.
        assert_eq!(
            pick_endpoint(&[decision(20.0, Some(0.7)), split(25.0, Some(0.99))]),
            Some(1)
        );
        // The congestion prices count: a whole upload that floods a busy
        // uplink (60 + 40) loses to a split that adds little (30 + 10)...
        let priced = |mut d: Decision, price| {
            d.offload.as_mut().unwrap().congestion_ms = price;
            d
        };
        assert_eq!(
            pick_endpoint(&[
                priced(decision(60.0, None), 40.0),
                priced(split(30.0, None), 10.0)
            ]),
            Some(1)
        );
        // ...and a split whose head loads a busy edge (30 + 50) loses.
        assert_eq!(
            pick_endpoint(&[
                priced(decision(60.0, None), 0.0),
                priced(split(30.0, None), 50.0)
            ]),
            Some(0)
        );
        // Between split points, and across endpoints, the mean alone.
        assert_eq!(
            pick_endpoint(&[split(20.0, None), split(19.0, None)]),
            Some(1)
        );
        let mut other = split(19.0, None);
        other.endpoint = 1;
        assert_eq!(pick_endpoint(&[decision(20.0, None), other]), Some(1));
    }

    #[test]
    fn an_endpoint_without_estimate_loses() {
        let mut none = decision(1.0, None);
        none.offload_outlook = None;
        none.offload = None;
        let ds = [none, decision(50.0, None)];
        assert_eq!(pick_endpoint(&ds), Some(1));
    }

    #[test]
    fn two_distinct_candidates_from_many() {
        assert_eq!(endpoint_candidates(&[3], 7), vec![3]);
        assert_eq!(endpoint_candidates(&[3, 5], 7), vec![3, 5]);
        let usable = [0, 2, 4, 6, 8];
        let mut seen = std::collections::HashSet::new();
        for r in 0..1000u64 {
            let c = endpoint_candidates(&usable, r.wrapping_mul(0x9e37_79b9_7f4a_7c15));
            assert_eq!(c.len(), 2);
            assert_ne!(c[0], c[1]);
            assert!(c.iter().all(|i| usable.contains(i)));
            seen.insert(c[0]);
            seen.insert(c[1]);
        }
        assert_eq!(seen.len(), usable.len(), "every endpoint gets drawn");
    }
}
