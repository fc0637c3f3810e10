//! The cloud service: one [`CloudHandler`] behind every listener.

pub mod grpc;
pub mod quic;

use crate::infer::{Engine, EngineFactory, ModelSpec};
use crate::task::{deadline_from_unix_nanos, TaskError, TaskType};
use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;
use tokio::sync::Semaphore;

pub struct CloudLimits {
    pub concurrency: usize,
    pub max_pending: usize,
    pub max_payload_bytes: usize,
}

/// What every listener serves: one request in, one answer (or error) out.
#[async_trait::async_trait]
pub trait Handler: Send + Sync + 'static {
    async fn handle(&self, req: proto::TaskRequest) -> Result<proto::TaskResponse, TaskError>;
    /// Largest payload accepted; listeners size their read limits from it.
    fn max_payload_bytes(&self) -> usize;
}

#[async_trait::async_trait]
impl Handler for CloudHandler {
    async fn handle(&self, req: proto::TaskRequest) -> Result<proto::TaskResponse, TaskError> {
        CloudHandler::handle(self, req).await
    }

    fn max_payload_bytes(&self) -> usize {
        CloudHandler::max_payload_bytes(self)
    }
}

/// Validates requests, bounds concurrency and runs the cloud models.
pub struct CloudHandler {
    specs: HashMap<TaskType, ModelSpec>,
    // Shared with the inference threads: a request whose client went away
    // is dropped mid-inference, and the engine and permit still come back.
    pool: Arc<Mutex<Vec<Box<dyn Engine>>>>,
    permits: Arc<Semaphore>,
    pending: AtomicUsize,
    limits: CloudLimits,
}

impl CloudHandler {
    pub fn new(
        specs: HashMap<TaskType, ModelSpec>,
        factory: &EngineFactory,
        limits: CloudLimits,
    ) -> anyhow::Result<Self> {
        let n = limits.concurrency.max(1);
        let pool = (0..n)
            .map(|_| factory())
            .collect::<anyhow::Result<Vec<_>>>()?;
        Ok(Self {
            specs,
            pool: Arc::new(Mutex::new(pool)),
            permits: Arc::new(Semaphore::new(n)),
            pending: AtomicUsize::new(0),
            limits,
        })
    }

    pub fn max_payload_bytes(&self) -> usize {
        self.limits.max_payload_bytes
    }

    fn validate(&self, req: &proto::TaskRequest, now: Instant) -> Result<TaskType, TaskError> {
        if req.id.is_empty() {
            return Err(TaskError::InvalidInput("task id is empty".into()));
        }
        if req.payload.len() > self.limits.max_payload_bytes {
            return Err(TaskError::InvalidInput(format!(
                "payload of {} bytes exceeds the limit of {} bytes",
                req.payload.len(),
                self.limits.max_payload_bytes
            )));
        }
        let task_type = TaskType::from_proto(req.r#type).ok_or_else(|| {
            TaskError::UnsupportedTaskType(format!("unknown task type {}", req.r#type))
        })?;
        let spec = self.specs.get(&task_type).ok_or_else(|| {
            TaskError::UnsupportedTaskType(format!("no cloud model for {}", task_type.as_str()))
        })?;
        crate::infer::torch::validate_payload(spec, &req.payload)?;
        if let Some(d) = deadline_from_unix_nanos(req.deadline_unix_nano, now) {
            if d <= now {
                return Err(TaskError::DeadlineExceeded(
                    "deadline already passed on arrival".into(),
                ));
            }
        }
        Ok(task_type)
    }

    /// Answers one request; bad input and overload become clear errors.
    pub async fn handle(&self, req: proto::TaskRequest) -> Result<proto::TaskResponse, TaskError> {
        let received = Instant::now();
        let task_type = self.validate(&req, received)?;
        let deadline = deadline_from_unix_nanos(req.deadline_unix_nano, received);

        if self.pending.fetch_add(1, Ordering::SeqCst) >= self.limits.max_pending {
            self.pending.fetch_sub(1, Ordering::SeqCst);
            return Err(TaskError::Overloaded(format!(
                "{} requests already waiting",
                self.limits.max_pending
            )));
        }
        let permit = self.permits.clone().acquire_owned().await;
        self.pending.fetch_sub(1, Ordering::SeqCst);
        let permit = permit.map_err(|_| TaskError::Unavailable("service shutting down".into()))?;
        let started = Instant::now();
        if deadline.is_some_and(|d| d <= started) {
            return Err(TaskError::DeadlineExceeded(
                "expired while queued in the cloud".into(),
            ));
        }
        let mut engine = self
            .pool
            .lock()
            .expect("engine pool lock")
            .pop()
            .ok_or_else(|| TaskError::Internal("engine pool empty under a permit".into()))?;
        let payload = req.payload;
        let pool = self.pool.clone();
        let result = tokio::task::spawn_blocking(move || {
            let r = engine.process(task_type, &payload);
            pool.lock().expect("engine pool lock").push(engine);
            drop(permit);
            r
        })
        .await
        .map_err(|e| TaskError::Internal(format!("inference task failed: {e}")))?;
        let inf = result?;
        Ok(proto::TaskResponse {
            task_id: req.id,
            success: true,
            output: serde_json::to_vec(&inf.output).unwrap_or_default(),
            processed_by: "cloud".into(),
            duration_nano: received.elapsed().as_nanos() as i64,
            model_name: inf.output.model.clone(),
            model_version: inf.model_version,
            queue_nano: started.duration_since(received).as_nanos() as i64,
            inference_nano: inf.elapsed.as_nanos() as i64,
            predicted_class: inf.output.class as i32,
            confidence: inf.output.confidence,
            ..Default::default()
        })
    }
}

/// Builds the handler from the cloud section of the configuration.
pub fn handler_from_config(cfg: &crate::config::CloudConfig) -> anyhow::Result<CloudHandler> {
    tch::set_num_threads(cfg.intra_op_threads.max(1));
    let times = crate::infer::shared_exec_times(0.2, std::time::Duration::from_millis(1));
    let factory = crate::edge::engine_factory(cfg.models.clone(), &cfg.device, times)?;
    CloudHandler::new(
        cfg.models.clone(),
        &factory,
        CloudLimits {
            concurrency: cfg.concurrency,
            max_pending: cfg.max_pending,
            max_payload_bytes: cfg.max_payload_bytes,
        },
    )
}

/// The running cloud service: every listener over one handler.
pub struct CloudService {
    pub grpc_addr: std::net::SocketAddr,
    /// `None` when QUIC is off (`listen_quic` empty, or --insecure).
    pub quic_addr: Option<std::net::SocketAddr>,
    stop: tokio::sync::watch::Sender<bool>,
    tasks: Vec<tokio::task::JoinHandle<anyhow::Result<()>>>,
}

impl CloudService {
    pub async fn start(cfg: &crate::config::CloudConfig) -> anyhow::Result<CloudService> {
        let tls = cfg.tls.load(crate::tls::Side::Server)?;
        let handler = Arc::new(handler_from_config(cfg)?);
        Self::start_with(
            handler,
            &cfg.listen_grpc,
            &cfg.listen_quic,
            tls.as_ref(),
            cfg.max_concurrent_streams,
        )
        .await
    }

