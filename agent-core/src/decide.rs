//! The decision engine: where should a task run? Pure logic: data in,
//! [`Decision`] out, no clocks, no I/O.
//!
//! The default policy, **deadline-aware**, predicts each path's latency as a
//! distribution ([`Outlook`]):
//!   local   = queue wait + local inference (recent measurements)
//!   offload = upload + RTT (the window's samples) + cloud server time
//!             (recent measurements) + download
//! and chooses by the probability of meeting the deadline first, then by a
//! score that mixes the mean with the p95 as the priority grows, plus a
//! congestion price for the work the path adds to a busy resource (the
//! edge's workers, the uplink: ρ/(1 − ρ) later tasks wait behind each unit
//! of it; a local run also delays each queued task of lower priority it
//! overtakes by its whole length), with hysteresis against the previous
//! choice for the task type.
//!
//! The seed's cost model (kept as `cost-model`, all expected latencies):
//!   local   = queue wait + local inference
//!   offload = upload + RTT + K x jitter + cloud inference + download
//! where K grows with the task's priority (urgent work is more averse to the
//! jitter tail). An unreachable cloud, or a network estimate that is missing
//! or malformed, means local. With a deadline: if only one path is expected
//! to meet it, that path; if neither, the task fails early.

mod runs;

use crate::estimate::{congestion_price_ms, quantile, NetworkStatus};
use crate::sample::SampleSource;
use crate::task::{ExecPath, Priority, TaskError, TaskType};
use runs::{grid, sorted_sums, sum, Buffers, Shifted, Values};
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
    /// The seed's jitter-aware cost model: mean RTT + K x sd.
    CostModel { jitter_k: f64 },
    /// Latency distributions per path: probability of meeting the
    /// deadline first, then a priority-weighted mean/tail score.
    DeadlineAware {
        /// A path whose probability of meeting the deadline is higher by
        /// at least this much wins outright.
        p_margin: f64,
        /// Below this probability on both paths the task fails early.
        min_p: f64,
        /// Leave the previous path only for a score better by this share.
        hysteresis: f64,
    },
    /// `deadline-aware` on a forecast link: the RTT distribution moved by
    /// the RTT's trend (Holt) over `horizon_ms`.
    Predictive { horizon_ms: f64 },
    /// Always offload through one split point (`split:<point>` on the
    /// command line): the edge runs the model's head up to `point`, the
    /// cloud the tail. Task types without that split point offload whole.
    /// A baseline for split computing.
    SplitAt { point: String },
}

impl Default for Policy {
    fn default() -> Self {
        Policy::DeadlineAware {
            p_margin: 0.1,
            min_p: 0.02,
            hysteresis: 0.1,
        }
    }
}

