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
        max_batch: 1,
        max_batch_delay_ms: 0.0,
        split: None,
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

/// A dynamic batch answers every task exactly as the task alone would,
/// for every edge model, with an invalid payload in the batch failing
/// alone; and prints how long a batch of 8 takes against 8 single runs.
#[test]
fn a_batch_answers_as_single_runs_do() {
    let images = heldout::images().expect("heldout_images.bin");
    let scenes = heldout::scenes().expect("heldout_scenes.bin");
    let reviews = heldout::reviews().expect("heldout_text.jsonl");
    let image = |side| InputSpec::Image {
        height: side,
        width: side,
        max_pixels: 1 << 20,
    };
    let text = InputSpec::Text {
        vocab: models_dir().join("text_vocab.txt"),
        max_tokens: 64,
        max_bytes: 64 * 1024,
    };
    type Case<'a> = (TaskType, &'a str, InputSpec, OutputSpec, Vec<Vec<u8>>);
    let cases: Vec<Case> = vec![
        (
            TaskType::ImageClassification,
            "image_edge",
            image(96),
            OutputSpec::Logits,
            images.iter().take(8).map(|s| s.jpeg.clone()).collect(),
        ),
        (
            TaskType::ObjectDetection,
            "detect_edge",
            image(256),
            OutputSpec::Boxes { min_score: 0.3 },
            scenes.iter().take(8).map(|s| s.jpeg.clone()).collect(),
        ),
        (
            TaskType::NlpAnalysis,
            "text_edge",
            text,
            OutputSpec::Logits,
            reviews
                .iter()
                .take(8)
                .map(|r| r.text.clone().into_bytes())
                .collect(),
        ),
    ];
    for (task_type, name, input, output, payloads) in cases {
        let mut e = engine(task_type, name, input, output);
        let singles: Vec<_> = payloads
            .iter()
            .map(|p| e.process(task_type, p).unwrap().output)
            .collect();
        let mut with_bad: Vec<&[u8]> = payloads.iter().map(Vec::as_slice).collect();
        with_bad.insert(3, b"\xff\xd8 not an image or utf-8 \xff");
        let batch = e.process_batch(task_type, &with_bad);
        assert_eq!(batch.len(), payloads.len() + 1);
        assert!(
            matches!(batch[3], Err(agent_core::TaskError::InvalidInput(_))),
            "{name}: the bad payload must fail alone"
        );
        let batched: Vec<_> = batch
            .into_iter()
            .enumerate()
            .filter(|(i, _)| *i != 3)
            .map(|(_, r)| r.unwrap().output)
            .collect();
        for (s, b) in singles.iter().zip(&batched) {
            assert_eq!(s.class, b.class, "{name}");
            assert!((s.confidence - b.confidence).abs() < 1e-4, "{name}");
            assert_eq!(s.boxes.len(), b.boxes.len(), "{name}");
            for (x, y) in s.boxes.iter().zip(&b.boxes) {
                assert_eq!(x.class, y.class, "{name}");
                assert!((x.x1 - y.x1).abs() < 1e-2 && (x.score - y.score).abs() < 1e-4);
            }
        }
        // The figure the batching benchmark rests on (printed, not asserted:
        // this machine is shared), with one intra-op thread as the agent runs.
        tch::set_num_threads(1);
        let refs: Vec<&[u8]> = payloads.iter().map(Vec::as_slice).collect();
        let t0 = std::time::Instant::now();
        for _ in 0..5 {
            for p in &refs {
                e.process(task_type, p).unwrap();
            }
        }
        let single = t0.elapsed() / 5;
        let t0 = std::time::Instant::now();
        for _ in 0..5 {
            e.process_batch(task_type, &refs);
        }
        let batched = t0.elapsed() / 5;
        eprintln!(
            "{name}: 8 single runs {:.2} ms, one batch of 8 {:.2} ms ({:.2}x)",
            single.as_secs_f64() * 1e3,
            batched.as_secs_f64() * 1e3,
            single.as_secs_f64() / batched.as_secs_f64()
        );
    }
}
