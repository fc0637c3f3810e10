//! Tasks and their results: the agent's unit of work.

use crate::decide::Decision;
use std::collections::HashMap;
use std::fmt;
use std::time::{Duration, Instant, SystemTime};

#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, serde::Deserialize,
)]
#[serde(rename_all = "snake_case")]
pub enum TaskType {
    ImageClassification,
    ObjectDetection,
    NlpAnalysis,
}

impl TaskType {
    pub const ALL: [TaskType; 3] = [
        TaskType::ImageClassification,
        TaskType::ObjectDetection,
        TaskType::NlpAnalysis,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            TaskType::ImageClassification => "image_classification",
            TaskType::ObjectDetection => "object_detection",
            TaskType::NlpAnalysis => "nlp_analysis",
        }
    }

    pub fn from_proto(v: i32) -> Option<Self> {
        match proto::TaskType::try_from(v).ok()? {
            proto::TaskType::ImageClassification => Some(TaskType::ImageClassification),
            proto::TaskType::ObjectDetection => Some(TaskType::ObjectDetection),
            proto::TaskType::NlpAnalysis => Some(TaskType::NlpAnalysis),
            proto::TaskType::Unspecified => None,
        }
    }

    pub fn to_proto(self) -> proto::TaskType {
        match self {
            TaskType::ImageClassification => proto::TaskType::ImageClassification,
            TaskType::ObjectDetection => proto::TaskType::ObjectDetection,
            TaskType::NlpAnalysis => proto::TaskType::NlpAnalysis,
        }
    }
}

impl std::str::FromStr for TaskType {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        TaskType::ALL
            .into_iter()
            .find(|t| t.as_str() == s)
            .ok_or_else(|| format!("unknown task type {s:?}"))
    }
}

#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    Hash,
    PartialOrd,
    Ord,
    Default,
    serde::Serialize,
    serde::Deserialize,
)]
#[serde(rename_all = "snake_case")]
pub enum Priority {
    Low,
    #[default]
    Medium,
    High,
    Critical,
}

impl Priority {
    pub fn from_proto(v: i32) -> Self {
        match proto::Priority::try_from(v).unwrap_or(proto::Priority::Unspecified) {
            proto::Priority::Low => Priority::Low,
            proto::Priority::Unspecified | proto::Priority::Medium => Priority::Medium,
            proto::Priority::High => Priority::High,
            proto::Priority::Critical => Priority::Critical,
        }
    }

    pub fn to_proto(self) -> proto::Priority {
        match self {
            Priority::Low => proto::Priority::Low,
            Priority::Medium => proto::Priority::Medium,
            Priority::High => proto::Priority::High,
            Priority::Critical => proto::Priority::Critical,
        }
    }
}

/// One inference request as the agent handles it.
#[derive(Debug, Clone)]
pub struct Task {
    pub id: String,
    pub task_type: TaskType,
    pub payload: Vec<u8>,
    pub priority: Priority,
    /// Absolute deadline; `None` means best effort.
    pub deadline: Option<Instant>,
    pub created_at: Instant,
    pub context: HashMap<String, String>,
}

impl Task {
    /// Time left until the deadline at `now` (zero when already past).
    pub fn time_left(&self, now: Instant) -> Option<Duration> {
        self.deadline.map(|d| d.saturating_duration_since(now))
    }
}

/// Converts between wall-clock deadlines on the wire and monotonic ones inside.
pub fn deadline_from_unix_nanos(nanos: i64, now: Instant) -> Option<Instant> {
    if nanos <= 0 {
        return None;
    }
    let wall_now = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap_or_default()
        .as_nanos() as i64;
    let left = nanos - wall_now;
    if left <= 0 {
        // Already expired: a deadline in the past stays in the past.
        Some(
            now.checked_sub(Duration::from_nanos((-left) as u64))
                .unwrap_or(now),
        )
    } else {
        Some(now + Duration::from_nanos(left as u64))
    }
}

pub fn deadline_to_unix_nanos(deadline: Option<Instant>, now: Instant) -> i64 {
    let Some(d) = deadline else { return 0 };
    let wall_now = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap_or_default()
        .as_nanos() as i64;
    if d >= now {
        wall_now + d.duration_since(now).as_nanos() as i64
    } else {
        // Keep it positive but already expired.
        (wall_now - now.duration_since(d).as_nanos() as i64).max(1)
    }
}

/// Where a task ran.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ExecPath {
    Local,
    Cloud,
}

impl ExecPath {
    pub fn as_str(self) -> &'static str {
        match self {
            ExecPath::Local => "local",
            ExecPath::Cloud => "cloud",
        }
    }
}

/// The transport that carried an offloaded task.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Transport {
    Quic,
    Grpc,
}

impl Transport {
    pub fn as_str(self) -> &'static str {
        match self {
            Transport::Quic => "quic",
            Transport::Grpc => "grpc",
        }
    }
}

/// A classification produced by a model.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Output {
    pub class: i64,
    pub confidence: f32,
    pub model: String,
}

/// Why a task failed; each maps to a clear message and a wire error kind.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum TaskError {
    #[error("invalid input: {0}")]
    InvalidInput(String),
    #[error("unsupported task type: {0}")]
    UnsupportedTaskType(String),
    #[error("deadline cannot be met: {0}")]
    DeadlineExceeded(String),
    #[error("overloaded: {0}")]
    Overloaded(String),
    #[error("cloud unavailable: {0}")]
    Unavailable(String),
    #[error("internal error: {0}")]
    Internal(String),
}

impl TaskError {
    pub fn kind(&self) -> proto::ErrorKind {
        match self {
            TaskError::InvalidInput(_) => proto::ErrorKind::InvalidInput,
            TaskError::UnsupportedTaskType(_) => proto::ErrorKind::UnsupportedTaskType,
            TaskError::DeadlineExceeded(_) => proto::ErrorKind::DeadlineExceeded,
            TaskError::Overloaded(_) => proto::ErrorKind::Overloaded,
            TaskError::Unavailable(_) => proto::ErrorKind::Unavailable,
            TaskError::Internal(_) => proto::ErrorKind::Internal,
        }
    }
}

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
                "{} {} class={} conf={:.2} {:.2}ms",
                self.task_id,
                by,
                o.class,
                o.confidence,
                self.duration.as_secs_f64() * 1e3
            ),
            Err(e) => write!(f, "{} {} error: {e}", self.task_id, by),
        }
    }
}