impl Policy {
    pub fn name(&self) -> &'static str {
        match self {
            Policy::AlwaysLocal => "always-local",
            Policy::AlwaysOffload => "always-offload",
            Policy::Threshold { .. } => "threshold",
            Policy::CostModel { .. } => "cost-model",
            Policy::DeadlineAware { .. } => "deadline-aware",
            Policy::Predictive { .. } => "predictive",
            Policy::SplitAt { .. } => "split-at",
        }
    }

    /// Whether queued local tasks that a burst made late are decided again
    /// (and moved to the cloud when it now looks likelier in time): the
    /// deadline-aware policies; the baselines keep their first choice.
    pub fn reconsiders_queued(&self) -> bool {
        self.aware().is_some()
    }

    /// The deadline-aware rule's parameters (p_margin, min_p, hysteresis)
    /// and forecast horizon (ms), for the policies that use it.
    fn aware(&self) -> Option<(f64, f64, f64, f64)> {
        match *self {
            Policy::DeadlineAware {
                p_margin,
                min_p,
                hysteresis,
            } => Some((p_margin, min_p, hysteresis, 0.0)),
            Policy::Predictive { horizon_ms } => Some((0.1, 0.02, 0.1, horizon_ms)),
            _ => None,
        }
    }

    /// Every policy's command-line name; benchmarks iterate over it, so a
    /// new policy belongs here as well as in [`Policy::from_name`].
    pub const NAMES: [&'static str; 6] = [
        "always-local",
        "always-offload",
        "threshold",
        "cost-model",
        "deadline-aware",
        "predictive",
    ];

    /// Whether the decision weighs split points (the aware policies; a
    /// fixed split is the shell's choice of variant).
    pub fn weighs_splits(&self) -> bool {
        self.aware().is_some()
    }

    /// The one split point this policy always uses, if any.
    pub fn fixed_split(&self) -> Option<&str> {
        match self {
            Policy::SplitAt { point } => Some(point),
            _ => None,
        }
    }

    /// Parses the names used on the command line, with default parameters
    /// (`split:<point>` for [`Policy::SplitAt`]).
    pub fn from_name(name: &str) -> Option<Policy> {
        Some(match name {
            "always-local" | "local" => Policy::AlwaysLocal,
            "always-offload" | "offload" => Policy::AlwaysOffload,
            "threshold" => Policy::Threshold {
                max_rtt_ms: 50.0,
                max_jitter_ms: 10.0,
                min_local_wait_ms: 5.0,
            },
            "cost-model" | "cost" => Policy::CostModel { jitter_k: 2.0 },
            "deadline-aware" => Policy::default(),
            "predictive" => Policy::Predictive { horizon_ms: 500.0 },
            _ => match name.strip_prefix("split:") {
                Some(point) if !point.is_empty() => Policy::SplitAt {
                    point: point.to_string(),
                },
                _ => return None,
            },
        })
    }
}

/// How much of the score is the p95 rather than the mean, per priority:
/// urgent work is judged by its tail.
pub fn tail_weight(p: Priority) -> f64 {
    match p {
        Priority::Low => 0.0,
        Priority::Medium => 0.25,
        Priority::High => 0.5,
        Priority::Critical => 1.0,
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
    /// Queued local tasks of lower priority that this one would run
    /// ahead of: each of them waits its whole run longer.
    pub overtakes: usize,
}

/// Split computing: the offload this decision weighs runs the model's head
/// at the edge first (in the local queue), then sends its features.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SplitInput {
    /// The split point (the shell's index among the task type's points).
    pub point: u8,
    /// The head's expected wait in the local queue (heads run ahead of
    /// the whole local runs of their priority, so it is at most
    /// `LocalStatus::queue_wait`)...
    pub wait: Duration,
    /// ...and its expected run time at the edge.
    pub head: Duration,
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
    /// Bytes the offload uploads: the payload, or a split's features.
    pub payload_bytes: usize,
    /// The offload is split: head at the edge, tail in the cloud (its
    /// server time is then the tail's).
    pub split: Option<SplitInput>,
    /// How long an upload sent now waits behind the edge's earlier
    /// uploads to the same endpoint (`UplinkQueue`).
    pub uplink_wait: Duration,
    /// How busy the edge's workers (`LoadMeter`) and the uplink to this
    /// endpoint (`UplinkQueue::load`) have been lately, each in 0..=1:
    /// what the work a path adds there is priced at.
    pub edge_load: f64,
    pub uplink_load: f64,
    pub response_bytes: usize,
    /// Time left until the deadline, if the task has one.
    pub time_left: Option<Duration>,
    pub net: &'a NetworkStatus,
    pub local: LocalStatus,
    pub cloud: CloudStatus,
    /// Recent local inference times of this task type (ms, sorted); empty:
    /// the point estimate in `local` alone.
    pub local_dist_ms: &'a [f64],
    /// Recent cloud server times of this task type (ms, sorted).
    pub cloud_dist_ms: &'a [f64],
    /// The path the policy chose for the previous task of this type.
    pub previous: Option<ExecPath>,
    /// Recent residuals (actual - predicted median, ms, sorted) of each path for
    /// this task type; empty: none yet. A path without residuals borrows
    /// the other path's: much of what the model misses (the edge's own CPU
    /// contention, the answer's way back) is common to both, and correcting
    /// one path alone would favour the other, unmeasured one.
    pub local_residual_ms: &'a [f64],
    pub cloud_residual_ms: &'a [f64],
}

