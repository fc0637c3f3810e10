//! Estimators: pure folds of measurements into the figures the decision uses.

pub mod exec_time;
pub mod link;
pub mod window;

pub use exec_time::ExecTimeModel;
pub use link::{LinkConfig, LinkEstimator, NetworkStatus};
pub use window::{RttWindow, WindowStats};
