//! The held-out digits test set shipped in `models/digits_test.bin`:
//! magic "DIGITS01", u32 LE count, then records of 1 label byte + 64 pixels.

use anyhow::{bail, Context, Result};
use std::path::Path;

pub const IMAGE_BYTES: usize = 64;

#[derive(Debug, Clone)]
pub struct Sample {
    pub label: u8,
    pub pixels: Vec<u8>,
}

pub fn parse(bytes: &[u8]) -> Result<Vec<Sample>> {
    if bytes.len() < 12 || &bytes[..8] != b"DIGITS01" {
        bail!("not a digits test set (missing DIGITS01 magic)");
    }
    let n = u32::from_le_bytes(bytes[8..12].try_into().expect("4 bytes")) as usize;
    let body = &bytes[12..];
    let rec = 1 + IMAGE_BYTES;
    if body.len() != n * rec {
        bail!(
            "digits test set says {n} records but holds {} bytes",
            body.len()
        );
    }
    body.chunks_exact(rec)
        .map(|r| {
            if r[0] > 9 {
                bail!("label {} out of range", r[0]);
            }
            Ok(Sample {
                label: r[0],
                pixels: r[1..].to_vec(),
            })
        })
        .collect()
}

pub fn load(path: &Path) -> Result<Vec<Sample>> {
    let bytes = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    parse(&bytes).with_context(|| format!("parsing {}", path.display()))
}

/// The bundled test set, found next to the models.
pub fn load_default() -> Result<Vec<Sample>> {
    load(&crate::resolve(Path::new("models/digits_test.bin"), None))
}

/// Reads an 8x8 binary PGM (P5, maxval 255) as a payload.
pub fn read_pgm(path: &Path) -> Result<Vec<u8>> {
    let bytes = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    let mut fields = Vec::new();
    let mut i = 0;
    // Header: magic, width, height, maxval, separated by whitespace; '#' comments.
    while fields.len() < 4 && i < bytes.len() {
        while i < bytes.len() && bytes[i].is_ascii_whitespace() {
            i += 1;
        }
        if i < bytes.len() && bytes[i] == b'#' {
            while i < bytes.len() && bytes[i] != b'\n' {
                i += 1;
            }
            continue;
        }
        let start = i;
        while i < bytes.len() && !bytes[i].is_ascii_whitespace() {
            i += 1;
        }
        fields.push(String::from_utf8_lossy(&bytes[start..i]).to_string());
    }
    if fields.len() < 4 || fields[0] != "P5" {
        bail!("{}: not a binary PGM (P5)", path.display());
    }
    let (w, h, max): (usize, usize, usize) =
        (fields[1].parse()?, fields[2].parse()?, fields[3].parse()?);
    if max != 255 {
        bail!("{}: maxval {max}, expected 255", path.display());
    }
    let data = &bytes[(i + 1).min(bytes.len())..];
    if data.len() < w * h {
        bail!("{}: truncated pixel data", path.display());
    }
    Ok(data[..w * h].to_vec())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_rejects() {
        let mut b = b"DIGITS01".to_vec();
        b.extend(2u32.to_le_bytes());
        b.push(3);
        b.extend([0u8; 64]);
        b.push(9);
        b.extend([255u8; 64]);
        let s = parse(&b).unwrap();
        assert_eq!(s.len(), 2);
        assert_eq!((s[0].label, s[1].label, s[1].pixels[63]), (3, 9, 255));
        assert!(parse(&b[..b.len() - 1]).is_err());
        assert!(parse(b"DIGITS00\0\0\0\0").is_err());
    }
}