impl DecisionInput<'_> {
    /// The residuals to apply, per path.
    fn residuals(&self) -> (&[f64], &[f64]) {
        match (self.local_residual_ms, self.cloud_residual_ms) {
            ([], []) => (&[], &[]),
            (l, []) => (l, l),
            ([], c) => (c, c),
            (l, c) => (l, c),
        }
    }
}

/// A path's predicted latency distribution, and the chance it meets the
/// task's deadline (`None` without a deadline).
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct Outlook {
    pub mean_ms: f64,
    pub p50_ms: f64,
    pub p95_ms: f64,
    pub p_meet: Option<f64>,
    /// What past residuals moved the median by (the model's own median
    /// is `p50_ms - correction_ms`).
    pub correction_ms: f64,
}

impl Outlook {
    /// From predicted latencies, sorted (at least one).
    fn of_sorted(values: &[f64], left_ms: Option<f64>) -> Option<Outlook> {
        // Sorted by `total_cmp`, a negative value or -NaN comes first and
        // an infinity or NaN last: the ends vouch for all of it.
        match (values.first(), values.last()) {
            (Some(first), Some(last)) if *first >= 0.0 && last.is_finite() => {}
            _ => return None,
        }
        let n = values.len() as f64;
        Some(Outlook {
            mean_ms: sum(values) / n,
            p50_ms: quantile(values, 0.5),
            p95_ms: quantile(values, 0.95),
            p_meet: left_ms.map(|l| values.partition_point(|v| *v <= l) as f64 / n),
            correction_ms: 0.0,
        })
    }

    /// The model's prediction (sorted) moved by the median past residual
    /// (a latency stays >= 0): the distribution of what will actually be
    /// seen. A shift, not the sum with every residual: each residual
    /// already carries the spread the model measures (the run times, the
    /// RTT samples), and adding them all counted it twice.
    fn corrected(values: &[f64], residuals: &[f64], left_ms: Option<f64>) -> Option<Outlook> {
        if residuals.is_empty() {
            return Outlook::of_sorted(values, left_ms);
        }
        let all = Shifted::new(values, quantile(residuals, 0.5))?;
        Some(Outlook::of_shifted(
            all,
            sum(values),
            quantile(values, 0.5),
            left_ms,
        ))
    }

    /// What has been seen of predictions like this one: the model's
    /// median plus each past residual (sorted; a latency stays >= 0).
    fn empirical(model_p50_ms: f64, residuals: &[f64], left_ms: Option<f64>) -> Option<Outlook> {
        let all = Shifted::new(residuals, model_p50_ms)?;
        Some(Outlook::of_shifted(
            all,
            sum(residuals),
            model_p50_ms,
            left_ms,
        ))
    }

    /// The outlook of `all`, whose unshifted values sum to `x_sum`, for a
    /// model whose own median is `model_p50_ms`.
    fn of_shifted(all: Shifted, x_sum: f64, model_p50_ms: f64, left_ms: Option<f64>) -> Outlook {
        let n = all.len() as f64;
        let p50_ms = all.quantile(0.5);
        Outlook {
            mean_ms: all.sum(x_sum) / n,
            p50_ms,
            p95_ms: all.quantile(0.95),
            p_meet: left_ms.map(|l| all.count_at_most(l) as f64 / n),
            // The shift where the clamp at 0 leaves the median alone.
            correction_ms: p50_ms - model_p50_ms,
        }
    }

