//! Split computing with the real parts: the committed split models through
//! the agent's own engine on the whole held-out sets, an edge that runs
//! heads and a cloud that runs tails over QUIC with mutual TLS, and the
//! cloud's checks of the features it is sent.

use agent::config::Config;
use agent::infer::{shared_exec_times, Engine, TorchEngine};
use agent_core::{Policy, Priority, Task, TaskType};
use agent_net::tls::{Side, TlsConfig};
use agent_net::{decode_features, encode_features, FeatureCodec};
use datasets::heldout;
use datasets::quality::{mean_ap, ScoredBox};
use std::collections::HashMap;
use std::time::{Duration, Instant, SystemTime};
use tests::*;

/// The default configuration's cloud models (the workload models, with
/// their split points), paths resolved.
fn cloud_engine(t: TaskType) -> (TorchEngine, agent::infer::SplitSpec) {
    let cfg = Config::load(None).expect("default config");
    let spec = cfg.cloud.models[&t].clone();
    let split = spec
        .split
        .clone()
        .expect("the cloud model has split points");
    let times = shared_exec_times(0.2, Duration::from_millis(10));
    let e = TorchEngine::load(&HashMap::from([(t, spec)]), tch::Device::Cpu, times)
        .expect("the split model loads and every point warms up");
    (e, split)
}

/// Head, then the features as the edge sends them (8-bit, zstd), then the
/// cloud's decoding and tail: the answer a split task gets.
fn through_the_wire(
    e: &mut TorchEngine,
    t: TaskType,
    point: &agent::infer::SplitPoint,
    payload: &[u8],
) -> agent_core::Output {
    let f = e.split_head(t, &point.name, payload).expect("head");
    let wire = agent::split::to_wire(&point.name, &f).expect("encodes");
    let (values, n) = decode_features(&wire, &point.shape, 1).expect("decodes");
    assert_eq!(n, 1);
    let source = (wire.source_width > 0).then_some((wire.source_width, wire.source_height));
    e.split_tail(t, &point.name, &values, source)
        .expect("tail")
        .output
}

#[test]
fn image_heads_and_tails_give_the_cloud_classifier() {
    let t = TaskType::ImageClassification;
    let set = heldout::images().expect("heldout_images.bin");
    let (mut e, split) = cloud_engine(t);
    let full: Vec<agent_core::Output> = set
        .iter()
        .map(|s| e.process(t, &s.jpeg).unwrap().output)
        .collect();
    let full_acc = accuracy(&full, &set);
    for point in &split.points {
        // Lossless features: the whole model's answer, to rounding.
        for (s, want) in set.iter().zip(&full).take(50) {
            let f = e.split_head(t, &point.name, &s.jpeg).unwrap();
            let wire =
                encode_features(&point.name, &f.shape, &f.values, FeatureCodec::F32Zstd).unwrap();
            let (values, _) = decode_features(&wire, &point.shape, 1).unwrap();
            let got = e.split_tail(t, &point.name, &values, None).unwrap().output;
            assert_eq!(got.class, want.class, "{}", point.name);
            assert!((got.confidence - want.confidence).abs() < 1e-4);
        }
        // As sent: 8-bit features.
        let split_out: Vec<_> = set
            .iter()
            .map(|s| through_the_wire(&mut e, t, point, &s.jpeg))
            .collect();
        let agree = split_out
            .iter()
            .zip(&full)
            .filter(|(a, b)| a.class == b.class)
            .count();
        let acc = accuracy(&split_out, &set);
        eprintln!(
            "image {}: accuracy {acc:.4} split, {full_acc:.4} whole; {agree}/{} answers agree",
            point.name,
            set.len()
        );
        assert!(
            full_acc - acc <= 0.005,
            "{}: {acc} split vs {full_acc}",
            point.name
        );
        assert!(agree * 100 >= set.len() * 98, "{}: {agree}", point.name);
        assert_eq!(split_out[0].model, "image_cloud");
    }
}

fn accuracy(out: &[agent_core::Output], set: &[heldout::LabelledImage]) -> f64 {
    let ok = out
        .iter()
        .zip(set)
        .filter(|(o, s)| o.class == i64::from(s.label))
        .count();
    ok as f64 / set.len() as f64
}

