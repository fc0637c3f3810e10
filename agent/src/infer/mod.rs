//! Inference engines. The manager and the cloud service see only [`Engine`];
//! [`torch::TorchEngine`] runs TorchScript models through libtorch.

mod payload;
mod pool;
mod spec;
mod tokenizer;
mod torch;

use agent_core::{Detection, ExecTimeModel, Output, TaskError, TaskType};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

pub use payload::{prepare, Prepared};
pub use pool::{EnginePool, PooledEngine};
pub use spec::{InputSpec, ModelSpec, OutputSpec, SplitPoint, SplitSpec};
pub use tokenizer::Vocab;
pub use torch::{parse_device, TorchEngine};

/// Execution-time estimates shared by all engines of one process.
pub type SharedExecTimes = Arc<Mutex<ExecTimeModel<TaskType>>>;

pub fn shared_exec_times(alpha: f64, fallback: Duration) -> SharedExecTimes {
    Arc::new(Mutex::new(ExecTimeModel::new(alpha, fallback)))
}

/// Runs a batch on `engine`; a panic in the model becomes an error for
/// every task of the batch, and the thread that ran it lives on.
pub fn process_batch_guarded(
    engine: &mut dyn Engine,
    task_type: TaskType,
    payloads: &[&[u8]],
) -> Vec<Result<Inference, TaskError>> {
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        engine.process_batch(task_type, payloads)
    }))
    .unwrap_or_else(|_| {
        payloads
            .iter()
            .map(|_| Err(TaskError::Internal("inference panicked".into())))
            .collect()
    })
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
    /// Runs every model a few times on the calling thread. A thread's first
    /// runs pay for its allocator arena, its page faults and libtorch's
    /// per-thread state (two to five times a warm run's time); a worker
    /// calls this before it takes tasks so that no task pays for them. The
    /// runs may seed the execution-time estimates.
    fn warm_up(&mut self) -> anyhow::Result<()> {
        Ok(())
    }
    /// Runs the model's forward pass on a raw input tensor (a batch), with
    /// no pre- or post-processing: the KServe V2 entry point. The input must
    /// match [`Engine::raw_signature`]. Engines without one refuse.
    fn forward_raw(
        &mut self,
        task_type: TaskType,
        input: RawTensor,
    ) -> Result<RawInference, TaskError> {
        let _ = input;
        Err(TaskError::UnsupportedTaskType(format!(
            "unsupported: this engine has no raw-tensor entry point ({})",
            task_type.as_str()
        )))
    }
    /// Split computing, at the edge: decodes the payload and runs the
    /// split model's head up to `point`. Engines without one refuse.
    fn split_head(
        &mut self,
        task_type: TaskType,
        point: &str,
        payload: &[u8],
    ) -> Result<SplitFeatures, TaskError> {
        let _ = (point, payload);
        Err(TaskError::UnsupportedTaskType(format!(
            "no split model for {}",
            task_type.as_str()
        )))
    }
    /// Split computing, in the cloud: runs the split model's tail from
    /// `point` on features (row-major samples of the point's shape); the
    /// answer, the first sample's, is the whole model's. `source` is the
    /// submitted image's size (width, height), for a detector's boxes.
    fn split_tail(
        &mut self,
        task_type: TaskType,
        point: &str,
        features: &[f32],
        source: Option<(u32, u32)>,
    ) -> Result<Inference, TaskError> {
        let _ = (point, features, source);
        Err(TaskError::UnsupportedTaskType(format!(
            "no split model for {}",
            task_type.as_str()
        )))
    }
    /// Each split point's head time as measured when the engine loaded
    /// (the first estimate of a head's time here); empty without a split
    /// model.
    fn split_head_times(&self, task_type: TaskType) -> Vec<(String, Duration)> {
        let _ = task_type;
        Vec::new()
    }
    /// The raw input and output tensors of the model for `task_type`, as
    /// loaded (the output's sizes were read from the model at warm-up).
    fn raw_signature(&self, task_type: TaskType) -> Option<RawSignature> {
        let _ = task_type;
        None
    }
}

/// Element types of raw tensors, named as the KServe V2 protocol names them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DataType {
    Uint8,
    Int64,
    Fp32,
}

