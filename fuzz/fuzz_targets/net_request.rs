//! Arbitrary bytes as a stream of client requests: the dqlite request decoder must never panic
//! or over-allocate, and what it decodes must re-encode to itself.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    atoll_net::fuzz::decode_request_bytes(data);
    atoll_net::fuzz::decode_request_message(data);
});