#[test]
fn detector_heads_and_tails_give_the_cloud_detector() {
    let t = TaskType::ObjectDetection;
    let set = heldout::scenes().expect("heldout_scenes.bin");
    let truths: Vec<_> = set.iter().map(|s| s.boxes.clone()).collect();
    let (mut e, split) = cloud_engine(t);
    let scored = |o: &agent_core::Output| -> Vec<ScoredBox> {
        o.boxes
            .iter()
            .map(|b| ScoredBox {
                x1: b.x1,
                y1: b.y1,
                x2: b.x2,
                y2: b.y2,
                score: b.score,
                class: b.class as u8,
            })
            .collect()
    };
    let full: Vec<_> = set
        .iter()
        .map(|s| scored(&e.process(t, &s.jpeg).unwrap().output))
        .collect();
    let full_map = mean_ap(&full, &truths, 10, 0.5);
    for point in &split.points {
        let dets: Vec<_> = set
            .iter()
            .map(|s| scored(&through_the_wire(&mut e, t, point, &s.jpeg)))
            .collect();
        let map = mean_ap(&dets, &truths, 10, 0.5);
        eprintln!(
            "detect {}: mAP@0.5 {map:.4} split, {full_map:.4} whole (the default min score)",
            point.name
        );
        assert!(
            full_map - map <= 0.005,
            "{}: {map} split vs {full_map}",
            point.name
        );
    }
}

fn edge_config(policy: Policy) -> agent::config::EdgeConfig {
    let mut cfg = Config::load(None).expect("default config").edge;
    cfg.policy = policy;
    cfg.tls = TlsConfig::from_dir(certs(), Side::Client);
    cfg.probe.interval_ms = 50;
    cfg
}

async fn cloud() -> agent_net::CloudListeners {
    let mut cfg = Config::load(None).expect("default config").cloud;
    cfg.listen_grpc = "127.0.0.1:0".into();
    cfg.listen_quic = "127.0.0.1:0".into();
    cfg.tls = TlsConfig::from_dir(certs(), Side::Server);
    agent::cloud::start(&cfg).await.expect("cloud starts")
}

/// A split policy through the real edge and cloud (QUIC, mutual TLS): each
/// task's head runs at the edge, its features cross, the cloud's tail
/// answers as the cloud model answers the whole task.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_edge_runs_heads_and_the_cloud_runs_tails() {
    let cloud = cloud().await;
    let mut direct = cloud_client(&cloud).await;
    let cases = [
        (TaskType::ImageClassification, "stride16"),
        (TaskType::ObjectDetection, "stride4"),
    ];
    for (t, point) in cases {
        let mut cfg = edge_config(Policy::SplitAt {
            point: point.into(),
        });
        cfg.cloud_grpc = cloud.grpc_addr.to_string();
        cfg.cloud_quic = cloud.quic_addr.expect("QUIC").to_string();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let edge = agent::edge::Edge::start(&cfg, Some(listener))
            .await
            .expect("edge starts");
        wait_reachable(&edge).await;
        let mut api = client(&edge).await;
        let samples: Vec<Vec<u8>> = workload_samples(20)
            .into_iter()
            .filter(|(tt, _)| *tt == t)
            .map(|(_, p)| p)
            .collect();
        let mut same = 0;
        for (i, payload) in samples.iter().enumerate() {
            let submission = agent_net::task_api::Submission {
                id: format!("split-{point}-{i}"),
                task_type: t,
                payload: payload.clone(),
                priority: Priority::Medium,
                deadline: Some(Duration::from_secs(5)),
            };
            let (r, _) = agent_net::task_api::send(&mut api, submission).await;
            let r = r.expect("accepted");
            assert!(r.success, "{r:?}");
            assert_eq!(r.processed_by, "cloud/quic", "{r:?}");
            assert!(!r.fell_back);
            let d = r.decision.clone().expect("decision");
            assert_eq!(d.split_point, point, "{d:?}");
            assert!(d.head_ms > 0.0, "{d:?}");
            // The whole task, straight to the cloud.
            let mut req = agent_net::wire::task_to_request(
                &Task {
                    id: format!("whole-{point}-{i}"),
                    task_type: t,
                    payload: payload.clone(),
                    priority: Priority::Medium,
                    deadline: None,
                    created_at: Instant::now(),
                    context: HashMap::new(),
                },
                Instant::now(),
                SystemTime::now(),
            );
            req.deadline_unix_nano = 0;
            let w = direct.offload_task(req).await.unwrap().into_inner();
            assert_eq!(r.model_name, w.model_name);
            if r.predicted_class == w.predicted_class && r.boxes.len() == w.boxes.len() {
                same += 1;
            }
            if let (Some(a), Some(b)) = (r.boxes.first(), w.boxes.first()) {
                // Boxes on the submitted image, as the whole model gives them.
                assert!((a.x1 - b.x1).abs() < 4.0 && (a.y2 - b.y2).abs() < 4.0);
            }
        }
        eprintln!(
            "{point}: {same}/{} answers as the whole model's",
            samples.len()
        );
        assert!(
            same + 1 >= samples.len(),
            "{point}: {same}/{}",
            samples.len()
        );
        let s = edge.manager.stats();
        assert_eq!(s.completed_local, 0);
        assert_eq!(s.completed_quic as usize, samples.len());
        edge.shutdown().await.unwrap();
    }
    cloud.shutdown().await.unwrap();
}

