//! The one result that ends every accepted task.

use crate::decide::Decision;
use crate::task::{ExecPath, Output, TaskError, Transport};
use std::fmt;
use std::time::Duration;

/// Exactly one of these ends every accepted task.
#[derive(Debug, Clone)]
pub struct TaskResult {
    pub task_id: String,
    pub outcome: Result<Output, TaskError>,
    /// Where the task ran; `None` if it failed before running anywhere.
    pub processed_by: Option<ExecPath>,
    pub transport: Option<Transport>,
    /// True when an offload failed and the task then ran locally.
    pub fell_back: bool,
    /// From acceptance to result.
    pub duration: Duration,
    pub decision: Option<Decision>,
    /// How the run that answered spent its time, as measured where it ran
    /// (the local worker, or the cloud's report); `None` when nothing ran
    /// or nobody measured.
    pub timing: Option<RunTiming>,
}

/// The time of one run: waiting before inference, and the inference
/// itself (decoding included).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct RunTiming {
    /// Locally: from acceptance to a worker starting it; in the cloud: the
    /// wait the cloud reports.
    pub queued: Duration,
    pub inference: Duration,
}

impl fmt::Display for TaskResult {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let by = match (self.processed_by, self.transport) {
            (Some(p), Some(t)) => format!("{}/{}", p.as_str(), t.as_str()),
            (Some(p), None) => p.as_str().to_string(),
            (None, _) => "-".into(),
        };
        match &self.outcome {
            Ok(o) => write!(
                f,
                "{} {} class={} conf={:.2} boxes={} {:.2}ms",
                self.task_id,
                by,
                o.class,
                o.confidence,
                o.boxes.len(),
                self.duration.as_secs_f64() * 1e3
            ),
            Err(e) => write!(f, "{} {} error: {e}", self.task_id, by),
        }
    }
}
