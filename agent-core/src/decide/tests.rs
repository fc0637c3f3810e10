//! Table-driven tests of the decision engine.

use super::*;
use crate::estimate::{quantile, WindowStats};

fn net(reachable: bool, srtt_ms: f64, stddev_ms: f64) -> NetworkStatus {
    NetworkStatus {
        reachable,
        source: Some(SampleSource::ActiveTcpConnect),
        rtt: WindowStats {
            samples: 60,
            srtt_ms,
            mean_ms: srtt_ms,
            stddev_ms,
            rfc3550_ms: stddev_ms,
            p50_ms: srtt_ms,
            p95_ms: srtt_ms + 2.0 * stddev_ms,
            p99_ms: srtt_ms + 3.0 * stddev_ms,
        },
        rtt_sorted_ms: Vec::new(),
        rtt_shifts: 0,
        rtt_trend_ms_per_s: 0.0,
        loss_rate: 0.0,
        bandwidth_bps: 8e6, // 1 byte per microsecond
        bandwidth_assumed: false,
        heard_at: None,
        age: Some(Duration::from_millis(10)),
    }
}

fn d(ms: u64) -> Duration {
    Duration::from_millis(ms)
}

struct Case {
    name: &'static str,
    net: NetworkStatus,
    queue_ms: u64,
    local_ms: u64,
    supported: bool,
    cloud_ms: u64,
    payload: usize,
    priority: Priority,
    deadline_ms: Option<u64>,
    policy: Policy,
    expect: Result<(ExecPath, Reason), &'static str>,
}

fn base(name: &'static str) -> Case {
    Case {
        name,
        net: net(true, 10.0, 1.0),
        queue_ms: 0,
        local_ms: 5,
        supported: true,
        cloud_ms: 1,
        payload: 1000,
        priority: Priority::Medium,
        deadline_ms: None,
        policy: Policy::CostModel { jitter_k: 2.0 },
        expect: Ok((ExecPath::Local, Reason::LocalCheaper)),
    }
}

#[test]
fn cost_model_table() {
    let cases = vec![
        base("idle local beats a 10 ms link"),
        Case {
            queue_ms: 40,
            expect: Ok((ExecPath::Cloud, Reason::OffloadCheaper)),
            ..base("long local queue -> offload")
        },
        Case {
            queue_ms: 40,
            net: net(true, 10.0, 20.0),
            expect: Ok((ExecPath::Local, Reason::LocalCheaper)),
            ..base("same queue but a jittery link -> local")
        },
        Case {
            queue_ms: 40,
            net: net(true, 10.0, 8.0),
            priority: Priority::Low,
            // offload = 1 + 10 + 2*0.5*8 + 1 + 0.x = 20.x < 45
            expect: Ok((ExecPath::Cloud, Reason::OffloadCheaper)),
            ..base("low priority tolerates jitter")
        },
        Case {
            queue_ms: 20,
            net: net(true, 10.0, 8.0),
            priority: Priority::Critical,
            // offload = 1 + 10 + 2*2*8 + 1 = 44 > 25
            expect: Ok((ExecPath::Local, Reason::LocalCheaper)),
            ..base("critical priority is jitter averse")
        },
        Case {
            queue_ms: 40,
            net: net(false, 10.0, 1.0),
            expect: Ok((ExecPath::Local, Reason::CloudUnreachable)),
            ..base("unreachable cloud -> local")
        },
        Case {
            queue_ms: 40,
            net: NetworkStatus::default(),
            expect: Ok((ExecPath::Local, Reason::NoNetworkEstimate)),
            ..base("no estimate -> local")
        },
        Case {
            queue_ms: 40,
            net: {
                let mut n = net(true, f64::NAN, 1.0);
                n.rtt.srtt_ms = f64::NAN;
                n
            },
            expect: Ok((ExecPath::Local, Reason::NoNetworkEstimate)),
            ..base("malformed estimate -> local fallback")
        },
        Case {
            queue_ms: 0,
            local_ms: 30,
            deadline_ms: Some(20),
            expect: Ok((ExecPath::Cloud, Reason::OnlyOffloadMeetsDeadline)),
            ..base("only offload meets the deadline")
        },
        Case {
            queue_ms: 0,
            local_ms: 8,
            net: net(true, 10.0, 5.0),
            deadline_ms: Some(15),
            expect: Ok((ExecPath::Local, Reason::OnlyLocalMeetsDeadline)),
            ..base("only local meets the deadline")
        },
        Case {
            queue_ms: 50,
            deadline_ms: Some(5),
            expect: Err("deadline"),
            ..base("neither meets the deadline -> fail early")
        },
        Case {
            net: net(false, 10.0, 1.0),
            queue_ms: 50,
            deadline_ms: Some(5),
            expect: Err("deadline"),
            ..base("unreachable and local too slow -> fail early")
        },
        Case {
            supported: false,
            expect: Ok((ExecPath::Cloud, Reason::NoLocalModel)),
            ..base("no local model -> offload")
        },
        Case {
            supported: false,
            net: net(false, 10.0, 1.0),
            expect: Err("unavailable"),
            ..base("no local model and no cloud -> error")
        },
        Case {
            payload: 100_000,
            queue_ms: 40,
            // upload alone is 100 ms at 8 Mbit/s
            expect: Ok((ExecPath::Local, Reason::LocalCheaper)),
            ..base("large payload on a slow link stays local")
        },
        Case {
            queue_ms: 40,
            policy: Policy::AlwaysLocal,
            expect: Ok((ExecPath::Local, Reason::FixedByPolicy)),
            ..base("always-local")
        },
        Case {
            net: net(false, 10.0, 1.0),
            policy: Policy::AlwaysOffload,
            expect: Ok((ExecPath::Cloud, Reason::FixedByPolicy)),
            ..base("always-offload even when unreachable")
        },
        Case {
            queue_ms: 10,
            policy: Policy::from_name("threshold").unwrap(),
            expect: Ok((ExecPath::Cloud, Reason::ThresholdLinkGoodQueueLong)),
            ..base("threshold: queue long, link good")
        },
        Case {
            queue_ms: 10,
            net: net(true, 10.0, 20.0),
            policy: Policy::from_name("threshold").unwrap(),
            expect: Ok((ExecPath::Local, Reason::ThresholdNotMet)),
            ..base("threshold: link too jittery")
        },
    ];
    for c in cases {
        let input = DecisionInput {
            uplink_wait: std::time::Duration::ZERO,
            edge_load: 0.0,
            uplink_load: 0.0,
            split: None,
            task_type: TaskType::ImageClassification,
            priority: c.priority,
            payload_bytes: c.payload,
            response_bytes: 64,
            time_left: c.deadline_ms.map(d),
            net: &c.net,
            local: LocalStatus {
                queue_wait: d(c.queue_ms),
                inference: d(c.local_ms),
                supported: c.supported,
                overtakes: 0,
            },
            cloud: CloudStatus {
                inference: d(c.cloud_ms),
            },
            local_dist_ms: &[],
            cloud_dist_ms: &[],
            previous: None,
            local_residual_ms: &[],
            cloud_residual_ms: &[],
        };
        let got = decide(&input, &c.policy);
        match (&got, &c.expect) {
            (Ok(dec), Ok((path, reason))) => {
                assert_eq!(
                    (dec.path, dec.reason),
                    (*path, *reason),
                    "{}: {dec}",
                    c.name
                );
                assert_eq!(dec.policy, c.policy.name());
            }
            (Err(e), Err(kind)) => {
                let ok = match *kind {
                    "deadline" => matches!(e, TaskError::DeadlineExceeded(_)),
                    "unavailable" => matches!(e, TaskError::Unavailable(_)),
                    _ => false,
                };
                assert!(ok, "{}: wrong error {e}", c.name);
            }
            _ => panic!("{}: expected {:?}, got {:?}", c.name, c.expect, got),
        }
    }
}

