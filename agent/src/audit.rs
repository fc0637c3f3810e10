//! The decision audit log: one JSON line per finished task with the whole
//! explanation (both paths' predicted costs and distributions, the reason,
//! where it ran, how long it took, the model version), for offline
//! analysis of the decisions. Written by a background thread
//! (tracing-appender's non-blocking writer): a full buffer drops lines
//! (counted in `edge_audit_lines_dropped_total`) rather than slow a task.

use agent_core::{Decision, Outlook, Priority, TaskResult, TaskType};
use anyhow::Context;
use serde_json::{json, Value};
use std::io::Write;
use std::path::Path;
use std::sync::Mutex;
use std::time::SystemTime;
use tracing_appender::non_blocking::{NonBlocking, NonBlockingBuilder, WorkerGuard};

pub struct AuditLog {
    writer: Mutex<NonBlocking>,
    /// Flushes and stops the writer thread when the log is dropped.
    _guard: WorkerGuard,
}

impl AuditLog {
    /// Appends to `path` (created if missing).
    pub fn open(path: &Path) -> anyhow::Result<AuditLog> {
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .with_context(|| format!("opening the audit log {}", path.display()))?;
        let (writer, guard) = NonBlockingBuilder::default()
            .lossy(true)
            .thread_name("audit-log")
            .finish(file);
        Ok(AuditLog {
            writer: Mutex::new(writer),
            _guard: guard,
        })
    }

    /// Writes one task's line.
    /// `split_point`: the name of the split point whose head ran here.
    pub fn record(
        &self,
        r: &TaskResult,
        task_type: TaskType,
        priority: Priority,
        split_point: Option<&str>,
    ) {
        let mut v = line(r, task_type, priority, SystemTime::now());
        if let (Some(p), Some(d)) = (split_point, v.get_mut("decision")) {
            if let Some(d) = d.as_object_mut() {
                d.insert("split_point".into(), Value::from(p));
            }
        }
        let mut line = serde_json::to_vec(&v).unwrap_or_default();
        line.push(b'\n');
        let mut w = self.writer.lock().unwrap_or_else(|e| e.into_inner());
        let before = w.error_counter().dropped_lines();
        // One write per line: the writer thread gets whole lines.
        let _ = w.write_all(&line);
        let dropped = w.error_counter().dropped_lines() - before;
        if dropped > 0 {
            metrics::counter!("edge_audit_lines_dropped_total").increment(dropped as u64);
        }
    }
}

fn outlook(o: Option<Outlook>) -> Value {
    o.map_or(Value::Null, |o| {
        json!({
            "mean_ms": o.mean_ms,
            "p50_ms": o.p50_ms,
            "p95_ms": o.p95_ms,
            "p_meet": o.p_meet,
            "correction_ms": o.correction_ms,
        })
    })
}

fn decision(d: &Decision) -> Value {
    json!({
        "policy": d.policy,
        "path": d.path.as_str(),
        "reason": d.reason.to_string(),
        "hedged": d.hedge,
        "network_source": d.network_source.map(|s| s.as_str()),
        "local": {
            "queue_ms": d.local.queue_ms,
            "inference_ms": d.local.inference_ms,
            "total_ms": d.local.total_ms,
            "congestion_ms": d.local.congestion_ms,
            "outlook": outlook(d.local_outlook),
        },
        "offload": d.offload.map(|o| json!({
            "head_ms": o.head_ms,
            "upload_ms": o.upload_ms,
            "rtt_ms": o.rtt_ms,
            "jitter_ms": o.jitter_ms,
            "jitter_penalty_ms": o.jitter_penalty_ms,
            "cloud_inference_ms": o.cloud_inference_ms,
            "download_ms": o.download_ms,
            "total_ms": o.total_ms,
            "congestion_ms": o.congestion_ms,
            "loss_rate": o.loss_rate,
            "p_loss": o.p_loss,
            "loss_delay_ms": o.loss_delay_ms,
            "outlook": outlook(d.offload_outlook),
        })),
    })
}

/// The audit record of one task.
pub fn line(r: &TaskResult, task_type: TaskType, priority: Priority, now: SystemTime) -> Value {
    let ts = now
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0);
    let (ok, error, model, version) = match &r.outcome {
        Ok(o) => (
            true,
            None,
            Some(o.model.as_str()),
            Some(o.model_version.as_str()),
        ),
        Err(e) => (false, Some(e.to_string()), None, None),
    };
    json!({
        "ts": ts,
        "task_id": r.task_id,
        "task_type": task_type.as_str(),
        "priority": format!("{priority:?}").to_lowercase(),
        "ok": ok,
        "error": error,
        "processed_by": r.processed_by.map(|p| p.as_str()),
        "transport": r.transport.map(|t| t.as_str()),
        "fell_back": r.fell_back,
        "duration_ms": r.duration.as_secs_f64() * 1e3,
        "model": model,
        "model_version": version,
        "decision": r.decision.as_ref().map(decision),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use agent_core::{ExecPath, Output, TaskError, Transport};
    use std::time::Duration;

    fn result(outcome: Result<Output, TaskError>) -> TaskResult {
        TaskResult {
            task_id: "t-1".into(),
            outcome,
            processed_by: Some(ExecPath::Cloud),
            transport: Some(Transport::Quic),
            fell_back: false,
            duration: Duration::from_millis(12),
            decision: None,
            timing: None,
        }
    }

    #[test]
    fn a_line_names_the_task_the_path_and_the_model_version() {
        let ok = result(Ok(Output {
            class: 3,
            confidence: 0.9,
            label: String::new(),
            boxes: Vec::new(),
            model: "cnn".into(),
            model_version: "7".into(),
        }));
        let v = line(
            &ok,
            TaskType::ImageClassification,
            Priority::High,
            SystemTime::UNIX_EPOCH,
        );
        assert_eq!(v["task_id"], "t-1");
        assert_eq!(v["task_type"], "image_classification");
        assert_eq!(v["processed_by"], "cloud");
        assert_eq!(v["transport"], "quic");
        assert_eq!(v["model_version"], "7");
        assert_eq!(v["duration_ms"], 12.0);
        let err = result(Err(TaskError::DeadlineExceeded("late".into())));
        let v = line(
            &err,
            TaskType::NlpAnalysis,
            Priority::Low,
            SystemTime::UNIX_EPOCH,
        );
        assert_eq!(v["ok"], false);
        assert!(v["error"].as_str().unwrap().contains("late"));
        assert!(v["model_version"].is_null());
    }
}
