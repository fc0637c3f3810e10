//! Store and forward: tasks without a deadline that must run in the cloud
//! while it is unreachable are held in an embedded database (redb) on the
//! gateway's disk, survive a restart of the edge, and are forwarded when
//! the cloud answers again. Their results are kept for a while, so a
//! submitter whose wait was cut short (the edge restarted) gets the result
//! by submitting the same task id again.

use prost::Message;
use redb::{Database, ReadableDatabase, ReadableTable, ReadableTableMetadata, TableDefinition};
use serde::{Deserialize, Serialize};
use std::path::Path;
use std::sync::Mutex;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// `[edge.store]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct StoreConfig {
    /// The database file; empty: no store (tasks that cannot reach the
    /// cloud fall back or fail as usual).
    pub path: String,
    /// Most tasks held, and their most payload bytes.
    pub max_tasks: usize,
    pub max_bytes: u64,
    /// How long a forwarded task's result stays retrievable.
    pub keep_results_s: u64,
    /// Hold every task without a deadline the policy sent to the cloud,
    /// not only those no local model can run.
    pub hold_runnable_locally: bool,
}

impl Default for StoreConfig {
    fn default() -> Self {
        Self {
            path: String::new(),
            max_tasks: 10_000,
            max_bytes: 256 << 20,
            keep_results_s: 24 * 3600,
            hold_runnable_locally: false,
        }
    }
}

/// Held tasks: id -> (arrival sequence, encoded `TaskRequest`).
const PENDING: TableDefinition<&str, (u64, &[u8])> = TableDefinition::new("pending");
/// Results: id -> (unix seconds when stored, encoded `TaskResponse`).
const RESULTS: TableDefinition<&str, (u64, &[u8])> = TableDefinition::new("results");

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("store full: {0}")]
    Full(String),
    #[error("store: {0}")]
    Db(String),
}

fn db<E: std::fmt::Display>(e: E) -> StoreError {
    StoreError::Db(e.to_string())
}

/// What the store holds now.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct StoreCounts {
    pub pending: usize,
    pub pending_bytes: u64,
    pub results: usize,
}

pub struct TaskStore {
    db: Database,
    cfg: StoreConfig,
    /// Pending count and bytes, kept beside the table so admission does
    /// not scan it.
    counts: Mutex<StoreCounts>,
}

