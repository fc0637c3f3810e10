//! The decision engine: where should a task run? Pure logic: data in,
//! [`Decision`] out, no clocks, no I/O.
//!
//! Cost model (all expected latencies):
//!   local   = queue wait + local inference
//!   offload = upload + RTT + K x jitter + cloud inference + download
//! where K grows with the task's priority (urgent work is more averse to the
//! jitter tail). An unreachable cloud, or a network estimate that is missing
//! or malformed, means local. With a deadline: if only one path is expected
//! to meet it, that path; if neither, the task fails early.

use crate::estimate::NetworkStatus;
use crate::sample::SampleSource;
use crate::task::{ExecPath, Priority, TaskError, TaskType};
use serde::{Deserialize, Serialize};
use std::fmt;
use std::time::Duration;

/// How decisions are made. The baselines exist for benchmarks.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "kebab-case")]
pub enum Policy {
    /// Always run locally.
    AlwaysLocal,
    /// Always offload (even to an unreachable cloud).
    AlwaysOffload,
    /// The simple rule a gateway might ship with: offload when the local
    /// queue wait exceeds `min_local_wait_ms` and the link is good (RTT and
    /// jitter under their limits).
    Threshold {
        max_rtt_ms: f64,
        max_jitter_ms: f64,
        min_local_wait_ms: f64,
    },
    /// The jitter-aware cost model.
    CostModel { jitter_k: f64 },
}

impl Default for Policy {
    fn default() -> Self {
        Policy::CostModel { jitter_k: 2.0 }
    }
}

impl Policy {
    pub fn name(&self) -> &'static str {
        match self {
            Policy::AlwaysLocal => "always-local",
            Policy::AlwaysOffload => "always-offload",
            Policy::Threshold { .. } => "threshold",
            Policy::CostModel { .. } => "cost-model",
        }
    }

    /// Every policy's command-line name; benchmarks iterate over it, so a
    /// new policy belongs here as well as in [`Policy::from_name`].
    pub const NAMES: [&'static str; 4] =
        ["always-local", "always-offload", "threshold", "cost-model"];

    /// Parses the names used on the command line, with default parameters.
    pub fn from_name(name: &str) -> Option<Policy> {
        Some(match name {
            "always-local" | "local" => Policy::AlwaysLocal,
            "always-offload" | "offload" => Policy::AlwaysOffload,
            "threshold" => Policy::Threshold {
                max_rtt_ms: 50.0,
                max_jitter_ms: 10.0,
                min_local_wait_ms: 5.0,
            },
            "cost-model" | "cost" => Policy::default(),
            _ => return None,
        })
    }
}

/// Jitter-penalty multiplier per priority, relative to the policy's K.
pub fn priority_weight(p: Priority) -> f64 {
    match p {
        Priority::Low => 0.5,
        Priority::Medium => 1.0,
        Priority::High => 1.5,
        Priority::Critical => 2.0,
    }
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LocalStatus {
    /// Expected wait in the local queue before this task starts.
    pub queue_wait: Duration,
    pub inference: Duration,
    /// Whether a local model serves this task type.
    pub supported: bool,
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct CloudStatus {
    /// Expected server time (its queue and inference).
    pub inference: Duration,
}

#[derive(Debug, Clone)]
pub struct DecisionInput<'a> {
    pub task_type: TaskType,
    pub priority: Priority,
    pub payload_bytes: usize,
    pub response_bytes: usize,
    /// Time left until the deadline, if the task has one.
    pub time_left: Option<Duration>,
    pub net: &'a NetworkStatus,
    pub local: LocalStatus,
    pub cloud: CloudStatus,
}

#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct LocalCost {
    pub queue_ms: f64,
    pub inference_ms: f64,
    pub total_ms: f64,
}

#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct OffloadCost {
    pub upload_ms: f64,
    pub rtt_ms: f64,
    /// The jitter the penalty was computed from (the window's standard deviation).
    pub jitter_ms: f64,
    pub jitter_penalty_ms: f64,
    pub cloud_inference_ms: f64,
    pub download_ms: f64,
    pub total_ms: f64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reason {
    FixedByPolicy,
    LocalCheaper,
    OffloadCheaper,
    OnlyLocalMeetsDeadline,
    OnlyOffloadMeetsDeadline,
    CloudUnreachable,
    NoNetworkEstimate,
    NoLocalModel,
    ThresholdLinkGoodQueueLong,
    ThresholdNotMet,
}

