//! Payloads as users send them, turned into model inputs: raw grayscale,
//! encoded images (JPEG, PNG; the `image` crate) and UTF-8 text. The checks
//! run before any decoding, so a decompression bomb, a truncated file or
//! invalid UTF-8 is a clear error and never a large allocation or a panic.

use super::spec::{InputSpec, ModelSpec};
use super::tokenizer::Vocab;
use agent_core::TaskError;
use image::{ImageFormat, ImageReader, Limits};
use std::io::Cursor;

/// The largest side an image may have, whatever `max_pixels` allows.
const MAX_SIDE: u32 = 16_384;

/// A payload decoded into what the model takes.
#[derive(Debug, Clone, PartialEq)]
pub enum Prepared {
    /// `height * width` bytes, row-major.
    Gray8(Vec<u8>),
    /// RGB bytes, `height * width * 3`, rows then columns; `source` is the
    /// size the image was sent at (boxes are scaled back to it).
    Rgb {
        data: Vec<u8>,
        height: u32,
        width: u32,
        source: (u32, u32),
    },
    /// Token ids, padded to the model's length.
    Tokens(Vec<i64>),
}

fn reader(payload: &[u8]) -> Result<ImageReader<Cursor<&[u8]>>, String> {
    let r = ImageReader::new(Cursor::new(payload))
        .with_guessed_format()
        .map_err(|e| format!("unreadable image: {e}"))?;
    match r.format() {
        Some(ImageFormat::Jpeg | ImageFormat::Png) => Ok(r),
        Some(f) => Err(format!("unsupported image format {f:?} (JPEG or PNG)")),
        None => Err("not a JPEG or PNG image".into()),
    }
}

/// Width and height from the image's header, checked against the limits.
fn dimensions(payload: &[u8], max_pixels: u64) -> Result<(u32, u32), String> {
    let (w, h) = reader(payload)?
        .into_dimensions()
        .map_err(|e| format!("unreadable image header: {e}"))?;
    if w == 0 || h == 0 || w > MAX_SIDE || h > MAX_SIDE || u64::from(w) * u64::from(h) > max_pixels
    {
        return Err(format!(
            "image of {w}x{h} pixels exceeds the limit ({max_pixels} pixels, {MAX_SIDE} a side)"
        ));
    }
    Ok((w, h))
}

impl ModelSpec {
    /// Checks a payload without decoding it: size, image header and
    /// dimensions, UTF-8.
    pub fn validate_payload(&self, payload: &[u8]) -> Result<(), TaskError> {
        check(&self.input(), payload)
            .map_err(|e| TaskError::InvalidInput(format!("{}: {e}", self.name)))
    }
}

/// Checks a payload without decoding it.
pub fn check(spec: &InputSpec, payload: &[u8]) -> Result<(), String> {
    match spec {
        InputSpec::Gray8 { height, width } => {
            let want = height * width;
            if payload.len() != want {
                return Err(format!(
                    "expects a {height}x{width} grayscale image ({want} bytes), got {} bytes",
                    payload.len()
                ));
            }
            Ok(())
        }
        InputSpec::Image { max_pixels, .. } => dimensions(payload, *max_pixels).map(drop),
        InputSpec::Text { max_bytes, .. } => {
            if payload.len() > *max_bytes {
                return Err(format!(
                    "text of {} bytes exceeds the limit of {max_bytes} bytes",
                    payload.len()
                ));
            }
            std::str::from_utf8(payload)
                .map(drop)
                .map_err(|e| format!("text is not valid UTF-8: {e}"))
        }
    }
}

