//! The dqlite client wire protocol, version 1: framing, values, every request and response, in
//! both directions (a server decodes requests and encodes responses; a client the reverse).
//!
//! All integers are little-endian. A message is an 8-byte header followed by a body of whole
//! 8-byte words:
//!
//! | header bytes | field | meaning |
//! | --- | --- | --- |
//! | 0..4 | `uint32` words | body length in words (body bytes = words × 8) |
//! | 4 | `uint8` type | request or response type code |
//! | 5 | `uint8` schema | body layout version of that type, 0 unless stated |
//! | 6..8 | `uint16` extra | unused, 0 |
//!
//! Before its first message a client sends one word, the protocol version ([`VERSION_1`] or
//! [`VERSION_LEGACY`]); the server answers nothing to it. See
//! `../shared/reference/dqlite-wire-protocol.md` for the whole protocol; values, parameters and
//! rows are in [`value`].
//!
//! # atoll's extensions
//!
//! dqlite clients never see these: they are only sent by atoll's own tools, after the version
//! word told them the node is atoll's. Words are `u64`, texts and blobs as in [`value`].
//!
//! - Version word [`VERSION_ATOLL_1`] (`"ATOLLCL1"` read as a little-endian `u64`): served
//!   exactly as [`VERSION_1`]; a dqlite node closes the connection, which is how a tool tells
//!   the two apart.
//! - OPEN flag `1 << 48` (`client::OPEN_FOLLOWER_READS`): queries on this connection may be
//!   served by the follower it is connected to (dqlite ignores unknown flags).
//! - DESCRIBE (18) format 1 → METADATA of 11 words ([`NodeMetadata`]): failure domain, weight,
//!   node id, a reserved 0 (the cluster id is never told to clients), term, raft state (0
//!   follower, 1 pre-candidate, 2 candidate, 3 leader), leader id (0: none), commit index,
//!   applied index, last log index, corrupt databases. Format 0 is dqlite's, byte for byte;
//!   formats above 1 are FAILURE 15.
//! - VERIFY (request 128): word index, text database → CHECKSUMS (response 128). Index 0
//!   (leader only) proposes a verify point for the database (empty: all) and answers its index,
//!   state pending; otherwise the node's checksums at that point: words index, node id, applied
//!   index, state (0 done, 1 pending, 2 unavailable), count, then per database text name, words
//!   pages, checksum.
//! - STATUS (request 129): one word 0 → STATUS (response 129): the 11 words of DESCRIBE format
//!   1, then words last contact with the leader in ms (0 on the leader, `u64::MAX` never), bytes
//!   free for the data directory, databases, resident bytes, repairing (0/1), then text version.
//! - REPAIR (request 130): text database → EMPTY. The node's copy was found damaged: it stops
//!   and rebuilds itself from its peers (refused on the only voter).
//! - RESTORE (request 131): text database, words restore id, offset, total, blob bytes → EMPTY,
//!   once the piece is applied on the leader.

pub mod codec;
pub mod request;
pub mod response;
pub mod value;

pub use codec::{DecodeError, FAILURE_CODE_PARSE, WORD_BYTES};
pub use request::{ClusterFormat, Request, RequestType};
pub use response::{
    Checksums, DatabaseChecksum, File, NodeInfo, NodeMetadata, NodeStatus, Response,
    ResponseContext, ResponseType, Role, Rows, RowsBatch, RowsEnd, VerifyState,
};
pub use value::{Value, ValueRef};

use codec::pad_to_word;

/// Bytes of a message header.
pub const HEADER_BYTES: usize = 8;

/// The current protocol version word.
pub const VERSION_1: u64 = 1;
/// The pre-1.0 protocol version word; a 1.x server accepts it, and it changes only the layout of
/// the SERVER response (address only).
pub const VERSION_LEGACY: u64 = 0x8610_4dd7_6043_3fe5;
/// First word of an atoll peer (node-to-node) connection. It is neither client version, so one
/// listening address serves clients and peers: the reactor dispatches on the first word.
pub const PEER_MAGIC_V1: u64 = u64::from_le_bytes(*b"ATOLPEER");
/// First word of an atoll client that wants to know whether it talks to an atoll node: an atoll
/// node serves the connection exactly as a version 1 one, while dqlite closes it at once (an
/// unknown version word). atoll's own tools use it before sending an atoll-specific request
/// (DESCRIBE format 1), which would upset a dqlite node.
pub const VERSION_ATOLL_1: u64 = u64::from_le_bytes(*b"ATOLLCL1");

/// The client protocol version a connection announced in its first word.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ProtocolVersion {
    /// Version 1, what every current client sends.
    V1,
    /// The legacy pre-1.0 version; only SERVER's layout differs.
    Legacy,
}

impl ProtocolVersion {
    /// The version word a client sends.
    pub fn word(self) -> u64 {
        match self {
            ProtocolVersion::V1 => VERSION_1,
            ProtocolVersion::Legacy => VERSION_LEGACY,
        }
    }
}

/// What the first word of a connection says the connection is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Greeting {
    /// A dqlite client speaking this protocol version.
    Client(ProtocolVersion),
    /// An atoll peer (another node); handled by the peer transport, not by this protocol.
    Peer,
}

impl Greeting {
    /// Classifies the first word of a connection; any other word is refused (dqlite closes the
    /// connection without writing anything).
    pub fn decode(word: u64) -> Result<Greeting, DecodeError> {
        match word {
            VERSION_1 | VERSION_ATOLL_1 => Ok(Greeting::Client(ProtocolVersion::V1)),
            VERSION_LEGACY => Ok(Greeting::Client(ProtocolVersion::Legacy)),
            PEER_MAGIC_V1 => Ok(Greeting::Peer),
            other => Err(DecodeError::InvalidVersion(other)),
        }
    }
}

