//! Little-endian primitives of the dqlite wire protocol: a bounds-checked reader over one message
//! body, the writers that mirror it, and [`DecodeError`].
//!
//! Every read checks the bytes it needs against the bytes that remain *before* it copies or
//! allocates anything, so a decoder built on [`Reader`] never allocates more than its input
//! justifies and never panics on malformed input.

use std::fmt;

use byteorder::{ByteOrder, LittleEndian};

/// Every message header is one word and every body a whole number of words.
pub const WORD_BYTES: usize = 8;

/// `n` rounded up to the next multiple of 8 (the word size). `n` comes from an in-memory length,
/// so the addition cannot overflow in practice; it saturates rather than wraps if it ever did.
pub fn roundup8(n: usize) -> usize {
    n.saturating_add(WORD_BYTES - 1) & !(WORD_BYTES - 1)
}

/// Why a message could not be decoded. Each variant says which field or value was at fault, so the
/// log line and the FAILURE message sent back are precise.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DecodeError {
    /// A field needs more bytes than the body has left.
    Truncated {
        /// The field being read.
        field: &'static str,
        /// Bytes the field needs.
        needed: u64,
        /// Bytes left in the body.
        remaining: u64,
    },
    /// A `text` field has no NUL terminator inside the body.
    TextUnterminated {
        /// The field being read.
        field: &'static str,
    },
    /// A `text` field is not valid UTF-8.
    TextNotUtf8 {
        /// The field being read.
        field: &'static str,
    },
    /// The header declares a body of zero words; every message has at least one.
    EmptyBody {
        /// The message type code of the header.
        kind: u8,
    },
    /// The header declares a body larger than the configured maximum message size.
    MessageTooLarge {
        /// Body bytes the header declares.
        body_bytes: u64,
        /// The configured maximum body size in bytes.
        max: u64,
    },
    /// The request type code is not one of protocol version 1 (answered with FAILURE 1005).
    UnknownRequestType(u8),
    /// The response type code is not one of protocol version 1.
    UnknownResponseType(u8),
    /// The schema byte of the header is not one this message type defines.
    UnknownSchema {
        /// The message type code.
        kind: u8,
        /// The schema byte.
        schema: u8,
    },
    /// A value type code that the protocol does not define.
    UnknownValueType(u8),
    /// A value type that is not allowed where it appeared (UNIXTIME as a parameter).
    ValueTypeNotAllowed(u8),
    /// A count field claims more elements than the remaining bytes could hold.
    CountTooLarge {
        /// The counted field.
        field: &'static str,
        /// The count read from the wire.
        count: u64,
        /// Bytes left in the body when the count was read.
        remaining: u64,
    },
    /// A statement's parameter tuple holds more values than a statement can use.
    TooManyParameters {
        /// The count read from the wire.
        count: u64,
        /// The limit.
        max: usize,
    },
    /// The word after the last row of a ROWS body is neither DONE nor PART.
    InvalidRowsMarker(u64),
    /// A node role value other than 0 (voter), 1 (standby) or 2 (spare).
    InvalidRole(u64),
    /// A format value the request type does not define (CLUSTER: 0 or 1; DESCRIBE: 0).
    InvalidFormat {
        /// The request carrying the format.
        field: &'static str,
        /// The format value read from the wire.
        format: u64,
    },
    /// The first word of a connection is not a protocol version this server speaks.
    InvalidVersion(u64),
}

/// dqlite's "parse error" code (DQLITE_PARSE), sent in a FAILURE for undecodable requests.
pub const FAILURE_CODE_PARSE: u64 = 1005;
/// SQLITE_PROTOCOL: dqlite's code for a DESCRIBE with an unknown format.
pub const FAILURE_CODE_PROTOCOL: u64 = 15;

