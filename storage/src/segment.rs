//! The byte format of a segment file, and the scanner that recovery and reads use to walk one.
//!
//! A segment is a 16-byte file header followed by entry records, each 8-byte aligned, then
//! zeros to the end of the file: every file is preallocated (8 MiB by default) and only ever
//! appended to, so an all-zero record header (or the exact end of the file) ends the records.
//! All integers are little-endian.
//!
//! File header:
//!
//! | offset | size | field |
//! | --- | --- | --- |
//! | 0 | 8 | magic `ATOLLSEG` |
//! | 8 | 4 | format version, u32 (1) |
//! | 12 | 4 | reserved, zero |
//!
//! Record (a 32-byte header, the payload, zero padding to a multiple of 8):
//!
//! | offset | size | field |
//! | --- | --- | --- |
//! | 0 | 4 | crc32 (crc32fast, IEEE) of header bytes 4..32, then of the payload |
//! | 4 | 4 | payload length, u32, at most [`PAYLOAD_BYTES_MAX`] (1 GiB) |
//! | 8 | 8 | index, u64: never 0, contiguous within a file |
//! | 16 | 8 | term, u64 |
//! | 24 | 1 | kind: 1 command, 2 no-op, 3 configuration |
//! | 25 | 7 | reserved, zero |
//! | 32 | n | payload |
//! | 32 + n | 0..7 | padding, zero (checked when read back) |
//!
//! Each record carries its own index, so a record cannot be taken for another. An entry too
//! large for an empty segment gets a segment of its own, rounded up to whole pages of the
//! machine; every other segment has the configured size, whatever the page size. How recovery
//! tells a torn tail from damage is [`damage_after`].

use byteorder::{ByteOrder, LittleEndian};

use crate::types::{EntryKind, LogIndex, Term};

/// The first 8 bytes of every segment file.
pub const SEGMENT_MAGIC: [u8; 8] = *b"ATOLLSEG";
/// The segment format this code writes and reads.
pub const SEGMENT_FORMAT_VERSION: u32 = 1;
/// The size of the file header; records start right after it.
pub const SEGMENT_HEADER_BYTES: usize = 16;
/// The size of a record header.
pub const RECORD_HEADER_BYTES: usize = 32;
/// Records are aligned to this many bytes.
pub const RECORD_ALIGN_BYTES: usize = 8;
/// The largest payload the log accepts (1 GiB): a record must fit in one map, and on 32-bit
/// machines the address space is small.
pub const PAYLOAD_BYTES_MAX: u32 = 1 << 30;

const _: () = assert!(SEGMENT_HEADER_BYTES.is_multiple_of(RECORD_ALIGN_BYTES));
const _: () = assert!(RECORD_HEADER_BYTES.is_multiple_of(RECORD_ALIGN_BYTES));
const _: () = assert!((PAYLOAD_BYTES_MAX as u64) < u32::MAX as u64 / 2);

/// The file header every segment starts with.
pub fn encode_segment_header() -> [u8; SEGMENT_HEADER_BYTES] {
    let mut header = [0u8; SEGMENT_HEADER_BYTES];
    header[0..8].copy_from_slice(&SEGMENT_MAGIC);
    LittleEndian::write_u32(&mut header[8..12], SEGMENT_FORMAT_VERSION);
    header
}

/// Checks the file header at the start of `bytes`; the error says what is wrong.
pub fn check_segment_header(bytes: &[u8]) -> Result<(), &'static str> {
    if bytes.len() < SEGMENT_HEADER_BYTES {
        return Err("shorter than a segment header");
    }
    if bytes[0..8] != SEGMENT_MAGIC {
        return Err("bad magic number (not an atoll segment)");
    }
    if LittleEndian::read_u32(&bytes[8..12]) != SEGMENT_FORMAT_VERSION {
        return Err("unknown segment format version");
    }
    if LittleEndian::read_u32(&bytes[12..16]) != 0 {
        return Err("reserved header bytes are not zero");
    }
    Ok(())
}

/// The on-disk size of a record with a payload of `payload_bytes`: header, payload, padding.
pub fn record_bytes(payload_bytes: usize) -> usize {
    RECORD_HEADER_BYTES + payload_bytes.next_multiple_of(RECORD_ALIGN_BYTES)
}