/// A message header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    /// Body length in words.
    pub words: u32,
    /// Request or response type code.
    pub kind: u8,
    /// Body layout version.
    pub schema: u8,
    /// Unused, 0 from every sender; not checked on receipt.
    pub extra: u16,
}

impl Header {
    /// Parses the 8 header bytes. Any bit pattern is a header; [`Header::body_bytes_checked`]
    /// validates the length.
    pub fn decode(bytes: [u8; HEADER_BYTES]) -> Header {
        Header {
            words: u32::from_le_bytes([bytes[0], bytes[1], bytes[2], bytes[3]]),
            kind: bytes[4],
            schema: bytes[5],
            extra: u16::from_le_bytes([bytes[6], bytes[7]]),
        }
    }

    /// The 8 header bytes.
    pub fn encode(&self) -> [u8; HEADER_BYTES] {
        let mut bytes = [0u8; HEADER_BYTES];
        bytes[..4].copy_from_slice(&self.words.to_le_bytes());
        bytes[4] = self.kind;
        bytes[5] = self.schema;
        bytes[6..].copy_from_slice(&self.extra.to_le_bytes());
        bytes
    }

    /// Body length in bytes.
    pub fn body_bytes(&self) -> u64 {
        u64::from(self.words) * WORD_BYTES as u64
    }

    /// Body length in bytes, validated: at least one word (every defined message has one; a
    /// 0-word header crashes dqlite 1.11) and at most `body_bytes_max`.
    ///
    /// A header can declare up to 32 GiB, more than a 32-bit machine can address: the maximum is
    /// also capped at `usize::MAX`, so such a header is `MessageTooLarge` there, never a panic.
    pub fn body_bytes_checked(&self, body_bytes_max: u64) -> Result<usize, DecodeError> {
        self.body_bytes_within(
            body_bytes_max,
            u64::try_from(usize::MAX).unwrap_or(u64::MAX),
        )
    }

    /// [`Header::body_bytes_checked`] on a machine whose `usize` ends at `usize_max` (a
    /// parameter, so that tests on a 64-bit machine cover the 32-bit case too).
    fn body_bytes_within(&self, body_bytes_max: u64, usize_max: u64) -> Result<usize, DecodeError> {
        if self.words == 0 {
            return Err(DecodeError::EmptyBody { kind: self.kind });
        }
        let body_bytes = self.body_bytes();
        let max = body_bytes_max.min(usize_max);
        if body_bytes > max {
            return Err(DecodeError::MessageTooLarge { body_bytes, max });
        }
        Ok(usize::try_from(body_bytes).expect("at most usize::MAX, checked above"))
    }
}

/// Splits one complete message (header + body, nothing more) into its header and body.
pub fn split_message(message: &[u8]) -> Result<(Header, &[u8]), DecodeError> {
    let Some((header, body)) = message.split_first_chunk::<HEADER_BYTES>() else {
        return Err(DecodeError::Truncated {
            field: "header",
            needed: HEADER_BYTES as u64,
            remaining: message.len() as u64,
        });
    };
    let header = Header::decode(*header);
    let body_bytes = header.body_bytes_checked(u64::MAX)?;
    if body.len() != body_bytes {
        return Err(DecodeError::Truncated {
            field: "body",
            needed: body_bytes as u64,
            remaining: body.len() as u64,
        });
    }
    Ok((header, body))
}

/// Appends one message: a header for `kind`/`schema`, the body `body` writes, zero padding to a
/// whole word, then the word count patched into the header.
pub fn write_message(out: &mut Vec<u8>, kind: u8, schema: u8, body: impl FnOnce(&mut Vec<u8>)) {
    let start = out.len();
    out.extend_from_slice(&[0u8; HEADER_BYTES]);
    body(out);
    pad_to_word(out, start + HEADER_BYTES);
    finish_message(out, start, kind, schema);
}

/// Patches the header of the message that starts at `start` and runs to the end of `out`.
pub(crate) fn finish_message(out: &mut [u8], start: usize, kind: u8, schema: u8) {
    let body_bytes = out.len() - start - HEADER_BYTES;
    assert_eq!(body_bytes % WORD_BYTES, 0, "message bodies are whole words");
    let words = u32::try_from(body_bytes / WORD_BYTES).expect("a message body is under 32 GiB");
    let header = Header {
        words,
        kind,
        schema,
        extra: 0,
    };
    out[start..start + HEADER_BYTES].copy_from_slice(&header.encode());
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn test_huge_word_count_is_too_large_on_32_bit_not_a_panic() {
        // u32::MAX words declare a 32 GiB body. On armv7 that does not fit in a usize: decoding
        // such a header from untrusted bytes panicked there ("body_bytes_max fits in usize")
        // until the maximum was capped at usize::MAX. Checked here for a 32-bit usize on any
        // machine, and through the public decoders on this one.
        let header = Header {
            words: u32::MAX,
            kind: 0,
            schema: 0,
            extra: 0,
        };
        let usize_max_32_bit = u64::from(u32::MAX);
        assert_eq!(
            header.body_bytes_within(u64::MAX, usize_max_32_bit),
            Err(DecodeError::MessageTooLarge {
                body_bytes: u64::from(u32::MAX) * 8,
                max: usize_max_32_bit,
            })
        );
        let fits = Header {
            words: (u32::MAX / 8) - 1,
            ..header
        };
        assert_eq!(
            fits.body_bytes_within(u64::MAX, usize_max_32_bit),
            Ok(usize::try_from(fits.body_bytes()).unwrap())
        );
        let mut message = header.encode().to_vec();
        message.extend_from_slice(&[0u8; 8]);
        assert!(split_message(&message).is_err());
        assert!(Request::decode_message(&message).is_err());
    }
}