impl DecodeError {
    /// The FAILURE code a server sends when a request fails to decode with this error: 1005
    /// (DQLITE_PARSE), as newer dqlite does, except DESCRIBE's format, which dqlite reports as 15.
    pub fn failure_code(&self) -> u64 {
        match self {
            DecodeError::InvalidFormat {
                field: "describe format",
                ..
            } => FAILURE_CODE_PROTOCOL,
            _ => FAILURE_CODE_PARSE,
        }
    }
}

impl fmt::Display for DecodeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DecodeError::Truncated {
                field,
                needed,
                remaining,
            } => write!(
                f,
                "truncated message: {field} needs {needed} bytes, {remaining} left"
            ),
            DecodeError::TextUnterminated { field } => {
                write!(f, "text field {field} has no NUL terminator")
            }
            DecodeError::TextNotUtf8 { field } => write!(f, "text field {field} is not UTF-8"),
            DecodeError::EmptyBody { kind } => {
                write!(f, "message of type {kind} has an empty body")
            }
            DecodeError::MessageTooLarge { body_bytes, max } => {
                write!(
                    f,
                    "message body of {body_bytes} bytes exceeds the maximum of {max}"
                )
            }
            DecodeError::UnknownRequestType(kind) => {
                write!(f, "unrecognized request type {kind}")
            }
            DecodeError::UnknownResponseType(kind) => {
                write!(f, "unrecognized response type {kind}")
            }
            DecodeError::UnknownSchema { kind, schema } => {
                write!(
                    f,
                    "unrecognized schema version {schema} for message type {kind}"
                )
            }
            DecodeError::UnknownValueType(code) => write!(f, "unknown value type {code}"),
            DecodeError::ValueTypeNotAllowed(code) => {
                write!(f, "value type {code} is not allowed here")
            }
            DecodeError::TooManyParameters { count, max } => write!(
                f,
                "too many parameters: {count} (a statement takes at most {max})"
            ),
            DecodeError::CountTooLarge {
                field,
                count,
                remaining,
            } => write!(
                f,
                "{field} count {count} does not fit in the {remaining} bytes left"
            ),
            DecodeError::InvalidRowsMarker(marker) => {
                write!(f, "invalid rows end marker {marker:#018x}")
            }
            DecodeError::InvalidRole(role) => write!(f, "invalid node role {role}"),
            DecodeError::InvalidFormat { field, format } => {
                write!(f, "unrecognized {field} {format}")
            }
            DecodeError::InvalidVersion(version) => {
                write!(f, "unsupported protocol version {version:#x}")
            }
        }
    }
}

impl std::error::Error for DecodeError {}

/// A bounds-checked cursor over one message body. Offsets are from the start of the body, which
/// is word aligned in every message, so "the next word boundary" is a multiple of 8 of `offset`.
#[derive(Debug, Clone)]
pub struct Reader<'a> {
    bytes: &'a [u8],
    // Invariant: offset <= bytes.len().
    offset: usize,
}

impl<'a> Reader<'a> {
    /// A reader at the start of `bytes`.
    pub fn new(bytes: &'a [u8]) -> Self {
        Reader { bytes, offset: 0 }
    }

    /// Bytes not read yet.
    pub fn remaining(&self) -> usize {
        self.bytes.len() - self.offset
    }

    /// Whether every byte has been read.
    pub fn is_empty(&self) -> bool {
        self.remaining() == 0
    }

    /// Offset of the next byte from the start of the body.
    pub fn offset(&self) -> usize {
        self.offset
    }

