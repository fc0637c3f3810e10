//! The cloud service: one [`CloudHandler`] (validation, admission, the
//! cloud models) behind every listener of [`agent_net::CloudListeners`],
//! and behind the KServe V2 listener ([`crate::v2::V2Server`]) when
//! `listen_v2` is set.

use crate::config::CloudConfig;
use crate::infer::{
    shared_exec_times, torch_engines, EngineFactory, EnginePool, ModelSpec, RawInference,
    RawSignature, RawTensor, SharedExecTimes,
};
use crate::v2::{V2Backend, V2Server};
use agent_core::{deadline_from_unix_nanos, TaskError, TaskType};
use agent_net::tls::Side;
use agent_net::wire::{output_response, task_type_from_proto};
use agent_net::{CloudListeners, Handler, ListenConfig};
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};
use tokio::sync::Semaphore;
use tokio_util::sync::{CancellationToken, DropGuard};

pub struct CloudLimits {
    pub concurrency: usize,
    pub max_pending: usize,
    pub max_payload_bytes: usize,
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

#[async_trait::async_trait]
impl V2Backend for CloudHandler {
    async fn signatures(&self) -> Vec<(TaskType, RawSignature)> {
        self.raw_signatures().await
    }

    fn max_payload_bytes(&self) -> usize {
        CloudHandler::max_payload_bytes(self)
    }