    /// Serves `handler` on gRPC at `listen_grpc` and, with TLS, QUIC at
    /// `listen_quic` (empty: none).
    pub async fn start_with(
        handler: Arc<dyn Handler>,
        listen_grpc: &str,
        listen_quic: &str,
        tls: Option<&crate::tls::TlsMaterial>,
        max_concurrent_streams: u32,
    ) -> anyhow::Result<CloudService> {
        use anyhow::Context;
        let listener = tokio::net::TcpListener::bind(listen_grpc)
            .await
            .with_context(|| format!("binding gRPC on {listen_grpc}"))?;
        let grpc_addr = listener.local_addr()?;
        let quic = match (tls, listen_quic.is_empty()) {
            (Some(tls), false) => {
                let addr = crate::edge::resolve(listen_quic).await?;
                Some(quic::endpoint(addr, tls, max_concurrent_streams)?)
            }
            (None, false) => {
                tracing::warn!(
                    "QUIC listener disabled: QUIC has no plaintext mode and --insecure is set"
                );
                None
            }
            _ => None,
        };
        let quic_addr = quic.as_ref().map(|e| e.local_addr()).transpose()?;
        let (stop, stop_rx) = tokio::sync::watch::channel(false);
        let mut rx = stop_rx.clone();
        let mut tasks = vec![tokio::spawn(grpc::serve(
            handler.clone(),
            listener,
            tls.map(|t| t.grpc_server()),
            max_concurrent_streams,
            async move {
                let _ = rx.wait_for(|s| *s).await;
            },
        ))];
        if let Some(endpoint) = quic {
            tasks.push(tokio::spawn(quic::serve(handler, endpoint, stop_rx)));
        }
        Ok(CloudService {
            grpc_addr,
            quic_addr,
            stop,
            tasks,
        })
    }

    /// The line `agent cloud` prints when it listens (the demo and scripts parse it).
    pub fn listening_line(&self) -> String {
        let quic = self
            .quic_addr
            .map_or_else(|| "off".to_string(), |a| a.to_string());
        format!("cloud listening grpc={} quic={quic}", self.grpc_addr)
    }

    /// Stops accepting and lets in-flight requests finish.
    pub async fn shutdown(self) -> anyhow::Result<()> {
        let _ = self.stop.send(true);
        for t in self.tasks {
            t.await??;
        }
        Ok(())
    }
}
