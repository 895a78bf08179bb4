//! Entry points for the fuzz targets (`fuzz/fuzz_targets/net_request.rs`, `net_response.rs`,
//! `net_peer_frame.rs`) and for the seeded tests that feed them random bytes on stable.
//!
//! The property: arbitrary bytes never panic, never allocate more than the input justifies, and
//! decode to an error or to a value that re-encodes and decodes to itself.

use crate::protocol::{
    split_message, ClusterFormat, Header, ProtocolVersion, Request, Response, ResponseContext,
    HEADER_BYTES,
};

/// Largest body the fuzz entry points accept, as a server would configure it.
const BODY_BYTES_MAX: u64 = 1 << 20;

/// Splits `bytes` into messages as a server reads a stream (header, then the body it declares)
/// and decodes each as a request. Every decoded request must survive an encode/decode round
/// trip. Returns how many decoded.
pub fn decode_request_bytes(bytes: &[u8]) -> usize {
    let mut decoded = 0;
    for (header, body) in frames(bytes) {
        if let Ok(request) = Request::decode(header, body) {
            let mut out = Vec::new();
            request.encode(&mut out);
            // Compare encodings, not values: a NaN float is not equal to itself.
            let again = Request::decode_message(&out).expect("an encoded request decodes");
            let mut out_again = Vec::new();
            again.encode(&mut out_again);
            assert_eq!(out_again, out, "request round trip");
            decoded += 1;
        }
    }
    decoded
}

/// Like [`decode_request_bytes`] for responses. The first byte picks the decoding context
/// (protocol version and CLUSTER format), the rest is the stream.
pub fn decode_response_bytes(bytes: &[u8]) -> usize {
    let Some((&selector, bytes)) = bytes.split_first() else {
        return 0;
    };
    let context = ResponseContext {
        version: if selector & 1 == 0 {
            ProtocolVersion::V1
        } else {
            ProtocolVersion::Legacy
        },
        cluster_format: if selector & 2 == 0 {
            ClusterFormat::V1
        } else {
            ClusterFormat::V0
        },
    };
    let mut decoded = 0;
    for (header, body) in frames(bytes) {
        if let Ok(response) = Response::decode(header, body, &context) {
            let mut out = Vec::new();
            response.encode(&mut out, context.version);
            let again = Response::decode_message(&out, &context);
            // A legacy SERVER drops the id and format 0 drops roles: compare what survives.
            if let Ok(again) = &again {
                let mut out_again = Vec::new();
                again.encode(&mut out_again, context.version);
                assert_eq!(out_again, out, "response round trip");
            } else {
                panic!("an encoded response decodes: {again:?}");
            }
            decoded += 1;
        }
    }
    decoded
}

/// The frames of a byte stream, stopping at the first invalid header or incomplete frame. The
/// loop consumes at least one header per turn, so it is bounded by the input length.
fn frames(mut bytes: &[u8]) -> impl Iterator<Item = (Header, &[u8])> {
    std::iter::from_fn(move || {
        let (header, rest) = bytes.split_first_chunk::<HEADER_BYTES>()?;
        let header = Header::decode(*header);
        let body_bytes = match header.body_bytes_checked(BODY_BYTES_MAX) {
            Ok(body_bytes) => body_bytes,
            Err(_) => {
                // An empty body is still a frame: decode it (to an error) and go on.
                if header.words == 0 {
                    bytes = rest;
                    return Some((header, &rest[..0]));
                }
                return None;
            }
        };
        if rest.len() < body_bytes {
            return None;
        }
        let (body, rest) = rest.split_at(body_bytes);
        bytes = rest;
        Some((header, body))
    })
}