    async fn forward(
        &self,
        task_type: TaskType,
        input: RawTensor,
        deadline: Option<Instant>,
    ) -> Result<(RawInference, Duration), TaskError> {
        self.forward_raw(task_type, input, deadline).await
    }
}

/// Validates requests, bounds concurrency and runs the cloud models.
pub struct CloudHandler {
    specs: HashMap<TaskType, ModelSpec>,
    // Shared with the inference threads: a request whose client went away
    // is dropped mid-inference, and the engine and permit still come back.
    // A model update swaps the pool's engines.
    pool: Arc<EnginePool>,
    permits: Arc<Semaphore>,
    pending: AtomicUsize,
    limits: CloudLimits,
    /// Requests of batching models waiting for a slot (dynamic batching).
    lobby: Arc<crate::lobby::Lobby>,
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
            pool: EnginePool::new(pool),
            permits: Arc::new(Semaphore::new(n)),
            pending: AtomicUsize::new(0),
            limits,
            lobby: Arc::default(),
        })
    }

    pub fn max_payload_bytes(&self) -> usize {
        self.limits.max_payload_bytes
    }

    /// The inference engines (a model update swaps them).
    pub fn engines(&self) -> Arc<EnginePool> {
        self.pool.clone()
    }

    /// Requests waiting for an inference slot now.
    pub fn waiting(&self) -> usize {
        self.pending.load(Ordering::SeqCst)
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
        let task_type = task_type_from_proto(req.r#type).ok_or_else(|| {
            TaskError::UnsupportedTaskType(format!("unknown task type {}", req.r#type))
        })?;
        let spec = self.specs.get(&task_type).ok_or_else(|| {
            TaskError::UnsupportedTaskType(format!("no cloud model for {}", task_type.as_str()))
        })?;
        match &req.features {
            // A split task's features are checked when decoded.
            Some(f) => {
                if !req.payload.is_empty() {
                    return Err(TaskError::InvalidInput(
                        "a request carries either a payload or features, not both".into(),
                    ));
                }
                if f.data.len() > self.limits.max_payload_bytes {
                    return Err(TaskError::InvalidInput(format!(
                        "features of {} bytes exceed the limit of {} bytes",
                        f.data.len(),
                        self.limits.max_payload_bytes
                    )));
                }
            }
            None => spec.validate_payload(&req.payload)?,
        }
        if let Some(d) = deadline_from_unix_nanos(req.deadline_unix_nano, now, SystemTime::now()) {
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
        let deadline =
            deadline_from_unix_nanos(req.deadline_unix_nano, received, SystemTime::now());

        if let Some(f) = &req.features {
            return self
                .handle_split(&req.id, task_type, f, received, deadline)
                .await;
        }
        // The place in the waiting line is a guard: a request whose client
        // goes away while it waits (its future dropped) gives it back too.
        let waiting = self.enter_waiting_line()?;
        if self.specs[&task_type].max_batch > 1 {
            return self
                .handle_batched(req, task_type, received, deadline, waiting)
                .await;
        }
        let payload = req.payload;
        let (inf, started) = self
            .in_slot(waiting, deadline, move |engine| {
                engine.process(task_type, &payload)
            })
            .await?;
        Ok(answered(&req.id, &inf, received, started))
    }

    /// A split task: checks its features against the split point, decodes
    /// them (bounded by the point's shape) and runs the tail, under the
    /// same admission as every request.
    async fn handle_split(
        &self,
        id: &str,
        task_type: TaskType,
        f: &proto::Features,
        received: Instant,
        deadline: Option<Instant>,
    ) -> Result<proto::TaskResponse, TaskError> {
        let spec = &self.specs[&task_type];
        let split = spec.split.as_ref().ok_or_else(|| {
            TaskError::UnsupportedTaskType(format!(
                "no split model for {} in this cloud",
                task_type.as_str()
            ))
        })?;
        let point = split.point(&f.split_point).ok_or_else(|| {
            TaskError::InvalidInput(format!(
                "{} has no split point {:?}",
                split.model, f.split_point
            ))
        })?;
        // One task's features: a batch of one.
        let (values, _) = agent_net::decode_features(f, &point.shape, 1)
            .map_err(|e| TaskError::InvalidInput(format!("{}: {e}", split.model)))?;
        let source = (f.source_width > 0 && f.source_height > 0)
            .then_some((f.source_width, f.source_height));
        let name = point.name.clone();
        let waiting = self.enter_waiting_line()?;
        let (inf, started) = self
            .in_slot(waiting, deadline, move |engine| {
                engine.split_tail(task_type, &name, &values, source)
            })
            .await?;
        Ok(answered(id, &inf, received, started))
    }

    /// One raw forward pass (a KServe V2 request) under the same admission
    /// as [`CloudHandler::handle`]: the waiting line, the inference slots,
    /// the deadline. Returns it with the time it waited for a slot.
    pub async fn forward_raw(
        &self,
        task_type: TaskType,
        input: RawTensor,
        deadline: Option<Instant>,
    ) -> Result<(RawInference, Duration), TaskError> {
        let received = Instant::now();
        if !self.specs.contains_key(&task_type) {
            return Err(TaskError::UnsupportedTaskType(format!(
                "no cloud model for {}",
                task_type.as_str()
            )));
        }
        if input.data.len() > self.limits.max_payload_bytes {
            return Err(TaskError::InvalidInput(format!(
                "input of {} bytes exceeds the limit of {} bytes",
                input.data.len(),
                self.limits.max_payload_bytes
            )));
        }
        if deadline.is_some_and(|d| d <= received) {
            return Err(TaskError::DeadlineExceeded(
                "deadline already passed on arrival".into(),
            ));
        }
        let waiting = self.enter_waiting_line()?;
        let (inf, started) = self
            .in_slot(waiting, deadline, move |engine| {
                engine.forward_raw(task_type, input)
            })
            .await?;
        Ok((inf, started.duration_since(received)))
    }

    /// A place in the waiting line, or Overloaded when it is full.
    fn enter_waiting_line(&self) -> Result<Waiting<'_>, TaskError> {
        Waiting::enter(&self.pending, self.limits.max_pending).ok_or_else(|| {
            TaskError::Overloaded(format!(
                "{} requests already waiting",
                self.limits.max_pending
            ))
        })
    }

    /// Runs `f` on an engine under an inference slot: leaves the waiting
    /// line once it has a slot, refuses work whose deadline passed while
    /// queued, and survives a panicking model (its engine goes back to the
    /// pool before the permit, so a permit always finds an engine). Returns
    /// `f`'s result and when the slot was taken.
    async fn in_slot<T: Send + 'static>(
        &self,
        waiting: Waiting<'_>,
        deadline: Option<Instant>,
        f: impl FnOnce(&mut dyn crate::infer::Engine) -> Result<T, TaskError> + Send + 'static,
    ) -> Result<(T, Instant), TaskError> {
        let permit = self.permits.clone().acquire_owned().await;
        drop(waiting);
        let permit = permit.map_err(|_| TaskError::Unavailable("service shutting down".into()))?;
        let started = Instant::now();
        if deadline.is_some_and(|d| d <= started) {
            return Err(TaskError::DeadlineExceeded(
                "expired while queued in the cloud".into(),
            ));
        }
        let mut engine = self
            .pool
            .try_checkout()
            .ok_or_else(|| TaskError::Internal("engine pool empty under a permit".into()))?;
        let r = tokio::task::spawn_blocking(move || {
            let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| f(engine.engine())))
                .unwrap_or_else(|_| Err(TaskError::Internal("inference panicked".into())));
            drop(engine);
            drop(permit);
            r
        })
        .await
        .map_err(|e| TaskError::Internal(format!("inference task failed: {e}")))??;
        Ok((r, started))
    }

    /// The raw signatures of the cloud models, read from an engine (taken
    /// under an inference slot, like any request's).
    pub async fn raw_signatures(&self) -> Vec<(TaskType, RawSignature)> {
        let Ok(_permit) = self.permits.clone().acquire_owned().await else {
            return Vec::new();
        };
        let Some(mut engine) = self.pool.try_checkout() else {
            return Vec::new();
        };
        let mut types: Vec<TaskType> = self.specs.keys().copied().collect();
        types.sort();
        types
            .into_iter()
            .filter_map(|t| engine.engine().raw_signature(t).map(|s| (t, s)))
            .collect()
    }

    /// A request of a batching model: it waits in the lobby; if it gets an
    /// inference slot before a leader takes it, it leads a batch itself.
    async fn handle_batched(
        &self,
        req: proto::TaskRequest,
        task_type: TaskType,
        received: Instant,
        deadline: Option<Instant>,
        waiting: Waiting<'_>,
    ) -> Result<proto::TaskResponse, TaskError> {
        let spec = &self.specs[&task_type];
        let (max_batch, delay) = (
            spec.max_batch,
            std::time::Duration::from_secs_f64(spec.max_batch_delay_ms.max(0.0) / 1e3),
        );
        let id = req.id;
        let mut ticket = self.lobby.join(task_type, req.payload, deadline);
        let respond =
            |(r, started): crate::lobby::Answer| -> Result<proto::TaskResponse, TaskError> {
                Ok(answered(&id, &r?, received, started))
            };
        let permit = tokio::select! {
            answer = &mut ticket.answer => {
                drop(waiting);
                let a = answer.map_err(|_| TaskError::Internal("the batch leader went away".into()))?;
                return respond(a);
            }
            permit = self.permits.clone().acquire_owned() => permit,
        };
        drop(waiting);
        let permit = permit.map_err(|_| TaskError::Unavailable("service shutting down".into()))?;
        let Some(leader) = ticket.lead() else {
            // Taken by another leader just now: its answer is coming.
            drop(permit);
            let a = (&mut ticket.answer)
                .await
                .map_err(|_| TaskError::Internal("the batch leader went away".into()))?;
            return respond(a);
        };
        if self.lobby.waiting(task_type) + 1 < max_batch && !delay.is_zero() {
            let until = (Instant::now() + delay).min(deadline.unwrap_or(Instant::now() + delay));
            self.lobby.wait_for(task_type, max_batch - 1, until).await;
        }
        let started = Instant::now();
        if deadline.is_some_and(|d| d <= started) {
            return Err(TaskError::DeadlineExceeded(
                "expired while queued in the cloud".into(),
            ));
        }
        let (followers, expired): (Vec<_>, Vec<_>) = self
            .lobby
            .take(task_type, max_batch - 1)
            .into_iter()
            .partition(|f| f.deadline.is_none_or(|d| d > started));
        for f in expired {
            let e = TaskError::DeadlineExceeded("expired while queued in the cloud".into());
            f.answer((Err(e), started));
        }
        let mut engine = self
            .pool
            .try_checkout()
            .ok_or_else(|| TaskError::Internal("engine pool empty under a permit".into()))?;
        let own = leader.payload;
        let size = followers.len() + 1;
        let result = tokio::task::spawn_blocking(move || {
            let mut payloads: Vec<&[u8]> = vec![own.as_slice()];
            payloads.extend(followers.iter().map(|f| f.payload.as_slice()));
            let mut results =
                crate::infer::process_batch_guarded(engine.engine(), task_type, &payloads);
            drop(payloads);
            drop(engine);
            drop(permit);
            // The followers are answered from here, so a leader whose own
            // client went away still answers them.
            let own = if results.is_empty() {
                Err(TaskError::Internal("batch without results".into()))
            } else {
                results.remove(0)
            };
            for (f, r) in followers.into_iter().zip(results) {
                f.answer((r, started));
            }
            own
        })
        .await
        .map_err(|e| TaskError::Internal(format!("inference task failed: {e}")))?;
        ::metrics::histogram!("cloud_batch_size", "task_type" => task_type.as_str())
            .record(size as f64);
        respond((result, started))
    }
}

