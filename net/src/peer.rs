//! The peer (node-to-node) wire format: the greeting, the hello, and the frames that carry opaque
//! raft messages. The reactor's peer transport speaks it; `net` never looks inside a message.
//!
//! A peer connection carries messages one way: the dialling node writes them, the accepting node
//! reads them (each node dials every peer it sends to, so a pair of nodes uses two connections).
//! Before any message both sides prove they hold the cluster secret (a mutual HMAC-SHA256
//! challenge-response; the secret itself is never sent):
//!
//! 1. dialler → acceptor: the 8-byte [`PEER_MAGIC_V1`] word, then a [`Hello`] frame carrying a
//!    fresh random nonce `Nd`;
//! 2. acceptor → dialler: CHALLENGE, a fresh nonce `Na` and `HMAC(secret, "acceptor", hello, Na)`;
//! 3. dialler → acceptor: AUTH, `HMAC(secret, "dialler", hello, Na)`, then message and ping frames.
//!
//! The MAC input (see [`auth_mac`]) binds the role (a proof cannot be reflected back to the other
//! side), the whole hello (ids, cluster, incarnation, `Nd`, address) and `Na`: a recorded exchange
//! cannot be replayed, since the other side's nonce is new on every connection. The acceptor
//! writes nothing but the CHALLENGE; the dialler reads nothing after it.
//!
//! Every integer is little-endian. A frame is an 8-byte header and a payload:
//!
//! | bytes | field |
//! | --- | --- |
//! | 0..4 | `u32` payload length in bytes (≤ the receiver's `frame_bytes_max`) |
//! | 4 | `u8` kind: 1 HELLO, 2 MESSAGE, 3 PING, 4 CHALLENGE, 5 AUTH |
//! | 5 | `u8` flags, 0 |
//! | 6..8 | `u16` reserved, 0 |
//!
//! HELLO (first frame, and only there) has this payload, its length exactly 50 + address bytes:
//!
//! | bytes | field |
//! | --- | --- |
//! | 0..8 | `u64` from: the sender's node id, non-zero |
//! | 8..16 | `u64` to: the node id the sender believes it dialled |
//! | 16..24 | `u64` cluster id; nodes of different clusters refuse each other |
//! | 24..32 | `u64` incarnation: differs each time the sender's process starts |
//! | 32..48 | 16 bytes: the dialler's nonce `Nd`, random |
//! | 48..50 | `u16` address length, 1..=255 |
//! | 50.. | the sender's advertised address, UTF-8 |
//!
//! CHALLENGE (acceptor to dialler, once) has exactly 48 bytes: the acceptor's nonce `Na` (16),
//! then its 32-byte MAC. AUTH (dialler to acceptor, the second frame, once) has exactly the
//! dialler's 32-byte MAC.
//!
//! A MAC is HMAC-SHA256 keyed with the 32-byte secret over: the role's 16-byte label
//! (`atoll-v1-accept\0` for CHALLENGE, `atoll-v1-dialer\0` for AUTH), the hello payload's
//! length as `u16`, the hello payload, and `Na`. The acceptor compares AUTH in constant time.
//!
//! MESSAGE carries 1..=`frame_bytes_max` opaque bytes (one raft message, encoded by the host).
//! PING has an empty payload; the dialler sends it when it has been idle, so the receiver can
//! tell a silent peer from a vanished one.
//!
//! Non-zero flags or reserved bytes, an unknown kind, a length the kind does not allow, a
//! MESSAGE over `frame_bytes_max`, or a HELLO that is not first or comes twice close the
//! connection (other connections are unaffected). There is no per-frame checksum: TCP delivers
//! the bytes or closes the stream, and raft's codec checks what it decodes. [`decode_stream`]
//! is the decoder as a plain function, for the `net_peer_frame` fuzz target.

use std::fmt;
use std::io;

use byteorder::{ByteOrder, LittleEndian};
use hmac::{Hmac, Mac};
use sha2::Sha256;

pub use crate::protocol::PEER_MAGIC_V1;