/// Builds the header of a record; the crc covers it (from byte 4) and `payload`.
pub fn encode_record_header(
    index: LogIndex,
    term: Term,
    kind: EntryKind,
    payload: &[u8],
) -> [u8; RECORD_HEADER_BYTES] {
    assert!(index.0 > 0, "entry indexes start at 1");
    let payload_len = u32::try_from(payload.len()).expect("payload checked against the maximum");
    assert!(payload_len <= PAYLOAD_BYTES_MAX);
    let mut header = [0u8; RECORD_HEADER_BYTES];
    LittleEndian::write_u32(&mut header[4..8], payload_len);
    LittleEndian::write_u64(&mut header[8..16], index.0);
    LittleEndian::write_u64(&mut header[16..24], term.0);
    header[24] = kind as u8;
    let crc = record_crc(&header, payload);
    LittleEndian::write_u32(&mut header[0..4], crc);
    header
}

/// Whether the crc stored in `header` matches the header and `payload`: the read-side twin of
/// the crc computed by [`encode_record_header`].
pub fn record_crc_matches(header: &[u8], payload: &[u8]) -> bool {
    assert!(header.len() >= RECORD_HEADER_BYTES);
    record_crc(header, payload) == LittleEndian::read_u32(&header[0..4])
}

fn record_crc(header: &[u8], payload: &[u8]) -> u32 {
    let mut hasher = crc32fast::Hasher::new();
    hasher.update(&header[4..RECORD_HEADER_BYTES]);
    hasher.update(payload);
    hasher.finalize()
}

/// One record found in a segment.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Record {
    /// The entry's index.
    pub index: LogIndex,
    /// The entry's term.
    pub term: Term,
    /// The entry's kind.
    pub kind: EntryKind,
    /// Where the record starts in the file.
    pub offset: usize,
    /// The payload's byte range in the file.
    pub payload_start: usize,
    /// The payload's length in bytes.
    pub payload_len: usize,
    /// Where the next record starts (after padding).
    pub end: usize,
}

/// What ends the records of a file.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stop {
    /// An all-zero record header, or the end of the bytes exactly: a clean end.
    Clean,
    /// The bytes at `offset` are not a valid next record.
    Invalid {
        /// Where the bad record starts.
        offset: usize,
        /// What check failed.
        reason: &'static str,
    },
}

/// Decodes and fully checks the record at `offset`, which must follow `previous` (the index of
/// the record before it in the same file, if any). `Ok(None)` is a clean end.
pub fn decode_record(
    bytes: &[u8],
    offset: usize,
    previous: Option<LogIndex>,
) -> Result<Option<Record>, &'static str> {
    assert!(offset.is_multiple_of(RECORD_ALIGN_BYTES));
    assert!(offset <= bytes.len());
    let rest = &bytes[offset..];
    if rest.is_empty() {
        return Ok(None);
    }
    if rest.len() < RECORD_HEADER_BYTES {
        if rest.iter().all(|&b| b == 0) {
            return Ok(None);
        }
        return Err("record header cut short by the end of the file");
    }
    let header = &rest[..RECORD_HEADER_BYTES];
    if header.iter().all(|&b| b == 0) {
        return Ok(None);
    }
    let record = decode_record_fields(header, offset, bytes.len())?;
    if let Some(previous) = previous {
        if record.index.0 != previous.0.wrapping_add(1) {
            return Err("entry index does not follow the previous entry");
        }
    }
    let payload = &bytes[record.payload_start..record.payload_start + record.payload_len];
    if bytes[record.payload_start + record.payload_len..record.end]
        .iter()
        .any(|&b| b != 0)
    {
        return Err("padding after the payload is not zero");
    }
    if record_crc(header, payload) != LittleEndian::read_u32(&header[0..4]) {
        return Err("crc mismatch");
    }
    Ok(Some(record))
}

/// Decodes the fields of a record header at `offset` and checks everything except the crc and
/// the padding: the cheap checks a read does before it trusts a length.
pub fn decode_record_fields(
    header: &[u8],
    offset: usize,
    file_len: usize,
) -> Result<Record, &'static str> {
    assert!(header.len() >= RECORD_HEADER_BYTES);
    let payload_len = LittleEndian::read_u32(&header[4..8]);
    let index = LogIndex(LittleEndian::read_u64(&header[8..16]));
    let term = Term(LittleEndian::read_u64(&header[16..24]));
    let Some(kind) = EntryKind::from_u8(header[24]) else {
        return Err("unknown entry kind");
    };
    if header[25..RECORD_HEADER_BYTES].iter().any(|&b| b != 0) {
        return Err("reserved record header bytes are not zero");
    }
    if index.0 == 0 {
        return Err("entry index 0");
    }
    if payload_len > PAYLOAD_BYTES_MAX {
        return Err("payload length beyond the maximum");
    }
    let payload_len = payload_len as usize;
    let payload_start = offset + RECORD_HEADER_BYTES;
    let end = offset
        .checked_add(record_bytes(payload_len))
        .ok_or("record length overflow")?;
    if end > file_len {
        return Err("record runs past the end of the file");
    }
    Ok(Record {
        index,
        term,
        kind,
        offset,
        payload_start,
        payload_len,
        end,
    })
}