/// Features that do not fit the split point are refused with
/// INVALID_ARGUMENT before any model runs; a type without a split model is
/// unsupported.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cloud_refuses_features_that_do_not_fit() {
    let cloud = cloud().await;
    let mut direct = cloud_client(&cloud).await;
    let shape = [1i64, 128, 6, 6];
    let values = vec![0.5f32; 128 * 36];
    let good = encode_features("stride16", &shape, &values, FeatureCodec::U8Zstd).unwrap();
    let request = |id: &str, t: TaskType, f: proto::Features| proto::TaskRequest {
        id: id.into(),
        r#type: agent_net::wire::task_type_to_proto(t) as i32,
        payload: Vec::new(),
        priority: proto::Priority::Medium as i32,
        deadline_unix_nano: 0,
        context: Default::default(),
        features: Some(f),
    };
    // The good one is answered.
    let ok = direct
        .offload_task(request("good", TaskType::ImageClassification, good.clone()))
        .await
        .expect("answered")
        .into_inner();
    assert!(ok.success && ok.model_name == "image_cloud", "{ok:?}");

    let mut wrong_shape = good.clone();
    wrong_shape.shape = vec![1, 64, 12, 12];
    let mut unknown = good.clone();
    unknown.split_point = "stride3".into();
    let mut bomb = good.clone();
    bomb.data = zstd_of(&vec![0u8; 1 << 20]);
    let mut batch = good.clone();
    batch.shape = vec![2, 128, 6, 6];
    let mut with_payload = request("both", TaskType::ImageClassification, good.clone());
    with_payload.payload = vec![1, 2, 3];
    let cases = [
        (
            "shape",
            request("a", TaskType::ImageClassification, wrong_shape),
        ),
        (
            "point",
            request("b", TaskType::ImageClassification, unknown),
        ),
        ("bomb", request("c", TaskType::ImageClassification, bomb)),
        ("batch", request("d", TaskType::ImageClassification, batch)),
        ("both", with_payload),
    ];
    for (what, req) in cases {
        let e = direct.offload_task(req).await.expect_err(what);
        assert_eq!(e.code(), tonic::Code::InvalidArgument, "{what}: {e:?}");
    }
    let e = direct
        .offload_task(request("text", TaskType::NlpAnalysis, good))
        .await
        .expect_err("no split model for text");
    assert_eq!(e.code(), tonic::Code::Unimplemented, "{e:?}");
    cloud.shutdown().await.unwrap();
}

fn zstd_of(bytes: &[u8]) -> Vec<u8> {
    // Through the codec itself: f32 features of a large zero tensor.
    let values = vec![0f32; bytes.len() / 4];
    encode_features(
        "x",
        &[1, values.len() as i64],
        &values,
        FeatureCodec::F32Zstd,
    )
    .unwrap()
    .data
}
