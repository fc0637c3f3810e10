//! Configuration: a TOML file (every field optional) with CLI overrides.
//! `agent print-config` shows the defaults.

use crate::infer::{InputSpec, ModelSpec, OutputSpec, SplitPoint, SplitSpec};
use agent_core::{Policy, TaskType};
use agent_net::{OffloadConfig, TlsConfig};
use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::path::{Path, PathBuf};

#[derive(Debug, Clone, Serialize, Deserialize, Default)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    pub edge: EdgeConfig,
    pub cloud: CloudConfig,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct EdgeConfig {
    /// Task-submission API (gRPC EdgeAIService) address: host:port, or
    /// `unix:/path/to.sock` for a Unix socket (local: who may submit is who
    /// may write the socket file, see `api_socket_mode`). A non-loopback
    /// host:port needs `api_tls` (or `--insecure`).
    pub listen: String,
    /// Permissions of the task API's Unix socket file (e.g. 0o660: owner and
    /// group may submit).
    pub api_socket_mode: u32,
    /// Mutual TLS on the task API: the CA that must have signed the
    /// submitters' certificates, and the API's own certificate and key.
    /// Unset: plaintext, allowed on loopback and Unix sockets only.
    pub api_tls: Option<TlsConfig>,
    /// The cloud service's gRPC endpoint.
    pub cloud_grpc: String,
    /// The cloud service's QUIC endpoint, tried first; empty disables QUIC.
    pub cloud_quic: String,
    /// Name the cloud's certificate must carry (SNI and verification).
    pub cloud_server_name: String,
    /// Mutual TLS towards the cloud: CA, this gateway's certificate and key.
    pub tls: TlsConfig,
    /// Timeouts, retries, circuit breaker and QUIC failover.
    pub offload: OffloadConfig,
    /// Offload endpoints (`[[edge.endpoints]]`): any mix of our cloud
    /// service, KServe V2 servers (Triton, KServe, MLServer) and peer
    /// gateways. Each task goes to the endpoint predicted best for it.
    /// Empty: the one cloud service named by `cloud_grpc`/`cloud_quic`.
    pub endpoints: Vec<EndpointConfig>,
    /// Local inference workers (each owns a model instance).
    pub workers: usize,
    pub queue_capacity: usize,
    /// Payload bytes the local queue holds at most: large payloads fill
    /// memory long before `queue_capacity` tasks.
    pub queue_capacity_bytes: usize,
    pub max_concurrent_offloads: usize,
    /// Most tasks run on both paths (hedged), as a share of accepted
    /// tasks; 0 disables hedging.
    pub hedge_budget: f64,
    /// "auto", "cpu" or "cuda".
    pub device: String,
    /// libtorch intra-op threads; 1 keeps workers from oversubscribing cores.
    pub intra_op_threads: i32,
    /// A local task whose model is estimated at most this long (ms) runs on
    /// the thread that accepted it, sparing the hand-off to a worker thread
    /// and back, when a worker waits idle and nothing is queued; 0: always
    /// on a worker. Such a run holds an async runtime thread: keep it short.
    pub inline_max_ms: f64,
    /// A cgroup the local inference worker threads join at start (v1: a
    /// folder of the `cpu` hierarchy, or any other; v2: a threaded child
    /// of the agent's own cgroup). Its CPU quota then bounds local
    /// inference alone, not the task API and offloads beside it. The
    /// agent only joins it: whoever starts the agent creates it and sets
    /// its limits. Unset: the workers stay in the agent's cgroup. Loading
    /// the models and their first run (at start, and for a model update)
    /// happen outside it, and so do libtorch's intra-op threads when
    /// `intra_op_threads` is above 1.
    pub inference_cgroup: Option<PathBuf>,
    pub policy: Policy,
    /// Expected size of a response on the wire, for the download cost.
    pub response_bytes: usize,
    /// Cloud-side time assumed until offloads have been measured (ms).
    pub cloud_expected_ms: f64,
    pub probe: ProbeConfig,
    /// Admin HTTP listener: `GET /metrics` (Prometheus), `/healthz`,
    /// `/readyz`; unset means none. Plain HTTP: loopback unless `--insecure`.
    pub metrics_listen: Option<String>,
    /// Store and forward for tasks without a deadline while the cloud is
    /// unreachable (off unless `path` is set).
    pub store: crate::store::StoreConfig,
    /// Signed model updates swapped in without a restart.
    pub model_updates: crate::update::ModelUpdateConfig,
    /// Decision audit log: one JSON line per finished task with the whole
    /// explanation, appended to this file; unset: none.
    pub audit_log: Option<PathBuf>,
    /// Split computing: which of the models' split points the decision
    /// may use (a model's `split` section says where it can be cut).
    pub split: SplitConfig,
    pub models: HashMap<TaskType, ModelSpec>,
}

