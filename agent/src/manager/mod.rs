//! The task manager: admission, decision, the local queue and worker pool,
//! concurrent offloads, and exactly one result per accepted task.
//!
//! Local workers are OS threads, each owning an inference engine (libtorch
//! calls block); offloads are tokio tasks bounded by a semaphore. A hedged
//! task runs on both paths: two legs share one reply, the first success
//! answers and cancels the other leg.

use crate::infer::{EngineFactory, EnginePool, ModelSpec, SharedExecTimes};
use crate::split::{PointIndex, SplitPoints};
use crate::store::TaskStore;
use agent_core::{
    CloudStatus, CpuMeter, Decision, DecisionInput, ExecPath, ExecTimeModel, LoadMeter,
    LocalStatus, NetworkStatus, Output, Policy, Priority, ProbeEvent, ProbeEventKind, QueueId,
    Reason, Residuals, RunShape, RunTiming, SampleSource, Silence, SplitInput, Task, TaskError,
    TaskQueue, TaskResult, TaskType, Transport, UplinkQueue, UploadId,
};
use agent_net::wire::{
    error_from_kind, error_response, output_from_response, task_to_request, timing_from_response,
};
use agent_net::{OffloadError, OffloadRequest, Offloader, PacketCounts};
use std::collections::{HashMap, HashSet};
use std::net::IpAddr;
use std::panic::AssertUnwindSafe;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime};
use tokio::sync::{mpsc, oneshot, watch, Notify, Semaphore};
use tokio_util::sync::CancellationToken;

mod inline;
mod offload;
mod worker;

use inline::run_inline;
use offload::{forward_loop, run_offload};
use worker::{expiry_loop, join_inference_cgroup, warm_worker, worker_loop};

#[derive(Debug, Clone)]
pub struct ManagerConfig {
    pub workers: usize,
    pub queue_capacity: usize,
    /// Payload bytes the local queue holds at most.
    pub queue_capacity_bytes: usize,
    pub max_concurrent_offloads: usize,
    pub policy: Policy,
    pub response_bytes: usize,
    pub cloud_expected: Duration,
    /// Most hedged tasks as a share of accepted ones (0 disables hedging).
    pub hedge_budget: f64,
    /// With a store: hold tasks a local model could run too, not only
    /// those no local model can (`[edge.store] hold_runnable_locally`).
    pub hold_runnable_locally: bool,
    /// Split computing: which split points the decision may weigh.
    pub split: crate::config::SplitConfig,
    /// A local task whose model is estimated at most this long runs on the
    /// thread that accepted it when a worker waits idle and nothing is
    /// queued (see [`inline`]); zero: always on a worker.
    pub inline_max: Duration,
    /// The cgroup every worker thread joins at start (see
    /// [`crate::cpu::InferenceCgroup`]): local inference runs under its
    /// limits, the rest of the agent outside them. Runs inline are off
    /// with it (they would run on a runtime thread, outside it).
    pub inference_cgroup: Option<crate::cpu::InferenceCgroup>,
}

/// Counters of what happened to tasks, for logs, the demo and metrics.
#[derive(Debug, Default)]
pub struct Stats {
    pub accepted: AtomicU64,
    pub rejected: AtomicU64,
    pub completed_local: AtomicU64,
    pub completed_quic: AtomicU64,
    pub completed_grpc: AtomicU64,
    pub fell_back: AtomicU64,
    /// Offloads not answered while a local run could still meet the
    /// deadline: the task runs here too (with a deadline; the first answer
    /// wins) or instead (without one).
    pub rescued: AtomicU64,
    /// Tasks queued locally, then offloaded when the queue made them late.
    pub moved: AtomicU64,
    /// Tasks held in the store for the cloud, and held tasks forwarded.
    pub held: AtomicU64,
    pub forwarded: AtomicU64,
    pub failed: AtomicU64,
    pub cancelled: AtomicU64,
    /// Tasks run on both paths, and which leg answered (a rescued task's
    /// too).
    pub hedged: AtomicU64,
    pub hedge_won_local: AtomicU64,
    pub hedge_won_cloud: AtomicU64,
    /// Local tasks run on the thread that accepted them (see [`inline`]).
    pub ran_inline: AtomicU64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct StatsSnapshot {
    pub accepted: u64,
    pub rejected: u64,
    pub completed_local: u64,
    pub completed_quic: u64,
    pub completed_grpc: u64,
    pub fell_back: u64,
    pub rescued: u64,
    pub moved: u64,
    pub held: u64,
    pub forwarded: u64,
    pub failed: u64,
    pub cancelled: u64,
    pub hedged: u64,
    pub hedge_won_local: u64,
    pub hedge_won_cloud: u64,
    pub ran_inline: u64,
}

/// The most late queued tasks one arrival decides again (each costs a
/// decision under the state lock).
const MAX_RECONSIDERED: usize = 4;
/// Added to twice the local estimate when deciding that the cloud is too
/// late for a deadline: room for the local queue and a slow run.
const RESCUE_SLACK: Duration = Duration::from_millis(10);
/// Least time a task without a deadline waits for the cloud before it runs
/// locally: a dead link or peer surfaces as a transport error within about
/// a second (keep-alives), but requests queued behind a failing connect
/// can wait longer.
const NO_DEADLINE_PATIENCE: Duration = Duration::from_secs(2);
/// Execution times keep their full weight for `EXEC_FRESH_FOR` after the
/// newest measurement, then lose half of it to the seed every
/// `EXEC_HALF_LIFE`: a path that no task takes is not measured, and a
/// slow moment must not keep it looking slow for good.
pub const EXEC_FRESH_FOR: Duration = Duration::from_secs(2);
pub const EXEC_HALF_LIFE: Duration = Duration::from_secs(2);

/// An execution-time model (EWMA weight 0.2) that ages as above.
pub fn exec_times<K: Eq + std::hash::Hash + Copy>(fallback: Duration) -> ExecTimeModel<K> {
    ExecTimeModel::new(0.2, fallback).with_aging(EXEC_FRESH_FOR, EXEC_HALF_LIFE)
}

/// An offload is overdue after twice its predicted p95, and never before
/// this: a shorter wait would take a pause of the cloud, or of this busy
/// edge's probes (every 100 ms by default), for a dead link (at 100 ms,
/// loaded test machines saw live endpoints go silent).
const OVERDUE_MIN: Duration = Duration::from_millis(250);

struct Job {
    task: Task,
    decision: Option<Decision>,
    reply: Reply,
    fell_back: bool,
    /// Sent to another endpoint after the first one did not answer in
    /// time (once at most).
    rerouted: bool,
    /// The task's place among the outstanding ones (shared by the legs of
    /// a hedged task): released when the last holder is dropped, whether
    /// the job was finished, cancelled or lost in a panic, so shutdown
    /// never waits for a task nobody will finish.
    claim: Arc<Claim>,
    /// A split offload's features, once its head ran here.
    features: Option<proto::Features>,
}

impl Job {
    fn new(task: Task, decision: Option<Decision>, reply: Reply, claim: Arc<Claim>) -> Job {
        Job {
            task,
            decision,
            reply,
            fell_back: false,
            rerouted: false,
            claim,
            features: None,
        }
    }

    /// The split point whose head this job runs in the local queue before
    /// it is offloaded (a task that fell back runs the local model).
    fn head_to_run(&self) -> Option<PointIndex> {
        if self.fell_back || self.features.is_some() {
            return None;
        }
        self.decision
            .as_ref()
            .filter(|d| d.path == ExecPath::Cloud)
            .and_then(|d| d.split)
    }

    /// Sends the job to endpoint `other` next (once).
    fn reroute_to(&mut self, other: usize) {
        if let Some(d) = self.decision.as_mut() {
            d.endpoint = other;
        }
        self.rerouted = true;
    }
}

/// Tasks accepted and not yet finished; shutdown waits for zero.
#[derive(Default)]
struct Outstanding {
    count: AtomicU64,
    drained: Notify,
    /// Claims ever taken: a busy period's tasks are the claims taken
    /// during it.
    claims: AtomicU64,
    /// The edge's busy periods (count above zero), for inline runs;
    /// locked only when one starts or ends.
    periods: Mutex<BusyPeriods>,
}

/// The edge's busy periods: from a task accepted by an idle edge to the
/// count falling back to zero.
#[derive(Default)]
struct BusyPeriods {
    /// When the last one ended (`None`: none yet).
    idle_since: Option<Instant>,
    /// The first claim of the current one, and the last one's tasks.
    first_claim: u64,
    last_tasks: u64,
}

/// One accepted task's hold on [`Outstanding`], released on drop.
struct Claim(Arc<Outstanding>);

impl Claim {
    fn new(o: &Arc<Outstanding>) -> Arc<Claim> {
        let claim = o.claims.fetch_add(1, Ordering::SeqCst);
        if o.count.fetch_add(1, Ordering::SeqCst) == 0 {
            o.periods
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .first_claim = claim;
        }
        Arc::new(Claim(o.clone()))
    }
}

impl Drop for Claim {
    fn drop(&mut self) {
        if self.0.count.fetch_sub(1, Ordering::SeqCst) == 1 {
            let mut p = self.0.periods.lock().unwrap_or_else(|e| e.into_inner());
            p.idle_since = Some(Instant::now());
            p.last_tasks = self.0.claims.load(Ordering::SeqCst) - p.first_claim;
            drop(p);
            self.0.drained.notify_waiters();
        }
    }
}

/// Where a job's one result goes.
enum Reply {
    One(oneshot::Sender<TaskResult>),
    /// One leg of a hedged task.
    Hedged(Arc<HedgedReply>),
}

/// The reply two legs share: the first success answers (or, when both
/// fail, the last failure), and `done` tells the other leg to stop.
struct HedgedReply {
    tx: Mutex<Option<oneshot::Sender<TaskResult>>>,
    legs: AtomicU32,
    done: CancellationToken,
}

impl Reply {
    /// Nobody waits for this job's result any more.
    fn is_closed(&self) -> bool {
        match self {
            Reply::One(tx) => tx.is_closed(),
            Reply::Hedged(h) => {
                h.done.is_cancelled()
                    || h.tx
                        .lock()
                        .expect("hedge lock")
                        .as_ref()
                        .is_none_or(|tx| tx.is_closed())
            }
        }
    }

    /// Resolves when nobody waits for the result any more (for a hedged
    /// leg: when the other leg answered).
    async fn closed(&mut self) {
        match self {
            Reply::One(tx) => tx.closed().await,
            Reply::Hedged(h) => h.done.cancelled().await,
        }
    }
}

struct LocalState {
    queue: TaskQueue<Job>,
    /// Per worker: what it runs.
    in_flight: Vec<Option<Run>>,
    /// Per worker: waiting for work with nothing in hand.
    waiting: Vec<bool>,
    /// Per worker: its slot is lent to a run on an accepting thread (see
    /// [`inline`]); it takes no work until the slot is back.
    lent: Vec<bool>,
    /// When the workers were busy lately: the decision prices the work a
    /// path adds to them...
    load: LoadMeter,
    /// The same per priority (low to critical): work of a higher priority
    /// than a task's goes before it, also when it arrives later.
    load_by_priority: [LoadMeter; 4],
    /// ...or at the process's CPU load, when that is higher (under a quota,
    /// a spent allowance stalls every path through the edge). With an
    /// inference cgroup, the workers' own CPU time against its quota.
    cpu: CpuMeter,
    /// The workers' CPU clocks, when the meter reads them (with an
    /// inference cgroup) rather than the whole process's.
    worker_clocks: Option<Vec<nix::time::ClockId>>,
    /// Per task type, the run-time estimate its queued tasks are costed at.
    costed_at: HashMap<TaskType, Duration>,
    /// The path chosen for the latest task of each type (hysteresis).
    last_path: HashMap<TaskType, ExecPath>,
    stopping: bool,
}

/// A worker's run in flight.
#[derive(Clone)]
struct Run {
    start: Instant,
    /// How long it should take...
    expected: Duration,
    /// ...and how long its model's recent runs took around their estimate,
    /// for a run that overruns.
    shape: RunShape,
    /// Its priority (a batch's: its first task's).
    priority: Priority,
}

/// The window the workers' load is read over.
const LOAD_WINDOW: Duration = Duration::from_secs(1);

impl LocalState {
    /// Queued tasks of lower priority than `priority`: those a new task of
    /// it runs ahead of.
    fn queued_below(&self, priority: Priority) -> usize {
        self.queue.count_matching(|j| j.task.priority < priority)
    }

