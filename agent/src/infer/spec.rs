//! A model as configured: its file, name, version, the payload it takes
//! and what its output means. Checking a payload needs no model loaded, so
//! the manager and the cloud do it before accepting work.

use serde::{Deserialize, Serialize};
use std::path::PathBuf;

/// One model, the payload it takes and what it answers.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ModelSpec {
    pub path: PathBuf,
    pub name: String,
    #[serde(default = "default_version")]
    pub version: String,
    /// For the raw grayscale input (no `input` given): the payload is
    /// `height * width` bytes of 8-bit grayscale.
    #[serde(default = "default_side")]
    pub height: usize,
    #[serde(default = "default_side")]
    pub width: usize,
    /// The payload and how it becomes the model's input; unset: raw
    /// grayscale of `height` x `width`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub input: Option<InputSpec>,
    #[serde(default)]
    pub output: OutputSpec,
    /// Class names, by class index (optional).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub labels: Vec<String>,
    /// Execution time assumed until measured, in milliseconds. An edge's
    /// workers measure it at start (`Engine::warm_up`), so there it stands
    /// only where that fails; the cloud keeps it as its seed.
    #[serde(default = "default_expected_ms")]
    pub expected_ms: f64,
    /// Dynamic batching: tasks of this model waiting together run as one
    /// batch of at most this many (1: no batching).
    #[serde(default = "default_max_batch")]
    pub max_batch: usize,
    /// How long a batch that is not full may wait for more tasks, in
    /// milliseconds (0: take what is waiting, never wait).
    #[serde(default)]
    pub max_batch_delay_ms: f64,
    /// Split computing: the cloud model cut at layer boundaries, whose
    /// head the edge runs and whose tail the cloud runs (unset: none).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub split: Option<SplitSpec>,
}

/// A partitionable model: one TorchScript file with `head(x, point)` (the
/// model's input to the features at `point`) and `tail(h, point)` (those
/// features to the model's output); the composition is the whole model
/// (`models/export_splits.py` checks it). On the edge it belongs to the
/// task type's spec beside the edge model, in the cloud beside the cloud
/// model it splits.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SplitSpec {
    pub path: PathBuf,
    /// The whole model's name: a split task's answer is that model's.
    pub model: String,
    /// The whole model's time where the points' times were measured (ms):
    /// a tail's share of the whole model's server time is `tail_ms / full_ms`.
    #[serde(default)]
    pub full_ms: f64,
    pub points: Vec<SplitPoint>,
}

/// One place the model may be cut.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SplitPoint {
    pub name: String,
    /// The `point` argument of the model's `head` and `tail`.
    pub index: i64,
    /// One sample's features there: C, H, W.
    pub shape: Vec<i64>,
    /// Assumed until measured (milliseconds, bytes on the wire).
    pub head_ms: f64,
    pub tail_ms: f64,
    pub feature_bytes: f64,
}

impl SplitSpec {
    pub fn point(&self, name: &str) -> Option<&SplitPoint> {
        self.points.iter().find(|p| p.name == name)
    }
}

/// What a payload is, and the tensor the model takes.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum InputSpec {
    /// Raw 8-bit grayscale, `height * width` bytes, row-major; the model
    /// takes `float32 [N, 1, height, width]` scaled to 0..1.
    Gray8 { height: usize, width: usize },
    /// An encoded image (JPEG or PNG) of at most `max_pixels` pixels,
    /// decoded to RGB and resized to `height` x `width` when it is another
    /// size; the model takes `uint8 [N, height, width, 3]`.
    Image {
        height: usize,
        width: usize,
        #[serde(default = "default_max_pixels")]
        max_pixels: u64,
    },
    /// UTF-8 text of at most `max_bytes` bytes, tokenized with the
    /// vocabulary file `vocab` (see `tokenizer`); the model takes
    /// `int64 [N, max_tokens]`.
    Text {
        vocab: PathBuf,
        #[serde(default = "default_max_tokens")]
        max_tokens: usize,
        #[serde(default = "default_max_text_bytes")]
        max_bytes: usize,
    },
}

/// What the model's output tensor means.
#[derive(Debug, Clone, Copy, PartialEq, Default, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum OutputSpec {
    /// `[N, classes]` logits: the answer is the most likely class.
    #[default]
    Logits,
    /// `[N, K, 6]` detections (`x1, y1, x2, y2, score, class`, in the
    /// model's input pixels): the answer is every box scoring `min_score`
    /// or more.
    Boxes {
        #[serde(default = "default_min_score")]
        min_score: f32,
    },
}

fn default_version() -> String {
    "1".into()
}
fn default_max_batch() -> usize {
    1
}
fn default_side() -> usize {
    8
}
fn default_expected_ms() -> f64 {
    1.0
}
fn default_max_pixels() -> u64 {
    4096 * 4096
}
fn default_max_tokens() -> usize {
    64
}
fn default_max_text_bytes() -> usize {
    16 * 1024
}
fn default_min_score() -> f32 {
    0.3
}

impl ModelSpec {
    /// The payload kind, with the legacy grayscale default.
    pub fn input(&self) -> InputSpec {
        self.input.clone().unwrap_or(InputSpec::Gray8 {
            height: self.height,
            width: self.width,
        })
    }

    /// The name of class `class`, or its number.
    pub fn label(&self, class: i64) -> String {
        usize::try_from(class)
            .ok()
            .and_then(|i| self.labels.get(i))
            .cloned()
            .unwrap_or_else(|| class.to_string())
    }
}