/// What the edge does with its models' split points.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SplitConfig {
    /// Weigh split offloads (head here, tail in the cloud) beside local
    /// and whole offloads; off: never split (the `split:<point>` policy
    /// still does).
    pub enabled: bool,
    /// The split points the decision may use, by name; empty: all.
    pub points: Vec<String>,
}

impl Default for SplitConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            points: Vec::new(),
        }
    }
}

/// What an offload endpoint is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EndpointKind {
    /// Our cloud service (`agent cloud`): QUIC first, gRPC fallback.
    #[default]
    Agent,
    /// A KServe V2 inference server (`inference.GRPCInferenceService`:
    /// NVIDIA Triton, KServe, MLServer, or our cloud's `listen_v2`): the
    /// edge prepares the model input and reads the raw output itself.
    V2,
    /// Another edge agent's task API. A task it receives from us runs
    /// there (locally) and is never offloaded again.
    Peer,
}

/// One offload endpoint.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EndpointConfig {
    /// Unique; names the endpoint in metrics, logs and decisions.
    pub name: String,
    #[serde(default)]
    pub kind: EndpointKind,
    /// gRPC address, host:port (our cloud's gRPC listener, the V2 server's
    /// gRPC port, or the peer's task API).
    pub address: String,
    /// `agent` only: the cloud's QUIC address, tried first; empty: none.
    #[serde(default)]
    pub quic: String,
    /// Name the endpoint's certificate must carry; unset: `cloud_server_name`.
    #[serde(default)]
    pub server_name: Option<String>,
    /// TLS towards this endpoint; unset: `edge.tls` (mutual TLS, or
    /// plaintext with its `insecure`).
    #[serde(default)]
    pub tls: Option<TlsConfig>,
    /// `v2` only: the server's model for each task type (its input and
    /// output are read with ModelMetadata); a task type without one is not
    /// sent there.
    #[serde(default)]
    pub models: HashMap<TaskType, String>,
}

