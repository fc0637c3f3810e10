//! Clients that go away never cost the cloud service its capacity: a
//! request dropped while it waits for an inference slot gives its place in
//! the waiting line back.

use std::sync::Arc;
use std::time::Duration;
use tests::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn dropped_waiters_give_their_place_back() {
    let mut cfg = defaults();
    cfg.cloud.concurrency = 1;
    cfg.cloud.max_pending = 8;
    let handler = Arc::new(agent::cloud::handler_from_config(&cfg.cloud).unwrap());
    // Far more requests than places; every one is dropped mid-wait or
    // mid-inference by its caller.
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..200 {
        let h = handler.clone();
        tasks.spawn(async move { h.handle(digits_request(&format!("gone-{i}"))).await });
    }
    tokio::time::sleep(Duration::from_millis(5)).await;
    let refused_or_waiting = handler.waiting();
    assert!(refused_or_waiting <= 8, "{refused_or_waiting} waiting");
    tasks.abort_all();
    while tasks.join_next().await.is_some() {}
    assert_eq!(handler.waiting(), 0, "places leaked by dropped requests");
    // Full capacity is back: more than `max_pending` requests in a row all
    // get their answer.
    for i in 0..20 {
        let r = handler
            .handle(digits_request(&format!("ok-{i}")))
            .await
            .expect("served after the storm");
        assert!(r.success);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn impatient_grpc_clients_do_not_wedge_the_cloud() {
    let mut cfg = defaults();
    cfg.cloud.concurrency = 1;
    cfg.cloud.max_pending = 16;
    let cloud = start_cloud(cfg.cloud.clone()).await;
    let c = cloud_client(&cloud).await;
    // 1,500 requests that give up after 2 ms, 100 at a time.
    let gave_up = impatient_storm(&c).await;
    assert!(
        gave_up > 16,
        "only {gave_up} requests gave up: the storm is too weak"
    );
    // The abandoned requests leave the line once the server has read their
    // resets, which happens on other tasks than the next request's: the line
    // must drain within moments (before the fix it never did, and every
    // later request was refused with "16 requests already waiting").
    let mut c = c.clone();
    let drained = std::time::Instant::now() + Duration::from_secs(2);
    loop {
        match c.offload_task(digits_request("drained")).await {
            Ok(_) => break,
            Err(e) if e.code() == tonic::Code::ResourceExhausted => assert!(
                std::time::Instant::now() < drained,
                "the waiting line never drained: {e}"
            ),
            Err(e) => panic!("refused after the storm: {e}"),
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    // Then patient, valid requests are all served.
    for i in 0..40 {
        let r = c
            .offload_task(digits_request(&format!("patient-{i}")))
            .await
            .unwrap_or_else(|e| panic!("request {i} refused: {e}"))
            .into_inner();
        assert!(r.success, "{}", r.error_message);
    }
    cloud.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn impatient_clients_do_not_wedge_the_edge() {
    let mut cfg = defaults();
    cfg.edge.workers = 1;
    cfg.edge.queue_capacity = 64;
    let cloud = start_cloud(cfg.cloud.clone()).await;
    let edge = start_edge(cfg.edge.clone(), cloud.grpc_addr.to_string()).await;
    wait_reachable(&edge).await;
    let c = client(&edge).await;
    // 1,500 tasks that give up after 2 ms, 100 at a time: some queued
    // locally, some offloaded, some refused for a full queue.
    let gave_up = impatient_storm(&c).await;
    assert!(
        gave_up > 64,
        "only {gave_up} tasks gave up: the storm is too weak"
    );
    // Every task the edge accepted ended (answered or cancelled), and the
    // next valid tasks are served at once.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while edge.manager.outstanding() > 0 {
        assert!(
            std::time::Instant::now() < deadline,
            "accepted tasks never ended: {:?}",
            edge.manager.stats()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // Tasks whose submitters left are counted as cancelled, not failed.
    let s = edge.manager.stats();
    assert!(s.cancelled > 0, "{s:?}");
    let mut c = c.clone();
    for i in 0..40 {
        let started = std::time::Instant::now();
        let r = c
            .offload_task(digits_request(&format!("patient-{i}")))
            .await
            .unwrap_or_else(|e| panic!("task {i} refused: {e}"))
            .into_inner();
        assert!(r.success, "{}", r.error_message);
        assert!(
            started.elapsed() < Duration::from_secs(1),
            "task {i} was slow"
        );
    }
    assert_eq!(edge.manager.queue_len(), 0);
    edge.shutdown().await.unwrap();
    cloud.shutdown().await.unwrap();
}

/// Runs `session` on a runtime of its own thread and keeps what it returns
/// (a client, so its connection stays open), then stops running that
/// runtime until the returned sender is dropped: a client whose process
/// is stuck elsewhere, like a driver blocked between rounds. Its
/// connection stays open and answers nothing, not even the server's
/// closing ping.
fn freeze<F, Fut, T>(session: F) -> (std::sync::mpsc::Sender<()>, std::thread::JoinHandle<()>)
where
    F: FnOnce() -> Fut + Send + 'static,
    Fut: std::future::Future<Output = T>,
    T: 'static,
{
    let (release, released) = std::sync::mpsc::channel::<()>();
    let (ready_tx, ready) = std::sync::mpsc::channel();
    let thread = std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let kept = rt.block_on(session());
        ready_tx.send(()).unwrap();
        let _ = released.recv();
        drop(kept);
        drop(rt);
    });
    tokio::task::block_in_place(|| ready.recv()).expect("the frozen client's session");
    (release, thread)
}

/// Shuts `what` down, which must take about the servers' grace (5 s), not
/// forever.
async fn shuts_down_in_time(
    what: &str,
    shutdown: impl std::future::Future<Output = anyhow::Result<()>>,
) {
    let started = std::time::Instant::now();
    tokio::time::timeout(Duration::from_secs(30), shutdown)
        .await
        .unwrap_or_else(|_| panic!("{what}: a frozen client held up shutdown"))
        .unwrap();
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "{what}: shutdown took {:?}",
        started.elapsed()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_frozen_submitter_does_not_hold_up_the_edge_s_shutdown() {
    let cfg = defaults();
    let edge = start_edge(cfg.edge.clone(), dead_address()).await;
    let addr = edge.api_addr.to_string();
    let (release, frozen) = freeze(move || async move {
        let mut c = agent_net::task_api::connect(&addr).await.unwrap();
        let r = c.offload_task(digits_request("before")).await.unwrap();
        assert!(r.into_inner().success);
        c
    });
    shuts_down_in_time("edge", edge.shutdown()).await;
    drop(release);
    frozen.join().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_frozen_edge_does_not_hold_up_the_cloud_s_shutdown() {
    let cfg = defaults();
    let cloud = start_cloud(cfg.cloud.clone()).await;
    let grpc = cloud.grpc_addr;
    let (release, frozen) = freeze(move || async move {
        let mut c = cloud_client_at(grpc).await;
        let r = c.offload_task(digits_request("before")).await.unwrap();
        assert!(r.into_inner().success);
        c
    });
    shuts_down_in_time("cloud", cloud.shutdown()).await;
    drop(release);
    frozen.join().unwrap();
}
