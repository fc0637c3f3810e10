//! TorchScript inference through libtorch (`tch`), on CPU or CUDA: the
//! payload is decoded (`payload`), run through the model, and the output
//! read as the spec says (class scores or boxes).

use super::payload::{self, Prepared};
use super::spec::{InputSpec, OutputSpec};
use super::tokenizer::Vocab;
use super::{Engine, Inference, ModelSpec, SharedExecTimes};
use agent_core::{Detection, Output, TaskError, TaskType};
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

/// The model input for a prepared payload.
fn input_tensor(p: &Prepared, spec: &InputSpec) -> Tensor {
    match (p, spec) {
        (Prepared::Gray8(px), InputSpec::Gray8 { height, width }) => Tensor::from_slice(px)
            .to_kind(Kind::Float)
            .divide_scalar(255.0)
            .view([1, 1, *height as i64, *width as i64]),
        (
            Prepared::Rgb {
                data,
                height,
                width,
                ..
            },
            _,
        ) => Tensor::from_slice(data).view([1, i64::from(*height), i64::from(*width), 3]),
        (Prepared::Tokens(ids), _) => Tensor::from_slice(ids).view([1, ids.len() as i64]),
        (Prepared::Gray8(px), _) => Tensor::from_slice(px),
    }
}

/// An all-zero input of the spec's shape.
fn zero_input(spec: &InputSpec) -> Prepared {
    match spec {
        InputSpec::Gray8 { height, width } => Prepared::Gray8(vec![0; height * width]),
        InputSpec::Image { height, width, .. } => Prepared::Rgb {
            data: vec![0; height * width * 3],
            height: *height as u32,
            width: *width as u32,
            source: (*width as u32, *height as u32),
        },
        InputSpec::Text { max_tokens, .. } => Prepared::Tokens(vec![0; *max_tokens]),
    }
}

/// TorchScript's first forward passes profile and optimise the graph and
/// take tens of milliseconds; run them at load time so the first real task
/// (and the execution-time estimate) does not pay for them. They also
/// check that the output has the shape the spec says.
fn warm_up(module: &CModule, spec: &ModelSpec, device: Device) -> anyhow::Result<()> {
    let input_spec = spec.input();
    tch::no_grad(|| {
        let input = input_tensor(&zero_input(&input_spec), &input_spec).to_device(device);
        for _ in 0..3 {
            let out = module.forward_ts(&[&input])?;
            match spec.output {
                OutputSpec::Logits if out.dim() != 2 || out.size()[0] != 1 => {
                    bail!("expected [1, classes] scores, got shape {:?}", out.size())
                }
                OutputSpec::Boxes { .. }
                    if out.dim() != 3 || out.size()[0] != 1 || out.size()[2] != 6 =>
                {
                    bail!("expected [1, K, 6] boxes, got shape {:?}", out.size())
                }
                _ => {}
            }
        }
        Ok(())
    })
}

/// The answer of a classifier: the most likely class and its probability.
fn classify(logits: &Tensor, spec: &ModelSpec) -> Output {
    let probs = logits.softmax(-1, Kind::Float).to_device(Device::Cpu);
    let (p, idx) = probs.max_dim(-1, false);
    let class = idx.int64_value(&[0]);
    Output {
        class,
        confidence: p.double_value(&[0]) as f32,
        label: spec.label(class),
        boxes: Vec::new(),
        model: spec.name.clone(),
        model_version: spec.version.clone(),
    }
}

/// The answer of a detector: every box scoring at least `min_score`,
/// scaled from the model's input size to the image as it was sent.
fn detect(
    out: &Tensor,
    spec: &ModelSpec,
    min_score: f32,
    prepared: &Prepared,
) -> Result<Output, TaskError> {
    let rows = out
        .to_device(Device::Cpu)
        .to_kind(Kind::Float)
        .view([-1, 6]);
    let rows: Vec<Vec<f32>> = Vec::<Vec<f32>>::try_from(&rows)
        .map_err(|e| TaskError::Internal(format!("{}: unreadable output: {e}", spec.name)))?;
    let (sx, sy) = match prepared {
        Prepared::Rgb {
            height,
            width,
            source,
            ..
        } => (
            source.0 as f32 / *width as f32,
            source.1 as f32 / *height as f32,
        ),
        _ => (1.0, 1.0),
    };
    let mut boxes: Vec<Detection> = rows
        .iter()
        .filter(|r| r[4] >= min_score && r.iter().all(|v| v.is_finite()))
        .map(|r| {
            let class = r[5] as i64;
            Detection {
                class,
                label: spec.label(class),
                score: r[4],
                x1: r[0] * sx,
                y1: r[1] * sy,
                x2: r[2] * sx,
                y2: r[3] * sy,
            }
        })
        .collect();
    boxes.sort_by(|a, b| b.score.total_cmp(&a.score));
    let (class, confidence) = boxes.first().map_or((-1, 0.0), |b| (b.class, b.score));
    Ok(Output {
        class,
        confidence,
        label: if class >= 0 {
            spec.label(class)
        } else {
            String::new()
        },
        boxes,
        model: spec.name.clone(),
        model_version: spec.version.clone(),
    })
}