    /// Mean and tail mixed by the task's priority.
    pub fn score(&self, priority: Priority) -> f64 {
        let w = tail_weight(priority);
        (1.0 - w) * self.mean_ms + w * self.p95_ms
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct LocalCost {
    pub queue_ms: f64,
    pub inference_ms: f64,
    pub total_ms: f64,
    /// The price of the inference's work on the edge, in ms of other
    /// tasks' waiting: the queued tasks it overtakes wait its run each,
    /// later ones the congestion price (weighed, not part of the predicted
    /// latency).
    pub congestion_ms: f64,
}

#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct OffloadCost {
    /// A split offload's head at the edge, with its queue wait (else 0).
    pub head_ms: f64,
    /// The payload's (or features') time on the uplink, with its wait
    /// behind the edge's earlier uploads.
    pub upload_ms: f64,
    pub rtt_ms: f64,
    /// The jitter the penalty was computed from (the window's standard deviation).
    pub jitter_ms: f64,
    pub jitter_penalty_ms: f64,
    pub cloud_inference_ms: f64,
    pub download_ms: f64,
    pub total_ms: f64,
    /// The link's packet loss rate the estimate reported, and what it
    /// makes of this exchange: the chance that a packet of the request or
    /// the answer is lost, and what a loss costs (the distribution-aware
    /// policies price it; see `loss_outlook`).
    pub loss_rate: f64,
    pub p_loss: f64,
    pub loss_delay_ms: f64,
    /// The congestion price of the head's work on the edge and of the
    /// upload on the uplink (weighed, not part of the predicted latency).
    pub congestion_ms: f64,
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
    LocalLikelierInTime,
    OffloadLikelierInTime,
    KeptPrevious,
    /// Queued locally, then decided again once the queue made it late.
    MovedFromLateQueue,
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
            Reason::LocalLikelierInTime => "local likelier to meet the deadline",
            Reason::OffloadLikelierInTime => "offload likelier to meet the deadline",
            Reason::KeptPrevious => "kept the previous path (difference within hysteresis)",
            Reason::MovedFromLateQueue => {
                "moved from the local queue (it would end past the deadline there)"
            }
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
    /// The predicted distributions (every policy gets them, for the record).
    pub local_outlook: Option<Outlook>,
    pub offload_outlook: Option<Outlook>,
    /// Run on both paths and take the first result: the deadline is at
    /// risk on either path alone and both together make it clearly more
    /// likely (the shell may refuse for its hedging budget).
    pub hedge: bool,
    /// The offload endpoint this decision was made for (its index in the
    /// shell's endpoint list; 0 with one endpoint).
    pub endpoint: usize,
    /// The offload is split at this point (the shell's index among the
    /// task type's split points): the head runs here first.
    pub split: Option<u8>,
}

/// Hedge when the chosen path meets the deadline with less than this
/// probability...
pub const HEDGE_BELOW_P: f64 = 0.95;
/// ...and running both paths raises the probability by at least this much.
pub const HEDGE_MIN_GAIN: f64 = 0.05;

impl Decision {
    /// Expected latency of the chosen path.
    pub fn expected_ms(&self) -> f64 {
        match self.path {
            ExecPath::Local => self.local.total_ms,
            ExecPath::Cloud => self.offload.map_or(f64::NAN, |o| o.total_ms),
        }
    }

    /// The predicted distribution of the chosen path.
    pub fn outlook(&self) -> Option<Outlook> {
        match self.path {
            ExecPath::Local => self.local_outlook,
            ExecPath::Cloud => self.offload_outlook,
        }
    }
}

impl fmt::Display for Decision {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} -> {} ({}) local={:.2}ms [queue {:.2} + infer {:.2}; price {:.2}]",
            self.policy,
            self.path.as_str(),
            self.reason,
            self.local.total_ms,
            self.local.queue_ms,
            self.local.inference_ms,
            self.local.congestion_ms
        )?;
        match self.offload {
            Some(o) => write!(
                f,
                " offload={:.2}ms [head {:.2} + up {:.2} + rtt {:.2} + jitter {:.2} + cloud {:.2} + down {:.2}; price {:.2}; P(loss) {:.2} at {:.1} % loss, +{:.1}ms]",
                o.total_ms,
                o.head_ms,
                o.upload_ms,
                o.rtt_ms,
                o.jitter_penalty_ms,
                o.cloud_inference_ms,
                o.download_ms,
                o.congestion_ms,
                o.p_loss,
                o.loss_rate * 100.0,
                o.loss_delay_ms
            ),
            None => write!(f, " offload=n/a"),
        }?;
        for (name, o) in [
            ("local", self.local_outlook),
            ("offload", self.offload_outlook),
        ] {
            if let Some(o) = o {
                write!(f, " {name}~[mean {:.2} p95 {:.2}", o.mean_ms, o.p95_ms)?;
                if let Some(p) = o.p_meet {
                    write!(f, " P(in time) {p:.2}")?;
                }
                write!(f, "]")?;
            }
        }
        Ok(())
    }
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

