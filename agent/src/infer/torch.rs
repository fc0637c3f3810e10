//! TorchScript inference through libtorch (`tch`), on CPU or CUDA: the
//! payload is decoded (`payload`), run through the model, and the output
//! read as the spec says (class scores or boxes).

use super::payload::{self, Prepared};
use super::spec::{InputSpec, OutputSpec, SplitSpec};
use super::tokenizer::Vocab;
use super::{
    answer, box_scale, input_signature, input_tensor, DataType, Engine, Inference, ModelSpec,
    RawInference, RawSignature, RawTensor, SharedExecTimes, SplitFeatures,
};
use agent_core::{Output, TaskError, TaskType};
use anyhow::{bail, Context};
use std::collections::HashMap;
use std::time::{Duration, Instant};
use tch::{CModule, Device, IValue, Kind, Tensor};

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

/// A raw tensor as a libtorch tensor (on the CPU; the bytes are copied).
fn to_torch(t: &RawTensor) -> Result<Tensor, TaskError> {
    t.check_size().map_err(TaskError::InvalidInput)?;
    let kind = match t.datatype {
        DataType::Uint8 => Kind::Uint8,
        DataType::Int64 => Kind::Int64,
        DataType::Fp32 => Kind::Float,
    };
    Tensor::f_from_data_size(&t.data, &t.shape, kind)
        .map_err(|e| TaskError::Internal(format!("building the input tensor: {e}")))
}

/// A model's output as `f32`s on the CPU, with its shape.
fn read_output(out: &Tensor, name: &str) -> Result<(Vec<i64>, Vec<f32>), TaskError> {
    let shape = out.size();
    let flat = out
        .to_device(Device::Cpu)
        .to_kind(Kind::Float)
        .contiguous()
        .view([-1]);
    let values = Vec::<f32>::try_from(&flat)
        .map_err(|e| TaskError::Internal(format!("{name}: unreadable output: {e}")))?;
    Ok((shape, values))
}

