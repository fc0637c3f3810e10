//! Live model updates with the real edge and real TorchScript models:
//! a signed manifest in the watched folder swaps the edge's model while
//! tasks stream through it, without a failed task; results name the
//! version that answered; a corrupt, tampered or wrongly signed update is
//! refused and the model in service keeps serving.

use agent::update::{keygen, sign, Outcome, MANIFEST, SIGNATURE};
use agent_core::{Policy, Priority, TaskType};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tests::*;

/// Prepares a signed update in `stage`: the model file and its manifest.
fn stage(stage: &Path, source: &Path, file: &str, version: &str, key: &Path) {
    let _ = std::fs::remove_dir_all(stage);
    std::fs::create_dir_all(stage).unwrap();
    std::fs::copy(source, stage.join(file)).unwrap();
    std::fs::write(
        stage.join(MANIFEST),
        format!("[models.image_classification]\nfile = {file:?}\nversion = {version:?}\n"),
    )
    .unwrap();
    sign(stage, key).unwrap();
}

/// Publishes a staged update the way an operator would: the model file
/// first, the signature and the manifest last. The watcher may look in
/// between (and refuse the half-published state); the next look sees it
/// whole.
fn publish(stage: &Path, updates: &Path, file: &str) {
    std::fs::copy(stage.join(file), updates.join(file)).unwrap();
    std::fs::copy(stage.join(SIGNATURE), updates.join(SIGNATURE)).unwrap();
    std::fs::copy(stage.join(MANIFEST), updates.join(MANIFEST)).unwrap();
}

