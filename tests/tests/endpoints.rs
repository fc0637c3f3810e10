//! Several offload endpoints with real parts: two cloud services on two
//! loopback addresses (two hosts to the edge: one network estimate each),
//! and a peer gateway.

use agent::config::{EndpointConfig, EndpointKind};
use agent_core::{Policy, Priority};
use agent_net::tls::{Side, TlsConfig};
use std::collections::HashMap;
use std::time::{Duration, Instant};
use tests::*;

fn endpoint(name: &str, address: String, kind: EndpointKind) -> EndpointConfig {
    EndpointConfig {
        name: name.into(),
        kind,
        address,
        quic: String::new(),
        server_name: None,
        tls: None,
        models: HashMap::new(),
    }
}

/// A cloud service (gRPC only) listening on `ip`.
async fn cloud_on(ip: &str) -> agent_net::CloudListeners {
    let mut cfg = defaults().cloud;
    cfg.listen_grpc = format!("{ip}:0");
    cfg.listen_quic = String::new();
    cfg.tls = TlsConfig::from_dir(certs(), Side::Server);
    agent::cloud::start(&cfg).await.expect("cloud starts")
}

async fn start(mut cfg: agent::config::EdgeConfig) -> agent::edge::Edge {
    if cfg.tls == TlsConfig::default() {
        cfg.tls = TlsConfig::from_dir(certs(), Side::Client);
    }
    cfg.probe.interval_ms = 50;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    agent::edge::Edge::start(&cfg, Some(listener))
        .await
        .expect("edge starts")
}

/// Sends one digit every `gap`; returns (sent at, response) per task.
async fn stream(
    edge: &agent::edge::Edge,
    tag: &str,
    n: usize,
    gap: Duration,
) -> Vec<(Instant, proto::TaskResponse)> {
    let set = test_set();
    let c = client(edge).await;
    let mut handles = Vec::new();
    for i in 0..n {
        let mut c = c.clone();
        let s = set[i % set.len()].clone();
        let id = format!("{tag}-{i}");
        handles.push(tokio::spawn(async move {
            let at = Instant::now();
            let (r, _) = send_image(&mut c, id, s.pixels, Priority::Medium, None).await;
            (at, r.expect("accepted"))
        }));
        tokio::time::sleep(gap).await;
    }
    let mut out = Vec::new();
    for h in handles {
        out.push(h.await.unwrap());
    }
    out
}