    /// How busy the edge is: its workers' or its CPU allowance's share in
    /// use, whichever is higher.
    fn edge_load(&self, now: Instant) -> f64 {
        self.load.load(now).max(self.cpu.load(now))
    }

    /// Samples the process's CPU time now, if the meter wants a sample.
    fn sample_cpu(&mut self, now: Instant) {
        if self.cpu.wants_sample(now) {
            let used = match &self.worker_clocks {
                Some(clocks) => crate::cpu::threads_used(clocks),
                None => crate::cpu::used(),
            };
            if let Some(used) = used {
                self.cpu.observe(now, used);
            }
        }
    }

    /// Worker `index` finished what it ran.
    fn worker_done(&mut self, index: usize) {
        if let Some(run) = self.in_flight[index].take() {
            let end = Instant::now();
            self.load.add(run.start, end);
            self.load_by_priority[priority_index(run.priority)].add(run.start, end);
        }
    }

    /// The time each run in flight has left (by its estimate, or once
    /// overrun, by its model's recent runs).
    fn busy(&self, now: Instant) -> Vec<Duration> {
        self.in_flight
            .iter()
            .flatten()
            .map(|run| {
                run.shape
                    .time_left(run.expected, now.saturating_duration_since(run.start))
            })
            .collect()
    }

    /// The workers' recent load from work of a higher priority than
    /// `priority`.
    fn higher_load(&self, priority: Priority, now: Instant) -> f64 {
        self.load_by_priority[priority_index(priority) + 1..]
            .iter()
            .map(|m| m.load(now))
            .sum()
    }
}

fn priority_index(p: Priority) -> usize {
    match p {
        Priority::Low => 0,
        Priority::Medium => 1,
        Priority::High => 2,
        Priority::Critical => 3,
    }
}

struct Inner {
    cfg: ManagerConfig,
    /// The settings a configuration reload (SIGHUP) may change.
    live: Mutex<Live>,
    local_specs: HashMap<TaskType, ModelSpec>,
    local_times: SharedExecTimes,
    /// One engine per worker; a model update swaps them all.
    engines: Arc<EnginePool>,
    /// What the predictions missed, per path, task type, endpoint (0 for
    /// the local path) and offload variant ([`variant_key`]).
    residuals: Mutex<Residuals<ResidualKey>>,
    /// Split computing: the split points the decision may use.
    splits: SplitPoints,
    /// Where a split task's offload is spawned once its head ran on a
    /// worker thread (`None` outside a runtime: no split offloads).
    runtime: Option<tokio::runtime::Handle>,
    state: Mutex<LocalState>,
    work_ready: Condvar,
    /// Where tasks may be offloaded; empty: nowhere.
    endpoints: Vec<Endpoint>,
    offload_permits: Semaphore,
    probe_events: mpsc::Sender<ProbeEvent>,
    /// Cancelled when shutdown begins: no more tasks are accepted.
    intake_closed: CancellationToken,
    outstanding: Arc<Outstanding>,
    stats: Stats,
    store: Option<Arc<TaskStore>>,
    audit: Option<crate::audit::AuditLog>,
    /// Submitters waiting for a held task's result.
    held: Mutex<Held>,
    /// Wakes the forwarder when a task is held.
    forward_ready: Notify,
    /// Wakes the expiry loop when a task is queued or the workers stop.
    queue_pushed: Notify,
}

struct Live {
    policy: Policy,
    hedge_budget: f64,
}

#[derive(Default)]
struct Held {
    jobs: HashMap<String, Vec<Job>>,
    /// Shutdown began: a held task's submitter is answered at once.
    closed: bool,
}

type ResidualKey = (ExecPath, TaskType, usize, u8);

/// An offload variant in residual keys: 0 whole, 1 + the split point.
fn variant_key(split: Option<PointIndex>) -> u8 {
    split.map_or(0, |p| p.saturating_add(1))
}

/// A local run in residual keys: 1 when the task was predicted to wait
/// for a worker, else 0. A run that waits follows other runs, and under a
/// CPU quota those leave it a debt that the model's run times (of mostly
/// runs on an idle worker: most find one) leave out; the decision reads a
/// queued run's outlook from these residuals (`predicted_to_queue`).
fn local_key(queue_wait: Duration) -> u8 {
    u8::from(agent_core::predicted_to_queue(queue_wait))
}

/// How long a prediction's residual counts: a path (an endpoint) that gets
/// no tasks sheds the penalty of its last bad moment and is tried again.
const RESIDUAL_MAX_AGE: Duration = Duration::from_secs(10);

/// Between two attempts of the forwarder while the cloud stays away.
const FORWARD_RETRY: Duration = Duration::from_secs(1);
/// Held tasks forwarded at once.
const FORWARD_BATCH: usize = 8;

fn held_message(id: &str) -> String {
    format!(
        "task {id:?} is held in the edge's store and is sent when the cloud is back, also after a \
         restart of the edge; submit the same task id again to get its result"
    )
}

/// One offload endpoint as the manager gets it.
pub struct EndpointParts {
    pub name: String,
    pub offloader: Arc<dyn Offloader>,
    /// The endpoint's host: whose network estimate applies, and where
    /// offload transfers are reported.
    pub dest: IpAddr,
    pub net: watch::Receiver<NetworkStatus>,
    /// The endpoint's circuit breakers: with every one open it is skipped.
    pub health: Option<agent_net::StackHealth>,
    /// A peer gateway: what it receives from us runs there and is never
    /// offloaded again.
    pub peer: bool,
    /// The task types it serves; `None`: every type.
    pub serves: Option<HashSet<TaskType>>,
    /// It runs split models' tails (our cloud service).
    pub splits: bool,
}

/// An endpoint and what the manager learns about it.
struct Endpoint {
    parts: EndpointParts,
    cloud_times: Mutex<ExecTimeModel<TaskType>>,
    /// Server times of split tails, per task type and split point.
    tail_times: Mutex<ExecTimeModel<(TaskType, PointIndex)>>,
    /// Our uploads to it, queued on the uplink.
    uplink: Mutex<UplinkQueue>,
    /// Offloads sent there that have not answered yet.
    in_flight: AtomicU64,
    /// Whether it has gone silent (an offload overdue, nothing heard).
    /// The offload connection's newest packet counts (QUIC): its loss
    /// feeds the link estimate, as the kernel's TCP retransmits do.
    packets: Mutex<Option<PacketCounts>>,
    silence: Mutex<Silence>,
}

impl Endpoint {
    /// An offload is overdue and nothing has been heard from here since
    /// it was sent.
    fn silent(&self) -> bool {
        let heard_at = self.parts.net.borrow().heard_at;
        self.silence.lock().expect("silence").is_silent(heard_at)
    }

