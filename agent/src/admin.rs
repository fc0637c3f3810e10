//! The admin HTTP listener, one per process (`edge.metrics_listen`,
//! `cloud.metrics_listen`):
//!
//! - `GET /metrics`: Prometheus text of every metric the process records;
//! - `GET /healthz`: 200 while the process runs its loops (the sampler
//!   below ticked within [`LIVENESS`]), else 503;
//! - `GET /readyz`: 200 when the role's readiness check passes (models
//!   loaded; for the edge, an estimate of the cloud exists), else 503 with a
//!   one-line reason.
//!
//! Plain HTTP: it binds loopback unless `--insecure` (scrape through a TLS
//! proxy, or from the same host or pod).

use crate::metrics::Role;
use anyhow::{ensure, Context};
use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::IntoResponse;
use axum::routing::get;
use axum::Router;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// `/healthz` fails when the sampler has not ticked for this long.
pub const LIVENESS: Duration = Duration::from_secs(10);
/// How often the sampler records the gauges (process, cgroup, the role's).
pub const SAMPLE_EVERY: Duration = Duration::from_secs(1);

type Check = Box<dyn Fn() -> Result<(), String> + Send + Sync>;
type Hook = Box<dyn Fn() + Send + Sync>;

struct Shared {
    handle: metrics_exporter_prometheus::PrometheusHandle,
    role: Role,
    cgroup: Option<Cgroup>,
    started: Instant,
    /// Milliseconds after `started` of the sampler's last tick.
    heartbeat_ms: AtomicU64,
    ready: RwLock<Check>,
    sample: RwLock<Hook>,
}

/// A running admin listener. Its tasks stop when the token given to
/// [`Admin::start`] is cancelled.
pub struct Admin {
    /// Where it listens (the port chosen when the configuration said 0).
    pub addr: SocketAddr,
    shared: Arc<Shared>,
    tasks: Vec<JoinHandle<()>>,
}

impl Admin {
    /// Installs the metrics recorder (once per process), binds `listen`
    /// and starts serving and sampling. Not ready until [`Admin::set_ready`].
    pub async fn start(
        listen: &str,
        insecure: bool,
        role: Role,
        stop: CancellationToken,
    ) -> anyhow::Result<Admin> {
        let addr = agent_net::resolve(listen).await?;
        ensure!(
            addr.ip().is_loopback() || insecure,
            "the metrics endpoint {addr} is plaintext HTTP: bind it to loopback (and scrape \
             through a TLS proxy), or pass --insecure"
        );
        let handle = crate::metrics::install()?;
        crate::metrics::describe(role);
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .with_context(|| format!("binding the metrics endpoint on {addr}"))?;
        let addr = listener.local_addr()?;
        let shared = Arc::new(Shared {
            handle,
            role,
            cgroup: Cgroup::find(),
            started: Instant::now(),
            heartbeat_ms: AtomicU64::new(0),
            ready: RwLock::new(Box::new(|| Err("starting: loading the models".into()))),
            sample: RwLock::new(Box::new(|| {})),
        });
        let app = Router::new()
            .route("/metrics", get(metrics))
            .route("/healthz", get(healthz))
            .route("/readyz", get(readyz))
            .with_state(shared.clone());
        let serve_stop = stop.clone();
        let server = tokio::spawn(async move {
            let r = axum::serve(listener, app)
                .with_graceful_shutdown(serve_stop.cancelled_owned())
                .await;
            if let Err(e) = r {
                tracing::error!(%addr, "metrics endpoint stopped: {e}");
            }
        });
        let sampler = tokio::spawn(sample_loop(shared.clone(), stop));
        tracing::info!(%addr, "metrics at http://{addr}/metrics, health at /healthz and /readyz");
        Ok(Admin {
            addr,
            shared,
            tasks: vec![server, sampler],
        })
    }

    /// `/readyz` answers 200 while `check` is `Ok`, else 503 with its reason.
    pub fn set_ready(&self, check: impl Fn() -> Result<(), String> + Send + Sync + 'static) {
        *self.shared.ready.write().expect("readiness lock") = Box::new(check);
    }