/// The response to a request received at `received` whose inference
/// started at `started`: the answer, the server time, its queue and model
/// parts.
fn answered(
    id: &str,
    inf: &crate::infer::Inference,
    received: Instant,
    started: Instant,
) -> proto::TaskResponse {
    proto::TaskResponse {
        processed_by: "cloud".into(),
        duration_nano: received.elapsed().as_nanos() as i64,
        queue_nano: started.saturating_duration_since(received).as_nanos() as i64,
        inference_nano: inf.elapsed.as_nanos() as i64,
        ..output_response(id, &inf.output)
    }
}

/// A place in the cloud's waiting line, given back on drop: on every path,
/// including a request future dropped by a client that went away.
struct Waiting<'a>(&'a AtomicUsize);

impl<'a> Waiting<'a> {
    /// Takes a place if fewer than `max` are taken.
    fn enter(count: &'a AtomicUsize, max: usize) -> Option<Waiting<'a>> {
        count
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| {
                (n < max).then_some(n + 1)
            })
            .ok()
            .map(|_| Waiting(count))
    }
}

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

/// Builds the handler from the cloud section of the configuration.
pub fn handler_from_config(cfg: &CloudConfig) -> anyhow::Result<CloudHandler> {
    Ok(handler_and_times(cfg)?.0)
}

