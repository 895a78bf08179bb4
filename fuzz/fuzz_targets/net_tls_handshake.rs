//! Arbitrary bytes (raw, or mixed into a genuine ClientHello) at a TLS node's reactor on
//! loopback: nothing panics, and a good TLS client is still served.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    atoll_net::fuzz::tls_handshake(data);
});
