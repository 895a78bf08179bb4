//! SQLite's WAL and wal-index formats, as far as atoll writes them by hand.
//!
//! The WAL file (`<db>-wal`) is big-endian, as SQLite defines it: a 32-byte header, then frames of
//! a 24-byte frame header followed by one page. The wal-index (SQLite's `-shm`, here in memory) is
//! in the host's native byte order: a 136-byte header (two copies of the index header and the
//! checkpoint info), then for each group of frames a page-number array and a hash table.
//!
//! The constants and formulas mirror SQLite's `wal.c` (`walFramePage`, `walHash`,
//! `walChecksumBytes`, `walIndexWriteHdr`); see <https://sqlite.org/walformat.html>.
//!
//! | bytes | WAL header (32 bytes, every integer big-endian) |
//! | --- | --- |
//! | 0..4 | magic `0x377f0682` (checksums over little-endian words) or `0x377f0683` (big-endian) |
//! | 4..8 | format version, 3007000 |
//! | 8..12 | page size (a power of two, 512..=65536) |
//! | 12..16 | checkpoint sequence number |
//! | 16..24 | salt-1, salt-2 |
//! | 24..32 | checksum of bytes 0..24 |
//!
//! | bytes | frame header (24 bytes), then one page |
//! | --- | --- |
//! | 0..4 | page number (from 1) |
//! | 4..8 | for a commit frame, the database size in pages after the commit; else 0 |
//! | 8..16 | salt-1, salt-2: must equal the header's |
//! | 16..24 | running checksum: from the header's, over each earlier frame, then this one |
//!
//! A frame adds its header's bytes 0..8 and then its page to the running checksum.
//!
//! The checksum runs over pairs of 32-bit words `(x0, x1)`: `s0 += x0 + s1; s1 += x1 + s0`
//! (wrapping). A frame is valid when its salts match and its checksum equals the running one;
//! the log ends at the first invalid or incomplete frame, and frames after the last valid commit
//! frame belong to a transaction that never committed.
//!
//! What atoll writes (`Engine::apply`): always the little-endian magic, so WAL bytes are the same
//! on every host, and salts derived from the Raft index of the entry that starts the WAL
//! (`index.to_le_bytes()`), so replicas write identical WAL files too.
//!
//! The same format read back without SQLite (the committed frames of any WAL, big- or
//! little-endian, applied to a main-file image as a checkpoint would; `atoll dump` uses it) is
//! [`scan`] and [`apply`].

use byteorder::{BigEndian, ByteOrder, NativeEndian};

mod reader;
pub use reader::{
    apply, main_page_bytes, scan, Applied, ApplyError, CommittedLog, HeaderProblem, LogEnd,
    WalHeader,
};

/// Bytes of the WAL file header.
pub const WAL_HEADER_BYTES: u64 = 32;
/// Bytes of a frame header.
pub const FRAME_HEADER_BYTES: usize = 24;
/// The WAL magic for checksums computed over little-endian words. atoll always writes this one,
/// so the WAL bytes are the same on every host.
pub const WAL_MAGIC_LITTLE_ENDIAN: u32 = 0x377f_0682;
/// The WAL format version SQLite writes and expects.
pub const WAL_FORMAT_VERSION: u32 = 3_007_000;
/// WAL magic saying the checksums run over big-endian words (SQLite on big-endian hosts).
pub const WAL_MAGIC_BIG_ENDIAN: u32 = 0x377f_0683;
/// Smallest page size.
pub const PAGE_BYTES_MIN: u32 = 512;
/// Largest page size.
pub const PAGE_BYTES_MAX: u32 = 65_536;

