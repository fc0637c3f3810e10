//! A scenario file as the benchmark harness and netem-tun parse it.
#![no_main]

use jitter_lab::Scenario;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(s) = Scenario::parse(text) {
        // A valid scenario writes out and reads back the same. Compared as
        // text: a NaN that a direction's own value shadows is valid.
        let out = toml::to_string(&s).expect("a parsed scenario serializes");
        let back = Scenario::parse(&out).expect("a written scenario parses");
        assert_eq!(toml::to_string(&back).unwrap(), out);
    }
});