    /// Whether a task of type `t` may be sent here now: it serves the type,
    /// its host answers the probes, and not every circuit towards it is
    /// open.
    fn usable(&self, t: TaskType, now: Instant) -> bool {
        if self.parts.serves.as_ref().is_some_and(|s| !s.contains(&t)) {
            return false;
        }
        if !self.parts.net.borrow().reachable || self.silent() {
            return false;
        }
        self.parts.health.as_ref().is_none_or(|h| {
            h.breakers(now)
                .iter()
                .any(|(_, s)| !matches!(s, agent_net::BreakerState::Open { .. }))
        })
    }
}

/// The request context key that marks a task offloaded by a gateway to a
/// peer: the peer runs it itself and never offloads it again.
pub const PEER_HOP: &str = "edge-offload-hop";

pub struct Manager {
    inner: Arc<Inner>,
    workers: Mutex<Vec<JoinHandle<()>>>,
}

/// What the manager needs from its surroundings.
pub struct ManagerParts {
    pub local_specs: HashMap<TaskType, ModelSpec>,
    pub engine_factory: EngineFactory,
    pub local_times: SharedExecTimes,
    /// Offload endpoints; empty: every task runs locally.
    pub endpoints: Vec<EndpointParts>,
    pub probe_events: mpsc::Sender<ProbeEvent>,
    /// Store and forward (`None`: off).
    pub store: Option<Arc<TaskStore>>,
    /// The decision audit log (`None`: off).
    pub audit: Option<crate::audit::AuditLog>,
}

impl Manager {
    /// Loads one engine per worker (failing fast if a model is broken) and
    /// starts the workers.
    pub fn start(mut cfg: ManagerConfig, parts: ManagerParts) -> anyhow::Result<Manager> {
        let n = cfg.workers.max(1);
        let process_cores = crate::cpu::allowance_cores();
        let cpu_allowance = match &cfg.inference_cgroup {
            Some(cg) => {
                if !cfg.inline_max.is_zero() {
                    tracing::info!(
                        "runs inline are off: local inference runs in the inference cgroup only"
                    );
                    cfg.inline_max = Duration::ZERO;
                }
                let quota = cg.quota_cores();
                tracing::info!(
                    cgroup = %cg.path().display(),
                    quota_cores = quota,
                    "local inference workers join the inference cgroup"
                );
                quota.map_or(process_cores, |q| q.min(process_cores))
            }
            None => process_cores,
        };
        let runtime = tokio::runtime::Handle::try_current().ok();
        let engines = (0..n)
            .map(|_| (parts.engine_factory)())
            .collect::<anyhow::Result<Vec<_>>>()?;
        let no_specs = HashMap::new();
        let splits = SplitPoints::new(
            if runtime.is_some() {
                &parts.local_specs
            } else {
                &no_specs
            },
            &cfg.split,
            |t| engines[0].split_head_times(t),
        );
        let endpoints = parts
            .endpoints
            .into_iter()
            .map(|parts| {
                let mut cloud_times = exec_times(cfg.cloud_expected);
                for t in TaskType::ALL {
                    cloud_times.seed(t, cfg.cloud_expected);
                }
                let mut tail_times = exec_times(cfg.cloud_expected);
                for t in TaskType::ALL {
                    for i in 0..splits.of(t).len() {
                        let i = i as PointIndex;
                        tail_times.seed((t, i), splits.tail_seed(t, i, cfg.cloud_expected));
                    }
                }
                Endpoint {
                    parts,
                    cloud_times: Mutex::new(cloud_times),
                    tail_times: Mutex::new(tail_times),
                    uplink: Mutex::new(UplinkQueue::new()),
                    in_flight: AtomicU64::new(0),
                    silence: Mutex::new(Silence::new()),
                    packets: Mutex::new(None),
                }
            })
            .collect();
        let inner = Arc::new(Inner {
            local_specs: parts.local_specs,
            local_times: parts.local_times,
            engines: EnginePool::new(engines),
            residuals: Mutex::new(Residuals::new(32, 4).with_max_age(RESIDUAL_MAX_AGE)),
            splits,
            runtime,
            state: Mutex::new(LocalState {
                queue: TaskQueue::new(cfg.queue_capacity, cfg.queue_capacity_bytes),
                in_flight: vec![None; n],
                waiting: vec![false; n],
                lent: vec![false; n],
                load: LoadMeter::new(LOAD_WINDOW, n),
                load_by_priority: std::array::from_fn(|_| LoadMeter::new(LOAD_WINDOW, n)),
                cpu: CpuMeter::new(cpu_allowance, LOAD_WINDOW),
                worker_clocks: cfg.inference_cgroup.as_ref().map(|_| Vec::new()),
                costed_at: HashMap::new(),
                last_path: HashMap::new(),
                stopping: false,
            }),
            work_ready: Condvar::new(),
            endpoints,
            offload_permits: Semaphore::new(cfg.max_concurrent_offloads.max(1)),
            probe_events: parts.probe_events,
            intake_closed: CancellationToken::new(),
            outstanding: Arc::default(),
            stats: Stats::default(),
            store: parts.store,
            audit: parts.audit,
            held: Mutex::default(),
            forward_ready: Notify::new(),
            queue_pushed: Notify::new(),
            live: Mutex::new(Live {
                policy: cfg.policy.clone(),
                hedge_budget: cfg.hedge_budget,
            }),
            cfg,
        });
        if inner.store.is_some() {
            if let Ok(rt) = tokio::runtime::Handle::try_current() {
                rt.spawn(forward_loop(inner.clone()));
            }
        }
        // Each worker sends whether it joined the inference cgroup (`Err`:
        // it did not, and ended) and then how its warm-up went.
        let (started_tx, started) = std::sync::mpsc::channel();
        let spawned = (0..n)
            .map(|i| {
                let inner = inner.clone();
                let started = started_tx.clone();
                std::thread::Builder::new()
                    .name(format!("infer-{i}"))
                    .spawn(move || {
                        if let Err(e) = join_inference_cgroup(&inner) {
                            let _ = started.send(Err(e));
                            return;
                        }
                        let _ = started.send(Ok(warm_worker(&inner)));
                        drop(started);
                        worker_loop(inner, i)
                    })
            })
            .collect::<std::io::Result<Vec<_>>>();
        drop(started_tx);
        let stop_workers = |workers: Vec<JoinHandle<()>>| {
            inner.state.lock().expect("state lock").stopping = true;
            inner.work_ready.notify_all();
            for h in workers {
                let _ = h.join();
            }
        };
        let workers = match spawned {
            Ok(w) => w,
            Err(e) => {
                // The workers that did start end with the channel: they
                // hold its senders until they have warmed up.
                for _ in started.iter() {}
                stop_workers(Vec::new());
                return Err(anyhow::Error::new(e).context("starting the inference workers"));
            }
        };
        // The manager is ready when every worker is: a task accepted now
        // waits for no first run.
        let mut not_joined = None;
        for r in started.iter() {
            match r {
                Ok(Err(e)) => tracing::warn!(error = %format!("{e:#}"), "warming up a worker"),
                Ok(Ok(())) => {}
                Err(e) => not_joined = not_joined.or(Some(e)),
            }
        }
        if let Some(e) = not_joined {
            stop_workers(workers);
            return Err(e);
        }
        if let Ok(rt) = tokio::runtime::Handle::try_current() {
            rt.spawn(expiry_loop(inner.clone()));
        }
        Ok(Manager {
            inner,
            workers: Mutex::new(workers),
        })
    }

    pub fn stats(&self) -> StatsSnapshot {
        let s = &self.inner.stats;
        let g = |a: &AtomicU64| a.load(Ordering::Relaxed);
        StatsSnapshot {
            accepted: g(&s.accepted),
            rejected: g(&s.rejected),
            completed_local: g(&s.completed_local),
            completed_quic: g(&s.completed_quic),
            completed_grpc: g(&s.completed_grpc),
            fell_back: g(&s.fell_back),
            rescued: g(&s.rescued),
            moved: g(&s.moved),
            held: g(&s.held),
            forwarded: g(&s.forwarded),
            failed: g(&s.failed),
            cancelled: g(&s.cancelled),
            hedged: g(&s.hedged),
            hedge_won_local: g(&s.hedge_won_local),
            hedge_won_cloud: g(&s.hedge_won_cloud),
            ran_inline: g(&s.ran_inline),
        }
    }

    /// Changes the policy and the hedge budget for the tasks that come next
    /// (a configuration reload).
    pub fn reconfigure(&self, policy: Policy, hedge_budget: f64) {
        let mut live = self.inner.live.lock().expect("live lock");
        live.policy = policy;
        live.hedge_budget = hedge_budget;
    }

    /// The policy deciding now.
    pub fn policy(&self) -> Policy {
        self.inner.live.lock().expect("live lock").policy.clone()
    }

    /// The local workers' engines (a model update swaps them).
    pub fn engines(&self) -> Arc<EnginePool> {
        self.inner.engines.clone()
    }

    /// The network estimate of the first endpoint (the cloud, with one).
    pub fn network_status(&self) -> NetworkStatus {
        self.inner
            .endpoints
            .first()
            .map(|e| e.parts.net.borrow().clone())
            .unwrap_or_default()
    }

    /// Each endpoint's name and network estimate, in configuration order.
    pub fn endpoint_statuses(&self) -> Vec<(String, NetworkStatus)> {
        self.inner
            .endpoints
            .iter()
            .map(|e| (e.parts.name.clone(), e.parts.net.borrow().clone()))
            .collect()
    }

    /// The name of endpoint `index` (a [`Decision::endpoint`]).
    /// The name of a task type's split point `index` (`Decision::split`).
    pub fn split_point_name(&self, t: TaskType, index: u8) -> Option<String> {
        self.inner.splits.get(t, index).map(|p| p.name.clone())
    }

    pub fn endpoint_name(&self, index: usize) -> Option<&str> {
        self.inner
            .endpoints
            .get(index)
            .map(|e| e.parts.name.as_str())
    }

    /// Accepted tasks not finished yet.
    pub fn outstanding(&self) -> u64 {
        self.inner.outstanding.count.load(Ordering::SeqCst)
    }

    pub fn queue_len(&self) -> usize {
        self.inner.state.lock().expect("state lock").queue.len()
    }

    /// Accepts a task, or rejects it with a clear error (bad input, full
    /// queue, shutting down). An accepted task's one result arrives on the
    /// returned channel, also when it fails.
    pub fn submit(&self, task: Task) -> Result<oneshot::Receiver<TaskResult>, TaskError> {
        let inner = &self.inner;
        let rejected = |e: TaskError| {
            inner.stats.rejected.fetch_add(1, Ordering::Relaxed);
            crate::metrics::record_rejection(&e);
            Err(e)
        };
        if inner.intake_closed.is_cancelled() {
            return rejected(TaskError::Unavailable("agent is shutting down".into()));
        }
        if let Some(spec) = inner.local_specs.get(&task.task_type) {
            if let Err(e) = spec.validate_payload(&task.payload) {
                return rejected(e);
            }
        }
        if let Some(rx) = inner.answer_known(&task) {
            return Ok(rx);
        }
        let (tx, rx) = oneshot::channel();
        let now = Instant::now();
        let decision = {
            let mut state = inner.state.lock().expect("state lock");
            state.sample_cpu(now);
            // Each arrival first drops the queued tasks nobody waits for (a
            // hedged task's local leg once its offload answered: it would
            // count in every estimate of the queue until a worker got to
            // it), reconsiders the ones that have become late, then is
            // decided against the queue they leave.
            for job in state.queue.take_matching(|j: &Job| j.reply.is_closed()) {
                inner.finish_cancelled(job);
            }
            for job in state.queue.take_expired(now) {
                inner.finish_expired(job);
            }
            inner.recost_queue(&mut state, now);
            let moved = inner.take_late(&mut state, now);
            self.inner.offload_moved(moved);
            let mut decision = inner.decide(&state, &task, now, None);
            if let Ok(d) = &mut decision {
                state.last_path.insert(task.task_type, d.path);
                // Hedge within the budget, with a local leg that fits (a
                // split offload's head already runs here: no hedge).
                d.hedge = d.hedge
                    && d.split.is_none()
                    && !inner.endpoints.is_empty()
                    && inner.local_specs.contains_key(&task.task_type)
                    && state.queue.room_for(task.payload.len()).is_ok()
                    && inner.hedge_allowed();
            }
            match decision {
                Ok(d) if d.hedge => {
                    let expected = inner.local_queue_cost(&state, task.task_type);
                    let shared = Arc::new(HedgedReply {
                        tx: Mutex::new(Some(tx)),
                        legs: AtomicU32::new(2),
                        done: CancellationToken::new(),
                    });
                    let claim = Claim::new(&inner.outstanding);
                    let leg = |task: Task| {
                        Job::new(
                            task,
                            Some(d.clone()),
                            Reply::Hedged(shared.clone()),
                            claim.clone(),
                        )
                    };
                    let (priority, deadline) = (task.priority, task.deadline);
                    let bytes = task.payload.len();
                    if state
                        .queue
                        .push(leg(task.clone()), priority, deadline, expected, bytes)
                        .is_err()
                    {
                        unreachable!("the queue had room under the same lock");
                    }
                    inner.accept();
                    inner.stats.hedged.fetch_add(1, Ordering::Relaxed);
                    inner.wake_worker(state);
                    tokio::spawn(run_offload(self.inner.clone(), leg(task)));
                    return Ok(rx);
                }
                // A split offload runs its head in the local queue first.
                Ok(d) if d.path == ExecPath::Local || d.split.is_some() => {
                    let expected = match d.split {
                        Some(i) => inner.splits.head_estimate(task.task_type, i),
                        None => inner.local_queue_cost(&state, task.task_type),
                    };
                    let (priority, deadline) = (task.priority, task.deadline);
                    let bytes = task.payload.len();
                    let d_split = d.split.is_some();
                    let job = Job::new(
                        task,
                        Some(d),
                        Reply::One(tx),
                        Claim::new(&inner.outstanding),
                    );
                    if !d_split {
                        if let Some((slot, engine)) = inner.lend_worker(&mut state, &job.task, now)
                        {
                            drop(state);
                            inner.accept();
                            run_inline(inner, job, slot, engine);
                            return Ok(rx);
                        }
                    }
                    // A refused job drops its claim with it. A split's
                    // head runs ahead of the whole local runs.
                    let pushed = if d_split {
                        state
                            .queue
                            .push_ahead(job, priority, deadline, expected, bytes)
                    } else {
                        state.queue.push(job, priority, deadline, expected, bytes)
                    };
                    if let Err((_, full)) = pushed {
                        drop(state);
                        return rejected(TaskError::Overloaded(full.to_string()));
                    }
                    inner.accept();
                    // A task that went ahead of queued ones may have made
                    // them late now: waiting for the next arrival to see
                    // it left them too little time for the cloud.
                    let overtaken = state.queued_below(priority) > 0;
                    let moved = if overtaken {
                        inner.take_late(&mut state, Instant::now())
                    } else {
                        Vec::new()
                    };
                    inner.wake_worker(state);
                    inner.offload_moved(moved);
                    return Ok(rx);
                }
                other => other,
            }
        };
        inner.accept();
        match decision {
            Ok(d) => {
                let job = Job::new(
                    task,
                    Some(d),
                    Reply::One(tx),
                    Claim::new(&inner.outstanding),
                );
                tokio::spawn(run_offload(self.inner.clone(), job));
            }
            // No path can work: the task fails early, with the reason.
            Err(e) => inner.finish(
                Job::new(task, None, Reply::One(tx), Claim::new(&inner.outstanding)),
                Err(e),
                None,
                None,
            ),
        }
        Ok(rx)
    }