/// Decodes `bytes` as the stream an inbound peer connection receives after its magic word (a
/// hello, an AUTH, then messages and pings), as the reactor does. A decoded hello must
/// re-encode to the very bytes it came from. Returns the frames decoded (hello included).
pub fn decode_peer_frame_bytes(bytes: &[u8]) -> usize {
    let summary = crate::peer::decode_stream(bytes, BODY_BYTES_MAX as u32);
    let Some(hello) = &summary.hello else {
        return 0;
    };
    let mut out = Vec::new();
    hello.encode(&mut out);
    assert_eq!(&bytes[..out.len()], out.as_slice(), "hello round trip");
    1 + summary.messages + summary.pings
}

/// The peer handshake with fuzz bytes as the other side, both roles, with the functions the
/// reactor uses. Acceptor: `bytes` are the dialler's stream (a hello frame, then an AUTH frame);
/// the hello is validated, answered with a CHALLENGE, and the AUTH verified. An AUTH is accepted
/// exactly when it is the honest MAC (the fuzzer cannot forge one; the first byte's low bit
/// swaps in the honest MAC to reach the accepting path, its second bit then flips one bit of it,
/// which must be refused). Dialler: the bytes after the hello are also tried as a CHALLENGE
/// payload, which must be refused unless it is the honest one. Returns whether a connection
/// was authenticated. Never panics on any input (but for a broken invariant).
pub fn peer_handshake(bytes: &[u8]) -> bool {
    use crate::peer::{
        encode_auth, encode_challenge, verify_auth, verify_challenge, ClusterSecret, FrameHeader,
        FrameKind, Hello, NonceSource, FRAME_HEADER_BYTES,
    };
    let Some((&mode, stream)) = bytes.split_first() else {
        return false;
    };
    let secret = ClusterSecret::from_bytes([0xa5; 32]);
    let mut nonces = NonceSource::from_key([0x5a; 32]);
    let frame = |bytes: &[u8]| -> Option<(FrameKind, Vec<u8>, usize)> {
        let header = FrameHeader::decode(*bytes.first_chunk::<FRAME_HEADER_BYTES>()?, 1024).ok()?;
        let end = FRAME_HEADER_BYTES + header.payload_bytes as usize;
        let payload = bytes.get(FRAME_HEADER_BYTES..end)?.to_vec();
        Some((header.kind, payload, end))
    };
    let Some((FrameKind::Hello, hello_payload, used)) = frame(stream) else {
        return false;
    };
    let Ok(hello) = Hello::decode(&hello_payload) else {
        return false;
    };
    if hello.validate(1, 0xc1).is_err() {
        return false;
    }
    let rest = &stream[used..];
    // Dialler's view: the rest as a CHALLENGE payload.
    let acceptor_nonce = nonces.next_nonce();
    let mut honest_challenge = Vec::new();
    encode_challenge(
        &secret,
        &hello_payload,
        &acceptor_nonce,
        &mut honest_challenge,
    );
    let challenge = rest.get(..crate::peer::CHALLENGE_BYTES).unwrap_or(rest);
    let verified = verify_challenge(&secret, &hello_payload, challenge);
    assert_eq!(
        verified.is_ok(),
        challenge == &honest_challenge[FRAME_HEADER_BYTES..],
        "a CHALLENGE verifies exactly when honest"
    );
    // Acceptor's view: the rest as an AUTH frame.
    let mut honest_auth = Vec::new();
    encode_auth(&secret, &hello_payload, &acceptor_nonce, &mut honest_auth);
    let honest_mac = honest_auth[FRAME_HEADER_BYTES..].to_vec();
    let mut auth = match frame(rest) {
        Some((FrameKind::Auth, payload, _)) => payload,
        _ => return false,
    };
    if mode & 1 == 1 {
        auth.clone_from(&honest_mac);
        if mode & 2 == 2 {
            let bit = usize::from(mode >> 2) % (auth.len() * 8);
            auth[bit / 8] ^= 1 << (bit % 8);
        }
    }
    let accepted = verify_auth(&secret, &hello_payload, &acceptor_nonce, &auth).is_ok();
    assert_eq!(
        accepted,
        auth == honest_mac,
        "an AUTH verifies exactly when honest"
    );
    // The same AUTH against the next connection's nonce (a replay) never verifies.
    let replay_nonce = nonces.next_nonce();
    assert!(verify_auth(&secret, &hello_payload, &replay_nonce, &auth).is_err());
    accepted
}

