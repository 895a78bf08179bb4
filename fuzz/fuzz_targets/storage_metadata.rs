//! Arbitrary bytes as a metadata file: a valid record round-trips, anything else is rejected.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|bytes: &[u8]| {
    atoll_storage::fuzz::recover_metadata_bytes(bytes);
});