/// Bytes of a frame header.
pub const FRAME_HEADER_BYTES: usize = 8;
/// Default largest frame payload: 8 MiB, room for a snapshot chunk of a few MiB.
pub const FRAME_BYTES_MAX: u32 = 8 * 1024 * 1024;
/// Longest advertised address in a hello.
pub const ADDRESS_BYTES_MAX: usize = 255;
/// Bytes of a hello payload before the address.
pub const HELLO_FIXED_BYTES: usize = 50;
/// Bytes of the cluster secret.
pub const SECRET_BYTES: usize = 32;
/// Bytes of a handshake nonce (128 random bits: never repeats in practice).
pub const NONCE_BYTES: usize = 16;
/// Bytes of a handshake MAC (HMAC-SHA256).
pub const MAC_BYTES: usize = 32;
/// Bytes of a CHALLENGE payload: the acceptor's nonce and MAC.
pub const CHALLENGE_BYTES: usize = NONCE_BYTES + MAC_BYTES;
/// Bytes of an AUTH payload: the dialler's MAC.
pub const AUTH_BYTES: usize = MAC_BYTES;
/// Largest hello payload.
pub const HELLO_BYTES_MAX: usize = HELLO_FIXED_BYTES + ADDRESS_BYTES_MAX;

const _: () = assert!(HELLO_BYTES_MAX < 1024);
const _: () = assert!(ADDRESS_BYTES_MAX <= u16::MAX as usize);

/// What a frame carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum FrameKind {
    /// The sender's identity; the first frame of a connection and only there.
    Hello = 1,
    /// One opaque message for the host.
    Message = 2,
    /// Keepalive: nothing for the host.
    Ping = 3,
    /// The acceptor's nonce and proof, its answer to the hello.
    Challenge = 4,
    /// The dialler's proof, the second frame of a connection.
    Auth = 5,
}

impl FrameKind {
    fn from_byte(byte: u8) -> Option<FrameKind> {
        match byte {
            1 => Some(FrameKind::Hello),
            2 => Some(FrameKind::Message),
            3 => Some(FrameKind::Ping),
            4 => Some(FrameKind::Challenge),
            5 => Some(FrameKind::Auth),
            _ => None,
        }
    }
}

/// Why a peer connection was refused or ended by the protocol. Each variant says what was wrong,
/// for the log and for [`crate::reactor::CloseReason::Peer`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PeerError {
    /// The kind byte is not a defined frame kind.
    UnknownKind(u8),
    /// The flags or reserved bytes are not zero.
    ReservedNotZero {
        /// Byte 5.
        flags: u8,
        /// Bytes 6..8.
        reserved: u16,
    },
    /// The payload is larger than the receiver accepts.
    FrameTooLarge {
        /// Payload bytes the header declares.
        bytes: u32,
        /// The receiver's `frame_bytes_max`.
        max: u32,
    },
    /// The payload length is impossible for the kind (an empty message, a ping with a payload, a
    /// hello shorter or longer than its fields).
    Length {
        /// The frame kind.
        kind: FrameKind,
        /// Payload bytes the header declares.
        bytes: u32,
    },
    /// The first frame of a connection is not a hello.
    HelloExpected(FrameKind),
    /// A hello after the first frame.
    HelloRepeated,
    /// The hello's address length field disagrees with the payload length, is 0 or over 255.
    AddressLength(u16),
    /// The hello's address is not UTF-8.
    AddressNotUtf8,
    /// The hello's sender id is 0.
    NodeIdZero,
    /// The hello comes from another cluster.
    ClusterMismatch {
        /// The cluster id in the hello.
        theirs: u64,
        /// This node's cluster id.
        ours: u64,
    },
    /// The hello is meant for another node (a stale address after a membership change).
    WrongNode {
        /// The node id the sender believes it dialled.
        to: u64,
        /// This node's id.
        ours: u64,
    },
    /// The hello claims to come from this very node.
    SelfConnection,
    /// A frame of a kind this side does not expect at this point of the conversation.
    OutOfOrder(FrameKind),
    /// The other side's MAC is wrong: it does not hold the cluster secret, or replays or
    /// reflects another exchange.
    AuthFailed,
    /// Bytes arrived on an outbound connection after its handshake.
    UnexpectedData,
    /// `peers_max` other nodes are connected inbound already.
    TooManyPeers,
}