fn handler_and_times(cfg: &CloudConfig) -> anyhow::Result<(CloudHandler, SharedExecTimes)> {
    tch::set_num_threads(cfg.intra_op_threads.max(1));
    let times = shared_exec_times(0.2, std::time::Duration::from_millis(1));
    let factory = torch_engines(cfg.models.clone(), &cfg.device, times.clone())?;
    let handler = CloudHandler::new(
        cfg.models.clone(),
        &factory,
        CloudLimits {
            concurrency: cfg.concurrency,
            max_pending: cfg.max_pending,
            max_payload_bytes: cfg.max_payload_bytes,
        },
    )?;
    Ok((handler, times))
}

/// The running cloud service: the `EdgeAIService` listeners and, when
/// `listen_v2` is set, the KServe V2 listener.
pub struct Cloud {
    pub listeners: CloudListeners,
    pub v2: Option<V2Server>,
}

impl Cloud {
    /// The V2 listener's address, when it runs.
    pub fn v2_addr(&self) -> Option<SocketAddr> {
        self.v2.as_ref().map(|v| v.addr)
    }

    /// The line `agent cloud` prints when it listens: the listeners' line,
    /// then ` v2=ADDR` when the V2 listener runs.
    pub fn listening_line(&self) -> String {
        let mut line = self.listeners.listening_line();
        if let Some(a) = self.v2_addr() {
            line.push_str(&format!(" v2={a}"));
        }
        line
    }