impl EdgeConfig {
    /// The endpoints in use: `endpoints`, or the one cloud service of
    /// `cloud_grpc`/`cloud_quic` (named "cloud").
    pub fn endpoint_list(&self) -> Result<Vec<EndpointConfig>> {
        if self.endpoints.is_empty() {
            return Ok(vec![EndpointConfig {
                name: "cloud".into(),
                kind: EndpointKind::Agent,
                address: self.cloud_grpc.clone(),
                quic: self.cloud_quic.clone(),
                server_name: None,
                tls: None,
                models: HashMap::new(),
            }]);
        }
        let mut seen = std::collections::HashSet::new();
        for e in &self.endpoints {
            anyhow::ensure!(!e.name.is_empty(), "an endpoint has no name");
            anyhow::ensure!(
                seen.insert(e.name.as_str()),
                "endpoint name {:?} is used twice",
                e.name
            );
            anyhow::ensure!(
                !e.address.is_empty(),
                "endpoint {:?} has no address",
                e.name
            );
            anyhow::ensure!(
                e.kind == EndpointKind::Agent || e.quic.is_empty(),
                "endpoint {:?}: only kind \"agent\" has a QUIC address",
                e.name
            );
            anyhow::ensure!(
                e.kind == EndpointKind::V2 || e.models.is_empty(),
                "endpoint {:?}: only kind \"v2\" takes models",
                e.name
            );
            anyhow::ensure!(
                e.kind != EndpointKind::V2 || !e.models.is_empty(),
                "endpoint {:?}: a v2 endpoint needs `models` (task type = model name)",
                e.name
            );
        }
        Ok(self.endpoints.clone())
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ProbeConfig {
    /// Active probe period (TCP connect to the cloud endpoint).
    pub interval_ms: u64,
    /// Longest a probe may take; once the RTT is known a probe counts as
    /// lost after 4 x srtt + 50 ms (at least 150 ms), so a dead link is
    /// noticed within about a second.
    pub timeout_ms: u64,
    /// RTT samples kept per source (the jitter window).
    pub window: usize,
    /// ...for at most this long behind the source's newest sample.
    pub window_max_age_ms: u64,
    /// Samples older than this are stale.
    pub stale_after_ms: u64,
    /// Throughput assumed until offload transfers have been measured.
    pub default_bandwidth_mbit: f64,
    /// Measure the path passively with the eBPF programs when possible.
    pub passive: bool,
    /// The eBPF object, overriding the one embedded in the binary at build
    /// time; unset: `EDGE_AGENT_EBPF_OBJECT`, else the embedded object, else
    /// `target/bpf/agent-ebpf.o` near the working folder and the executable.
    pub ebpf_object: Option<PathBuf>,
    /// cgroup v2 folder whose TCP sockets sock_ops watches (default: the root).
    pub cgroup: Option<PathBuf>,
    /// Interface for the tc programs (TCP timestamps, QUIC spin bit); unset: none.
    pub tc_interface: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct CloudConfig {
    pub listen_grpc: String,
    /// QUIC listener (UDP); empty disables it.
    pub listen_quic: String,
    /// KServe V2 inference protocol listener (gRPC `GRPCInferenceService`,
    /// the same TLS as `listen_grpc`); empty disables it. Serves the cloud
    /// models as raw tensors (see ARCHITECTURE.md, "KServe V2").
    pub listen_v2: String,
    /// Concurrent streams per connection (QUIC bidirectional streams, HTTP/2 streams).
    pub max_concurrent_streams: u32,
    /// Mutual TLS: CA that signed the gateways' certificates, our certificate and key.
    pub tls: TlsConfig,
    /// Inferences run at once (one model instance each).
    pub concurrency: usize,
    /// Requests allowed to wait for a model; more are refused as overloaded.
    pub max_pending: usize,
    pub max_payload_bytes: usize,
    pub device: String,
    pub intra_op_threads: i32,
    /// Admin HTTP listener: `GET /metrics` (Prometheus), `/healthz`,
    /// `/readyz`; unset means none. Plain HTTP: loopback unless `--insecure`.
    pub metrics_listen: Option<String>,
    /// Signed model updates swapped in without a restart.
    pub model_updates: crate::update::ModelUpdateConfig,
    pub models: HashMap<TaskType, ModelSpec>,
}

/// Fashion-MNIST's classes: what the image models tell apart.
pub const FASHION_LABELS: [&str; 10] = [
    "t-shirt/top",
    "trouser",
    "pullover",
    "dress",
    "coat",
    "sandal",
    "shirt",
    "sneaker",
    "bag",
    "ankle boot",
];

fn model(
    path: &str,
    name: &str,
    input: Option<InputSpec>,
    output: OutputSpec,
    labels: &[&str],
    expected_ms: f64,
) -> ModelSpec {
    ModelSpec {
        path: PathBuf::from(path),
        name: name.into(),
        version: "1".into(),
        height: 8,
        width: 8,
        input,
        output,
        labels: labels.iter().map(|l| l.to_string()).collect(),
        expected_ms,
        max_batch: 1,
        max_batch_delay_ms: 0.0,
        split: None,
    }
}

/// The split manifest of the committed models (`models/export_splits.py`
/// writes it from the models it exports).
const SPLIT_MANIFEST: &str = include_str!("../../models/splits.toml");

#[derive(Deserialize)]
struct SplitManifest {
    model: Vec<ManifestModel>,
}

#[derive(Deserialize)]
struct ManifestModel {
    task_type: TaskType,
    file: String,
    full: String,
    full_ms: f64,
    point: Vec<SplitPoint>,
}

/// The split specs of a manifest, per task type; files relative to `dir`.
pub fn split_specs(manifest: &str, dir: &Path) -> Result<HashMap<TaskType, SplitSpec>> {
    let m: SplitManifest = toml::from_str(manifest).context("parsing the split manifest")?;
    Ok(m.model
        .into_iter()
        .map(|m| {
            let model = m.full.trim_end_matches(".pt").to_string();
            (
                m.task_type,
                SplitSpec {
                    path: dir.join(&m.file),
                    model,
                    full_ms: m.full_ms,
                    points: m.point,
                },
            )
        })
        .collect())
}

/// The workload models of one side (`edge` or `cloud`), one per task type
/// (models/README.md), with execution times assumed until measured; the
/// image classifier and the detector with the cloud models' split points
/// (`models/splits.toml`).
pub fn workload_models(side: &str, expected_ms: [f64; 3]) -> HashMap<TaskType, ModelSpec> {
    let mut splits = split_specs(SPLIT_MANIFEST, Path::new("models"))
        .expect("the committed split manifest parses");
    let image = |side_px: usize| {
        Some(InputSpec::Image {
            height: side_px,
            width: side_px,
            max_pixels: 4096 * 4096,
        })
    };
    HashMap::from([
        (
            TaskType::ImageClassification,
            model(
                &format!("models/image_{side}.pt"),
                &format!("image_{side}"),
                image(96),
                OutputSpec::Logits,
                &FASHION_LABELS,
                expected_ms[0],
            ),
        ),
        (
            TaskType::ObjectDetection,
            model(
                &format!("models/detect_{side}.pt"),
                &format!("detect_{side}"),
                image(256),
                OutputSpec::Boxes { min_score: 0.3 },
                &FASHION_LABELS,
                expected_ms[1],
            ),
        ),
        (
            TaskType::NlpAnalysis,
            model(
                &format!("models/text_{side}.pt"),
                &format!("text_{side}"),
                Some(InputSpec::Text {
                    vocab: PathBuf::from("models/text_vocab.txt"),
                    max_tokens: 64,
                    max_bytes: 16 * 1024,
                }),
                OutputSpec::Logits,
                &["rotten", "fresh"],
                expected_ms[2],
            ),
        ),
    ])
    .into_iter()
    .map(|(t, mut spec)| {
        spec.split = splits.remove(&t);
        (t, spec)
    })
    .collect()
}

/// The digits models (8x8 grayscale, image classification only): tiny and
/// fast, a smoke path for tests.
pub fn digits_models(side: &str, expected_ms: f64) -> HashMap<TaskType, ModelSpec> {
    HashMap::from([(
        TaskType::ImageClassification,
        model(
            &format!("models/digits_{side}.pt"),
            &format!("digits_{side}"),
            None,
            OutputSpec::Logits,
            &[],
            expected_ms,
        ),
    )])
}

impl Default for EdgeConfig {
    fn default() -> Self {
        Self {
            listen: "127.0.0.1:50061".into(),
            api_socket_mode: 0o660,
            api_tls: None,
            cloud_grpc: "127.0.0.1:50051".into(),
            cloud_quic: "127.0.0.1:50052".into(),
            cloud_server_name: "localhost".into(),
            tls: TlsConfig::default(),
            offload: OffloadConfig::default(),
            endpoints: Vec::new(),
            workers: 1,
            queue_capacity: 512,
            queue_capacity_bytes: 256 << 20,
            max_concurrent_offloads: 64,
            hedge_budget: 0.05,
            device: "auto".into(),
            intra_op_threads: 1,
            inline_max_ms: 0.2,
            inference_cgroup: None,
            policy: Policy::default(),
            response_bytes: 128,
            cloud_expected_ms: 10.0,
            probe: ProbeConfig::default(),
            metrics_listen: None,
            store: Default::default(),
            model_updates: Default::default(),
            audit_log: None,
            split: SplitConfig::default(),
            models: workload_models("edge", [15.0, 50.0, 1.0]),
        }
    }
}

impl Default for ProbeConfig {
    fn default() -> Self {
        Self {
            interval_ms: 100,
            timeout_ms: 1000,
            window: 60,
            window_max_age_ms: 5000,
            stale_after_ms: 3000,
            default_bandwidth_mbit: 100.0,
            passive: true,
            ebpf_object: None,
            cgroup: None,
            tc_interface: None,
        }
    }
}

impl Default for CloudConfig {
    fn default() -> Self {
        Self {
            listen_grpc: "127.0.0.1:50051".into(),
            listen_quic: "127.0.0.1:50052".into(),
            listen_v2: String::new(),
            max_concurrent_streams: 256,
            tls: TlsConfig::default(),
            concurrency: 2,
            max_pending: 256,
            max_payload_bytes: 1 << 20,
            device: "auto".into(),
            intra_op_threads: 1,
            metrics_listen: None,
            model_updates: Default::default(),
            models: workload_models("cloud", [8.0, 20.0, 3.0]),
        }
    }
}

impl Config {
    /// This configuration with the digits models on both sides, paths
    /// resolved (see [`digits_models`]), and their cloud time assumed.
    pub fn with_digits_models(mut self) -> Config {
        self.edge.models = digits_models("edge", 0.2);
        self.cloud.models = digits_models("cloud", 1.0);
        // The digits cloud model's server time, assumed until measured.
        self.edge.cloud_expected_ms = 2.0;
        for spec in self
            .edge
            .models
            .values_mut()
            .chain(self.cloud.models.values_mut())
        {
            spec.path = datasets::resolve(&spec.path, None);
        }
        self
    }

    /// A configuration file's text; absent fields keep their defaults,
    /// unknown ones are errors. Paths stay as written (see [`Config::load`]).
    pub fn parse(text: &str) -> Result<Config> {
        let cfg: Config = toml::from_str(text)?;
        for (key, ms) in [
            ("edge.inline_max_ms", cfg.edge.inline_max_ms),
            ("edge.cloud_expected_ms", cfg.edge.cloud_expected_ms),
        ] {
            if !(ms.is_finite() && ms >= 0.0) {
                anyhow::bail!("{key} must be a number of milliseconds, 0 or more (got {ms})");
            }
        }
        Ok(cfg)
    }

    /// Loads `path`, or the defaults when `None`; model paths are resolved.
    pub fn load(path: Option<&Path>) -> Result<Config> {
        let (mut cfg, base) = match path {
            Some(p) => {
                let text = std::fs::read_to_string(p)
                    .with_context(|| format!("reading config {}", p.display()))?;
                let cfg = Config::parse(&text)
                    .with_context(|| format!("parsing config {}", p.display()))?;
                (cfg, p.parent().map(Path::to_path_buf))
            }
            None => (Config::default(), None),
        };
        for spec in cfg
            .edge
            .models
            .values_mut()
            .chain(cfg.cloud.models.values_mut())
        {
            spec.path = datasets::resolve(&spec.path, base.as_deref());
            if let Some(split) = &mut spec.split {
                split.path = datasets::resolve(&split.path, base.as_deref());
            }
            if let Some(InputSpec::Text { vocab, .. }) = &mut spec.input {
                *vocab = datasets::resolve(vocab, base.as_deref());
            }
        }
        cfg.edge.tls.resolve_paths(base.as_deref());
        if let Some(t) = cfg.edge.api_tls.as_mut() {
            t.resolve_paths(base.as_deref());
        }
        cfg.cloud.tls.resolve_paths(base.as_deref());
        Ok(cfg)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_workload_models_carry_their_split_points() {
        let cfg = Config::default();
        let names = |t: TaskType, side: &HashMap<TaskType, ModelSpec>| -> Vec<String> {
            side[&t]
                .split
                .as_ref()
                .map(|s| s.points.iter().map(|p| p.name.clone()).collect())
                .unwrap_or_default()
        };
        for side in [&cfg.edge.models, &cfg.cloud.models] {
            assert_eq!(
                names(TaskType::ImageClassification, side),
                ["stride4", "stride8", "stride16", "stride32"]
            );
            assert_eq!(
                names(TaskType::ObjectDetection, side),
                ["stride2", "stride4"]
            );
            assert!(side[&TaskType::NlpAnalysis].split.is_none());
        }
        let image = cfg.cloud.models[&TaskType::ImageClassification].clone();
        let split = image.split.unwrap();
        assert_eq!(split.model, "image_cloud");
        assert!(split.full_ms > 0.0 && split.path.ends_with("image_cloud_split.pt"));
        assert_eq!(split.point("stride16").unwrap().shape, [128, 6, 6]);
        assert!(cfg.edge.split.enabled && cfg.edge.split.points.is_empty());
        let c: Config =
            toml::from_str("[edge.split]\nenabled = false\npoints = [\"stride8\"]\n").unwrap();
        assert!(!c.edge.split.enabled);
        assert_eq!(c.edge.split.points, ["stride8"]);
        assert!(toml::from_str::<Config>("[edge.split]\nbogus = 1\n").is_err());
    }

    #[test]
    fn partial_file_keeps_defaults_and_rejects_unknown_keys() {
        let cfg: Config = toml::from_str(
            r#"
            [edge]
            workers = 3
            policy = { kind = "threshold", max_rtt_ms = 30.0, max_jitter_ms = 5.0, min_local_wait_ms = 2.0 }
            "#,
        )
        .unwrap();
        assert_eq!(cfg.edge.workers, 3);
        assert_eq!(
            cfg.edge.queue_capacity,
            EdgeConfig::default().queue_capacity
        );
        assert_eq!(cfg.edge.policy.name(), "threshold");
        assert!(toml::from_str::<Config>("[edge]\nworkerz = 3\n").is_err());
    }

    #[test]
    fn tls_and_offload_sections_parse_and_paths_resolve_against_the_file() {
        let dir = std::env::temp_dir().join(format!("edge-cfg-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("agent.toml");
        std::fs::write(
            &file,
            "[edge]\ncloud_quic = \"\"\n[edge.tls]\nca = \"certs/ca.pem\"\ncert = \"certs/client.pem\"\n\
             key = \"certs/client.key\"\n[edge.offload]\nretries = 4\nquic_congestion = \"cubic\"\n\
             [cloud]\nlisten_quic = \"0.0.0.0:4433\"\n[cloud.tls]\ninsecure = true\n",
        )
        .unwrap();
        let cfg = Config::load(Some(&file)).unwrap();
        assert_eq!(cfg.edge.tls.ca, dir.join("certs/ca.pem"));
        assert_eq!(cfg.edge.offload.retries, 4);
        assert_eq!(
            cfg.edge.offload.breaker_failures,
            OffloadConfig::default().breaker_failures
        );
        assert!(cfg.edge.cloud_quic.is_empty() && cfg.cloud.tls.insecure);
        assert_eq!(cfg.cloud.listen_quic, "0.0.0.0:4433");
        assert!(toml::from_str::<Config>("[edge.tls]\ncert_file = \"x\"\n").is_err());
        assert!(toml::from_str::<Config>("[edge.offload]\nretry = 1\n").is_err());
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn defaults_round_trip_through_toml() {
        let text = toml::to_string(&Config::default()).unwrap();
        let back: Config = toml::from_str(&text).unwrap();
        assert_eq!(back.edge.listen, "127.0.0.1:50061");
        assert!(back
            .cloud
            .models
            .contains_key(&TaskType::ImageClassification));
    }
}

/// Property tests of configuration files: any text parses to a
/// configuration or fails, never panics; a configuration written out
/// parses back to the same one.
#[cfg(test)]
mod proptests {
    use super::*;
    use proptest::prelude::*;

    /// Compared through JSON: `Config` has no `PartialEq`, and its model
    /// maps come out of TOML in any order.
    fn same(a: &Config, b: &Config) -> bool {
        serde_json::to_value(a).unwrap() == serde_json::to_value(b).unwrap()
    }

    prop_compose! {
        fn config()(
            listen in "[a-z0-9.:]{0,20}",
            workers in 0..64usize,
            queue_capacity in any::<u32>(),
            hedge_budget in 0.0..1.0f64,
            device in prop::sample::select(vec!["auto", "cpu", "cuda"]),
            interval_ms in 0..i64::MAX as u64,
            passive in any::<bool>(),
            tc_interface in prop::option::of("[a-z0-9]{1,15}"),
            max_payload_bytes in 0..u32::MAX as usize,
            digits in any::<bool>(),
            side in 1..512usize,
        ) -> Config {
            let mut c = Config::default();
            if digits {
                c.edge.models = digits_models("edge", 0.2);
            }
            c.edge.listen = listen;
            c.edge.workers = workers;
            c.edge.queue_capacity = queue_capacity as usize;
            c.edge.hedge_budget = hedge_budget;
            c.edge.device = device.into();
            c.edge.probe.interval_ms = interval_ms;
            c.edge.probe.passive = passive;
            c.edge.probe.tc_interface = tc_interface;
            c.cloud.max_payload_bytes = max_payload_bytes;
            for spec in c.cloud.models.values_mut() {
                if let Some(InputSpec::Image { height, width, .. }) = &mut spec.input {
                    (*height, *width) = (side, side);
                }
            }
            c
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]

        #[test]
        fn configurations_round_trip_through_toml(c in config()) {
            let text = toml::to_string(&c).unwrap();
            let back = Config::parse(&text);
            prop_assert!(back.is_ok(), "{:?}\n{text}", back.err());
            prop_assert!(same(&back.unwrap(), &c), "{text}");
        }

        #[test]
        fn edited_configurations_parse_or_fail_without_panicking(
            c in config(),
            cut in any::<prop::sample::Index>(),
            insert in prop_oneof![".{0,12}", Just("= -1\n".to_string()), Just("\n[edge]\n".to_string())],
        ) {
            let text = toml::to_string(&c).unwrap();
            let mut at = cut.index(text.len() + 1);
            while !text.is_char_boundary(at) {
                at -= 1;
            }
            let _ = Config::parse(&text[..at]);
            let spliced = format!("{}{insert}{}", &text[..at], &text[at..]);
            if let Ok(back) = Config::parse(&spliced) {
                // Whatever parsed is a configuration that writes out and reads back.
                let again = Config::parse(&toml::to_string(&back).unwrap());
                prop_assert!(again.is_ok_and(|a| same(&a, &back)), "{spliced}");
            }
        }

        #[test]
        fn arbitrary_text_parses_or_fails_without_panicking(text in ".{0,300}") {
            if let Ok(c) = Config::parse(&text) {
                prop_assert!(toml::to_string(&c).is_ok());
            }
        }

        #[test]
        fn unknown_keys_are_refused(
            section in prop::sample::select(vec!["edge", "cloud", "edge.probe", "edge.offload", "cloud.tls"]),
            key in "zz_[a-z_]{0,10}",
        ) {
            let text = format!("[{section}]\n{key} = 1\n");
            prop_assert!(Config::parse(&text).is_err(), "{text}");
        }
    }
}
