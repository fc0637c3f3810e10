//! Helpers for the integration tests in tests/tests/: real cloud service,
//! real edge agent, real models, real sockets on loopback.

use agent::config::{CloudConfig, Config, EdgeConfig};
use agent::edge::Edge;
use agent_net::tls::{self, Side, TlsConfig};
use agent_net::CloudListeners;
use datasets::digits::Sample;
use proto::edge_ai_service_client::EdgeAiServiceClient;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use tonic::transport::Channel;

/// The default configuration with the digits models: the tests that
/// exercise the agent's machinery use the smallest, fastest models
/// (tests/tests/workload_models.rs covers the workload models).
pub fn defaults() -> Config {
    Config::load(None)
        .expect("default config")
        .with_digits_models()
}

/// The first `per_type` held-out payloads of each workload model
/// (images, scenes, reviews), with their task types.
pub fn workload_samples(per_type: usize) -> Vec<(agent_core::TaskType, Vec<u8>)> {
    use agent_core::TaskType;
    let images = datasets::heldout::images().expect("heldout_images.bin");
    let scenes = datasets::heldout::scenes().expect("heldout_scenes.bin");
    let reviews = datasets::heldout::reviews().expect("heldout_text.jsonl");
    let images = images
        .into_iter()
        .take(per_type)
        .map(|s| (TaskType::ImageClassification, s.jpeg));
    let scenes = scenes
        .into_iter()
        .take(per_type)
        .map(|s| (TaskType::ObjectDetection, s.jpeg));
    let reviews = reviews
        .into_iter()
        .take(per_type)
        .map(|r| (TaskType::NlpAnalysis, r.text.into_bytes()));
    images.chain(scenes).chain(reviews).collect()
}

/// The first `n` digits of the held-out set as image classification payloads.
pub fn digit_samples(n: usize) -> Vec<(agent_core::TaskType, Vec<u8>)> {
    test_set()
        .into_iter()
        .take(n)
        .map(|s| (agent_core::TaskType::ImageClassification, s.pixels))
        .collect()
}

pub fn test_set() -> Vec<Sample> {
    datasets::digits::load_default().expect("models/digits_test.bin")
}

/// A development CA and certificates (`agent gen-certs`), made once per
/// test process under the temp folder.
pub fn certs() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| gen_dir("ca"))
}

/// A second, unrelated CA with its own certificates.
pub fn other_ca_certs() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| gen_dir("other-ca"))
}

/// Removes what test processes that have ended left under the temp
/// folder as `{prefix}{pid}{suffix}`. What a process makes once for its
/// whole life (held in a static, which is never dropped) cannot be removed
/// by a guard; the next test process removes it here.
fn sweep_ended(prefix: &str, suffix: &str) {
    let Ok(entries) = std::fs::read_dir(std::env::temp_dir()) else {
        return;
    };
    for e in entries.flatten() {
        let file = e.file_name();
        let pid = file
            .to_str()
            .and_then(|f| f.strip_prefix(prefix))
            .and_then(|f| f.strip_suffix(suffix))
            .filter(|p| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()));
        if pid.is_some_and(|p| !Path::new("/proc").join(p).exists()) {
            let path = e.path();
            let _ = if path.is_dir() {
                std::fs::remove_dir_all(&path)
            } else {
                std::fs::remove_file(&path)
            };
        }
    }
}

fn gen_dir(name: &str) -> PathBuf {
    let prefix = format!("edge-offload-test-{name}-");
    sweep_ended(&prefix, "");
    let d = std::env::temp_dir().join(format!("{prefix}{}", std::process::id()));
    tls::gen_certs(&d, &[]).expect("generating test certificates");
    d
}

/// Starts the cloud service on loopback (gRPC and QUIC on free ports),
/// with mutual TLS from [`certs`] unless `cfg.tls` is set.
pub async fn start_cloud(cfg: CloudConfig) -> CloudListeners {
    start_cloud_on(cfg, "127.0.0.1").await
}