impl fmt::Display for PeerError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PeerError::UnknownKind(kind) => write!(f, "unknown peer frame kind {kind}"),
            PeerError::ReservedNotZero { flags, reserved } => {
                write!(
                    f,
                    "peer frame flags {flags:#x} / reserved {reserved:#x} are not 0"
                )
            }
            PeerError::FrameTooLarge { bytes, max } => {
                write!(
                    f,
                    "peer frame of {bytes} bytes exceeds the maximum of {max}"
                )
            }
            PeerError::Length { kind, bytes } => {
                write!(f, "peer frame {kind:?} cannot have {bytes} payload bytes")
            }
            PeerError::HelloExpected(kind) => write!(f, "expected a hello, got {kind:?}"),
            PeerError::HelloRepeated => write!(f, "a second hello on one connection"),
            PeerError::AddressLength(len) => write!(f, "hello address length {len} is invalid"),
            PeerError::AddressNotUtf8 => write!(f, "hello address is not UTF-8"),
            PeerError::NodeIdZero => write!(f, "hello from node id 0"),
            PeerError::ClusterMismatch { theirs, ours } => write!(
                f,
                "hello from cluster {theirs:#x}, this node belongs to cluster {ours:#x}"
            ),
            PeerError::WrongNode { to, ours } => {
                write!(f, "hello for node {to}, but this is node {ours}")
            }
            PeerError::SelfConnection => write!(f, "hello from this node itself"),
            PeerError::OutOfOrder(kind) => write!(f, "unexpected {kind:?} frame"),
            PeerError::AuthFailed => write!(
                f,
                "peer authentication failed (wrong cluster secret, or a replayed exchange)"
            ),

            PeerError::UnexpectedData => write!(f, "data received on an outbound peer connection"),
            PeerError::TooManyPeers => write!(f, "too many peers connected"),
        }
    }
}

impl std::error::Error for PeerError {}

/// A validated frame header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FrameHeader {
    /// What the frame carries.
    pub kind: FrameKind,
    /// Payload bytes that follow the header.
    pub payload_bytes: u32,
}

impl FrameHeader {
    /// Parses and validates 8 header bytes against the receiver's `frame_bytes_max`: a known
    /// kind, zero flags and reserved bytes, and a length the kind allows. Nothing is allocated.
    pub fn decode(
        bytes: [u8; FRAME_HEADER_BYTES],
        frame_bytes_max: u32,
    ) -> Result<FrameHeader, PeerError> {
        let payload_bytes = LittleEndian::read_u32(&bytes[0..4]);
        let kind = FrameKind::from_byte(bytes[4]).ok_or(PeerError::UnknownKind(bytes[4]))?;
        let flags = bytes[5];
        let reserved = LittleEndian::read_u16(&bytes[6..8]);
        if flags != 0 || reserved != 0 {
            return Err(PeerError::ReservedNotZero { flags, reserved });
        }
        let length_ok = match kind {
            FrameKind::Hello => {
                (HELLO_FIXED_BYTES + 1..=HELLO_BYTES_MAX).contains(&(payload_bytes as usize))
            }
            FrameKind::Message => payload_bytes > 0,
            FrameKind::Ping => payload_bytes == 0,
            FrameKind::Challenge => payload_bytes as usize == CHALLENGE_BYTES,
            FrameKind::Auth => payload_bytes as usize == AUTH_BYTES,
        };
        if kind == FrameKind::Message && payload_bytes > frame_bytes_max {
            return Err(PeerError::FrameTooLarge {
                bytes: payload_bytes,
                max: frame_bytes_max,
            });
        }
        if !length_ok {
            return Err(PeerError::Length {
                kind,
                bytes: payload_bytes,
            });
        }
        Ok(FrameHeader {
            kind,
            payload_bytes,
        })
    }

    /// The 8 header bytes.
    pub fn encode(&self) -> [u8; FRAME_HEADER_BYTES] {
        let mut bytes = [0u8; FRAME_HEADER_BYTES];
        LittleEndian::write_u32(&mut bytes[0..4], self.payload_bytes);
        bytes[4] = self.kind as u8;
        bytes
    }

    /// Header and payload bytes.
    pub fn frame_bytes(&self) -> usize {
        FRAME_HEADER_BYTES + self.payload_bytes as usize
    }
}

