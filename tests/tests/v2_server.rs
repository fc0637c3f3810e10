//! Our cloud's KServe V2 listener driven by a client nobody here wrote:
//! PyPI tritonclient (grpc), from `tests/v2/check_cloud_v2.py` and the
//! V2 contract check `deploy/mlserver/check_v2.py`. The Rust side prepares
//! each held-out sample with `agent::infer` (decode, resize, tokenize:
//! what the model takes), asks our cloud's `EdgeAIService` for its answer,
//! and writes both for the script, which sends the tensors over V2, reads
//! the raw outputs with numpy and must reach the same answers; plus
//! metadata, readiness and refusals (bad shape and datatype:
//! INVALID_ARGUMENT, unknown model: NOT_FOUND).

use agent::config::{CloudConfig, Config};
use agent::infer::{box_scale, input_tensor, prepare, OutputSpec, Vocab};
use agent_core::TaskType;
use agent_net::tls::{Side, TlsConfig};
use agent_net::wire::task_type_to_proto;
use proto::edge_ai_service_client::EdgeAiServiceClient;
use serde_json::json;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;
use tonic::transport::Channel;

const PER_TYPE: usize = 60;

/// The venv `cargo xtask setup` builds with tritonclient (and mlserver).
fn v2_python() -> PathBuf {
    let home = std::env::var_os("HOME").unwrap_or_else(|| "/root".into());
    let venv = PathBuf::from(home).join(".cache/edge-offload/v2-venv");
    let python = venv.join("bin/python");
    let ok = Command::new(&python)
        .args(["-c", "import tritonclient.grpc, numpy"])
        .status()
        .is_ok_and(|s| s.success());
    assert!(
        ok,
        "the KServe V2 test tools are missing: {} cannot import tritonclient.grpc; run \
         `cargo xtask setup` (it installs tritonclient, mlserver and torch there; `cargo xtask \
         test` runs it)",
        venv.display()
    );
    python
}

fn repo_root() -> PathBuf {
    datasets::resolve(Path::new("tests/v2"), None)
        .parent()
        .and_then(Path::parent)
        .expect("repository root")
        .to_path_buf()
}

fn payloads(digits: bool) -> Vec<(TaskType, Vec<u8>)> {
    if digits {
        tests::digit_samples(PER_TYPE)
    } else {
        tests::workload_samples(PER_TYPE)
    }
}

/// Writes `dir/cases.json` and `dir/<model>.bin`: every sample's input
/// tensor and the answer the cloud's EdgeAIService gives for it.
async fn write_cases(
    cfg: &CloudConfig,
    grpc: &mut EdgeAiServiceClient<Channel>,
    samples: Vec<(TaskType, Vec<u8>)>,
    dir: &Path,
) {
    std::fs::create_dir_all(dir).unwrap();
    let mut models = Vec::new();
    for t in TaskType::ALL {
        let Some(spec) = cfg.models.get(&t) else {
            continue;
        };
        let input = spec.input();
        let vocab = match &input {
            agent::infer::InputSpec::Text { vocab, .. } => Some(Vocab::load(vocab).unwrap()),
            _ => None,
        };
        let (datatype, dims) = agent::infer::input_signature(&input);
        let mut bytes = Vec::new();
        let mut cases = Vec::new();
        for (i, (_, payload)) in samples.iter().filter(|(s, _)| *s == t).enumerate() {
            let prepared = prepare(&input, payload, vocab.as_ref()).expect("sample prepares");
            let tensor = input_tensor(&prepared, &input);
            assert_eq!(tensor.datatype, datatype);
            bytes.extend_from_slice(&tensor.data);
            let want = grpc
                .offload_task(proto::TaskRequest {
                    id: format!("{}-{i}", t.as_str()),
                    r#type: task_type_to_proto(t) as i32,
                    payload: payload.clone(),
                    ..Default::default()
                })
                .await
                .expect("EdgeAIService answers")
                .into_inner();
            assert!(want.success);
            let (sx, sy) = box_scale(&prepared);
            cases.push(json!({
                "scale": [sx, sy],
                "expected": {
                    "class": want.predicted_class,
                    "confidence": want.confidence,
                    "label": want.label,
                    "boxes": want.boxes.iter().map(|b| json!({
                        "class": b.class_id, "label": b.label, "score": b.score,
                        "x1": b.x1, "y1": b.y1, "x2": b.x2, "y2": b.y2,
                    })).collect::<Vec<_>>(),
                },
            }));
        }
        assert!(cases.len() >= 50, "{}: {} samples", t.as_str(), cases.len());
        std::fs::write(dir.join(format!("{}.bin", spec.name)), bytes).unwrap();
        let (output, min_score) = match spec.output {
            OutputSpec::Logits => ("logits", 0.0),
            OutputSpec::Boxes { min_score } => ("boxes", min_score),
        };
        models.push(json!({
            "name": spec.name,
            "version": spec.version,
            "datatype": datatype.as_str(),
            "shape": dims[1..],
            "output": output,
            "min_score": min_score,
            "labels": spec.labels,
            "samples": cases,
        }));
    }
    let cases = json!({ "models": models });
    std::fs::write(
        dir.join("cases.json"),
        serde_json::to_vec_pretty(&cases).unwrap(),
    )
    .unwrap();
}

