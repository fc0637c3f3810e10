//! The edge's KServe V2 client (`agent::v2::V2Offloader`) against real V2
//! servers with the real models: (a) our cloud's own V2 listener, (b) PyPI
//! MLServer serving the same TorchScript files (deploy/mlserver). For
//! every task type and held-out sample, the V2 answer must be the answer
//! our cloud's `EdgeAIService` gives for the same payload.

use agent::config::{CloudConfig, Config};
use agent::infer::ModelSpec;
use agent::v2::{V2Model, V2Offloader, V2Target};
use agent_core::{TaskError, TaskType, Transport};
use agent_net::tls::{Side, TlsConfig};
use agent_net::wire::task_type_to_proto;
use agent_net::{OffloadError, OffloadRequest, Offloader};
use proto::edge_ai_service_client::EdgeAiServiceClient;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};
use tonic::transport::{Channel, ClientTlsConfig};

/// Held-out samples per task type (the test stays well under a minute).
const PER_TYPE: usize = 60;

fn workload_samples() -> Vec<(TaskType, Vec<u8>)> {
    tests::workload_samples(PER_TYPE)
}

fn digit_samples() -> Vec<(TaskType, Vec<u8>)> {
    tests::digit_samples(PER_TYPE)
}

fn cloud_config(digits: bool) -> CloudConfig {
    let cfg = if digits {
        tests::defaults()
    } else {
        Config::load(None).expect("default config")
    };
    let mut c = cfg.cloud;
    c.listen_grpc = "127.0.0.1:0".into();
    c.listen_quic = String::new();
    c.listen_v2 = "127.0.0.1:0".into();
    c.tls = TlsConfig::from_dir(tests::certs(), Side::Server);
    c.concurrency = 2;
    c
}

/// The edge's specs (labels, vocabulary, min_score) for the cloud's models.
fn edge_specs(digits: bool) -> HashMap<TaskType, ModelSpec> {
    let cfg = if digits {
        tests::defaults()
    } else {
        Config::load(None).expect("default config")
    };
    cfg.edge.models
}

fn client_tls() -> ClientTlsConfig {
    TlsConfig::from_dir(tests::certs(), Side::Client)
        .load(Side::Client)
        .unwrap()
        .unwrap()
        .grpc_client("localhost")
}

/// V2 models named after the cloud's models, with the edge's specs.
fn target(
    address: String,
    tls: Option<ClientTlsConfig>,
    cloud: &CloudConfig,
    edge: &HashMap<TaskType, ModelSpec>,
) -> V2Target {
    V2Target {
        address,
        tls,
        connect_timeout: Duration::from_secs(2),
        keep_alive: (Duration::from_secs(10), Duration::from_secs(5)),
        max_message: 16 << 20,
        models: cloud
            .models
            .iter()
            .map(|(t, s)| {
                let model = V2Model {
                    name: s.name.clone(),
                    version: String::new(),
                    spec: edge[t].clone(),
                };
                (*t, model)
            })
            .collect(),
    }
}

fn request(id: String, t: TaskType, payload: Vec<u8>) -> OffloadRequest {
    OffloadRequest {
        request: proto::TaskRequest {
            id,
            r#type: task_type_to_proto(t) as i32,
            payload,
            ..Default::default()
        },
        deadline: Some(Instant::now() + Duration::from_secs(20)),
    }
}

/// The V2 answer equals the EdgeAIService answer: class and label equal,
/// confidence within 1e-4, boxes equal within 1e-3.
fn assert_same(what: &str, v2: &proto::TaskResponse, cloud: &proto::TaskResponse) {
    assert!(v2.success && cloud.success, "{what}: {v2:?} / {cloud:?}");
    assert_eq!(v2.predicted_class, cloud.predicted_class, "{what}: class");
    assert_eq!(v2.label, cloud.label, "{what}: label");
    assert!(
        (v2.confidence - cloud.confidence).abs() <= 1e-4,
        "{what}: confidence {} vs {}",
        v2.confidence,
        cloud.confidence
    );
    assert_eq!(v2.boxes.len(), cloud.boxes.len(), "{what}: boxes");
    for (a, b) in v2.boxes.iter().zip(&cloud.boxes) {
        assert_eq!(
            (a.class_id, &a.label),
            (b.class_id, &b.label),
            "{what}: box class"
        );
        for (x, y) in [
            (a.score, b.score),
            (a.x1, b.x1),
            (a.y1, b.y1),
            (a.x2, b.x2),
            (a.y2, b.y2),
        ] {
            assert!((x - y).abs() <= 1e-3, "{what}: box {a:?} vs {b:?}");
        }
    }
    assert_eq!(v2.model_name, cloud.model_name, "{what}: model");
    assert_eq!(v2.model_version, cloud.model_version, "{what}: version");
    assert_eq!(v2.processed_by, "cloud");
    let out: agent_core::Output = serde_json::from_slice(&v2.output).expect("output JSON");
    assert_eq!(out.class, i64::from(v2.predicted_class));
}