impl fmt::Display for Reason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Reason::FixedByPolicy => "fixed by policy",
            Reason::LocalCheaper => "local cheaper",
            Reason::OffloadCheaper => "offload cheaper",
            Reason::OnlyLocalMeetsDeadline => "only local meets deadline",
            Reason::OnlyOffloadMeetsDeadline => "only offload meets deadline",
            Reason::CloudUnreachable => "cloud unreachable",
            Reason::NoNetworkEstimate => "no usable network estimate",
            Reason::NoLocalModel => "no local model for task type",
            Reason::ThresholdLinkGoodQueueLong => "link good and local queue long",
            Reason::ThresholdNotMet => "threshold not met",
        })
    }
}

/// A decision with everything that went into it.
#[derive(Debug, Clone, PartialEq)]
pub struct Decision {
    pub policy: &'static str,
    pub path: ExecPath,
    pub reason: Reason,
    pub local: LocalCost,
    /// `None` when there is no usable network estimate.
    pub offload: Option<OffloadCost>,
    pub network_source: Option<SampleSource>,
}

impl Decision {
    /// Expected latency of the chosen path.
    pub fn expected_ms(&self) -> f64 {
        match self.path {
            ExecPath::Local => self.local.total_ms,
            ExecPath::Cloud => self.offload.map_or(f64::NAN, |o| o.total_ms),
        }
    }
}

impl fmt::Display for Decision {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} -> {} ({}) local={:.2}ms [queue {:.2} + infer {:.2}]",
            self.policy,
            self.path.as_str(),
            self.reason,
            self.local.total_ms,
            self.local.queue_ms,
            self.local.inference_ms
        )?;
        match self.offload {
            Some(o) => write!(
                f,
                " offload={:.2}ms [up {:.2} + rtt {:.2} + jitter {:.2} + cloud {:.2} + down {:.2}]",
                o.total_ms,
                o.upload_ms,
                o.rtt_ms,
                o.jitter_penalty_ms,
                o.cloud_inference_ms,
                o.download_ms
            ),
            None => write!(f, " offload=n/a"),
        }
    }
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

fn local_cost(l: &LocalStatus) -> LocalCost {
    let queue_ms = ms(l.queue_wait);
    let inference_ms = ms(l.inference);
    LocalCost {
        queue_ms,
        inference_ms,
        total_ms: queue_ms + inference_ms,
    }
}

/// The offload cost, or `None` when the estimate is missing or malformed.
fn offload_cost(input: &DecisionInput, jitter_k: f64) -> Option<OffloadCost> {
    let net = input.net;
    if net.rtt.samples == 0 || net.bandwidth_bps.is_nan() || net.bandwidth_bps <= 0.0 {
        return None;
    }
    let bits_ms = |bytes: usize| bytes as f64 * 8.0 / net.bandwidth_bps * 1e3;
    let upload_ms = bits_ms(input.payload_bytes);
    let download_ms = bits_ms(input.response_bytes);
    let rtt_ms = net.rtt.srtt_ms;
    let jitter_ms = net.rtt.stddev_ms;
    let jitter_penalty_ms = jitter_k * priority_weight(input.priority) * jitter_ms;
    let cloud_inference_ms = ms(input.cloud.inference);
    let total_ms = upload_ms + rtt_ms + jitter_penalty_ms + cloud_inference_ms + download_ms;
    let all = [
        upload_ms,
        rtt_ms,
        jitter_ms,
        jitter_penalty_ms,
        download_ms,
        total_ms,
    ];
    if all.iter().any(|v| !v.is_finite() || *v < 0.0) {
        return None;
    }
    Some(OffloadCost {
        upload_ms,
        rtt_ms,
        jitter_ms,
        jitter_penalty_ms,
        cloud_inference_ms,
        download_ms,
        total_ms,
    })
}

