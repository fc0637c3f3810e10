//! Property tests of the pure core: whatever numbers arrive (from clients,
//! the kernel or the clock), nothing panics and the invariants hold.

use crate::decide::{decide, CloudStatus, DecisionInput, LocalStatus, Policy};
use crate::estimate::{NetworkStatus, RttWindow, WindowStats};
use crate::queue::TaskQueue;
use crate::sample::SampleSource;
use crate::task::{deadline_from_unix_nanos, deadline_to_unix_nanos, ExecPath, Priority, TaskType};
use proptest::prelude::*;
use std::time::{Duration, Instant, SystemTime};

/// Any f64, the awkward ones included.
fn any_ms() -> impl Strategy<Value = f64> {
    prop_oneof![
        0.0..500.0f64,
        Just(0.0),
        Just(f64::NAN),
        Just(f64::INFINITY),
        Just(-1.0),
        Just(1e300),
    ]
}

fn priority() -> impl Strategy<Value = Priority> {
    prop_oneof![
        Just(Priority::Low),
        Just(Priority::Medium),
        Just(Priority::High),
        Just(Priority::Critical),
    ]
}

fn policy() -> impl Strategy<Value = Policy> {
    (0..Policy::NAMES.len()).prop_map(|i| Policy::from_name(Policy::NAMES[i]).unwrap())
}

prop_compose! {
    fn network()(
        reachable in any::<bool>(),
        srtt in any_ms(),
        sd in any_ms(),
        samples in prop::collection::vec(0.0..300.0f64, 0..40),
        bandwidth in prop_oneof![1e3..1e9f64, Just(0.0), Just(f64::NAN)],
        trend in -1e4..1e4f64,
    ) -> NetworkStatus {
        let mut sorted = samples;
        sorted.sort_by(f64::total_cmp);
        NetworkStatus {
            reachable,
            source: Some(SampleSource::SockOps),
            rtt: WindowStats {
                samples: sorted.len().max(1),
                srtt_ms: srtt,
                mean_ms: srtt,
                stddev_ms: sd,
                ..WindowStats::default()
            },
            rtt_sorted_ms: sorted,
            rtt_shifts: 0,
            rtt_trend_ms_per_s: trend,
            loss_rate: 0.0,
            bandwidth_bps: bandwidth,
            bandwidth_assumed: false,
            heard_at: None,
            age: Some(Duration::from_millis(5)),
        }
    }
}

proptest! {
    #[test]
    fn decide_never_panics_and_its_figures_are_sane(
        net in network(),
        policy in policy(),
        priority in priority(),
        queue_us in 0u64..10_000_000,
        inference_us in 0u64..1_000_000,
        cloud_us in 0u64..1_000_000,
        supported in any::<bool>(),
        payload in 0usize..10_000_000,
        left_us in prop::option::of(0u64..10_000_000),
        local_dist in prop::collection::vec(0.0..200.0f64, 0..40),
        cloud_dist in prop::collection::vec(0.0..200.0f64, 0..40),
        local_res in prop::collection::vec(-100.0..100.0f64, 0..40),
        cloud_res in prop::collection::vec(-100.0..100.0f64, 0..40),
        previous in prop::option::of(prop_oneof![Just(ExecPath::Local), Just(ExecPath::Cloud)]),
    ) {
        let sorted = |mut v: Vec<f64>| { v.sort_by(f64::total_cmp); v };
        let (ld, cd) = (sorted(local_dist), sorted(cloud_dist));
        let (lr, cr) = (sorted(local_res), sorted(cloud_res));
        let input = DecisionInput {
            uplink_wait: std::time::Duration::ZERO,
            edge_load: 0.0,
            uplink_load: 0.0,
            split: None,
            task_type: TaskType::ImageClassification,
            priority,
            payload_bytes: payload,
            response_bytes: 128,
            time_left: left_us.map(Duration::from_micros),
            net: &net,
            local: LocalStatus {
                queue_wait: Duration::from_micros(queue_us),
                inference: Duration::from_micros(inference_us),
                supported,
                overtakes: 0,
            },
            cloud: CloudStatus { inference: Duration::from_micros(cloud_us) },
            local_dist_ms: &ld,
            cloud_dist_ms: &cd,
            previous,
            local_residual_ms: &lr,
            cloud_residual_ms: &cr,
        };
        if let Ok(d) = decide(&input, &policy) {
            for o in [d.local_outlook, d.offload_outlook].into_iter().flatten() {
                prop_assert!(o.mean_ms.is_finite() && o.mean_ms >= 0.0);
                prop_assert!(o.p50_ms <= o.p95_ms + 1e-9);
                if let Some(p) = o.p_meet {
                    prop_assert!((0.0..=1.0).contains(&p));
                }
            }
            if d.path == ExecPath::Local && policy != Policy::AlwaysLocal {
                prop_assert!(supported, "local chosen without a local model: {d}");
            }
            // The shell runs a hedge only with both paths at hand.
            if d.hedge {
                prop_assert!(d.local_outlook.is_some() && d.offload_outlook.is_some());
            }
        }
    }

    #[test]
    fn deadlines_at_the_extremes_of_int64_never_panic(nanos in any::<i64>(), wall_s in 0u64..4_000_000_000) {
        let now = Instant::now();
        let wall = SystemTime::UNIX_EPOCH + Duration::from_secs(wall_s);
        let d = deadline_from_unix_nanos(nanos, now, wall);
        if nanos <= 0 {
            prop_assert!(d.is_none());
        }
        let back = deadline_to_unix_nanos(d, now, wall);
        prop_assert!(d.is_none() == (back == 0));
    }

    #[test]
    fn rtt_window_stats_stay_ordered(samples in prop::collection::vec(0.0..10_000.0f64, 1..300), cap in 2usize..80) {
        let t0 = Instant::now();
        let mut w = RttWindow::new(cap);
        for (i, ms) in samples.iter().enumerate() {
            w.push(t0 + Duration::from_millis(i as u64), Duration::from_secs_f64(ms / 1e3));
            prop_assert!(!w.is_empty() && w.len() <= cap);
        }
        let s = w.stats().unwrap();
        prop_assert!(s.p50_ms <= s.p95_ms + 1e-9 && s.p95_ms <= s.p99_ms + 1e-9);
        prop_assert!(s.stddev_ms.is_finite() && s.srtt_ms.is_finite());
        prop_assert_eq!(w.sorted_ms().len(), w.len());
    }

    #[test]
    fn queue_is_bounded_and_pops_by_priority(ops in prop::collection::vec((any::<bool>(), 0u8..4), 0..200), cap in 1usize..20, cap_bytes in 0usize..100) {
        let mut q = TaskQueue::new(cap, cap_bytes);
        let mut held = 0usize;
        for (push, p) in ops {
            if push {
                let priority = [Priority::Low, Priority::Medium, Priority::High, Priority::Critical][p as usize];
                if q.push(priority, priority, None, Duration::from_millis(1), 7 * p as usize).is_ok() {
                    held += 1;
                }
            } else if q.pop().is_some() {
                held -= 1;
            }
            prop_assert_eq!(q.len(), held);
            prop_assert!(q.len() <= cap);
            prop_assert!(q.bytes() <= cap_bytes);
        }
        let mut last = Priority::Critical;
        while let Some((p, _)) = q.pop() {
            prop_assert!(p <= last);
            last = p;
        }
    }
}