#[test]
fn breakdown_adds_up() {
    let n = net(true, 12.0, 3.0);
    let input = DecisionInput {
        uplink_wait: std::time::Duration::ZERO,
        edge_load: 0.0,
        uplink_load: 0.0,
        split: None,
        task_type: TaskType::ImageClassification,
        priority: Priority::High,
        payload_bytes: 2000,
        response_bytes: 500,
        time_left: None,
        net: &n,
        local: LocalStatus {
            queue_wait: d(7),
            inference: d(2),
            supported: true,
            overtakes: 0,
        },
        cloud: CloudStatus { inference: d(4) },
        local_dist_ms: &[],
        cloud_dist_ms: &[],
        previous: None,
        local_residual_ms: &[],
        cloud_residual_ms: &[],
    };
    let dec = decide(&input, &Policy::CostModel { jitter_k: 2.0 }).unwrap();
    let o = dec.offload.unwrap();
    assert!((o.upload_ms - 2.0).abs() < 1e-9);
    assert!((o.download_ms - 0.5).abs() < 1e-9);
    assert!((o.jitter_penalty_ms - 2.0 * 1.5 * 3.0).abs() < 1e-9);
    assert!((o.total_ms - (2.0 + 12.0 + 9.0 + 4.0 + 0.5)).abs() < 1e-9);
    assert!((dec.local.total_ms - 9.0).abs() < 1e-9);
    assert_eq!(dec.path, ExecPath::Local);
    // The decision keeps the jitter it used, not only the penalty.
    assert!((o.jitter_ms - 3.0).abs() < 1e-9);
    assert_eq!(dec.path.as_str(), "local");
    assert_eq!(dec.network_source.map(|s| s.as_str()), Some("active-tcp"));
}

#[test]
fn every_listed_name_parses_to_itself() {
    for name in Policy::NAMES {
        let p = Policy::from_name(name).unwrap_or_else(|| panic!("{name} does not parse"));
        assert_eq!(p.name(), name);
    }
}

/// A link whose RTT samples are `rtts` (sorted here).
fn sampled_net(rtts: &[f64]) -> NetworkStatus {
    let mut sorted = rtts.to_vec();
    sorted.sort_by(f64::total_cmp);
    let k = sorted.len() as f64;
    let mean = sorted.iter().sum::<f64>() / k;
    let sd = (sorted.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / (k - 1.0)).sqrt();
    let mut n = net(true, mean, sd);
    n.rtt_sorted_ms = sorted;
    n
}

struct Aware {
    name: &'static str,
    rtts: Vec<f64>,
    queue_ms: u64,
    local: Vec<f64>,
    cloud: Vec<f64>,
    priority: Priority,
    deadline_ms: Option<u64>,
    previous: Option<ExecPath>,
    loss_rate: f64,
    expect: Result<(ExecPath, Reason), &'static str>,
}

fn aware(name: &'static str) -> Aware {
    Aware {
        name,
        // A steady 10 ms link.
        rtts: vec![10.0; 20],
        queue_ms: 0,
        local: vec![5.0; 10],
        cloud: vec![1.0; 10],
        priority: Priority::Medium,
        deadline_ms: None,
        previous: None,
        loss_rate: 0.0,
        expect: Ok((ExecPath::Local, Reason::LocalCheaper)),
    }
}

/// A pareto-like RTT: 18 of 20 samples at 10 ms, two at 200 ms (mean
/// 29 ms, p95 ~ 200 ms).
fn heavy_tail() -> Vec<f64> {
    let mut v = vec![10.0; 18];
    v.extend([200.0, 200.0]);
    v
}