/// [`start_cloud`] on `host` (an address of the namespace it runs in).
pub async fn start_cloud_on(mut cfg: CloudConfig, host: &str) -> CloudListeners {
    cfg.listen_grpc = format!("{host}:0");
    if !cfg.listen_quic.is_empty() {
        cfg.listen_quic = format!("{host}:0");
    }
    if cfg.tls == TlsConfig::default() {
        cfg.tls = TlsConfig::from_dir(certs(), Side::Server);
    }
    agent::cloud::start(&cfg)
        .await
        .expect("cloud service starts")
}

/// An edge offloading over gRPC only (mutual TLS from [`certs`]).
pub async fn start_edge(mut cfg: EdgeConfig, cloud_grpc: String) -> Edge {
    cfg.cloud_quic = String::new();
    start_edge_with(cfg, cloud_grpc).await
}

/// An edge offloading over QUIC first, gRPC as fallback.
pub async fn start_edge_quic(cfg: EdgeConfig, cloud_grpc: String, cloud_quic: String) -> Edge {
    let mut cfg = cfg;
    cfg.cloud_quic = cloud_quic;
    start_edge_with(cfg, cloud_grpc).await
}

async fn start_edge_with(mut cfg: EdgeConfig, cloud_grpc: String) -> Edge {
    cfg.cloud_grpc = cloud_grpc;
    if cfg.tls == TlsConfig::default() {
        cfg.tls = TlsConfig::from_dir(certs(), Side::Client);
    }
    cfg.probe.interval_ms = 50;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    Edge::start(&cfg, Some(listener))
        .await
        .expect("edge starts")
}

/// An address on loopback where nothing listens.
pub fn dead_address() -> String {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap();
    drop(l);
    addr.to_string()
}

/// A gRPC client of the cloud service itself, with the test CA's client certificate.
pub async fn cloud_client(cloud: &CloudListeners) -> EdgeAiServiceClient<Channel> {
    cloud_client_at(cloud.grpc_addr).await
}

/// [`cloud_client`] of the cloud service at `grpc_addr`.
pub async fn cloud_client_at(grpc_addr: std::net::SocketAddr) -> EdgeAiServiceClient<Channel> {
    let tls = TlsConfig::from_dir(certs(), Side::Client)
        .load(Side::Client)
        .unwrap()
        .unwrap()
        .grpc_client("localhost");
    let ch = Channel::from_shared(format!("https://{grpc_addr}"))
        .unwrap()
        .tls_config(tls)
        .unwrap()
        .connect()
        .await
        .expect("TLS connection to the cloud service");
    EdgeAiServiceClient::new(ch)
}

/// TLS material with the CA of `trust` and the client certificate of `identity`.
pub fn client_material(trust: &Path, identity: &Path) -> tls::TlsMaterial {
    let read = |p: PathBuf| std::fs::read(p).unwrap();
    tls::TlsMaterial::from_pem(
        &read(trust.join(tls::CA_FILE)),
        &read(identity.join(tls::CLIENT_CERT)),
        &read(identity.join(tls::CLIENT_KEY)),
    )
    .unwrap()
}

/// [`defaults`] as a configuration file, for agents started as processes.
pub fn defaults_file() -> &'static Path {
    static FILE: OnceLock<PathBuf> = OnceLock::new();
    FILE.get_or_init(|| {
        sweep_ended("edge-offload-test-config-", ".toml");
        let path = std::env::temp_dir().join(format!(
            "edge-offload-test-config-{}.toml",
            std::process::id()
        ));
        let text = toml::to_string(&defaults()).expect("the configuration serializes");
        std::fs::write(&path, text).expect("writing the test configuration");
        path
    })
}

/// The `agent` binary next to this test's build (`cargo build --release
/// -p agent` first; `cargo xtask test` does).
pub fn agent_binary() -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    let bin = exe
        .parent()
        .and_then(Path::parent)
        .map(|d| d.join("agent"))
        .unwrap();
    assert!(
        bin.exists(),
        "{} missing: run `cargo build --release -p agent` first",
        bin.display()
    );
    bin
}

pub async fn client(edge: &Edge) -> EdgeAiServiceClient<Channel> {
    agent_net::task_api::connect(&edge.api_addr.to_string())
        .await
        .unwrap()
}

