//! An image payload (JPEG, PNG or anything else) as the agent checks and
//! decodes it for an image model.
#![no_main]

use agent::infer::{prepare, InputSpec, Prepared};
use libfuzzer_sys::fuzz_target;

/// Small enough that the fuzzer is not slowed by legitimate big images.
const MAX_PIXELS: u64 = 512 * 512;

fuzz_target!(|data: &[u8]| {
    let spec = InputSpec::Image {
        height: 32,
        width: 32,
        max_pixels: MAX_PIXELS,
    };
    match prepare(&spec, data, None) {
        Ok(Prepared::Rgb {
            data,
            height,
            width,
            source,
        }) => {
            assert_eq!((height, width), (32, 32));
            assert_eq!(data.len(), 32 * 32 * 3);
            assert!(source.0 >= 1 && source.1 >= 1);
            assert!(u64::from(source.0) * u64::from(source.1) <= MAX_PIXELS);
        }
        Ok(other) => panic!("an image spec prepared {other:?}"),
        Err(_) => {}
    }
});