#[test]
fn deadline_aware_table() {
    // Payload 1000 B at 8 Mbit/s: upload 1 ms; response 64 B: 0.064 ms.
    let cases = vec![
        aware("idle local beats a 10 ms link"),
        Aware {
            queue_ms: 40,
            expect: Ok((ExecPath::Cloud, Reason::OffloadCheaper)),
            ..aware("long queue -> offload")
        },
        Aware {
            // Same means on both paths as the row above would give for a
            // calm link, but the tail (p95 200 ms) weighs on urgent work.
            queue_ms: 30,
            rtts: heavy_tail(),
            priority: Priority::Critical,
            expect: Ok((ExecPath::Local, Reason::LocalCheaper)),
            ..aware("critical work avoids a heavy tail")
        },
        Aware {
            // Low priority judges by the mean: 1 + 29 + 1 = 31 < 35.
            queue_ms: 30,
            rtts: heavy_tail(),
            priority: Priority::Low,
            expect: Ok((ExecPath::Cloud, Reason::OffloadCheaper)),
            ..aware("low priority judges by the mean")
        },
        Aware {
            // Mean offload 31 ms beats the 45 ms local mean, but only 90 %
            // of offloads arrive within 50 ms, against all local runs.
            queue_ms: 40,
            rtts: heavy_tail(),
            deadline_ms: Some(50),
            expect: Ok((ExecPath::Local, Reason::LocalLikelierInTime)),
            ..aware("probability of meeting the deadline comes first")
        },
        Aware {
            // Local runs vary: half take 30 ms, so half miss 40 ms with a
            // 12 ms queue; offload (12 ms) always makes it.
            queue_ms: 12,
            local: [vec![5.0; 10], vec![30.0; 10]].concat(),
            deadline_ms: Some(40),
            expect: Ok((ExecPath::Cloud, Reason::OffloadLikelierInTime)),
            ..aware("a slow local tail loses to a steady link")
        },
        Aware {
            queue_ms: 100,
            rtts: vec![60.0; 20],
            deadline_ms: Some(20),
            expect: Err("deadline"),
            ..aware("no path can make it -> fail early")
        },
        Aware {
            // Offload 12.06 ms vs local 13: the better path by 7 %, within
            // the 10 % hysteresis: stay local.
            queue_ms: 8,
            previous: Some(ExecPath::Local),
            expect: Ok((ExecPath::Local, Reason::KeptPrevious)),
            ..aware("hysteresis keeps the previous path on a small gain")
        },
        Aware {
            queue_ms: 8,
            previous: None,
            expect: Ok((ExecPath::Cloud, Reason::OffloadCheaper)),
            ..aware("without a previous path the small gain wins")
        },
        Aware {
            queue_ms: 20,
            previous: Some(ExecPath::Local),
            expect: Ok((ExecPath::Cloud, Reason::OffloadCheaper)),
            ..aware("a clear gain overrides hysteresis")
        },
        Aware {
            // Offload 12.06 ms against local 13 ms, both well within 20 ms.
            queue_ms: 8,
            deadline_ms: Some(20),
            expect: Ok((ExecPath::Cloud, Reason::OffloadCheaper)),
            ..aware("a clean link takes the faster offload")
        },
        Aware {
            // 5 % loss over the request's and the answer's packets: about 1
            // offload in 10 waits a retransmission timeout (10 ms here),
            // which raises its mean to local's and its p95 to 22 ms.
            queue_ms: 8,
            deadline_ms: Some(20),
            loss_rate: 0.05,
            expect: Ok((ExecPath::Local, Reason::LocalCheaper)),
            ..aware("a lossy link's retransmissions keep tight work local")
        },
        Aware {
            // The cloud's own queue is part of the offload distribution.
            queue_ms: 40,
            cloud: vec![60.0; 10],
            expect: Ok((ExecPath::Local, Reason::LocalCheaper)),
            ..aware("a busy cloud keeps work local")
        },
    ];
    for c in cases {
        let mut n = sampled_net(&c.rtts);
        n.loss_rate = c.loss_rate;
        let input = DecisionInput {
            uplink_wait: std::time::Duration::ZERO,
            edge_load: 0.0,
            uplink_load: 0.0,
            split: None,
            task_type: TaskType::ImageClassification,
            priority: c.priority,
            payload_bytes: 1000,
            response_bytes: 64,
            time_left: c.deadline_ms.map(d),
            net: &n,
            local: LocalStatus {
                queue_wait: d(c.queue_ms),
                inference: d(5),
                supported: true,
                overtakes: 0,
            },
            cloud: CloudStatus { inference: d(1) },
            local_dist_ms: &c.local,
            cloud_dist_ms: &c.cloud,
            previous: c.previous,
            local_residual_ms: &[],
            cloud_residual_ms: &[],
        };
        let got = decide(&input, &Policy::default());
        match (&got, &c.expect) {
            (Ok(dec), Ok((path, reason))) => {
                assert_eq!(
                    (dec.path, dec.reason),
                    (*path, *reason),
                    "{}: {dec}",
                    c.name
                );
                assert_eq!(dec.policy, "deadline-aware");
                // The prediction of the path taken is its mean.
                let o = dec.outlook().expect("an outlook for the chosen path");
                assert!((dec.expected_ms() - o.mean_ms).abs() < 1e-9, "{}", c.name);
                // The explanation says what loss was priced: one packet
                // each way, lost with the link's rate, costs RTT + 4 sd.
                let cost = dec.offload.expect("an offload cost");
                let p_loss = 1.0 - (1.0 - c.loss_rate).powi(2);
                assert_eq!(cost.loss_rate, c.loss_rate, "{}", c.name);
                assert!((cost.p_loss - p_loss).abs() < 1e-12, "{}", c.name);
                let rto = cost.rtt_ms + 4.0 * cost.jitter_ms;
                assert!((cost.loss_delay_ms - rto).abs() < 1e-9, "{}", c.name);
                if c.loss_rate > 0.0 {
                    assert!(
                        dec.to_string().contains("P(loss) 0.10 at 5.0 % loss"),
                        "{dec}"
                    );
                }
            }
            (Err(e), Err("deadline")) => {
                assert!(
                    matches!(e, TaskError::DeadlineExceeded(_)),
                    "{}: {e}",
                    c.name
                );
                // The refusal shows what it weighed: each path's chance.
                let text = e.to_string();
                assert!(
                    text.contains("ms left; local p50 ")
                        && text.matches("chance in time 0.").count() == 2
                        && text.contains("on every path"),
                    "{}: {text}",
                    c.name
                );
            }
            _ => panic!("{}: expected {:?}, got {:?}", c.name, c.expect, got),
        }
    }
}