/// The header of a MESSAGE frame carrying `payload_bytes`.
pub fn message_header(payload_bytes: u32) -> [u8; FRAME_HEADER_BYTES] {
    FrameHeader {
        kind: FrameKind::Message,
        payload_bytes,
    }
    .encode()
}

/// A PING frame.
pub const PING_FRAME: [u8; FRAME_HEADER_BYTES] = [0, 0, 0, 0, FrameKind::Ping as u8, 0, 0, 0];

/// The sender's identity, the first frame of every peer connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Hello {
    /// The sender's node id, non-zero.
    pub from: u64,
    /// The node id the sender believes it dialled.
    pub to: u64,
    /// The cluster both must belong to.
    pub cluster_id: u64,
    /// Changes each time the sender's process starts: a receiver that sees a new incarnation
    /// knows its own outbound connection to that node may lead to a dead process.
    pub incarnation: u64,
    /// The dialler's fresh random nonce for this connection's handshake.
    pub nonce: [u8; NONCE_BYTES],
    /// The address the sender serves clients and peers on.
    pub address: String,
}

impl Hello {
    /// Appends the HELLO frame (header and payload). Panics on an address that is empty or
    /// longer than [`ADDRESS_BYTES_MAX`]: the reactor validates the configured address first.
    pub fn encode(&self, out: &mut Vec<u8>) {
        let address_bytes = self.address.len();
        assert!(address_bytes > 0 && address_bytes <= ADDRESS_BYTES_MAX);
        let payload_bytes = HELLO_FIXED_BYTES + address_bytes;
        out.extend_from_slice(
            &FrameHeader {
                kind: FrameKind::Hello,
                payload_bytes: payload_bytes as u32,
            }
            .encode(),
        );
        let start = out.len();
        out.resize(start + HELLO_FIXED_BYTES, 0);
        let fixed = &mut out[start..];
        LittleEndian::write_u64(&mut fixed[0..8], self.from);
        LittleEndian::write_u64(&mut fixed[8..16], self.to);
        LittleEndian::write_u64(&mut fixed[16..24], self.cluster_id);
        LittleEndian::write_u64(&mut fixed[24..32], self.incarnation);
        fixed[32..48].copy_from_slice(&self.nonce);
        LittleEndian::write_u16(&mut fixed[48..50], address_bytes as u16);
        out.extend_from_slice(self.address.as_bytes());
    }

    /// Decodes a hello payload (the bytes after a HELLO header, exactly). Checks only what the
    /// bytes alone can tell (lengths, UTF-8, a non-zero sender); [`Hello::validate`] checks it
    /// against the receiving node.
    pub fn decode(payload: &[u8]) -> Result<Hello, PeerError> {
        let Some((fixed, address)) = payload.split_first_chunk::<HELLO_FIXED_BYTES>() else {
            return Err(PeerError::Length {
                kind: FrameKind::Hello,
                bytes: u32::try_from(payload.len()).unwrap_or(u32::MAX),
            });
        };
        let address_bytes = LittleEndian::read_u16(&fixed[48..50]);
        if address_bytes == 0
            || usize::from(address_bytes) > ADDRESS_BYTES_MAX
            || usize::from(address_bytes) != address.len()
        {
            return Err(PeerError::AddressLength(address_bytes));
        }
        let address = std::str::from_utf8(address).map_err(|_| PeerError::AddressNotUtf8)?;
        let from = LittleEndian::read_u64(&fixed[0..8]);
        if from == 0 {
            return Err(PeerError::NodeIdZero);
        }
        Ok(Hello {
            from,
            to: LittleEndian::read_u64(&fixed[8..16]),
            cluster_id: LittleEndian::read_u64(&fixed[16..24]),
            incarnation: LittleEndian::read_u64(&fixed[24..32]),
            nonce: fixed[32..48].try_into().expect("16 bytes"),
            address: address.to_owned(),
        })
    }

    /// Checks a decoded hello against the receiving node: same cluster, meant for this node, not
    /// from this node.
    pub fn validate(&self, node_id: u64, cluster_id: u64) -> Result<(), PeerError> {
        if self.cluster_id != cluster_id {
            return Err(PeerError::ClusterMismatch {
                theirs: self.cluster_id,
                ours: cluster_id,
            });
        }
        if self.to != node_id {
            return Err(PeerError::WrongNode {
                to: self.to,
                ours: node_id,
            });
        }
        if self.from == node_id {
            return Err(PeerError::SelfConnection);
        }
        Ok(())
    }
}

