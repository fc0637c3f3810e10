//! An agent configuration file as `agent --config` parses it.
#![no_main]

use agent::config::Config;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(c) = Config::parse(text) {
        let out = toml::to_string(&c).expect("a parsed configuration serializes");
        Config::parse(&out).expect("a written configuration parses");
    }
});
