//! Quality measures as `models/train_workloads.py` computes them, so a
//! figure measured through the agent can be held against the training
//! run's: accuracy, and mAP@0.5 for detectors.

use crate::heldout::TruthBox;

/// A detector's box for the measure: `x1, y1, x2, y2` in pixels, score, class.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ScoredBox {
    pub x1: f32,
    pub y1: f32,
    pub x2: f32,
    pub y2: f32,
    pub score: f32,
    pub class: u8,
}

/// Intersection over union of two `[x1, y1, x2, y2]` boxes.
pub fn iou(a: [f64; 4], b: [f64; 4]) -> f64 {
    let ix = (a[2].min(b[2]) - a[0].max(b[0])).max(0.0);
    let iy = (a[3].min(b[3]) - a[1].max(b[1])).max(0.0);
    let inter = ix * iy;
    let union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter;
    if union > 0.0 {
        inter / union
    } else {
        0.0
    }
}

fn corners_scored(b: &ScoredBox) -> [f64; 4] {
    [b.x1, b.y1, b.x2, b.y2].map(f64::from)
}

fn corners_truth(b: &TruthBox) -> [f64; 4] {
    [b.x1, b.y1, b.x2, b.y2].map(f64::from)
}

/// mAP at IoU `thr`: per class, detections of every image ranked by score
/// (ties in image order), each matched greedily to the best-overlapping
/// unmatched truth; all-point interpolated AP; the mean over the classes
/// that have truths. `dets[i]` and `truths[i]` belong to image `i`.
pub fn mean_ap(dets: &[Vec<ScoredBox>], truths: &[Vec<TruthBox>], classes: u8, thr: f64) -> f64 {
    let mut aps = Vec::new();
    for c in 0..classes {
        let gts: Vec<Vec<[f64; 4]>> = truths
            .iter()
            .map(|t| {
                t.iter()
                    .filter(|b| b.class == c)
                    .map(corners_truth)
                    .collect()
            })
            .collect();
        let npos: usize = gts.iter().map(Vec::len).sum();
        if npos == 0 {
            continue;
        }
        let mut cand: Vec<(f32, usize, [f64; 4])> = dets
            .iter()
            .enumerate()
            .flat_map(|(i, ds)| {
                ds.iter()
                    .filter(|d| d.class == c)
                    .map(move |d| (d.score, i, corners_scored(d)))
            })
            .collect();
        // Stable: equal scores keep image order, as the training script's sort does.
        cand.sort_by(|a, b| b.0.total_cmp(&a.0));
        let mut used: Vec<Vec<bool>> = gts.iter().map(|g| vec![false; g.len()]).collect();
        let (mut tp, mut fp) = (0usize, 0usize);
        let mut points: Vec<(f64, f64)> = Vec::with_capacity(cand.len());
        for (_, i, b) in &cand {
            let (mut best, mut bj) = (0.0, None);
            for (j, g) in gts[*i].iter().enumerate() {
                let o = iou(*b, *g);
                if o > best {
                    best = o;
                    bj = Some(j);
                }
            }
            match bj {
                Some(j) if best >= thr && !used[*i][j] => {
                    used[*i][j] = true;
                    tp += 1;
                }
                _ => fp += 1,
            }
            points.push((tp as f64 / npos as f64, tp as f64 / (tp + fp) as f64));
        }
        // All-point interpolation: precision made monotone from the right.
        let mut mrec = vec![0.0];
        let mut mpre = vec![0.0];
        if points.is_empty() {
            mrec.push(0.0);
            mpre.push(0.0);
        }
        for (r, p) in &points {
            mrec.push(*r);
            mpre.push(*p);
        }
        mrec.push(1.0);
        mpre.push(0.0);
        for k in (0..mpre.len() - 1).rev() {
            mpre[k] = mpre[k].max(mpre[k + 1]);
        }
        let ap: f64 = (1..mrec.len())
            .filter(|&k| mrec[k] != mrec[k - 1])
            .map(|k| (mrec[k] - mrec[k - 1]) * mpre[k])
            .sum();
        aps.push(ap);
    }
    if aps.is_empty() {
        0.0
    } else {
        aps.iter().sum::<f64>() / aps.len() as f64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(class: u8, x1: f32, y1: f32, x2: f32, y2: f32) -> TruthBox {
        TruthBox {
            class,
            x1,
            y1,
            x2,
            y2,
        }
    }

    fn d(class: u8, score: f32, x1: f32, y1: f32, x2: f32, y2: f32) -> ScoredBox {
        ScoredBox {
            x1,
            y1,
            x2,
            y2,
            score,
            class,
        }
    }

    #[test]
    fn iou_of_known_boxes() {
        assert_eq!(iou([0.0, 0.0, 10.0, 10.0], [0.0, 0.0, 10.0, 10.0]), 1.0);
        assert_eq!(iou([0.0, 0.0, 10.0, 10.0], [10.0, 10.0, 20.0, 20.0]), 0.0);
        assert!((iou([0.0, 0.0, 10.0, 10.0], [5.0, 0.0, 15.0, 10.0]) - 1.0 / 3.0).abs() < 1e-12);
    }

    #[test]
    fn map_rewards_ranking_and_punishes_misses() {
        let truths = vec![
            vec![t(0, 0.0, 0.0, 10.0, 10.0)],
            vec![t(0, 20.0, 20.0, 30.0, 30.0)],
        ];
        // Both found, nothing else: AP 1.
        let perfect = vec![
            vec![d(0, 0.9, 0.0, 0.0, 10.0, 10.0)],
            vec![d(0, 0.8, 20.0, 20.0, 30.0, 30.0)],
        ];
        assert!((mean_ap(&perfect, &truths, 10, 0.5) - 1.0).abs() < 1e-12);
        // A false positive ranked first: precision 1/2 at recall 1/2 and
        // 2/3 at recall 1; interpolated (the best to the right) 2/3 throughout.
        let fp_first = vec![
            vec![
                d(0, 0.95, 50.0, 50.0, 60.0, 60.0),
                d(0, 0.9, 0.0, 0.0, 10.0, 10.0),
            ],
            vec![d(0, 0.8, 20.0, 20.0, 30.0, 30.0)],
        ];
        let ap = mean_ap(&fp_first, &truths, 10, 0.5);
        assert!((ap - 2.0 / 3.0).abs() < 1e-12, "{ap}");
        // One found, one missed: AP 0.5. The wrong class counts for nothing.
        let half = vec![
            vec![d(0, 0.9, 0.0, 0.0, 10.0, 10.0)],
            vec![d(1, 0.9, 20.0, 20.0, 30.0, 30.0)],
        ];
        assert!((mean_ap(&half, &truths, 10, 0.5) - 0.5).abs() < 1e-12);
        // A duplicate of a found object is a false positive.
        let dup = vec![
            vec![
                d(0, 0.9, 0.0, 0.0, 10.0, 10.0),
                d(0, 0.85, 0.0, 0.0, 10.0, 10.0),
            ],
            vec![],
        ];
        let ap = mean_ap(&dup, &truths, 10, 0.5);
        assert!((ap - 0.5).abs() < 1e-12, "{ap}");
        assert_eq!(mean_ap(&[vec![], vec![]], &truths, 10, 0.5), 0.0);
    }
}