fn local_cost(input: &DecisionInput) -> LocalCost {
    let l = &input.local;
    let queue_ms = ms(l.queue_wait);
    let inference_ms = ms(l.inference);
    LocalCost {
        queue_ms,
        inference_ms,
        total_ms: queue_ms + inference_ms,
        congestion_ms: congestion_price_ms(inference_ms, input.edge_load)
            + inference_ms * l.overtakes as f64,
    }
}

/// The offload cost, or `None` when the estimate is missing or malformed.
fn offload_cost(input: &DecisionInput, jitter_k: f64) -> Option<OffloadCost> {
    let net = input.net;
    if net.rtt.samples == 0 || net.bandwidth_bps.is_nan() || net.bandwidth_bps <= 0.0 {
        return None;
    }
    let bits_ms = |bytes: usize| bytes as f64 * 8.0 / net.bandwidth_bps * 1e3;
    let on_wire_ms = bits_ms(input.payload_bytes);
    let upload_ms = ms(input.uplink_wait) + on_wire_ms;
    let download_ms = bits_ms(input.response_bytes);
    let rtt_ms = net.rtt.srtt_ms;
    let jitter_ms = net.rtt.stddev_ms;
    let jitter_penalty_ms = jitter_k * priority_weight(input.priority) * jitter_ms;
    let cloud_inference_ms = ms(input.cloud.inference);
    let head_work_ms = input.split.map_or(0.0, |s| ms(s.head));
    let head_ms = input.split.map_or(0.0, |s| ms(s.wait) + head_work_ms);
    let congestion_ms = congestion_price_ms(head_work_ms, input.edge_load)
        + congestion_price_ms(on_wire_ms, input.uplink_load);
    let total_ms =
        head_ms + upload_ms + rtt_ms + jitter_penalty_ms + cloud_inference_ms + download_ms;
    let all = [
        head_ms,
        upload_ms,
        rtt_ms,
        jitter_ms,
        jitter_penalty_ms,
        download_ms,
        total_ms,
        congestion_ms,
    ];
    if all.iter().any(|v| !v.is_finite() || *v < 0.0) {
        return None;
    }
    let (loss_rate, p_loss, loss_delay_ms) = loss_outlook(input);
    Some(OffloadCost {
        head_ms,
        upload_ms,
        rtt_ms,
        jitter_ms,
        jitter_penalty_ms,
        cloud_inference_ms,
        download_ms,
        total_ms,
        loss_rate,
        p_loss,
        loss_delay_ms,
        congestion_ms,
    })
}

/// How finely each distribution enters a path's outlook (evenly spaced
/// quantiles): the offload outlook holds RTT x cloud x residual points, so
/// these sizes set a decision's cost (16 x 4 x 4 = 256 values, of which
/// the 64 RTT x cloud sums are written out; 24 x 8 x 6 made it 1,152 and a
/// decision about 11 us on this machine).
const RTT_POINTS: usize = 16;
const CLOUD_POINTS: usize = 4;
const LOCAL_POINTS: usize = 16;

/// Whether a task is predicted to wait for a local worker: the shell
/// keeps the residuals of such runs apart from those that found a worker
/// idle, and their outlook is read from those residuals.
pub fn predicted_to_queue(queue_wait: Duration) -> bool {
    queue_wait >= QUEUED
}

const QUEUED: Duration = Duration::from_millis(1);

/// Own residuals a queued local run needs before its outlook is read from
/// them rather than from the model's run times.
const QUEUED_SPREAD_MIN: usize = 8;