/// Waits for the updater's verdict on the manifest just published.
async fn verdict(edge: &agent::edge::Edge, want: impl Fn(&Outcome) -> bool) -> Outcome {
    let models = edge.models.as_ref().expect("updates configured");
    let t0 = Instant::now();
    loop {
        if let Some(o) = models.last_outcome().filter(|o| want(o)) {
            return o;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(30),
            "no such verdict; last: {:?}",
            models.last_outcome()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_signed_model_is_swapped_in_under_load_and_bad_updates_are_refused() {
    let root = tempfile::Builder::new()
        .prefix("model-update-test-")
        .tempdir()
        .unwrap();
    let updates = root.path().join("updates");
    std::fs::create_dir_all(&updates).unwrap();
    let (key, public) = keygen(&root.path().join("keys")).unwrap();
    let (other_key, _) = keygen(&root.path().join("other-keys")).unwrap();

    let cloud = start_cloud(defaults().cloud).await;
    let mut cfg = defaults().edge;
    cfg.policy = Policy::AlwaysLocal;
    cfg.workers = 2;
    cfg.model_updates.dir = Some(updates.clone());
    cfg.model_updates.public_key = std::fs::read_to_string(&public).unwrap();
    cfg.model_updates.poll_ms = 100;
    // Version 2 of the edge's digits classifier: the larger digits model
    // (same input and classes, another network).
    let v1 = cfg.models[&TaskType::ImageClassification].clone();
    let v2_source = defaults().cloud.models[&TaskType::ImageClassification]
        .path
        .clone();
    assert_ne!(v1.path, v2_source);
    let edge = start_edge(cfg, cloud.grpc_addr.to_string()).await;

    // Four submitters stream tasks, each waiting for its answer before the
    // next: once one sees version 2, every later answer it gets is 2.
    let stop = Arc::new(AtomicBool::new(false));
    let mut streams = Vec::new();
    for s in 0..4 {
        let mut c = client(&edge).await;
        let stop = stop.clone();
        streams.push(tokio::spawn(async move {
            let set = test_set();
            let mut versions = Vec::new();
            let mut i = 0;
            while !stop.load(Ordering::Relaxed) {
                let pixels = set[i % set.len()].pixels.clone();
                let (r, _) =
                    send_image(&mut c, format!("s{s}-{i}"), pixels, Priority::Medium, None).await;
                let r = r.unwrap_or_else(|e| panic!("task s{s}-{i} failed: {e}"));
                assert!(r.success, "task s{s}-{i}: {}", r.error_message);
                assert_eq!(r.processed_by, "local");
                versions.push(r.model_version);
                i += 1;
            }
            versions
        }));
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(
        edge.models.as_ref().unwrap().last_outcome(),
        None,
        "no manifest yet"
    );

    let staging = root.path().join("stage");
    // A signed update.
    stage(&staging, &v2_source, "digits-v2.pt", "2", &key);
    publish(&staging, &updates, "digits-v2.pt");
    let applied = verdict(&edge, |o| matches!(o, Outcome::Applied(_))).await;
    assert_eq!(applied, Outcome::Applied(1));
    tokio::time::sleep(Duration::from_millis(500)).await;

    // A file that is not a TorchScript model, correctly signed: loading
    // fails and nothing is swapped.
    let junk = root.path().join("junk.pt");
    std::fs::write(&junk, b"not a TorchScript archive").unwrap();
    stage(&staging, &junk, "digits-v3.pt", "3", &key);
    publish(&staging, &updates, "digits-v3.pt");
    verdict(&edge, |o| matches!(o, Outcome::Refused("load_failed", _))).await;
    tokio::time::sleep(Duration::from_millis(300)).await;

    // A good model signed by a key the edge does not trust.
    stage(&staging, &v2_source, "digits-v4.pt", "4", &other_key);
    publish(&staging, &updates, "digits-v4.pt");
    tokio::time::sleep(Duration::from_millis(500)).await;
    let wrong_key = edge.models.as_ref().unwrap().last_outcome();
    assert!(
        matches!(wrong_key, Some(Outcome::Refused("bad_signature", _))),
        "{wrong_key:?}"
    );

    // Correctly signed, but the file that arrives is corrupted.
    stage(&staging, &v2_source, "digits-v5.pt", "5", &key);
    let mut bytes = std::fs::read(staging.join("digits-v5.pt")).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0xff;
    std::fs::write(staging.join("digits-v5.pt"), &bytes).unwrap();
    publish(&staging, &updates, "digits-v5.pt");
    verdict(&edge, |o| matches!(o, Outcome::Refused("bad_digest", _))).await;

    // A good model whose manifest was edited after signing.
    stage(&staging, &v2_source, "digits-v6.pt", "6", &key);
    let text = std::fs::read_to_string(staging.join(MANIFEST)).unwrap();
    std::fs::write(staging.join(MANIFEST), text.replace("\"6\"", "\"7\"")).unwrap();
    publish(&staging, &updates, "digits-v6.pt");
    tokio::time::sleep(Duration::from_millis(500)).await;
    let tampered = edge.models.as_ref().unwrap().last_outcome();
    assert!(
        matches!(tampered, Some(Outcome::Refused("bad_signature", _))),
        "{tampered:?}"
    );

    tokio::time::sleep(Duration::from_millis(300)).await;
    stop.store(true, Ordering::Relaxed);
    let mut total = 0;
    for s in streams {
        let versions = s.await.expect("a submitter failed");
        total += versions.len();
        let first_new = versions
            .iter()
            .position(|v| v == "2")
            .expect("version 2 served");
        assert!(first_new > 0, "the old model served before the swap");
        assert!(
            versions[..first_new].iter().all(|v| v == &v1.version),
            "before the swap: {:?}",
            &versions[..first_new]
        );
        // After the swap only version 2 answered, also while the refused
        // updates came and went.
        assert!(
            versions[first_new..].iter().all(|v| v == "2"),
            "after the swap: {versions:?}"
        );
    }
    assert!(total > 100, "only {total} tasks streamed");
    let stats = edge.manager.stats();
    assert_eq!(stats.failed, 0);
    assert_eq!(
        edge.models.as_ref().unwrap().versions()[&TaskType::ImageClassification],
        "2"
    );
    edge.shutdown().await.unwrap();
    cloud.shutdown().await.unwrap();
}
