//! Model updates without a restart: a folder is watched for a signed
//! manifest (`manifest`); a new one is verified (ed25519 signature, each
//! file's SHA-256), a full set of engines is loaded and warmed up beside
//! the serving ones, and only then swapped in ([`EnginePool::swap`]). A
//! manifest that is refused, or whose models fail to load or warm up,
//! changes nothing: the models in service keep serving (the rollback is
//! never to leave them).
//!
//! The folder is polled rather than watched with inotify: Kubernetes
//! ConfigMap and volume updates swap a symlink, which inotify watches miss,
//! and a poll of one small file a second costs nothing. SIGHUP asks for a
//! look at once.

mod manifest;

pub use manifest::{keygen, sign, Manifest, MANIFEST, SIGNATURE};

use crate::infer::{torch_engines, Engine, EnginePool, ModelSpec, SharedExecTimes};
use agent_core::TaskType;
use anyhow::{bail, Result};
use metrics::{counter, gauge};
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::hash::{Hash, Hasher};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// `[edge.model_updates]` / `[cloud.model_updates]`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ModelUpdateConfig {
    /// Folder watched for `manifest.toml` and `manifest.toml.sig`; unset:
    /// the configured models serve until a restart.
    pub dir: Option<PathBuf>,
    /// The ed25519 public key manifests must be signed with (base64, the
    /// content of `signing.pub` from `agent models keygen`). Required with
    /// `dir`: unsigned models are never loaded.
    pub public_key: String,
    /// How often the folder is looked at.
    pub poll_ms: u64,
}

impl Default for ModelUpdateConfig {
    fn default() -> Self {
        Self {
            dir: None,
            public_key: String::new(),
            poll_ms: 1000,
        }
    }
}

/// Publishes the versions serving now as `{side}_model_info{task_type,
/// version} 1` (join on it to label any other series with the version).
pub fn record_versions(side: &'static str, specs: &HashMap<TaskType, ModelSpec>) {
    for (t, s) in specs {
        gauge!(format!("{side}_model_info"), "task_type" => t.as_str(), "version" => s.version.clone())
            .set(1.0);
    }
}

/// What became of a manifest.
#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    /// Swapped in: the new pool generation.
    Applied(u64),
    /// Not applied, with the reason's label and message.
    Refused(&'static str, String),
}

/// Builds one engine for a set of specs.
type Build = dyn Fn(&HashMap<TaskType, ModelSpec>) -> Result<Box<dyn Engine>> + Send + Sync;

/// Watches one folder and swaps one pool's engines.
pub struct ModelUpdater {
    /// "edge" or "cloud": the metric prefix.
    side: &'static str,
    dir: PathBuf,
    key: Vec<u8>,
    poll: Duration,
    engines: Weak<EnginePool>,
    /// Engines per swap (one per worker or inference slot).
    count: usize,
    build: Arc<Build>,
    times: SharedExecTimes,
    specs: Mutex<HashMap<TaskType, ModelSpec>>,
    /// What was last looked at (manifest, signature, the files' sizes and
    /// times): the same again is not retried.
    seen: Mutex<Option<u64>>,
    /// What became of the last manifest looked at.
    last: Mutex<Option<Outcome>>,
}

impl ModelUpdater {
    /// `None` when no update folder is configured.
    pub fn new(
        side: &'static str,
        cfg: &ModelUpdateConfig,
        specs: HashMap<TaskType, ModelSpec>,
        engines: &Arc<EnginePool>,
        count: usize,
        device: &str,
        times: SharedExecTimes,
    ) -> Result<Option<Arc<Self>>> {
        let Some(dir) = cfg.dir.clone() else {
            return Ok(None);
        };
        if cfg.public_key.trim().is_empty() {
            bail!(
                "model_updates.dir is set but model_updates.public_key is not: \
                 unsigned models are never loaded"
            );
        }
        let key = manifest::parse_public_key(&cfg.public_key)?;
        let device = device.to_string();
        let build_times = times.clone();
        let build = Arc::new(move |specs: &HashMap<TaskType, ModelSpec>| {
            torch_engines(specs.clone(), &device, build_times.clone())?()
        });
        Ok(Some(Arc::new(Self {
            side,
            dir,
            key,
            poll: Duration::from_millis(cfg.poll_ms.max(50)),
            engines: Arc::downgrade(engines),
            count: count.max(1),
            build,
            times,
            specs: Mutex::new(specs),
            seen: Mutex::new(None),
            last: Mutex::new(None),
        })))
    }

    /// The versions serving now, per task type.
    pub fn versions(&self) -> HashMap<TaskType, String> {
        self.specs
            .lock()
            .expect("specs lock")
            .iter()
            .map(|(t, s)| (*t, s.version.clone()))
            .collect()
    }

    /// What became of the last manifest looked at.
    pub fn last_outcome(&self) -> Option<Outcome> {
        self.last.lock().expect("last lock").clone()
    }

