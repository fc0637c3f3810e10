//! The edge agent assembled from its parts: monitor + probes -> manager
//! (decision, local workers, offloader) -> the task-submission API.

use crate::config::EdgeConfig;
use crate::estimate::LinkConfig;
use crate::infer::torch::parse_device;
use crate::infer::{shared_exec_times, EngineFactory, TorchEngine};
use crate::manager::{Manager, ManagerConfig, ManagerParts};
use crate::offload::Offloader;
use crate::probe::active::ActiveProbe;
use crate::task::{deadline_from_unix_nanos, ExecPath, Priority, Task, TaskType};
use crate::wire::error_to_status;
use anyhow::Context;
use proto::edge_ai_service_server::{EdgeAiService, EdgeAiServiceServer};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::net::{lookup_host, TcpListener};
use tokio::task::JoinHandle;
use tonic::{Request, Response, Status};

pub struct Edge {
    pub manager: Arc<Manager>,
    pub api_addr: SocketAddr,
    /// QUIC <-> gRPC switches and probes; `None` when QUIC is not in use.
    pub failover: Option<Arc<crate::offload::failover::FailoverStats>>,
    /// The attached eBPF probe; dropping it detaches the programs.
    pub passive: Option<crate::probe::ebpf::EbpfProbe>,
    api: JoinHandle<anyhow::Result<()>>,
    api_stop: tokio::sync::oneshot::Sender<()>,
    background: Vec<JoinHandle<()>>,
}

/// The addresses the passive probe watches: the cloud's endpoints.
pub fn cloud_endpoints(cfg: &EdgeConfig) -> Vec<std::net::IpAddr> {
    use std::net::ToSocketAddrs;
    let mut ips: Vec<_> = [cfg.cloud_grpc.as_str(), cfg.cloud_quic.as_str()]
        .into_iter()
        .filter(|a| !a.is_empty())
        .filter_map(|a| a.to_socket_addrs().ok())
        .flatten()
        .map(|a| a.ip())
        .collect();
    ips.sort();
    ips.dedup();
    ips
}

/// Engines for the edge's local models.
pub fn engine_factory(
    specs: std::collections::HashMap<TaskType, crate::infer::ModelSpec>,
    device: &str,
    times: crate::infer::SharedExecTimes,
) -> anyhow::Result<EngineFactory> {
    let device = parse_device(device)?;
    Ok(Arc::new(move || {
        Ok(Box::new(TorchEngine::load(&specs, device, times.clone())?)
            as Box<dyn crate::infer::Engine>)
    }))
}

pub async fn resolve(addr: &str) -> anyhow::Result<SocketAddr> {
    lookup_host(addr)
        .await
        .with_context(|| format!("resolving {addr}"))?
        .next()
        .with_context(|| format!("{addr} resolves to no address"))
}

impl Edge {
    /// Starts everything; `listener` overrides `cfg.listen` (tests pass port 0).
    /// The passive probe is loaded here, in a running runtime, so capability
    /// dropping is left to the `edge` command (see [`Edge::start_with_probe`]).
    pub async fn start(cfg: &EdgeConfig, listener: Option<TcpListener>) -> anyhow::Result<Edge> {
        let probe = crate::probe::passive::load(&cfg.probe, &cloud_endpoints(cfg));
        Self::start_with_probe(cfg, listener, probe).await
    }