async fn edge_ai_client(addr: std::net::SocketAddr) -> EdgeAiServiceClient<Channel> {
    let ch = Channel::from_shared(format!("https://{addr}"))
        .unwrap()
        .tls_config(client_tls())
        .unwrap()
        .connect()
        .await
        .expect("TLS connection to the cloud service");
    EdgeAiServiceClient::new(ch)
}

/// Every sample through `v2` and through the cloud's EdgeAIService: the
/// same answers. Returns how many were compared per task type.
async fn compare(
    v2: &V2Offloader,
    cloud: &mut EdgeAiServiceClient<Channel>,
    samples: Vec<(TaskType, Vec<u8>)>,
) -> HashMap<TaskType, usize> {
    let mut counts = HashMap::new();
    for (i, (t, payload)) in samples.into_iter().enumerate() {
        let id = format!("{}-{i}", t.as_str());
        let req = request(id.clone(), t, payload);
        let reply = v2
            .offload(&req)
            .await
            .unwrap_or_else(|e| panic!("{id}: V2 offload failed: {e}"));
        assert_eq!(reply.transport, Transport::V2);
        assert_eq!(reply.response.task_id, id);
        assert!(reply.bytes_up > 0 && reply.bytes_down > 0);
        let want = cloud
            .offload_task(req.request.clone())
            .await
            .unwrap_or_else(|e| panic!("{id}: EdgeAIService failed: {e}"))
            .into_inner();
        assert_same(&id, &reply.response, &want);
        *counts.entry(t).or_insert(0) += 1;
    }
    counts
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn v2_client_against_our_cloud_matches_edge_ai_service() {
    let started = Instant::now();
    let cfg = cloud_config(false);
    let cloud = agent::cloud::serve(&cfg).await.expect("cloud starts");
    let v2_addr = cloud.v2_addr().expect("V2 listener");
    assert!(cloud.listening_line().ends_with(&format!(" v2={v2_addr}")));
    let edge = edge_specs(false);
    let v2 = V2Offloader::new(target(
        format!("localhost:{}", v2_addr.port()),
        Some(client_tls()),
        &cfg,
        &edge,
    ))
    .expect("V2 client");
    v2.ready().await.expect("ServerReady");
    let mut grpc = edge_ai_client(cloud.listeners.grpc_addr).await;
    let counts = compare(&v2, &mut grpc, workload_samples()).await;
    for t in TaskType::ALL {
        assert!(counts.get(&t).copied().unwrap_or(0) >= 50, "{counts:?}");
    }
    eprintln!("compared {counts:?} in {:?}", started.elapsed());

    // A payload that is no image is refused, as our cloud refuses it.
    let bad = v2
        .offload(&request(
            "bad".into(),
            TaskType::ImageClassification,
            b"not an image".to_vec(),
        ))
        .await;
    assert!(
        matches!(bad, Err(OffloadError::Rejected(TaskError::InvalidInput(_)))),
        "{bad:?}"
    );
    // Text that is not UTF-8 too.
    let bad = v2
        .offload(&request(
            "bad-text".into(),
            TaskType::NlpAnalysis,
            vec![0x66, 0xff],
        ))
        .await;
    assert!(
        matches!(bad, Err(OffloadError::Rejected(TaskError::InvalidInput(_)))),
        "{bad:?}"
    );

    // A model the server does not have, and a task type with no model.
    let mut unknown = target(
        format!("localhost:{}", v2_addr.port()),
        Some(client_tls()),
        &cfg,
        &edge,
    );
    unknown
        .models
        .get_mut(&TaskType::ImageClassification)
        .unwrap()
        .name = "no_such_model".into();
    unknown.models.remove(&TaskType::NlpAnalysis);
    let unknown = V2Offloader::new(unknown).unwrap();
    let images = datasets::heldout::images().unwrap();
    let r = unknown
        .offload(&request(
            "unknown".into(),
            TaskType::ImageClassification,
            images[0].jpeg.clone(),
        ))
        .await;
    assert!(
        matches!(
            r,
            Err(OffloadError::Rejected(TaskError::UnsupportedTaskType(_)))
        ),
        "{r:?}"
    );
    let r = unknown
        .offload(&request(
            "unconfigured".into(),
            TaskType::NlpAnalysis,
            b"fine".to_vec(),
        ))
        .await;
    assert!(
        matches!(
            r,
            Err(OffloadError::Rejected(TaskError::UnsupportedTaskType(_)))
        ),
        "{r:?}"
    );
    // A deadline that cannot be met is a timeout, never a hang.
    let mut late = request(
        "late".into(),
        TaskType::ObjectDetection,
        datasets::heldout::scenes().unwrap()[0].jpeg.clone(),
    );
    late.deadline = Some(Instant::now() + Duration::from_micros(200));
    let r = v2.offload(&late).await;
    assert!(
        matches!(
            r,
            Err(OffloadError::Timeout | OffloadError::Rejected(TaskError::DeadlineExceeded(_)))
        ),
        "{r:?}"
    );

    // The server goes away: a transport failure, not a refusal.
    cloud.shutdown().await.expect("cloud shuts down");
    let r = v2
        .offload(&request(
            "after".into(),
            TaskType::ImageClassification,
            images[1].jpeg.clone(),
        ))
        .await;
    assert!(
        matches!(
            r,
            Err(OffloadError::Transport { .. } | OffloadError::Connect { .. })
        ),
        "{r:?}"
    );
    assert!(r.unwrap_err().is_retryable());
    let r = v2.ready().await;
    assert!(
        matches!(
            r,
            Err(OffloadError::Transport { .. } | OffloadError::Connect { .. })
        ),
        "{r:?}"
    );
    eprintln!("done in {:?}", started.elapsed());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn v2_client_against_our_cloud_digits_grayscale() {
    let cfg = cloud_config(true);
    let cloud = agent::cloud::serve(&cfg).await.expect("cloud starts");
    let v2_addr = cloud.v2_addr().expect("V2 listener");
    let v2 = V2Offloader::new(target(
        format!("localhost:{}", v2_addr.port()),
        Some(client_tls()),
        &cfg,
        &edge_specs(true),
    ))
    .unwrap();
    let mut grpc = edge_ai_client(cloud.listeners.grpc_addr).await;
    let counts = compare(&v2, &mut grpc, digit_samples()).await;
    assert!(counts[&TaskType::ImageClassification] >= 50);
    // A grayscale payload of the wrong size.
    let r = v2
        .offload(&request(
            "short".into(),
            TaskType::ImageClassification,
            vec![0; 63],
        ))
        .await;
    assert!(
        matches!(r, Err(OffloadError::Rejected(TaskError::InvalidInput(_)))),
        "{r:?}"
    );
    cloud.shutdown().await.unwrap();
}

/// The venv `cargo xtask setup` builds with mlserver and tritonclient.
fn v2_venv() -> PathBuf {
    let home = std::env::var_os("HOME").unwrap_or_else(|| "/root".into());
    let venv = PathBuf::from(home).join(".cache/edge-offload/v2-venv");
    assert!(
        venv.join("bin/mlserver").exists(),
        "the KServe V2 test tools are missing: {} has no mlserver; run `cargo xtask setup` \
         (it installs mlserver, tritonclient and torch there; `cargo xtask test` runs it)",
        venv.display()
    );
    venv
}

fn repo_root() -> PathBuf {
    datasets::resolve(Path::new("deploy/mlserver"), None)
        .parent()
        .and_then(Path::parent)
        .expect("repository root")
        .to_path_buf()
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// MLServer in its own process group, killed (the whole group) on drop:
/// on every path, a failing assertion included.
struct MlServer {
    child: Child,
    dir: PathBuf,
}

impl Drop for MlServer {
    fn drop(&mut self) {
        let pgid = nix::unistd::Pid::from_raw(-(self.child.id() as i32));
        let _ = nix::sys::signal::kill(pgid, nix::sys::signal::Signal::SIGKILL);
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn start_mlserver(venv: &Path, grpc_port: u16) -> MlServer {
    use std::os::unix::process::CommandExt;
    let root = repo_root();
    let dir = std::env::temp_dir().join(format!("edge-offload-v2repo-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let status = Command::new(venv.join("bin/python"))
        .arg(root.join("deploy/mlserver/make_repository.py"))
        .arg(root.join("models"))
        .arg(&dir)
        .args(["--grpc-port", &grpc_port.to_string()])
        .args(["--http-port", &free_port().to_string()])
        .args(["--metrics-port", &free_port().to_string()])
        .args(["--only", "image_cloud,detect_cloud,text_cloud,digits_cloud"])
        .status()
        .expect("make_repository.py runs");
    assert!(status.success(), "make_repository.py failed");
    let log = std::fs::File::create(dir.join("mlserver.log")).unwrap();
    let child = Command::new(venv.join("bin/mlserver"))
        .args(["start", "."])
        .current_dir(&dir)
        .stdin(Stdio::null())
        .stdout(log.try_clone().unwrap())
        .stderr(log)
        .process_group(0)
        .spawn()
        .expect("mlserver starts");
    MlServer { child, dir }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn v2_client_against_mlserver_matches_our_cloud() {
    let started = Instant::now();
    let venv = v2_venv();
    let port = free_port();
    let mut server = start_mlserver(&venv, port);
    // Our cloud, for the answers to compare with (workload and digits models).
    let cfg = cloud_config(false);
    let cloud = agent::cloud::serve(&cfg).await.expect("cloud starts");
    let mut grpc = edge_ai_client(cloud.listeners.grpc_addr).await;
    let digits_cfg = cloud_config(true);
    let digits_cloud = agent::cloud::serve(&digits_cfg)
        .await
        .expect("cloud starts");
    let mut digits_grpc = edge_ai_client(digits_cloud.listeners.grpc_addr).await;

    let address = format!("127.0.0.1:{port}");
    let v2 = V2Offloader::new(target(address.clone(), None, &cfg, &edge_specs(false))).unwrap();
    let digits_v2 =
        V2Offloader::new(target(address, None, &digits_cfg, &edge_specs(true))).unwrap();
    let ready_by = Instant::now() + Duration::from_secs(90);
    loop {
        if v2.ready().await.is_ok() {
            break;
        }
        if let Ok(Some(status)) = server.child.try_wait() {
            let log = std::fs::read_to_string(server.dir.join("mlserver.log")).unwrap_or_default();
            panic!("mlserver exited ({status}) before it was ready:\n{log}");
        }
        assert!(Instant::now() < ready_by, "mlserver not ready within 90 s");
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    eprintln!("mlserver ready after {:?}", started.elapsed());
    let counts = compare(&v2, &mut grpc, workload_samples()).await;
    for t in TaskType::ALL {
        assert!(counts.get(&t).copied().unwrap_or(0) >= 50, "{counts:?}");
    }
    let digits = compare(&digits_v2, &mut digits_grpc, digit_samples()).await;
    assert!(digits[&TaskType::ImageClassification] >= 50);
    // Refusals from a server we did not write map the same way.
    let bad = v2
        .offload(&request(
            "bad".into(),
            TaskType::ImageClassification,
            b"not an image".to_vec(),
        ))
        .await;
    assert!(
        matches!(bad, Err(OffloadError::Rejected(TaskError::InvalidInput(_)))),
        "{bad:?}"
    );
    let mut unknown = target(format!("127.0.0.1:{port}"), None, &cfg, &edge_specs(false));
    unknown
        .models
        .get_mut(&TaskType::ImageClassification)
        .unwrap()
        .name = "no_such_model".into();
    let r = V2Offloader::new(unknown)
        .unwrap()
        .offload(&request(
            "unknown".into(),
            TaskType::ImageClassification,
            datasets::heldout::images().unwrap()[0].jpeg.clone(),
        ))
        .await;
    assert!(
        matches!(
            r,
            Err(OffloadError::Rejected(TaskError::UnsupportedTaskType(_)))
        ),
        "{r:?}"
    );
    eprintln!(
        "compared {counts:?} and {digits:?} in {:?}",
        started.elapsed()
    );
    drop(server);
    let r = v2
        .offload(&request(
            "after".into(),
            TaskType::ImageClassification,
            datasets::heldout::images().unwrap()[1].jpeg.clone(),
        ))
        .await;
    assert!(
        matches!(
            r,
            Err(OffloadError::Transport { .. } | OffloadError::Connect { .. })
        ),
        "{r:?}"
    );
    cloud.shutdown().await.unwrap();
    digits_cloud.shutdown().await.unwrap();
}