/// Bytes of one wal-index region, as SQLite maps them through `xShmMap`.
pub const SHM_REGION_BYTES: usize = 32 * 1024;
/// Bytes of one copy of the wal-index header.
pub const INDEX_HEADER_BYTES: usize = 48;
/// Bytes covered by the index header checksum (everything before `aCksum`).
const INDEX_HEADER_CHECKSUMMED_BYTES: usize = 40;
/// Bytes of the two header copies plus the checkpoint info: `WALINDEX_HDR_SIZE`.
pub const INDEX_PREFIX_BYTES: usize = 136;
/// Page numbers per region (`HASHTABLE_NPAGE`).
pub const HASH_PAGES_PER_REGION: u32 = 4096;
/// Page numbers in the first region, which also holds the header (`HASHTABLE_NPAGE_ONE`).
pub const HASH_PAGES_FIRST_REGION: u32 = HASH_PAGES_PER_REGION - (INDEX_PREFIX_BYTES as u32 / 4);
/// Hash slots per region (`HASHTABLE_NSLOT`).
pub const HASH_SLOTS: u32 = HASH_PAGES_PER_REGION * 2;
/// The multiplier of `walHash`.
const HASH_MULTIPLIER: u32 = 383;
/// Byte offset of the hash table within a region: after the page-number array.
pub const HASH_TABLE_OFFSET: usize = HASH_PAGES_PER_REGION as usize * 4;

/// Offset of the checkpoint info (`WalCkptInfo`) in region 0; its first field is `nBackfill`,
/// then `aReadMark[5]`, `aLock[8]`, `nBackfillAttempted`.
pub const CKPT_BACKFILL_OFFSET: usize = 2 * INDEX_HEADER_BYTES;
/// `READMARK_NOT_USED`.
pub const READ_MARK_UNUSED: u32 = 0xffff_ffff;

const _: () = assert!(HASH_TABLE_OFFSET + HASH_SLOTS as usize * 2 == SHM_REGION_BYTES);
const _: () = assert!(INDEX_PREFIX_BYTES == 2 * INDEX_HEADER_BYTES + 40);

/// Lock slots of the wal-index (`WAL_WRITE_LOCK`, `WAL_CKPT_LOCK`, ...).
pub const LOCK_WRITE: usize = 0;
/// The first reader lock slot, `WAL_READ_LOCK(0)`.
pub const LOCK_READ_FIRST: usize = 3;
/// Number of lock slots (`SQLITE_SHM_NLOCK`).
pub const LOCK_SLOTS: usize = 8;

/// Adds `data` (a whole number of 8-byte pairs) to a running WAL checksum.
pub fn checksum(big_endian: bool, data: &[u8], mut sum: [u32; 2]) -> [u32; 2] {
    assert!(
        data.len().is_multiple_of(8),
        "checksummed data is whole 8-byte pairs"
    );
    for pair in data.chunks_exact(8) {
        let (x0, x1): ([u8; 4], [u8; 4]) = (
            pair[..4].try_into().expect("4 bytes"),
            pair[4..].try_into().expect("4 bytes"),
        );
        let (x0, x1) = if big_endian {
            (u32::from_be_bytes(x0), u32::from_be_bytes(x1))
        } else {
            (u32::from_le_bytes(x0), u32::from_le_bytes(x1))
        };
        sum[0] = sum[0].wrapping_add(x0).wrapping_add(sum[1]);
        sum[1] = sum[1].wrapping_add(x1).wrapping_add(sum[0]);
    }
    sum
}

/// SQLite's WAL checksum over `bytes` (a multiple of 8 long), continuing from `seed`, reading
/// words as little-endian (atoll's WAL files always say so in their magic).
pub fn checksum_little_endian(bytes: &[u8], seed: [u32; 2]) -> [u32; 2] {
    checksum(false, bytes, seed)
}

/// The same checksum over native-order words: the wal-index header's own checksum.
fn checksum_native(bytes: &[u8]) -> [u32; 2] {
    assert!(bytes.len().is_multiple_of(8));
    let (mut s1, mut s2) = (0u32, 0u32);
    for pair in bytes.chunks_exact(8) {
        // The wal-index is shared memory in the host's byte order, by SQLite's definition.
        s1 = s1
            .wrapping_add(NativeEndian::read_u32(&pair[0..4]))
            .wrapping_add(s2);
        s2 = s2
            .wrapping_add(NativeEndian::read_u32(&pair[4..8]))
            .wrapping_add(s1);
    }
    [s1, s2]
}