/// The outcome of scanning a whole file.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Scan {
    /// The number of valid records.
    pub count: u64,
    /// The index of the first valid record.
    pub first: Option<LogIndex>,
    /// The index of the last valid record.
    pub last: Option<LogIndex>,
    /// The end of the last valid record (the segment header's end if none).
    pub end: usize,
    /// What stopped the scan.
    pub stop: Stop,
    /// Whether every byte from `end` to the end of the file is zero.
    pub tail_zero: bool,
}

/// Walks the records of a segment file held in `bytes` (header included), calling `visit` on
/// each valid one in order, and stops at the first that is not. Bounded: each step advances by
/// at least one record header. The caller has checked the file header.
pub fn scan(bytes: &[u8], mut visit: impl FnMut(&Record)) -> Scan {
    assert!(bytes.len() >= SEGMENT_HEADER_BYTES);
    let mut offset = SEGMENT_HEADER_BYTES;
    let mut previous: Option<LogIndex> = None;
    let mut first = None;
    let mut count = 0u64;
    let stop = loop {
        match decode_record(bytes, offset, previous) {
            Ok(None) => break Stop::Clean,
            Ok(Some(record)) => {
                assert!(record.end > offset);
                visit(&record);
                first.get_or_insert(record.index);
                previous = Some(record.index);
                count += 1;
                offset = record.end;
            }
            Err(reason) => break Stop::Invalid { offset, reason },
        }
    };
    Scan {
        count,
        first,
        last: previous,
        end: offset,
        stop,
        tail_zero: all_zero(&bytes[offset..]),
    }
}

/// Whether every byte is zero: a block at a time, each reduced without a branch per byte (the
/// compiler vectorizes it), so that recovery checks a preallocated segment's zeros at memory
/// speed rather than a byte per step.
fn all_zero(bytes: &[u8]) -> bool {
    bytes
        .chunks(4096)
        .all(|block| block.iter().fold(0u8, |acc, &b| acc | b) == 0)
}

/// Tells a torn tail from damage where the records of an open segment stop (at `end`) short of
/// its last non-zero byte. A crash can only tear the record being written last, with nothing
/// after it but the zeros the file was preallocated with, so the bytes after `end` are a torn
/// tail only if:
/// - no valid record (one whose crc matches) starts at any aligned offset after `end` (a flip
///   in a length field can make a record claim the ones after it); and
/// - if the header at `end` decodes (the record fails on its crc, padding or index), every byte
///   after the end it claims is zero.
///
/// Anything else is damage: `Some((offset, reason))` names the non-zero byte or valid record
/// that follows. Bounded: each aligned offset is tried once, and only a header whose fields
/// decode costs a crc over its payload.
pub fn damage_after(bytes: &[u8], end: usize) -> Option<(usize, &'static str)> {
    let last = last_nonzero(bytes, end)?;
    let mut offset = end + RECORD_ALIGN_BYTES;
    while offset <= last && offset + RECORD_HEADER_BYTES <= bytes.len() {
        if let Ok(Some(_)) = decode_record(bytes, offset, None) {
            return Some((offset, "a valid record after a damaged one"));
        }
        offset += RECORD_ALIGN_BYTES;
    }
    let header = bytes.get(end..end.saturating_add(RECORD_HEADER_BYTES))?;
    let record = decode_record_fields(header, end, bytes.len()).ok()?;
    last_nonzero(bytes, record.end).map(|offset| (offset, "non-zero bytes after a damaged record"))
}