fn run_script(python: &Path, args: &[&str]) {
    let started = Instant::now();
    let out = Command::new(python)
        .args(args)
        .output()
        .expect("python runs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    eprintln!("{} ({:?}):\n{stdout}{stderr}", args[0], started.elapsed());
    assert!(out.status.success(), "{} failed", args[0]);
}

fn cloud_config(digits: bool, tls: bool) -> CloudConfig {
    let cfg = if digits {
        tests::defaults()
    } else {
        Config::load(None).expect("default config")
    };
    let mut c = cfg.cloud;
    c.listen_grpc = "127.0.0.1:0".into();
    c.listen_quic = String::new();
    c.listen_v2 = "127.0.0.1:0".into();
    c.concurrency = 2;
    c.tls = if tls {
        TlsConfig::from_dir(tests::certs(), Side::Server)
    } else {
        TlsConfig {
            insecure: true,
            ..Default::default()
        }
    };
    c
}

async fn edge_ai_client(addr: std::net::SocketAddr, tls: bool) -> EdgeAiServiceClient<Channel> {
    let ch = if tls {
        let t = TlsConfig::from_dir(tests::certs(), Side::Client)
            .load(Side::Client)
            .unwrap()
            .unwrap()
            .grpc_client("localhost");
        Channel::from_shared(format!("https://{addr}"))
            .unwrap()
            .tls_config(t)
            .unwrap()
            .connect()
            .await
    } else {
        Channel::from_shared(format!("http://{addr}"))
            .unwrap()
            .connect()
            .await
    };
    EdgeAiServiceClient::new(ch.expect("connection to the cloud service"))
}

/// A folder under the temp folder, removed when the guard drops (on a
/// failed assertion too).
fn temp_dir(name: &str) -> tempfile::TempDir {
    tempfile::Builder::new()
        .prefix(&format!("edge-offload-{name}-"))
        .tempdir()
        .unwrap()
}

/// The workload models over plaintext V2: our script, then the contract
/// check the MLServer deployment is held to.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn tritonclient_gets_the_cloud_answers_over_v2() {
    let python = v2_python();
    let started = Instant::now();
    let cfg = cloud_config(false, false);
    let cloud = agent::cloud::serve(&cfg).await.expect("cloud starts");
    let v2 = cloud.v2_addr().expect("V2 listener").to_string();
    let mut grpc = edge_ai_client(cloud.listeners.grpc_addr, false).await;
    let dir = temp_dir("v2-cases");
    write_cases(&cfg, &mut grpc, payloads(false), dir.path()).await;
    let root = repo_root();
    let script = root.join("tests/v2/check_cloud_v2.py");
    let max = cfg.max_payload_bytes.to_string();
    run_script(
        &python,
        &[
            script.to_str().unwrap(),
            "--url",
            &v2,
            "--cases",
            dir.path().to_str().unwrap(),
            "--server-version",
            env!("CARGO_PKG_VERSION"),
            "--max-bytes",
            &max,
        ],
    );
    let contract = root.join("deploy/mlserver/check_v2.py");
    if contract.exists() {
        run_script(
            &python,
            &[
                contract.to_str().unwrap(),
                "--url",
                &v2,
                "--models",
                "image_cloud,detect_cloud,text_cloud",
            ],
        );
    }
    cloud.shutdown().await.unwrap();
    eprintln!("done in {:?}", started.elapsed());
}

/// The digits model (FP32 grayscale input) over V2 with mutual TLS, the
/// cloud's gRPC listener's certificates.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn tritonclient_over_tls_digits() {
    let python = v2_python();
    let cfg = cloud_config(true, true);
    let cloud = agent::cloud::serve(&cfg).await.expect("cloud starts");
    let v2 = format!("localhost:{}", cloud.v2_addr().expect("V2 listener").port());
    let mut grpc = edge_ai_client(cloud.listeners.grpc_addr, true).await;
    let dir = temp_dir("v2-cases-digits");
    write_cases(&cfg, &mut grpc, payloads(true), dir.path()).await;
    let script = repo_root().join("tests/v2/check_cloud_v2.py");
    let max = cfg.max_payload_bytes.to_string();
    run_script(
        &python,
        &[
            script.to_str().unwrap(),
            "--url",
            &v2,
            "--cases",
            dir.path().to_str().unwrap(),
            "--tls-dir",
            tests::certs().to_str().unwrap(),
            "--max-bytes",
            &max,
        ],
    );
    cloud.shutdown().await.unwrap();
}
