//! How an upload arrived, as the cloud's QUIC listener times it: the real
//! cloud service and the QUIC offload client on either side of the jitter
//! lab's emulated link (two namespaces made for this test, the userspace
//! relay between them), whose uplink carries 8 Mbit/s with 10 ms of delay
//! each way. The bytes and time between a request's first chunk and the
//! one that brought its furthest byte must give the link's rate.
//! Needs root (namespaces, TUN devices), as `cargo xtask test` runs.

use agent_core::TaskType;
use agent_net::{OffloadConfig, OffloadRequest, Offloader, QuicClientConfig, QuicOffloader};
use jitter_lab::lab::{Backend, Lab, LabConfig, CLOUD_ADDR};
use jitter_lab::LinkParams;
use std::net::SocketAddr;
use std::time::Duration;
use tests::*;

const RATE_MBIT: f64 = 8.0;
const DELAY_MS: f64 = 10.0;

#[test]
fn the_cloud_times_an_upload_at_the_links_rate() {
    assert!(
        nix::unistd::geteuid().is_root(),
        "this test builds an emulated link (namespaces, TUN devices): run it as root (`cargo xtask test` does)"
    );
    let uplink = LinkParams {
        delay_ms: DELAY_MS,
        rate_mbit: RATE_MBIT,
        ..LinkParams::default()
    };
    let downlink = LinkParams {
        delay_ms: DELAY_MS,
        ..LinkParams::default()
    };
    let cfg = LabConfig::new(
        format!("eut{}", std::process::id()),
        Backend::Tun,
        1,
        uplink,
        downlink,
    );
    // Removed on drop, whichever way the test ends.
    let lab = Lab::create(&cfg, None).expect("the emulated link comes up");
    let (addr_tx, addr_rx) = std::sync::mpsc::channel();
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let cloud_ns = lab.cloud_ns.clone();
    let cloud = std::thread::spawn(move || {
        block_on_in(&cloud_ns, || async move {
            let cfg = agent::config::Config::load(None).expect("default config");
            let cloud = start_cloud_on(cfg.cloud, CLOUD_ADDR).await;
            addr_tx.send(cloud.quic_addr.unwrap()).unwrap();
            // Released when the client is done or has panicked.
            let _ = stop_rx.await;
            cloud.shutdown().await.unwrap();
        })
    });
    let quic_addr = addr_rx
        .recv_timeout(Duration::from_secs(60))
        .expect("the cloud service starts in its namespace");
    block_on_in(&lab.edge_ns, move || client(quic_addr));
    drop(stop_tx);
    cloud.join().expect("the cloud service stops cleanly");
}

async fn client(cloud_quic: SocketAddr) {
    let material = client_material(certs(), certs());
    let quic_cfg = QuicClientConfig {
        max_message: 4 << 20,
        ..OffloadConfig::default().quic_client("localhost")
    };
    let quic = QuicOffloader::new(cloud_quic, &material, quic_cfg).unwrap();
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
}