fn unix_s(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

impl TaskStore {
    /// Opens (or creates) the database; `None` when no path is configured.
    pub fn open(cfg: &StoreConfig) -> anyhow::Result<Option<TaskStore>> {
        if cfg.path.is_empty() {
            return Ok(None);
        }
        let path = Path::new(&cfg.path);
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir)?;
        }
        let database = Database::create(path)
            .map_err(|e| anyhow::anyhow!("opening the task store {}: {e}", path.display()))?;
        let store = TaskStore {
            db: database,
            cfg: cfg.clone(),
            counts: Mutex::default(),
        };
        // Create the tables, then count what a previous run left.
        let w = store.db.begin_write()?;
        {
            w.open_table(PENDING)?;
            w.open_table(RESULTS)?;
        }
        w.commit()?;
        let mut c = StoreCounts::default();
        let r = store.db.begin_read()?;
        for entry in r.open_table(PENDING)?.iter()? {
            let (_, v) = entry?;
            c.pending += 1;
            c.pending_bytes += v.value().1.len() as u64;
        }
        c.results = r.open_table(RESULTS)?.len()? as usize;
        *store.counts.lock().expect("store counts") = c;
        store.prune(SystemTime::now())?;
        Ok(Some(store))
    }

    pub fn counts(&self) -> StoreCounts {
        *self.counts.lock().expect("store counts")
    }

    /// Holds a task (its id must be unique among the held ones; holding
    /// the same id again keeps the first).
    pub fn hold(&self, req: &proto::TaskRequest) -> Result<(), StoreError> {
        let bytes = req.encode_to_vec();
        let mut counts = self.counts.lock().expect("store counts");
        if counts.pending >= self.cfg.max_tasks {
            return Err(StoreError::Full(format!(
                "{} tasks held (max_tasks)",
                counts.pending
            )));
        }
        if counts.pending_bytes + bytes.len() as u64 > self.cfg.max_bytes {
            return Err(StoreError::Full(format!(
                "{} of {} bytes held (max_bytes)",
                counts.pending_bytes, self.cfg.max_bytes
            )));
        }
        let w = self.db.begin_write().map_err(db)?;
        let added = {
            let mut t = w.open_table(PENDING).map_err(db)?;
            let seq = t
                .last()
                .map_err(db)?
                .map_or(0, |(_, v)| v.value().0)
                .max(counts.pending as u64)
                + 1;
            if t.get(req.id.as_str()).map_err(db)?.is_some() {
                false
            } else {
                t.insert(req.id.as_str(), (seq, bytes.as_slice()))
                    .map_err(db)?;
                true
            }
        };
        w.commit().map_err(db)?;
        if added {
            counts.pending += 1;
            counts.pending_bytes += bytes.len() as u64;
        }
        Ok(())
    }

    pub fn is_pending(&self, id: &str) -> Result<bool, StoreError> {
        let r = self.db.begin_read().map_err(db)?;
        let t = r.open_table(PENDING).map_err(db)?;
        Ok(t.get(id).map_err(db)?.is_some())
    }

    /// The held tasks, oldest first.
    pub fn pending(&self) -> Result<Vec<proto::TaskRequest>, StoreError> {
        let r = self.db.begin_read().map_err(db)?;
        let t = r.open_table(PENDING).map_err(db)?;
        let mut v = Vec::new();
        for entry in t.iter().map_err(db)? {
            let (_, val) = entry.map_err(db)?;
            let (seq, bytes) = val.value();
            // A record this build cannot read is skipped, not fatal.
            if let Ok(req) = proto::TaskRequest::decode(bytes) {
                v.push((seq, req));
            }
        }
        v.sort_by_key(|(seq, _)| *seq);
        Ok(v.into_iter().map(|(_, r)| r).collect())
    }

    /// Moves a held task to the results with its answer.
    pub fn complete(&self, id: &str, resp: &proto::TaskResponse) -> Result<(), StoreError> {
        let bytes = resp.encode_to_vec();
        let mut counts = self.counts.lock().expect("store counts");
        let w = self.db.begin_write().map_err(db)?;
        let (removed, replaced) = {
            let mut p = w.open_table(PENDING).map_err(db)?;
            let removed = p.remove(id).map_err(db)?.map(|v| v.value().1.len() as u64);
            let mut r = w.open_table(RESULTS).map_err(db)?;
            let replaced = r
                .insert(id, (unix_s(SystemTime::now()), bytes.as_slice()))
                .map_err(db)?
                .is_some();
            (removed, replaced)
        };
        w.commit().map_err(db)?;
        if let Some(b) = removed {
            counts.pending -= 1;
            counts.pending_bytes -= b;
        }
        if !replaced {
            counts.results += 1;
        }
        Ok(())
    }

    /// A forwarded task's answer, if it is still kept.
    pub fn result(&self, id: &str) -> Result<Option<proto::TaskResponse>, StoreError> {
        let r = self.db.begin_read().map_err(db)?;
        let t = r.open_table(RESULTS).map_err(db)?;
        let Some(v) = t.get(id).map_err(db)? else {
            return Ok(None);
        };
        Ok(proto::TaskResponse::decode(v.value().1).ok())
    }

    /// Drops results older than `keep_results_s`.
    pub fn prune(&self, now: SystemTime) -> Result<usize, StoreError> {
        let keep = Duration::from_secs(self.cfg.keep_results_s);
        let cutoff = unix_s(now.checked_sub(keep).unwrap_or(UNIX_EPOCH));
        let w = self.db.begin_write().map_err(db)?;
        let n = {
            let mut t = w.open_table(RESULTS).map_err(db)?;
            let before = t.len().map_err(db)?;
            t.retain(|_, (at, _)| at >= cutoff).map_err(db)?;
            (before - t.len().map_err(db)?) as usize
        };
        w.commit().map_err(db)?;
        let mut counts = self.counts.lock().expect("store counts");
        counts.results = counts.results.saturating_sub(n);
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(dir: &Path, max_tasks: usize, max_bytes: u64) -> StoreConfig {
        StoreConfig {
            path: dir.join("store.redb").display().to_string(),
            max_tasks,
            max_bytes,
            ..Default::default()
        }
    }

    fn req(id: &str, n: usize) -> proto::TaskRequest {
        proto::TaskRequest {
            id: id.into(),
            payload: vec![7; n],
            ..Default::default()
        }
    }

    fn tmp(name: &str) -> std::path::PathBuf {
        let d = std::env::temp_dir().join(format!("edge-store-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    #[test]
    fn no_path_no_store() {
        assert!(TaskStore::open(&StoreConfig::default()).unwrap().is_none());
    }

    #[test]
    fn held_tasks_survive_a_reopen_in_order_and_results_replace_them() {
        let d = tmp("reopen");
        {
            let s = TaskStore::open(&cfg(&d, 10, 1 << 20)).unwrap().unwrap();
            for id in ["b", "a", "c"] {
                s.hold(&req(id, 100)).unwrap();
            }
            // The same id again is kept once.
            s.hold(&req("a", 100)).unwrap();
            assert_eq!(s.counts().pending, 3);
        }
        let s = TaskStore::open(&cfg(&d, 10, 1 << 20)).unwrap().unwrap();
        let ids: Vec<String> = s.pending().unwrap().into_iter().map(|r| r.id).collect();
        assert_eq!(ids, ["b", "a", "c"], "arrival order survives the reopen");
        assert_eq!(s.counts().pending, 3);
        assert!(s.counts().pending_bytes >= 300);
        assert!(s.is_pending("a").unwrap());
        let resp = proto::TaskResponse {
            task_id: "a".into(),
            success: true,
            predicted_class: 4,
            ..Default::default()
        };
        s.complete("a", &resp).unwrap();
        assert!(!s.is_pending("a").unwrap());
        assert_eq!(s.result("a").unwrap(), Some(resp));
        assert_eq!(s.result("b").unwrap(), None);
        assert_eq!(
            s.counts(),
            StoreCounts {
                pending: 2,
                pending_bytes: s.counts().pending_bytes,
                results: 1
            }
        );
        drop(s);
        let s = TaskStore::open(&cfg(&d, 10, 1 << 20)).unwrap().unwrap();
        assert_eq!((s.counts().pending, s.counts().results), (2, 1));
        assert_eq!(s.result("a").unwrap().unwrap().predicted_class, 4);
        let _ = std::fs::remove_dir_all(&d);
    }

    #[test]
    fn holding_is_bounded_by_count_and_bytes() {
        let d = tmp("bounds");
        let s = TaskStore::open(&cfg(&d, 2, 1 << 20)).unwrap().unwrap();
        s.hold(&req("1", 10)).unwrap();
        s.hold(&req("2", 10)).unwrap();
        let e = s.hold(&req("3", 10)).unwrap_err();
        assert!(e.to_string().contains("max_tasks"), "{e}");
        drop(s);
        let d2 = tmp("bounds-bytes");
        let s = TaskStore::open(&cfg(&d2, 100, 250)).unwrap().unwrap();
        s.hold(&req("1", 100)).unwrap();
        s.hold(&req("2", 100)).unwrap();
        let e = s.hold(&req("3", 100)).unwrap_err();
        assert!(e.to_string().contains("max_bytes"), "{e}");
        // Forwarding one frees its bytes.
        s.complete("1", &proto::TaskResponse::default()).unwrap();
        s.hold(&req("3", 100)).unwrap();
        let _ = std::fs::remove_dir_all(&d);
        let _ = std::fs::remove_dir_all(&d2);
    }

    #[test]
    fn old_results_are_pruned() {
        let d = tmp("prune");
        let s = TaskStore::open(&StoreConfig {
            keep_results_s: 60,
            ..cfg(&d, 10, 1 << 20)
        })
        .unwrap()
        .unwrap();
        s.complete("x", &proto::TaskResponse::default()).unwrap();
        assert_eq!(s.prune(SystemTime::now()).unwrap(), 0);
        assert!(s.result("x").unwrap().is_some());
        let later = SystemTime::now() + Duration::from_secs(120);
        assert_eq!(s.prune(later).unwrap(), 1);
        assert!(s.result("x").unwrap().is_none());
        assert_eq!(s.counts().results, 0);
        let _ = std::fs::remove_dir_all(&d);
    }
}