    /// Submits and waits; a rejection comes back as a failed result.
    pub async fn execute(&self, task: Task) -> TaskResult {
        let id = task.id.clone();
        let started = Instant::now();
        match self.submit(task) {
            Ok(rx) => rx.await.unwrap_or_else(|_| TaskResult {
                task_id: id,
                outcome: Err(TaskError::Internal("result channel closed".into())),
                processed_by: None,
                transport: None,
                fell_back: false,
                duration: started.elapsed(),
                decision: None,
                timing: None,
            }),
            Err(e) => TaskResult {
                task_id: id,
                outcome: Err(e),
                processed_by: None,
                transport: None,
                fell_back: false,
                duration: started.elapsed(),
                decision: None,
                timing: None,
            },
        }
    }

    /// Stops accepting, lets every accepted task finish, then stops workers.
    pub async fn shutdown(&self) {
        self.inner.intake_closed.cancel();
        // Held tasks stay in the store; their submitters learn how to get
        // the result later.
        let waiting: Vec<Job> = {
            let mut h = self.inner.held.lock().expect("held lock");
            h.closed = true;
            h.jobs.drain().flat_map(|(_, jobs)| jobs).collect()
        };
        for job in waiting {
            let msg = held_message(&job.task.id);
            self.inner
                .finish(job, Err(TaskError::Unavailable(msg)), None, None);
        }
        loop {
            let notified = self.inner.outstanding.drained.notified();
            if self.inner.outstanding.count.load(Ordering::SeqCst) == 0 {
                break;
            }
            notified.await;
        }
        self.inner.state.lock().expect("state lock").stopping = true;
        self.inner.work_ready.notify_all();
        self.inner.queue_pushed.notify_one();
        let handles: Vec<_> = std::mem::take(&mut *self.workers.lock().expect("workers lock"));
        let _ = tokio::task::spawn_blocking(move || {
            for h in handles {
                let _ = h.join();
            }
        })
        .await;
        self.inner.engines.close();
    }
}

impl Inner {
    fn accept(&self) {
        self.stats.accepted.fetch_add(1, Ordering::Relaxed);
    }

    /// Releases the state lock and wakes a worker for the work just
    /// queued: every worker while a slot is lent (see [`inline`]), which
    /// would take the wake-up and leave the work to the others asleep.
    fn wake_worker(&self, state: std::sync::MutexGuard<'_, LocalState>) {
        let any_lent = state.lent.contains(&true);
        drop(state);
        self.queue_pushed.notify_one();
        if any_lent {
            self.work_ready.notify_all();
        } else {
            self.work_ready.notify_one();
        }
    }

    /// Whether one more hedge stays within the budget.
    fn hedge_allowed(&self) -> bool {
        let budget = self.live.lock().expect("live lock").hedge_budget;
        if budget <= 0.0 {
            return false;
        }
        let hedged = self.stats.hedged.load(Ordering::Relaxed) as f64;
        let accepted = self.stats.accepted.load(Ordering::Relaxed) as f64;
        // One hedge of slack, so the first at-risk tasks may hedge too.
        hedged < budget * accepted + 1.0
    }

    fn local_estimate(&self, t: TaskType) -> Duration {
        self.local_times
            .lock()
            .expect("exec-time lock")
            .estimate_at(t, Instant::now())
    }

    /// The model's dynamic batching: most tasks per batch, longest wait.
    fn batching(&self, t: TaskType) -> (usize, Duration) {
        self.local_specs.get(&t).map_or((1, Duration::ZERO), |s| {
            (
                s.max_batch.max(1),
                Duration::from_secs_f64(s.max_batch_delay_ms.max(0.0) / 1e3),
            )
        })
    }

    /// The batch a new task of type `t` would run in: with the tasks of its
    /// model queued now, up to the model's `max_batch`; and how much longer
    /// that batch takes than one task alone.
    fn batch_outlook(&self, state: &LocalState, t: TaskType) -> (usize, f64) {
        let (max_batch, _) = self.batching(t);
        if max_batch <= 1 {
            return (1, 1.0);
        }
        let size = (1 + state.queue.count_matching(|j| j.task.task_type == t)).min(max_batch);
        let scale = self
            .local_times
            .lock()
            .expect("exec-time lock")
            .batch_scale(t, size);
        (size, scale)
    }

    /// The queue entry's service time: a task that will share a batch of
    /// `size` holds a worker for its share of the batch.
    fn local_queue_cost(&self, state: &LocalState, t: TaskType) -> Duration {
        let (size, scale) = self.batch_outlook(state, t);
        self.local_estimate(t).mul_f64(scale / size as f64)
    }

    /// Brings the queued tasks' run times to each model's current
    /// estimate: they were costed when they arrived, and under a CPU quota
    /// a burst slows every run at once (a queue of tasks costed at 6 ms
    /// each held runs of 15 to 30 ms, and tasks predicted to wait 40 ms
    /// waited 140). The estimates follow within a few runs; the queue's
    /// wait, and which queued tasks are late, follow them.
    fn recost_queue(&self, state: &mut LocalState, now: Instant) {
        let estimates: Vec<(TaskType, Duration)> = {
            let times = self.local_times.lock().expect("exec-time lock");
            self.local_specs
                .keys()
                .map(|&t| (t, times.estimate_at(t, now)))
                .collect()
        };
        for (t, estimate) in estimates {
            let Some(before) = state.costed_at.insert(t, estimate) else {
                continue;
            };
            if before.is_zero() || before == estimate {
                continue;
            }
            let factor = estimate.as_secs_f64() / before.as_secs_f64();
            state.queue.rescale(
                |j: &Job| j.task.task_type == t && j.head_to_run().is_none(),
                factor,
            );
        }
    }

    /// Queued local tasks that the queue has made late (they would end past
    /// their deadline if it ran in order) are decided again, at most
    /// [`MAX_RECONSIDERED`] per call: those the policy now sends to the
    /// cloud leave the queue and come back, with their new decision, for
    /// the caller to offload once the lock is released. A burst of
    /// higher-priority work that their first decision did not foresee shows
    /// here, before their deadlines pass.
    fn take_late(&self, state: &mut LocalState, now: Instant) -> Vec<Job> {
        let reconsiders = self
            .live
            .lock()
            .expect("live lock")
            .policy
            .reconsiders_queued();
        if !reconsiders || self.endpoints.is_empty() {
            return Vec::new();
        }
        let busy = state.busy(now);
        let mut moves = Vec::new();
        let late = state.queue.late(now, &busy, self.cfg.workers.max(1));
        let movable = late.into_iter().filter(|(_, job, _)| {
            matches!(job.reply, Reply::One(_))
                && !job.fell_back
                && job.features.is_none()
                && job
                    .decision
                    .as_ref()
                    .is_some_and(|d| d.path == ExecPath::Local && d.split.is_none())
        });
        for (id, job, _) in movable.take(MAX_RECONSIDERED) {
            match self.decide(state, &job.task, now, Some(id)) {
                Ok(mut d) if d.path == ExecPath::Cloud && d.split.is_none() => {
                    d.reason = Reason::MovedFromLateQueue;
                    d.hedge = false;
                    moves.push((id, d));
                }
                _ => {}
            }
        }
        moves
            .into_iter()
            .filter_map(|(id, d)| {
                let mut job = state.queue.remove(id)?;
                job.decision = Some(d);
                Some(job)
            })
            .collect()
    }

    /// An endpoint heard again after a silence: the residuals its offloads
    /// left from the silence's start (tasks that expired into the dead
    /// link, answers that came back only with it) describe the outage, and
    /// kept, they would price its offloads high for seconds after.
    fn forget_outages(&self) {
        for (i, e) in self.endpoints.iter().enumerate() {
            let heard_at = e.parts.net.borrow().heard_at;
            let Some(since) = e.silence.lock().expect("silence").recovered(heard_at) else {
                continue;
            };
            self.residuals
                .lock()
                .expect("residuals lock")
                .forget_since(|k| k.0 == ExecPath::Cloud && k.2 == i, since);
        }
    }

    /// Offloads the tasks [`Inner::take_late`] took out of the queue.
    fn offload_moved(self: &Arc<Self>, moved: Vec<Job>) {
        for job in moved {
            self.stats.moved.fetch_add(1, Ordering::Relaxed);
            crate::metrics::record_moved_from_queue();
            tokio::spawn(run_offload(self.clone(), job));
        }
    }

    /// Decides per usable endpoint (two drawn at random among more than
    /// two) and keeps the decision of the endpoint whose offload looks
    /// best; without any, the decision for the local path alone. `queued`:
    /// the task is in the local queue already (decided again), and waits
    /// there only for the work ahead of it.
    fn decide(
        &self,
        state: &LocalState,
        task: &Task,
        now: Instant,
        queued: Option<QueueId>,
    ) -> Result<Decision, TaskError> {
        self.forget_outages();
        // A task a peer gateway offloaded to us runs here.
        let from_peer = task.context.contains_key(PEER_HOP);
        let serving = |i: &usize| {
            self.endpoints[*i]
                .parts
                .serves
                .as_ref()
                .is_none_or(|s| s.contains(&task.task_type))
        };
        let mut usable: Vec<usize> = if from_peer {
            Vec::new()
        } else {
            (0..self.endpoints.len())
                .filter(|&i| self.endpoints[i].usable(task.task_type, now))
                .collect()
        };
        if usable.is_empty() && !from_peer {
            // None reachable with a closed circuit: the endpoints stay
            // candidates (each decision weighs its own estimate), so an
            // offload fails fast and the task falls back or is held.
            usable = (0..self.endpoints.len()).filter(serving).collect();
        }
        if usable.is_empty() {
            return self.decide_for(state, task, now, queued, None, None);
        }
        let candidates = agent_core::endpoint_candidates(&usable, rand::random());
        // Per endpoint, the whole offload and each split point it may use.
        let policy = self.live.lock().expect("live lock").policy.clone();
        let options: Vec<(usize, Option<PointIndex>)> = candidates
            .iter()
            .flat_map(|&i| {
                self.variants(task.task_type, i, &policy)
                    .into_iter()
                    .map(move |v| (i, v))
            })
            .collect();
        if let [(i, v)] = options[..] {
            return self.decide_for(state, task, now, queued, Some(i), v);
        }
        let mut decisions = Vec::with_capacity(options.len());
        let mut first_err = None;
        for &(i, v) in &options {
            match self.decide_for(state, task, now, queued, Some(i), v) {
                Ok(d) => decisions.push(d),
                Err(e) => {
                    first_err.get_or_insert(e);
                }
            }
        }
        match agent_core::pick_endpoint(&decisions) {
            Some(best) => Ok(decisions.swap_remove(best)),
            None => Err(first_err.expect("a decision or an error per candidate")),
        }
    }

