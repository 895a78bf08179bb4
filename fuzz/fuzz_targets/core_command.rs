//! Arbitrary bytes as a Raft command (or, with an odd first byte, a well-formed command built
//! from bounded values): decoded and, when they decode, applied to a scratch database.
//! Malformed commands must be rejected before anything is written; nothing may panic.
#![no_main]

use std::cell::RefCell;

use libfuzzer_sys::fuzz_target;

thread_local! {
    static SCRATCH: RefCell<atoll_core::fuzzing::Scratch> =
        RefCell::new(atoll_core::fuzzing::Scratch::new());
}

fuzz_target!(|data: &[u8]| {
    SCRATCH.with(|scratch| scratch.borrow_mut().run_input(data));
});