impl DataType {
    /// The V2 protocol's name (`UINT8`, `INT64`, `FP32`).
    pub fn as_str(self) -> &'static str {
        match self {
            DataType::Uint8 => "UINT8",
            DataType::Int64 => "INT64",
            DataType::Fp32 => "FP32",
        }
    }

    pub fn parse(name: &str) -> Option<DataType> {
        [DataType::Uint8, DataType::Int64, DataType::Fp32]
            .into_iter()
            .find(|d| d.as_str() == name)
    }

    /// Bytes per element.
    pub fn size(self) -> usize {
        match self {
            DataType::Uint8 => 1,
            DataType::Fp32 => 4,
            DataType::Int64 => 8,
        }
    }
}

/// A tensor as bytes: `data` holds the elements row-major, little-endian,
/// as the V2 protocol's raw contents carry them.
#[derive(Debug, Clone, PartialEq)]
pub struct RawTensor {
    pub datatype: DataType,
    pub shape: Vec<i64>,
    pub data: Vec<u8>,
}

impl RawTensor {
    /// Elements the shape holds (`None` for a negative size or overflow).
    pub fn elements(shape: &[i64]) -> Option<usize> {
        shape.iter().try_fold(1usize, |n, &d| {
            usize::try_from(d).ok().and_then(|d| n.checked_mul(d))
        })
    }

    /// Checks that `data` holds exactly the elements of `shape`.
    pub fn check_size(&self) -> Result<(), String> {
        let n = RawTensor::elements(&self.shape)
            .ok_or_else(|| format!("invalid shape {:?}", self.shape))?;
        let want = n.checked_mul(self.datatype.size());
        if want != Some(self.data.len()) {
            return Err(format!(
                "shape {:?} of {} needs {} bytes, got {}",
                self.shape,
                self.datatype.as_str(),
                want.map_or_else(|| "too many".to_string(), |w| w.to_string()),
                self.data.len()
            ));
        }
        Ok(())
    }

    pub fn from_f32(shape: Vec<i64>, values: &[f32]) -> RawTensor {
        RawTensor {
            datatype: DataType::Fp32,
            shape,
            data: values.iter().flat_map(|v| v.to_le_bytes()).collect(),
        }
    }

    pub fn from_i64(shape: Vec<i64>, values: &[i64]) -> RawTensor {
        RawTensor {
            datatype: DataType::Int64,
            shape,
            data: values.iter().flat_map(|v| v.to_le_bytes()).collect(),
        }
    }

    /// The elements as `f32` (an `FP32` tensor; trailing bytes ignored).
    pub fn f32s(&self) -> Vec<f32> {
        self.data
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            .collect()
    }

    /// The elements as `i64` (an `INT64` tensor; trailing bytes ignored).
    pub fn i64s(&self) -> Vec<i64> {
        self.data
            .chunks_exact(8)
            .map(|b| i64::from_le_bytes(b.try_into().expect("8 bytes")))
            .collect()
    }
}

/// What a model takes and gives as raw tensors; `-1` is a free size (the
/// batch).
#[derive(Debug, Clone, PartialEq)]
pub struct RawSignature {
    pub name: String,
    pub version: String,
    pub input: (DataType, Vec<i64>),
    pub output: (DataType, Vec<i64>),
}

/// A raw forward pass's output and the model that gave it.
#[derive(Debug, Clone)]
pub struct RawInference {
    pub output: RawTensor,
    pub model: String,
    pub model_version: String,
    pub elapsed: Duration,
}

/// The input tensor a payload kind becomes, batch size free (`-1`):
/// images `UINT8 [-1, H, W, 3]`, text `INT64 [-1, max_tokens]`, raw
/// grayscale `FP32 [-1, 1, H, W]` scaled to 0..1.
pub fn input_signature(spec: &InputSpec) -> (DataType, Vec<i64>) {
    let d = |v: usize| i64::try_from(v).unwrap_or(i64::MAX);
    match spec {
        InputSpec::Image { height, width, .. } => {
            (DataType::Uint8, vec![-1, d(*height), d(*width), 3])
        }
        InputSpec::Text { max_tokens, .. } => (DataType::Int64, vec![-1, d(*max_tokens)]),
        InputSpec::Gray8 { height, width } => (DataType::Fp32, vec![-1, 1, d(*height), d(*width)]),
    }
}