pub async fn wait_reachable(edge: &Edge) {
    for _ in 0..200 {
        if edge.manager.network_status().reachable {
            return;
        }
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    panic!("cloud never became reachable");
}

/// Sends one image classification task through the task API; returns the
/// answer and the latency the submitter saw.
pub async fn send_image(
    client: &mut agent_net::task_api::TaskApiClient,
    id: String,
    pixels: Vec<u8>,
    priority: agent_core::Priority,
    deadline: Option<std::time::Duration>,
) -> (
    Result<proto::TaskResponse, tonic::Status>,
    std::time::Duration,
) {
    let submission = agent_net::task_api::Submission {
        id,
        task_type: agent_core::TaskType::ImageClassification,
        payload: pixels,
        priority,
        deadline,
    };
    agent_net::task_api::send(client, submission).await
}

/// A valid digits image-classification request (the first test image).
pub fn digits_request(id: &str) -> proto::TaskRequest {
    proto::TaskRequest {
        id: id.into(),
        r#type: proto::TaskType::ImageClassification as i32,
        payload: test_set()[0].pixels.clone(),
        priority: proto::Priority::Medium as i32,
        deadline_unix_nano: 0,
        context: Default::default(),
        features: None,
    }
}

/// 1,500 digits requests through `client` that give up after 2 ms, 100 at
/// a time; returns how many gave up.
pub async fn impatient_storm(client: &EdgeAiServiceClient<Channel>) -> usize {
    let mut gave_up = 0;
    for round in 0..15 {
        let mut batch = tokio::task::JoinSet::new();
        for i in 0..100 {
            let mut c = client.clone();
            let req = digits_request(&format!("impatient-{round}-{i}"));
            batch.spawn(async move {
                tokio::time::timeout(std::time::Duration::from_millis(2), c.offload_task(req))
                    .await
                    .is_err()
            });
        }
        while let Some(r) = batch.join_next().await {
            gave_up += usize::from(r.unwrap());
        }
    }
    gave_up
}

/// A network namespace made for one test, with its loopback up, deleted
/// (with its qdiscs and nftables rules) on drop.
pub struct Netns(pub String);

impl Netns {
    /// `prefix` names the test; the process id makes it unique.
    pub fn new(prefix: &str) -> Netns {
        assert!(
            nix::unistd::geteuid().is_root(),
            "this test creates a network namespace: run it as root (`cargo xtask test` does)"
        );
        let name = format!("{prefix}{}", std::process::id());
        let _ = std::process::Command::new("ip")
            .args(["netns", "del", &name])
            .status();
        sh(&["ip", "netns", "add", &name]);
        let ns = Netns(name);
        ns.exec(&["ip", "link", "set", "lo", "up"]);
        ns
    }

    /// Runs a command inside the namespace; it must succeed.
    pub fn exec(&self, args: &[&str]) {
        let mut all = vec!["ip", "netns", "exec", &self.0];
        all.extend_from_slice(args);
        sh(&all);
    }

    /// [`block_on_in`] this namespace.
    pub fn block_on<F, Fut>(&self, f: F)
    where
        F: FnOnce() -> Fut + Send + 'static,
        Fut: std::future::Future<Output = ()>,
    {
        block_on_in(&self.0, f)
    }
}

/// Runs `f` on a runtime whose every thread starts inside the named
/// network namespace, so every socket it opens lives there; a panic in it
/// is the caller's.
pub fn block_on_in<F, Fut>(ns: &str, f: F)
where
    F: FnOnce() -> Fut + Send + 'static,
    Fut: std::future::Future<Output = ()>,
{
    let ns_file = std::fs::File::open(format!("/var/run/netns/{ns}")).unwrap();
    let result = std::thread::spawn(move || {
        nix::sched::setns(&ns_file, nix::sched::CloneFlags::CLONE_NEWNET).expect("setns");
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(4)
            .enable_all()
            .build()
            .unwrap()
            .block_on(f())
    })
    .join();
    if let Err(panic) = result {
        std::panic::resume_unwind(panic);
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = std::process::Command::new("ip")
            .args(["netns", "del", &self.0])
            .status();
    }
}

/// Runs a command; it must succeed.
pub fn sh(args: &[&str]) {
    let st = std::process::Command::new(args[0])
        .args(&args[1..])
        .status()
        .unwrap_or_else(|e| panic!("{args:?}: {e}"));
    assert!(st.success(), "{args:?} failed: {st}");
}
