//! The edge agent assembled from its parts: monitor + probes -> manager
//! (decision, local workers, offloader) -> the task-submission API.

use crate::config::EdgeConfig;
use crate::infer::torch_engines;
use crate::manager::{EndpointParts, Manager, ManagerConfig, ManagerParts};
use crate::metrics::Role;
use crate::store::TaskStore;
use agent_core::LinkConfig;
use agent_net::tls::TlsMaterial;
use agent_net::wire::{error_to_status, result_to_response, task_from_request};
use agent_net::{FailoverStats, StackHealth};
use agent_probe::{ActiveProbe, EbpfProbe};
use anyhow::{ensure, Context};
use proto::edge_ai_service_server::{EdgeAiService, EdgeAiServiceServer};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};
use tokio::net::{TcpListener, UnixListener};
use tokio::task::JoinHandle;
use tokio_stream::StreamExt;
use tokio_util::sync::CancellationToken;
use tonic::{Request, Response, Status};

/// Where the task API listens; shown as host:port or `unix:/path`, the
/// form `agent submit --edge` and `task_api::connect` take.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ApiAddr {
    Tcp(SocketAddr),
    Unix(PathBuf),
}

impl std::fmt::Display for ApiAddr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ApiAddr::Tcp(a) => write!(f, "{a}"),
            ApiAddr::Unix(p) => write!(f, "{}{}", agent_net::task_api::UNIX_PREFIX, p.display()),
        }
    }
}

/// The task API's Unix socket file, removed when the server is done.
struct SocketFile(PathBuf);

impl Drop for SocketFile {
    fn drop(&mut self) {
        if let Err(e) = std::fs::remove_file(&self.0) {
            if e.kind() != std::io::ErrorKind::NotFound {
                tracing::warn!(
                    "could not remove the task API socket {}: {e}",
                    self.0.display()
                );
            }
        }
    }
}

/// Binds the task API's Unix socket at `path` with permissions `mode`. A
/// socket file left by an agent that is gone is replaced; one where an
/// agent still answers, or a file that is not a socket, is an error.
fn bind_unix(path: &Path, mode: u32) -> anyhow::Result<(UnixListener, SocketFile)> {
    use std::os::unix::fs::{FileTypeExt, PermissionsExt};
    if let Ok(meta) = std::fs::symlink_metadata(path) {
        ensure!(
            meta.file_type().is_socket(),
            "{} exists and is not a socket: refusing to replace it with the task API's",
            path.display()
        );
        match std::os::unix::net::UnixStream::connect(path) {
            Ok(_) => anyhow::bail!(
                "another process serves on {}: is an edge agent already running?",
                path.display()
            ),
            Err(_) => {
                tracing::info!("removing the stale task API socket {}", path.display());
                std::fs::remove_file(path)
                    .with_context(|| format!("removing the stale socket {}", path.display()))?;
            }
        }
    }
    let listener = UnixListener::bind(path)
        .with_context(|| format!("binding the task API on {}", path.display()))?;
    let file = SocketFile(path.to_path_buf());
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
        .with_context(|| format!("setting mode {mode:o} on {}", path.display()))?;
    Ok((listener, file))
}

pub struct Edge {
    pub manager: Arc<Manager>,
    pub api_addr: ApiAddr,
    /// QUIC <-> gRPC switches and probes; `None` when QUIC is not in use.
    pub failover: Option<Arc<FailoverStats>>,
    /// The attached eBPF probe; dropping it (after the background tasks,
    /// which share it) detaches the programs.
    /// (Behind a mutex: the probe is not `Sync`; the sampler reads its
    /// drop counters once a second.)
    pub passive: Option<Arc<std::sync::Mutex<EbpfProbe>>>,
    /// Signed model updates (`None` without `model_updates.dir`).
    pub models: Option<Arc<crate::update::ModelUpdater>>,
    api: JoinHandle<anyhow::Result<()>>,
    /// Stops the task API (first, so no new work arrives while the
    /// manager drains) and, as its parent, every background task.
    api_stop: CancellationToken,
    stop: CancellationToken,
    background: Vec<JoinHandle<()>>,
}

