//! Offload over QUIC with gRPC fallback, for real: quinn and tonic over
//! loopback sockets, mutual TLS from a development CA, the real cloud
//! service and models.

use agent_core::Policy;
use agent_core::{ExecPath, Priority, Task, TaskError, TaskType, Transport};
use agent_net::{
    GrpcOffloader, OffloadConfig, OffloadError, OffloadRequest, Offloader, QuicClientConfig,
    QuicOffloader,
};
use futures::future::join_all;
use std::collections::HashSet;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};
use tests::*;
use tokio::io::AsyncBufReadExt;

fn request(id: &str, payload: Vec<u8>) -> OffloadRequest {
    OffloadRequest {
        request: proto::TaskRequest {
            id: id.into(),
            r#type: proto::TaskType::ImageClassification as i32,
            payload,
            priority: proto::Priority::Medium as i32,
            deadline_unix_nano: 0,
            context: Default::default(),
            features: None,
        },
        deadline: None,
    }
}

fn task(i: usize, payload: Vec<u8>) -> Task {
    Task {
        id: format!("k{i}"),
        task_type: TaskType::ImageClassification,
        payload,
        priority: Priority::Medium,
        deadline: None,
        created_at: Instant::now(),
        context: Default::default(),
    }
}

/// Submits `n` test images straight to the manager and waits for every result.
async fn run_tasks(edge: &agent::edge::Edge, n: usize) -> Vec<agent_core::TaskResult> {
    let set = test_set();
    let futs = (0..n).map(|i| {
        edge.manager
            .execute(task(i, set[i % set.len()].pixels.clone()))
    });
    join_all(futs).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn quic_carries_the_offloads_end_to_end() {
    let mut cfg = defaults();
    cfg.edge.policy = Policy::AlwaysOffload;
    let cloud = start_cloud(cfg.cloud.clone()).await;
    let quic = cloud.quic_addr.expect("QUIC listener").to_string();
    let edge = start_edge_quic(cfg.edge.clone(), cloud.grpc_addr.to_string(), quic).await;

    // Through the task API, as applications see it.
    let set = test_set();
    let c = client(&edge).await;
    let rs = join_all((0..80).map(|i| {
        let mut c = c.clone();
        let s = set[i].clone();
        async move {
            let (r, _) =
                tests::send_image(&mut c, format!("q{i}"), s.pixels, Priority::Medium, None).await;
            (r.expect("accepted"), s.label)
        }
    }))
    .await;
    let ids: HashSet<_> = rs.iter().map(|(r, _)| r.task_id.clone()).collect();
    assert_eq!(ids.len(), 80);
    for (r, _) in &rs {
        assert!(r.success, "{}", r.error_message);
        assert_eq!(r.processed_by, "cloud/quic");
        assert_eq!(r.transport, "quic");
        assert!(!r.fell_back);
    }
    let correct = rs
        .iter()
        .filter(|(r, l)| r.predicted_class == i32::from(*l))
        .count();
    assert!(correct >= 76, "cloud model accuracy {correct}/80");
    let st = edge.manager.stats();
    assert_eq!(
        (st.completed_quic, st.completed_grpc, st.fell_back),
        (80, 0, 0)
    );
    let fo = edge.failover.as_ref().expect("QUIC in use");
    assert_eq!(fo.to_grpc.load(Ordering::Relaxed), 0);
    edge.shutdown().await.unwrap();
    cloud.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn udp_blocked_grpc_takes_over_then_quic_returns() {
    let mut cfg = defaults();
    cfg.edge.policy = Policy::AlwaysOffload;
    cfg.edge.offload.connect_timeout_ms = 300;
    cfg.edge.offload.quic_reprobe_min_ms = 200;
    cfg.edge.offload.quic_reprobe_max_ms = 400;
    let cloud = start_cloud(cfg.cloud.clone()).await;
    // A UDP port that swallows every datagram: the QUIC handshake gets no answer.
    let hole = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    let hole_addr = hole.local_addr().unwrap();
    let edge = start_edge_quic(
        cfg.edge.clone(),
        cloud.grpc_addr.to_string(),
        hole_addr.to_string(),
    )
    .await;

    let rs = run_tasks(&edge, 60).await;
    assert_eq!(rs.len(), 60);
    for r in &rs {
        assert!(r.outcome.is_ok(), "{r}");
        assert_eq!(
            (r.processed_by, r.transport),
            (Some(ExecPath::Cloud), Some(Transport::Grpc)),
            "{r}"
        );
        assert!(!r.fell_back, "gRPC took over; nothing ran locally: {r}");
    }
    let fo = edge.failover.clone().expect("QUIC in use");
    assert_eq!(fo.to_grpc.load(Ordering::Relaxed), 1, "one switch");
    let st = edge.manager.stats();
    assert_eq!(
        (st.completed_grpc, st.completed_quic, st.failed),
        (60, 0, 0)
    );

    // Probes keep failing while UDP is blocked...
    tokio::time::sleep(Duration::from_millis(500)).await;
    run_tasks(&edge, 5).await;
    assert!(fo.probes.load(Ordering::Relaxed) >= 1);
    assert_eq!(fo.to_quic.load(Ordering::Relaxed), 0);

    // ...and once a QUIC listener answers on that port, QUIC carries the offloads again.
    drop(hole);
    let mut quic_cfg = cfg.cloud.clone();
    quic_cfg.listen_quic = hole_addr.to_string();
    quic_cfg.listen_grpc = "127.0.0.1:0".into();
    quic_cfg.tls = agent_net::TlsConfig::from_dir(certs(), agent_net::tls::Side::Server);
    let second = agent::cloud::start(&quic_cfg).await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while fo.to_quic.load(Ordering::Relaxed) == 0 {
        assert!(Instant::now() < deadline, "QUIC never came back");
        run_tasks(&edge, 1).await;
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let rs = run_tasks(&edge, 20).await;
    assert!(
        rs.iter().all(|r| r.transport == Some(Transport::Quic)),
        "back on QUIC"
    );
    edge.shutdown().await.unwrap();
    second.shutdown().await.unwrap();
    cloud.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn cloud_killed_mid_stream_every_task_ends_once_none_lost() {
    // The cloud as its own process, killed with SIGKILL while offloads are in flight.
    let mut child = tokio::process::Command::new(agent_binary())
        .arg("--config")
        .arg(defaults_file())
        .arg("--tls-dir")
        .arg(certs())
        .args([
            "--log",
            "warn",
            "cloud",
            "--listen-grpc",
            "127.0.0.1:0",
            "--listen-quic",
            "127.0.0.1:0",
        ])
        .args(["--concurrency", "1"])
        .stdout(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut lines = tokio::io::BufReader::new(child.stdout.take().unwrap()).lines();
    let line = tokio::time::timeout(Duration::from_secs(60), lines.next_line())
        .await
        .expect("cloud starts")
        .unwrap()
        .expect("listening line");
    let field = |k: &str| {
        line.split_whitespace()
            .find_map(|w| w.strip_prefix(k))
            .unwrap()
            .to_string()
    };
    let (grpc, quic) = (field("grpc="), field("quic="));

    let mut cfg = defaults();
    cfg.edge.policy = Policy::AlwaysOffload;
    cfg.edge.offload.quic_keep_alive_ms = 200;
    cfg.edge.offload.quic_idle_timeout_ms = 1000;
    cfg.edge.offload.connect_timeout_ms = 300;
    let edge = start_edge_quic(cfg.edge.clone(), grpc, quic).await;
    let set = test_set();
    let n = 400;
    let rxs: Vec<_> = (0..n)
        .map(|i| {
            edge.manager
                .submit(task(i, set[i % set.len()].pixels.clone()))
                .expect("accepted")
        })
        .collect();
    let t0 = Instant::now();
    while edge.manager.stats().completed_quic < 20 {
        assert!(
            t0.elapsed() < Duration::from_secs(30),
            "no offload completed"
        );
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    child.start_kill().unwrap();
    child.wait().await.unwrap();

    let results = tokio::time::timeout(Duration::from_secs(60), join_all(rxs))
        .await
        .expect("every task ends");
    let (mut cloud, mut rerun, mut failed) = (0, 0, 0);
    for r in results {
        let r = r.expect("exactly one result per accepted task");
        match (&r.outcome, r.processed_by, r.fell_back) {
            (Ok(_), Some(ExecPath::Cloud), false) => cloud += 1,
            (Ok(_), Some(ExecPath::Local), true) => rerun += 1,
            (Err(e), None, _) => {
                assert!(!e.to_string().is_empty());
                failed += 1
            }
            other => panic!("unexpected result {other:?}"),
        }
    }
    eprintln!(
        "after the kill: {cloud} answered by the cloud, {rerun} re-run locally, {failed} failed"
    );
    assert_eq!(cloud + rerun + failed, n);
    assert!(cloud >= 20);
    assert!(
        rerun + failed > 0,
        "the kill hit tasks in flight (cloud {cloud})"
    );
    let st = edge.manager.stats();
    assert_eq!(st.accepted, n as u64);
    assert_eq!(
        st.completed_quic + st.completed_grpc + st.completed_local + st.failed,
        n as u64
    );
    edge.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn certificates_from_another_ca_are_rejected_on_both_transports() {
    let cfg = defaults();
    let cloud = start_cloud(cfg.cloud.clone()).await;
    let quic_addr = cloud.quic_addr.unwrap();
    let oc = OffloadConfig {
        connect_timeout_ms: 2000,
        ..OffloadConfig::default()
    };
    let payload = test_set()[0].pixels.clone();
    let cases = [
        ("our CA", client_material(certs(), certs()), true),
        (
            "client certificate from another CA",
            client_material(certs(), other_ca_certs()),
            false,
        ),
        (
            "server not trusted (another CA)",
            client_material(other_ca_certs(), other_ca_certs()),
            false,
        ),
    ];
    for (name, material, accepted) in cases {
        let quic_cfg = QuicClientConfig {
            max_message: 1 << 20,
            ..oc.quic_client("localhost")
        };
        let quic = QuicOffloader::new(quic_addr, &material, quic_cfg).unwrap();
        let grpc = GrpcOffloader::new(
            &cloud.grpc_addr.to_string(),
            Some(material.grpc_client("localhost")),
            1 << 20,
            Duration::from_secs(2),
            OffloadConfig::default().grpc_keep_alive(),
        )
        .unwrap();
        for (transport, o) in [
            ("quic", &quic as &dyn Offloader),
            ("grpc", &grpc as &dyn Offloader),
        ] {
            let r = o.offload(&request("tls", payload.clone())).await;
            if accepted {
                let reply = r.unwrap_or_else(|e| panic!("{name} over {transport}: {e}"));
                assert!(reply.response.success);
            } else {
                match r {
                    Err(OffloadError::Connect { .. } | OffloadError::Transport { .. }) => {}
                    other => {
                        panic!("{name} over {transport} must fail in the handshake: {other:?}")
                    }
                }
            }
        }
    }
    // Plaintext gRPC gets nothing from a TLS-only service either.
    let plain = GrpcOffloader::new(
        &cloud.grpc_addr.to_string(),
        None,
        1 << 20,
        Duration::from_secs(2),
        OffloadConfig::default().grpc_keep_alive(),
    )
    .unwrap();
    assert!(matches!(
        plain.offload(&request("plain", payload)).await,
        Err(OffloadError::Transport { .. })
    ));
    cloud.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quic_payload_limit_and_deadlines_come_back_in_band() {
    let mut cfg = defaults();
    cfg.cloud.max_payload_bytes = 4096;
    let cloud = start_cloud(cfg.cloud.clone()).await;
    let material = client_material(certs(), certs());
    let quic_cfg = QuicClientConfig {
        max_message: 4 << 20,
        ..OffloadConfig::default().quic_client("localhost")
    };
    let quic = QuicOffloader::new(cloud.quic_addr.unwrap(), &material, quic_cfg).unwrap();
    let refused = |r: Result<_, OffloadError>| match r {
        Err(OffloadError::Rejected(e)) => e,
        other => panic!("expected a refusal, got {other:?}"),
    };
    let e = refused(quic.offload(&request("big", vec![0; 5000])).await);
    assert!(
        matches!(&e, TaskError::InvalidInput(m) if m.contains("exceeds the limit")),
        "{e}"
    );
    // Far beyond the limit: the server stops reading and still answers.
    let e = refused(quic.offload(&request("huge", vec![0; 1 << 20])).await);
    assert!(
        matches!(&e, TaskError::InvalidInput(m) if m.contains("exceeds the limit")),
        "{e}"
    );
    // A deadline that passed on the way: the server drops the work.
    let mut late = request("late", test_set()[0].pixels.clone());
    late.request.deadline_unix_nano = 1_000_000_000;
    let e = refused(quic.offload(&late).await);
    assert!(matches!(e, TaskError::DeadlineExceeded(_)), "{e}");
    // A deadline already passed here: nothing is sent.
    let mut gone = request("gone", test_set()[0].pixels.clone());
    gone.deadline = Some(Instant::now());
    assert!(matches!(
        quic.offload(&gone).await,
        Err(OffloadError::Timeout)
    ));
    // The connection is still good for the next task.
    let ok = quic
        .offload(&request("ok", test_set()[0].pixels.clone()))
        .await
        .unwrap();
    assert!(ok.response.success && ok.transport == Transport::Quic);
    cloud.shutdown().await.unwrap();
}