    /// Runs `hook` on every tick of the sampler (the role's gauges). A hook
    /// that blocks stops the heartbeat, so `/healthz` fails.
    pub fn set_sampler(&self, hook: impl Fn() + Send + Sync + 'static) {
        *self.shared.sample.write().expect("sampler lock") = Box::new(hook);
    }

    /// The server and sampler tasks, for whoever awaits them at shutdown.
    pub fn take_tasks(&mut self) -> Vec<JoinHandle<()>> {
        std::mem::take(&mut self.tasks)
    }
}

/// The cloud service's admin listener, when `cfg.metrics_listen` is set:
/// serving (`/healthz`) from before the models load; [`CloudAdmin::serving`]
/// makes it ready. Runs as long as the process's runtime.
pub struct CloudAdmin(Option<Admin>);

impl CloudAdmin {
    pub async fn start(cfg: &crate::config::CloudConfig) -> anyhow::Result<CloudAdmin> {
        let Some(listen) = &cfg.metrics_listen else {
            return Ok(CloudAdmin(None));
        };
        let admin = Admin::start(
            listen,
            cfg.tls.insecure,
            Role::Cloud,
            CancellationToken::new(),
        )
        .await
        .with_context(|| format!("metrics endpoint on {listen}"))?;
        Ok(CloudAdmin(Some(admin)))
    }

    /// The models are loaded and the listeners bound: ready.
    /// `waiting` tells how many requests wait for an inference slot now.
    pub fn serving(self, waiting: impl Fn() -> usize + Send + Sync + 'static, max_pending: usize) {
        if let Some(admin) = self.0 {
            admin.set_sampler(move || crate::metrics::record_cloud_pending(waiting(), max_pending));
            admin.set_ready(|| Ok(()));
        }
    }
}

async fn sample_loop(shared: Arc<Shared>, stop: CancellationToken) {
    let run = async {
        let mut tick = tokio::time::interval(SAMPLE_EVERY);
        loop {
            tick.tick().await;
            (shared.sample.read().expect("sampler lock"))();
            shared.handle.run_upkeep();
            let ms = shared.started.elapsed().as_millis() as u64;
            shared.heartbeat_ms.store(ms, Ordering::Relaxed);
        }
    };
    stop.run_until_cancelled(run).await;
}

const TEXT: &str = "text/plain; version=0.0.4; charset=utf-8";

async fn metrics(State(s): State<Arc<Shared>>) -> impl IntoResponse {
    let mut text = s.handle.render();
    resources(&mut text, s.role.prefix(), s.cgroup.as_ref());
    ([(header::CONTENT_TYPE, TEXT)], text)
}

async fn healthz(State(s): State<Arc<Shared>>) -> impl IntoResponse {
    let now = s.started.elapsed();
    let last = Duration::from_millis(s.heartbeat_ms.load(Ordering::Relaxed));
    let silent = now.saturating_sub(last);
    if silent > LIVENESS {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            [(header::CONTENT_TYPE, TEXT)],
            format!(
                "unhealthy: the sampler has not run for {:.1} s\n",
                silent.as_secs_f64()
            ),
        )
    } else {
        (
            StatusCode::OK,
            [(header::CONTENT_TYPE, TEXT)],
            "ok\n".into(),
        )
    }
}

async fn readyz(State(s): State<Arc<Shared>>) -> impl IntoResponse {
    let verdict = (s.ready.read().expect("readiness lock"))();
    match verdict {
        Ok(()) => (
            StatusCode::OK,
            [(header::CONTENT_TYPE, TEXT)],
            "ready\n".into(),
        ),
        Err(reason) => (
            StatusCode::SERVICE_UNAVAILABLE,
            [(header::CONTENT_TYPE, TEXT)],
            // One line, whatever the reason says.
            format!("not ready: {}\n", reason.replace('\n', " ")),
        ),
    }
}