/// Decodes a payload into the model's input (`vocab` for text models).
pub fn prepare(
    spec: &InputSpec,
    payload: &[u8],
    vocab: Option<&Vocab>,
) -> Result<Prepared, String> {
    check(spec, payload)?;
    match spec {
        InputSpec::Gray8 { .. } => Ok(Prepared::Gray8(payload.to_vec())),
        InputSpec::Image {
            height,
            width,
            max_pixels,
        } => {
            let (w, h) = dimensions(payload, *max_pixels)?;
            let mut r = reader(payload)?;
            let mut limits = Limits::default();
            limits.max_image_width = Some(w);
            limits.max_image_height = Some(h);
            // Room for the decoded image at 4 bytes a pixel and the decoder's own buffers.
            limits.max_alloc = Some(u64::from(w) * u64::from(h) * 8 + (1 << 20));
            r.limits(limits);
            let img = r
                .decode()
                .map_err(|e| format!("undecodable image: {e}"))?
                .into_rgb8();
            let (tw, th) = (*width as u32, *height as u32);
            let img = if img.dimensions() == (tw, th) {
                img
            } else {
                image::imageops::resize(&img, tw, th, image::imageops::FilterType::Triangle)
            };
            Ok(Prepared::Rgb {
                data: img.into_raw(),
                height: th,
                width: tw,
                source: (w, h),
            })
        }
        InputSpec::Text { max_tokens, .. } => {
            let vocab = vocab.ok_or("no vocabulary loaded for a text model")?;
            let text = std::str::from_utf8(payload).map_err(|e| e.to_string())?;
            Ok(Prepared::Tokens(vocab.encode(text, *max_tokens)))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn png(w: u32, h: u32) -> Vec<u8> {
        let img = image::RgbImage::from_fn(w, h, |x, y| image::Rgb([x as u8, y as u8, 7]));
        let mut out = Cursor::new(Vec::new());
        img.write_to(&mut out, ImageFormat::Png).unwrap();
        out.into_inner()
    }

    fn image_spec(side: usize, max_pixels: u64) -> InputSpec {
        InputSpec::Image {
            height: side,
            width: side,
            max_pixels,
        }
    }

    #[test]
    fn images_decode_and_resize_to_the_model_size() {
        let spec = image_spec(16, 1 << 20);
        match prepare(&spec, &png(16, 16), None).unwrap() {
            Prepared::Rgb {
                data,
                height,
                width,
                source,
            } => {
                assert_eq!((height, width, source), (16, 16, (16, 16)));
                // Pixel (x=3, y=2) keeps its bytes: no resize at the model size.
                assert_eq!(&data[(2 * 16 + 3) * 3..][..3], &[3, 2, 7]);
            }
            other => panic!("{other:?}"),
        }
        match prepare(&spec, &png(40, 20), None).unwrap() {
            Prepared::Rgb { data, source, .. } => {
                assert_eq!(data.len(), 16 * 16 * 3);
                assert_eq!(source, (40, 20));
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn bad_images_are_refused_before_decoding() {
        let spec = image_spec(16, 100 * 100);
        let ok = png(16, 16);
        // Truncated: the header is there, the data is not.
        assert!(prepare(&spec, &ok[..ok.len() / 2], None).is_err());
        assert!(check(&spec, b"GIF89a....").is_err());
        assert!(check(&spec, b"").is_err());
        // A header that claims more pixels than allowed is refused from the header alone.
        let big = png(200, 200);
        let e = check(&spec, &big).unwrap_err();
        assert!(e.contains("exceeds the limit"), "{e}");
        // A PNG whose header claims 60000 x 60000 (a decompression bomb).
        let mut bomb = ok.clone();
        bomb[16..20].copy_from_slice(&60_000u32.to_be_bytes());
        bomb[20..24].copy_from_slice(&60_000u32.to_be_bytes());
        assert!(check(&image_spec(16, u64::MAX), &bomb).is_err());
    }

    #[test]
    fn text_is_checked_for_size_and_utf8() {
        let spec = InputSpec::Text {
            vocab: "unused".into(),
            max_tokens: 4,
            max_bytes: 10,
        };
        assert!(check(&spec, "fine".as_bytes()).is_ok());
        assert!(check(&spec, &[0x66, 0xff, 0x66]).is_err());
        assert!(check(&spec, "far too long here".as_bytes()).is_err());
        let vocab = Vocab::parse("great\nfun\n");
        assert_eq!(
            prepare(&spec, b"GREAT fun", Some(&vocab)).unwrap(),
            Prepared::Tokens(vec![2, 3, 0, 0])
        );
        assert!(prepare(&spec, b"x", None).is_err());
    }

    #[test]
    fn gray_payloads_need_the_exact_size() {
        let spec = InputSpec::Gray8 {
            height: 2,
            width: 3,
        };
        assert!(check(&spec, &[0; 6]).is_ok());
        assert!(check(&spec, &[0; 5]).is_err());
    }
}

/// Property tests of the payload decoders: whatever bytes a client sends,
/// `check` and `prepare` answer with the model's input or an error, never
/// a panic or an allocation past the pixel limit. Image cases are few:
/// decoding is slow in debug builds.
#[cfg(test)]
mod proptests {
    use super::*;
    use proptest::prelude::*;

    fn encode(w: u32, h: u32, seed: u8, format: ImageFormat) -> Vec<u8> {
        let img = image::RgbImage::from_fn(w, h, |x, y| {
            image::Rgb([x as u8 ^ seed, y as u8, seed.wrapping_mul(3)])
        });
        let mut out = Cursor::new(Vec::new());
        img.write_to(&mut out, format).unwrap();
        out.into_inner()
    }

    fn crc32(bytes: &[u8]) -> u32 {
        let mut crc = !0u32;
        for &b in bytes {
            crc ^= u32::from(b);
            for _ in 0..8 {
                crc = (crc >> 1) ^ (0xEDB8_8320 & (crc & 1).wrapping_neg());
            }
        }
        !crc
    }

    /// A PNG signature and a well-formed IHDR claiming `w` x `h`, no pixel data.
    fn png_header(w: u32, h: u32) -> Vec<u8> {
        let mut chunk = b"IHDR".to_vec();
        chunk.extend_from_slice(&w.to_be_bytes());
        chunk.extend_from_slice(&h.to_be_bytes());
        chunk.extend_from_slice(&[8, 2, 0, 0, 0]);
        let mut png = b"\x89PNG\r\n\x1a\n".to_vec();
        png.extend_from_slice(&13u32.to_be_bytes());
        png.extend_from_slice(&chunk);
        png.extend_from_slice(&crc32(&chunk).to_be_bytes());
        png
    }

    const SIDE: usize = 8;
    const MAX_PIXELS: u64 = 64 * 64;

    fn image_spec() -> InputSpec {
        InputSpec::Image {
            height: SIDE,
            width: SIDE,
            max_pixels: MAX_PIXELS,
        }
    }

    /// What a successful image decode must look like.
    fn check_rgb(p: &Prepared) -> Result<(), TestCaseError> {
        match p {
            Prepared::Rgb {
                data,
                height,
                width,
                source,
            } => {
                prop_assert_eq!((*height, *width), (SIDE as u32, SIDE as u32));
                prop_assert_eq!(data.len(), SIDE * SIDE * 3);
                prop_assert!(source.0 >= 1 && source.1 >= 1);
                prop_assert!(u64::from(source.0) * u64::from(source.1) <= MAX_PIXELS);
            }
            other => prop_assert!(false, "an image spec prepared {other:?}"),
        }
        Ok(())
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(24))]

        #[test]
        fn damaged_images_decode_or_fail_without_panicking(
            w in 1..24u32,
            h in 1..24u32,
            jpeg in any::<bool>(),
            seed in any::<u8>(),
            flips in prop::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 0..6),
            cut in prop::option::of(any::<prop::sample::Index>()),
        ) {
            let mut bytes = encode(w, h, seed, if jpeg { ImageFormat::Jpeg } else { ImageFormat::Png });
            for (i, v) in flips {
                let at = i.index(bytes.len());
                bytes[at] = v;
            }
            if let Some(cut) = cut {
                bytes.truncate(cut.index(bytes.len()));
            }
            let checked = check(&image_spec(), &bytes);
            match prepare(&image_spec(), &bytes, None) {
                Ok(p) => {
                    prop_assert!(checked.is_ok());
                    check_rgb(&p)?;
                }
                Err(e) => prop_assert!(!e.is_empty()),
            }
        }

        #[test]
        fn valid_images_decode_at_their_size(
            w in 1..40u32,
            h in 1..40u32,
            jpeg in any::<bool>(),
            seed in any::<u8>(),
        ) {
            let bytes = encode(w, h, seed, if jpeg { ImageFormat::Jpeg } else { ImageFormat::Png });
            let p = prepare(&image_spec(), &bytes, None).unwrap();
            check_rgb(&p)?;
            let Prepared::Rgb { data, source, .. } = p else { unreachable!() };
            prop_assert_eq!(source, (w, h));
            if !jpeg && (w, h) == (SIDE as u32, SIDE as u32) {
                // Lossless and not resized: the pixels themselves.
                prop_assert_eq!(&data[..3], &[seed, 0, seed.wrapping_mul(3)]);
            }
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]

        #[test]
        fn arbitrary_bytes_are_refused_as_images_or_decoded(
            bytes in prop_oneof![
                prop::collection::vec(any::<u8>(), 0..256),
                // Past the format sniffing: a PNG or JPEG signature, then noise.
                (prop_oneof![Just(b"\x89PNG\r\n\x1a\n".to_vec()), Just(vec![0xFF, 0xD8, 0xFF])],
                 prop::collection::vec(any::<u8>(), 0..256))
                    .prop_map(|(mut sig, rest)| { sig.extend(rest); sig }),
            ],
        ) {
            match prepare(&image_spec(), &bytes, None) {
                Ok(p) => check_rgb(&p)?,
                Err(e) => prop_assert!(!e.is_empty()),
            }
        }

        #[test]
        fn headers_past_the_limits_are_refused_from_the_header(w in any::<u32>(), h in any::<u32>()) {
            let png = png_header(w, h);
            let within = w >= 1
                && h >= 1
                && w <= MAX_SIDE
                && h <= MAX_SIDE
                && u64::from(w) * u64::from(h) <= MAX_PIXELS;
            match check(&image_spec(), &png) {
                Ok(()) => prop_assert!(within, "{w}x{h} passed the check"),
                Err(e) => prop_assert!(!within || w == 0 || h == 0, "{w}x{h}: {e}"),
            }
            // There is no pixel data: never an image, whatever the header says.
            prop_assert!(prepare(&image_spec(), &png, None).is_err());
        }

        #[test]
        fn gray_payloads_pass_only_at_their_exact_size(
            height in 1..16usize,
            width in 1..16usize,
            bytes in prop::collection::vec(any::<u8>(), 0..300),
        ) {
            let spec = InputSpec::Gray8 { height, width };
            match prepare(&spec, &bytes, None) {
                Ok(Prepared::Gray8(data)) => prop_assert_eq!(data, bytes),
                Ok(other) => prop_assert!(false, "{other:?}"),
                Err(_) => prop_assert_ne!(bytes.len(), height * width),
            }
        }

        #[test]
        fn text_is_tokenized_within_the_limits_or_refused(
            bytes in prop_oneof![
                prop::collection::vec(any::<u8>(), 0..200),
                "[a-zA-Z0-9' .,é]{0,200}".prop_map(String::into_bytes),
            ],
            max_tokens in 1..32usize,
            max_bytes in 0..160usize,
        ) {
            let spec = InputSpec::Text { vocab: "unused".into(), max_tokens, max_bytes };
            let vocab = Vocab::parse("the\ngreat\nfilm\nit's\n9\n");
            let valid = bytes.len() <= max_bytes && std::str::from_utf8(&bytes).is_ok();
            prop_assert_eq!(check(&spec, &bytes).is_ok(), valid);
            match prepare(&spec, &bytes, Some(&vocab)) {
                Ok(Prepared::Tokens(ids)) => {
                    prop_assert!(valid);
                    prop_assert_eq!(ids.len(), max_tokens);
                    prop_assert!(ids.iter().all(|&id| (0..vocab.len() as i64 + 2).contains(&id)), "{ids:?}");
                    // Padding only at the end.
                    let first_pad = ids.iter().position(|&id| id == 0).unwrap_or(ids.len());
                    prop_assert!(ids[first_pad..].iter().all(|&id| id == 0), "{ids:?}");
                }
                Ok(other) => prop_assert!(false, "{other:?}"),
                Err(_) => prop_assert!(!valid),
            }
            // Without a vocabulary a text payload is never prepared.
            prop_assert!(prepare(&spec, &bytes, None).is_err());
        }
    }
}