    /// The unread bytes, without consuming them.
    pub fn peek_rest(&self) -> &'a [u8] {
        &self.bytes[self.offset..]
    }

    /// Consumes `count` bytes.
    pub fn take(&mut self, count: usize, field: &'static str) -> Result<&'a [u8], DecodeError> {
        if count > self.remaining() {
            return Err(DecodeError::Truncated {
                field,
                needed: count as u64,
                remaining: self.remaining() as u64,
            });
        }
        let slice = &self.bytes[self.offset..self.offset + count];
        self.offset += count;
        debug_assert!(self.offset <= self.bytes.len());
        Ok(slice)
    }

    /// Skips to the next word boundary (a no-op when already on one). The skipped bytes are
    /// padding and are not checked: go-dqlite leaves stale bytes there.
    pub fn align_to_word(&mut self, field: &'static str) -> Result<(), DecodeError> {
        let aligned = roundup8(self.offset);
        self.take(aligned - self.offset, field)?;
        Ok(())
    }

    /// One unsigned byte.
    pub fn u8(&mut self, field: &'static str) -> Result<u8, DecodeError> {
        Ok(self.take(1, field)?[0])
    }

    /// A little-endian `uint32`.
    pub fn u32(&mut self, field: &'static str) -> Result<u32, DecodeError> {
        Ok(LittleEndian::read_u32(self.take(4, field)?))
    }

    /// A little-endian `uint64`.
    pub fn u64(&mut self, field: &'static str) -> Result<u64, DecodeError> {
        Ok(LittleEndian::read_u64(self.take(8, field)?))
    }

    /// A little-endian two's complement `int64`.
    pub fn i64(&mut self, field: &'static str) -> Result<i64, DecodeError> {
        Ok(LittleEndian::read_i64(self.take(8, field)?))
    }

    /// An IEEE-754 binary64 stored little-endian.
    pub fn f64(&mut self, field: &'static str) -> Result<f64, DecodeError> {
        Ok(LittleEndian::read_f64(self.take(8, field)?))
    }

    /// A `text`: UTF-8 bytes, a NUL, then padding up to the next multiple of 8 counted from the
    /// start of the string. The padding content is not checked.
    pub fn text(&mut self, field: &'static str) -> Result<&'a str, DecodeError> {
        let start = self.offset;
        let bytes = self.text_bytes(field)?;
        match std::str::from_utf8(bytes) {
            Ok(text) => Ok(text),
            Err(_) => {
                self.offset = start;
                Err(DecodeError::TextNotUtf8 { field })
            }
        }
    }

    /// A `text`'s bytes, whatever they are (a SQLite TEXT value may hold any bytes).
    pub fn text_bytes(&mut self, field: &'static str) -> Result<&'a [u8], DecodeError> {
        let rest = self.peek_rest();
        let Some(nul) = rest.iter().position(|&b| b == 0) else {
            return Err(DecodeError::TextUnterminated { field });
        };
        let encoded = roundup8(nul + 1);
        if encoded > rest.len() {
            return Err(DecodeError::Truncated {
                field,
                needed: encoded as u64,
                remaining: rest.len() as u64,
            });
        }
        self.offset += encoded;
        Ok(&rest[..nul])
    }

    /// A `blob`: a `uint64` length, the bytes, zero padding up to a multiple of 8.
    pub fn blob(&mut self, field: &'static str) -> Result<&'a [u8], DecodeError> {
        let len = self.u64(field)?;
        let remaining = self.remaining() as u64;
        // Check the length against the remaining bytes before converting or rounding it, so a
        // huge claimed length can neither overflow nor allocate.
        if len > remaining {
            return Err(DecodeError::Truncated {
                field,
                needed: len,
                remaining,
            });
        }
        let len = len as usize;
        let padded = roundup8(len);
        let bytes = self.take(padded, field)?;
        Ok(&bytes[..len])
    }

    /// Reads a count and checks that `count` elements of at least `element_bytes_min` bytes each
    /// fit in what remains, so the caller may allocate `count` elements.
    pub fn check_count(
        &self,
        count: u64,
        element_bytes_min: usize,
        field: &'static str,
    ) -> Result<usize, DecodeError> {
        let remaining = self.remaining() as u64;
        let needed = count.checked_mul(element_bytes_min as u64);
        match needed {
            Some(needed) if needed <= remaining => Ok(count as usize),
            _ => Err(DecodeError::CountTooLarge {
                field,
                count,
                remaining,
            }),
        }
    }
}

/// Appends a little-endian `uint32`.
pub fn put_u32(out: &mut Vec<u8>, value: u32) {
    out.extend_from_slice(&value.to_le_bytes());
}

/// Appends a little-endian `uint64`.
pub fn put_u64(out: &mut Vec<u8>, value: u64) {
    out.extend_from_slice(&value.to_le_bytes());
}

/// Appends a little-endian `int64`.
pub fn put_i64(out: &mut Vec<u8>, value: i64) {
    out.extend_from_slice(&value.to_le_bytes());
}

/// Appends a binary64 little-endian.
pub fn put_f64(out: &mut Vec<u8>, value: f64) {
    out.extend_from_slice(&value.to_bits().to_le_bytes());
}

/// Appends zero bytes up to the next multiple of 8, counted from `start`.
pub fn pad_to_word(out: &mut Vec<u8>, start: usize) {
    let len = out.len() - start;
    out.resize(start + roundup8(len), 0);
}

/// Appends a `text`. A string holding a NUL is cut there by every receiver (the wire format has
/// no length field), so senders should not pass one; it is written verbatim.
pub fn put_text(out: &mut Vec<u8>, text: &str) {
    put_text_bytes(out, text.as_bytes());
}

/// Appends a `text` from its bytes (not necessarily UTF-8; without NUL).
pub fn put_text_bytes(out: &mut Vec<u8>, text: &[u8]) {
    let start = out.len();
    out.extend_from_slice(text);
    out.push(0);
    pad_to_word(out, start);
}

/// Appends a `blob`: length, bytes, zero padding.
pub fn put_blob(out: &mut Vec<u8>, bytes: &[u8]) {
    put_u64(out, bytes.len() as u64);
    let start = out.len();
    out.extend_from_slice(bytes);
    pad_to_word(out, start);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn test_text_sizes_follow_roundup8_of_len_plus_one() {
        // "" is one zero word, 7 bytes fill one word with the NUL, 8 bytes take two words.
        for (text, size) in [("", 8), ("abcdefg", 8), ("abcdefgh", 16)] {
            let mut out = Vec::new();
            put_text(&mut out, text);
            assert_eq!(out.len(), size, "{text:?}");
            let mut reader = Reader::new(&out);
            assert_eq!(reader.text("t").unwrap(), text);
            assert!(reader.is_empty());
        }
    }

    #[test]
    fn test_text_without_nul_or_padding_is_an_error() {
        let mut reader = Reader::new(b"abcdefgh");
        assert_eq!(
            reader.text("sql"),
            Err(DecodeError::TextUnterminated { field: "sql" })
        );
        // NUL present but the padding would run past the body.
        let mut reader = Reader::new(b"abcdefgh\0");
        assert!(matches!(
            reader.text("sql"),
            Err(DecodeError::Truncated { field: "sql", .. })
        ));
        let mut reader = Reader::new(b"\xff\xfe\0\0\0\0\0\0");
        assert_eq!(
            reader.text("sql"),
            Err(DecodeError::TextNotUtf8 { field: "sql" })
        );
    }

    #[test]
    fn test_blob_length_is_checked_before_use() {
        let mut out = Vec::new();
        put_u64(&mut out, u64::MAX);
        let mut reader = Reader::new(&out);
        assert!(matches!(
            reader.blob("b"),
            Err(DecodeError::Truncated {
                needed: u64::MAX,
                ..
            })
        ));
        let mut out = Vec::new();
        put_blob(&mut out, &[0, 0xff]);
        assert_eq!(out.len(), 16);
        assert_eq!(Reader::new(&out).blob("b").unwrap(), &[0, 0xff]);
    }

    #[test]
    fn test_check_count_rejects_counts_the_input_cannot_hold() {
        let reader = Reader::new(&[0u8; 16]);
        assert_eq!(reader.check_count(2, 8, "n"), Ok(2));
        assert!(reader.check_count(3, 8, "n").is_err());
        assert!(reader.check_count(u64::MAX, 8, "n").is_err());
    }
}
