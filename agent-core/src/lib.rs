//! The agent's pure core: tasks and results, the cost model and policies,
//! the estimators, the local queue and the probe-event type. No I/O, no
//! clocks read (time is always a parameter), no async runtime, no wire
//! format: every shell (network, probe, agent) builds on these types.

mod balance;
mod decide;
mod estimate;
#[cfg(test)]
mod proptests;
mod queue;
mod result;
mod sample;
mod task;

pub use balance::{endpoint_candidates, pick_endpoint};
pub use decide::{
    decide, predicted_to_queue, priority_weight, tail_weight, CloudStatus, Decision, DecisionInput,
    LocalCost, LocalStatus, OffloadCost, Outlook, Policy, Reason, SplitInput, HEDGE_BELOW_P,
    HEDGE_MIN_GAIN,
};
pub use estimate::{
    congestion_price_ms, quantile, wait_behind_higher, CpuMeter, ExecTimeModel, LinkConfig,
    LinkEstimator, LoadMeter, NetworkStatus, Residuals, RttWindow, RunShape, Shift, ShiftDetector,
    Silence, UplinkQueue, UploadId, WindowStats, LOAD_CAP,
};
pub use queue::{QueueFull, QueueId, TaskQueue};
pub use result::{RunTiming, TaskResult};
pub use sample::{ProbeEvent, ProbeEventKind, SampleSource};
pub use task::{
    deadline_from_unix_nanos, deadline_to_unix_nanos, unix_nanos, Detection, ExecPath, Output,
    Priority, Task, TaskError, TaskType, Transport,
};