/// Loads and attaches the passive probe for the offload endpoints, or says
/// once why not (`None`: active probing only). Needs no runtime, so the
/// `edge` command can do it, and drop privileges, before starting one.
pub fn load_probe(cfg: &EdgeConfig) -> Option<EbpfProbe> {
    crate::passive::load(&cfg.probe, &endpoint_hosts(cfg))
}

/// The addresses the passive probe watches: every offload endpoint's.
fn endpoint_hosts(cfg: &EdgeConfig) -> Vec<std::net::IpAddr> {
    use std::net::ToSocketAddrs;
    let endpoints = cfg.endpoint_list().unwrap_or_default();
    let mut ips: Vec<_> = endpoints
        .iter()
        .flat_map(|e| [e.address.as_str(), e.quic.as_str()])
        .filter(|a| !a.is_empty())
        .filter_map(|a| a.to_socket_addrs().ok())
        .flatten()
        .map(|a| a.ip())
        .collect();
    ips.sort();
    ips.dedup();
    ips
}

/// The gauges the admin listener samples every second: the queue, the
/// network figures, the offload stack's state, the probe's losses.
fn sample_gauges(
    manager: &Manager,
    queue_capacity: usize,
    health: Option<&StackHealth>,
    failover: Option<&FailoverStats>,
    passive: Option<&std::sync::Mutex<EbpfProbe>>,
) {
    crate::metrics::record_queue_len(manager.queue_len(), queue_capacity);
    crate::metrics::record_network(&manager.network_status());
    crate::metrics::record_endpoints(&manager.endpoint_statuses());
    if let Some(health) = health {
        crate::metrics::record_offload_health(health, failover);
    }
    if let Some(p) = passive {
        let stats = p.lock().unwrap_or_else(|e| e.into_inner()).stats();
        crate::metrics::record_probe_drops(&stats);
    }
}

/// `/readyz` of the edge: the models are loaded (the manager runs) and an
/// estimate of an offload endpoint exists (at least one RTT sample).
fn readiness(manager: &Manager, stopping: &CancellationToken) -> Result<(), String> {
    if stopping.is_cancelled() {
        return Err("shutting down".into());
    }
    let statuses = manager.endpoint_statuses();
    if !statuses.is_empty() && statuses.iter().all(|(_, s)| s.source.is_none()) {
        let names: Vec<&str> = statuses.iter().map(|(n, _)| n.as_str()).collect();
        return Err(format!(
            "no estimate of the cloud yet: no RTT sample from any offload endpoint ({})",
            names.join(", ")
        ));
    }
    Ok(())
}

impl Edge {
    /// Starts everything; `listener` overrides `cfg.listen` (tests pass port 0).
    /// `cfg.listen` may be `unix:/path/to.sock`.
    /// The passive probe is loaded here, in a running runtime, so capability
    /// dropping is left to the `edge` command (see [`Edge::start_with_probe`]).
    pub async fn start(cfg: &EdgeConfig, listener: Option<TcpListener>) -> anyhow::Result<Edge> {
        let probe = load_probe(cfg);
        Self::start_with_probe(cfg, listener, probe).await
    }

