//! libtorch inference on the shipped TorchScript models, through the same
//! engine the agent uses.

use agent::infer::{shared_exec_times, Engine, TorchEngine};
use agent_core::{TaskError, TaskType};
use std::collections::HashMap;
use std::time::Duration;
use tests::*;

fn engine(cloud: bool, device: tch::Device) -> TorchEngine {
    let cfg = defaults();
    let specs: HashMap<_, _> = if cloud {
        cfg.cloud.models
    } else {
        cfg.edge.models
    };
    TorchEngine::load(
        &specs,
        device,
        shared_exec_times(0.2, Duration::from_millis(1)),
    )
    .unwrap()
}

fn accuracy(e: &mut TorchEngine) -> f64 {
    let set = test_set();
    let good = set
        .iter()
        .filter(|s| {
            let out = e
                .process(TaskType::ImageClassification, &s.pixels)
                .unwrap()
                .output;
            out.class == i64::from(s.label)
        })
        .count();
    good as f64 / set.len() as f64
}

#[test]
fn both_models_classify_the_held_out_set() {
    tch::set_num_threads(1);
    let edge = accuracy(&mut engine(false, tch::Device::Cpu));
    let cloud = accuracy(&mut engine(true, tch::Device::Cpu));
    println!("held-out accuracy: edge {edge:.4}, cloud {cloud:.4}");
    assert!(edge >= 0.97, "edge model accuracy {edge}");
    assert!(cloud >= 0.99, "cloud model accuracy {cloud}");
    assert!(cloud >= edge, "the cloud model is the more accurate one");
}

#[test]
fn estimates_calibrate_from_measured_latency() {
    let mut e = engine(false, tch::Device::Cpu);
    let seeded = e.estimate(TaskType::ImageClassification);
    assert_eq!(
        seeded,
        Duration::from_secs_f64(0.2e-3),
        "seeded from config"
    );
    let pixels = test_set()[0].pixels.clone();
    let mut last = Duration::ZERO;
    for _ in 0..50 {
        last = e
            .process(TaskType::ImageClassification, &pixels)
            .unwrap()
            .elapsed;
    }
    let est = e.estimate(TaskType::ImageClassification);
    assert_ne!(est, seeded, "the estimate moved to measurements");
    // An EWMA of recent measurements stays within the range they span.
    assert!(
        est < last * 20 && est > Duration::ZERO,
        "estimate {est:?} last {last:?}"
    );
}

#[test]
fn warm_up_seeds_the_estimate_with_a_run_measured_here() {
    let cfg = defaults();
    let mut specs = cfg.edge.models;
    // A guess far off what this machine does.
    for s in specs.values_mut() {
        s.expected_ms = 60_000.0;
    }
    let mut e = TorchEngine::load(
        &specs,
        tch::Device::Cpu,
        shared_exec_times(0.2, Duration::from_millis(1)),
    )
    .unwrap();
    let guessed = e.estimate(TaskType::ImageClassification);
    assert_eq!(guessed, Duration::from_secs(60), "seeded from the spec");
    e.warm_up().unwrap();
    let measured = e.estimate(TaskType::ImageClassification);
    assert!(
        measured > Duration::ZERO && measured < Duration::from_secs(1),
        "seeded from warm-up runs: {measured:?}"
    );
}

#[test]
fn wrong_shapes_and_unknown_types_are_clear_errors() {
    let mut e = engine(false, tch::Device::Cpu);
    match e.process(TaskType::ImageClassification, &[0u8; 63]) {
        Err(TaskError::InvalidInput(m)) => assert!(m.contains("64 bytes"), "{m}"),
        other => panic!("{other:?}"),
    }
    assert!(matches!(
        e.process(TaskType::ObjectDetection, &[0u8; 64]),
        Err(TaskError::UnsupportedTaskType(_))
    ));
}

#[test]
fn cuda_inference_matches_cpu_when_a_gpu_is_present() {
    // A GPU this machine shows but libtorch cannot use is a broken setup
    // (a CPU-only libtorch, a missing CUDA library): fail, do not skip.
    let visible = std::path::Path::new("/dev/nvidiactl").exists();
    if !tch::Cuda::is_available() {
        assert!(
            !visible,
            "an NVIDIA GPU is present (/dev/nvidiactl) but libtorch sees no CUDA device: \
             run `cargo xtask setup` to assemble the CUDA libtorch"
        );
        eprintln!("SKIP cuda_inference_matches_cpu: no NVIDIA GPU on this machine");
        return;
    }
    let mut cpu = engine(false, tch::Device::Cpu);
    let mut gpu = engine(false, tch::Device::Cuda(0));
    for s in test_set().iter().take(50) {
        let a = cpu
            .process(TaskType::ImageClassification, &s.pixels)
            .unwrap()
            .output;
        let b = gpu
            .process(TaskType::ImageClassification, &s.pixels)
            .unwrap()
            .output;
        assert_eq!(a.class, b.class);
        assert!((a.confidence - b.confidence).abs() < 1e-3);
    }
}
