//! Split computing's features on the wire: a head's output tensor encoded
//! compactly (8-bit affine per sample, or lossless f32) and compressed with
//! zstd, and the checked way back. Decoding is bounded by the shape the
//! receiver expects, so a small message cannot inflate past it.

use proto::{FeatureCompression, FeatureEncoding, Features};

/// How features are put on the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FeatureCodec {
    /// One byte per element, min..max of each sample over 0..255, zstd.
    U8Zstd,
    /// Lossless float32, zstd.
    F32Zstd,
}

/// zstd's fastest level: features are compressed per task on the edge's
/// CPU, where time is scarcer than bytes at this level's ratio.
const ZSTD_LEVEL: i32 = 1;

/// Encodes `values` of `shape` (`[N, ...]`, row-major) for `split_point`.
pub fn encode_features(
    split_point: &str,
    shape: &[i64],
    values: &[f32],
    codec: FeatureCodec,
) -> Result<Features, String> {
    let n = shape.first().copied().unwrap_or(0);
    let total = elements(shape).ok_or_else(|| format!("invalid shape {shape:?}"))?;
    if n < 1 || total != values.len() {
        return Err(format!(
            "shape {shape:?} does not hold {} values",
            values.len()
        ));
    }
    if values.iter().any(|v| !v.is_finite()) {
        return Err("features are not finite".into());
    }
    let per = total / n as usize;
    let (encoding, raw, scale, offset) = match codec {
        FeatureCodec::U8Zstd => {
            let mut raw = Vec::with_capacity(total);
            let (mut scale, mut offset) = (Vec::new(), Vec::new());
            for sample in values.chunks(per.max(1)) {
                let lo = sample.iter().copied().fold(f32::INFINITY, f32::min);
                let hi = sample.iter().copied().fold(f32::NEG_INFINITY, f32::max);
                let s = if hi > lo { (hi - lo) / 255.0 } else { 1.0 };
                raw.extend(
                    sample
                        .iter()
                        .map(|v| ((v - lo) / s).round().clamp(0.0, 255.0) as u8),
                );
                scale.push(s);
                offset.push(lo);
            }
            (FeatureEncoding::U8Affine, raw, scale, offset)
        }
        FeatureCodec::F32Zstd => (
            FeatureEncoding::F32,
            values.iter().flat_map(|v| v.to_le_bytes()).collect(),
            Vec::new(),
            Vec::new(),
        ),
    };
    let data = zstd::bulk::compress(&raw, ZSTD_LEVEL).map_err(|e| format!("zstd: {e}"))?;
    Ok(Features {
        split_point: split_point.into(),
        shape: shape.to_vec(),
        encoding: encoding as i32,
        scale,
        offset,
        compression: FeatureCompression::Zstd as i32,
        data,
        source_width: 0,
        source_height: 0,
    })
}

/// Elements a shape holds (`None` for a negative size or an overflow).
fn elements(shape: &[i64]) -> Option<usize> {
    shape.iter().try_fold(1usize, |n, &d| {
        usize::try_from(d).ok().and_then(|d| n.checked_mul(d))
    })
}

