//! The Raft command that carries one committed transaction of one database: its WAL frames.
//!
//! Byte layout (version 1; atoll's own fields little-endian, pages as SQLite wrote them):
//!
//! | offset   | size            | field                                                   |
//! |----------|-----------------|---------------------------------------------------------|
//! | 0        | 4               | magic `ATLC`                                            |
//! | 4        | 1               | version, 1                                              |
//! | 5        | 1               | kind, 1 = frames                                        |
//! | 6        | 2               | name length N, 1..=64                                   |
//! | 8        | 4               | page size, a power of two in 512..=65536                |
//! | 12       | 4               | frame count F, >= 1                                     |
//! | 16       | 4               | database size in pages after commit (the commit marker) |
//! | 20       | 8               | base index: the command the transaction ran on top of:  |
//! |          |                 | the one before it in flight, else the last one applied  |
//! | 28       | 8               | origin node id                                          |
//! | 36       | 8               | proposal id (unique per origin engine)                  |
//! | 44       | N               | database name, `[A-Za-z0-9_.-]`, no reserved suffix     |
//! | 44 + N   | F × (4 + page)  | frames: page number (u32, 1..=0xfffffffe), page bytes   |
//!
//! The length must match exactly. [`Command::decode`] validates everything (page size, every page
//! number, the commit marker, the name) before the caller touches any file.

use byteorder::{ByteOrder, LittleEndian};

use crate::vfs::FrameRef;

const MAGIC: &[u8; 4] = b"ATLC";
const VERSION: u8 = 1;
const KIND_FRAMES: u8 = 1;
/// Bytes before the database name.
pub const HEADER_BYTES: usize = 44;
/// SQLite's largest page number (`max_page_count` tops out at 4294967294).
pub const PAGE_NUMBER_MAX: u32 = 0xffff_fffe;
/// Longest database name, in bytes.
pub const NAME_BYTES_MAX: usize = 64;

/// Why a command was rejected.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DecodeError {
    /// Shorter than its header, or its length disagrees with its frame count and page size.
    Length {
        /// Bytes present.
        actual: usize,
        /// Bytes the header implies (0 when the header itself is truncated).
        expected: usize,
    },
    /// Not a command (wrong magic).
    Magic,
    /// A version or kind this build does not know.
    Version(u8, u8),
    /// A page size that is not a power of two in 512..=65536.
    PageSize(u32),
    /// A command without frames.
    NoFrames,
    /// The database size is zero: no commit marker.
    NoCommit,
    /// A page number of 0 or above SQLite's maximum.
    PageNumber {
        /// Position of the frame in the command.
        frame: u32,
        /// The offending page number.
        page_number: u32,
    },
    /// An invalid database name.
    Name(&'static str),
}

impl std::fmt::Display for DecodeError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            DecodeError::Length { actual, expected } => {
                write!(f, "command is {actual} bytes, expected {expected}")
            }
            DecodeError::Magic => write!(f, "not an atoll command (bad magic)"),
            DecodeError::Version(version, kind) => {
                write!(f, "unknown command version {version} kind {kind}")
            }
            DecodeError::PageSize(size) => write!(f, "bad page size {size}"),
            DecodeError::NoFrames => write!(f, "command carries no frames"),
            DecodeError::NoCommit => write!(f, "command has no commit marker (database size 0)"),
            DecodeError::PageNumber { frame, page_number } => {
                write!(f, "frame {frame} has bad page number {page_number}")
            }
            DecodeError::Name(reason) => write!(f, "bad database name: {reason}"),
        }
    }
}

impl std::error::Error for DecodeError {}

/// Checks a database name: 1..=64 bytes of `[A-Za-z0-9_.-]`, not starting with a dot, and not
/// ending in a suffix atoll uses for its own files.
pub fn validate_database_name(name: &str) -> Result<(), &'static str> {
    if name.is_empty() {
        return Err("empty");
    }
    if name.len() > NAME_BYTES_MAX {
        return Err("longer than 64 bytes");
    }
    if name.starts_with('.') {
        return Err("starts with a dot");
    }
    if !name
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'.' || b == b'-')
    {
        return Err("only letters, digits, '_', '.' and '-' are allowed");
    }
    for reserved in crate::RESERVED_SUFFIXES {
        if name.ends_with(reserved) {
            return Err("ends with a suffix reserved for atoll's files");
        }
    }
    Ok(())
}