/// Local latency: the queue wait plus each recent inference time. A run
/// predicted to queue takes its spread from its own residuals instead:
/// the wait is a point estimate, and what runs under a CPU quota after
/// other runs takes varies far more than the run times of the (mostly
/// idle-worker) runs the model holds; in the scenario benchmark such runs
/// were predicted 0.94-0.995 in time and met 0.72-0.89 with the model's
/// spread, and about as predicted with their residuals'.
fn local_outlook(input: &DecisionInput, left_ms: Option<f64>) -> Option<Outlook> {
    let queue = ms(input.local.queue_wait);
    let mut values = if input.local_dist_ms.is_empty() {
        Values::<LOCAL_POINTS>::one(ms(input.local.inference))
    } else {
        grid(input.local_dist_ms)
    };
    values.as_mut_slice().iter_mut().for_each(|v| *v += queue);
    let own = input.local_residual_ms;
    if predicted_to_queue(input.local.queue_wait) && own.len() >= QUEUED_SPREAD_MIN {
        return Outlook::empirical(quantile(values.as_slice(), 0.5), own, left_ms);
    }
    Outlook::corrected(values.as_slice(), input.residuals().0, left_ms)
}

/// Offload latency: transfer times plus every pair of an RTT sample and a
/// recent cloud server time (their sum's distribution, assuming them
/// independent).
fn offload_outlook(
    input: &DecisionInput,
    cost: &OffloadCost,
    left_ms: Option<f64>,
    horizon_ms: f64,
) -> Option<Outlook> {
    let net = input.net;
    let mut rtts = if net.rtt_sorted_ms.is_empty() {
        Values::<RTT_POINTS>::one(net.rtt.srtt_ms)
    } else {
        grid(&net.rtt_sorted_ms)
    };
    // The forecast moves the whole distribution; an RTT stays >= 0.
    let moved = net.rtt_trend_ms_per_s * horizon_ms / 1e3;
    if moved.is_finite() && moved != 0.0 {
        for r in rtts.as_mut_slice() {
            *r = (*r + moved).max(0.0);
        }
    }
    let cloud = if input.cloud_dist_ms.is_empty() {
        Values::<CLOUD_POINTS>::one(cost.cloud_inference_ms)
    } else {
        grid(input.cloud_dist_ms)
    };
    // A split's head is a point estimate: its spread is small next to the
    // network's, and one more factor would multiply the values.
    let transfer = cost.head_ms + cost.upload_ms + cost.download_ms;
    let mut bufs: Buffers<{ RTT_POINTS * CLOUD_POINTS }> = [[0.0; RTT_POINTS * CLOUD_POINTS]; 2];
    let values = sorted_sums(
        rtts.as_slice(),
        cloud.as_slice(),
        |v| transfer + v,
        &mut bufs,
    )?;
    let mut mixed = [0.0; RTT_POINTS * CLOUD_POINTS];
    let values = with_loss(values, cost.p_loss, cost.loss_delay_ms, &mut mixed);
    Outlook::corrected(values, input.residuals().1, left_ms)
}

/// Payload bytes per packet, for counting an exchange's packets.
const PACKET_BYTES: usize = 1200;

/// The link's loss rate (bounded), the chance that an offload's exchange
/// loses a packet, from that rate and the packets the request and the
/// answer take, and what a loss costs: one retransmission timeout (RTT + 4
/// x its deviation, as RFC 6298 and RFC 9002 arm it). The RTT samples
/// leave retransmitted packets out, so without this a lossy link looks as
/// fast as a clean one.
fn loss_outlook(input: &DecisionInput) -> (f64, f64, f64) {
    let net = input.net;
    let rate = if net.loss_rate.is_finite() {
        net.loss_rate.clamp(0.0, 0.5)
    } else {
        0.0
    };
    let packets = input.payload_bytes.div_ceil(PACKET_BYTES).max(1)
        + input.response_bytes.div_ceil(PACKET_BYTES).max(1);
    let p = 1.0 - (1.0 - rate).powi(packets.min(1 << 16) as i32);
    (rate, p, net.rtt.srtt_ms + 4.0 * net.rtt.stddev_ms)
}