#[test]
fn loss_delays_an_evenly_spread_share_of_the_values() {
    let values: Vec<f64> = (0..8).map(f64::from).collect();
    let mut out = [0.0; 8];
    // (loss probability, delay, values delayed)
    for (p, delay, delayed) in [
        (0.0, 100.0, 0),
        (0.05, 100.0, 0),
        (0.25, 100.0, 2),
        (0.5, 100.0, 4),
        (1.0, 100.0, 8),
        (0.5, 0.0, 0),
        (0.5, f64::NAN, 0),
    ] {
        let got = with_loss(&values, p, delay, &mut out).to_vec();
        assert_eq!(got.len(), 8, "p {p}");
        assert!(
            got.windows(2).all(|w| w[0] <= w[1]),
            "p {p}: unsorted {got:?}"
        );
        let late = got.iter().filter(|v| **v >= 100.0).count();
        assert_eq!(late, delayed, "p {p}: {got:?}");
        let extra = got.iter().sum::<f64>() - values.iter().sum::<f64>();
        let want = if delayed > 0 {
            delayed as f64 * delay
        } else {
            0.0
        };
        assert!((extra - want).abs() < 1e-9, "p {p}: {got:?}");
    }
    // The delayed ones spread over the distribution, not its top only.
    let got = with_loss(&values, 0.5, 100.0, &mut out).to_vec();
    let plain: Vec<f64> = got.iter().copied().filter(|v| *v < 100.0).collect();
    assert!(
        plain.first() < Some(&2.0) && plain.last() > Some(&5.0),
        "{got:?}"
    );
}

/// An image task of 1000 bytes whose answer is empty, medium priority,
/// with no residuals, hedge or previous path: the decision's inputs that
/// the distribution tests vary are the arguments.
fn image_input<'a>(
    net: &'a NetworkStatus,
    local_dist_ms: &'a [f64],
    queue_ms: u64,
    cloud_ms: u64,
    left_ms: u64,
) -> DecisionInput<'a> {
    DecisionInput {
        uplink_wait: std::time::Duration::ZERO,
        edge_load: 0.0,
        uplink_load: 0.0,
        split: None,
        task_type: TaskType::ImageClassification,
        priority: Priority::Medium,
        payload_bytes: 1000,
        response_bytes: 0,
        time_left: Some(d(left_ms)),
        net,
        local: LocalStatus {
            queue_wait: d(queue_ms),
            inference: d(5),
            supported: true,
            overtakes: 0,
        },
        cloud: CloudStatus {
            inference: d(cloud_ms),
        },
        local_dist_ms,
        cloud_dist_ms: &[],
        previous: None,
        local_residual_ms: &[],
        cloud_residual_ms: &[],
    }
}

#[test]
fn outlooks_describe_the_distributions() {
    // Fewer samples than the outlook's RTT grid: every one enters as is.
    let mut rtts = vec![10.0; 9];
    rtts.push(200.0);
    let n = sampled_net(&rtts);
    let local = [4.0, 6.0];
    let input = image_input(&n, &local, 10, 2, 100);
    let dec = decide(&input, &Policy::default()).unwrap();
    let l = dec.local_outlook.unwrap();
    assert_eq!((l.mean_ms, l.p_meet), (15.0, Some(1.0)));
    let o = dec.offload_outlook.unwrap();
    // 1 ms upload + 2 ms cloud + RTT: 13 ms x 9, 203 ms x 1.
    assert!((o.mean_ms - 32.0).abs() < 1e-9, "{o:?}");
    assert_eq!(o.p_meet, Some(0.9));
    // The type-7 p95 of the ten: 13 + 0.55 x 190.
    assert!(o.p50_ms == 13.0 && (o.p95_ms - 117.5).abs() < 1e-9, "{o:?}");
    // Every policy records them; the seed's cost model keeps its own total.
    let seed = decide(&input, &Policy::CostModel { jitter_k: 2.0 }).unwrap();
    assert_eq!(seed.offload_outlook, dec.offload_outlook);
    assert!(seed.offload.unwrap().jitter_penalty_ms > 0.0);
}

#[test]
fn predictive_moves_the_rtt_by_its_trend() {
    // A 10 ms link rising at 40 ms/s: in 500 ms it will be 30 ms.
    let mut n = sampled_net(&[10.0; 20]);
    n.rtt_trend_ms_per_s = 40.0;
    let local = [5.0];
    let input = DecisionInput {
        uplink_wait: std::time::Duration::ZERO,
        edge_load: 0.0,
        uplink_load: 0.0,
        split: None,
        task_type: TaskType::ImageClassification,
        priority: Priority::Medium,
        payload_bytes: 1000,
        response_bytes: 0,
        time_left: None,
        net: &n,
        local: LocalStatus {
            queue_wait: d(20),
            inference: d(5),
            supported: true,
            overtakes: 0,
        },
        cloud: CloudStatus { inference: d(1) },
        local_dist_ms: &local,
        cloud_dist_ms: &[],
        previous: None,
        local_residual_ms: &[],
        cloud_residual_ms: &[],
    };
    let now = decide(&input, &Policy::default()).unwrap();
    assert_eq!(
        (now.path, now.reason),
        (ExecPath::Cloud, Reason::OffloadCheaper)
    );
    let ahead = decide(&input, &Policy::from_name("predictive").unwrap()).unwrap();
    assert_eq!(
        (ahead.path, ahead.reason),
        (ExecPath::Local, Reason::LocalCheaper)
    );
    assert!((ahead.offload_outlook.unwrap().mean_ms - 32.0).abs() < 1e-9);
    // A falling link never forecasts a negative RTT.
    let mut down = n.clone();
    down.rtt_trend_ms_per_s = -1000.0;
    let input = DecisionInput {
        uplink_wait: std::time::Duration::ZERO,
        edge_load: 0.0,
        uplink_load: 0.0,
        split: None,
        net: &down,
        ..input
    };
    let falling = decide(&input, &Policy::from_name("predictive").unwrap()).unwrap();
    assert!((falling.offload_outlook.unwrap().mean_ms - 2.0).abs() < 1e-9);
}

