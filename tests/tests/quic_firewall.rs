//! UDP blocked by a firewall: the cloud service and the edge agent run in a
//! network namespace made for this test, where an nftables rule drops
//! every datagram to the cloud's QUIC port. gRPC must take over with no
//! task lost; once the rule is gone, the QUIC probe brings QUIC back.
//! Needs root (namespaces, nftables), as `cargo xtask test` runs.

use agent_core::Policy;
use agent_core::{ExecPath, Priority, Task, TaskType, Transport};
use futures::future::join_all;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};
use tests::*;

async fn run_tasks(edge: &agent::edge::Edge, n: usize) -> Vec<agent_core::TaskResult> {
    let set = test_set();
    join_all((0..n).map(|i| {
        edge.manager.execute(Task {
            id: format!("fw{i}"),
            task_type: TaskType::ImageClassification,
            payload: set[i % set.len()].pixels.clone(),
            priority: Priority::Medium,
            deadline: None,
            created_at: Instant::now(),
            context: Default::default(),
        })
    }))
    .await
}

#[test]
fn nftables_drop_on_the_quic_port_grpc_takes_over_then_quic_returns() {
    let ns = Netns::new("eoq");
    let name = ns.0.clone();
    ns.block_on(move || scenario(name));
}

async fn scenario(ns: String) {
    let netns = |script: &str| sh(&["ip", "netns", "exec", &ns, "nft", script]);
    let mut cfg = defaults();
    cfg.edge.policy = Policy::AlwaysOffload;
    cfg.edge.offload.connect_timeout_ms = 300;
    cfg.edge.offload.quic_reprobe_min_ms = 200;
    cfg.edge.offload.quic_reprobe_max_ms = 400;
    let cloud = start_cloud(cfg.cloud.clone()).await;
    let quic = cloud.quic_addr.unwrap();
    netns("add table inet eoq");
    netns("add chain inet eoq input { type filter hook input priority 0; policy accept; }");
    netns(&format!(
        "add rule inet eoq input udp dport {} drop",
        quic.port()
    ));

    let edge = start_edge_quic(
        cfg.edge.clone(),
        cloud.grpc_addr.to_string(),
        quic.to_string(),
    )
    .await;
    let rs = run_tasks(&edge, 40).await;
    for r in &rs {
        assert!(r.outcome.is_ok(), "{r}");
        assert_eq!(
            (r.processed_by, r.transport),
            (Some(ExecPath::Cloud), Some(Transport::Grpc)),
            "{r}"
        );
        assert!(!r.fell_back);
    }
    let st = edge.manager.stats();
    assert_eq!(
        (st.accepted, st.completed_grpc, st.completed_quic, st.failed),
        (40, 40, 0, 0)
    );
    let fo = edge.failover.clone().unwrap();
    assert_eq!(fo.to_grpc.load(Ordering::Relaxed), 1);

    netns("delete table inet eoq");
    let t0 = Instant::now();
    while fo.to_quic.load(Ordering::Relaxed) == 0 {
        assert!(
            t0.elapsed() < Duration::from_secs(10),
            "QUIC never came back"
        );
        run_tasks(&edge, 1).await;
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let rs = run_tasks(&edge, 20).await;
    assert!(rs
        .iter()
        .all(|r| r.outcome.is_ok() && r.transport == Some(Transport::Quic)));
    edge.shutdown().await.unwrap();
    cloud.shutdown().await.unwrap();
}