    /// Looks at the folder every `poll_ms` and at once on SIGHUP, until
    /// `stop` or until the pool is gone.
    pub fn spawn(self: Arc<Self>, stop: CancellationToken) -> tokio::task::JoinHandle<()> {
        tokio::spawn(async move {
            let mut hup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())
                .map_err(|e| tracing::warn!("no SIGHUP handler for model updates: {e}"))
                .ok();
            let mut tick = tokio::time::interval(self.poll);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tokio::select! {
                    _ = stop.cancelled() => return,
                    _ = tick.tick() => {}
                    Some(()) = async { match hup.as_mut() { Some(h) => h.recv().await, None => std::future::pending().await } } => {
                        tracing::info!(dir = %self.dir.display(), "SIGHUP: looking for a new model manifest");
                    }
                }
                if self.engines.strong_count() == 0 {
                    return;
                }
                self.check().await;
            }
        })
    }

    /// Looks once: applies a new manifest, or says why not.
    pub async fn check(&self) -> Option<Outcome> {
        let fingerprint = fingerprint(&self.dir)?;
        {
            let mut seen = self.seen.lock().expect("seen lock");
            if *seen == Some(fingerprint) {
                return None;
            }
            *seen = Some(fingerprint);
        }
        let outcome = self.try_apply().await;
        let label = match &outcome {
            Outcome::Applied(g) => {
                tracing::info!(generation = g, versions = ?self.versions(), "models updated");
                "applied"
            }
            Outcome::Refused(label @ "unchanged", why) => {
                tracing::info!(reason = label, "{why}");
                label
            }
            Outcome::Refused(label, why) => {
                tracing::error!(
                    reason = label,
                    "model update refused, the models in service keep serving: {why}"
                );
                label
            }
        };
        counter!(format!("{}_model_updates_total", self.side), "outcome" => label).increment(1);
        *self.last.lock().expect("last lock") = Some(outcome.clone());
        Some(outcome)
    }

    async fn try_apply(&self) -> Outcome {
        let read = |name: &str| std::fs::read(self.dir.join(name));
        let (bytes, sig) = match (read(MANIFEST), read(SIGNATURE)) {
            (Ok(b), Ok(s)) => (b, s),
            (_, Err(e)) => return Outcome::Refused("bad_signature", format!("{SIGNATURE}: {e}")),
            (Err(e), _) => return Outcome::Refused("bad_manifest", format!("{MANIFEST}: {e}")),
        };
        let refused = |r: manifest::Refusal| Outcome::Refused(r.label(), r.to_string());
        if let Err(r) = manifest::verify_signature(&self.key, &bytes, &sig) {
            return refused(r);
        }
        let m = match manifest::parse(&bytes) {
            Ok(m) => m,
            Err(r) => return refused(r),
        };
        let current = self.specs.lock().expect("specs lock").clone();
        let next = match manifest::apply(&m, &self.dir, &current) {
            Ok(n) => n,
            Err(r) => return refused(r),
        };
        if m.models.iter().all(|(t, e)| {
            current
                .get(t)
                .is_some_and(|s| s.version == e.version && s.path == self.dir.join(&e.file))
        }) {
            return Outcome::Refused(
                "unchanged",
                "the manifest names the models in service".into(),
            );
        }
        // Load and warm up the new set beside the serving one.
        let count = self.count;
        let loaded = {
            let next = next.clone();
            let build = self.build.clone();
            tokio::task::spawn_blocking(move || {
                (0..count).map(|_| build(&next)).collect::<Result<Vec<_>>>()
            })
            .await
            .unwrap_or_else(|e| Err(anyhow::anyhow!("loading panicked: {e}")))
        };
        let engines = match loaded {
            Ok(e) => e,
            Err(e) => {
                // Loading seeded the new models' expected times: put back
                // those of the models that keep serving.
                self.seed(&current);
                return Outcome::Refused("load_failed", format!("{e:#}"));
            }
        };
        let Some(pool) = self.engines.upgrade() else {
            return Outcome::Refused("stopped", "the service is stopping".into());
        };
        let generation = pool.swap(engines);
        {
            let mut times = self.times.lock().expect("exec-time lock");
            for t in m.models.keys() {
                times.forget(*t);
            }
        }
        self.seed(&next);
        for (t, s) in &current {
            gauge!(format!("{}_model_info", self.side), "task_type" => t.as_str(), "version" => s.version.clone())
                .set(0.0);
        }
        for (t, s) in &next {
            gauge!(format!("{}_model_info", self.side), "task_type" => t.as_str(), "version" => s.version.clone())
                .set(1.0);
        }
        gauge!(format!("{}_model_generation", self.side)).set(generation as f64);
        *self.specs.lock().expect("specs lock") = next;
        Outcome::Applied(generation)
    }

    fn seed(&self, specs: &HashMap<TaskType, ModelSpec>) {
        let mut times = self.times.lock().expect("exec-time lock");
        for (t, s) in specs {
            times.seed(*t, Duration::from_secs_f64(s.expected_ms / 1e3));
        }
    }
}

/// A hash of what an update depends on: the manifest, its signature, and
/// the size and modification time of every file it names. `None` when
/// there is no manifest.
fn fingerprint(dir: &Path) -> Option<u64> {
    let bytes = std::fs::read(dir.join(MANIFEST)).ok()?;
    let mut h = std::collections::hash_map::DefaultHasher::new();
    bytes.hash(&mut h);
    std::fs::read(dir.join(SIGNATURE)).ok().hash(&mut h);
    if let Ok(m) = manifest::parse(&bytes) {
        for e in m.models.values() {
            let meta = std::fs::metadata(dir.join(&e.file)).ok();
            meta.as_ref().map(|m| m.len()).hash(&mut h);
            meta.and_then(|m| m.modified().ok()).hash(&mut h);
        }
    }
    Some(h.finish())
}
