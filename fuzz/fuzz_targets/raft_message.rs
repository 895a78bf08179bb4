//! Decodes arbitrary bytes as a raft message: never a panic, never unbounded allocation, and
//! whatever decodes re-encodes to the same bytes.

#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    atoll_raft::codec::fuzz_decode_message(data);
});
