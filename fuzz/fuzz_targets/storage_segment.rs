//! Arbitrary bytes as a segment file: recovery keeps a clean prefix of valid records or
//! rejects the file, and never panics or reads out of bounds.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|bytes: &[u8]| {
    atoll_storage::fuzz::recover_segment_bytes(bytes);
});