/// Appends the process's and its cgroup's resource figures, read at
/// scrape time. Written here rather than through the `metrics` crate
/// (whose counters are integers, so a CPU-seconds counter would read 0 for
/// an agent that used half a second) or `metrics-process` (the same).
fn resources(out: &mut String, p: &str, cgroup: Option<&Cgroup>) {
    let mut family = |name: &str, kind: &str, help: &str, v: Option<f64>| {
        if let Some(v) = v.filter(|v| v.is_finite()) {
            out.push_str(&format!(
                "# HELP {p}{name} {help}\n# TYPE {p}{name} {kind}\n{p}{name} {v}\n\n"
            ));
        }
    };
    let proc = ProcSelf::read();
    family(
        "process_cpu_seconds_total",
        "counter",
        "User and system CPU time of the agent process in seconds.",
        proc.as_ref().map(|p| p.cpu_seconds),
    );
    family(
        "process_resident_memory_bytes",
        "gauge",
        "Resident memory of the agent process in bytes.",
        proc.as_ref().map(|p| p.rss_bytes),
    );
    family(
        "process_threads",
        "gauge",
        "Threads of the agent process.",
        proc.as_ref().map(|p| p.threads),
    );
    family(
        "process_open_fds",
        "gauge",
        "Open file descriptors of the agent process.",
        std::fs::read_dir("/proc/self/fd")
            .ok()
            .map(|d| d.count() as f64),
    );
    family(
        "process_start_time_seconds",
        "gauge",
        "Start time of the agent process since the Unix epoch in seconds.",
        proc.as_ref().and_then(|p| p.start_time_seconds),
    );
    let Some(c) = cgroup else { return };
    let number = |file: &str| c.read(file).and_then(|s| s.trim().parse::<f64>().ok());
    family(
        "cgroup_memory_current_bytes",
        "gauge",
        "Memory charged to the agent's cgroup v2 (memory.current) in bytes.",
        number("memory.current"),
    );
    // "max" (no limit) does not parse: the family is left out.
    family(
        "cgroup_memory_max_bytes",
        "gauge",
        "Memory limit of the agent's cgroup v2 (memory.max) in bytes.",
        number("memory.max"),
    );
    let stat = c.read("cpu.stat").unwrap_or_default();
    let usec = |field: &str| {
        stat.lines()
            .find_map(|l| {
                l.strip_prefix(field)?
                    .strip_prefix(' ')?
                    .trim()
                    .parse::<f64>()
                    .ok()
            })
            .map(|us| us / 1e6)
    };
    family(
        "cgroup_cpu_usage_seconds_total",
        "counter",
        "CPU time used by the agent's cgroup v2 (cpu.stat usage_usec) in seconds.",
        usec("usage_usec"),
    );
    family(
        "cgroup_cpu_throttled_seconds_total",
        "counter",
        "Time the agent's cgroup v2 was throttled by its CPU quota (cpu.stat) in seconds.",
        usec("throttled_usec"),
    );
    family(
        "cgroup_cpu_limit_cores",
        "gauge",
        "CPU quota of the agent's cgroup v2 (cpu.max) in cores.",
        c.read("cpu.max")
            .and_then(|s| crate::cpu::cpu_max_cores(&s)),
    );
}

/// What /proc says about this process.
struct ProcSelf {
    cpu_seconds: f64,
    rss_bytes: f64,
    threads: f64,
    start_time_seconds: Option<f64>,
}

impl ProcSelf {
    fn read() -> Option<ProcSelf> {
        let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
        // Fields after the command name (which may hold spaces), from field 3.
        let fields: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
        let field = |n: usize| fields.get(n - 3)?.parse::<f64>().ok();
        // SAFETY: sysconf only reads configuration values.
        let (ticks, page) = unsafe {
            (
                libc::sysconf(libc::_SC_CLK_TCK) as f64,
                libc::sysconf(libc::_SC_PAGESIZE) as f64,
            )
        };
        let boot = std::fs::read_to_string("/proc/stat").ok().and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("btime ")?.trim().parse::<f64>().ok())
        });
        Some(ProcSelf {
            cpu_seconds: (field(14)? + field(15)?) / ticks,
            rss_bytes: field(24)? * page,
            threads: field(20)?,
            start_time_seconds: boot.zip(field(22)).map(|(b, t)| b + t / ticks),
        })
    }
}

