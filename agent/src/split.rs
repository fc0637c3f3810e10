//! Split computing at the edge: the split points the decision may use per
//! task type, what they are expected to cost here (the head's time, seeded
//! from the engine's warm-up on this device; the features' bytes on the
//! wire, seeded from the manifest; both recalibrated from every head that
//! runs), and the head's output put on the wire.

use crate::config::SplitConfig;
use crate::infer::{ModelSpec, SplitFeatures, SplitPoint};
use agent_core::{ExecTimeModel, TaskError, TaskType};
use agent_net::{encode_features, FeatureCodec};
use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

/// Weight of a new measurement of a head's time or its features' size.
const ALPHA: f64 = 0.2;
/// Bytes a split request carries besides the features (shape, scales,
/// point name, framing), for the upload estimate.
const OVERHEAD_BYTES: f64 = 48.0;

/// A split point's place among its task type's points (`Decision::split`).
pub type PointIndex = u8;

/// The split points the edge may use, and what they cost here.
pub struct SplitPoints {
    points: HashMap<TaskType, Vec<SplitPoint>>,
    /// Per task type, the whole model's time where the manifest measured.
    full_ms: HashMap<TaskType, f64>,
    head_times: Mutex<ExecTimeModel<(TaskType, PointIndex)>>,
    feature_bytes: Mutex<HashMap<(TaskType, PointIndex), f64>>,
}

impl SplitPoints {
    /// From the edge's model specs: each split point `cfg` allows (none
    /// when split computing is off); `measured(t)` gives the heads' times
    /// measured on this device (else the manifest's stand).
    pub fn new(
        specs: &HashMap<TaskType, ModelSpec>,
        cfg: &SplitConfig,
        measured: impl Fn(TaskType) -> Vec<(String, Duration)>,
    ) -> SplitPoints {
        let mut head_times = ExecTimeModel::new(ALPHA, Duration::from_millis(1));
        let mut feature_bytes = HashMap::new();
        let mut points = HashMap::new();
        let mut full_ms = HashMap::new();
        for (&t, spec) in specs {
            let Some(split) = &spec.split else { continue };
            full_ms.insert(t, split.full_ms);
            let measured = measured(t);
            let allowed: Vec<SplitPoint> = split
                .points
                .iter()
                .filter(|p| cfg.points.is_empty() || cfg.points.contains(&p.name))
                .take(usize::from(PointIndex::MAX))
                .cloned()
                .collect();
            for (i, p) in allowed.iter().enumerate() {
                let key = (t, i as PointIndex);
                let head = measured
                    .iter()
                    .find(|(name, _)| *name == p.name)
                    .map_or(Duration::from_secs_f64(p.head_ms.max(0.0) / 1e3), |m| m.1);
                head_times.seed(key, head);
                feature_bytes.insert(key, p.feature_bytes.max(0.0));
            }
            if !allowed.is_empty() {
                points.insert(t, allowed);
            }
        }
        SplitPoints {
            points,
            full_ms,
            head_times: Mutex::new(head_times),
            feature_bytes: Mutex::new(feature_bytes),
        }
    }

    /// The task type's usable split points.
    pub fn of(&self, t: TaskType) -> &[SplitPoint] {
        self.points.get(&t).map_or(&[], Vec::as_slice)
    }

    pub fn index_of(&self, t: TaskType, name: &str) -> Option<PointIndex> {
        self.of(t)
            .iter()
            .position(|p| p.name == name)
            .map(|i| i as PointIndex)
    }

    pub fn get(&self, t: TaskType, i: PointIndex) -> Option<&SplitPoint> {
        self.of(t).get(usize::from(i))
    }

    /// The head's expected time here (decoding included).
    pub fn head_estimate(&self, t: TaskType, i: PointIndex) -> Duration {
        self.head_times.lock().expect("split lock").estimate((t, i))
    }

    /// The bytes a split request is expected to upload.
    pub fn upload_bytes(&self, t: TaskType, i: PointIndex) -> usize {
        let b = self.feature_bytes.lock().expect("split lock");
        (b.get(&(t, i)).copied().unwrap_or(0.0) + OVERHEAD_BYTES) as usize
    }

    /// The tail's server time assumed until measured: its share of the
    /// whole model's time in the manifest, of `whole` (the whole model's
    /// server time assumed), so split and whole offloads start even.
    pub fn tail_seed(&self, t: TaskType, i: PointIndex, whole: Duration) -> Duration {
        let full = self.full_ms.get(&t).copied().unwrap_or(0.0);
        self.get(t, i).map_or(Duration::ZERO, |p| {
            if full > 0.0 {
                whole.mul_f64((p.tail_ms / full).clamp(0.0, 1.0))
            } else {
                Duration::from_secs_f64(p.tail_ms.max(0.0) / 1e3)
            }
        })
    }

    /// A head ran: its time and the size of what it sends.
    pub fn observe(&self, t: TaskType, i: PointIndex, head: Duration, bytes: usize) {
        self.head_times
            .lock()
            .expect("split lock")
            .observe((t, i), head);
        self.feature_bytes
            .lock()
            .expect("split lock")
            .entry((t, i))
            .and_modify(|e| *e += ALPHA * (bytes as f64 - *e))
            .or_insert(bytes as f64);
    }
}

/// The head's output as the request's features: 8-bit affine per sample,
/// zstd (within a half step of the features: `models/splits_metrics.json`
/// measures the quality it keeps).
pub fn to_wire(point: &str, f: &SplitFeatures) -> Result<proto::Features, TaskError> {
    let mut wire = encode_features(point, &f.shape, &f.values, FeatureCodec::U8Zstd)
        .map_err(|e| TaskError::Internal(format!("split point {point}: {e}")))?;
    if let Some((w, h)) = f.source {
        wire.source_width = w;
        wire.source_height = h;
    }
    Ok(wire)
}