/// The mixture of `values` (sorted, equally likely) without a loss and,
/// with probability `p`, delayed by `delay_ms`: as many equally likely
/// values, an evenly spread share of them delayed, sorted again.
fn with_loss<'a>(values: &'a [f64], p: f64, delay_ms: f64, out: &'a mut [f64]) -> &'a [f64] {
    let n = values.len().min(out.len());
    let k = (p * n as f64).round() as usize;
    if k == 0 || n == 0 || !delay_ms.is_finite() || delay_ms <= 0.0 {
        return values;
    }
    let k = k.min(n);
    // Value i is delayed when one of k evenly spaced marks, at
    // (j + 1/2) n / k, falls on it.
    let delayed = |i: usize| (2 * i * k + n) / (2 * n) != (2 * (i + 1) * k + n) / (2 * n);
    let (mut a, mut b, mut o) = (0, 0, 0);
    let next = |from: usize, want: bool| (from..n).find(|&i| delayed(i) == want);
    let (mut plain, mut late) = (next(0, false), next(0, true));
    while o < n {
        let take_plain = match (plain, late) {
            (Some(i), Some(j)) => values[i] <= values[j] + delay_ms,
            (Some(_), None) => true,
            (None, _) => false,
        };
        if take_plain {
            let i = plain.expect("a plain value");
            out[o] = values[i];
            a += 1;
            plain = next(i + 1, false);
        } else {
            let j = late.expect("a delayed value");
            out[o] = values[j] + delay_ms;
            b += 1;
            late = next(j + 1, true);
        }
        o += 1;
    }
    debug_assert_eq!((a, b), (n - k, k));
    &out[..n]
}

/// Decides where a task runs, or fails it early when no path can work.
pub fn decide(input: &DecisionInput, policy: &Policy) -> Result<Decision, TaskError> {
    let jitter_k = match policy {
        Policy::CostModel { jitter_k } => *jitter_k,
        _ => 1.0,
    };
    let left_ms = input.time_left.map(ms);
    let local_outlook = input
        .local
        .supported
        .then(|| local_outlook(input, left_ms))
        .flatten();
    let mut local = local_cost(input);
    let mut offload = offload_cost(input, jitter_k);
    let horizon_ms = policy.aware().map_or(0.0, |a| a.3);
    let offload_outlook = offload
        .as_ref()
        .and_then(|o| offload_outlook(input, o, left_ms, horizon_ms));
    if policy.aware().is_some() {
        // This policy's point prediction is its distribution's mean.
        if let Some(o) = local_outlook {
            local.total_ms = o.mean_ms;
        }
        if let (Some(c), Some(o)) = (offload.as_mut(), offload_outlook) {
            c.jitter_penalty_ms = 0.0;
            c.total_ms = o.mean_ms;
        }
    }
    let make = |path, reason| Decision {
        policy: policy.name(),
        path,
        reason,
        local,
        offload,
        network_source: input.net.source,
        local_outlook,
        offload_outlook,
        hedge: false,
        endpoint: 0,
        split: input.split.map(|s| s.point),
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
        Policy::AlwaysOffload | Policy::SplitAt { .. } => {
            Ok(make(ExecPath::Cloud, Reason::FixedByPolicy))
        }
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
        Policy::DeadlineAware { .. } | Policy::Predictive { .. } => {
            let (p_margin, min_p, hysteresis, _) = policy.aware().expect("an aware policy");
            let local_o = local_outlook.filter(|_| input.local.supported);
            let cloud_o = offload_outlook.filter(|_| cloud_usable);
            // Below `min_p` a path is hopeless; without a deadline every
            // path is in time.
            let hopeless = |o: &Outlook| o.p_meet.is_some_and(|p| p < min_p);
            match (local_o, cloud_o) {
                (None, None) => Err(TaskError::Unavailable(format!(
                    "no local model for {} and the cloud is unreachable or unmeasured",
                    input.task_type.as_str()
                ))),
                (Some(l), None) => {
                    if hopeless(&l) {
                        return Err(hopeless_error(input, Some(&l), None, min_p));
                    }
                    let reason = if offload.is_none() {
                        Reason::NoNetworkEstimate
                    } else {
                        Reason::CloudUnreachable
                    };
                    Ok(make(ExecPath::Local, reason))
                }
                (None, Some(c)) => {
                    if hopeless(&c) {
                        return Err(hopeless_error(input, None, Some(&c), min_p));
                    }
                    Ok(make(ExecPath::Cloud, Reason::NoLocalModel))
                }
                (Some(l), Some(c)) => {
                    if hopeless(&l) && hopeless(&c) {
                        return Err(hopeless_error(input, Some(&l), Some(&c), min_p));
                    }
                    let with_hedge = |mut d: Decision| {
                        d.hedge = should_hedge(&d, &l, &c);
                        Ok(d)
                    };
                    if let (Some(pl), Some(pc)) = (l.p_meet, c.p_meet) {
                        // The epsilon makes a margin of exactly `p_margin`
                        // count despite rounding (1.0 - 0.9 < 0.1).
                        let p_margin = p_margin - 1e-9;
                        if pl - pc >= p_margin {
                            return with_hedge(make(ExecPath::Local, Reason::LocalLikelierInTime));
                        }
                        if pc - pl >= p_margin {
                            return with_hedge(make(
                                ExecPath::Cloud,
                                Reason::OffloadLikelierInTime,
                            ));
                        }
                    }
                    // Each path's own latency, plus what its work costs the
                    // tasks behind it.
                    let (sl, sc) = (
                        l.score(input.priority) + local.congestion_ms,
                        c.score(input.priority) + offload.map_or(0.0, |o| o.congestion_ms),
                    );
                    let better = if sc < sl {
                        (ExecPath::Cloud, Reason::OffloadCheaper)
                    } else {
                        (ExecPath::Local, Reason::LocalCheaper)
                    };
                    // Stay on the previous path unless the other is clearly
                    // better: noise in the estimates must not flip choices.
                    match input.previous {
                        Some(prev) if prev != better.0 => {
                            let (kept, other) = match prev {
                                ExecPath::Local => (sl, sc),
                                ExecPath::Cloud => (sc, sl),
                            };
                            if other < kept * (1.0 - hysteresis) {
                                with_hedge(make(better.0, better.1))
                            } else {
                                with_hedge(make(prev, Reason::KeptPrevious))
                            }
                        }
                        _ => with_hedge(make(better.0, better.1)),
                    }
                }
            }
        }
    }
}

