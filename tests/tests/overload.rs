//! Overload behaviour with real parts: the edge's offload rate limit
//! towards the cloud, and the local queue's byte budget.

use agent_core::{Policy, Priority};
use futures::future::join_all;
use std::collections::HashSet;
use std::time::Instant;
use tests::*;

/// Sends `n` test images at once; returns (responses, rejections).
async fn burst(
    edge: &agent::edge::Edge,
    n: usize,
    tag: &str,
) -> (Vec<proto::TaskResponse>, Vec<tonic::Status>) {
    let set = test_set();
    let c = client(edge).await;
    let futs = (0..n).map(|i| {
        let mut c = c.clone();
        let pixels = set[i % set.len()].pixels.clone();
        let id = format!("{tag}-{i}");
        async move {
            send_image(&mut c, id, pixels, Priority::Medium, None)
                .await
                .0
        }
    });
    let (mut ok, mut rejected) = (Vec::new(), Vec::new());
    for r in join_all(futs).await {
        match r {
            Ok(resp) => ok.push(resp),
            Err(s) => rejected.push(s),
        }
    }
    (ok, rejected)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn offloads_over_the_rate_limit_run_locally_and_none_is_lost() {
    let (rate, burst_size) = (5.0, 5);
    let mut cfg = defaults();
    cfg.edge.policy = Policy::AlwaysOffload;
    cfg.edge.hedge_budget = 0.0;
    cfg.edge.offload.rate_limit_per_s = rate;
    cfg.edge.offload.rate_limit_burst = burst_size;
    let cloud = start_cloud(cfg.cloud.clone()).await;
    let edge = start_edge(cfg.edge.clone(), cloud.grpc_addr.to_string()).await;
    wait_reachable(&edge).await;

    let started = Instant::now();
    let (rs, rejected) = burst(&edge, 40, "rl").await;
    let elapsed = started.elapsed().as_secs_f64();
    assert!(rejected.is_empty(), "{rejected:?}");
    assert_eq!(rs.len(), 40);
    let ids: HashSet<_> = rs.iter().map(|r| r.task_id.clone()).collect();
    assert_eq!(ids.len(), 40, "every task answered exactly once");
    assert!(rs.iter().all(|r| r.success), "all succeed");

    let in_cloud = rs
        .iter()
        .filter(|r| r.processed_by.starts_with("cloud"))
        .count();
    let local: Vec<_> = rs.iter().filter(|r| r.processed_by == "local").collect();
    let most = burst_size as f64 + rate * elapsed + 1.0;
    assert!(
        (burst_size as usize..=most as usize).contains(&in_cloud),
        "{in_cloud} ran in the cloud in {elapsed:.2} s (burst {burst_size}, {rate}/s)"
    );
    assert_eq!(in_cloud + local.len(), 40);
    assert!(local.iter().all(|r| r.fell_back), "the rest fell back");
    assert_eq!(edge.manager.stats().fell_back as usize, local.len());
    edge.shutdown().await.unwrap();
    cloud.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn byte_budget_refuses_clearly_and_accepted_tasks_all_finish() {
    let payload = test_set()[0].pixels.len();
    let mut cfg = defaults();
    cfg.edge.policy = Policy::AlwaysLocal;
    cfg.edge.workers = 1;
    // Room for three payloads: the byte budget, not the count, is hit.
    cfg.edge.queue_capacity_bytes = 3 * payload;
    let edge = start_edge(cfg.edge.clone(), dead_address()).await;
    let (rs, rejected) = burst(&edge, 80, "bytes").await;
    assert!(!rejected.is_empty(), "3 payloads' worth must overflow");
    for s in &rejected {
        assert_eq!(s.code(), tonic::Code::ResourceExhausted);
        assert!(
            s.message()
                .contains(&format!("bytes of {} queued", 3 * payload)),
            "{}",
            s.message()
        );
    }
    assert_eq!(rs.len() + rejected.len(), 80);
    assert!(rs.iter().all(|r| r.success));
    assert_eq!(edge.manager.stats().rejected as usize, rejected.len());
    edge.shutdown().await.unwrap();
}