/// The cluster's shared secret: every member holds it, and proves it (never sends it) on every
/// peer connection. `Debug` does not show it.
#[derive(Clone, PartialEq, Eq)]
pub struct ClusterSecret([u8; SECRET_BYTES]);

impl ClusterSecret {
    /// The secret with these bytes.
    pub fn from_bytes(bytes: [u8; SECRET_BYTES]) -> ClusterSecret {
        ClusterSecret(bytes)
    }

    /// A new random secret from the operating system's generator.
    pub fn generate() -> io::Result<ClusterSecret> {
        let mut bytes = [0u8; SECRET_BYTES];
        os_random(&mut bytes)?;
        Ok(ClusterSecret(bytes))
    }

    /// The secret's bytes (to store it, or to print a join token).
    pub fn as_bytes(&self) -> &[u8; SECRET_BYTES] {
        &self.0
    }
}

impl fmt::Debug for ClusterSecret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("ClusterSecret(..)")
    }
}

/// Fills `out` from the operating system's random generator (`/dev/urandom`).
pub fn os_random(out: &mut [u8]) -> io::Result<()> {
    use std::io::Read;
    std::fs::File::open("/dev/urandom")?.read_exact(out)
}

/// Which side of the handshake a MAC proves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// The node that accepted the connection (it answers the hello with CHALLENGE).
    Acceptor,
    /// The node that dialled (it answers CHALLENGE with AUTH).
    Dialler,
}

impl Role {
    /// Equal-length labels: no input of one role can be read as the other's.
    fn label(self) -> &'static [u8; 16] {
        match self {
            Role::Acceptor => b"atoll-v1-accept\0",
            Role::Dialler => b"atoll-v1-dialer\0",
        }
    }
}

/// The handshake MAC of `role`: HMAC-SHA256 over the role's label, the hello payload's length
/// (u16) and bytes, and the acceptor's nonce.
pub fn auth_mac(
    secret: &ClusterSecret,
    role: Role,
    hello_payload: &[u8],
    acceptor_nonce: &[u8; NONCE_BYTES],
) -> Hmac<Sha256> {
    let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(&secret.0).expect("HMAC takes any key");
    mac.update(role.label());
    let length = u16::try_from(hello_payload.len()).expect("a hello is at most 305 bytes");
    mac.update(&length.to_le_bytes());
    mac.update(hello_payload);
    mac.update(acceptor_nonce);
    mac
}

/// Appends the acceptor's CHALLENGE frame answering `hello_payload`, with its fresh `nonce`.
pub fn encode_challenge(
    secret: &ClusterSecret,
    hello_payload: &[u8],
    nonce: &[u8; NONCE_BYTES],
    out: &mut Vec<u8>,
) {
    let header = FrameHeader {
        kind: FrameKind::Challenge,
        payload_bytes: CHALLENGE_BYTES as u32,
    };
    out.extend_from_slice(&header.encode());
    out.extend_from_slice(nonce);
    let mac = auth_mac(secret, Role::Acceptor, hello_payload, nonce).finalize();
    out.extend_from_slice(&mac.into_bytes());
}

/// The dialler checks a CHALLENGE payload against the hello it sent; returns the acceptor's
/// nonce if the acceptor proved it holds the secret. Constant-time comparison.
pub fn verify_challenge(
    secret: &ClusterSecret,
    hello_payload: &[u8],
    payload: &[u8],
) -> Result<[u8; NONCE_BYTES], PeerError> {
    let Some((nonce, proof)) = payload.split_first_chunk::<NONCE_BYTES>() else {
        return Err(PeerError::AuthFailed);
    };
    auth_mac(secret, Role::Acceptor, hello_payload, nonce)
        .verify_slice(proof)
        .map_err(|_| PeerError::AuthFailed)?;
    Ok(*nonce)
}