fn endpoint_of(r: &proto::TaskResponse) -> String {
    r.decision
        .as_ref()
        .map(|d| d.endpoint.clone())
        .unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_killed_endpoint_loses_its_share_and_no_task_is_lost() {
    let a = cloud_on("127.0.0.1").await;
    let b = cloud_on("127.0.0.2").await;
    let mut cfg = defaults().edge;
    cfg.policy = Policy::AlwaysOffload;
    cfg.endpoints = vec![
        endpoint("a", a.grpc_addr.to_string(), EndpointKind::Agent),
        endpoint("b", b.grpc_addr.to_string(), EndpointKind::Agent),
    ];
    let edge = start(cfg).await;
    let statuses = || edge.manager.endpoint_statuses();
    let t0 = Instant::now();
    while !statuses().iter().all(|(_, s)| s.reachable) {
        assert!(t0.elapsed() < Duration::from_secs(5), "{:?}", statuses());
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    let before = stream(&edge, "before", 100, Duration::from_millis(10)).await;
    assert!(before.iter().all(|(_, r)| r.success), "every task answered");
    let mut share: HashMap<String, usize> = HashMap::new();
    for (_, r) in &before {
        assert!(r.processed_by.starts_with("cloud"), "{r:?}");
        *share.entry(endpoint_of(r)).or_default() += 1;
    }
    assert!(
        share.keys().all(|k| k == "a" || k == "b"),
        "every offload names its endpoint: {share:?}"
    );
    // Kill the endpoint that got more of the tasks.
    let (busy, other) = if share.get("a") >= share.get("b") {
        ("a", "b")
    } else {
        ("b", "a")
    };
    let (killed, _kept) = if busy == "a" { (a, b) } else { (b, a) };
    killed.shutdown().await.unwrap();
    let killed_at = Instant::now();

    let after = stream(&edge, "after", 300, Duration::from_millis(20)).await;
    // No task is lost: each is answered, by the other endpoint or, when
    // its offload failed, locally.
    assert!(
        after.iter().all(|(_, r)| r.success),
        "{:?}",
        after.iter().find(|(_, r)| !r.success)
    );
    let late_to_killed: Vec<_> = after
        .iter()
        .filter(|(at, r)| {
            at.duration_since(killed_at) > Duration::from_secs(5) && endpoint_of(r) == busy
        })
        .collect();
    assert!(
        late_to_killed.is_empty(),
        "{} tasks went to the killed endpoint {busy} more than 5 s after it died",
        late_to_killed.len()
    );
    let late_to_other = after
        .iter()
        .filter(|(at, r)| {
            at.duration_since(killed_at) > Duration::from_secs(1)
                && endpoint_of(r) == other
                && r.processed_by.starts_with("cloud")
        })
        .count();
    assert!(
        late_to_other > 200,
        "the other endpoint took over: {late_to_other}"
    );
    edge.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_peer_runs_what_it_is_given_and_never_offloads_it_again() {
    // Gateway B offloads everything it may to its cloud...
    let cloud = cloud_on("127.0.0.1").await;
    let mut b_cfg = defaults().edge;
    b_cfg.policy = Policy::AlwaysOffload;
    b_cfg.cloud_grpc = cloud.grpc_addr.to_string();
    b_cfg.cloud_quic = String::new();
    let b = start(b_cfg).await;
    wait_reachable(&b).await;
    // ...and gateway A offloads everything to B, its peer.
    let mut a_cfg = defaults().edge;
    a_cfg.policy = Policy::AlwaysOffload;
    let mut peer = endpoint("gateway-b", b.api_addr.to_string(), EndpointKind::Peer);
    // B's task API is plaintext on loopback.
    peer.tls = Some(TlsConfig {
        insecure: true,
        ..TlsConfig::default()
    });
    a_cfg.endpoints = vec![peer];
    let a = start(a_cfg).await;
    wait_reachable(&a).await;

    let rs = stream(&a, "peer", 40, Duration::from_millis(5)).await;
    for (_, r) in &rs {
        assert!(r.success, "{r:?}");
        assert_eq!(r.processed_by, "cloud/grpc", "A offloaded it: {r:?}");
        assert_eq!(endpoint_of(r), "gateway-b");
    }
    let (sa, sb) = (a.manager.stats(), b.manager.stats());
    assert_eq!(sa.completed_grpc, 40);
    assert_eq!(sa.completed_local, 0);
    // B ran every task itself, offloading none, despite its policy.
    assert_eq!(sb.completed_local, 40, "{sb:?}");
    assert_eq!(sb.completed_grpc + sb.completed_quic, 0, "{sb:?}");
    assert_eq!(sb.fell_back, 0, "{sb:?}");

    // B's own tasks still go to its cloud.
    let own = stream(&b, "own", 10, Duration::from_millis(5)).await;
    assert!(own
        .iter()
        .all(|(_, r)| r.success && r.processed_by.starts_with("cloud")));
    a.shutdown().await.unwrap();
    b.shutdown().await.unwrap();
}

#[test]
fn endpoint_lists_are_checked() {
    let mut cfg = defaults().edge;
    let one = cfg.endpoint_list().unwrap();
    assert_eq!(one.len(), 1);
    assert_eq!(one[0].name, "cloud");
    assert_eq!(one[0].address, cfg.cloud_grpc);
    cfg.endpoints = vec![
        endpoint("x", "127.0.0.1:1".into(), EndpointKind::Agent),
        endpoint("x", "127.0.0.1:2".into(), EndpointKind::Agent),
    ];
    let e = cfg.endpoint_list().unwrap_err().to_string();
    assert!(e.contains("used twice"), "{e}");
    cfg.endpoints = vec![endpoint("v", "127.0.0.1:1".into(), EndpointKind::V2)];
    let e = cfg.endpoint_list().unwrap_err().to_string();
    assert!(e.contains("needs `models`"), "{e}");
    let mut p = endpoint("p", "127.0.0.1:1".into(), EndpointKind::Peer);
    p.quic = "127.0.0.1:2".into();
    cfg.endpoints = vec![p];
    let e = cfg.endpoint_list().unwrap_err().to_string();
    assert!(e.contains("QUIC"), "{e}");
}

/// A V2 endpoint (our cloud's KServe V2 listener) as the edge's only one,
/// through the real edge: every workload task type is offloaded over V2
/// and answered like our cloud's own protocol answers it.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_edge_offloads_every_task_type_to_a_v2_endpoint() {
    use agent_core::TaskType;
    let full = agent::config::Config::load(None).expect("default config");
    let mut cloud_cfg = full.cloud.clone();
    cloud_cfg.listen_grpc = "127.0.0.1:0".into();
    cloud_cfg.listen_quic = String::new();
    cloud_cfg.listen_v2 = "127.0.0.1:0".into();
    cloud_cfg.tls = TlsConfig::from_dir(certs(), Side::Server);
    let cloud = agent::cloud::serve(&cloud_cfg).await.expect("cloud starts");
    let v2 = cloud.v2_addr().expect("V2 listener");

    let mut cfg = full.edge.clone();
    cfg.policy = Policy::AlwaysOffload;
    let mut ep = endpoint("triton-like", v2.to_string(), EndpointKind::V2);
    for t in [
        TaskType::ImageClassification,
        TaskType::ObjectDetection,
        TaskType::NlpAnalysis,
    ] {
        ep.models.insert(t, cloud_cfg.models[&t].name.clone());
    }
    cfg.endpoints = vec![ep];
    let edge = start(cfg).await;
    wait_reachable(&edge).await;

    let mut api = client(&edge).await;
    let mut direct = cloud_client(&cloud.listeners).await;
    for (i, (t, payload)) in workload_samples(1).into_iter().enumerate() {
        let submission = agent_net::task_api::Submission {
            id: format!("v2-{i}"),
            task_type: t,
            payload: payload.clone(),
            priority: Priority::Medium,
            deadline: None,
        };
        let (r, _) = agent_net::task_api::send(&mut api, submission).await;
        let r = r.expect("accepted");
        assert!(r.success, "{r:?}");
        assert_eq!(r.processed_by, "cloud/v2", "{r:?}");
        assert_eq!(endpoint_of(&r), "triton-like");
        // The same answer as our cloud's own protocol gives.
        let mut req = agent_net::wire::task_to_request(
            &agent_core::Task {
                id: format!("direct-{i}"),
                task_type: t,
                payload,
                priority: Priority::Medium,
                deadline: None,
                created_at: Instant::now(),
                context: HashMap::new(),
            },
            Instant::now(),
            std::time::SystemTime::now(),
        );
        req.deadline_unix_nano = 0;
        let d = direct.offload_task(req).await.unwrap().into_inner();
        assert_eq!(r.predicted_class, d.predicted_class, "{t:?}");
        assert_eq!(r.label, d.label, "{t:?}");
        assert!((r.confidence - d.confidence).abs() < 1e-4, "{t:?}");
        assert_eq!(r.boxes.len(), d.boxes.len(), "{t:?}");
    }
    assert_eq!(edge.manager.stats().completed_local, 0);
    edge.shutdown().await.unwrap();
    cloud.shutdown().await.unwrap();
}
