//! The held-out sets of the workload models (`models/train_workloads.py`
//! writes them; formats in models/README.md): labelled 96x96 JPEG images,
//! 256x256 JPEG scenes with their boxes, and labelled review snippets.
//! Every length read from a file is checked against what remains of it, so
//! a damaged file is an error, never a large allocation.

use anyhow::{bail, Context, Result};
use std::path::Path;

/// One image of `heldout_images.bin`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LabelledImage {
    /// Fashion-MNIST class, 0..=9.
    pub label: u8,
    pub jpeg: Vec<u8>,
}

/// A ground-truth box of a scene, in pixels.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct TruthBox {
    pub class: u8,
    pub x1: f32,
    pub y1: f32,
    pub x2: f32,
    pub y2: f32,
}

/// One scene of `heldout_scenes.bin`.
#[derive(Debug, Clone, PartialEq)]
pub struct Scene {
    pub jpeg: Vec<u8>,
    pub boxes: Vec<TruthBox>,
}

/// One line of `heldout_text.jsonl`.
#[derive(Debug, Clone, PartialEq, Eq, serde::Deserialize)]
pub struct Review {
    /// 0 rotten, 1 fresh.
    pub label: u8,
    pub text: String,
}

pub const IMAGES_MAGIC: &[u8; 8] = b"EDGEIMG1";
pub const SCENES_MAGIC: &[u8; 8] = b"EDGEDET1";
const CLASSES: u8 = 10;

/// A cursor over a file's bytes that refuses to read past the end.
struct Reader<'a> {
    bytes: &'a [u8],
    at: usize,
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize, what: &str) -> Result<&'a [u8]> {
        let end = self.at.checked_add(n).filter(|&e| e <= self.bytes.len());
        let Some(end) = end else {
            bail!(
                "truncated at byte {}: {what} needs {n} bytes, {} remain",
                self.at,
                self.bytes.len() - self.at
            );
        };
        let s = &self.bytes[self.at..end];
        self.at = end;
        Ok(s)
    }

    fn u8(&mut self, what: &str) -> Result<u8> {
        Ok(self.take(1, what)?[0])
    }

    fn u32(&mut self, what: &str) -> Result<u32> {
        let b = self.take(4, what)?;
        Ok(u32::from_le_bytes(b.try_into().expect("4 bytes")))
    }

    fn f32(&mut self, what: &str) -> Result<f32> {
        let b = self.take(4, what)?;
        Ok(f32::from_le_bytes(b.try_into().expect("4 bytes")))
    }

    fn header(&mut self, magic: &[u8; 8]) -> Result<u32> {
        if self.take(8, "the magic")? != magic {
            bail!("missing magic {}", String::from_utf8_lossy(magic));
        }
        self.u32("the count")
    }

    fn finish(&self) -> Result<()> {
        if self.at != self.bytes.len() {
            bail!("{} bytes after the last record", self.bytes.len() - self.at);
        }
        Ok(())
    }
}

pub fn parse_images(bytes: &[u8]) -> Result<Vec<LabelledImage>> {
    let mut r = Reader { bytes, at: 0 };
    let n = r.header(IMAGES_MAGIC)?;
    let mut out = Vec::new();
    for i in 0..n {
        let label = r.u8("a label")?;
        if label >= CLASSES {
            bail!("image {i}: label {label} out of range");
        }
        let len = r.u32("a length")? as usize;
        let jpeg = r.take(len, "a JPEG")?.to_vec();
        out.push(LabelledImage { label, jpeg });
    }
    r.finish()?;
    Ok(out)
}

pub fn parse_scenes(bytes: &[u8]) -> Result<Vec<Scene>> {
    let mut r = Reader { bytes, at: 0 };
    let n = r.header(SCENES_MAGIC)?;
    let mut out = Vec::new();
    for i in 0..n {
        let len = r.u32("a length")? as usize;
        let jpeg = r.take(len, "a JPEG")?.to_vec();
        let count = r.u8("a box count")?;
        let mut boxes = Vec::with_capacity(usize::from(count));
        for _ in 0..count {
            let class = r.u8("a class")?;
            if class >= CLASSES {
                bail!("scene {i}: class {class} out of range");
            }
            let b = TruthBox {
                class,
                x1: r.f32("x1")?,
                y1: r.f32("y1")?,
                x2: r.f32("x2")?,
                y2: r.f32("y2")?,
            };
            if !(b.x1 < b.x2 && b.y1 < b.y2) {
                bail!("scene {i}: empty box {b:?}");
            }
            boxes.push(b);
        }
        out.push(Scene { jpeg, boxes });
    }
    r.finish()?;
    Ok(out)
}

