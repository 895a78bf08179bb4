//! Arbitrary bytes as the stream of an inbound peer connection: the hello and frame decoders
//! must never panic or over-allocate, and a decoded hello must re-encode to its bytes.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    atoll_net::fuzz::decode_peer_frame_bytes(data);
});