    /// Starts everything around a probe loaded (or not) beforehand.
    pub async fn start_with_probe(
        cfg: &EdgeConfig,
        listener: Option<TcpListener>,
        mut passive: Option<crate::probe::ebpf::EbpfProbe>,
    ) -> anyhow::Result<Edge> {
        tch::set_num_threads(cfg.intra_op_threads.max(1));
        let cloud = resolve(&cfg.cloud_grpc).await?;
        let link = LinkConfig {
            window: cfg.probe.window,
            stale_after: Duration::from_millis(cfg.probe.stale_after_ms),
            default_bandwidth_bps: cfg.probe.default_bandwidth_mbit * 1e6,
            ..LinkConfig::default()
        };
        let monitor = crate::monitor::spawn(link, cloud.ip());
        let probe = ActiveProbe {
            target: cloud,
            interval: Duration::from_millis(cfg.probe.interval_ms),
            timeout: Duration::from_millis(cfg.probe.timeout_ms),
            passive_fresh_for: Duration::from_millis(cfg.probe.stale_after_ms / 2),
        };
        let probe_task = tokio::spawn(probe.run(monitor.events.clone(), monitor.status.clone()));
        let passive_task = match passive.as_mut() {
            Some(p) => crate::probe::passive::forward(p, monitor.events.clone()),
            None => None,
        };
        if passive_task.is_none() {
            passive = None;
        }

        let tls = cfg.tls.load(crate::tls::Side::Client)?;
        let stack = crate::offload::build_stack(cfg, tls.as_ref()).await?;
        let offloader: Arc<dyn Offloader> = stack.offloader;
        let failover = stack.failover;
        let times = shared_exec_times(0.2, Duration::from_millis(1));
        let factory = engine_factory(cfg.models.clone(), &cfg.device, times.clone())?;
        let manager = Arc::new(Manager::start(
            ManagerConfig {
                workers: cfg.workers,
                queue_capacity: cfg.queue_capacity,
                max_concurrent_offloads: cfg.max_concurrent_offloads,
                policy: cfg.policy.clone(),
                response_bytes: cfg.response_bytes,
                cloud_expected: Duration::from_secs_f64(cfg.cloud_expected_ms / 1e3),
            },
            ManagerParts {
                local_specs: cfg.models.clone(),
                engine_factory: factory,
                local_times: times,
                offloader: Some(offloader),
                net: monitor.status.clone(),
                probe_events: monitor.events.clone(),
                cloud_dest: cloud.ip(),
            },
        )?);

        let mut background: Vec<JoinHandle<()>> =
            std::iter::once(probe_task).chain(passive_task).collect();
        if let Some(addr) = &cfg.metrics_listen {
            let addr = resolve(addr).await?;
            crate::metrics::install(addr).with_context(|| format!("metrics listener on {addr}"))?;
            background.push(crate::metrics::spawn_gauges(
                manager.clone(),
                Duration::from_secs(1),
            ));
            tracing::info!(%addr, "metrics at http://{addr}/metrics");
        }

        let listener = match listener {
            Some(l) => l,
            None => TcpListener::bind(&cfg.listen)
                .await
                .with_context(|| format!("binding the task API on {}", cfg.listen))?,
        };
        let api_addr = listener.local_addr()?;
        let (api_stop, stop_rx) = tokio::sync::oneshot::channel();
        let svc = EdgeAiServiceServer::new(EdgeApi {
            manager: manager.clone(),
        });
        let api = tokio::spawn(async move {
            tonic::transport::Server::builder()
                .add_service(svc)
                .serve_with_incoming_shutdown(
                    tokio_stream::wrappers::TcpListenerStream::new(listener),
                    async {
                        let _ = stop_rx.await;
                    },
                )
                .await?;
            Ok(())
        });
        Ok(Edge {
            manager,
            api_addr,
            failover,
            passive,
            api,
            api_stop,
            background,
        })
    }

    /// Stops the API, drains every accepted task, stops the workers.
    pub async fn shutdown(self) -> anyhow::Result<()> {
        let _ = self.api_stop.send(());
        self.manager.shutdown().await;
        for b in self.background {
            b.abort();
        }
        // Detach the kernel programs.
        drop(self.passive);
        self.api.await??;
        Ok(())
    }
}

/// The task-submission API: the same EdgeAIService the cloud serves, so
/// applications can talk to either.
struct EdgeApi {
    manager: Arc<Manager>,
}

pub fn task_from_request(req: proto::TaskRequest, now: Instant) -> Result<Task, Status> {
    let task_type = TaskType::from_proto(req.r#type).ok_or_else(|| {
        Status::invalid_argument(format!("unknown or missing task type {}", req.r#type))
    })?;
    if req.id.is_empty() {
        return Err(Status::invalid_argument("task id is empty"));
    }
    Ok(Task {
        id: req.id,
        task_type,
        payload: req.payload,
        priority: Priority::from_proto(req.priority),
        deadline: deadline_from_unix_nanos(req.deadline_unix_nano, now),
        created_at: now,
        context: req.context,
    })
}

#[tonic::async_trait]
impl EdgeAiService for EdgeApi {
    async fn offload_task(
        &self,
        request: Request<proto::TaskRequest>,
    ) -> Result<Response<proto::TaskResponse>, Status> {
        let task = task_from_request(request.into_inner(), Instant::now())?;
        let rx = self.manager.submit(task).map_err(|e| error_to_status(&e))?;
        let result = rx.await.map_err(|_| Status::internal("task result lost"))?;
        let mut resp = match &result.outcome {
            Ok(o) => proto::TaskResponse {
                task_id: result.task_id.clone(),
                success: true,
                output: serde_json::to_vec(o).unwrap_or_default(),
                predicted_class: o.class as i32,
                confidence: o.confidence,
                model_name: o.model.clone(),
                ..Default::default()
            },
            Err(e) => crate::wire::error_response(&result.task_id, e),
        };
        resp.processed_by = match (result.processed_by, result.transport) {
            (Some(ExecPath::Cloud), Some(t)) => format!("cloud/{}", t.as_str()),
            (Some(p), _) => p.as_str().into(),
            (None, _) => String::new(),
        };
        resp.transport = result
            .transport
            .map(|t| t.as_str().to_string())
            .unwrap_or_default();
        resp.fell_back = result.fell_back;
        resp.duration_nano = result.duration.as_nanos() as i64;
        resp.decision = result.decision.as_ref().map(|d| d.to_proto());
        Ok(Response::new(resp))
    }
}
