//! Store and forward with the real agents: tasks without a deadline that
//! must run in the cloud while it is away are held in the edge's store and
//! answered when it returns; across an edge restart they are forwarded by
//! the new edge and their results retrieved by submitting the same id.

use agent_core::{Policy, Priority};
use agent_net::tls::{Side, TlsConfig};
use std::time::{Duration, Instant};
use tests::*;

async fn start_cloud_at(addr: &str) -> agent_net::CloudListeners {
    let mut c = defaults().cloud;
    c.listen_grpc = addr.into();
    c.listen_quic = String::new();
    c.tls = TlsConfig::from_dir(certs(), Side::Server);
    agent::cloud::start(&c).await.expect("cloud starts")
}

async fn wait_for(what: &str, mut ok: impl FnMut() -> bool) {
    let t0 = Instant::now();
    while !ok() {
        assert!(t0.elapsed() < Duration::from_secs(20), "timed out: {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

type Answer = tokio::task::JoinHandle<Result<proto::TaskResponse, tonic::Status>>;

/// Submits a digits image without a deadline; the answer comes later.
async fn submit(edge: &agent::edge::Edge, id: &str, i: usize) -> Answer {
    let mut c = client(edge).await;
    let pixels = test_set()[i].pixels.clone();
    let id = id.to_string();
    tokio::spawn(async move { send_image(&mut c, id, pixels, Priority::Low, None).await.0 })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn held_tasks_reach_the_cloud_when_it_returns_even_across_an_edge_restart() {
    let cloud_addr = dead_address();
    let dir = tempfile::Builder::new()
        .prefix("edge-store-test-")
        .tempdir()
        .unwrap();
    let mut cfg = defaults().edge;
    cfg.policy = Policy::AlwaysOffload;
    cfg.hedge_budget = 0.0;
    cfg.store.path = dir.path().join("store.redb").display().to_string();
    // The digits model runs locally too: hold it anyway, as for a task
    // type only the cloud can run.
    cfg.store.hold_runnable_locally = true;

    // The cloud is away: the tasks are held, none answered yet.
    let edge = start_edge(cfg.clone(), cloud_addr.clone()).await;
    let mut waiting = Vec::new();
    for i in 0..4 {
        waiting.push(submit(&edge, &format!("a-{i}"), i).await);
    }
    wait_for("4 tasks held", || edge.manager.stats().held == 4).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        waiting.iter().all(|w| !w.is_finished()),
        "nothing answered yet"
    );
    assert_eq!(edge.manager.stats().completed_local, 0);

    // The cloud returns: each waiting submitter gets its cloud result.
    let cloud = start_cloud_at(&cloud_addr).await;
    for (i, w) in waiting.into_iter().enumerate() {
        let r = tokio::time::timeout(Duration::from_secs(20), w)
            .await
            .expect("answered once the cloud is back")
            .unwrap()
            .expect("a result");
        assert!(r.success, "{r:?}");
        assert_eq!(r.task_id, format!("a-{i}"));
        assert!(r.processed_by.starts_with("cloud"), "{}", r.processed_by);
    }
    assert_eq!(edge.manager.stats().forwarded, 4);
    cloud.shutdown().await.unwrap();

    // Away again; three tasks held, then the edge stops: their submitters
    // are told the tasks are kept and how to get the results.
    let mut waiting = Vec::new();
    for i in 0..3 {
        waiting.push(submit(&edge, &format!("b-{i}"), 10 + i).await);
    }
    wait_for("3 more held", || edge.manager.stats().held == 7).await;
    edge.shutdown().await.unwrap();
    for w in waiting {
        // An accepted task's failure is answered in the response.
        let r = w.await.unwrap().expect("an answer");
        assert!(!r.success, "no result before the restart: {r:?}");
        assert_eq!(r.error_kind(), proto::ErrorKind::Unavailable, "{r:?}");
        assert!(
            r.error_message.contains("held in the edge's store"),
            "{r:?}"
        );
    }

    // A new edge on the same store; asking again for b-0 waits for it.
    let edge = start_edge(cfg.clone(), cloud_addr.clone()).await;
    let again = submit(&edge, "b-0", 10).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(!again.is_finished(), "still held while the cloud is away");
    let cloud = start_cloud_at(&cloud_addr).await;
    let r = tokio::time::timeout(Duration::from_secs(20), again)
        .await
        .expect("forwarded by the new edge")
        .unwrap()
        .expect("a result");
    assert!(r.success && r.processed_by.starts_with("cloud"), "{r:?}");
    wait_for("all three forwarded", || {
        edge.manager.stats().forwarded == 3
    })
    .await;
    // The other two were forwarded without anyone waiting: their results
    // are kept and answered at once, without another offload.
    for i in 1..3 {
        let t = Instant::now();
        let r = submit(&edge, &format!("b-{i}"), 10 + i)
            .await
            .await
            .unwrap()
            .expect("kept result");
        assert!(r.success && r.processed_by.starts_with("cloud"), "{r:?}");
        assert!(t.elapsed() < Duration::from_secs(2));
    }
    assert_eq!(edge.manager.stats().forwarded, 3, "no task sent twice");
    assert_eq!(edge.manager.stats().completed_local, 0);
    edge.shutdown().await.unwrap();
    cloud.shutdown().await.unwrap();
}
