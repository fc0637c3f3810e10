//! How an upload arrived, as the cloud's QUIC listener times it: the real
//! cloud service and the QUIC offload client in a network namespace made
//! for this test, whose loopback netem shapes to 8 Mbit/s with 10 ms of
//! delay each way. The bytes and time between a request's first and last
//! chunk must give the link's rate.
//! Needs root (namespaces, qdiscs), as `cargo xtask test` runs.

use agent_core::TaskType;
use agent_net::{OffloadConfig, OffloadRequest, Offloader, QuicClientConfig, QuicOffloader};
use tests::*;

const RATE_MBIT: f64 = 8.0;
const DELAY_MS: u64 = 10;

#[test]
fn the_cloud_times_an_upload_at_the_links_rate() {
    let ns = Netns::new("eut");
    // Ethernet-sized packets, as on a real uplink.
    ns.exec(&["ip", "link", "set", "lo", "mtu", "1500"]);
    ns.exec(&[
        "tc",
        "qdisc",
        "add",
        "dev",
        "lo",
        "root",
        "netem",
        "delay",
        &format!("{DELAY_MS}ms"),
        "rate",
        &format!("{RATE_MBIT}mbit"),
        "limit",
        "10000",
    ]);
    ns.block_on(scenario);
}

async fn scenario() {
    let cfg = agent::config::Config::load(None).expect("default config");
    let cloud = start_cloud(cfg.cloud.clone()).await;
    let material = client_material(certs(), certs());
    let quic_cfg = QuicClientConfig {
        max_message: 4 << 20,
        ..OffloadConfig::default().quic_client("localhost")
    };
    let quic = QuicOffloader::new(cloud.quic_addr.unwrap(), &material, quic_cfg).unwrap();
    let scenes: Vec<Vec<u8>> = workload_samples(6)
        .into_iter()
        .filter(|(t, _)| *t == TaskType::ObjectDetection)
        .map(|(_, jpeg)| jpeg)
        .collect();
    assert!(!scenes.is_empty());
    let request = |i: usize| OffloadRequest {
        request: proto::TaskRequest {
            id: format!("train{i}"),
            r#type: proto::TaskType::ObjectDetection as i32,
            payload: scenes[i % scenes.len()].clone(),
            priority: proto::Priority::Medium as i32,
            deadline_unix_nano: 0,
            context: Default::default(),
            features: None,
        },
        deadline: None,
    };
    // The handshake, the model's first run and the congestion controller's
    // start-up are not what is measured.
    for i in 0..6 {
        quic.offload(&request(i)).await.expect("warm-up offload");
    }
    let mut train_mbit = Vec::new();
    for i in 0..12 {
        let reply = quic.offload(&request(i)).await.expect("offload");
        let (bytes, time) = reply
            .upload_train()
            .unwrap_or_else(|| panic!("no upload train for {} bytes", reply.bytes_up));
        // The connection's bytes, headers included, while the request
        // arrived: about the request less its first chunk.
        assert!(
            bytes as f64 >= 0.5 * reply.bytes_up as f64
                && bytes as f64 <= 1.2 * reply.bytes_up as f64,
            "train of {bytes} bytes for a {}-byte request",
            reply.bytes_up
        );
        train_mbit.push(bytes as f64 * 8.0 / time.as_secs_f64() / 1e6);
    }
    train_mbit.sort_by(f64::total_cmp);
    let train = train_mbit[train_mbit.len() / 2];
    eprintln!("upload trains {train_mbit:.2?} Mbit/s");
    assert!(
        (train - RATE_MBIT).abs() <= 0.25 * RATE_MBIT,
        "upload trains read {train:.2} Mbit/s on a {RATE_MBIT} Mbit/s link: {train_mbit:.2?}"
    );
    cloud.shutdown().await.unwrap();
}