/// A prepared payload as the model's input tensor, a batch of one (the
/// one place payload bytes become tensor bytes: local engines, the cloud
/// and the V2 client all use it).
pub fn input_tensor(p: &Prepared, spec: &InputSpec) -> RawTensor {
    let d = |v: u32| i64::from(v);
    match (p, spec) {
        (Prepared::Gray8(px), InputSpec::Gray8 { height, width }) => {
            let scaled: Vec<f32> = px.iter().map(|&v| f32::from(v) / 255.0).collect();
            RawTensor::from_f32(vec![1, 1, *height as i64, *width as i64], &scaled)
        }
        (Prepared::Gray8(px), _) => {
            let scaled: Vec<f32> = px.iter().map(|&v| f32::from(v) / 255.0).collect();
            RawTensor::from_f32(vec![1, px.len() as i64], &scaled)
        }
        (
            Prepared::Rgb {
                data,
                height,
                width,
                ..
            },
            _,
        ) => RawTensor {
            datatype: DataType::Uint8,
            shape: vec![1, d(*height), d(*width), 3],
            data: data.clone(),
        },
        (Prepared::Tokens(ids), _) => RawTensor::from_i64(vec![1, ids.len() as i64], ids),
    }
}

/// How much a detector's boxes are scaled to land on the image as it was
/// sent (the model saw it resized).
pub fn box_scale(p: &Prepared) -> (f32, f32) {
    match p {
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
    }
}

/// The answer of a classifier from one sample's logits: the most likely
/// class (the first of equals) and its softmax probability.
pub fn classify_scores(logits: &[f32], spec: &ModelSpec) -> Output {
    let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let exps: Vec<f32> = logits.iter().map(|&v| (v - max).exp()).collect();
    let sum: f32 = exps.iter().sum();
    let (mut class, mut best) = (0usize, f32::NEG_INFINITY);
    for (i, &e) in exps.iter().enumerate() {
        let p = e / sum;
        if p > best {
            (class, best) = (i, p);
        }
    }
    let class = if logits.is_empty() { -1 } else { class as i64 };
    Output {
        class,
        confidence: if best.is_finite() { best } else { 0.0 },
        label: if class >= 0 {
            spec.label(class)
        } else {
            String::new()
        },
        boxes: Vec::new(),
        model: spec.name.clone(),
        model_version: spec.version.clone(),
    }
}

/// The answer of a detector from one sample's `K x 6` rows (`x1, y1, x2,
/// y2, score, class` in the model's input pixels): every finite box
/// scoring at least `min_score`, scaled by `scale`, strongest first.
pub fn detect_rows(rows: &[f32], spec: &ModelSpec, min_score: f32, scale: (f32, f32)) -> Output {
    let (sx, sy) = scale;
    let mut boxes: Vec<Detection> = rows
        .chunks_exact(6)
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
    Output {
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
    }
}

/// One sample's answer from its raw output, as `spec.output` reads it
/// (`scale`: see [`box_scale`]).
pub fn answer(out: &[f32], spec: &ModelSpec, scale: (f32, f32)) -> Output {
    match spec.output {
        OutputSpec::Logits => classify_scores(out, spec),
        OutputSpec::Boxes { min_score } => detect_rows(out, spec, min_score, scale),
    }
}

/// A split model's head output at the edge: `[1, C, H, W]` features, the
/// size of the submitted image (width, height; for a detector's boxes),
/// and how long decoding and the head took.
#[derive(Debug, Clone)]
pub struct SplitFeatures {
    pub shape: Vec<i64>,
    pub values: Vec<f32>,
    pub source: Option<(u32, u32)>,
    pub elapsed: Duration,
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

#[cfg(test)]
mod tests {
    use super::*;

    /// A model with a bug: every run panics.
    struct Panicking;

    impl Engine for Panicking {
        fn supports(&self, _: TaskType) -> bool {
            true
        }
        fn validate(&self, _: TaskType, _: &[u8]) -> Result<(), TaskError> {
            Ok(())
        }
        fn process(&mut self, _: TaskType, _: &[u8]) -> Result<Inference, TaskError> {
            panic!("a bug in the model")
        }
        fn estimate(&self, _: TaskType) -> Duration {
            Duration::ZERO
        }
    }

    #[test]
    fn a_panicking_batch_fails_each_of_its_tasks() {
        let payloads: [&[u8]; 3] = [b"a", b"b", b"c"];
        let results =
            process_batch_guarded(&mut Panicking, TaskType::ImageClassification, &payloads);
        assert_eq!(results.len(), 3);
        for r in results {
            assert!(
                matches!(&r, Err(TaskError::Internal(m)) if m == "inference panicked"),
                "{:?}",
                r.map(|i| i.elapsed)
            );
        }
        // The thread that ran it goes on.
        let again = process_batch_guarded(&mut Panicking, TaskType::NlpAnalysis, &payloads[..1]);
        assert_eq!(again.len(), 1);
    }
}