/// Appends the dialler's AUTH frame for the hello it sent and the acceptor's nonce.
pub fn encode_auth(
    secret: &ClusterSecret,
    hello_payload: &[u8],
    acceptor_nonce: &[u8; NONCE_BYTES],
    out: &mut Vec<u8>,
) {
    let header = FrameHeader {
        kind: FrameKind::Auth,
        payload_bytes: AUTH_BYTES as u32,
    };
    out.extend_from_slice(&header.encode());
    let mac = auth_mac(secret, Role::Dialler, hello_payload, acceptor_nonce).finalize();
    out.extend_from_slice(&mac.into_bytes());
}

/// The acceptor checks an AUTH payload against the hello it received and the nonce it sent.
/// Constant-time comparison.
pub fn verify_auth(
    secret: &ClusterSecret,
    hello_payload: &[u8],
    acceptor_nonce: &[u8; NONCE_BYTES],
    payload: &[u8],
) -> Result<(), PeerError> {
    auth_mac(secret, Role::Dialler, hello_payload, acceptor_nonce)
        .verify_slice(payload)
        .map_err(|_| PeerError::AuthFailed)
}

/// Handshake nonces: HMAC-SHA256 of a counter under a key drawn once from the OS, so each
/// connection gets an unpredictable nonce without a system call.
#[derive(Clone)]
pub struct NonceSource {
    key: [u8; SECRET_BYTES],
    counter: u64,
}

impl NonceSource {
    /// A source keyed from the operating system's generator.
    pub fn from_os() -> io::Result<NonceSource> {
        let mut key = [0u8; SECRET_BYTES];
        os_random(&mut key)?;
        Ok(NonceSource::from_key(key))
    }

    /// A source with this key (tests and fuzzing: deterministic nonces).
    pub fn from_key(key: [u8; SECRET_BYTES]) -> NonceSource {
        NonceSource { key, counter: 0 }
    }

    /// The next nonce.
    pub fn next_nonce(&mut self) -> [u8; NONCE_BYTES] {
        self.counter += 1;
        let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(&self.key).expect("any key");
        mac.update(&self.counter.to_le_bytes());
        let bytes = mac.finalize().into_bytes();
        let mut nonce = [0u8; NONCE_BYTES];
        nonce.copy_from_slice(&bytes[..NONCE_BYTES]);
        nonce
    }
}

impl fmt::Debug for NonceSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "NonceSource({} drawn)", self.counter)
    }
}

/// What [`decode_stream`] found in a byte stream.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct StreamSummary {
    /// The hello, if the stream began with a valid one.
    pub hello: Option<Hello>,
    /// An AUTH frame followed the hello (its MAC is not checked here).
    pub auth: bool,
    /// Message frames decoded after the hello.
    pub messages: usize,
    /// Ping frames decoded after the hello.
    pub pings: usize,
    /// Why decoding stopped early, if it did (an incomplete trailing frame is not an error).
    pub error: Option<PeerError>,
}

