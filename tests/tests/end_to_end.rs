//! The whole path with real parts: gRPC on loopback, libtorch models, the
//! real queue and workers.

use agent_core::Policy;
use agent_core::Priority;
use futures::future::join_all;
use std::collections::HashSet;
use std::time::Duration;
use tests::*;

/// Sends `n` test images at once; returns (responses, rejections).
async fn burst(
    edge: &agent::edge::Edge,
    n: usize,
    tag: &str,
) -> (Vec<(proto::TaskResponse, u8)>, Vec<tonic::Status>) {
    let set = test_set();
    let c = client(edge).await;
    let futs = (0..n).map(|i| {
        let mut c = c.clone();
        let s = set[i % set.len()].clone();
        let id = format!("{tag}-{i}");
        async move {
            let (r, _) = send_image(&mut c, id, s.pixels, Priority::Medium, None).await;
            (r, s.label)
        }
    });
    let mut ok = Vec::new();
    let mut rejected = Vec::new();
    for (r, label) in join_all(futs).await {
        match r {
            Ok(resp) => ok.push((resp, label)),
            Err(s) => rejected.push(s),
        }
    }
    (ok, rejected)
}

fn accuracy(rs: &[(proto::TaskResponse, u8)]) -> f64 {
    let good = rs
        .iter()
        .filter(|(r, l)| r.success && r.predicted_class == i32::from(*l))
        .count();
    good as f64 / rs.len() as f64
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn n_tasks_in_n_results_out_across_both_paths() {
    let cfg = defaults();
    let cloud = start_cloud(cfg.cloud.clone()).await;
    let edge = start_edge(cfg.edge.clone(), cloud.grpc_addr.to_string()).await;
    wait_reachable(&edge).await;

    let (rs, rejected) = burst(&edge, 150, "e2e").await;
    assert!(rejected.is_empty(), "{rejected:?}");
    assert_eq!(rs.len(), 150);
    let ids: HashSet<_> = rs.iter().map(|(r, _)| r.task_id.clone()).collect();
    assert_eq!(ids.len(), 150, "every task answered exactly once");
    assert!(rs.iter().all(|(r, _)| r.success), "all succeed");
    assert!(accuracy(&rs) >= 0.95, "accuracy {}", accuracy(&rs));
    // A burst of 150 on one worker builds a queue: both paths are used.
    let local = rs.iter().filter(|(r, _)| r.processed_by == "local").count();
    let cloud_n = rs
        .iter()
        .filter(|(r, _)| r.processed_by.starts_with("cloud"))
        .count();
    assert!(local > 0 && cloud_n > 0, "local {local} cloud {cloud_n}");
    for (r, _) in &rs {
        let d = r
            .decision
            .as_ref()
            .expect("decision travels with the result");
        assert_eq!(d.policy, "deadline-aware");
        assert!(
            r.processed_by.starts_with(&d.path),
            "{} vs {}",
            r.processed_by,
            d.path
        );
        // The prediction is the mean of the predicted distribution.
        let lo = d.local_outlook.expect("local outlook");
        assert!((d.local_total_ms - lo.mean_ms).abs() < 1e-6, "{d:?}");
        assert!(lo.p95_ms >= lo.p50_ms && lo.p_meet.is_none(), "{d:?}");
    }
    let stats = edge.manager.stats();
    assert_eq!(stats.accepted, 150);
    assert_eq!(
        stats.completed_local + stats.completed_grpc + stats.completed_quic,
        150
    );
    edge.shutdown().await.unwrap();
    cloud.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn cloud_down_everything_runs_locally_and_nothing_is_lost() {
    let cfg = defaults();
    let edge = start_edge(cfg.edge.clone(), dead_address()).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(!edge.manager.network_status().reachable);
    let (rs, rejected) = burst(&edge, 120, "down").await;
    assert!(rejected.is_empty(), "{rejected:?}");
    assert_eq!(rs.len(), 120);
    assert!(rs
        .iter()
        .all(|(r, _)| r.success && r.processed_by == "local"));
    assert!(accuracy(&rs) >= 0.9);
    let reasons: HashSet<_> = rs
        .iter()
        .map(|(r, _)| r.decision.clone().unwrap().reason)
        .collect();
    assert!(
        reasons.contains("cloud unreachable") || reasons.contains("no usable network estimate"),
        "{reasons:?}"
    );
    edge.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn always_offload_to_a_dead_cloud_falls_back_locally() {
    let mut cfg = defaults();
    cfg.edge.policy = Policy::AlwaysOffload;
    let edge = start_edge(cfg.edge.clone(), dead_address()).await;
    let (rs, rejected) = burst(&edge, 40, "fb").await;
    assert!(rejected.is_empty());
    assert_eq!(rs.len(), 40);
    assert!(rs
        .iter()
        .all(|(r, _)| r.success && r.processed_by == "local" && r.fell_back));
    assert_eq!(edge.manager.stats().fell_back, 40);
    edge.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn cloud_stopped_mid_run_loses_no_task() {
    let mut cfg = defaults();
    cfg.edge.policy = Policy::AlwaysOffload;
    let cloud = start_cloud(cfg.cloud.clone()).await;
    let edge = start_edge(cfg.edge.clone(), cloud.grpc_addr.to_string()).await;
    wait_reachable(&edge).await;
    let before = burst(&edge, 30, "pre");
    let (first, _) = before.await;
    assert!(first
        .iter()
        .all(|(r, _)| r.success && r.processed_by.starts_with("cloud")));
    let stopper = tokio::spawn(async move { cloud.shutdown().await });
    let (rs, rejected) = burst(&edge, 60, "mid").await;
    stopper.await.unwrap().unwrap();
    let (after, rejected2) = burst(&edge, 30, "post").await;
    assert!(rejected.is_empty() && rejected2.is_empty());
    assert_eq!(rs.len() + after.len(), 90);
    // Every task ended in success (cloud or local re-run) or an explicit error.
    for (r, _) in rs.iter().chain(after.iter()) {
        assert!(r.success || !r.error_message.is_empty(), "{r:?}");
    }
    assert!(after
        .iter()
        .all(|(r, _)| r.success && r.processed_by == "local" && r.fell_back));
    edge.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn saturated_local_queue_offloads() {
    // The workload's image classifier takes milliseconds per task on the
    // edge, so a burst on one worker builds a queue of hundreds of
    // milliseconds, far past a loopback offload on any host. (With the
    // digits model a task takes a tenth of a millisecond, and the queue a
    // burst builds depends on how fast the host accepts requests.)
    let mut cfg = agent::config::Config::load(None).expect("default config");
    cfg.edge.workers = 1;
    let cloud = start_cloud(cfg.cloud.clone()).await;
    let edge = start_edge(cfg.edge.clone(), cloud.grpc_addr.to_string()).await;
    wait_reachable(&edge).await;
    let images: Vec<Vec<u8>> = workload_samples(40)
        .into_iter()
        .filter(|(t, _)| *t == agent_core::TaskType::ImageClassification)
        .map(|(_, jpeg)| jpeg)
        .collect();
    assert!(!images.is_empty());
    let c = client(&edge).await;
    let sends = (0..120).map(|i| {
        let mut c = c.clone();
        let submission = agent_net::task_api::Submission {
            id: format!("sat-{i}"),
            task_type: agent_core::TaskType::ImageClassification,
            payload: images[i % images.len()].clone(),
            priority: Priority::Medium,
            deadline: None,
        };
        async move { agent_net::task_api::send(&mut c, submission).await.0 }
    });
    let rs: Vec<proto::TaskResponse> = join_all(sends)
        .await
        .into_iter()
        .map(|r| r.expect("accepted"))
        .collect();
    assert!(rs.iter().all(|r| r.success), "every task succeeds");
    let offloaded: Vec<_> = rs
        .iter()
        .filter(|r| r.processed_by.starts_with("cloud"))
        .collect();
    let deepest = rs
        .iter()
        .filter_map(|r| r.decision.clone())
        .max_by(|a, b| a.local_queue_ms.total_cmp(&b.local_queue_ms));
    let reasons: HashSet<_> = rs
        .iter()
        .filter_map(|r| r.decision.as_ref().map(|d| d.reason.clone()))
        .collect();
    eprintln!(
        "saturated: {} of {} offloaded; reasons {reasons:?}; deepest queue {deepest:#?}",
        offloaded.len(),
        rs.len()
    );
    assert!(
        !offloaded.is_empty(),
        "nothing offloaded; reasons {reasons:?}; deepest queue {deepest:#?}"
    );
    let idle: Vec<_> = rs
        .iter()
        .filter(|r| r.decision.as_ref().unwrap().local_queue_ms == 0.0)
        .collect();
    // An idle worker wins on the model's own figures; it loses only when
    // its recent tasks took longer than predicted (the learnt residuals,
    // which grow when other tests load the machine) or its price for the
    // busy worker tips the balance.
    let idle_loses = |d: &proto::Decision| {
        d.local_outlook.is_some_and(|l| l.correction_ms > 0.0)
            || d.local_congestion_ms > d.offload_congestion_ms
    };
    let idle_offloaded: Vec<_> = idle
        .iter()
        .filter(|r| r.processed_by != "local")
        .map(|r| r.decision.clone().unwrap())
        .filter(|d| !idle_loses(d))
        .collect();
    assert!(
        idle_offloaded.is_empty(),
        "an idle worker wins: {idle_offloaded:#?}"
    );
    for r in offloaded {
        let d = r.decision.as_ref().unwrap();
        assert!(
            d.local_queue_ms > 0.0 || idle_loses(d),
            "offloaded with an empty queue: {d:?}"
        );
        // The default policy offloads for a lower mean or tail, for a
        // better chance of meeting the deadline, or to stay on the path it
        // chose for the previous task (hysteresis).
        let (l, o) = (
            d.local_outlook.expect("local outlook"),
            d.offload_outlook.expect("offload outlook"),
        );
        // The loss it priced is explained: a chance, and a delay of at
        // least the round trip.
        assert!(
            (0.0..=0.5).contains(&d.loss_rate)
                && (0.0..=1.0).contains(&d.p_loss)
                && d.loss_delay_ms >= d.rtt_ms
                && d.rtt_ms > 0.0,
            "{d:?}"
        );
        // Each path's score carries its congestion price (what its work
        // costs the tasks behind it).
        let (lc, oc) = (d.local_congestion_ms, d.offload_congestion_ms);
        match d.reason.as_str() {
            "offload cheaper" => assert!(
                o.mean_ms + oc < l.mean_ms + lc || o.p95_ms + oc < l.p95_ms + lc,
                "{d:?}"
            ),
            "offload likelier to meet the deadline" => {
                assert!(o.p_meet > l.p_meet, "{d:?}")
            }
            r if r.starts_with("kept the previous path") => {}
            other => panic!("offloaded for {other:?}: {d:?}"),
        }
    }
    edge.shutdown().await.unwrap();
    cloud.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn full_queue_rejects_clearly_and_accepted_tasks_all_finish() {
    let mut cfg = defaults();
    cfg.edge.policy = Policy::AlwaysLocal;
    cfg.edge.queue_capacity = 4;
    let edge = start_edge(cfg.edge.clone(), dead_address()).await;
    let (rs, rejected) = burst(&edge, 80, "full").await;
    assert!(
        !rejected.is_empty(),
        "a 4-slot queue must overflow under 80 at once"
    );
    for s in &rejected {
        assert_eq!(s.code(), tonic::Code::ResourceExhausted);
        assert!(s.message().contains("queue full"), "{}", s.message());
    }
    assert_eq!(rs.len() + rejected.len(), 80);
    assert!(rs.iter().all(|(r, _)| r.success));
    let st = edge.manager.stats();
    assert_eq!(st.accepted as usize, rs.len());
    assert_eq!(st.rejected as usize, rejected.len());
    edge.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn shutdown_drains_every_accepted_task() {
    let mut cfg = defaults();
    cfg.edge.policy = Policy::AlwaysLocal;
    let edge = start_edge(cfg.edge.clone(), dead_address()).await;
    let set = test_set();
    let mut rxs = Vec::new();
    for (i, s) in set.iter().take(200).enumerate() {
        let task = agent_core::Task {
            id: format!("d{i}"),
            task_type: agent_core::TaskType::ImageClassification,
            payload: s.pixels.clone(),
            priority: Priority::Low,
            deadline: None,
            created_at: std::time::Instant::now(),
            context: Default::default(),
        };
        rxs.push(edge.manager.submit(task).expect("accepted"));
    }
    let manager = edge.manager.clone();
    edge.shutdown().await.unwrap();
    let late = agent_core::Task {
        id: "late".into(),
        task_type: agent_core::TaskType::ImageClassification,
        payload: set[0].pixels.clone(),
        priority: Priority::Low,
        deadline: None,
        created_at: std::time::Instant::now(),
        context: Default::default(),
    };
    assert!(
        manager.submit(late).is_err(),
        "no task accepted after shutdown"
    );
    for rx in rxs {
        let r = rx.await.expect("one result per accepted task");
        assert!(r.outcome.is_ok());
    }
}
