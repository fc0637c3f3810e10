//! TorchScript inference through libtorch (`tch`), on CPU or CUDA.

use super::{Engine, Inference, ModelSpec, SharedExecTimes};
use agent_core::{Output, TaskError, TaskType};
use anyhow::{bail, Context};
use std::collections::HashMap;
use std::time::{Duration, Instant};
use tch::{CModule, Device, Kind, Tensor};

/// `auto` picks CUDA when libtorch sees a GPU.
pub fn parse_device(name: &str) -> anyhow::Result<Device> {
    Ok(match name {
        "auto" => Device::cuda_if_available(),
        "cpu" => Device::Cpu,
        "cuda" => {
            if !tch::Cuda::is_available() {
                bail!("device cuda requested but libtorch sees no CUDA device");
            }
            Device::Cuda(0)
        }
        other => bail!("unknown device {other:?} (auto, cpu, cuda)"),
    })
}

/// TorchScript's first forward passes profile and optimise the graph and
/// take tens of milliseconds; run them at load time so the first real task
/// (and the execution-time estimate) does not pay for them.
fn warm_up(module: &CModule, spec: &ModelSpec, device: Device) -> anyhow::Result<()> {
    tch::no_grad(|| {
        let input = Tensor::zeros(
            [1, 1, spec.height as i64, spec.width as i64],
            (Kind::Float, device),
        );
        for _ in 0..3 {
            let out = module.forward_ts(&[&input])?;
            // A classifier answers one row of class scores per image.
            if out.dim() != 2 || out.size()[0] != 1 {
                bail!("expected [1, classes] scores, got shape {:?}", out.size());
            }
        }
        Ok(())
    })
}

struct Loaded {
    spec: ModelSpec,
    module: CModule,
}

pub struct TorchEngine {
    models: HashMap<TaskType, Loaded>,
    device: Device,
    times: SharedExecTimes,
}

impl TorchEngine {
    pub fn load(
        specs: &HashMap<TaskType, ModelSpec>,
        device: Device,
        times: SharedExecTimes,
    ) -> anyhow::Result<Self> {
        let mut models = HashMap::new();
        for (&task_type, spec) in specs {
            let mut module = CModule::load_on_device(&spec.path, device)
                .with_context(|| format!("loading TorchScript model {}", spec.path.display()))?;
            module.set_eval();
            warm_up(&module, spec, device)
                .with_context(|| format!("first inference with {}", spec.path.display()))?;
            times
                .lock()
                .expect("exec-time lock")
                .seed(task_type, Duration::from_secs_f64(spec.expected_ms / 1e3));
            models.insert(
                task_type,
                Loaded {
                    spec: spec.clone(),
                    module,
                },
            );
        }
        Ok(Self {
            models,
            device,
            times,
        })
    }

    fn model(&self, task_type: TaskType) -> Result<&Loaded, TaskError> {
        self.models.get(&task_type).ok_or_else(|| {
            TaskError::UnsupportedTaskType(format!("no model loaded for {}", task_type.as_str()))
        })
    }
}

impl Engine for TorchEngine {
    fn supports(&self, task_type: TaskType) -> bool {
        self.models.contains_key(&task_type)
    }

    fn validate(&self, task_type: TaskType, payload: &[u8]) -> Result<(), TaskError> {
        self.model(task_type)?.spec.validate_payload(payload)
    }

    fn process(&mut self, task_type: TaskType, payload: &[u8]) -> Result<Inference, TaskError> {
        self.validate(task_type, payload)?;
        let m = self.model(task_type)?;
        let started = Instant::now();
        let (class, confidence) = tch::no_grad(|| -> Result<(i64, f32), TaskError> {
            let input = Tensor::from_slice(payload)
                .to_kind(Kind::Float)
                .divide_scalar(255.0)
                .view([1, 1, m.spec.height as i64, m.spec.width as i64])
                .to_device(self.device);
            let logits = m
                .module
                .forward_ts(&[input])
                .map_err(|e| TaskError::Internal(format!("{} forward failed: {e}", m.spec.name)))?;
            let probs = logits.softmax(-1, Kind::Float).to_device(Device::Cpu);
            let (p, idx) = probs.max_dim(-1, false);
            let class = idx.int64_value(&[0]);
            let confidence = p.double_value(&[0]) as f32;
            Ok((class, confidence))
        })?;
        let elapsed = started.elapsed();
        self.times
            .lock()
            .expect("exec-time lock")
            .observe(task_type, elapsed);
        Ok(Inference {
            output: Output {
                class,
                confidence,
                model: m.spec.name.clone(),
            },
            model_version: m.spec.version.clone(),
            elapsed,
        })
    }

    fn estimate(&self, task_type: TaskType) -> Duration {
        self.times
            .lock()
            .expect("exec-time lock")
            .estimate(task_type)
    }
}