    /// Starts everything around a probe loaded (or not) beforehand.
    pub async fn start_with_probe(
        cfg: &EdgeConfig,
        listener: Option<TcpListener>,
        mut passive: Option<EbpfProbe>,
    ) -> anyhow::Result<Edge> {
        tch::set_num_threads(cfg.intra_op_threads.max(1));
        if cfg.inference_cgroup.is_some() && cfg.intra_op_threads > 1 {
            // The pool's threads start with the models' first runs, on
            // the thread loading them, before any worker joins.
            tracing::warn!(
                intra_op_threads = cfg.intra_op_threads,
                "libtorch's intra-op threads run outside the inference cgroup: keep \
                 intra_op_threads at 1 for its quota to bound local inference"
            );
        }
        let listener = match (listener, agent_net::task_api::unix_path(&cfg.listen)) {
            (Some(l), _) => ApiListener::Tcp(l),
            (None, Some(path)) => {
                let (l, file) = bind_unix(path, cfg.api_socket_mode)?;
                ApiListener::Unix(l, file)
            }
            (None, None) => ApiListener::Tcp(
                TcpListener::bind(&cfg.listen)
                    .await
                    .with_context(|| format!("binding the task API on {}", cfg.listen))?,
            ),
        };
        let api_addr = match &listener {
            ApiListener::Tcp(l) => ApiAddr::Tcp(l.local_addr()?),
            ApiListener::Unix(_, file) => ApiAddr::Unix(file.0.clone()),
        };
        let api_tls = api_access(cfg, &api_addr)?;
        let stop = CancellationToken::new();
        // A start that fails stops whatever it started already.
        let stop_on_error = stop.clone().drop_guard();
        // Serving from the start: /healthz while the models load, /readyz
        // once they have and the cloud has been measured.
        let mut admin = match &cfg.metrics_listen {
            Some(addr) => Some(
                crate::admin::Admin::start(addr, cfg.tls.insecure, Role::Edge, stop.clone())
                    .await
                    .with_context(|| format!("metrics endpoint on {addr}"))?,
            ),
            None => None,
        };
        let endpoints = crate::endpoints::build(cfg).await?;
        let link = LinkConfig {
            window: cfg.probe.window,
            window_max_age: Duration::from_millis(cfg.probe.window_max_age_ms),
            stale_after: Duration::from_millis(cfg.probe.stale_after_ms),
            default_bandwidth_bps: cfg.probe.default_bandwidth_mbit * 1e6,
            ..LinkConfig::default()
        };
        let hosts: Vec<std::net::IpAddr> = endpoints.iter().map(|e| e.addr.ip()).collect();
        let monitor = crate::monitor::spawn(link, &hosts, stop.clone());
        // One active probe per endpoint (TCP connect to its gRPC port).
        let probe_tasks: Vec<JoinHandle<()>> = endpoints
            .iter()
            .map(|e| {
                let probe = ActiveProbe {
                    target: e.addr,
                    interval: Duration::from_millis(cfg.probe.interval_ms),
                    timeout: Duration::from_millis(cfg.probe.timeout_ms),
                    passive_fresh_for: Duration::from_millis(cfg.probe.stale_after_ms / 2),
                };
                tokio::spawn(probe.run(
                    monitor.events.clone(),
                    monitor.statuses[&e.addr.ip()].clone(),
                    stop.clone(),
                ))
            })
            .collect();
        let passive_task = match passive.as_mut() {
            Some(p) => crate::passive::forward(p, monitor.events.clone(), stop.clone()),
            None => None,
        };
        if passive_task.is_none() {
            passive = None;
        }
        let passive = passive.map(|p| Arc::new(std::sync::Mutex::new(p)));

        // The first endpoint's stack is the one the failover statistics and
        // the breaker gauges describe (the cloud, with one endpoint).
        let failover = endpoints.first().and_then(|e| e.stack.failover.clone());
        let health = endpoints.first().map(|e| e.stack.health.clone());
        let endpoint_parts: Vec<EndpointParts> = endpoints
            .into_iter()
            .map(|e| EndpointParts {
                net: monitor.statuses[&e.addr.ip()].clone(),
                dest: e.addr.ip(),
                peer: e.cfg.kind == crate::config::EndpointKind::Peer,
                splits: e.cfg.kind == crate::config::EndpointKind::Agent,
                name: e.cfg.name,
                offloader: e.stack.offloader,
                health: Some(e.stack.health),
                serves: e.serves,
            })
            .collect();
        // Connect to every endpoint now, in the background: the first tasks
        // must not wait for a handshake (with mutual TLS, under the edge's
        // CPU quota) that the agent could have made before they came.
        for e in &endpoint_parts {
            let (offloader, name, stop) = (e.offloader.clone(), e.name.clone(), stop.clone());
            tokio::spawn(async move {
                if let Some(Err(err)) = stop.run_until_cancelled(offloader.ready()).await {
                    tracing::info!(endpoint = %name, error = %err, "no connection at start");
                }
            });
        }
        let times = Arc::new(Mutex::new(crate::manager::exec_times(
            Duration::from_millis(1),
        )));
        // Split models are loaded only where they may be used.
        let mut models = cfg.models.clone();
        if !cfg.split.enabled && cfg.policy.fixed_split().is_none() {
            for spec in models.values_mut() {
                spec.split = None;
            }
        }
        let factory = torch_engines(models.clone(), &cfg.device, times.clone())?;
        let store = TaskStore::open(&cfg.store)?.map(Arc::new);
        if let Some(s) = &store {
            let c = s.counts();
            tracing::info!(
                path = %cfg.store.path,
                held = c.pending,
                results = c.results,
                "task store open"
            );
        }
        let manager = Arc::new(Manager::start(
            ManagerConfig {
                workers: cfg.workers,
                queue_capacity: cfg.queue_capacity,
                queue_capacity_bytes: cfg.queue_capacity_bytes,
                max_concurrent_offloads: cfg.max_concurrent_offloads,
                policy: cfg.policy.clone(),
                response_bytes: cfg.response_bytes,
                cloud_expected: Duration::from_secs_f64(cfg.cloud_expected_ms / 1e3),
                hedge_budget: cfg.hedge_budget,
                hold_runnable_locally: cfg.store.hold_runnable_locally,
                split: cfg.split.clone(),
                inline_max: Duration::from_secs_f64(cfg.inline_max_ms.max(0.0) / 1e3),
                inference_cgroup: cfg
                    .inference_cgroup
                    .as_deref()
                    .map(crate::cpu::InferenceCgroup::open)
                    .transpose()?,
            },
            ManagerParts {
                local_specs: models,
                engine_factory: factory,
                local_times: times.clone(),
                endpoints: endpoint_parts,
                probe_events: monitor.events.clone(),
                store,
                audit: cfg
                    .audit_log
                    .as_deref()
                    .map(crate::audit::AuditLog::open)
                    .transpose()?,
            },
        )?);

        let mut background: Vec<JoinHandle<()>> =
            probe_tasks.into_iter().chain(passive_task).collect();
        crate::update::record_versions("edge", &cfg.models);
        let models = crate::update::ModelUpdater::new(
            "edge",
            &cfg.model_updates,
            cfg.models.clone(),
            &manager.engines(),
            cfg.workers.max(1),
            &cfg.device,
            times,
        )?;
        if let Some(m) = &models {
            background.push(m.clone().spawn(stop.clone()));
        }
        let api_stop = stop.child_token();
        if let Some(admin) = admin.as_mut() {
            crate::metrics::record_probe_parts(
                passive
                    .as_deref()
                    .map(|p| p.lock().unwrap_or_else(|e| e.into_inner()))
                    .as_deref(),
            );
            let (m, fo, p) = (manager.clone(), failover.clone(), passive.clone());
            let capacity = cfg.queue_capacity;
            admin.set_sampler(move || {
                sample_gauges(&m, capacity, health.as_ref(), fo.as_deref(), p.as_deref())
            });
            let (m, stopping) = (manager.clone(), api_stop.clone());
            admin.set_ready(move || readiness(&m, &stopping));
            background.extend(admin.take_tasks());
        }

        let serving_stop = api_stop.clone();
        let svc = EdgeAiServiceServer::new(EdgeApi {
            manager: manager.clone(),
        });
        let mut builder = tonic::transport::Server::builder();
        if let Some(tls) = api_tls {
            builder = builder
                .tls_config(tls.grpc_server())
                .context("TLS on the task API")?;
        }
        let router = builder.add_service(svc);
        let api = tokio::spawn(async move {
            let shutdown = serving_stop.cancelled_owned();
            match listener {
                ApiListener::Tcp(l) => {
                    // No Nagle: a small response frame written behind an
                    // unacknowledged one would otherwise wait for the
                    // submitter's delayed ACK (~40 ms).
                    let incoming = tokio_stream::wrappers::TcpListenerStream::new(l).map(|c| {
                        c.inspect(|s| {
                            if let Err(e) = s.set_nodelay(true) {
                                tracing::debug!(error = %e, "TCP_NODELAY on a task API connection");
                            }
                        })
                    });
                    router
                        .serve_with_incoming_shutdown(incoming, shutdown)
                        .await?
                }
                ApiListener::Unix(l, file) => {
                    router
                        .serve_with_incoming_shutdown(
                            tokio_stream::wrappers::UnixListenerStream::new(l),
                            shutdown,
                        )
                        .await?;
                    drop(file);
                }
            }
            Ok(())
        });
        stop_on_error.disarm();
        Ok(Edge {
            manager,
            api_addr,
            failover,
            passive,
            api,
            api_stop,
            stop,
            background,
            models,
        })
    }

