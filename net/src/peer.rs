//! The peer (node-to-node) wire format: the greeting, the hello, and the frames that carry opaque
//! raft messages. The reactor's peer transport speaks it; `net` never looks inside a message.
//!
//! A peer connection is one-directional: the dialling node writes, the accepting node only reads
//! (each node dials every peer it sends to, so a pair of nodes uses two connections). The dialler
//! sends the 8-byte [`PEER_MAGIC_V1`] word, then a [`Hello`] frame, then message and ping frames.
//!
//! Every integer is little-endian. A frame is an 8-byte header and a payload:
//!
//! | bytes | field |
//! | --- | --- |
//! | 0..4 | `u32` payload length in bytes (≤ the receiver's `frame_bytes_max`) |
//! | 4 | `u8` kind: 1 HELLO, 2 MESSAGE, 3 PING |
//! | 5 | `u8` flags, 0 |
//! | 6..8 | `u16` reserved, 0 |
//!
//! HELLO (first frame, and only there) has this payload, its length exactly 34 + address bytes:
//!
//! | bytes | field |
//! | --- | --- |
//! | 0..8 | `u64` from: the sender's node id, non-zero |
//! | 8..16 | `u64` to: the node id the sender believes it dialled |
//! | 16..24 | `u64` cluster id; nodes of different clusters refuse each other |
//! | 24..32 | `u64` incarnation: differs each time the sender's process starts |
//! | 32..34 | `u16` address length, 1..=255 |
//! | 34.. | the sender's advertised address, UTF-8 |
//!
//! MESSAGE carries 1..=`frame_bytes_max` opaque bytes (one raft message, encoded by the host).
//! PING has an empty payload; the dialler sends it when it has been idle, so the receiver can
//! tell a silent peer from a vanished one.

use std::fmt;

use byteorder::{ByteOrder, LittleEndian};

pub use crate::protocol::PEER_MAGIC_V1;

/// Bytes of a frame header.
pub const FRAME_HEADER_BYTES: usize = 8;
/// Default largest frame payload: 8 MiB, room for a snapshot chunk of a few MiB.
pub const FRAME_BYTES_MAX: u32 = 8 * 1024 * 1024;
/// Longest advertised address in a hello.
pub const ADDRESS_BYTES_MAX: usize = 255;
/// Bytes of a hello payload before the address.
pub const HELLO_FIXED_BYTES: usize = 34;
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
}

impl FrameKind {
    fn from_byte(byte: u8) -> Option<FrameKind> {
        match byte {
            1 => Some(FrameKind::Hello),
            2 => Some(FrameKind::Message),
            3 => Some(FrameKind::Ping),
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
    /// Bytes arrived on an outbound connection, which only ever writes.
    UnexpectedData,
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
            PeerError::UnexpectedData => write!(f, "data received on an outbound peer connection"),
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
        LittleEndian::write_u16(&mut fixed[32..34], address_bytes as u16);
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
        let address_bytes = LittleEndian::read_u16(&fixed[32..34]);
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

/// What [`decode_stream`] found in a byte stream.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct StreamSummary {
    /// The hello, if the stream began with a valid one.
    pub hello: Option<Hello>,
    /// Message frames decoded after the hello.
    pub messages: usize,
    /// Ping frames decoded after the hello.
    pub pings: usize,
    /// Why decoding stopped early, if it did (an incomplete trailing frame is not an error).
    pub error: Option<PeerError>,
}

/// Decodes the bytes an inbound peer connection receives after its magic word, as the reactor
/// does: a hello first, then messages and pings, every header validated before its payload is
/// looked at. Used by the `net_peer_frame` fuzz target; it never panics, never allocates more
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
        let error = match (header.kind, summary.hello.is_some()) {
            (FrameKind::Hello, false) => match Hello::decode(payload) {
                Ok(hello) => {
                    summary.hello = Some(hello);
                    None
                }
                Err(error) => Some(error),
            },
            (FrameKind::Hello, true) => Some(PeerError::HelloRepeated),
            (kind, false) => Some(PeerError::HelloExpected(kind)),
            (FrameKind::Message, true) => {
                summary.messages += 1;
                None
            }
            (FrameKind::Ping, true) => {
                summary.pings += 1;
                None
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
            address: "127.0.0.1:9002".into(),
        }
    }

    #[test]
    fn test_hello_round_trip_and_byte_layout() {
        let mut out = Vec::new();
        hello().encode(&mut out);
        assert_eq!(out.len(), FRAME_HEADER_BYTES + HELLO_FIXED_BYTES + 14);
        assert_eq!(&out[..8], &[48, 0, 0, 0, 1, 0, 0, 0]);
        assert_eq!(&out[8..16], &2u64.to_le_bytes());
        assert_eq!(&out[40..42], &14u16.to_le_bytes());
        assert_eq!(&out[42..], b"127.0.0.1:9002");
        let header = FrameHeader::decode(out[..8].try_into().unwrap(), 1024).unwrap();
        assert_eq!(header.kind, FrameKind::Hello);
        assert_eq!(Hello::decode(&out[8..]).unwrap(), hello());
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
        out[40] = 13; // address length disagrees with the payload
        assert_eq!(Hello::decode(&out[8..]), Err(PeerError::AddressLength(13)));
        let mut out = Vec::new();
        hello().encode(&mut out);
        out[42] = 0xff;
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
        stream.extend_from_slice(&message_header(3));
        stream.extend_from_slice(b"abc");
        stream.extend_from_slice(&PING_FRAME);
        stream.extend_from_slice(&message_header(5));
        stream.extend_from_slice(b"ab"); // incomplete: not an error
        let summary = decode_stream(&stream, 1024);
        assert_eq!(summary.hello, Some(hello()));
        assert_eq!(
            (summary.messages, summary.pings, summary.error),
            (1, 1, None)
        );
        let mut stream = message_header(1).to_vec();
        stream.push(0);
        assert_eq!(
            decode_stream(&stream, 1024).error,
            Some(PeerError::HelloExpected(FrameKind::Message))
        );
    }
}