struct Loaded {
    spec: ModelSpec,
    input: InputSpec,
    vocab: Option<Vocab>,
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
            let input = spec.input();
            let vocab = match &input {
                InputSpec::Text { vocab, .. } => Some(Vocab::load(vocab)?),
                _ => None,
            };
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
                    input,
                    vocab,
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
        let m = self.model(task_type)?;
        // Decoding is part of the work a task costs here.
        let started = Instant::now();
        let prepared = payload::prepare(&m.input, payload, m.vocab.as_ref())
            .map_err(|e| TaskError::InvalidInput(format!("{}: {e}", m.spec.name)))?;
        let output = tch::no_grad(|| -> Result<Output, TaskError> {
            let input = input_tensor(&prepared, &m.input).to_device(self.device);
            let out = m
                .module
                .forward_ts(&[input])
                .map_err(|e| TaskError::Internal(format!("{} forward failed: {e}", m.spec.name)))?;
            match m.spec.output {
                OutputSpec::Logits => Ok(classify(&out, &m.spec)),
                OutputSpec::Boxes { min_score } => detect(&out, &m.spec, min_score, &prepared),
            }
        })?;
        let elapsed = started.elapsed();
        self.times
            .lock()
            .expect("exec-time lock")
            .observe(task_type, elapsed);
        Ok(Inference { output, elapsed })
    }

    fn process_batch(
        &mut self,
        task_type: TaskType,
        payloads: &[&[u8]],
    ) -> Vec<Result<Inference, TaskError>> {
        if payloads.len() <= 1 {
            return payloads
                .iter()
                .map(|p| self.process(task_type, p))
                .collect();
        }
        let m = match self.model(task_type) {
            Ok(m) => m,
            Err(e) => return payloads.iter().map(|_| Err(e.clone())).collect(),
        };
        let started = Instant::now();
        let prepared: Vec<Result<Prepared, TaskError>> = payloads
            .iter()
            .map(|p| {
                payload::prepare(&m.input, p, m.vocab.as_ref())
                    .map_err(|e| TaskError::InvalidInput(format!("{}: {e}", m.spec.name)))
            })
            .collect();
        let inputs: Vec<(usize, Tensor)> = prepared
            .iter()
            .enumerate()
            .filter_map(|(i, p)| p.as_ref().ok().map(|p| (i, input_tensor(p, &m.input))))
            .collect();
        // Inputs of different shapes (text of another length) cannot be
        // stacked: those run one by one.
        let same_shape = inputs.windows(2).all(|w| w[0].1.size() == w[1].1.size());
        if !same_shape || inputs.len() < 2 {
            return payloads
                .iter()
                .map(|p| self.process(task_type, p))
                .collect();
        }
        let batch = Tensor::cat(&inputs.iter().map(|(_, t)| t).collect::<Vec<_>>(), 0)
            .to_device(self.device);
        let out = tch::no_grad(|| m.module.forward_ts(&[batch]))
            .map_err(|e| TaskError::Internal(format!("{} forward failed: {e}", m.spec.name)));
        let mut answers: Vec<Option<Result<Output, TaskError>>> = vec![None; payloads.len()];
        for (row, (i, _)) in inputs.iter().enumerate() {
            let answer = match &out {
                Err(e) => Err(e.clone()),
                Ok(out) => {
                    let one = out.narrow(0, row as i64, 1);
                    let p = prepared[*i].as_ref().expect("valid input");
                    match m.spec.output {
                        OutputSpec::Logits => Ok(classify(&one, &m.spec)),
                        OutputSpec::Boxes { min_score } => detect(&one, &m.spec, min_score, p),
                    }
                }
            };
            answers[*i] = Some(answer);
        }
        let elapsed = started.elapsed();
        let n = inputs.len();
        self.times
            .lock()
            .expect("exec-time lock")
            .observe_batch(task_type, n, elapsed);
        prepared
            .into_iter()
            .zip(answers)
            .map(|(p, a)| {
                let output = match (p, a) {
                    (Err(e), _) => Err(e),
                    (Ok(_), Some(a)) => a,
                    (Ok(_), None) => Err(TaskError::Internal("batch lost an answer".into())),
                };
                output.map(|output| Inference { output, elapsed })
            })
            .collect()
    }

    fn estimate(&self, task_type: TaskType) -> Duration {
        self.times
            .lock()
            .expect("exec-time lock")
            .estimate(task_type)
    }
}
