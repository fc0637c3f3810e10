//! A text payload as the agent checks and tokenizes it; the input up to
//! the first NUL byte is the vocabulary file, the rest the payload.
#![no_main]

use agent::infer::{prepare, InputSpec, Prepared, Vocab};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let (vocab, payload) = match data.iter().position(|&b| b == 0) {
        Some(i) => (&data[..i], &data[i + 1..]),
        None => (&b"the\ngreat\nfilm\n"[..], data),
    };
    let vocab = Vocab::parse(&String::from_utf8_lossy(vocab));
    let max_tokens = 16;
    let spec = InputSpec::Text {
        vocab: "fuzz".into(),
        max_tokens,
        max_bytes: 4096,
    };
    match prepare(&spec, payload, Some(&vocab)) {
        Ok(Prepared::Tokens(ids)) => {
            assert!(payload.len() <= 4096 && std::str::from_utf8(payload).is_ok());
            assert_eq!(ids.len(), max_tokens);
            let top = vocab.len() as i64 + 2;
            assert!(ids.iter().all(|&id| (0..top).contains(&id)), "{ids:?}");
        }
        Ok(other) => panic!("a text spec prepared {other:?}"),
        Err(_) => assert!(payload.len() > 4096 || std::str::from_utf8(payload).is_err()),
    }
});