/// Checks an output's shape against the spec (`batch` samples): `[N, C]`
/// logits or `[N, K, 6]` boxes.
fn check_output(shape: &[i64], output: OutputSpec, batch: i64) -> Result<(), String> {
    match output {
        OutputSpec::Logits if shape.len() != 2 || shape[0] != batch || shape[1] < 1 => Err(
            format!("expected [{batch}, classes] scores, got shape {shape:?}"),
        ),
        OutputSpec::Boxes { .. } if shape.len() != 3 || shape[0] != batch || shape[2] != 6 => Err(
            format!("expected [{batch}, K, 6] boxes, got shape {shape:?}"),
        ),
        _ => Ok(()),
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
/// check that the output has the shape the spec says, and return it (the
/// batch size as `-1`) with the fastest run's time.
fn warm_up(
    module: &CModule,
    spec: &ModelSpec,
    device: Device,
) -> anyhow::Result<(Vec<i64>, Duration)> {
    let input_spec = spec.input();
    tch::no_grad(|| {
        let input =
            to_torch(&input_tensor(&zero_input(&input_spec), &input_spec))?.to_device(device);
        let mut dims = Vec::new();
        let mut fastest = Duration::MAX;
        for _ in 0..3 {
            let started = Instant::now();
            let out = module.forward_ts(&[&input])?;
            dims = out.size();
            fastest = fastest.min(started.elapsed());
            if let Err(e) = check_output(&dims, spec.output, 1) {
                bail!("{e}");
            }
        }
        dims[0] = -1;
        Ok((dims, fastest))
    })
}

/// Loads a split model and checks every point at warm-up: the head gives
/// the point's shape, and the tail of that gives the output the spec says.
/// Returns it with each head's time in the last warm-up round (here, under
/// this process's CPU limits: the seed of the head's estimate).
fn load_split(
    split: &SplitSpec,
    spec: &ModelSpec,
    device: Device,
) -> anyhow::Result<(CModule, Vec<Duration>)> {
    let mut module = CModule::load_on_device(&split.path, device)
        .with_context(|| format!("loading split model {}", split.path.display()))?;
    module.set_eval();
    let input_spec = spec.input();
    let times = tch::no_grad(|| {
        let input =
            to_torch(&input_tensor(&zero_input(&input_spec), &input_spec))?.to_device(device);
        let mut times = Vec::new();
        for p in &split.points {
            let mut took = Duration::ZERO;
            for _ in 0..3 {
                let started = Instant::now();
                let h = run_method(&module, "head", &input, p.index)?;
                took = started.elapsed();
                let want: Vec<i64> = std::iter::once(1).chain(p.shape.iter().copied()).collect();
                if h.size() != want {
                    bail!(
                        "split point {}: head gives {:?}, the manifest says {want:?}",
                        p.name,
                        h.size()
                    );
                }
                let out = run_method(&module, "tail", &h, p.index)?;
                if let Err(e) = check_output(&out.size(), spec.output, 1) {
                    bail!("split point {}: tail: {e}", p.name);
                }
            }
            times.push(took);
        }
        Ok(times)
    })?;
    Ok((module, times))
}

/// Calls a split model's `head` or `tail` on one tensor at a point.
fn run_method(module: &CModule, method: &str, x: &Tensor, point: i64) -> anyhow::Result<Tensor> {
    match module.method_is(
        method,
        &[IValue::Tensor(x.shallow_clone()), IValue::Int(point)],
    )? {
        IValue::Tensor(t) => Ok(t),
        other => bail!("{method} returned {other:?}, not a tensor"),
    }
}

struct Loaded {
    spec: ModelSpec,
    /// The split model, when the spec has one, and each head's time at
    /// warm-up.
    split: Option<(SplitSpec, CModule, Vec<Duration>)>,
    input: InputSpec,
    vocab: Option<Vocab>,
    module: CModule,
    /// The output's shape, batch size `-1`, read at warm-up.
    out_dims: Vec<i64>,
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
            let (out_dims, _) = warm_up(&module, spec, device)
                .with_context(|| format!("first inference with {}", spec.path.display()))?;
            let split = match &spec.split {
                Some(s) => {
                    let (module, times) = load_split(s, spec, device)?;
                    Some((s.clone(), module, times))
                }
                None => None,
            };
            times
                .lock()
                .expect("exec-time lock")
                .seed(task_type, Duration::from_secs_f64(spec.expected_ms / 1e3));
            models.insert(
                task_type,
                Loaded {
                    spec: spec.clone(),
                    split,
                    input,
                    vocab,
                    module,
                    out_dims,
                },
            );
        }
        Ok(Self {
            models,
            device,
            times,
        })
    }

    /// The task type's split model and the point named `point`.
    fn split(
        &self,
        task_type: TaskType,
        point: &str,
    ) -> Result<(&Loaded, &CModule, &super::SplitPoint), TaskError> {
        let m = self.model(task_type)?;
        let (spec, module, _) = m.split.as_ref().ok_or_else(|| {
            TaskError::UnsupportedTaskType(format!("no split model for {}", task_type.as_str()))
        })?;
        let p = spec.point(point).ok_or_else(|| {
            TaskError::InvalidInput(format!("{} has no split point {point:?}", spec.model))
        })?;
        Ok((m, module, p))
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
        let input = to_torch(&input_tensor(&prepared, &m.input))?.to_device(self.device);
        let out = tch::no_grad(|| m.module.forward_ts(&[input]))
            .map_err(|e| TaskError::Internal(format!("{} forward failed: {e}", m.spec.name)))?;
        let (shape, values) = read_output(&out, &m.spec.name)?;
        check_output(&shape, m.spec.output, 1)
            .map_err(|e| TaskError::Internal(format!("{}: {e}", m.spec.name)))?;
        let output = answer(&values, &m.spec, box_scale(&prepared));
        let elapsed = started.elapsed();
        self.times
            .lock()
            .expect("exec-time lock")
            .observe_at(task_type, elapsed, Instant::now());
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
        let inputs: Vec<(usize, RawTensor)> = prepared
            .iter()
            .enumerate()
            .filter_map(|(i, p)| p.as_ref().ok().map(|p| (i, input_tensor(p, &m.input))))
            .collect();
        // Inputs of different shapes (text of another length) cannot be
        // stacked: those run one by one.
        let same_shape = inputs.windows(2).all(|w| w[0].1.shape == w[1].1.shape);
        if !same_shape || inputs.len() < 2 {
            return payloads
                .iter()
                .map(|p| self.process(task_type, p))
                .collect();
        }
        let n = inputs.len();
        let mut shape = inputs[0].1.shape.clone();
        shape[0] = n as i64;
        let batch = RawTensor {
            datatype: inputs[0].1.datatype,
            shape,
            data: inputs
                .iter()
                .flat_map(|(_, t)| t.data.iter().copied())
                .collect(),
        };
        let out = to_torch(&batch)
            .and_then(|t| {
                let t = t.to_device(self.device);
                tch::no_grad(|| m.module.forward_ts(&[t])).map_err(|e| {
                    TaskError::Internal(format!("{} forward failed: {e}", m.spec.name))
                })
            })
            .and_then(|out| read_output(&out, &m.spec.name))
            .and_then(|(shape, values)| {
                check_output(&shape, m.spec.output, n as i64)
                    .map_err(|e| TaskError::Internal(format!("{}: {e}", m.spec.name)))?;
                Ok(values)
            });
        let mut answers: Vec<Option<Result<Output, TaskError>>> = vec![None; payloads.len()];
        for (row, (i, _)) in inputs.iter().enumerate() {
            let answer = match &out {
                Err(e) => Err(e.clone()),
                Ok(values) => {
                    let per = values.len() / n;
                    let one = &values[row * per..(row + 1) * per];
                    let p = prepared[*i].as_ref().expect("valid input");
                    Ok(answer(one, &m.spec, box_scale(p)))
                }
            };
            answers[*i] = Some(answer);
        }
        let elapsed = started.elapsed();
        self.times.lock().expect("exec-time lock").observe_batch_at(
            task_type,
            n,
            elapsed,
            Instant::now(),
        );
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

    fn forward_raw(
        &mut self,
        task_type: TaskType,
        input: RawTensor,
    ) -> Result<RawInference, TaskError> {
        let m = self.model(task_type)?;
        let name = &m.spec.name;
        let (datatype, dims) = input_signature(&m.input);
        let bad = |e: String| TaskError::InvalidInput(format!("{name}: {e}"));
        if input.datatype != datatype {
            return Err(bad(format!(
                "input is {}, the model takes {}",
                input.datatype.as_str(),
                datatype.as_str()
            )));
        }
        let fits = input.shape.len() == dims.len()
            && input.shape[0] >= 1
            && input.shape.iter().zip(&dims).skip(1).all(|(a, b)| a == b);
        if !fits {
            return Err(bad(format!(
                "input shape {:?} does not fit {dims:?}",
                input.shape
            )));
        }
        input.check_size().map_err(bad)?;
        if let Some(vocab) = &m.vocab {
            // Ids past the vocabulary would index past the embedding.
            let top = vocab.len() as i64 + 2;
            if let Some(id) = input.i64s().into_iter().find(|&id| !(0..top).contains(&id)) {
                return Err(bad(format!("token id {id} outside 0..{top}")));
            }
        }
        let batch = input.shape[0];
        let started = Instant::now();
        let t = to_torch(&input)?.to_device(self.device);
        let out = tch::no_grad(|| m.module.forward_ts(&[t]))
            .map_err(|e| TaskError::Internal(format!("{name} forward failed: {e}")))?;
        let (shape, values) = read_output(&out, name)?;
        check_output(&shape, m.spec.output, batch)
            .map_err(|e| TaskError::Internal(format!("{name}: {e}")))?;
        let elapsed = started.elapsed();
        let (model, model_version) = (m.spec.name.clone(), m.spec.version.clone());
        self.times.lock().expect("exec-time lock").observe_batch_at(
            task_type,
            batch as usize,
            elapsed,
            Instant::now(),
        );
        Ok(RawInference {
            output: RawTensor::from_f32(shape, &values),
            model,
            model_version,
            elapsed,
        })
    }

    fn split_head(
        &mut self,
        task_type: TaskType,
        point: &str,
        payload: &[u8],
    ) -> Result<SplitFeatures, TaskError> {
        let (m, module, p) = self.split(task_type, point)?;
        let started = Instant::now();
        let prepared = payload::prepare(&m.input, payload, m.vocab.as_ref())
            .map_err(|e| TaskError::InvalidInput(format!("{}: {e}", m.spec.name)))?;
        let input = to_torch(&input_tensor(&prepared, &m.input))?.to_device(self.device);
        let h = tch::no_grad(|| run_method(module, "head", &input, p.index))
            .map_err(|e| TaskError::Internal(format!("split head {point}: {e}")))?;
        let (shape, values) = read_output(&h, point)?;
        let source = match &prepared {
            Prepared::Rgb { source, .. } => Some(*source),
            _ => None,
        };
        Ok(SplitFeatures {
            shape,
            values,
            source,
            elapsed: started.elapsed(),
        })
    }

    fn split_tail(
        &mut self,
        task_type: TaskType,
        point: &str,
        features: &[f32],
        source: Option<(u32, u32)>,
    ) -> Result<Inference, TaskError> {
        let (m, module, p) = self.split(task_type, point)?;
        let per: i64 = p.shape.iter().product();
        let n = features.len() as i64 / per.max(1);
        if n < 1 || n * per != features.len() as i64 {
            return Err(TaskError::InvalidInput(format!(
                "{} values are not samples of {:?}",
                features.len(),
                p.shape
            )));
        }
        let started = Instant::now();
        let mut shape = vec![n];
        shape.extend(&p.shape);
        let h = Tensor::from_slice(features)
            .view(shape.as_slice())
            .to_device(self.device);
        let out = tch::no_grad(|| run_method(module, "tail", &h, p.index))
            .map_err(|e| TaskError::Internal(format!("split tail {point}: {e}")))?;
        let (shape, values) = read_output(&out, point)?;
        check_output(&shape, m.spec.output, n)
            .map_err(|e| TaskError::Internal(format!("split tail {point}: {e}")))?;
        // The first sample answers (the wire carries one task's features).
        let per_out = values.len() / n as usize;
        let scale = match (source, &m.input) {
            (Some((w, h)), InputSpec::Image { height, width, .. }) if w > 0 && h > 0 => {
                (w as f32 / *width as f32, h as f32 / *height as f32)
            }
            _ => (1.0, 1.0),
        };
        let output = answer(&values[..per_out], &m.spec, scale);
        Ok(Inference {
            output,
            elapsed: started.elapsed(),
        })
    }

    fn split_head_times(&self, task_type: TaskType) -> Vec<(String, Duration)> {
        self.models
            .get(&task_type)
            .and_then(|m| m.split.as_ref())
            .map(|(spec, _, times)| {
                spec.points
                    .iter()
                    .map(|p| p.name.clone())
                    .zip(times.iter().copied())
                    .collect()
            })
            .unwrap_or_default()
    }

    fn raw_signature(&self, task_type: TaskType) -> Option<RawSignature> {
        let m = self.models.get(&task_type)?;
        Some(RawSignature {
            name: m.spec.name.clone(),
            version: m.spec.version.clone(),
            input: input_signature(&m.input),
            output: (DataType::Fp32, m.out_dims.clone()),
        })
    }

    /// Also seeds each model's execution-time estimate with its fastest
    /// warm-up run here: a measure of this device under this process's
    /// limits, where the spec's `expected_ms` is a guess.
    fn warm_up(&mut self) -> anyhow::Result<()> {
        for (&task_type, m) in &self.models {
            let (_, fastest) = warm_up(&m.module, &m.spec, self.device)
                .with_context(|| format!("warming up {}", m.spec.name))?;
            self.times
                .lock()
                .expect("exec-time lock")
                .seed(task_type, fastest);
        }
        Ok(())
    }

    fn estimate(&self, task_type: TaskType) -> Duration {
        self.times
            .lock()
            .expect("exec-time lock")
            .estimate_at(task_type, Instant::now())
    }
}
