//! Estimators: pure folds of measurements into the figures the decision uses.

mod cpu;
mod exec_time;
mod link;
mod load;
mod residual;
mod rtt_window;
mod run_left;
mod shift;
mod silence;
mod trend;
mod uplink;

pub use cpu::CpuMeter;
pub use exec_time::ExecTimeModel;
pub use link::{LinkConfig, LinkEstimator, NetworkStatus};
pub use load::{congestion_price_ms, wait_behind_higher, LoadMeter, LOAD_CAP};
pub use residual::Residuals;
pub(crate) use rtt_window::floor_ceil;
pub use rtt_window::{quantile, RttWindow, WindowStats};
pub use run_left::RunShape;
pub use shift::{Shift, ShiftDetector};
pub use silence::Silence;
pub use uplink::{UplinkQueue, UploadId};