/// Decodes features whose one sample must have shape `sample` (`C, H, W`)
/// and whose batch holds at most `max_batch` samples: the values,
/// row-major, and the batch size. Every mismatch is a clear error.
pub fn decode_features(
    f: &Features,
    sample: &[i64],
    max_batch: usize,
) -> Result<(Vec<f32>, usize), String> {
    let (n, rest) = f
        .shape
        .split_first()
        .ok_or_else(|| "features without a shape".to_string())?;
    if rest != sample {
        return Err(format!(
            "features of shape {:?} do not fit split point {:?}, which gives [N, {}]",
            f.shape,
            f.split_point,
            sample
                .iter()
                .map(i64::to_string)
                .collect::<Vec<_>>()
                .join(", ")
        ));
    }
    let n = usize::try_from(*n)
        .ok()
        .filter(|n| (1..=max_batch).contains(n))
        .ok_or_else(|| format!("batch of {n} samples (1..={max_batch} allowed)"))?;
    let per = elements(sample).ok_or_else(|| format!("invalid split shape {sample:?}"))?;
    let total = per
        .checked_mul(n)
        .ok_or_else(|| "features too large".to_string())?;
    let width = match FeatureEncoding::try_from(f.encoding) {
        Ok(FeatureEncoding::U8Affine) => 1,
        Ok(FeatureEncoding::F32) => 4,
        _ => return Err(format!("unknown feature encoding {}", f.encoding)),
    };
    let want = total * width;
    let raw = match FeatureCompression::try_from(f.compression) {
        Ok(FeatureCompression::None) => f.data.clone(),
        // Bounded: more than the shape holds is an error, not an allocation.
        Ok(FeatureCompression::Zstd) => zstd::bulk::decompress(&f.data, want)
            .map_err(|e| format!("features do not decompress within {want} bytes: {e}"))?,
        _ => return Err(format!("unknown feature compression {}", f.compression)),
    };
    if raw.len() != want {
        return Err(format!(
            "features hold {} bytes, shape {:?} needs {want}",
            raw.len(),
            f.shape
        ));
    }
    let values: Vec<f32> = match width {
        1 => {
            if f.scale.len() != n || f.offset.len() != n {
                return Err(format!(
                    "{} scales and {} offsets for {n} samples",
                    f.scale.len(),
                    f.offset.len()
                ));
            }
            if f.scale.iter().chain(&f.offset).any(|v| !v.is_finite()) {
                return Err("a scale or offset is not finite".into());
            }
            raw.chunks(per.max(1))
                .zip(f.scale.iter().zip(&f.offset))
                .flat_map(|(q, (s, o))| q.iter().map(move |&q| f32::from(q) * s + o))
                .collect()
        }
        _ => raw
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            .collect(),
    };
    if values.iter().any(|v| !v.is_finite()) {
        return Err("features are not finite".into());
    }
    Ok((values, n))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ramp(n: usize) -> Vec<f32> {
        (0..n)
            .map(|i| ((i * 37) % 101) as f32 * 0.05 - 1.0)
            .collect()
    }

    #[test]
    fn u8_round_trip_is_within_half_a_step() {
        let v = ramp(2 * 4 * 3 * 3);
        let f = encode_features("p", &[2, 4, 3, 3], &v, FeatureCodec::U8Zstd).unwrap();
        assert_eq!(f.scale.len(), 2);
        let (back, n) = decode_features(&f, &[4, 3, 3], 8).unwrap();
        assert_eq!(n, 2);
        for (sample, s) in v.chunks(36).zip(back.chunks(36)).zip(&f.scale) {
            let (a, b) = sample;
            for (x, y) in a.iter().zip(b) {
                assert!((x - y).abs() <= s / 2.0 + 1e-6, "{x} vs {y}, step {s}");
            }
        }
    }

    #[test]
    fn f32_round_trip_is_exact_and_constant_samples_survive() {
        let v = ramp(2 * 8);
        let f = encode_features("p", &[1, 2, 8], &v, FeatureCodec::F32Zstd).unwrap();
        assert_eq!(decode_features(&f, &[2, 8], 1).unwrap().0, v);
        let flat = vec![3.5f32; 16];
        let f = encode_features("p", &[1, 16], &flat, FeatureCodec::U8Zstd).unwrap();
        assert_eq!(decode_features(&f, &[16], 1).unwrap().0, flat);
    }

    #[test]
    fn compresses_sparse_features() {
        // ReLU outputs: mostly zeros.
        let v: Vec<f32> = (0..4096)
            .map(|i| if i % 7 == 0 { i as f32 } else { 0.0 })
            .collect();
        let f = encode_features("p", &[1, 4096], &v, FeatureCodec::U8Zstd).unwrap();
        assert!(f.data.len() < 1024, "{} bytes", f.data.len());
    }

    #[test]
    fn refuses_what_does_not_fit() {
        let v = ramp(24);
        let good = encode_features("p", &[1, 2, 3, 4], &v, FeatureCodec::U8Zstd).unwrap();
        let err = |f: &Features, sample: &[i64]| decode_features(f, sample, 4).unwrap_err();
        assert!(err(&good, &[2, 4, 3]).contains("do not fit"));
        let mut f = good.clone();
        f.shape = vec![9, 2, 3, 4];
        assert!(err(&f, &[2, 3, 4]).contains("batch of 9"));
        let mut f = good.clone();
        f.data = zstd::bulk::compress(&[0u8; 4096], 1).unwrap();
        assert!(err(&f, &[2, 3, 4]).contains("decompress"));
        let mut f = good.clone();
        f.scale.clear();
        assert!(err(&f, &[2, 3, 4]).contains("scales"));
        let mut f = good.clone();
        f.encoding = 42;
        assert!(err(&f, &[2, 3, 4]).contains("encoding"));
        let mut f = good.clone();
        f.compression = FeatureCompression::None as i32;
        assert!(err(&f, &[2, 3, 4]).contains("bytes"));
        assert!(encode_features("p", &[1, 5], &v, FeatureCodec::U8Zstd).is_err());
        assert!(encode_features("p", &[1, 1], &[f32::NAN], FeatureCodec::U8Zstd).is_err());
    }
}