/// Decides where a task runs, or fails it early when no path can work.
pub fn decide(input: &DecisionInput, policy: &Policy) -> Result<Decision, TaskError> {
    let jitter_k = match policy {
        Policy::CostModel { jitter_k } => *jitter_k,
        _ => 1.0,
    };
    let local = local_cost(&input.local);
    let offload = offload_cost(input, jitter_k);
    let make = |path, reason| Decision {
        policy: policy.name(),
        path,
        reason,
        local,
        offload,
        network_source: input.net.source,
    };
    let need_local_model = || {
        if input.local.supported {
            Ok(())
        } else {
            Err(TaskError::UnsupportedTaskType(format!(
                "no local model for {}",
                input.task_type.as_str()
            )))
        }
    };
    let cloud_usable = input.net.reachable && offload.is_some();

    match policy {
        Policy::AlwaysLocal => {
            need_local_model()?;
            Ok(make(ExecPath::Local, Reason::FixedByPolicy))
        }
        Policy::AlwaysOffload => Ok(make(ExecPath::Cloud, Reason::FixedByPolicy)),
        Policy::Threshold {
            max_rtt_ms,
            max_jitter_ms,
            min_local_wait_ms,
        } => {
            let link_good = cloud_usable
                && input.net.rtt.srtt_ms <= *max_rtt_ms
                && input.net.rtt.stddev_ms <= *max_jitter_ms;
            if !input.local.supported && cloud_usable {
                return Ok(make(ExecPath::Cloud, Reason::NoLocalModel));
            }
            need_local_model()?;
            if link_good && local.queue_ms >= *min_local_wait_ms {
                Ok(make(ExecPath::Cloud, Reason::ThresholdLinkGoodQueueLong))
            } else {
                Ok(make(ExecPath::Local, Reason::ThresholdNotMet))
            }
        }
        Policy::CostModel { .. } => {
            let meets = |total: f64| input.time_left.is_none_or(|t| total <= ms(t));
            let local_ok = input.local.supported;
            let local_meets = local_ok && meets(local.total_ms);
            let offload_meets = cloud_usable && offload.is_some_and(|o| meets(o.total_ms));
            match (local_ok, cloud_usable) {
                (false, false) => Err(TaskError::Unavailable(format!(
                    "no local model for {} and the cloud is unreachable",
                    input.task_type.as_str()
                ))),
                (true, false) => {
                    if !local_meets {
                        return Err(deadline_error(input, &local, None));
                    }
                    let reason = if offload.is_none() {
                        Reason::NoNetworkEstimate
                    } else {
                        Reason::CloudUnreachable
                    };
                    Ok(make(ExecPath::Local, reason))
                }
                (false, true) => {
                    if !offload_meets {
                        return Err(deadline_error(input, &local, offload));
                    }
                    Ok(make(ExecPath::Cloud, Reason::NoLocalModel))
                }
                (true, true) => match (local_meets, offload_meets) {
                    (false, false) => Err(deadline_error(input, &local, offload)),
                    (true, false) => Ok(make(ExecPath::Local, Reason::OnlyLocalMeetsDeadline)),
                    (false, true) => Ok(make(ExecPath::Cloud, Reason::OnlyOffloadMeetsDeadline)),
                    (true, true) => {
                        let o = offload.expect("cloud usable implies an offload cost");
                        if o.total_ms < local.total_ms {
                            Ok(make(ExecPath::Cloud, Reason::OffloadCheaper))
                        } else {
                            Ok(make(ExecPath::Local, Reason::LocalCheaper))
                        }
                    }
                },
            }
        }
    }
}

fn deadline_error(
    input: &DecisionInput,
    local: &LocalCost,
    offload: Option<OffloadCost>,
) -> TaskError {
    let left = input.time_left.map_or(f64::INFINITY, ms);
    let offload = offload.map_or("n/a".to_string(), |o| format!("{:.2}ms", o.total_ms));
    TaskError::DeadlineExceeded(format!(
        "{left:.2}ms left, expected local {:.2}ms, offload {offload}",
        local.total_ms
    ))
}

#[cfg(test)]
mod tests;