/// This process's cgroup v2 folder, when its accounting files are readable
/// (a unit, a container or a pod; not the root cgroup, whose figures are
/// the whole machine's).
struct Cgroup {
    dir: PathBuf,
}

impl Cgroup {
    fn find() -> Option<Cgroup> {
        let own = std::fs::read_to_string("/proc/self/cgroup").ok()?;
        let rel = own.lines().find_map(|l| l.strip_prefix("0::"))?;
        let rel = rel.trim().trim_start_matches('/');
        // Pure v2 mounts it at /sys/fs/cgroup, hybrid systems under unified/.
        let dir = ["/sys/fs/cgroup", "/sys/fs/cgroup/unified"]
            .iter()
            .map(|base| Path::new(base).join(rel))
            .find(|dir| dir.join("memory.current").exists() || dir.join("cpu.stat").exists())?;
        // Inside a container's cgroup namespace the own cgroup reads "/":
        // that root is the container's, unless it is the host's root.
        if rel.is_empty() && !dir.join("memory.current").exists() {
            return None;
        }
        tracing::info!(cgroup = %dir.display(), "reporting the cgroup's memory and CPU");
        Some(Cgroup { dir })
    }

    fn read(&self, file: &str) -> Option<String> {
        std::fs::read_to_string(self.dir.join(file)).ok()
    }
}

#[cfg(test)]
mod tests {
    use super::{resources, Cgroup, ProcSelf, Role};

    #[test]
    fn cgroup_v2_files_become_families() {
        let dir = std::env::temp_dir().join(format!("edge-admin-cgroup-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        for (file, text) in [
            ("memory.current", "123456789\n"),
            ("memory.max", "max\n"),
            (
                "cpu.stat",
                "usage_usec 2500000\nuser_usec 2000000\nthrottled_usec 500\n",
            ),
            ("cpu.max", "50000 100000\n"),
        ] {
            std::fs::write(dir.join(file), text).unwrap();
        }
        let mut text = String::new();
        resources(&mut text, "edge_", Some(&Cgroup { dir: dir.clone() }));
        std::fs::remove_dir_all(&dir).unwrap();
        assert!(
            text.contains("\nedge_cgroup_memory_current_bytes 123456789\n"),
            "{text}"
        );
        // Unlimited: no limit family.
        assert!(!text.contains("edge_cgroup_memory_max_bytes"), "{text}");
        assert!(
            text.contains("\nedge_cgroup_cpu_usage_seconds_total 2.5\n"),
            "{text}"
        );
        assert!(
            text.contains("\nedge_cgroup_cpu_throttled_seconds_total 0.0005\n"),
            "{text}"
        );
        assert!(
            text.contains("\nedge_cgroup_cpu_limit_cores 0.5\n"),
            "{text}"
        );
        assert!(text.contains("# TYPE edge_cgroup_cpu_usage_seconds_total counter\n"));
    }

    #[test]
    fn this_process_is_read_from_proc() {
        let p = ProcSelf::read().expect("/proc/self/stat parses");
        assert!(p.cpu_seconds >= 0.0 && p.cpu_seconds.is_finite());
        assert!(p.rss_bytes > 1e5, "{}", p.rss_bytes);
        assert!(p.threads >= 1.0);
        let start = p.start_time_seconds.expect("btime");
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs_f64();
        assert!(
            start <= now + 1.0 && start > now - 86_400.0,
            "{start} vs {now}"
        );
        let mut text = String::new();
        resources(&mut text, Role::Cloud.prefix(), None);
        assert!(text.contains("# TYPE cloud_process_cpu_seconds_total counter\n"));
        assert!(text.contains("\ncloud_process_resident_memory_bytes "));
    }
}
