//! The QUIC offload client and the real cloud service on either side of
//! the jitter lab's emulated link (two namespaces made for each test, the
//! userspace relay between them), whose uplink is narrow:
//! - how an upload arrived, as the cloud's listener times it: the bytes
//!   and time between a request's first chunk and the one that brought its
//!   furthest byte must give the link's rate;
//! - a request given up on (timed out) stops taking the uplink: the client
//!   resets its stream, so nothing more of it is sent or retransmitted.
//!
//! Needs root (namespaces, TUN devices), as `cargo xtask test` runs.

use agent_core::TaskType;
use agent_net::{
    OffloadConfig, OffloadError, OffloadRequest, Offloader, QuicClientConfig, QuicOffloader,
};
use jitter_lab::lab::{Backend, Lab, LabConfig, CLOUD_ADDR};
use jitter_lab::LinkParams;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tests::*;

const RATE_MBIT: f64 = 8.0;
const DELAY_MS: f64 = 10.0;

/// Runs the cloud in the lab's cloud namespace and `client` (given the
/// cloud's QUIC address and the lab) in its edge namespace, over a link of
/// `uplink` up and 10 ms of delay down.
fn across_lab<F, Fut>(tag: &str, uplink: LinkParams, client: F)
where
    F: FnOnce(SocketAddr, Arc<Lab>) -> Fut + Send + 'static,
    Fut: std::future::Future<Output = ()>,
{
    assert!(
        nix::unistd::geteuid().is_root(),
        "this test builds an emulated link (namespaces, TUN devices): run it as root (`cargo xtask test` does)"
    );
    let downlink = LinkParams {
        delay_ms: DELAY_MS,
        ..LinkParams::default()
    };
    let cfg = LabConfig::new(
        format!("{tag}{}", std::process::id()),
        Backend::Tun,
        1,
        uplink,
        downlink,
    );
    // Removed on drop, whichever way the test ends.
    let lab = Arc::new(Lab::create(&cfg, None).expect("the emulated link comes up"));
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
    let edge_ns = lab.edge_ns.clone();
    let for_client = lab.clone();
    block_on_in(&edge_ns, move || client(quic_addr, for_client));
    drop(stop_tx);
    cloud.join().expect("the cloud service stops cleanly");
}

fn quic_client(cloud_quic: SocketAddr) -> QuicOffloader {
    let material = client_material(certs(), certs());
    let quic_cfg = QuicClientConfig {
        max_message: 4 << 20,
        ..OffloadConfig::default().quic_client("localhost")
    };
    QuicOffloader::new(cloud_quic, &material, quic_cfg).unwrap()
}

fn detection_request(id: String, payload: Vec<u8>, deadline: Option<Duration>) -> OffloadRequest {
    OffloadRequest {
        request: proto::TaskRequest {
            id,
            r#type: proto::TaskType::ObjectDetection as i32,
            payload,
            priority: proto::Priority::Medium as i32,
            deadline_unix_nano: 0,
            context: Default::default(),
            features: None,
        },
        deadline: deadline.map(|d| Instant::now() + d),
    }
}

#[test]
fn the_cloud_times_an_upload_at_the_links_rate() {
    let uplink = LinkParams {
        delay_ms: DELAY_MS,
        rate_mbit: RATE_MBIT,
        ..LinkParams::default()
    };
    across_lab("eut", uplink, |addr, _| trains(addr));
}

async fn trains(cloud_quic: SocketAddr) {
    let quic = quic_client(cloud_quic);
    let scenes: Vec<Vec<u8>> = workload_samples(6)
        .into_iter()
        .filter(|(t, _)| *t == TaskType::ObjectDetection)
        .map(|(_, jpeg)| jpeg)
        .collect();
    assert!(!scenes.is_empty());
    let request =
        |i: usize| detection_request(format!("train{i}"), scenes[i % scenes.len()].clone(), None);
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

/// Uplink rate for the abandoned request: its 768 kB take about 3 s.
const NARROW_MBIT: f64 = 2.0;

#[test]
fn a_request_given_up_on_stops_taking_the_uplink() {
    let uplink = LinkParams {
        delay_ms: DELAY_MS,
        rate_mbit: NARROW_MBIT,
        ..LinkParams::default()
    };
    across_lab("eua", uplink, abandon);
}

/// Bytes the edge has offered the emulated uplink so far.
fn offered_up(lab: &Lab) -> u64 {
    lab.stats()["uplink"]["bytes"]
        .as_u64()
        .expect("the relay counts the uplink's bytes")
}

async fn abandon(cloud_quic: SocketAddr, lab: Arc<Lab>) {
    let quic = quic_client(cloud_quic);
    let scene = workload_samples(6)
        .into_iter()
        .find(|(t, _)| *t == TaskType::ObjectDetection)
        .expect("a detection sample")
        .1;
    // The connection is up and the model warm before the measure.
    quic.offload(&detection_request("warm".into(), scene, None))
        .await
        .expect("warm-up offload");
    // 768 kB (under the cloud's 1 MiB limit) at 2 Mbit/s: about 3 s on
    // the wire, given up on after 300 ms.
    let big = vec![0x5a; 768 << 10];
    let given_up = quic
        .offload(&detection_request(
            "big".into(),
            big,
            Some(Duration::from_millis(300)),
        ))
        .await;
    assert!(
        matches!(given_up, Err(OffloadError::Timeout)),
        "a 768 kB upload at {NARROW_MBIT} Mbit/s is not done in 300 ms: {given_up:?}"
    );
    // What was already in flight drains; then nothing more of it is sent.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let before = offered_up(&lab);
    tokio::time::sleep(Duration::from_secs(2)).await;
    let after = offered_up(&lab);
    let sent_kb = (after - before) as f64 / 1e3;
    eprintln!("offered to the uplink 0.8-2.8 s after giving up: {sent_kb:.1} kB");
    // Carried on, the rest of the request would offer about the link's
    // 500 kB in those 2 s.
    assert!(
        sent_kb < 50.0,
        "the abandoned request kept taking the uplink: {sent_kb:.1} kB offered in 2 s"
    );
}
