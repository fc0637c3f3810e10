//! One line of the driver's output per task (JSON lines): what was sent,
//! what came back, and the decision with the network figures it used.

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Outcome {
    /// Answered with a result.
    Ok,
    /// Accepted, answered with an error (e.g. the deadline cannot be met).
    Failed,
    /// Refused by the task API (gRPC status: bad input, overloaded, ...).
    Rejected,
    /// No answer: connection error or the driver's own timeout.
    Lost,
}

/// The network and cost figures a decision was made with.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct DecisionView {
    pub policy: String,
    pub path: String,
    pub reason: String,
    /// Smoothed RTT the agent saw (0 without a network estimate).
    pub rtt_ms: f64,
    /// RTT standard deviation the agent saw, recovered from the jitter
    /// penalty (`penalty = K * w(priority) * sd`); `None` without an estimate.
    pub jitter_ms: Option<f64>,
    pub jitter_penalty_ms: f64,
    pub local_queue_ms: f64,
    pub local_inference_ms: f64,
    pub local_total_ms: f64,
    pub cloud_inference_ms: f64,
    pub offload_total_ms: f64,
    pub network_source: String,
    /// The chosen path's predicted probability of meeting the deadline.
    #[serde(default)]
    pub p_meet: Option<f64>,
    /// What recent residuals moved the chosen path's prediction by (ms).
    #[serde(default)]
    pub correction_ms: Option<f64>,
    /// The median of the chosen path's predicted distribution (the
    /// policies that predict one).
    #[serde(default)]
    pub p50_ms: Option<f64>,
    /// Run on both paths (the first answer taken).
    #[serde(default)]
    pub hedged: bool,
    /// The offload endpoint the decision was made for (its configured
    /// name); empty when the edge has none to choose from.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub endpoint: String,
    /// Split computing: the split point whose head ran on the edge; empty
    /// for a task run locally or offloaded whole.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub split_point: String,
    /// The offload's predicted upload time (with its wait behind earlier
    /// uploads) and a split's head at the edge (with its queue wait).
    #[serde(default)]
    pub upload_ms: f64,
    #[serde(default)]
    pub head_ms: f64,
    /// The congestion prices each path was weighed with.
    #[serde(default)]
    pub local_congestion_ms: f64,
    #[serde(default)]
    pub offload_congestion_ms: f64,
    /// The loss rate the agent saw, the chance it gave the offload's
    /// exchange of losing a packet, and the delay it priced a loss at.
    #[serde(default)]
    pub loss_rate: f64,
    #[serde(default)]
    pub p_loss: f64,
    #[serde(default)]
    pub loss_delay_ms: f64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TaskRecord {
    pub seq: u32,
    /// When the request went out, ms after the workload started.
    pub sent_ms: f64,
    /// Until the answer (or the error) arrived, as the submitter saw it.
    pub latency_ms: f64,
    pub task: String,
    pub priority: String,
    pub deadline_ms: Option<u64>,
    pub outcome: Outcome,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub error: String,
    /// "local" or "cloud" where it ran; `None` when it ran nowhere.
    pub path: Option<String>,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub transport: String,
    #[serde(default)]
    pub fell_back: bool,
    pub label: Option<u8>,
    pub predicted: Option<i64>,
    pub decision: Option<DecisionView>,
    /// The agent's own measure of the task (from its API receiving it to
    /// the answer); the rest of `latency_ms` is the way to and from it.
    #[serde(default)]
    pub agent_ms: Option<f64>,
    /// The run's own timing as the agent reports it: the wait before the
    /// run (locally: for a worker; offloaded: the cloud's queue) and the
    /// inference itself. `None` where nothing ran.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub queue_ms: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub inference_ms: Option<f64>,
}

impl TaskRecord {
    pub fn completed(&self) -> bool {
        self.outcome == Outcome::Ok
    }

    /// Where the task ran, split computing included: `local`, `whole`
    /// (offloaded as it was), the split point's name, or `failed`.
    pub fn variant(&self) -> String {
        if !self.completed() {
            return "failed".into();
        }
        match self.path.as_deref() {
            Some("local") => "local".into(),
            _ => match self.decision.as_ref().map(|d| d.split_point.as_str()) {
                Some(p) if !p.is_empty() && !self.fell_back => p.to_string(),
                _ => "whole".into(),
            },
        }
    }

    pub fn offloaded(&self) -> bool {
        self.completed() && self.path.as_deref() == Some("cloud")
    }

    /// `None` for a task without a deadline; a task that did not complete
    /// missed its deadline.
    pub fn deadline_met(&self) -> Option<bool> {
        self.deadline_ms
            .map(|d| self.completed() && self.latency_ms <= d as f64)
    }

    /// Refused before any path: failed with the agent's "deadline cannot
    /// be met" and no decision (no path was likely enough in time).
    pub fn refused(&self) -> bool {
        let refusal = agent_core::TaskError::DeadlineExceeded(String::new()).to_string();
        !self.completed() && self.decision.is_none() && self.error.starts_with(&refusal)
    }

    /// `None` when the task did not complete or has no label.
    pub fn correct(&self) -> Option<bool> {
        match (self.completed(), self.label, self.predicted) {
            (true, Some(l), Some(p)) => Some(i64::from(l) == p),
            _ => None,
        }
    }
}

/// Where a response says the task ran: the edge API answers "local",
/// "cloud/quic", "cloud/grpc" (or "cloud"), or nothing.
pub fn path_of(processed_by: &str) -> Option<String> {
    if processed_by.starts_with("cloud") {
        Some("cloud".into())
    } else if processed_by == "local" {
        Some("local".into())
    } else {
        None
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    pub fn rec(seq: u32, outcome: Outcome, latency_ms: f64, path: &str) -> TaskRecord {
        TaskRecord {
            seq,
            sent_ms: seq as f64 * 50.0,
            latency_ms,
            task: "image_classification".into(),
            priority: "medium".into(),
            deadline_ms: Some(100),
            outcome,
            error: String::new(),
            path: path_of(path),
            transport: String::new(),
            fell_back: false,
            label: Some(3),
            predicted: (outcome == Outcome::Ok).then_some(3),
            decision: None,
            agent_ms: None,
            queue_ms: None,
            inference_ms: None,
        }
    }

    #[test]
    fn deadline_and_correctness() {
        let ok = rec(0, Outcome::Ok, 40.0, "local");
        assert_eq!(ok.deadline_met(), Some(true));
        assert_eq!(ok.correct(), Some(true));
        let late = rec(1, Outcome::Ok, 140.0, "cloud/quic");
        assert_eq!(late.deadline_met(), Some(false));
        assert!(late.offloaded());
        let failed = rec(2, Outcome::Failed, 1.0, "");
        assert_eq!(failed.deadline_met(), Some(false));
        assert_eq!(failed.correct(), None);
        assert!(!failed.offloaded());
        let wrong = TaskRecord {
            predicted: Some(5),
            deadline_ms: None,
            ..ok.clone()
        };
        assert_eq!(wrong.correct(), Some(false));
        assert_eq!(wrong.deadline_met(), None);
    }

    #[test]
    fn json_round_trip_and_paths() {
        let r = rec(4, Outcome::Rejected, 0.5, "");
        let line = serde_json::to_string(&r).unwrap();
        assert!(line.contains("\"outcome\":\"rejected\""));
        assert_eq!(serde_json::from_str::<TaskRecord>(&line).unwrap(), r);
        assert_eq!(path_of("cloud/grpc").as_deref(), Some("cloud"));
        assert_eq!(path_of("local").as_deref(), Some("local"));
        assert_eq!(path_of(""), None);
    }
}
