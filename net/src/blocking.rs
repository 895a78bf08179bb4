//! Blocking message I/O over a std stream, shared by the client and the capture replay harness.

use std::fmt;
use std::io::{self, Read};

use crate::protocol::{DecodeError, Header, HEADER_BYTES};

/// Why reading one message failed.
#[derive(Debug)]
pub enum ReadError {
    /// The socket failed, timed out, or the peer closed it (`UnexpectedEof`).
    Io(io::Error),
    /// The header is invalid (empty body, over the size limit).
    Decode(DecodeError),
}

impl fmt::Display for ReadError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ReadError::Io(e) => write!(f, "{e}"),
            ReadError::Decode(e) => write!(f, "{e}"),
        }
    }
}

impl std::error::Error for ReadError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            ReadError::Io(e) => Some(e),
            ReadError::Decode(e) => Some(e),
        }
    }
}

impl From<io::Error> for ReadError {
    fn from(e: io::Error) -> Self {
        ReadError::Io(e)
    }
}

/// Reads one whole message (header and body) into `message`, replacing its contents. The body
/// size is checked against `body_bytes_max` before anything is allocated for it.
pub fn read_message(
    stream: &mut impl Read,
    body_bytes_max: u64,
    message: &mut Vec<u8>,
) -> Result<Header, ReadError> {
    let mut header_bytes = [0u8; HEADER_BYTES];
    stream.read_exact(&mut header_bytes)?;
    let header = Header::decode(header_bytes);
    let body_bytes = header
        .body_bytes_checked(body_bytes_max)
        .map_err(ReadError::Decode)?;
    message.clear();
    message.extend_from_slice(&header_bytes);
    message.resize(HEADER_BYTES + body_bytes, 0);
    stream.read_exact(&mut message[HEADER_BYTES..])?;
    Ok(header)
}
