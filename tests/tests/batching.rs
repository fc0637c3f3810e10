//! Dynamic batching with the real services and models: a burst of tasks of
//! a batching model runs in batches (tasks of one batch report the same
//! inference time), on the edge's local workers and in the cloud, and
//! every task gets the answer it would get alone.

use agent::infer::{shared_exec_times, Engine, TorchEngine};
use agent_core::{Policy, Priority, TaskType};
use std::collections::{HashMap, HashSet};
use std::time::Duration;
use tests::*;

/// The answers of the digits classifier run one task at a time.
fn alone(spec: &agent::infer::ModelSpec, n: usize) -> Vec<i64> {
    let specs = HashMap::from([(TaskType::ImageClassification, spec.clone())]);
    let times = shared_exec_times(0.2, Duration::from_millis(1));
    let mut e = TorchEngine::load(&specs, tch::Device::Cpu, times).unwrap();
    test_set()
        .iter()
        .take(n)
        .map(|s| {
            e.process(TaskType::ImageClassification, &s.pixels)
                .unwrap()
                .output
                .class
        })
        .collect()
}

/// Sends `n` tasks at once; returns (class, inference time) per task.
async fn burst(
    send: impl Fn(usize) -> tokio::task::JoinHandle<proto::TaskResponse>,
    n: usize,
) -> Vec<(i64, i64)> {
    let handles: Vec<_> = (0..n).map(send).collect();
    let mut out = Vec::new();
    for h in handles {
        let r = h.await.unwrap();
        assert!(r.success, "{}", r.error_message);
        out.push((i64::from(r.predicted_class), r.inference_nano));
    }
    out
}

fn batches(answers: &[(i64, i64)]) -> usize {
    answers.iter().map(|a| a.1).collect::<HashSet<_>>().len()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn bursts_run_in_batches_with_the_answers_of_single_runs() {
    const N: usize = 48;
    let mut cloud_cfg = defaults().cloud;
    cloud_cfg.concurrency = 1;
    let spec = cloud_cfg
        .models
        .get_mut(&TaskType::ImageClassification)
        .unwrap();
    spec.max_batch = 8;
    spec.max_batch_delay_ms = 5.0;
    let cloud_expected = alone(spec, N);
    let cloud = start_cloud(cloud_cfg).await;

    // The cloud: 48 requests at once through one inference slot.
    let client = cloud_client(&cloud).await;
    let set = test_set();
    let answers = burst(
        |i| {
            let mut c = client.clone();
            let mut req = digits_request(&format!("c-{i}"));
            req.payload = set[i].pixels.clone();
            tokio::spawn(async move { c.offload_task(req).await.unwrap().into_inner() })
        },
        N,
    )
    .await;
    let classes: Vec<i64> = answers.iter().map(|a| a.0).collect();
    assert_eq!(
        classes, cloud_expected,
        "batched answers differ from single runs"
    );
    let runs = batches(&answers);
    assert!(
        runs <= N / 2,
        "cloud: {N} requests in {runs} runs: not batched"
    );

    // The edge: local workers batch the same way.
    let mut cfg = defaults().edge;
    cfg.policy = Policy::AlwaysLocal;
    cfg.hedge_budget = 0.0;
    cfg.workers = 1;
    let spec = cfg.models.get_mut(&TaskType::ImageClassification).unwrap();
    spec.max_batch = 8;
    spec.max_batch_delay_ms = 5.0;
    let edge_expected = alone(spec, N);
    let edge = start_edge(cfg, cloud.grpc_addr.to_string()).await;
    let c = client_of(&edge).await;
    let answers = burst(
        |i| {
            let mut c = c.clone();
            let pixels = set[i].pixels.clone();
            tokio::spawn(async move {
                send_image(&mut c, format!("e-{i}"), pixels, Priority::Medium, None)
                    .await
                    .0
                    .unwrap()
            })
        },
        N,
    )
    .await;
    let classes: Vec<i64> = answers.iter().map(|a| a.0).collect();
    assert_eq!(
        classes, edge_expected,
        "batched answers differ from single runs"
    );
    let runs = batches(&answers);
    assert!(runs <= N / 2, "edge: {N} tasks in {runs} runs: not batched");
    assert_eq!(edge.manager.stats().failed, 0);
    edge.shutdown().await.unwrap();
    cloud.shutdown().await.unwrap();
}

async fn client_of(edge: &agent::edge::Edge) -> agent_net::task_api::TaskApiClient {
    client(edge).await
}