/// Decodes one complete message as a request (header and body exactly), for callers that
/// already framed it.
pub fn decode_request_message(message: &[u8]) -> bool {
    split_message(message)
        .and_then(|(header, body)| Request::decode(header, body))
        .is_ok()
}

/// The TLS handshake path of a real reactor (a TLS node's, on loopback) with fuzz bytes as the
/// client: raw bytes (mode bit 0 clear), or a genuine ClientHello from atoll's own TLS client
/// with the bytes XORed over it from an offset the next byte picks, then appended (bit 0 set).
/// The reactor must close or keep the connection without panicking, and a good TLS client
/// must still be served afterwards (checked every 256 inputs). Returns whether the fuzz
/// connection was still open after the polls.
pub fn tls_handshake(bytes: &[u8]) -> bool {
    use std::cell::RefCell;
    use std::io::Write;
    use std::time::Duration;

    use crate::reactor::{Reactor, ReactorConfig};
    use crate::tls::{generate_cluster_certificate, TlsContext};

    struct State {
        reactor: Reactor,
        tls: TlsContext,
        address: std::net::SocketAddr,
        runs: u64,
    }
    thread_local! {
        static STATE: RefCell<Option<State>> = const { RefCell::new(None) };
    }
    let Some((&mode, rest)) = bytes.split_first() else {
        return false;
    };
    STATE.with(|state| {
        let mut state = state.borrow_mut();
        let state = state.get_or_insert_with(|| {
            let (cert, key) = generate_cluster_certificate().expect("certificate");
            let tls = TlsContext::from_pem(cert.as_bytes(), key.as_bytes(), None).expect("tls");
            let config = ReactorConfig {
                tls: Some(tls.clone()),
                ..ReactorConfig::default()
            };
            let reactor =
                Reactor::bind("127.0.0.1:0".parse().expect("address"), config).expect("bind");
            let address = reactor.local_addr().expect("address");
            State {
                reactor,
                tls,
                address,
                runs: 0,
            }
        });
        let mut input = Vec::new();
        if mode & 1 == 1 {
            let mut client = state.tls.client_session().expect("session");
            client.write_tls(&mut input).expect("ClientHello");
            let (&offset, tail) = rest.split_first().unwrap_or((&0, &[]));
            let offset = usize::from(offset) % input.len().max(1);
            for (byte, fuzz) in input[offset..].iter_mut().zip(tail) {
                *byte ^= fuzz;
            }
            input.extend_from_slice(tail.get(input.len() - offset..).unwrap_or(&[]));
        } else {
            input.extend_from_slice(rest);
        }
        let mut stream = std::net::TcpStream::connect(state.address).expect("connect");
        let _ = stream.write_all(&input);
        let mut events = Vec::new();
        for _ in 0..8 {
            state
                .reactor
                .poll(&mut events, Some(Duration::from_millis(1)))
                .expect("poll");
            events.clear();
        }
        let open = state.reactor.connections_count() > 0;
        drop(stream);
        for _ in 0..4 {
            state
                .reactor
                .poll(&mut events, Some(Duration::from_millis(1)))
                .expect("poll");
            events.clear();
        }
        state.runs += 1;
        if state.runs % 256 == 0 {
            good_client_served(state.address, &state.tls, &mut state.reactor);
        }
        open
    })
}

