//! Tasks and their results: the agent's unit of work.

use std::collections::HashMap;
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

/// Nanoseconds since the Unix epoch of a wall-clock instant (0 before it).
pub fn unix_nanos(t: SystemTime) -> i64 {
    t.duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_nanos()).unwrap_or(i64::MAX))
}

/// A wall-clock deadline from the wire (`nanos` since the Unix epoch, 0 or
/// less: none) as a monotonic one. `now` and `wall_now` are the same moment
/// on both clocks.
pub fn deadline_from_unix_nanos(nanos: i64, now: Instant, wall_now: SystemTime) -> Option<Instant> {
    if nanos <= 0 {
        return None;
    }
    let left = nanos - unix_nanos(wall_now);
    if left <= 0 {
        // Already expired: a deadline in the past stays in the past.
        Some(
            now.checked_sub(Duration::from_nanos(left.unsigned_abs()))
                .unwrap_or(now),
        )
    } else {
        Some(now + Duration::from_nanos(left as u64))
    }
}

/// A monotonic deadline as wall-clock nanoseconds for the wire (0: none).
pub fn deadline_to_unix_nanos(
    deadline: Option<Instant>,
    now: Instant,
    wall_now: SystemTime,
) -> i64 {
    let Some(d) = deadline else { return 0 };
    let wall_now = unix_nanos(wall_now);
    let apart =
        |a: Instant, b: Instant| i64::try_from(a.duration_since(b).as_nanos()).unwrap_or(i64::MAX);
    // Saturating: a deadline centuries away stays far away, never wraps.
    if d >= now {
        wall_now.saturating_add(apart(d, now))
    } else {
        // Keep it positive but already expired.
        wall_now.saturating_sub(apart(now, d)).max(1)
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
    /// The KServe V2 inference protocol (gRPC `GRPCInferenceService`).
    V2,
}

impl Transport {
    pub fn as_str(self) -> &'static str {
        match self {
            Transport::Quic => "quic",
            Transport::Grpc => "grpc",
            Transport::V2 => "v2",
        }
    }
}

/// A model's answer. Classifiers (images, text) give the most likely
/// class; a detector gives its boxes, and the class and score of the
/// strongest (-1 and 0 when it found nothing).
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Output {
    pub class: i64,
    pub confidence: f32,
    /// The class's name, when the model has names.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub label: String,
    /// Detected objects, strongest first (object detection only).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub boxes: Vec<Detection>,
    pub model: String,
    /// The version of the model that answered (it changes when a new
    /// model is swapped in live).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub model_version: String,
}

/// One detected object, in the pixels of the image as it was sent.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Detection {
    pub class: i64,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub label: String,
    pub score: f32,
    pub x1: f32,
    pub y1: f32,
    pub x2: f32,
    pub y2: f32,
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
    /// The submitter went away before the answer (its task was dropped).
    #[error("cancelled: {0}")]
    Cancelled(String),
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deadlines_cross_the_wire_and_back() {
        let now = Instant::now();
        let wall = SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000);
        let d = now + Duration::from_millis(250);
        let nanos = deadline_to_unix_nanos(Some(d), now, wall);
        assert_eq!(nanos, unix_nanos(wall) + 250_000_000);
        assert_eq!(deadline_from_unix_nanos(nanos, now, wall), Some(d));
        // None and non-positive values mean no deadline.
        assert_eq!(deadline_to_unix_nanos(None, now, wall), 0);
        assert_eq!(deadline_from_unix_nanos(0, now, wall), None);
        assert_eq!(deadline_from_unix_nanos(-5, now, wall), None);
        // A deadline in the past stays in the past on both sides.
        let past = deadline_from_unix_nanos(unix_nanos(wall) - 1_000_000, now, wall).unwrap();
        assert!(past <= now);
    }
}
