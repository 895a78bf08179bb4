//! SQLite's write-ahead log, read without SQLite: find the committed frames of a WAL file and
//! apply them to the main database image, as a checkpoint would. `atoll dump` needs this because
//! dqlite 1.11 answers DUMP with the main file and the WAL as they are on the node.
//!
//! The WAL format (header, frames, checksums) is written out once, in the parent module.
//!
//! As in SQLite's recovery, the log ends at the first invalid or incomplete frame (salts or
//! running checksum wrong), and only frames up to the last valid commit frame count. The main
//! file's page size must match the WAL's and the sizes claimed must fit in the two files (a
//! bound on allocation); each kept page is written at `(page - 1) × page_size` in log order and
//! the image cut or extended to the last commit's size. Nothing changes on error.

use std::fmt;

use super::{
    checksum, FRAME_HEADER_BYTES, PAGE_BYTES_MAX, PAGE_BYTES_MIN, WAL_FORMAT_VERSION,
    WAL_HEADER_BYTES, WAL_MAGIC_BIG_ENDIAN, WAL_MAGIC_LITTLE_ENDIAN,
};

/// Bytes of the WAL header, as an offset into WAL bytes.
const HEADER_BYTES: usize = WAL_HEADER_BYTES as usize;

fn read_u32_be(bytes: &[u8], offset: usize) -> u32 {
    let word: [u8; 4] = bytes[offset..offset + 4]
        .try_into()
        .expect("a 4-byte slice");
    u32::from_be_bytes(word)
}

/// A valid WAL header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WalHeader {
    /// Checksums run over big-endian words.
    pub big_endian: bool,
    /// Page size in bytes.
    pub page_bytes: u32,
    /// Salt-1 and salt-2; every frame of this log generation repeats them.
    pub salt: [u32; 2],
    /// The header's checksum, where the frames' running checksum starts.
    pub checksum: [u32; 2],
}

/// Why a WAL header is not valid; SQLite then ignores the whole log.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HeaderProblem {
    /// Shorter than a header.
    Short,
    /// Not a WAL magic number.
    Magic(u32),
    /// An unknown format version.
    Version(u32),
    /// A page size that is not a power of two in 512..=65536.
    PageSize(u32),
    /// The header's checksum does not match its bytes.
    Checksum,
}

impl fmt::Display for HeaderProblem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            HeaderProblem::Short => write!(f, "shorter than a WAL header"),
            HeaderProblem::Magic(magic) => write!(f, "bad magic {magic:#010x}"),
            HeaderProblem::Version(version) => write!(f, "unknown WAL version {version}"),
            HeaderProblem::PageSize(size) => write!(f, "invalid page size {size}"),
            HeaderProblem::Checksum => write!(f, "header checksum mismatch"),
        }
    }
}

impl WalHeader {
    /// Parses and verifies the header at the start of `wal`.
    pub fn parse(wal: &[u8]) -> Result<WalHeader, HeaderProblem> {
        if wal.len() < HEADER_BYTES {
            return Err(HeaderProblem::Short);
        }
        let magic = read_u32_be(wal, 0);
        let big_endian = match magic {
            WAL_MAGIC_LITTLE_ENDIAN => false,
            WAL_MAGIC_BIG_ENDIAN => true,
            other => return Err(HeaderProblem::Magic(other)),
        };
        let version = read_u32_be(wal, 4);
        if version != WAL_FORMAT_VERSION {
            return Err(HeaderProblem::Version(version));
        }
        let page_bytes = read_u32_be(wal, 8);
        if !page_bytes.is_power_of_two() || !(PAGE_BYTES_MIN..=PAGE_BYTES_MAX).contains(&page_bytes)
        {
            return Err(HeaderProblem::PageSize(page_bytes));
        }
        let stored = [read_u32_be(wal, 24), read_u32_be(wal, 28)];
        if checksum(big_endian, &wal[..24], [0, 0]) != stored {
            return Err(HeaderProblem::Checksum);
        }
        Ok(WalHeader {
            big_endian,
            page_bytes,
            salt: [read_u32_be(wal, 16), read_u32_be(wal, 20)],
            checksum: stored,
        })
    }