pub fn parse_reviews(text: &str) -> Result<Vec<Review>> {
    text.lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
        .map(|(i, l)| {
            let r: Review = serde_json::from_str(l).with_context(|| format!("line {}", i + 1))?;
            if r.label > 1 {
                bail!("line {}: label {} is neither 0 nor 1", i + 1, r.label);
            }
            Ok(r)
        })
        .collect()
}

fn read(name: &str) -> Result<Vec<u8>> {
    let path = crate::resolve(&Path::new("models").join(name), None);
    std::fs::read(&path).with_context(|| format!("reading {}", path.display()))
}

/// `models/heldout_images.bin`, found beside the models.
pub fn images() -> Result<Vec<LabelledImage>> {
    parse_images(&read("heldout_images.bin")?).context("parsing heldout_images.bin")
}

/// `models/heldout_scenes.bin`, found beside the models.
pub fn scenes() -> Result<Vec<Scene>> {
    parse_scenes(&read("heldout_scenes.bin")?).context("parsing heldout_scenes.bin")
}

/// `models/heldout_text.jsonl`, found beside the models.
pub fn reviews() -> Result<Vec<Review>> {
    let bytes = read("heldout_text.jsonl")?;
    let text = std::str::from_utf8(&bytes).context("heldout_text.jsonl is not UTF-8")?;
    parse_reviews(text).context("parsing heldout_text.jsonl")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn images_file(records: &[(u8, &[u8])]) -> Vec<u8> {
        let mut b = IMAGES_MAGIC.to_vec();
        b.extend((records.len() as u32).to_le_bytes());
        for (label, jpeg) in records {
            b.push(*label);
            b.extend((jpeg.len() as u32).to_le_bytes());
            b.extend(*jpeg);
        }
        b
    }

    #[test]
    fn images_parse_and_damage_is_refused() {
        let b = images_file(&[(3, b"\xff\xd8ab"), (9, b"\xff\xd8")]);
        let v = parse_images(&b).unwrap();
        assert_eq!(v.len(), 2);
        assert_eq!((v[0].label, v[0].jpeg.as_slice()), (3, &b"\xff\xd8ab"[..]));
        assert!(parse_images(&b[..b.len() - 1]).is_err(), "truncated");
        let mut extra = b.clone();
        extra.push(0);
        assert!(parse_images(&extra).is_err(), "trailing bytes");
        assert!(parse_images(&images_file(&[(10, b"x")])).is_err(), "label");
        // A length far beyond the file is an error, not an allocation.
        let mut huge = IMAGES_MAGIC.to_vec();
        huge.extend(1u32.to_le_bytes());
        huge.push(1);
        huge.extend(u32::MAX.to_le_bytes());
        assert!(parse_images(&huge).is_err());
        assert!(parse_images(b"EDGEDET1\0\0\0\0").is_err(), "magic");
    }

    #[test]
    fn scenes_parse_and_bad_boxes_are_refused() {
        let mut b = SCENES_MAGIC.to_vec();
        b.extend(1u32.to_le_bytes());
        b.extend(2u32.to_le_bytes());
        b.extend(b"\xff\xd8");
        b.push(1);
        b.push(4);
        for v in [10.0f32, 20.0, 50.0, 60.0] {
            b.extend(v.to_le_bytes());
        }
        let s = parse_scenes(&b).unwrap();
        assert_eq!(s[0].boxes.len(), 1);
        assert_eq!(s[0].boxes[0].class, 4);
        assert_eq!((s[0].boxes[0].x2, s[0].boxes[0].y2), (50.0, 60.0));
        let mut empty_box = b.clone();
        let n = empty_box.len();
        empty_box[n - 8..n - 4].copy_from_slice(&5.0f32.to_le_bytes());
        assert!(parse_scenes(&empty_box).is_err());
        assert!(parse_scenes(&b[..b.len() - 2]).is_err());
    }

    #[test]
    fn reviews_parse_and_bad_labels_are_refused() {
        let r = parse_reviews(
            "{\"label\": 1, \"text\": \"Great fun.\"}\n\n{\"label\": 0, \"text\": \"Dull\"}\n",
        )
        .unwrap();
        assert_eq!(r.len(), 2);
        assert_eq!((r[0].label, r[0].text.as_str()), (1, "Great fun."));
        assert!(parse_reviews("{\"label\": 2, \"text\": \"x\"}").is_err());
        assert!(parse_reviews("not json").is_err());
    }
}