    /// Stops the API, drains every accepted task, stops the workers and
    /// the background tasks.
    pub async fn shutdown(self) -> anyhow::Result<()> {
        self.api_stop.cancel();
        self.manager.shutdown().await;
        self.stop.cancel();
        for b in self.background {
            let _ = b.await;
        }
        // Detach the kernel programs.
        drop(self.passive);
        // Every accepted task has its answer by now. A submitter that keeps
        // its connection open and answers nothing, not even the closing
        // ping of the server's graceful shutdown (a client process stuck
        // elsewhere), would hold it up forever: it gets a grace, then the
        // connection is dropped.
        let mut api = self.api;
        match tokio::time::timeout(agent_net::SHUTDOWN_GRACE, &mut api).await {
            Ok(served) => served??,
            Err(_) => {
                api.abort();
                tracing::warn!(
                    grace = ?agent_net::SHUTDOWN_GRACE,
                    "task API connections still open after the grace; closing them"
                );
            }
        }
        Ok(())
    }
}

enum ApiListener {
    Tcp(TcpListener),
    Unix(UnixListener, SocketFile),
}

/// Who may submit: with `api_tls`, only clients whose certificate the
/// configured CA signed (mutual TLS); without it, anyone who can reach the
/// address, which is allowed on loopback only unless `--insecure`, or who
/// may write the Unix socket file (local, so allowed).
fn api_access(cfg: &EdgeConfig, addr: &ApiAddr) -> anyhow::Result<Option<TlsMaterial>> {
    let local = match addr {
        ApiAddr::Tcp(a) => a.ip().is_loopback(),
        ApiAddr::Unix(_) => true,
    };
    match &cfg.api_tls {
        Some(t) => {
            let material = t.load(agent_net::tls::Side::Server)?;
            ensure!(
                material.is_some() || local,
                "[edge.api_tls] is insecure and the task API listens on {addr}: refusing to \
                 serve unauthenticated submitters beyond loopback"
            );
            Ok(material)
        }
        None => {
            ensure!(
                local || cfg.tls.insecure,
                "the task API on {addr} would accept tasks from anyone on the network: set \
                 [edge.api_tls] (mutual TLS; `agent gen-certs` makes a development CA), listen \
                 on loopback or a unix: socket, or pass --insecure"
            );
            Ok(None)
        }
    }
}

/// The task-submission API: the same EdgeAIService the cloud serves, so
/// applications can talk to either.
struct EdgeApi {
    manager: Arc<Manager>,
}

#[tonic::async_trait]
impl EdgeAiService for EdgeApi {
    async fn offload_task(
        &self,
        request: Request<proto::TaskRequest>,
    ) -> Result<Response<proto::TaskResponse>, Status> {
        let task = task_from_request(request.into_inner(), Instant::now(), SystemTime::now())
            .map_err(|e| error_to_status(&e))?;
        let result_task_type = task.task_type;
        let rx = self.manager.submit(task).map_err(|e| error_to_status(&e))?;
        let result = rx.await.map_err(|_| Status::internal("task result lost"))?;
        let mut resp = result_to_response(&result);
        if let (Some(d), Some(pd)) = (&result.decision, resp.decision.as_mut()) {
            if d.offload.is_some() {
                pd.endpoint = self
                    .manager
                    .endpoint_name(d.endpoint)
                    .unwrap_or_default()
                    .to_string();
            }
            if let Some(point) = d.split {
                pd.split_point = self
                    .manager
                    .split_point_name(result_task_type, point)
                    .unwrap_or_default();
            }
        }
        Ok(Response::new(resp))
    }
}
