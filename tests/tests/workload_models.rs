//! Every workload model, run through the agent's own engine on its whole
//! held-out set, reproduces the quality the training run measured
//! (`models/workloads_metrics.json`) within 0.5 points. This holds the
//! Rust side to training: JPEG decoding, the tokenizer, reading boxes.

use agent::infer::{shared_exec_times, Engine, InputSpec, ModelSpec, OutputSpec, TorchEngine};
use agent_core::TaskType;
use datasets::heldout;
use datasets::quality::{mean_ap, ScoredBox};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

fn models_dir() -> PathBuf {
    datasets::resolve(Path::new("models"), None)
}

fn reported(model: &str, key: &str) -> f64 {
    let path = models_dir().join("workloads_metrics.json");
    let m: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&path).expect("workloads_metrics.json")).unwrap();
    m[model][key]
        .as_f64()
        .unwrap_or_else(|| panic!("{model}.{key} in {}", path.display()))
}

fn engine(task_type: TaskType, name: &str, input: InputSpec, output: OutputSpec) -> TorchEngine {
    let spec = ModelSpec {
        path: models_dir().join(format!("{name}.pt")),
        name: name.into(),
        version: "1".into(),
        height: 0,
        width: 0,
        input: Some(input),
        output,
        labels: Vec::new(),
        expected_ms: 10.0,
    };
    let times = shared_exec_times(0.2, Duration::from_millis(10));
    TorchEngine::load(&HashMap::from([(task_type, spec)]), tch::Device::Cpu, times)
        .unwrap_or_else(|e| panic!("loading {name}: {e:#}"))
}

fn assert_close(name: &str, measured: f64, reported: f64) {
    eprintln!("{name}: {measured:.4} through the agent, {reported:.4} in training");
    assert!(
        (measured - reported).abs() <= 0.005,
        "{name}: {measured:.4} through the agent's engine, {reported:.4} when trained"
    );
}

#[test]
fn image_classifiers_reproduce_their_training_accuracy() {
    let set = heldout::images().expect("heldout_images.bin");
    for name in ["image_edge", "image_cloud"] {
        let input = InputSpec::Image {
            height: 96,
            width: 96,
            max_pixels: 1 << 20,
        };
        let mut e = engine(
            TaskType::ImageClassification,
            name,
            input,
            OutputSpec::Logits,
        );
        let correct = set
            .iter()
            .filter(|s| {
                let out = e
                    .process(TaskType::ImageClassification, &s.jpeg)
                    .unwrap()
                    .output;
                out.class == i64::from(s.label)
            })
            .count();
        let acc = correct as f64 / set.len() as f64;
        assert_close(name, acc, reported(name, "heldout_accuracy"));
    }
}

#[test]
fn detectors_reproduce_their_training_map() {
    let set = heldout::scenes().expect("heldout_scenes.bin");
    let truths: Vec<_> = set.iter().map(|s| s.boxes.clone()).collect();
    for name in ["detect_edge", "detect_cloud"] {
        let input = InputSpec::Image {
            height: 256,
            width: 256,
            max_pixels: 1 << 20,
        };
        // The training script scores every box down to 0.01.
        let output = OutputSpec::Boxes { min_score: 0.01 };
        let mut e = engine(TaskType::ObjectDetection, name, input, output);
        let dets: Vec<Vec<ScoredBox>> = set
            .iter()
            .map(|s| {
                let out = e
                    .process(TaskType::ObjectDetection, &s.jpeg)
                    .unwrap()
                    .output;
                out.boxes
                    .iter()
                    .map(|b| ScoredBox {
                        x1: b.x1,
                        y1: b.y1,
                        x2: b.x2,
                        y2: b.y2,
                        score: b.score,
                        class: b.class as u8,
                    })
                    .collect()
            })
            .collect();
        let map = mean_ap(&dets, &truths, 10, 0.5);
        assert_close(name, map, reported(name, "heldout_map50"));
    }
}

#[test]
fn text_classifiers_reproduce_their_training_accuracy() {
    let set = heldout::reviews().expect("heldout_text.jsonl");
    for name in ["text_edge", "text_cloud"] {
        let input = InputSpec::Text {
            vocab: models_dir().join("text_vocab.txt"),
            max_tokens: 64,
            max_bytes: 64 * 1024,
        };
        let mut e = engine(TaskType::NlpAnalysis, name, input, OutputSpec::Logits);
        let correct = set
            .iter()
            .filter(|r| {
                let out = e
                    .process(TaskType::NlpAnalysis, r.text.as_bytes())
                    .unwrap()
                    .output;
                out.class == i64::from(r.label)
            })
            .count();
        let acc = correct as f64 / set.len() as f64;
        assert_close(name, acc, reported(name, "heldout_accuracy"));
    }
}