/// Decodes the bytes an inbound peer connection receives after its magic word, as the reactor
/// does: a hello first, then messages and pings, every header validated before its payload is
/// looked at (an AUTH is required after the hello, its MAC is not checked). Used by the
/// `net_peer_frame` fuzz target; it never panics, never allocates more
/// than the input's size, and stops at the first error.
pub fn decode_stream(mut bytes: &[u8], frame_bytes_max: u32) -> StreamSummary {
    let mut summary = StreamSummary::default();
    // Bounded: every turn consumes at least one header or returns.
    loop {
        let Some((header, rest)) = bytes.split_first_chunk::<FRAME_HEADER_BYTES>() else {
            return summary;
        };
        let header = match FrameHeader::decode(*header, frame_bytes_max) {
            Ok(header) => header,
            Err(error) => {
                summary.error = Some(error);
                return summary;
            }
        };
        let payload_bytes = header.payload_bytes as usize;
        if rest.len() < payload_bytes {
            return summary;
        }
        let (payload, rest) = rest.split_at(payload_bytes);
        bytes = rest;
        let error = match (header.kind, summary.hello.is_some(), summary.auth) {
            (FrameKind::Hello, false, _) => match Hello::decode(payload) {
                Ok(hello) => {
                    summary.hello = Some(hello);
                    None
                }
                Err(error) => Some(error),
            },
            (FrameKind::Hello, true, _) => Some(PeerError::HelloRepeated),
            (kind, false, _) => Some(PeerError::HelloExpected(kind)),
            (FrameKind::Auth, true, false) => {
                summary.auth = true;
                None
            }
            (kind, true, false) => Some(PeerError::OutOfOrder(kind)),
            (FrameKind::Message, true, true) => {
                summary.messages += 1;
                None
            }
            (FrameKind::Ping, true, true) => {
                summary.pings += 1;
                None
            }
            (kind @ (FrameKind::Auth | FrameKind::Challenge), true, true) => {
                Some(PeerError::OutOfOrder(kind))
            }
        };
        if let Some(error) = error {
            summary.error = Some(error);
            return summary;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hello() -> Hello {
        Hello {
            from: 2,
            to: 1,
            cluster_id: 0xc1,
            incarnation: 77,
            nonce: [9; 16],
            address: "127.0.0.1:9002".into(),
        }
    }

    #[test]
    fn test_hello_round_trip_and_byte_layout() {
        let mut out = Vec::new();
        hello().encode(&mut out);
        assert_eq!(out.len(), FRAME_HEADER_BYTES + HELLO_FIXED_BYTES + 14);
        assert_eq!(&out[..8], &[64, 0, 0, 0, 1, 0, 0, 0]);
        assert_eq!(&out[8..16], &2u64.to_le_bytes());
        assert_eq!(&out[40..56], &[9; 16]);
        assert_eq!(&out[56..58], &14u16.to_le_bytes());
        assert_eq!(&out[58..], b"127.0.0.1:9002");
        let header = FrameHeader::decode(out[..8].try_into().unwrap(), 1024).unwrap();
        assert_eq!(header.kind, FrameKind::Hello);
        assert_eq!(Hello::decode(&out[8..]).unwrap(), hello());
    }

    fn secret() -> ClusterSecret {
        ClusterSecret::from_bytes([0x42; SECRET_BYTES])
    }

    #[test]
    fn test_handshake_proves_the_secret_both_ways() {
        let mut hello_frame = Vec::new();
        hello().encode(&mut hello_frame);
        let hello_payload = &hello_frame[FRAME_HEADER_BYTES..];
        let nonce = [3; NONCE_BYTES];
        let mut challenge = Vec::new();
        encode_challenge(&secret(), hello_payload, &nonce, &mut challenge);
        assert_eq!(challenge.len(), FRAME_HEADER_BYTES + CHALLENGE_BYTES);
        let header = FrameHeader::decode(challenge[..8].try_into().unwrap(), 0).unwrap();
        assert_eq!(header.kind, FrameKind::Challenge);
        let challenge = &challenge[FRAME_HEADER_BYTES..];
        assert_eq!(
            verify_challenge(&secret(), hello_payload, challenge),
            Ok(nonce)
        );
        let other = ClusterSecret::from_bytes([0x43; SECRET_BYTES]);
        assert_eq!(
            verify_challenge(&other, hello_payload, challenge),
            Err(PeerError::AuthFailed)
        );
        // Another hello (a changed byte anywhere: the nonce, an id, the address) fails.
        for at in 0..hello_payload.len() {
            let mut changed = hello_payload.to_vec();
            changed[at] ^= 1;
            assert_eq!(
                verify_challenge(&secret(), &changed, challenge),
                Err(PeerError::AuthFailed)
            );
        }
        let mut auth = Vec::new();
        encode_auth(&secret(), hello_payload, &nonce, &mut auth);
        let auth = &auth[FRAME_HEADER_BYTES..];
        assert_eq!(verify_auth(&secret(), hello_payload, &nonce, auth), Ok(()));
        assert_eq!(
            verify_auth(&secret(), hello_payload, &[4; NONCE_BYTES], auth),
            Err(PeerError::AuthFailed),
            "an AUTH for another acceptor nonce (a replay) fails"
        );
        assert_eq!(
            verify_auth(&secret(), hello_payload, &nonce, &challenge[NONCE_BYTES..]),
            Err(PeerError::AuthFailed),
            "the acceptor's own proof reflected back fails"
        );
        assert_eq!(
            verify_auth(&secret(), hello_payload, &nonce, &auth[..31]),
            Err(PeerError::AuthFailed)
        );
        assert_eq!(format!("{:?}", secret()), "ClusterSecret(..)");
        let mut nonces = NonceSource::from_key([1; SECRET_BYTES]);
        let (n1, n2) = (nonces.next_nonce(), nonces.next_nonce());
        assert_ne!(n1, n2);
        assert_ne!(
            NonceSource::from_key([2; SECRET_BYTES]).next_nonce(),
            n1,
            "the key decides the nonces"
        );
    }

    #[test]
    fn test_headers_are_validated_before_anything_else() {
        let max = 1024;
        let decode = |bytes: [u8; 8]| FrameHeader::decode(bytes, max);
        assert_eq!(
            decode([0, 0, 0, 0, 9, 0, 0, 0]),
            Err(PeerError::UnknownKind(9))
        );
        assert_eq!(
            decode([1, 0, 0, 0, 2, 1, 0, 0]),
            Err(PeerError::ReservedNotZero {
                flags: 1,
                reserved: 0
            })
        );
        assert_eq!(
            decode(message_header(1025)),
            Err(PeerError::FrameTooLarge {
                bytes: 1025,
                max: 1024
            })
        );
        assert!(decode(message_header(1024)).is_ok());
        assert!(matches!(
            decode(message_header(0)),
            Err(PeerError::Length { .. })
        ));
        assert!(decode(PING_FRAME).is_ok());
        assert!(matches!(
            decode([1, 0, 0, 0, 3, 0, 0, 0]),
            Err(PeerError::Length { .. })
        ));
        // A hello may not claim a megabyte even when messages may.
        let big_hello = [0, 0, 16, 0, 1, 0, 0, 0];
        assert!(matches!(
            FrameHeader::decode(big_hello, u32::MAX),
            Err(PeerError::Length { .. })
        ));
    }

    #[test]
    fn test_hello_fields_are_checked() {
        let mut out = Vec::new();
        Hello { from: 0, ..hello() }.encode(&mut out);
        assert_eq!(Hello::decode(&out[8..]), Err(PeerError::NodeIdZero));
        let mut out = Vec::new();
        hello().encode(&mut out);
        out[56] = 13; // address length disagrees with the payload
        assert_eq!(Hello::decode(&out[8..]), Err(PeerError::AddressLength(13)));
        let mut out = Vec::new();
        hello().encode(&mut out);
        out[58] = 0xff;
        assert_eq!(Hello::decode(&out[8..]), Err(PeerError::AddressNotUtf8));
        let h = hello();
        assert_eq!(h.validate(1, 0xc1), Ok(()));
        assert_eq!(
            h.validate(1, 0xc2),
            Err(PeerError::ClusterMismatch {
                theirs: 0xc1,
                ours: 0xc2
            })
        );
        assert_eq!(
            h.validate(3, 0xc1),
            Err(PeerError::WrongNode { to: 1, ours: 3 })
        );
        let looped = Hello { to: 2, ..hello() };
        assert_eq!(looped.validate(2, 0xc1), Err(PeerError::SelfConnection));
    }

    #[test]
    fn test_decode_stream_counts_frames_and_stops_at_errors() {
        let mut stream = Vec::new();
        hello().encode(&mut stream);
        let hello_payload = stream[FRAME_HEADER_BYTES..].to_vec();
        encode_auth(&secret(), &hello_payload, &[1; NONCE_BYTES], &mut stream);
        stream.extend_from_slice(&message_header(3));
        stream.extend_from_slice(b"abc");
        stream.extend_from_slice(&PING_FRAME);
        stream.extend_from_slice(&message_header(5));
        stream.extend_from_slice(b"ab"); // incomplete: not an error
        let summary = decode_stream(&stream, 1024);
        assert_eq!(summary.hello, Some(hello()));
        assert_eq!(
            (summary.auth, summary.messages, summary.pings, summary.error),
            (true, 1, 1, None)
        );
        let mut stream = Vec::new();
        hello().encode(&mut stream);
        stream.extend_from_slice(&PING_FRAME);
        assert_eq!(
            decode_stream(&stream, 1024).error,
            Some(PeerError::OutOfOrder(FrameKind::Ping))
        );
        let mut stream = message_header(1).to_vec();
        stream.push(0);
        assert_eq!(
            decode_stream(&stream, 1024).error,
            Some(PeerError::HelloExpected(FrameKind::Message))
        );
    }
}
