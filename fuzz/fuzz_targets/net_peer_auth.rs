//! Arbitrary bytes as the other side of the peer handshake (hello, CHALLENGE, AUTH): nothing
//! panics, and a MAC is accepted exactly when it is the honest one.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    atoll_net::fuzz::peer_handshake(data);
});
