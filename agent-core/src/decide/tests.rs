//! Table-driven tests of the decision engine.

use super::*;
use crate::estimate::WindowStats;

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
        loss_rate: 0.0,
        bandwidth_bps: 8e6, // 1 byte per microsecond
        bandwidth_assumed: false,
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
            },
            cloud: CloudStatus {
                inference: d(c.cloud_ms),
            },
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
        },
        cloud: CloudStatus { inference: d(4) },
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