    /// The ways a task of type `t` may be offloaded to `endpoint` under
    /// `policy`: whole (`None`), or through a split point.
    fn variants(&self, t: TaskType, endpoint: usize, policy: &Policy) -> Vec<Option<PointIndex>> {
        let splits_here = self.endpoints[endpoint].parts.splits && !self.splits.of(t).is_empty();
        if let Some(name) = policy.fixed_split() {
            return vec![self.splits.index_of(t, name).filter(|_| splits_here)];
        }
        let mut v = vec![None];
        if splits_here && policy.weighs_splits() && self.cfg.split.enabled {
            v.extend((0..self.splits.of(t).len()).map(|i| Some(i as PointIndex)));
        }
        v
    }

    /// The policy's decision between the local path and `endpoint` (none:
    /// no offload possible), offloading the whole task or, with `split`,
    /// the features of that split point's head run here.
    fn decide_for(
        &self,
        state: &LocalState,
        task: &Task,
        now: Instant,
        queued: Option<QueueId>,
        endpoint: Option<usize>,
        split: Option<PointIndex>,
    ) -> Result<Decision, TaskError> {
        let busy = state.busy(now);
        let ep = endpoint.map(|i| &self.endpoints[i]);
        let mut net = ep.map_or_else(NetworkStatus::default, |e| e.parts.net.borrow().clone());
        // A silent endpoint is unreachable whatever its estimate says: the
        // estimate notices a dead link only seconds later.
        if ep.is_some_and(Endpoint::silent) {
            net.reachable = false;
        }
        // In a batch, the task's own run is the whole batch's.
        let (_, batch_scale) = self.batch_outlook(state, task.task_type);
        let local_dist: Vec<f64> = self
            .local_times
            .lock()
            .expect("exec-time lock")
            .distribution_ms_at(task.task_type, now)
            .into_iter()
            .map(|ms| ms * batch_scale)
            .collect();
        let t = task.task_type;
        let (cloud_dist, cloud_inference) =
            ep.map_or((Vec::new(), Duration::ZERO), |e| match split {
                Some(i) => {
                    let times = e.tail_times.lock().expect("tail times");
                    (
                        times.distribution_ms_at((t, i), now),
                        times.estimate_at((t, i), now),
                    )
                }
                None => {
                    let times = e.cloud_times.lock().expect("cloud times");
                    (times.distribution_ms_at(t, now), times.estimate_at(t, now))
                }
            });
        let workers = self.cfg.workers.max(1);
        let ahead = queued
            .and_then(|id| state.queue.wait_ahead_of(id, now, &busy, workers))
            .unwrap_or_else(|| {
                state
                    .queue
                    .wait_estimate(task.priority, now, &busy, workers)
            });
        let queue_wait =
            agent_core::wait_behind_higher(ahead, state.higher_load(task.priority, now));
        let (local_residual, cloud_residual) = {
            let r = self.residuals.lock().expect("residuals lock");
            (
                r.sorted_ms_at((ExecPath::Local, t, 0, local_key(queue_wait)), now),
                endpoint.map_or_else(Vec::new, |i| {
                    r.sorted_ms_at((ExecPath::Cloud, t, i, variant_key(split)), now)
                }),
            )
        };
        let (uplink_wait, uplink_load) = ep.map_or((Duration::ZERO, 0.0), |e| {
            let q = e.uplink.lock().expect("uplink lock");
            (q.wait(now), q.load(now))
        });
        let input = DecisionInput {
            local_residual_ms: &local_residual,
            cloud_residual_ms: &cloud_residual,
            local_dist_ms: &local_dist,
            cloud_dist_ms: &cloud_dist,
            previous: state.last_path.get(&task.task_type).copied(),
            task_type: task.task_type,
            priority: task.priority,
            payload_bytes: split.map_or(task.payload.len(), |i| self.splits.upload_bytes(t, i)),
            uplink_wait,
            edge_load: state.edge_load(now),
            uplink_load,
            split: split.map(|i| SplitInput {
                point: i,
                wait: state.queue.wait_estimate_for(
                    task.priority,
                    true,
                    now,
                    &busy,
                    self.cfg.workers.max(1),
                ),
                head: self.splits.head_estimate(t, i),
            }),
            response_bytes: self.cfg.response_bytes,
            time_left: task.time_left(now),
            net: &net,
            local: LocalStatus {
                queue_wait,
                inference: self.local_estimate(task.task_type).mul_f64(batch_scale),
                supported: self.local_specs.contains_key(&task.task_type),
                overtakes: state.queued_below(task.priority),
            },
            cloud: CloudStatus {
                inference: cloud_inference,
            },
        };
        let policy = &self.live.lock().expect("live lock").policy;
        let mut d = agent_core::decide(&input, policy)?;
        if endpoint.is_none() && d.path == ExecPath::Cloud && input.local.supported {
            // Nowhere to offload (a task from a peer, or no endpoint
            // serves its type): the local path, whatever the policy.
            d.path = ExecPath::Local;
            d.reason = agent_core::Reason::CloudUnreachable;
            d.hedge = false;
        }
        d.endpoint = endpoint.unwrap_or(0);
        Ok(d)
    }

    /// Another endpoint for a task that `from` has not answered: usable now,
    /// and whose round trip plus server time still fits the deadline; the
    /// one with the lowest such time.
    fn reroute_target(&self, job: &Job, from: usize, now: Instant) -> Option<usize> {
        let task = &job.task;
        let left = task.time_left(now);
        // Features go only where split tails run.
        let split = job.features.is_some();
        (0..self.endpoints.len())
            .filter(|&i| i != from && self.endpoints[i].usable(task.task_type, now))
            .filter(|&i| !split || self.endpoints[i].parts.splits)
            .map(|i| {
                let e = &self.endpoints[i];
                let rtt = Duration::from_secs_f64(e.parts.net.borrow().rtt.srtt_ms.max(0.0) / 1e3);
                let server = e
                    .cloud_times
                    .lock()
                    .expect("cloud times")
                    .estimate_at(task.task_type, now);
                (i, rtt + server)
            })
            .filter(|(_, need)| left.is_none_or(|l| *need < l))
            .min_by_key(|(_, need)| *need)
            .map(|(i, _)| i)
    }

    /// Ends a task whose submitter went away.
    fn finish_cancelled(&self, job: Job) {
        let e = TaskError::Cancelled("submitter went away".into());
        self.finish(job, Err(e), None, None);
    }

    /// Sends the task's one result and updates the counters.
    fn finish(
        &self,
        job: Job,
        outcome: Result<Output, TaskError>,
        processed_by: Option<ExecPath>,
        transport: Option<Transport>,
    ) {
        self.finish_timed(job, outcome, processed_by, transport, None);
    }