/// Byte offset of frame `frame` (1-based) in the WAL file.
pub fn frame_offset(frame: u32, page_size: u32) -> u64 {
    assert!(frame >= 1);
    WAL_HEADER_BYTES + u64::from(frame - 1) * (FRAME_HEADER_BYTES as u64 + u64::from(page_size))
}

/// The wal-index region holding the entry of frame `frame` (`walFramePage`).
pub fn frame_region(frame: u32) -> usize {
    assert!(frame >= 1);
    ((frame + HASH_PAGES_PER_REGION - HASH_PAGES_FIRST_REGION - 1) / HASH_PAGES_PER_REGION) as usize
}

/// One less than the first frame indexed by region `region` (`iZero`).
pub fn region_zero(region: usize) -> u32 {
    if region == 0 {
        0
    } else {
        HASH_PAGES_FIRST_REGION + (region as u32 - 1) * HASH_PAGES_PER_REGION
    }
}

/// Byte offset of the page-number array inside region `region`.
pub fn region_pages_offset(region: usize) -> usize {
    if region == 0 {
        INDEX_PREFIX_BYTES
    } else {
        0
    }
}

/// The first hash slot probed for page `page` (`walHash`).
pub fn hash_slot(page: u32) -> u32 {
    page.wrapping_mul(HASH_MULTIPLIER) & (HASH_SLOTS - 1)
}

/// The next slot of a probe sequence (`walNextHash`).
pub fn hash_next(slot: u32) -> u32 {
    (slot + 1) & (HASH_SLOTS - 1)
}

/// The WAL file header atoll writes when a WAL starts (mxFrame is 0).
pub fn encode_wal_header(page_size: u32, checkpoint_sequence: u32, salt: [u8; 8]) -> [u8; 32] {
    let mut header = [0u8; 32];
    BigEndian::write_u32(&mut header[0..4], WAL_MAGIC_LITTLE_ENDIAN);
    BigEndian::write_u32(&mut header[4..8], WAL_FORMAT_VERSION);
    BigEndian::write_u32(&mut header[8..12], page_size);
    BigEndian::write_u32(&mut header[12..16], checkpoint_sequence);
    header[16..24].copy_from_slice(&salt);
    let sum = checksum_little_endian(&header[0..24], [0, 0]);
    BigEndian::write_u32(&mut header[24..28], sum[0]);
    BigEndian::write_u32(&mut header[28..32], sum[1]);
    header
}

/// Fills a frame header for `page` and returns the running checksum after this frame.
/// `db_size_pages` is non-zero only on the commit frame.
pub fn encode_frame_header(
    out: &mut [u8],
    page_number: u32,
    db_size_pages: u32,
    salt: [u8; 8],
    page: &[u8],
    running: [u32; 2],
) -> [u32; 2] {
    assert_eq!(out.len(), FRAME_HEADER_BYTES);
    assert!(page_number >= 1);
    BigEndian::write_u32(&mut out[0..4], page_number);
    BigEndian::write_u32(&mut out[4..8], db_size_pages);
    out[8..16].copy_from_slice(&salt);
    let sum = checksum_little_endian(&out[0..8], running);
    let sum = checksum_little_endian(page, sum);
    BigEndian::write_u32(&mut out[16..20], sum[0]);
    BigEndian::write_u32(&mut out[20..24], sum[1]);
    sum
}

/// Starts a run of frames appended after `header` (the apply path, and the frames of commands
/// in flight, `vfs/overlay.rs`, which must predict the same bytes): returns the running checksum
/// the first frame continues from, and the WAL header to write when the run starts a new WAL
/// generation (`header.max_frame` 0; its salts become `new_salt`).
pub fn begin_frames(
    header: &mut IndexHeader,
    page_size: u32,
    new_salt: [u8; 8],
) -> Result<([u32; 2], Option<[u8; 32]>), &'static str> {
    if header.max_frame > 0 {
        if header.big_endian_checksum != 0 {
            return Err("WAL uses big-endian checksums; atoll writes none");
        }
        return Ok((header.frame_checksum, None));
    }
    let checkpoint_sequence = 0;
    let wal_header = encode_wal_header(page_size, checkpoint_sequence, new_salt);
    header.salt = new_salt;
    header.big_endian_checksum = 0;
    let running = [
        BigEndian::read_u32(&wal_header[24..28]),
        BigEndian::read_u32(&wal_header[28..32]),
    ];
    Ok((running, Some(wal_header)))
}