    /// Bytes of one frame: its header and a page.
    pub fn frame_bytes(&self) -> usize {
        FRAME_HEADER_BYTES + self.page_bytes as usize
    }
}

/// Why the log stopped where it did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogEnd {
    /// The file is empty: no log at all.
    Empty,
    /// The header is not valid, so no frame counts.
    InvalidHeader(HeaderProblem),
    /// Every byte after the header is a valid frame.
    Clean,
    /// The file ends inside a frame (a torn write).
    TornFrame {
        /// Index (from 0) of the incomplete frame.
        frame: u64,
    },
    /// A frame whose salts differ from the header's (left from an earlier log generation).
    SaltMismatch {
        /// Index of the frame.
        frame: u64,
    },
    /// A frame whose checksum does not match (or whose page number is 0).
    BadFrame {
        /// Index of the frame.
        frame: u64,
    },
}

/// The committed content of a WAL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CommittedLog {
    /// The header, when valid.
    pub header: Option<WalHeader>,
    /// Frames up to and including the last valid commit frame, in log order: (page number,
    /// byte offset of the page in the WAL).
    pub frames: Vec<(u32, usize)>,
    /// Database size in pages after the last commit (`None` when nothing committed).
    pub database_pages: Option<u32>,
    /// Number of commit frames among `frames` (transactions).
    pub commits: u64,
    /// Valid frames after the last commit (a transaction still in progress), ignored.
    pub uncommitted_frames: u64,
    /// Where and why the valid log ended.
    pub end: LogEnd,
}

/// Scans `wal` for its committed frames, verifying salts and cumulative checksums.
pub fn scan(wal: &[u8]) -> CommittedLog {
    let mut log = CommittedLog {
        header: None,
        frames: Vec::new(),
        database_pages: None,
        commits: 0,
        uncommitted_frames: 0,
        end: LogEnd::Clean,
    };
    if wal.is_empty() {
        log.end = LogEnd::Empty;
        return log;
    }
    let header = match WalHeader::parse(wal) {
        Ok(header) => header,
        Err(problem) => {
            log.end = LogEnd::InvalidHeader(problem);
            return log;
        }
    };
    log.header = Some(header);
    let frame_bytes = header.frame_bytes();
    let mut running = header.checksum;
    let mut pending = Vec::new();
    let mut offset = HEADER_BYTES;
    // Bounded: each turn consumes one whole frame of the file, or stops.
    for frame in 0u64.. {
        if offset == wal.len() {
            break;
        }
        if wal.len() - offset < frame_bytes {
            log.end = LogEnd::TornFrame { frame };
            break;
        }
        let frame_header = &wal[offset..offset + FRAME_HEADER_BYTES];
        let page = &wal[offset + FRAME_HEADER_BYTES..offset + frame_bytes];
        let page_number = read_u32_be(frame_header, 0);
        let commit_pages = read_u32_be(frame_header, 4);
        let salt = [read_u32_be(frame_header, 8), read_u32_be(frame_header, 12)];
        if salt != header.salt {
            log.end = LogEnd::SaltMismatch { frame };
            break;
        }
        let next = checksum(header.big_endian, &frame_header[..8], running);
        let next = checksum(header.big_endian, page, next);
        let stored = [read_u32_be(frame_header, 16), read_u32_be(frame_header, 20)];
        if page_number == 0 || next != stored {
            log.end = LogEnd::BadFrame { frame };
            break;
        }
        running = next;
        pending.push((page_number, offset + FRAME_HEADER_BYTES));
        if commit_pages != 0 {
            log.frames.append(&mut pending);
            log.database_pages = Some(commit_pages);
            log.commits += 1;
        }
        offset += frame_bytes;
    }
    log.uncommitted_frames = pending.len() as u64;
    log
}