    /// [`Inner::finish`], with how the run that answered spent its time.
    fn finish_timed(
        &self,
        job: Job,
        outcome: Result<Output, TaskError>,
        processed_by: Option<ExecPath>,
        transport: Option<Transport>,
        timing: Option<RunTiming>,
    ) {
        let s = &self.stats;
        // `_claim` is released when this function returns, after the
        // result went out.
        let Job {
            task,
            decision,
            reply,
            fell_back,
            rerouted,
            claim: _claim,
            features: _,
        } = job;
        let tx = match reply {
            Reply::One(tx) => tx,
            Reply::Hedged(h) => {
                let last = h.legs.fetch_sub(1, Ordering::SeqCst) == 1;
                // A failed leg answers only when the other one is done too;
                // a leg that lost the race answers nothing.
                let tx = (outcome.is_ok() || last)
                    .then(|| h.tx.lock().expect("hedge lock").take())
                    .flatten();
                let Some(tx) = tx else {
                    return;
                };
                h.done.cancel();
                if outcome.is_ok() {
                    match processed_by {
                        Some(ExecPath::Cloud) => &s.hedge_won_cloud,
                        _ => &s.hedge_won_local,
                    }
                    .fetch_add(1, Ordering::Relaxed);
                }
                tx
            }
        };
        let cancelled = matches!(outcome, Err(TaskError::Cancelled(_)));
        match (&outcome, processed_by, transport) {
            (Err(_), _, _) if cancelled => 0,
            (Err(_), _, _) => s.failed.fetch_add(1, Ordering::Relaxed),
            (Ok(_), Some(ExecPath::Cloud), Some(Transport::Quic)) => {
                s.completed_quic.fetch_add(1, Ordering::Relaxed)
            }
            (Ok(_), Some(ExecPath::Cloud), _) => s.completed_grpc.fetch_add(1, Ordering::Relaxed),
            (Ok(_), _, _) => s.completed_local.fetch_add(1, Ordering::Relaxed),
        };
        if fell_back {
            s.fell_back.fetch_add(1, Ordering::Relaxed);
        }
        // A rerouted task waited at its first endpoint: its time says
        // nothing about the prediction of the second.
        self.learn_residual(
            &task,
            decision.as_ref(),
            processed_by,
            fell_back || rerouted,
            &outcome,
        );
        let result = TaskResult {
            task_id: task.id,
            outcome,
            processed_by,
            transport,
            fell_back,
            duration: task.created_at.elapsed(),
            decision,
            timing,
        };
        crate::metrics::record_result(&result, task.task_type);
        if let Some(audit) = &self.audit {
            let split = result
                .decision
                .as_ref()
                .and_then(|d| d.split)
                .and_then(|i| self.splits.get(task.task_type, i))
                .map(|p| p.name.as_str());
            audit.record(&result, task.task_type, task.priority, split);
        }
        tracing::debug!(
            task_id = %result.task_id,
            task_type = task.task_type.as_str(),
            path = result.processed_by.map_or("none", |p| p.as_str()),
            transport = result.transport.map_or("none", |t| t.as_str()),
            policy = result.decision.as_ref().map_or("none", |d| d.policy),
            reason = %result.decision.as_ref().map(|d| d.reason.to_string()).unwrap_or_default(),
            fell_back = result.fell_back,
            duration_ms = result.duration.as_secs_f64() * 1e3,
            model_version = result.outcome.as_ref().map_or("", |o| o.model_version.as_str()),
            error = %result.outcome.as_ref().err().map(ToString::to_string).unwrap_or_default(),
            "task finished"
        );
        // Counted once: cancelled before the answer, or answered to nobody.
        if tx.send(result).is_err() || cancelled {
            s.cancelled.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Checks the prediction of a task that ran where its decision sent it
    /// (no fallback, no hedge) against how long it actually took. A task
    /// that missed its deadline there took at least that long: it counts
    /// too, or the residuals would see only the tasks that made it, and a
    /// path that fails its slow tasks would look fast.
    fn learn_residual(
        &self,
        task: &Task,
        decision: Option<&Decision>,
        ran: Option<ExecPath>,
        fell_back: bool,
        outcome: &Result<Output, TaskError>,
    ) {
        let Some(d) = decision else { return };
        let counted = match outcome {
            Ok(_) => ran == Some(d.path),
            Err(TaskError::DeadlineExceeded(_)) => ran.is_none(),
            Err(_) => false,
        };
        // A task moved from the queue was predicted at its move, not at
        // its arrival.
        if !counted || fell_back || d.hedge || d.reason == Reason::MovedFromLateQueue {
            return;
        }
        let Some(o) = d.outlook() else { return };
        let actual_ms = task.created_at.elapsed().as_secs_f64() * 1e3;
        let (endpoint, variant) = match d.path {
            ExecPath::Local => (
                0,
                local_key(Duration::try_from_secs_f64(d.local.queue_ms / 1e3).unwrap_or_default()),
            ),
            ExecPath::Cloud => (d.endpoint, variant_key(d.split)),
        };
        self.residuals.lock().expect("residuals lock").observe_at(
            (d.path, task.task_type, endpoint, variant),
            actual_ms - (o.p50_ms - o.correction_ms),
            Instant::now(),
        );
    }

    /// Rescues an offload the cloud is slow to answer by running the task
    /// here as well: `job` becomes the cloud's leg of a hedged task whose
    /// local leg is queued, and the first answer wins (a leg's failure
    /// answers only once the other failed too). Without room in the queue,
    /// or time left for a local run, the offload goes on alone.
    fn run_beside(&self, job: &mut Job) {
        if !matches!(job.reply, Reply::One(_)) {
            return;
        }
        let expected = self.local_estimate(job.task.task_type);
        let now = Instant::now();
        if job.task.time_left(now).is_some_and(|left| left < expected) {
            return;
        }
        let mut state = self.state.lock().expect("state lock");
        let bytes = job.task.payload.len();
        if state.stopping || state.queue.room_for(bytes).is_err() {
            return;
        }
        let shared = Arc::new(HedgedReply {
            tx: Mutex::new(None),
            legs: AtomicU32::new(2),
            done: CancellationToken::new(),
        });
        let Reply::One(tx) = std::mem::replace(&mut job.reply, Reply::Hedged(shared.clone()))
        else {
            unreachable!("checked above");
        };
        *shared.tx.lock().expect("hedge lock") = Some(tx);
        let mut local = Job::new(
            job.task.clone(),
            job.decision.clone(),
            Reply::Hedged(shared),
            job.claim.clone(),
        );
        local.fell_back = true;
        let (p, d) = (job.task.priority, job.task.deadline);
        if state.queue.push(local, p, d, expected, bytes).is_err() {
            unreachable!("the queue had room under the same lock");
        }
        self.wake_worker(state);
    }

    /// After a failed offload: run locally if that can still meet the
    /// deadline, else fail with the offload's error.
    fn fall_back_or_fail(&self, mut job: Job, err: OffloadError, transport: Option<Transport>) {
        job = match self.try_hold(job, &err) {
            Some(job) => job,
            None => return,
        };
        if matches!(err, OffloadError::RateLimited { .. }) {
            crate::metrics::record_rate_limited();
        }
        let task_error = err.into_task_error();
        // A hedged task's local leg is already queued or running.
        let retry_locally = matches!(job.reply, Reply::One(_))
            && !matches!(task_error, TaskError::InvalidInput(_))
            && self.local_specs.contains_key(&job.task.task_type);
        // A split task that falls back runs the local model whole.
        job.features = None;
        if retry_locally {
            let expected = self.local_estimate(job.task.task_type);
            let now = Instant::now();
            let in_time = job.task.time_left(now).is_none_or(|left| left >= expected);
            if in_time {
                job.fell_back = true;
                let mut state = self.state.lock().expect("state lock");
                if !state.stopping {
                    let (p, d) = (job.task.priority, job.task.deadline);
                    let bytes = job.task.payload.len();
                    match state.queue.push(job, p, d, expected, bytes) {
                        Ok(()) => {
                            self.wake_worker(state);
                            return;
                        }
                        Err((j, _)) => job = j,
                    }
                }
            }
        }
        self.finish(job, Err(task_error), None, transport);
    }
}

impl Inner {
    /// A task whose id the store knows: its kept result, or a wait for the
    /// held task's result.
    fn answer_known(&self, task: &Task) -> Option<oneshot::Receiver<TaskResult>> {
        let store = self.store.as_ref()?;
        let kept = match store.result(&task.id) {
            Ok(r) => r,
            Err(e) => {
                tracing::warn!(error = %e, "task store unreadable");
                return None;
            }
        };
        let pending = kept.is_none() && store.is_pending(&task.id).unwrap_or(false);
        if kept.is_none() && !pending {
            return None;
        }
        let (tx, rx) = oneshot::channel();
        self.accept();
        let job = Job::new(
            task.clone(),
            None,
            Reply::One(tx),
            Claim::new(&self.outstanding),
        );
        match kept {
            Some(resp) => self.answer_from_cloud(job, &resp, None),
            None => self.wait_for_held(job),
        }
        Some(rx)
    }

    /// Holds the task in the store when it should wait for the cloud;
    /// gives the job back otherwise (or when the store is full).
    fn try_hold(&self, job: Job, err: &OffloadError) -> Option<Job> {
        let Some(store) = &self.store else {
            return Some(job);
        };
        let unreachable = matches!(
            err,
            OffloadError::Connect { .. }
                | OffloadError::Transport { .. }
                | OffloadError::CircuitOpen { .. }
                | OffloadError::Timeout
        );
        let wants_cloud =
            self.cfg.hold_runnable_locally || !self.local_specs.contains_key(&job.task.task_type);
        if !(unreachable
            && wants_cloud
            && job.task.deadline.is_none()
            && matches!(job.reply, Reply::One(_)))
        {
            return Some(job);
        }
        let req = task_to_request(&job.task, Instant::now(), SystemTime::now());
        if let Err(e) = store.hold(&req) {
            tracing::warn!(task = %job.task.id, error = %e, "cannot hold the task for the cloud");
            return Some(job);
        }
        self.stats.held.fetch_add(1, Ordering::Relaxed);
        crate::metrics::record_store(true, store.counts());
        tracing::debug!(task = %job.task.id, error = %err, "held for the cloud");
        self.forward_ready.notify_one();
        self.wait_for_held(job);
        None
    }

    fn wait_for_held(&self, job: Job) {
        let mut h = self.held.lock().expect("held lock");
        if h.closed {
            drop(h);
            let msg = held_message(&job.task.id);
            self.finish(job, Err(TaskError::Unavailable(msg)), None, None);
        } else {
            h.jobs.entry(job.task.id.clone()).or_default().push(job);
        }
    }

    /// Answers a job with what the cloud answered for it.
    fn answer_from_cloud(
        &self,
        job: Job,
        resp: &proto::TaskResponse,
        transport: Option<Transport>,
    ) {
        if resp.success {
            let out = output_from_response(resp);
            self.finish(job, Ok(out), Some(ExecPath::Cloud), transport);
        } else {
            let e = error_from_kind(resp.error_kind, resp.error_message.clone());
            self.finish(job, Err(e), None, transport);
        }
    }

    /// A held task's answer: kept in the store, given to whoever waits.
    fn deliver_held(&self, id: &str, resp: &proto::TaskResponse, transport: Option<Transport>) {
        if let Some(store) = &self.store {
            if let Err(e) = store.complete(id, resp) {
                tracing::warn!(task = id, error = %e, "cannot keep a forwarded task's result");
            }
            crate::metrics::record_store(false, store.counts());
        }
        self.stats.forwarded.fetch_add(1, Ordering::Relaxed);
        let jobs = self
            .held
            .lock()
            .expect("held lock")
            .jobs
            .remove(id)
            .unwrap_or_default();
        for job in jobs {
            self.answer_from_cloud(job, resp, transport);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::infer::{Engine, Inference};
    use agent_core::Output;

    /// A test engine's answer, after `elapsed`.
    fn answer(elapsed: Duration) -> Inference {
        Inference {
            output: Output {
                class: 0,
                confidence: 1.0,
                label: String::new(),
                boxes: Vec::new(),
                model: "m".into(),
                model_version: "1".into(),
            },
            elapsed,
        }
    }

    /// The name and cgroups of the thread each warm-up ran on.
    type Noted = Arc<Mutex<Vec<(String, String)>>>;

    /// An engine that notes, on warming up, its thread's name and cgroups.
    struct Noting(Noted);

    impl Engine for Noting {
        fn supports(&self, _: TaskType) -> bool {
            true
        }
        fn validate(&self, _: TaskType, _: &[u8]) -> Result<(), TaskError> {
            Ok(())
        }
        fn process(&mut self, _: TaskType, _: &[u8]) -> Result<Inference, TaskError> {
            Ok(answer(Duration::ZERO))
        }
        fn estimate(&self, _: TaskType) -> Duration {
            Duration::ZERO
        }
        fn warm_up(&mut self) -> anyhow::Result<()> {
            // Slow enough that a start that did not wait would be seen.
            std::thread::sleep(Duration::from_millis(50));
            let name = std::thread::current().name().unwrap_or("").to_string();
            let cgroups = std::fs::read_to_string("/proc/thread-self/cgroup").unwrap();
            self.0.lock().unwrap().push((name, cgroups));
            Ok(())
        }
    }

    fn start_noting(
        workers: usize,
        inference_cgroup: Option<crate::cpu::InferenceCgroup>,
    ) -> (anyhow::Result<Manager>, Noted) {
        let noted = Arc::new(Mutex::new(Vec::new()));
        let n = noted.clone();
        let (events, _rx) = mpsc::channel(1);
        let manager = Manager::start(
            ManagerConfig {
                workers,
                queue_capacity: 8,
                queue_capacity_bytes: 1 << 20,
                max_concurrent_offloads: 1,
                policy: Policy::default(),
                response_bytes: 1024,
                cloud_expected: Duration::from_millis(10),
                hedge_budget: 0.0,
                hold_runnable_locally: false,
                split: crate::config::SplitConfig::default(),
                inline_max: Duration::from_micros(200),
                inference_cgroup,
            },
            ManagerParts {
                local_specs: HashMap::new(),
                engine_factory: Arc::new(
                    move || Ok(Box::new(Noting(n.clone())) as Box<dyn Engine>),
                ),
                local_times: crate::infer::shared_exec_times(0.2, Duration::from_millis(1)),
                endpoints: Vec::new(),
                probe_events: events,
                store: None,
                audit: None,
            },
        );
        (manager, noted)
    }

    fn stop_workers(manager: Manager) {
        let inner = manager.inner.clone();
        inner.state.lock().unwrap().stopping = true;
        inner.work_ready.notify_all();
        for h in std::mem::take(&mut *manager.workers.lock().unwrap()) {
            h.join().unwrap();
        }
    }

    #[test]
    fn start_returns_once_every_worker_warmed_on_its_own_thread() {
        let (manager, noted) = start_noting(3, None);
        let manager = manager.unwrap();
        let mut threads: Vec<String> = noted.lock().unwrap().iter().map(|n| n.0.clone()).collect();
        threads.sort();
        assert_eq!(threads, ["infer-0", "infer-1", "infer-2"]);
        stop_workers(manager);
    }

    #[test]
    fn workers_run_in_the_inference_cgroup_and_nothing_runs_inline() {
        let Some(cg) = crate::cpu::testing::TestCgroup::v1("manager", 25_000, 100_000) else {
            return;
        };
        let infer = crate::cpu::InferenceCgroup::open(&cg.path).unwrap();
        let (manager, noted) = start_noting(2, Some(infer));
        let manager = manager.unwrap();
        let noted = noted.lock().unwrap().clone();
        assert_eq!(noted.len(), 2);
        for (name, cgroups) in &noted {
            assert!(
                cg.holds(cgroups),
                "{name} warmed outside the cgroup: {cgroups}"
            );
        }
        let here = std::fs::read_to_string("/proc/thread-self/cgroup").unwrap();
        assert!(!cg.holds(&here), "the starting thread moved too: {here}");
        {
            let state = manager.inner.state.lock().unwrap();
            // The meter reads the workers' clocks against the cgroup's
            // quota (or the process's, were that less).
            assert_eq!(state.worker_clocks.as_ref().map(Vec::len), Some(2));
            assert_eq!(
                state.cpu.allowance(),
                crate::cpu::allowance_cores().min(0.25)
            );
        }
        assert!(manager.inner.cfg.inline_max.is_zero());
        stop_workers(manager);
        assert!(cg.empties(), "workers stopped but the cgroup holds threads");
    }

    #[test]
    fn a_start_whose_workers_cannot_join_fails_clearly() {
        let Some(cg) = crate::cpu::testing::TestCgroup::v1("unjoinable", 25_000, 100_000) else {
            return;
        };
        let infer = crate::cpu::InferenceCgroup::open(&cg.path).unwrap();
        std::fs::remove_dir(&cg.path).unwrap();
        let (manager, noted) = start_noting(2, Some(infer));
        let err = format!("{:#}", manager.err().expect("the start must fail"));
        assert!(err.contains("joining the inference cgroup"), "{err}");
        assert!(err.contains("thread infer-"), "{err}");
        // No worker went on to warm up (they ended at once).
        assert!(noted.lock().unwrap().is_empty());
    }

    /// One worker whose first run waits for the test to open a gate (the
    /// queue behind it then holds still); every run is estimated at 20 ms.
    struct Gated(Arc<(Mutex<bool>, std::sync::Condvar)>);

    impl Engine for Gated {
        fn supports(&self, _: TaskType) -> bool {
            true
        }
        fn validate(&self, _: TaskType, _: &[u8]) -> Result<(), TaskError> {
            Ok(())
        }
        fn process(&mut self, _: TaskType, _: &[u8]) -> Result<Inference, TaskError> {
            let (open, cv) = &*self.0;
            let mut open = open.lock().unwrap();
            while !*open {
                open = cv.wait(open).unwrap();
            }
            Ok(answer(Duration::from_millis(20)))
        }
        fn estimate(&self, _: TaskType) -> Duration {
            Duration::from_millis(20)
        }
        fn warm_up(&mut self) -> anyhow::Result<()> {
            Ok(())
        }
    }

    /// A cloud that answers at once, counting what it was sent.
    struct Answering(AtomicU64);

    #[async_trait::async_trait]
    impl Offloader for Answering {
        async fn offload(
            &self,
            req: &OffloadRequest,
        ) -> Result<agent_net::OffloadReply, OffloadError> {
            self.0.fetch_add(1, Ordering::Relaxed);
            Ok(agent_net::OffloadReply {
                response: proto::TaskResponse {
                    task_id: req.request.id.clone(),
                    success: true,
                    predicted_class: 1,
                    confidence: 1.0,
                    ..Default::default()
                },
                transport: Transport::Grpc,
                elapsed: Duration::from_millis(2),
                bytes_up: 64,
                bytes_down: 64,
                packets: None,
            })
        }
    }

    /// A 2 ms link, measured just now.
    fn two_ms_link() -> (watch::Sender<NetworkStatus>, watch::Receiver<NetworkStatus>) {
        watch::channel(NetworkStatus {
            reachable: true,
            source: Some(SampleSource::ActiveTcpConnect),
            rtt: agent_core::WindowStats {
                samples: 10,
                srtt_ms: 2.0,
                mean_ms: 2.0,
                p50_ms: 2.0,
                p95_ms: 2.0,
                p99_ms: 2.0,
                ..Default::default()
            },
            rtt_sorted_ms: vec![2.0; 10],
            bandwidth_bps: 1e9,
            age: Some(Duration::ZERO),
            heard_at: Some(Instant::now()),
            ..Default::default()
        })
    }

    /// The one endpoint "cloud", reached through `offloader` over `net`.
    fn cloud_endpoint(
        offloader: Arc<dyn Offloader>,
        net: watch::Receiver<NetworkStatus>,
    ) -> EndpointParts {
        EndpointParts {
            name: "cloud".into(),
            offloader,
            dest: "192.0.2.1".parse().unwrap(),
            net,
            health: None,
            peer: false,
            serves: None,
            splits: false,
        }
    }

    /// A cloud that answers after a delay.
    struct Delayed(Duration);

    #[async_trait::async_trait]
    impl Offloader for Delayed {
        async fn offload(
            &self,
            req: &OffloadRequest,
        ) -> Result<agent_net::OffloadReply, OffloadError> {
            tokio::time::sleep(self.0).await;
            Answering(AtomicU64::new(0)).offload(req).await
        }
    }

    /// A 2 ms link to `cloud`, for tasks with a deadline of 1 s on an edge
    /// whose one worker is held by `gate`; local runs are assumed to take
    /// 200 ms. So an offload not answered after about 590 ms (1 s less
    /// twice the local estimate and the slack) is rescued.
    fn start_rescuable(
        gate: Arc<(Mutex<bool>, std::sync::Condvar)>,
        cloud: Arc<dyn Offloader>,
    ) -> (Manager, Task, watch::Sender<NetworkStatus>) {
        let (net_tx, net) = two_ms_link();
        let cfg = ManagerConfig {
            policy: Policy::AlwaysOffload,
            ..one_worker_config()
        };
        let (manager, spec, _events) = start_gated_with(
            cfg,
            gate,
            crate::infer::shared_exec_times(0.2, Duration::from_millis(200)),
            vec![cloud_endpoint(cloud, net)],
        );
        let task = Task {
            deadline: Some(Instant::now() + Duration::from_secs(1)),
            ..medium_image(&spec, "rescued")
        };
        (manager, task, net_tx)
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_rescued_offload_still_answers_when_the_cloud_comes_first() {
        let gate = Arc::new((Mutex::new(false), std::sync::Condvar::new()));
        // The cloud answers at 800 ms: after the rescue, before the
        // deadline, while the local run is held.
        let (manager, task, _net) =
            start_rescuable(gate.clone(), Arc::new(Delayed(Duration::from_millis(800))));
        let started = Instant::now();
        let r = tokio::time::timeout(Duration::from_secs(5), manager.submit(task).unwrap())
            .await
            .expect("no answer: the cloud's was given up for the held local run")
            .unwrap();
        let took = started.elapsed();
        assert!(r.outcome.is_ok(), "{r:?}");
        assert_eq!(r.processed_by, Some(ExecPath::Cloud), "{r:?}");
        assert!(!r.fell_back, "{r:?}");
        assert!(took >= Duration::from_millis(790), "{took:?}");
        // The local leg was queued beside it (and taken by the worker).
        assert!(manager.inner.state.lock().unwrap().in_flight[0].is_some());
        let s = manager.stats();
        assert_eq!((s.rescued, s.hedge_won_cloud, s.hedge_won_local), (1, 1, 0));
        open_gate(&gate);
        manager.shutdown().await;
        let s = manager.stats();
        // One result: the local leg's answer went nowhere.
        assert_eq!((s.completed_grpc, s.completed_local, s.failed), (1, 0, 0));
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_rescued_offload_answers_from_the_local_run_when_it_comes_first() {
        let gate = Arc::new((Mutex::new(false), std::sync::Condvar::new()));
        open_gate(&gate);
        // The cloud would answer only after the deadline.
        let (manager, task, _net) =
            start_rescuable(gate, Arc::new(Delayed(Duration::from_secs(30))));
        let r = tokio::time::timeout(Duration::from_secs(5), manager.submit(task).unwrap())
            .await
            .expect("no answer")
            .unwrap();
        assert!(r.outcome.is_ok(), "{r:?}");
        assert_eq!(r.processed_by, Some(ExecPath::Local), "{r:?}");
        assert!(r.fell_back, "{r:?}");
        let s = manager.stats();
        assert_eq!((s.rescued, s.hedge_won_cloud, s.hedge_won_local), (1, 0, 1));
        // The offload leg was called off: nothing keeps shutdown waiting.
        tokio::time::timeout(Duration::from_secs(5), manager.shutdown())
            .await
            .expect("the cloud's leg was not called off");
        let s = manager.stats();
        assert_eq!((s.completed_grpc, s.completed_local, s.failed), (0, 1, 0));
    }

    /// One worker, a queue of 16, the default policy, a cloud assumed at
    /// 45 ms.
    fn one_worker_config() -> ManagerConfig {
        ManagerConfig {
            workers: 1,
            queue_capacity: 16,
            queue_capacity_bytes: 1 << 20,
            max_concurrent_offloads: 8,
            policy: Policy::default(),
            response_bytes: 64,
            cloud_expected: Duration::from_millis(45),
            hedge_budget: 0.0,
            hold_runnable_locally: false,
            split: crate::config::SplitConfig::default(),
            inline_max: Duration::from_micros(200),
            inference_cgroup: None,
        }
    }

    /// A manager of [`one_worker_config`] whose one worker runs an image
    /// model (its spec given back) behind `gate`; the probe events' receiver
    /// must be kept.
    fn start_gated(
        gate: Arc<(Mutex<bool>, std::sync::Condvar)>,
        local_times: crate::infer::SharedExecTimes,
        endpoints: Vec<EndpointParts>,
    ) -> (Manager, ModelSpec, mpsc::Receiver<ProbeEvent>) {
        start_gated_with(one_worker_config(), gate, local_times, endpoints)
    }

    /// [`start_gated`] with `cfg`.
    fn start_gated_with(
        cfg: ManagerConfig,
        gate: Arc<(Mutex<bool>, std::sync::Condvar)>,
        local_times: crate::infer::SharedExecTimes,
        endpoints: Vec<EndpointParts>,
    ) -> (Manager, ModelSpec, mpsc::Receiver<ProbeEvent>) {
        let spec: ModelSpec = toml::from_str("path = \"m.pt\"\nname = \"m\"").unwrap();
        let (events, rx) = mpsc::channel(64);
        let manager = Manager::start(
            cfg,
            ManagerParts {
                local_specs: HashMap::from([(TaskType::ImageClassification, spec.clone())]),
                engine_factory: Arc::new(move || {
                    Ok(Box::new(Gated(gate.clone())) as Box<dyn Engine>)
                }),
                local_times,
                endpoints,
                probe_events: events,
                store: None,
                audit: None,
            },
        )
        .unwrap();
        (manager, spec, rx)
    }

    /// A medium-priority image task without a deadline for `spec`'s model.
    fn medium_image(spec: &ModelSpec, id: &str) -> Task {
        Task {
            id: id.into(),
            task_type: TaskType::ImageClassification,
            payload: vec![0; spec.height * spec.width],
            priority: Priority::Medium,
            deadline: None,
            created_at: Instant::now(),
            context: HashMap::new(),
        }
    }

    /// Lets the gated engine's runs finish.
    fn open_gate(gate: &(Mutex<bool>, std::sync::Condvar)) {
        let (open, cv) = gate;
        *open.lock().unwrap() = true;
        cv.notify_all();
    }

    /// Waits until the (single) worker has taken a task.
    async fn worker_holds_a_task(manager: &Manager) {
        for _ in 0..200 {
            if manager.inner.state.lock().unwrap().in_flight[0].is_some() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        assert!(manager.inner.state.lock().unwrap().in_flight[0].is_some());
    }

    /// A manager without endpoints whose one worker holds a task
    /// ("running", runs estimated at 20 ms) until `gate` opens.
    struct HeldWorker {
        manager: Manager,
        spec: ModelSpec,
        gate: Arc<(Mutex<bool>, std::sync::Condvar)>,
        running: oneshot::Receiver<TaskResult>,
        _events: mpsc::Receiver<ProbeEvent>,
    }

    async fn held_worker_alone() -> HeldWorker {
        let gate = Arc::new((Mutex::new(false), std::sync::Condvar::new()));
        let (manager, spec, _events) = start_gated(
            gate.clone(),
            crate::infer::shared_exec_times(0.2, Duration::from_millis(20)),
            Vec::new(),
        );
        let running = manager.submit(medium_image(&spec, "running")).unwrap();
        worker_holds_a_task(&manager).await;
        HeldWorker {
            manager,
            spec,
            gate,
            running,
            _events,
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_queued_task_made_late_by_higher_priority_work_moves_to_the_cloud() {
        let gate = Arc::new((Mutex::new(false), std::sync::Condvar::new()));
        let g = gate.clone();
        let cloud = Arc::new(Answering(AtomicU64::new(0)));
        // A 2 ms link to a cloud whose answers are assumed to take 450 ms,
        // local runs assumed at 200 ms (long enough that the test's own
        // pace does not matter).
        let (_net_tx, net) = two_ms_link();
        let cfg = ManagerConfig {
            cloud_expected: Duration::from_millis(450),
            ..one_worker_config()
        };
        let (manager, spec, _events) = start_gated_with(
            cfg,
            g,
            crate::infer::shared_exec_times(0.2, Duration::from_millis(200)),
            vec![cloud_endpoint(cloud.clone(), net)],
        );
        let task = |id: &str, priority: Priority, deadline_ms: Option<u64>| {
            let now = Instant::now();
            Task {
                id: id.into(),
                task_type: TaskType::ImageClassification,
                payload: vec![0; spec.height * spec.width],
                priority,
                deadline: deadline_ms.map(|ms| now + Duration::from_millis(ms)),
                created_at: now,
                context: HashMap::new(),
            }
        };
        let path = |d: &Option<Decision>| d.as_ref().map(|d| (d.path, d.reason));
        // The worker takes the first task and holds it.
        let first = manager
            .submit(task("running", Priority::Medium, None))
            .unwrap();
        worker_holds_a_task(&manager).await;
        // 200 ms left of the run + its own 200 ms: local (400 ms) is
        // cheaper than the cloud (452 ms), and in time for 550 ms.
        let medium = manager
            .submit(task("medium", Priority::Medium, Some(550)))
            .unwrap();
        assert_eq!(cloud.0.load(Ordering::Relaxed), 0, "queued locally");
        // A critical task that only the local path gets done in time goes
        // ahead of it (400 ms locally too, the cloud's 452 ms past its
        // 450): the medium one would now end at 600 ms, past its deadline.
        // Queueing the critical one finds it late at once and decides it
        // again: the cloud is in time where the local queue is not.
        let critical = manager
            .submit(task("critical", Priority::Critical, Some(450)))
            .unwrap();
        let moved = tokio::time::timeout(Duration::from_secs(5), medium)
            .await
            .expect("the late task was not moved (the worker is still held)")
            .unwrap();
        assert!(moved.outcome.is_ok(), "{moved:?}");
        assert_eq!(moved.processed_by, Some(ExecPath::Cloud));
        assert_eq!(
            path(&moved.decision),
            Some((ExecPath::Cloud, Reason::MovedFromLateQueue))
        );
        assert_eq!(manager.stats().moved, 1);
        let next = manager.submit(task("next", Priority::Low, None)).unwrap();
        // The others end once each where they were queued.
        open_gate(&gate);
        for (rx, id) in [(first, "running"), (critical, "critical")] {
            let r = rx.await.unwrap();
            assert!(r.outcome.is_ok(), "{id}: {r:?}");
            assert_eq!(r.processed_by, Some(ExecPath::Local), "{id}: {r:?}");
        }
        // The low one met a queue of 400 ms: the policy sent it to the cloud.
        let r = next.await.unwrap();
        assert!(r.outcome.is_ok(), "{r:?}");
        let s = manager.stats();
        assert_eq!((s.accepted, s.moved, s.completed_local), (4, 1, 2));
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_queued_task_nobody_waits_for_leaves_the_queue_at_the_next_arrival() {
        let h = held_worker_alone().await;
        // Queued behind it, its submitter goes away (as a hedged task's
        // local leg once its offload answered).
        drop(h.manager.submit(medium_image(&h.spec, "gone")).unwrap());
        let queued = || h.manager.inner.state.lock().unwrap().queue.len();
        assert_eq!((queued(), h.manager.stats().cancelled), (1, 0));
        // The next arrival drops it, the worker still held: the queue it
        // is decided against holds no work nobody waits for.
        let next = h.manager.submit(medium_image(&h.spec, "next")).unwrap();
        assert_eq!((queued(), h.manager.stats().cancelled), (1, 1));
        open_gate(&h.gate);
        for (rx, id) in [(h.running, "running"), (next, "next")] {
            let r = rx.await.unwrap();
            assert!(r.outcome.is_ok(), "{id}: {r:?}");
        }
        let s = h.manager.stats();
        assert_eq!((s.accepted, s.cancelled, s.completed_local), (3, 1, 2));
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_queued_task_ends_at_its_deadline_while_the_worker_is_held() {
        let h = held_worker_alone().await;
        // Expected in 40 ms, well in time for 150: queued behind the run,
        // which then holds the worker past the deadline.
        let submitted = Instant::now();
        let deadline = submitted + Duration::from_millis(150);
        let queued = h
            .manager
            .submit(Task {
                deadline: Some(deadline),
                ..medium_image(&h.spec, "queued")
            })
            .unwrap();
        let queue_len = || h.manager.inner.state.lock().unwrap().queue.len();
        assert_eq!(queue_len(), 1);
        let r = tokio::time::timeout(Duration::from_secs(5), queued)
            .await
            .expect("no answer while the worker is held")
            .unwrap();
        let answered = Instant::now();
        match &r.outcome {
            Err(TaskError::DeadlineExceeded(m)) => assert!(m.contains("expired while queued")),
            other => panic!("expected an expiry, got {other:?}"),
        }
        assert!(answered >= deadline, "answered before its deadline");
        assert!(
            answered - deadline < Duration::from_millis(100),
            "answered {:?} after its deadline",
            answered - deadline
        );
        assert_eq!(queue_len(), 0, "the expired task left the queue");
        open_gate(&h.gate);
        assert!(h.running.await.unwrap().outcome.is_ok());
        let s = h.manager.stats();
        assert_eq!((s.accepted, s.completed_local, s.failed), (2, 1, 1));
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn work_that_would_overtake_queued_tasks_offloads_when_the_cloud_is_as_good() {
        let gate = Arc::new((Mutex::new(false), std::sync::Condvar::new()));
        let cloud = Arc::new(Answering(AtomicU64::new(0)));
        // A 2 ms link to a cloud whose answers are assumed to take 45 ms.
        let (_net_tx, net) = two_ms_link();
        let (manager, spec, _events) = start_gated(
            gate.clone(),
            crate::infer::shared_exec_times(0.2, Duration::from_millis(20)),
            vec![cloud_endpoint(cloud.clone(), net)],
        );
        let first = manager.submit(medium_image(&spec, "running")).unwrap();
        worker_holds_a_task(&manager).await;
        // 20 ms left of the run + its own 20 ms: local (40 ms) against the
        // cloud's 47 ms.
        let queued = manager.submit(medium_image(&spec, "queued")).unwrap();
        assert_eq!(cloud.0.load(Ordering::Relaxed), 0, "queued locally");
        // A critical task: 40 ms locally as well, but it would go ahead of
        // the queued one and make it wait 20 ms more (60 against 47).
        let critical = Task {
            priority: Priority::Critical,
            ..medium_image(&spec, "critical")
        };
        let r = manager.submit(critical).unwrap().await.unwrap();
        assert!(r.outcome.is_ok(), "{r:?}");
        assert_eq!(r.processed_by, Some(ExecPath::Cloud), "{r:?}");
        let d = r.decision.expect("a decision");
        assert_eq!(d.reason, Reason::OffloadCheaper, "{d}");
        assert!((d.local.congestion_ms - 20.0).abs() < 2.0, "{d}");
        open_gate(&gate);
        for (rx, id) in [(first, "running"), (queued, "queued")] {
            let r = rx.await.unwrap();
            assert!(r.outcome.is_ok(), "{id}: {r:?}");
            assert_eq!(r.processed_by, Some(ExecPath::Local), "{id}: {r:?}");
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_run_past_its_estimate_still_holds_its_worker() {
        let gate = Arc::new((Mutex::new(false), std::sync::Condvar::new()));
        let times = crate::infer::shared_exec_times(0.2, Duration::from_millis(20));
        let (manager, spec, _events) = start_gated(gate.clone(), times, Vec::new());
        let task = |id: &str| medium_image(&spec, id);
        // The worker holds a task estimated at 20 ms for over twice that.
        let running = manager.submit(task("running")).unwrap();
        worker_holds_a_task(&manager).await;
        tokio::time::sleep(Duration::from_millis(45)).await;
        let next = manager.submit(task("next")).unwrap();
        open_gate(&gate);
        assert!(running.await.unwrap().outcome.is_ok());
        let r = next.await.unwrap();
        assert!(r.outcome.is_ok(), "{r:?}");
        // Nothing measured yet: the run is taken to overrun by as much
        // again, at most one more estimate; counted as finished, it would
        // promise no wait at all.
        let queue_ms = r.decision.expect("a decision").local.queue_ms;
        assert!((19.0..=21.0).contains(&queue_ms), "{queue_ms} ms");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn queued_tasks_follow_their_model_s_new_estimate() {
        let gate = Arc::new((Mutex::new(false), std::sync::Condvar::new()));
        let g = gate.clone();
        let times = crate::infer::shared_exec_times(0.2, Duration::from_millis(20));
        let (manager, spec, _events) = start_gated(g, times.clone(), Vec::new());
        let task = |id: &str| medium_image(&spec, id);
        // The worker holds the first task; two more queue behind it, costed
        // at the model's 20 ms.
        let mut pending = vec![manager.submit(task("running")).unwrap()];
        worker_holds_a_task(&manager).await;
        pending.push(manager.submit(task("a")).unwrap());
        pending.push(manager.submit(task("b")).unwrap());
        let before = manager.submit(task("before")).unwrap();
        // The model now takes 80 ms a run (a CPU quota slowing every run).
        times
            .lock()
            .unwrap()
            .seed(TaskType::ImageClassification, Duration::from_millis(80));
        let after = manager.submit(task("after")).unwrap();
        open_gate(&gate);
        for rx in pending {
            assert!(rx.await.unwrap().outcome.is_ok());
        }
        let queue_ms = |r: TaskResult| {
            assert!(r.outcome.is_ok(), "{r:?}");
            r.decision.expect("a decision").local.queue_ms
        };
        // Before: a and b ahead at 20 ms each, and at most 20 ms of the run.
        let before = queue_ms(before.await.unwrap());
        assert!((40.0..=60.0).contains(&before), "{before} ms");
        // After: a, b and "before" ahead at 80 ms each.
        let after = queue_ms(after.await.unwrap());
        assert!((240.0..=260.0).contains(&after), "{after} ms");
    }
}