/// A TLS client completes the handshake and gets the version word through (the reactor
/// announces it as a client).
fn good_client_served(
    address: std::net::SocketAddr,
    tls: &crate::tls::TlsContext,
    reactor: &mut crate::reactor::Reactor,
) {
    use std::io::Write;
    use std::time::Duration;

    use crate::reactor::Event;

    let stream = std::net::TcpStream::connect(address).expect("connect");
    stream.set_nonblocking(true).expect("nonblocking");
    let mut session = tls.client_connection().expect("session");
    // Buffered until the handshake completes.
    session
        .writer()
        .write_all(&crate::protocol::ProtocolVersion::V1.word().to_le_bytes())
        .expect("buffered");
    let mut stream = stream;
    let mut events = Vec::new();
    for _ in 0..2000 {
        let _ = session.complete_io(&mut stream);
        reactor
            .poll(&mut events, Some(Duration::from_millis(1)))
            .expect("poll");
        if events.iter().any(|e| matches!(e, Event::Connected { .. })) {
            return;
        }
    }
    panic!("a good TLS client was not served after fuzz inputs");
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::Value;

    /// The TLS fuzz entry on seeded inputs (both modes, 256 of them, so the good-client check
    /// runs once), and on a few chosen ones: plaintext, a record header with junk, a record
    /// length past the maximum.
    #[test]
    fn tls_handshake_survives_seeded_garbage() {
        for chosen in [
            &[0u8, 1, 0, 0, 0, 0, 0, 0, 0][..],
            &[0, 0x16, 3, 1, 0, 4, 1, 2, 3, 4][..],
            &[0, 0x16, 3, 3, 0xff, 0xff, 0][..],
            &[1][..],
        ] {
            tls_handshake(chosen);
        }
        let mut prng = Prng(0x7715);
        for _ in 0..256 {
            let length = prng.below(600) as usize;
            let bytes: Vec<u8> = (0..length).map(|_| prng.next() as u8).collect();
            tls_handshake(&bytes);
        }
    }

    /// xorshift64*: our own small PRNG, so a seed means the same bytes forever.
    struct Prng(u64);

    impl Prng {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 >> 12;
            self.0 ^= self.0 << 25;
            self.0 ^= self.0 >> 27;
            self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
        }

        fn below(&mut self, n: u64) -> u64 {
            self.next() % n
        }
    }

    /// Random bytes biased toward the protocol: valid headers with known type codes and small
    /// word counts, real message prefixes, and plain noise.
    fn random_stream(prng: &mut Prng, responses: bool) -> Vec<u8> {
        let mut out = Vec::new();
        if responses {
            out.push(prng.below(4) as u8);
        }
        for _ in 0..prng.below(6) {
            match prng.below(4) {
                0 => {
                    // A real message with a mutated byte.
                    let mut message = Vec::new();
                    Request::ExecSql {
                        db_id: 0,
                        sql: "INSERT INTO t VALUES (?, ?)".into(),
                        params: vec![Value::Integer(1), Value::Blob(vec![1, 2, 3])],
                    }
                    .encode(&mut message);
                    let at = prng.below(message.len() as u64) as usize;
                    message[at] = prng.next() as u8;
                    out.extend_from_slice(&message);
                }
                1 | 2 => {
                    let words = prng.below(8) as u32;
                    let kind = prng.below(22) as u8;
                    let schema = if prng.below(8) == 0 { 1 } else { 0 };
                    out.extend_from_slice(
                        &Header {
                            words,
                            kind,
                            schema,
                            extra: 0,
                        }
                        .encode(),
                    );
                    for _ in 0..words * 8 {
                        let byte = match prng.below(4) {
                            0 => 0,
                            1 => 0xff,
                            _ => prng.next() as u8,
                        };
                        out.push(byte);
                    }
                }
                _ => {
                    for _ in 0..prng.below(64) {
                        out.push(prng.next() as u8);
                    }
                }
            }
        }
        out
    }

    /// Random peer streams biased toward the format: a valid or mutated hello, then valid
    /// headers of every kind with small lengths, mutated bytes, and noise.
    fn random_peer_stream(prng: &mut Prng) -> Vec<u8> {
        use crate::peer::{message_header, Hello, PING_FRAME};
        let mut out = Vec::new();
        if prng.below(8) != 0 {
            let address_bytes = 1 + prng.below(20) as usize;
            Hello {
                from: prng.below(4),
                to: prng.next(),
                cluster_id: prng.next(),
                incarnation: prng.next(),
                nonce: prng
                    .next()
                    .to_le_bytes()
                    .repeat(2)
                    .try_into()
                    .expect("16 bytes"),
                address: "a".repeat(address_bytes),
            }
            .encode(&mut out);
            if prng.below(4) == 0 {
                let at = prng.below(out.len() as u64) as usize;
                out[at] = prng.next() as u8;
            }
            if prng.below(8) != 0 {
                // An AUTH frame (its MAC is random: the decoder does not check it).
                out.extend_from_slice(&[32, 0, 0, 0, 5, 0, 0, 0]);
                out.extend((0..32).map(|_| prng.next() as u8));
            }
        }
        for _ in 0..prng.below(8) {
            match prng.below(5) {
                0 => out.extend_from_slice(&PING_FRAME),
                1 | 2 => {
                    let len = prng.below(40) as u32;
                    out.extend_from_slice(&message_header(len));
                    out.extend((0..len).map(|_| prng.next() as u8));
                }
                3 => {
                    let mut header = message_header(prng.below(64) as u32);
                    let at = prng.below(8) as usize;
                    header[at] = prng.next() as u8;
                    out.extend_from_slice(&header);
                }
                _ => out.extend((0..prng.below(32)).map(|_| prng.next() as u8)),
            }
        }
        out
    }

    #[test]
    fn test_peer_handshake_accepts_only_the_honest_mac() {
        use crate::peer::Hello;
        let mut stream = vec![0u8];
        let mut hello = Vec::new();
        Hello {
            from: 2,
            to: 1,
            cluster_id: 0xc1,
            incarnation: 3,
            nonce: [4; 16],
            address: "n2".into(),
        }
        .encode(&mut hello);
        stream.extend_from_slice(&hello);
        stream.extend_from_slice(&[32, 0, 0, 0, 5, 0, 0, 0]);
        stream.extend_from_slice(&[0; 32]);
        assert!(!peer_handshake(&stream), "a zero MAC is refused");
        stream[0] = 1;
        assert!(peer_handshake(&stream), "the honest MAC is accepted");
        for flip in 0..64u8 {
            stream[0] = 3 | (flip << 2);
            assert!(!peer_handshake(&stream), "a flipped bit is refused");
        }
    }

    #[test]
    fn test_seeded_random_bytes_never_panic_the_peer_decoder() {
        // 20,000 seeded streams; the generator must reach hellos and frames after them.
        let mut decoded = 0;
        let mut with_frames = 0;
        for seed in 1..=20_000u64 {
            let mut prng = Prng(seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1);
            let bytes = random_peer_stream(&mut prng);
            let frames = decode_peer_frame_bytes(&bytes);
            decoded += usize::from(frames > 0);
            with_frames += usize::from(frames > 1);
        }
        assert!(decoded > 5000, "{decoded}");
        assert!(with_frames > 2000, "{with_frames}");
    }

    #[test]
    fn test_seeded_random_bytes_never_panic_the_decoders() {
        // 20,000 seeded inputs per decoder; a failing seed reproduces with the same number.
        let mut decoded_requests = 0;
        let mut decoded_responses = 0;
        for seed in 1..=20_000u64 {
            let mut prng = Prng(seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1);
            let bytes = random_stream(&mut prng, false);
            decoded_requests += decode_request_bytes(&bytes);
            decode_request_message(&bytes);
            let bytes = random_stream(&mut prng, true);
            decoded_responses += decode_response_bytes(&bytes);
        }
        // The generator must reach the decoders' success paths, not only their errors.
        assert!(decoded_requests > 1000, "{decoded_requests}");
        assert!(decoded_responses > 1000, "{decoded_responses}");
    }
}
