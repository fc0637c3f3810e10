//! A QUIC stream's bytes as the cloud's listener (a request) and the edge's
//! offloader (a response) decode them.
#![no_main]

use agent_net::wire::{
    decode_request_frame, decode_response_frame, encode_frame, output_from_response,
    task_from_request,
};
use libfuzzer_sys::fuzz_target;
use std::time::{Instant, SystemTime};

fuzz_target!(|data: &[u8]| {
    if let Ok(req) = decode_request_frame(data) {
        let again =
            decode_request_frame(&encode_frame(&req)).expect("a re-encoded request decodes");
        assert_eq!(again, req);
        let _ = task_from_request(req, Instant::now(), SystemTime::now());
    }
    if let Ok(resp) = decode_response_frame(data) {
        let again =
            decode_response_frame(&encode_frame(&resp)).expect("a re-encoded response decodes");
        // Floats may be NaN: compare encodings.
        assert_eq!(encode_frame(&again), encode_frame(&resp));
        let _ = output_from_response(&resp);
    }
});