#[test]
fn hedges_only_when_both_paths_together_clearly_help() {
    /// (name, local inference samples, RTT samples, deadline, expect hedge)
    type HedgeCase = (&'static str, Vec<f64>, Vec<f64>, u64, bool);
    let cases: Vec<HedgeCase> = vec![
        ("both safe", vec![5.0; 10], vec![10.0; 20], 100, false),
        ("no deadline", vec![5.0; 10], heavy_tail(), 0, false),
        (
            // Local 50 % in time (half the runs take 60 ms), offload 90 %:
            // together 95 %, 5 points over the better one alone.
            "both at risk",
            [vec![5.0; 10], vec![60.0; 10]].concat(),
            heavy_tail(),
            50,
            true,
        ),
        (
            // Offload 90 %, local never: hedging adds nothing.
            "local hopeless",
            vec![80.0; 10],
            heavy_tail(),
            50,
            false,
        ),
    ];
    for (name, local, rtts, deadline, want) in cases {
        let n = sampled_net(&rtts);
        let input = DecisionInput {
            uplink_wait: std::time::Duration::ZERO,
            edge_load: 0.0,
            uplink_load: 0.0,
            split: None,
            task_type: TaskType::ImageClassification,
            priority: Priority::High,
            payload_bytes: 1000,
            response_bytes: 0,
            time_left: (deadline > 0).then(|| d(deadline)),
            net: &n,
            local: LocalStatus {
                queue_wait: d(0),
                inference: d(5),
                supported: true,
                overtakes: 0,
            },
            cloud: CloudStatus { inference: d(1) },
            local_dist_ms: &local,
            cloud_dist_ms: &[],
            previous: None,
            local_residual_ms: &[],
            cloud_residual_ms: &[],
        };
        let dec = decide(&input, &Policy::default()).unwrap();
        assert_eq!(dec.hedge, want, "{name}: {dec}");
        // The seed's policies never hedge.
        let seed = decide(&input, &Policy::CostModel { jitter_k: 2.0 });
        assert!(seed.map_or(true, |s| !s.hedge), "{name}");
    }
}

#[test]
fn residuals_correct_the_prediction() {
    // The model says local 4-6 ms and offload 12 ms, but local tasks have
    // been taking 10-20 ms longer than its median (contention the model
    // does not see): the corrected local outlook is 19-21 ms and the task
    // goes to the cloud.
    let n = sampled_net(&[10.0; 20]);
    let local = [4.0, 5.0, 6.0];
    let late = [10.0, 15.0, 20.0];
    let input = image_input(&n, &local, 0, 1, 18);
    let plain = decide(&input, &Policy::default()).unwrap();
    assert_eq!(plain.path, ExecPath::Local);
    assert_eq!(plain.local_outlook.unwrap().correction_ms, 0.0);
    // Residuals of one path alone apply to both (what the edge adds is
    // common to both paths): the comparison stays as without them.
    let one_sided = decide(
        &DecisionInput {
            time_left: None,
            local_residual_ms: &late,
            ..input.clone()
        },
        &Policy::default(),
    )
    .unwrap();
    assert_eq!(one_sided.path, ExecPath::Local);
    let (l, o) = (
        one_sided.local_outlook.unwrap(),
        one_sided.offload_outlook.unwrap(),
    );
    assert!((l.correction_ms - 15.0).abs() < 1e-9 && (o.correction_ms - 15.0).abs() < 1e-9);
    let on_time = [0.0; 4];
    let corrected = decide(
        &DecisionInput {
            local_residual_ms: &late,
            cloud_residual_ms: &on_time,
            ..input.clone()
        },
        &Policy::default(),
    )
    .unwrap();
    let l = corrected.local_outlook.unwrap();
    // Moved by the median residual, not spread by every residual: the
    // values' own spread (4-6 ms) is what the residuals carry again.
    assert!(
        (l.mean_ms - 20.0).abs() < 1e-9
            && (l.p50_ms - 20.0).abs() < 1e-9
            && l.p95_ms <= 21.0 + 1e-9
            && (l.correction_ms - 15.0).abs() < 1e-9,
        "{l:?}"
    );
    // 19, 20, 21 ms against an 18 ms deadline: none in time.
    assert_eq!(l.p_meet, Some(0.0));
    assert_eq!(
        (corrected.path, corrected.reason),
        (ExecPath::Cloud, Reason::OffloadLikelierInTime)
    );
    // A residual never makes a latency negative.
    let early = [-100.0, -100.0];
    let o = decide(
        &DecisionInput {
            cloud_residual_ms: &early,
            local_residual_ms: &on_time,
            ..input
        },
        &Policy::default(),
    )
    .unwrap()
    .offload_outlook
    .unwrap();
    assert_eq!((o.mean_ms, o.p50_ms, o.correction_ms), (0.0, 0.0, -12.0));
}

#[test]
fn queued_local_runs_take_their_residuals_spread() {
    // The model says 4-6 ms of inference; a run queued 10 ms behind others
    // has been taking the model's median plus -1..+39 ms (its residuals: a
    // quarter of them 30 ms and more late). With the model's spread shifted
    // by the median residual, every value is in time for a 30 ms deadline;
    // with its own residuals' spread, the quarter that ran late is not.
    let n = sampled_net(&[10.0; 20]);
    let local = [4.0, 5.0, 6.0];
    static LATE: [f64; 9] = [-1.0, 0.0, 1.0, 2.0, 3.0, 4.0, 30.0, 35.0, 39.0];
    let (queued_late, few) = (&LATE[..], &LATE[..super::QUEUED_SPREAD_MIN - 1]);
    let input = |queue_ms: u64, residuals: &'static [f64]| DecisionInput {
        local_residual_ms: residuals,
        cloud_residual_ms: &[0.0; 4],
        ..image_input(&n, &local, queue_ms, 1, 30)
    };
    // (queue wait ms, residuals, p_meet, p50 ms)
    let cases: [(u64, &'static [f64], f64, f64); 4] = [
        // Queued, with enough residuals: 15 + each residual; 6 of 9 in
        // time (14..19 ms), 45, 50 and 54 ms late.
        (10, queued_late, 6.0 / 9.0, 18.0),
        // Too few residuals yet: the model's spread moved by their median.
        (10, few, 1.0, 15.0 + 2.0),
        // Not queued (a worker idle): the model's spread, whatever the
        // residuals.
        (0, queued_late, 1.0, 5.0 + 3.0),
        // Under the threshold of a queued run.
        (0, few, 1.0, 5.0 + 2.0),
    ];
    for (queue_ms, residuals, p_meet, p50) in cases {
        let dec = decide(&input(queue_ms, residuals), &Policy::default()).unwrap();
        let l = dec.local_outlook.unwrap();
        assert!(
            (l.p_meet.unwrap() - p_meet).abs() < 1e-9 && (l.p50_ms - p50).abs() < 1e-9,
            "queue {queue_ms} ms, {} residuals: {l:?}",
            residuals.len()
        );
    }
    // The tail shows in the score: the queued run's p95 is the late runs'.
    let dec = decide(&input(10, queued_late), &Policy::default()).unwrap();
    assert!(dec.local_outlook.unwrap().p95_ms > 45.0, "{dec}");
}

/// `n` values, sorted, each `value(r, i)` of the `i`-th draw `r` of a
/// xorshift stream whose state is `x`.
fn sorted_noise(x: &mut u64, n: usize, value: impl Fn(u64, usize) -> f64) -> Vec<f64> {
    let mut v: Vec<f64> = (0..n)
        .map(|i| {
            *x ^= *x << 13;
            *x ^= *x >> 7;
            *x ^= *x << 17;
            value(*x, i)
        })
        .collect();
    v.sort_by(f64::total_cmp);
    v
}

#[test]
fn sorted_sums_equal_every_sum_sorted() {
    let mut x: u64 = 0x2545_f491_4f6c_dd1d;
    let mut next = |n: usize| {
        // Ties too: a few distinct values repeat.
        sorted_noise(&mut x, n, |r, i| {
            ((r % 997) as f64 / 7.0).floor() - 60.0 + (i % 3) as f64 * 0.5
        })
    };
    for (na, nb) in [(1usize, 1usize), (1, 4), (16, 1), (16, 4), (64, 4), (7, 3)] {
        let (a, b) = (next(na), next(nb));
        let clamp = |v: f64| v.max(0.0);
        let mut want: Vec<f64> = a
            .iter()
            .flat_map(|x| b.iter().map(move |y| clamp(x + y)))
            .collect();
        want.sort_by(f64::total_cmp);
        let mut bufs = [[0.0; 256]; 2];
        let got = super::runs::sorted_sums(&a, &b, clamp, &mut bufs).map(<[f64]>::to_vec);
        assert_eq!(got, Some(want), "{na} x {nb}");
    }
}

#[test]
fn shifted_values_give_the_statistics_of_the_values_shifted() {
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    // Ties, and values shifted below 0 (clamped).
    let mut next = |n: usize| sorted_noise(&mut x, n, |r, _| (r % 53) as f64 / 4.0 - 3.0);
    for (n, shift) in [
        (1usize, 0.0),
        (1, -5.0),
        (5, 2.0),
        (16, -1.5),
        (64, 3.25),
        (7, -20.0),
    ] {
        let a = next(n);
        let mut all: Vec<f64> = a.iter().map(|x| (x + shift).max(0.0)).collect();
        all.sort_by(f64::total_cmp);
        let s = super::runs::Shifted::new(&a, shift).unwrap();
        assert_eq!(s.len(), all.len());
        for q in (0..=200).map(|i| i as f64 / 200.0) {
            assert_eq!(s.quantile(q), quantile(&all, q), "{n} {shift:+} q={q}");
        }
        for limit in [-1.0, 0.0, 2.5, 6.0, 1e9] {
            let want = all.iter().filter(|v| **v <= limit).count();
            assert_eq!(s.count_at_most(limit), want, "{n} {shift:+} <= {limit}");
        }
        let sum: f64 = all.iter().sum();
        let got = s.sum(a.iter().sum());
        assert!(
            (got - sum).abs() < 1e-9 * sum.abs().max(1.0),
            "{got} vs {sum}"
        );
    }
    // All clamped: exactly 0.
    assert_eq!(
        super::runs::Shifted::new(&[1.0, 2.0], -5.0)
            .unwrap()
            .sum(3.0),
        0.0
    );
}

#[test]
fn shifted_values_not_finite_are_none() {
    let none = |a: &[f64], r: f64| super::runs::Shifted::new(a, r).is_none();
    assert!(none(&[1.0, f64::NAN], 1.0));
    assert!(none(&[1.0], f64::INFINITY));
    assert!(none(&[1.0], f64::NAN));
    assert!(none(&[f64::MAX], f64::MAX));
    assert!(none(&[], 1.0));
    assert!(!none(&[1.0], -1.0));
}

#[test]
fn sums_of_values_not_finite_are_none() {
    let id = |v: f64| v;
    let none =
        |a: &[f64], b: &[f64]| super::runs::sorted_sums(a, b, id, &mut [[0.0; 256]; 2]).is_none();
    assert!(none(&[1.0, f64::NAN], &[1.0]));
    assert!(none(&[1.0], &[f64::INFINITY]));
    assert!(none(&[f64::MAX], &[f64::MAX]));
    // More values than an outlook may hold.
    assert!(none(&[1.0; 65], &[1.0; 4]));
    assert!(!none(&[1.0; 64], &[1.0; 4]));
}

#[test]
fn an_outlook_of_malformed_values_is_none() {
    for bad in [
        vec![-1.0, 2.0],
        vec![1.0, f64::INFINITY],
        vec![1.0, f64::NAN],
        vec![-f64::NAN, 1.0],
        vec![],
    ] {
        let mut v = bad.clone();
        v.sort_by(f64::total_cmp);
        assert_eq!(Outlook::of_sorted(&v, Some(5.0)), None, "{bad:?}");
    }
    let o = Outlook::of_sorted(&[1.0, 2.0, 3.0, 10.0], Some(3.0)).unwrap();
    assert_eq!((o.mean_ms, o.p50_ms, o.p_meet), (4.0, 2.5, Some(0.75)));
}

#[test]
fn a_split_offload_pays_for_its_head_and_uploads_its_features() {
    // A 3 Mbit/s uplink: a 14 kB frame takes 37 ms, 2.6 kB of features 7 ms.
    let mut n = sampled_net(&[20.0; 20]);
    n.bandwidth_bps = 3e6;
    let local = [15.0];
    let whole_in = DecisionInput {
        uplink_wait: std::time::Duration::ZERO,
        edge_load: 0.0,
        uplink_load: 0.0,
        split: None,
        task_type: TaskType::ImageClassification,
        priority: Priority::Medium,
        payload_bytes: 14_000,
        response_bytes: 0,
        time_left: Some(d(250)),
        net: &n,
        local: LocalStatus {
            queue_wait: d(40),
            inference: d(15),
            supported: true,
            overtakes: 0,
        },
        cloud: CloudStatus { inference: d(5) },
        local_dist_ms: &local,
        cloud_dist_ms: &[],
        previous: None,
        local_residual_ms: &[],
        cloud_residual_ms: &[],
    };
    let split_in = DecisionInput {
        payload_bytes: 2_600,
        split: Some(SplitInput {
            point: 2,
            wait: d(40),
            head: d(4),
        }),
        cloud: CloudStatus { inference: d(3) },
        ..whole_in.clone()
    };
    let whole = decide(&whole_in, &Policy::default()).unwrap();
    let split = decide(&split_in, &Policy::default()).unwrap();
    assert_eq!((whole.split, split.split), (None, Some(2)));
    let (w, s) = (whole.offload.unwrap(), split.offload.unwrap());
    assert_eq!(w.head_ms, 0.0);
    // The head waits in the local queue (40 ms), then runs (4 ms).
    assert!((s.head_ms - 44.0).abs() < 1e-9, "{s:?}");
    assert!((w.upload_ms - 37.33).abs() < 0.01 && (s.upload_ms - 6.93).abs() < 0.01);
    // 44 + 6.9 + 20 + 3 against 37.3 + 20 + 5.
    let (wo, so) = (
        whole.offload_outlook.unwrap(),
        split.offload_outlook.unwrap(),
    );
    assert!((so.mean_ms - 73.93).abs() < 0.01 && (wo.mean_ms - 62.33).abs() < 0.01);
    // Idle resources cost nothing, and for this task alone the local run
    // (40 + 15 ms) is the fastest.
    assert_eq!((s.congestion_ms, split.local.congestion_ms), (0.0, 0.0));
    assert_eq!(split.path, ExecPath::Local);
    // A head that runs ahead of the queued local runs waits only 5 ms:
    // 5 + 4 + 6.9 + 20 + 3 beats the local 40 + 15.
    let ahead_in = DecisionInput {
        split: Some(SplitInput {
            point: 2,
            wait: d(5),
            head: d(4),
        }),
        ..split_in.clone()
    };
    let ahead = decide(&ahead_in, &Policy::default()).unwrap();
    assert!((ahead.offload.unwrap().head_ms - 9.0).abs() < 1e-9);
    assert!((ahead.offload_outlook.unwrap().mean_ms - 38.93).abs() < 0.01);
    assert_eq!(ahead.path, ExecPath::Cloud);
    // Uploads queued ahead delay every variant's upload.
    let queued = DecisionInput {
        uplink_wait: d(100),
        ..split_in.clone()
    };
    let q = decide(&queued, &Policy::default()).unwrap();
    assert!((q.offload.unwrap().upload_ms - 106.93).abs() < 0.01);
    // The fixed split policy always offloads.
    let fixed = Policy::from_name("split:stride16").unwrap();
    assert_eq!(fixed.fixed_split(), Some("stride16"));
    assert!(!fixed.weighs_splits() && Policy::default().weighs_splits());
    let f = decide(&queued, &fixed).unwrap();
    assert_eq!(
        (f.path, f.split, f.reason),
        (ExecPath::Cloud, Some(2), Reason::FixedByPolicy)
    );
}

#[test]
fn busy_resources_price_the_work_each_path_adds() {
    // The split above, on an edge and an uplink at several loads: the
    // local run adds 15 ms to the edge's queue, the split 4 ms to it and
    // 6.9 ms to the uplink's.
    let mut n = sampled_net(&[20.0; 20]);
    n.bandwidth_bps = 3e6;
    let local = [15.0];
    let input = |edge_load: f64, uplink_load: f64| DecisionInput {
        uplink_wait: std::time::Duration::ZERO,
        edge_load,
        uplink_load,
        split: Some(SplitInput {
            point: 2,
            wait: d(40),
            head: d(4),
        }),
        task_type: TaskType::ImageClassification,
        priority: Priority::Medium,
        payload_bytes: 2_600,
        response_bytes: 0,
        time_left: Some(d(250)),
        net: &n,
        local: LocalStatus {
            queue_wait: d(40),
            inference: d(15),
            supported: true,
            overtakes: 0,
        },
        cloud: CloudStatus { inference: d(3) },
        local_dist_ms: &local,
        cloud_dist_ms: &[],
        previous: None,
        local_residual_ms: &[],
        cloud_residual_ms: &[],
    };
    // (edge load, uplink load, local price, split price, path)
    let cases = [
        (0.0, 0.0, 0.0, 0.0, ExecPath::Local),
        // Local 55 + 15 x 1 = 70 against 73.9 + 4 x 1 = 77.9.
        (0.5, 0.0, 15.0, 4.0, ExecPath::Local),
        // Local 55 + 60 = 115 against 73.9 + 16 = 89.9.
        (0.8, 0.0, 60.0, 16.0, ExecPath::Cloud),
        // A saturated uplink: 73.9 + 16 + 6.93 x 9 = 152.3.
        (0.8, 0.9, 60.0, 16.0 + 6.9333 * 9.0, ExecPath::Local),
        // Loads past the cap are priced at the cap.
        (1.0, 0.0, 135.0, 36.0, ExecPath::Cloud),
    ];
    for (edge, up, local_price, split_price, path) in cases {
        let dec = decide(&input(edge, up), &Policy::default()).unwrap();
        let o = dec.offload.unwrap();
        assert!(
            (dec.local.congestion_ms - local_price).abs() < 0.01
                && (o.congestion_ms - split_price).abs() < 0.01,
            "loads {edge}/{up}: {dec}"
        );
        assert_eq!(dec.path, path, "loads {edge}/{up}: {dec}");
        // The prices are weighed, never predicted: the outlooks stay.
        assert!((dec.offload_outlook.unwrap().mean_ms - 73.93).abs() < 0.01);
        assert!((dec.local_outlook.unwrap().mean_ms - 55.0).abs() < 1e-9);
    }
    // The seed's cost model does not price.
    let cost = decide(&input(0.8, 0.0), &Policy::from_name("cost-model").unwrap()).unwrap();
    assert_eq!(cost.path, ExecPath::Local);
}

#[test]
fn a_local_run_that_overtakes_queued_tasks_pays_for_their_wait() {
    // The case seen on the wan scenario: a high-priority detection, about
    // 68 ms locally (3 ms queue + 65 ms run) or 72 ms offloaded, both sure
    // to meet its 300 ms deadline, with queued tasks of lower priority it
    // would run ahead of.
    let n = sampled_net(&[40.0; 20]);
    let local = [65.0];
    let cloud = [30.0];
    let input = |overtakes: usize, previous: Option<ExecPath>| DecisionInput {
        uplink_wait: std::time::Duration::ZERO,
        edge_load: 0.0,
        uplink_load: 0.0,
        split: None,
        task_type: TaskType::ObjectDetection,
        priority: Priority::High,
        payload_bytes: 2_000,
        response_bytes: 0,
        time_left: Some(d(300)),
        net: &n,
        local: LocalStatus {
            queue_wait: d(3),
            inference: d(65),
            supported: true,
            overtakes,
        },
        cloud: CloudStatus { inference: d(30) },
        local_dist_ms: &local,
        cloud_dist_ms: &cloud,
        previous,
        local_residual_ms: &[],
        cloud_residual_ms: &[],
    };
    // (overtaken, previous path, path, price of the local run)
    let cases = [
        (0, None, ExecPath::Local, 0.0),
        (0, Some(ExecPath::Local), ExecPath::Local, 0.0),
        // One queued task waits 65 ms more: 68 + 65 against 72.
        (1, None, ExecPath::Cloud, 65.0),
        // Well past the hysteresis, too.
        (1, Some(ExecPath::Local), ExecPath::Cloud, 65.0),
        (3, Some(ExecPath::Local), ExecPath::Cloud, 195.0),
    ];
    for (overtakes, previous, path, price) in cases {
        let dec = decide(&input(overtakes, previous), &Policy::default()).unwrap();
        assert_eq!(dec.path, path, "{overtakes} overtaken: {dec}");
        assert!(
            (dec.local.congestion_ms - price).abs() < 1e-9,
            "{overtakes} overtaken: {dec}"
        );
        // Weighed, never predicted: the task's own outlook stays.
        assert!((dec.local_outlook.unwrap().mean_ms - 68.0).abs() < 1e-9);
        // The seed's cost model does not weigh it.
        let seed = decide(
            &input(overtakes, previous),
            &Policy::CostModel { jitter_k: 2.0 },
        )
        .unwrap();
        assert_eq!(seed.path, ExecPath::Local, "{seed}");
    }
    // A local path likelier in time still wins, whatever it overtakes: the
    // task's own deadline comes first.
    let mut tight = input(3, None);
    tight.time_left = Some(d(70));
    let dec = decide(&tight, &Policy::default()).unwrap();
    assert_eq!(
        (dec.path, dec.reason),
        (ExecPath::Local, Reason::LocalLikelierInTime),
        "{dec}"
    );
}

#[test]
fn a_grid_is_the_data_s_evenly_spaced_quantiles() {
    let mut x: u64 = 0x1234_5678_9abc_def1;
    for n in [1usize, 4, 5, 16, 17, 32, 60] {
        let data = sorted_noise(&mut x, n, |r, _| (r % 1000) as f64 / 10.0);
        let got = super::runs::grid::<4>(&data);
        let want: Vec<f64> = if n <= 4 {
            data.clone()
        } else {
            (0..4)
                .map(|i| quantile(&data, (i as f64 + 0.5) / 4.0))
                .collect()
        };
        assert_eq!(got.as_slice(), &want[..], "n={n}");
    }
}
