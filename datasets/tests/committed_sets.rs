//! The committed held-out sets parse, hold what the training run says it
//! wrote (`models/workloads_metrics.json`), and carry real JPEGs and boxes.

use datasets::heldout;

fn metrics() -> serde_json::Value {
    let path = datasets::resolve(std::path::Path::new("models/workloads_metrics.json"), None);
    serde_json::from_slice(&std::fs::read(&path).expect("models/workloads_metrics.json"))
        .expect("metrics are JSON")
}

fn count(m: &serde_json::Value, model: &str, key: &str) -> usize {
    m[model][key]
        .as_u64()
        .unwrap_or_else(|| panic!("{model}.{key} in workloads_metrics.json")) as usize
}

fn is_jpeg(b: &[u8]) -> bool {
    b.starts_with(&[0xff, 0xd8]) && b.ends_with(&[0xff, 0xd9])
}

#[test]
fn image_set_matches_the_training_run() {
    let m = metrics();
    let set = heldout::images().expect("heldout_images.bin");
    assert_eq!(set.len(), count(&m, "image_edge", "heldout_items"));
    assert!(set.iter().all(|i| is_jpeg(&i.jpeg) && i.label < 10));
    // Every class is represented.
    let classes: std::collections::HashSet<u8> = set.iter().map(|i| i.label).collect();
    assert_eq!(classes.len(), 10);
}

#[test]
fn scene_set_matches_the_training_run() {
    let m = metrics();
    let set = heldout::scenes().expect("heldout_scenes.bin");
    assert_eq!(set.len(), count(&m, "detect_edge", "heldout_scenes"));
    assert!(set.iter().all(|s| is_jpeg(&s.jpeg)));
    assert!(set.iter().all(|s| (1..=4).contains(&s.boxes.len())));
    assert!(set
        .iter()
        .flat_map(|s| &s.boxes)
        .all(|b| b.x1 >= 0.0 && b.y1 >= 0.0 && b.x2 <= 256.0 && b.y2 <= 256.0));
}

#[test]
fn review_set_matches_the_training_run() {
    let m = metrics();
    let set = heldout::reviews().expect("heldout_text.jsonl");
    assert_eq!(set.len(), count(&m, "text_edge", "heldout_items"));
    let fresh = set.iter().filter(|r| r.label == 1).count();
    assert!(
        fresh > set.len() / 4 && fresh < set.len() * 3 / 4,
        "{fresh} of {}",
        set.len()
    );
}