/// Whether running both paths is worth it: the chosen one is at risk and
/// the first of two independent tries is clearly likelier in time.
fn should_hedge(d: &Decision, local: &Outlook, cloud: &Outlook) -> bool {
    let (Some(pl), Some(pc)) = (local.p_meet, cloud.p_meet) else {
        return false;
    };
    let chosen = match d.path {
        ExecPath::Local => pl,
        ExecPath::Cloud => pc,
    };
    let either = 1.0 - (1.0 - pl) * (1.0 - pc);
    // The epsilon lets a gain of exactly the minimum count despite rounding.
    chosen < HEDGE_BELOW_P && either - chosen >= HEDGE_MIN_GAIN - 1e-9
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

/// A task refused by the aware policies: the paths' predicted
/// distributions and chances of meeting the deadline, which the refusal
/// weighed (a mean alone may sit under the time left while most of the
/// distribution does not).
fn hopeless_error(
    input: &DecisionInput,
    local: Option<&Outlook>,
    offload: Option<&Outlook>,
    min_p: f64,
) -> TaskError {
    let left = input.time_left.map_or(f64::INFINITY, ms);
    let path = |name: &str, o: Option<&Outlook>| match o {
        Some(o) => format!(
            "{name} p50 {:.2}ms, p95 {:.2}ms, chance in time {:.2}",
            o.p50_ms,
            o.p95_ms,
            o.p_meet.unwrap_or(1.0)
        ),
        None => format!("{name} n/a"),
    };
    TaskError::DeadlineExceeded(format!(
        "{left:.2}ms left; {}; {} (under {min_p:.2} on every path)",
        path("local", local),
        path("offload", offload)
    ))
}

#[cfg(test)]
mod tests;
