//! Inference engines. The manager and the cloud service see only [`Engine`];
//! [`torch::TorchEngine`] runs TorchScript models through libtorch.

mod payload;
mod pool;
mod spec;
mod tokenizer;
mod torch;

use agent_core::{ExecTimeModel, Output, TaskError, TaskType};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

pub use payload::{prepare, Prepared};
pub use pool::{EnginePool, PooledEngine};
pub use spec::{InputSpec, ModelSpec, OutputSpec};
pub use tokenizer::Vocab;
pub use torch::{parse_device, TorchEngine};

/// Execution-time estimates shared by all engines of one process.
pub type SharedExecTimes = Arc<Mutex<ExecTimeModel<TaskType>>>;

pub fn shared_exec_times(alpha: f64, fallback: Duration) -> SharedExecTimes {
    Arc::new(Mutex::new(ExecTimeModel::new(alpha, fallback)))
}

/// A loaded set of models, one per supported task type. Not `Sync`: each
/// worker owns its own engine.
pub trait Engine: Send {
    fn supports(&self, task_type: TaskType) -> bool;
    /// Checks a payload without running the model.
    fn validate(&self, task_type: TaskType, payload: &[u8]) -> Result<(), TaskError>;
    /// Runs the model; the measured latency feeds the execution-time estimate.
    fn process(&mut self, task_type: TaskType, payload: &[u8]) -> Result<Inference, TaskError>;
    /// Runs the model once over several payloads of one task type (a
    /// dynamic batch); one result per payload, in order. A payload that is
    /// not valid fails alone. Engines without batching run them one by one.
    fn process_batch(
        &mut self,
        task_type: TaskType,
        payloads: &[&[u8]],
    ) -> Vec<Result<Inference, TaskError>> {
        payloads
            .iter()
            .map(|p| self.process(task_type, p))
            .collect()
    }
    /// Expected execution time for the task type (self-calibrating).
    fn estimate(&self, task_type: TaskType) -> Duration;
}

/// A model's answer and how long the model itself took.
#[derive(Debug, Clone)]
pub struct Inference {
    pub output: Output,
    pub elapsed: Duration,
}

/// Builds one engine per worker.
pub type EngineFactory = Arc<dyn Fn() -> anyhow::Result<Box<dyn Engine>> + Send + Sync>;

/// Engines running `specs` with libtorch on `device` ("auto", "cpu", "cuda").
pub fn torch_engines(
    specs: HashMap<TaskType, ModelSpec>,
    device: &str,
    times: SharedExecTimes,
) -> anyhow::Result<EngineFactory> {
    let device = parse_device(device)?;
    Ok(Arc::new(move || {
        Ok(Box::new(TorchEngine::load(&specs, device, times.clone())?) as Box<dyn Engine>)
    }))
}