    /// Stops accepting on every listener and lets in-flight requests finish.
    pub async fn shutdown(self) -> anyhow::Result<()> {
        let listeners = self.listeners.shutdown().await;
        if let Some(v2) = self.v2 {
            v2.shutdown().await?;
        }
        listeners
    }
}

/// A handler that cancels a token once every listener has let go of it:
/// the V2 listener of a cloud started with [`start`] stops with the
/// `EdgeAIService` listeners.
struct Tied<H> {
    inner: Arc<H>,
    _stop: DropGuard,
}

#[async_trait::async_trait]
impl<H: Handler> Handler for Tied<H> {
    async fn handle(&self, req: proto::TaskRequest) -> Result<proto::TaskResponse, TaskError> {
        self.inner.handle(req).await
    }

    async fn handle_via(
        &self,
        transport: agent_core::Transport,
        req: proto::TaskRequest,
    ) -> Result<proto::TaskResponse, TaskError> {
        self.inner.handle_via(transport, req).await
    }

    fn max_payload_bytes(&self) -> usize {
        self.inner.max_payload_bytes()
    }
}

/// Starts the cloud service: the models behind every listener.
/// With `metrics_listen`, the admin listener (/metrics, /healthz, /readyz)
/// answers from before the models load and is ready once the listeners are.
/// A V2 listener (`listen_v2`) stops when the returned listeners shut down;
/// [`serve`] returns it too (its address, a joined shutdown).
pub async fn start(cfg: &CloudConfig) -> anyhow::Result<CloudListeners> {
    Ok(serve(cfg).await?.listeners)
}

/// Starts the cloud service (see [`start`]), the V2 listener included.
pub async fn serve(cfg: &CloudConfig) -> anyhow::Result<Cloud> {
    let admin = crate::admin::CloudAdmin::start(cfg).await?;
    let tls = cfg.tls.load(Side::Server)?;
    let (handler, times) = handler_and_times(cfg)?;
    let handler = Arc::new(handler);
    crate::update::record_versions("cloud", &cfg.models);
    // The updater stops by itself once the handler (and its pool) is gone.
    if let Some(models) = crate::update::ModelUpdater::new(
        "cloud",
        &cfg.model_updates,
        cfg.models.clone(),
        &handler.engines(),
        cfg.concurrency.max(1),
        &cfg.device,
        times,
    )? {
        models.spawn(tokio_util::sync::CancellationToken::new());
    }
    let listen = ListenConfig {
        grpc: cfg.listen_grpc.clone(),
        quic: cfg.listen_quic.clone(),
        max_concurrent_streams: cfg.max_concurrent_streams,
    };
    let v2_stop = CancellationToken::new();
    let metered = Arc::new(Tied {
        inner: Arc::new(crate::metrics::Metered::new(handler.clone())),
        _stop: v2_stop.clone().drop_guard(),
    });
    let listeners = CloudListeners::start(metered, &listen, tls.as_ref()).await?;
    let v2 = if cfg.listen_v2.is_empty() {
        None
    } else {
        match V2Server::start(
            handler.clone(),
            &cfg.listen_v2,
            tls.as_ref().map(|t| t.grpc_server()),
            cfg.max_concurrent_streams,
            v2_stop,
        )
        .await
        {
            Ok(v2) => Some(v2),
            Err(e) => {
                let _ = listeners.shutdown().await;
                return Err(e);
            }
        }
    };
    admin.serving(move || handler.waiting(), cfg.max_pending);
    Ok(Cloud { listeners, v2 })
}
