//! Arbitrary bytes as the start of a snapshot file: its header and configuration decode and
//! pass their crc, or are rejected; never a panic or an out-of-bounds read.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|bytes: &[u8]| {
    atoll_storage::fuzz::decode_snapshot_bytes(bytes);
});