/// The index of the last non-zero byte at or after `from`, if any: how much of a torn tail
/// recovery must zero.
pub fn last_nonzero(bytes: &[u8], from: usize) -> Option<usize> {
    bytes[from..]
        .iter()
        .rposition(|&b| b != 0)
        .map(|position| from + position)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file_with(entries: &[(u64, u64, &[u8])], len: usize) -> Vec<u8> {
        let mut bytes = vec![0u8; len];
        bytes[..SEGMENT_HEADER_BYTES].copy_from_slice(&encode_segment_header());
        let mut offset = SEGMENT_HEADER_BYTES;
        for &(index, term, payload) in entries {
            let header =
                encode_record_header(LogIndex(index), Term(term), EntryKind::Command, payload);
            bytes[offset..offset + RECORD_HEADER_BYTES].copy_from_slice(&header);
            let start = offset + RECORD_HEADER_BYTES;
            bytes[start..start + payload.len()].copy_from_slice(payload);
            offset += record_bytes(payload.len());
        }
        bytes
    }

    #[test]
    fn test_scan_round_trip() {
        // Three records written back to back scan back with their fields, offsets and a clean
        // end; padding keeps every record 8-byte aligned.
        let bytes = file_with(&[(5, 1, b"abc"), (6, 2, b""), (7, 2, b"12345678")], 4096);
        assert_eq!(check_segment_header(&bytes), Ok(()));
        let mut records = Vec::new();
        let scan = scan(&bytes, |record| records.push(*record));
        assert_eq!(scan.count, 3);
        assert_eq!(scan.first, Some(LogIndex(5)));
        assert_eq!(scan.last, Some(LogIndex(7)));
        assert_eq!(scan.stop, Stop::Clean);
        assert!(scan.tail_zero);
        assert_eq!(records[0].offset, 16);
        assert_eq!(records[1].offset, 16 + 32 + 8);
        assert_eq!(records[2].offset, 16 + 32 + 8 + 32);
        assert_eq!(scan.end, 16 + 32 + 8 + 32 + 32 + 8);
        assert_eq!(records[2].term, Term(2));
        assert_eq!(
            &bytes[records[0].payload_start..][..records[0].payload_len],
            b"abc"
        );
    }

    #[test]
    fn test_scan_stops_at_every_kind_of_damage() {
        // Each single-byte change of the second record makes it invalid, whichever field it
        // hits (crc, length, index, term, kind, reserved, payload or padding), and the scan
        // keeps exactly the first record.
        let clean = file_with(&[(1, 1, b"first"), (2, 1, b"second!")], 256);
        let second = SEGMENT_HEADER_BYTES + record_bytes(5);
        let second_end = second + record_bytes(7);
        for position in second..second_end {
            let mut bytes = clean.clone();
            bytes[position] ^= 0x40;
            let scan = scan(&bytes, |_| {});
            assert_eq!(scan.count, 1, "byte {position}");
            assert!(
                matches!(scan.stop, Stop::Invalid { offset, .. } if offset == second),
                "byte {position}: {:?}",
                scan.stop
            );
            assert!(!scan.tail_zero);
        }
    }

    #[test]
    fn test_scan_rejects_out_of_sequence_index() {
        let bytes = file_with(&[(1, 1, b"a"), (3, 1, b"b")], 256);
        let scan = scan(&bytes, |_| {});
        assert_eq!(scan.count, 1);
        assert_eq!(
            scan.stop,
            Stop::Invalid {
                offset: SEGMENT_HEADER_BYTES + record_bytes(1),
                reason: "entry index does not follow the previous entry"
            }
        );
    }

    #[test]
    fn test_segment_header_checks() {
        let mut header = encode_segment_header().to_vec();
        assert_eq!(check_segment_header(&header), Ok(()));
        assert!(check_segment_header(&header[..8]).is_err());
        header[9] = 1;
        assert_eq!(
            check_segment_header(&header),
            Err("unknown segment format version")
        );
        assert!(check_segment_header(&[0u8; 16]).is_err());
    }

    #[test]
    fn test_record_running_past_the_end_is_invalid() {
        let mut bytes = file_with(&[(1, 1, b"abcdefgh")], 16 + 40);
        assert_eq!(scan(&bytes, |_| {}).count, 1);
        bytes.truncate(16 + 39);
        let scan = scan(&bytes, |_| {});
        assert_eq!(scan.count, 0);
        assert_eq!(
            scan.stop,
            Stop::Invalid {
                offset: 16,
                reason: "record runs past the end of the file"
            }
        );
        assert_eq!(last_nonzero(&bytes, 16), Some(16 + 32 + 6));
    }
}