/// Ends a run begun with [`begin_frames`]: `header` as `walIndexWriteHdr` leaves it once
/// `frame_count` frames, the last a commit of a database of `db_size_pages`, are published.
pub fn end_frames(
    header: &mut IndexHeader,
    frame_count: u32,
    db_size_pages: u32,
    running: [u32; 2],
    page_size: u32,
) {
    header.max_frame += frame_count;
    header.db_size_pages = db_size_pages;
    header.change = header.change.wrapping_add(1);
    header.frame_checksum = running;
    header.is_init = 1;
    header.version = WAL_FORMAT_VERSION;
    header.page_size_code = IndexHeader::page_size_code_of(page_size);
}

/// The wal-index header (`WalIndexHdr`), decoded from native-order shared memory.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IndexHeader {
    /// `iVersion`: 3007000 once initialised.
    pub version: u32,
    /// `iChange`: incremented by every transaction.
    pub change: u32,
    /// `isInit`: 1 once the header is valid.
    pub is_init: u8,
    /// `bigEndCksum`: whether WAL checksums use big-endian words.
    pub big_endian_checksum: u8,
    /// `szPage`: the page size, with 65536 stored as 1.
    pub page_size_code: u16,
    /// `mxFrame`: the last valid (committed) frame.
    pub max_frame: u32,
    /// `nPage`: the database size in pages after the last commit.
    pub db_size_pages: u32,
    /// `aFrameCksum`: the running checksum after the last frame.
    pub frame_checksum: [u32; 2],
    /// `aSalt`: the salts, raw bytes as in the WAL header.
    pub salt: [u8; 8],
}

impl IndexHeader {
    /// Decodes a header copy. Returns `None` unless its checksum matches (a torn or zeroed copy).
    pub fn decode(bytes: &[u8]) -> Option<IndexHeader> {
        assert_eq!(bytes.len(), INDEX_HEADER_BYTES);
        let sum = checksum_native(&bytes[..INDEX_HEADER_CHECKSUMMED_BYTES]);
        if sum[0] != NativeEndian::read_u32(&bytes[40..44])
            || sum[1] != NativeEndian::read_u32(&bytes[44..48])
        {
            return None;
        }
        let mut salt = [0u8; 8];
        salt.copy_from_slice(&bytes[32..40]);
        Some(IndexHeader {
            version: NativeEndian::read_u32(&bytes[0..4]),
            change: NativeEndian::read_u32(&bytes[8..12]),
            is_init: bytes[12],
            big_endian_checksum: bytes[13],
            page_size_code: NativeEndian::read_u16(&bytes[14..16]),
            max_frame: NativeEndian::read_u32(&bytes[16..20]),
            db_size_pages: NativeEndian::read_u32(&bytes[20..24]),
            frame_checksum: [
                NativeEndian::read_u32(&bytes[24..28]),
                NativeEndian::read_u32(&bytes[28..32]),
            ],
            salt,
        })
    }

    /// Encodes the header with its checksum, as `walIndexWriteHdr` does.
    pub fn encode(&self) -> [u8; INDEX_HEADER_BYTES] {
        let mut bytes = [0u8; INDEX_HEADER_BYTES];
        NativeEndian::write_u32(&mut bytes[0..4], self.version);
        NativeEndian::write_u32(&mut bytes[8..12], self.change);
        bytes[12] = self.is_init;
        bytes[13] = self.big_endian_checksum;
        NativeEndian::write_u16(&mut bytes[14..16], self.page_size_code);
        NativeEndian::write_u32(&mut bytes[16..20], self.max_frame);
        NativeEndian::write_u32(&mut bytes[20..24], self.db_size_pages);
        NativeEndian::write_u32(&mut bytes[24..28], self.frame_checksum[0]);
        NativeEndian::write_u32(&mut bytes[28..32], self.frame_checksum[1]);
        bytes[32..40].copy_from_slice(&self.salt);
        let sum = checksum_native(&bytes[..INDEX_HEADER_CHECKSUMMED_BYTES]);
        NativeEndian::write_u32(&mut bytes[40..44], sum[0]);
        NativeEndian::write_u32(&mut bytes[44..48], sum[1]);
        bytes
    }