/// A decoded command, borrowing the bytes it was decoded from (the frames are not copied).
#[derive(Debug, Clone, Copy)]
pub struct Command<'a> {
    /// The database the frames belong to.
    pub database: &'a str,
    /// The page size of every frame.
    pub page_size: u32,
    /// The database size in pages after this transaction.
    pub db_size_pages: u32,
    /// The index of the command the leader executed the transaction on top of: the previous
    /// command of its chain still in flight, else the last one applied to the database. Apply
    /// refuses a command whose base is not the database's last applied command.
    pub base_index: u64,
    /// The node whose engine produced the command.
    pub origin: u64,
    /// The origin engine's proposal id.
    pub proposal: u64,
    frame_count: u32,
    frames: &'a [u8],
}

/// The fixed fields of a command to encode.
#[derive(Debug, Clone, Copy)]
pub struct CommandHeader<'a> {
    /// The database.
    pub database: &'a str,
    /// The page size.
    pub page_size: u32,
    /// The database size after commit.
    pub db_size_pages: u32,
    /// See [`Command::base_index`].
    pub base_index: u64,
    /// See [`Command::origin`].
    pub origin: u64,
    /// See [`Command::proposal`].
    pub proposal: u64,
}

impl<'a> Command<'a> {
    /// Decodes and fully validates `bytes`.
    pub fn decode(bytes: &'a [u8]) -> Result<Command<'a>, DecodeError> {
        if bytes.len() < HEADER_BYTES {
            return Err(DecodeError::Length {
                actual: bytes.len(),
                expected: 0,
            });
        }
        if &bytes[0..4] != MAGIC {
            return Err(DecodeError::Magic);
        }
        if bytes[4] != VERSION || bytes[5] != KIND_FRAMES {
            return Err(DecodeError::Version(bytes[4], bytes[5]));
        }
        let name_len = usize::from(LittleEndian::read_u16(&bytes[6..8]));
        let page_size = LittleEndian::read_u32(&bytes[8..12]);
        let frame_count = LittleEndian::read_u32(&bytes[12..16]);
        let db_size_pages = LittleEndian::read_u32(&bytes[16..20]);
        let base_index = LittleEndian::read_u64(&bytes[20..28]);
        let origin = LittleEndian::read_u64(&bytes[28..36]);
        let proposal = LittleEndian::read_u64(&bytes[36..44]);
        if !page_size.is_power_of_two() || !(512..=65536).contains(&page_size) {
            return Err(DecodeError::PageSize(page_size));
        }
        if frame_count == 0 {
            return Err(DecodeError::NoFrames);
        }
        if db_size_pages == 0 {
            return Err(DecodeError::NoCommit);
        }
        if db_size_pages > PAGE_NUMBER_MAX {
            return Err(DecodeError::PageNumber {
                frame: frame_count,
                page_number: db_size_pages,
            });
        }
        let frame_bytes = 4 + page_size as usize;
        let expected = (frame_count as usize)
            .checked_mul(frame_bytes)
            .and_then(|frames| frames.checked_add(HEADER_BYTES + name_len));
        if expected != Some(bytes.len()) {
            return Err(DecodeError::Length {
                actual: bytes.len(),
                expected: expected.unwrap_or(usize::MAX),
            });
        }
        let name = std::str::from_utf8(&bytes[HEADER_BYTES..HEADER_BYTES + name_len])
            .map_err(|_| DecodeError::Name("not UTF-8"))?;
        validate_database_name(name).map_err(DecodeError::Name)?;
        let frames = &bytes[HEADER_BYTES + name_len..];
        for (index, frame) in frames.chunks_exact(frame_bytes).enumerate() {
            let page_number = LittleEndian::read_u32(&frame[0..4]);
            if page_number == 0 || page_number > PAGE_NUMBER_MAX {
                return Err(DecodeError::PageNumber {
                    frame: index as u32,
                    page_number,
                });
            }
        }
        Ok(Command {
            database: name,
            page_size,
            db_size_pages,
            base_index,
            origin,
            proposal,
            frame_count,
            frames,
        })
    }

    /// The number of frames.
    pub fn frame_count(&self) -> u32 {
        self.frame_count
    }

    /// The frames, in order, borrowing the command's bytes.
    pub fn frames(&self) -> impl Iterator<Item = FrameRef<'a>> + 'a {
        let frame_bytes = 4 + self.page_size as usize;
        self.frames.chunks_exact(frame_bytes).map(|frame| FrameRef {
            page_number: LittleEndian::read_u32(&frame[0..4]),
            page: &frame[4..],
        })
    }

    /// Encodes a command into `out` (cleared first), copying each page once.
    pub fn encode<'f>(
        out: &mut Vec<u8>,
        header: CommandHeader<'_>,
        frame_count: u32,
        frames: &mut dyn Iterator<Item = FrameRef<'f>>,
    ) {
        assert!(frame_count >= 1);
        assert!(header.db_size_pages >= 1);
        assert!(validate_database_name(header.database).is_ok());
        out.clear();
        let frame_bytes = 4 + header.page_size as usize;
        out.reserve(HEADER_BYTES + header.database.len() + frame_count as usize * frame_bytes);
        out.extend_from_slice(MAGIC);
        out.push(VERSION);
        out.push(KIND_FRAMES);
        let mut field = [0u8; 8];
        LittleEndian::write_u16(&mut field[..2], header.database.len() as u16);
        out.extend_from_slice(&field[..2]);
        for value in [header.page_size, frame_count, header.db_size_pages] {
            LittleEndian::write_u32(&mut field[..4], value);
            out.extend_from_slice(&field[..4]);
        }
        for value in [header.base_index, header.origin, header.proposal] {
            LittleEndian::write_u64(&mut field, value);
            out.extend_from_slice(&field);
        }
        out.extend_from_slice(header.database.as_bytes());
        let mut written = 0u32;
        for frame in frames {
            assert_eq!(frame.page.len(), header.page_size as usize);
            LittleEndian::write_u32(&mut field[..4], frame.page_number);
            out.extend_from_slice(&field[..4]);
            out.extend_from_slice(frame.page);
            written += 1;
        }
        assert_eq!(
            written, frame_count,
            "frame count disagrees with the frames given"
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(pages: &[(u32, u8)], page_size: u32) -> Vec<u8> {
        let bodies: Vec<Vec<u8>> = pages
            .iter()
            .map(|(_, fill)| vec![*fill; page_size as usize])
            .collect();
        let mut frames = pages
            .iter()
            .zip(&bodies)
            .map(|((number, _), body)| FrameRef {
                page_number: *number,
                page: body,
            });
        let mut out = Vec::new();
        let header = CommandHeader {
            database: "test.db",
            page_size,
            db_size_pages: 3,
            base_index: 7,
            origin: 1,
            proposal: 9,
        };
        Command::encode(&mut out, header, pages.len() as u32, &mut frames);
        out
    }

    #[test]
    fn test_round_trip() {
        let bytes = sample(&[(1, 0xaa), (3, 0xbb)], 512);
        let command = Command::decode(&bytes).unwrap();
        assert_eq!(command.database, "test.db");
        assert_eq!(command.page_size, 512);
        assert_eq!(command.db_size_pages, 3);
        assert_eq!(command.base_index, 7);
        assert_eq!(command.proposal, 9);
        let frames: Vec<_> = command.frames().collect();
        assert_eq!(frames.len(), 2);
        assert_eq!(frames[1].page_number, 3);
        assert!(frames[1].page.iter().all(|b| *b == 0xbb));
    }

    #[test]
    fn test_rejects_malformed() {
        let good = sample(&[(1, 1)], 512);
        // Truncated page.
        assert!(matches!(
            Command::decode(&good[..good.len() - 1]),
            Err(DecodeError::Length { .. })
        ));
        // Bad page size.
        let mut bad = good.clone();
        bad[8..12].copy_from_slice(&1000u32.to_le_bytes());
        assert_eq!(
            Command::decode(&bad).unwrap_err(),
            DecodeError::PageSize(1000)
        );
        // Page number 0.
        let mut bad = good.clone();
        let frame_start = HEADER_BYTES + "test.db".len();
        bad[frame_start..frame_start + 4].copy_from_slice(&0u32.to_le_bytes());
        assert!(matches!(
            Command::decode(&bad),
            Err(DecodeError::PageNumber { .. })
        ));
        // No commit marker.
        let mut bad = good.clone();
        bad[16..20].copy_from_slice(&0u32.to_le_bytes());
        assert_eq!(Command::decode(&bad).unwrap_err(), DecodeError::NoCommit);
        // Bad name.
        let mut bad = good.clone();
        bad[HEADER_BYTES] = b'/';
        assert!(matches!(Command::decode(&bad), Err(DecodeError::Name(_))));
        // Magic.
        let mut bad = good;
        bad[0] = b'X';
        assert_eq!(Command::decode(&bad).unwrap_err(), DecodeError::Magic);
    }

    #[test]
    fn test_database_names() {
        assert!(validate_database_name("demo.db").is_ok());
        assert!(validate_database_name("a-b_c.1").is_ok());
        assert!(validate_database_name("").is_err());
        assert!(validate_database_name("../x").is_err());
        assert!(validate_database_name(".hidden").is_err());
        assert!(validate_database_name("x-wal").is_err());
        assert!(validate_database_name("x-atoll").is_err());
        assert!(validate_database_name(&"a".repeat(65)).is_err());
    }
}