/// Why a WAL cannot be applied to a main file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ApplyError {
    /// The main file and the WAL disagree on the page size.
    PageSizeMismatch {
        /// From the main file's header.
        main: u32,
        /// From the WAL header.
        wal: u32,
    },
    /// The main file is not a whole number of pages.
    MainNotWholePages {
        /// Its size.
        main_bytes: usize,
        /// The WAL's page size.
        page_bytes: u32,
    },
    /// A committed size or page number beyond what the two files can hold: a corrupt log.
    SizeImplausible {
        /// Pages claimed.
        pages: u64,
        /// Most pages the files can account for.
        pages_max: u64,
    },
}

impl fmt::Display for ApplyError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ApplyError::PageSizeMismatch { main, wal } => write!(
                f,
                "the main file has {main}-byte pages but the WAL {wal}-byte pages"
            ),
            ApplyError::MainNotWholePages {
                main_bytes,
                page_bytes,
            } => write!(
                f,
                "the main file ({main_bytes} bytes) is not a whole number of {page_bytes}-byte \
                 pages"
            ),
            ApplyError::SizeImplausible { pages, pages_max } => write!(
                f,
                "the WAL claims {pages} pages but the files hold at most {pages_max}"
            ),
        }
    }
}

impl std::error::Error for ApplyError {}

/// The page size recorded in a database header (bytes 16..18, big-endian; 1 means 65536), if
/// the image is long enough to hold one.
pub fn main_page_bytes(main: &[u8]) -> Option<u32> {
    if main.len() < 100 {
        return None;
    }
    match u16::from_be_bytes([main[16], main[17]]) {
        1 => Some(PAGE_BYTES_MAX),
        size => Some(u32::from(size)),
    }
}

/// What applying a WAL did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Applied {
    /// The scan of the WAL.
    pub log: CommittedLog,
    /// Pages in the result.
    pub pages: u64,
}

/// Applies the committed frames of `wal` to the main database image `main`, in place: each
/// frame's page is written at `(page_number - 1) * page_size`, and the image is then cut or
/// extended to the database size of the last commit. Decides everything before changing
/// `main`; on error `main` is untouched.
pub fn apply(main: &mut Vec<u8>, wal: &[u8]) -> Result<Applied, ApplyError> {
    let log = scan(wal);
    let (Some(header), Some(database_pages)) = (log.header, log.database_pages) else {
        let pages = main_page_bytes(main).map_or(0, |size| (main.len() / size as usize) as u64);
        return Ok(Applied { log, pages });
    };
    let page_bytes = header.page_bytes;
    if let Some(main_page_bytes) = main_page_bytes(main) {
        if main_page_bytes != page_bytes {
            return Err(ApplyError::PageSizeMismatch {
                main: main_page_bytes,
                wal: page_bytes,
            });
        }
    }
    if !main.len().is_multiple_of(page_bytes as usize) {
        return Err(ApplyError::MainNotWholePages {
            main_bytes: main.len(),
            page_bytes,
        });
    }
    // Every page of the database is in the main file or in the log, so a larger claim is
    // corruption; checking it keeps a bad log from making us allocate without bound.
    let pages_max = ((main.len() + wal.len()) / page_bytes as usize) as u64;
    let page_number_max = log.frames.iter().map(|&(page, _)| page).max().unwrap_or(0);
    for pages in [u64::from(database_pages), u64::from(page_number_max)] {
        if pages > pages_max {
            return Err(ApplyError::SizeImplausible { pages, pages_max });
        }
    }
    let page_bytes = page_bytes as usize;
    for &(page_number, offset) in &log.frames {
        let start = (page_number as usize - 1) * page_bytes;
        if main.len() < start + page_bytes {
            main.resize(start + page_bytes, 0);
        }
        main[start..start + page_bytes].copy_from_slice(&wal[offset..offset + page_bytes]);
    }
    main.resize(database_pages as usize * page_bytes, 0);
    assert_eq!(main.len() % page_bytes, 0);
    Ok(Applied {
        log,
        pages: u64::from(database_pages),
    })
}

#[cfg(test)]
mod tests;