    /// The page size in bytes.
    pub fn page_size(&self) -> u32 {
        if self.page_size_code == 1 {
            65536
        } else {
            u32::from(self.page_size_code)
        }
    }

    /// The `szPage` encoding of `page_size`.
    pub fn page_size_code_of(page_size: u32) -> u16 {
        assert!(page_size.is_power_of_two() && (512..=65536).contains(&page_size));
        if page_size == 65536 {
            1
        } else {
            page_size as u16
        }
    }
}

/// Reads the `mxFrame` field of a raw header copy without checking it.
pub fn raw_header_max_frame(bytes: &[u8]) -> u32 {
    NativeEndian::read_u32(&bytes[16..20])
}

/// Reads a native-order u32 from shared memory bytes.
pub fn read_native_u32(bytes: &[u8]) -> u32 {
    NativeEndian::read_u32(bytes)
}

/// Reads a native-order u16 from shared memory bytes.
pub fn read_native_u16(bytes: &[u8]) -> u16 {
    NativeEndian::read_u16(bytes)
}

/// Writes a native-order u32 into shared memory bytes.
pub fn write_native_u32(bytes: &mut [u8], value: u32) {
    NativeEndian::write_u32(bytes, value)
}

/// Writes a native-order u16 into shared memory bytes.
pub fn write_native_u16(bytes: &mut [u8], value: u16) {
    NativeEndian::write_u16(bytes, value)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn test_frame_region_boundaries() {
        // The first region holds 4062 frames, later ones 4096 each (walFramePage's asserts).
        assert_eq!(HASH_PAGES_FIRST_REGION, 4062);
        assert_eq!(frame_region(1), 0);
        assert_eq!(frame_region(4062), 0);
        assert_eq!(frame_region(4063), 1);
        assert_eq!(frame_region(4062 + 4096), 1);
        assert_eq!(frame_region(4062 + 4096 + 1), 2);
        assert_eq!(region_zero(1), 4062);
        assert_eq!(region_zero(2), 4062 + 4096);
    }

    #[test]
    fn test_index_header_round_trip_and_torn_copy() {
        let header = IndexHeader {
            version: WAL_FORMAT_VERSION,
            change: 7,
            is_init: 1,
            big_endian_checksum: 0,
            page_size_code: 4096,
            max_frame: 12,
            db_size_pages: 3,
            frame_checksum: [1, 2],
            salt: [1, 2, 3, 4, 5, 6, 7, 8],
        };
        let mut bytes = header.encode();
        assert_eq!(IndexHeader::decode(&bytes), Some(header));
        bytes[16] ^= 1;
        assert_eq!(IndexHeader::decode(&bytes), None);
        // An all-zero header checksums to zero: valid, but not initialised.
        assert_eq!(IndexHeader::decode(&[0u8; 48]).map(|h| h.is_init), Some(0));
    }

    #[test]
    fn test_checksum_matches_sqlite_definition() {
        // s1 += x0 + s2; s2 += x1 + s1, over little-endian words.
        let bytes = [1, 0, 0, 0, 2, 0, 0, 0, 3, 0, 0, 0, 4, 0, 0, 0];
        let sum = checksum_little_endian(&bytes, [0, 0]);
        // First pair: s1 = 1, s2 = 2 + 1 = 3. Second: s1 = 1 + 3 + 3 = 7, s2 = 3 + 4 + 7 = 14.
        assert_eq!(sum, [7, 14]);
        let header = encode_wal_header(4096, 0, [0; 8]);
        assert_eq!(BigEndian::read_u32(&header[0..4]), WAL_MAGIC_LITTLE_ENDIAN);
    }
}
