//! Tests of [`SegmentLog`] on real files in temporary directories.

use std::fs::{self, File, OpenOptions};
use std::os::unix::fs::FileExt;
use std::path::Path;

use super::*;
use crate::mmap::tests::resident_kib_under;
use crate::segment::record_bytes;
use crate::testing::{self, assert_prefix, entry, read_all};
use crate::types::NodeId;

fn options(segment_bytes: u64) -> Options {
    Options {
        segment_bytes,
        maps_cached_max: 2,
        maps_cached_bytes_max: MAPS_CACHED_BYTES_DEFAULT,
    }
}

fn open(dir: &Path, segment_bytes: u64) -> SegmentLog {
    SegmentLog::open(dir, options(segment_bytes)).unwrap()
}

fn segment_names(dir: &Path) -> Vec<String> {
    list_dir(&crate::StdDisk, dir)
        .unwrap()
        .into_iter()
        .filter(|name| parse_closed_name(name).is_some() || parse_open_name(name).is_some())
        .collect()
}

fn entries(range: std::ops::RangeInclusive<u64>, term: u64, payload_bytes: usize) -> Vec<Entry> {
    range
        .map(|index| entry(index, term, payload_bytes))
        .collect()
}

/// splitmix64, our own PRNG: a seed keeps meaning the same thing.
struct Prng(u64);

impl Prng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    fn below(&mut self, bound: u64) -> u64 {
        assert!(bound > 0);
        self.next() % bound
    }
}

#[test]
fn test_conformance_segment_log_small_segments() {
    // The shared suite, with 4 KiB segments so nearly every test crosses segment boundaries.
    let base = tempfile::tempdir().unwrap();
    testing::run_all(&mut testing::SegmentLogHarness::new(
        base.path(),
        options(4096),
    ));
}

#[test]
fn test_conformance_segment_log_default_options() {
    let base = tempfile::tempdir().unwrap();
    testing::run_all(&mut testing::SegmentLogHarness::new(
        base.path(),
        Options::default(),
    ));
}

#[test]
fn test_conformance_mem_log() {
    testing::run_all(&mut testing::MemLogHarness);
}

#[test]
fn test_full_segments_are_closed_and_named_by_range() {
    // 1000-byte entries in 4 KiB segments: three records per segment (16 + 3 * 1032 bytes),
    // so entries 1..=10 make closed segments 1-3, 4-6, 7-9 and an open one holding 10.
    let dir = tempfile::tempdir().unwrap();
    let mut log = open(dir.path(), 4096);
    let written = entries(1..=10, 1, 1000);
    log.append(&written).unwrap();
    assert_eq!(
        log.durable_index(),
        LogIndex(9),
        "closing a segment syncs it"
    );
    log.sync().unwrap();
    let names = segment_names(dir.path());
    assert_eq!(
        names,
        [
            "00000000000000000001-00000000000000000003",
            "00000000000000000004-00000000000000000006",
            "00000000000000000007-00000000000000000009",
            "open-4",
        ]
    );
    drop(log);
    let log = open(dir.path(), 4096);
    assert_eq!(read_all(&log, 1, 11), written);
}

#[test]
fn test_second_open_fails_while_locked() {
    // Two logs on one directory would corrupt it: the second open fails with a clear error
    // until the first is dropped.
    let dir = tempfile::tempdir().unwrap();
    let log = open(dir.path(), 4096);
    let error = SegmentLog::open(dir.path(), options(4096)).unwrap_err();
    assert!(matches!(error, LogError::Locked { .. }), "{error}");
    assert!(error.to_string().contains("LOCK"), "{error}");
    assert!(error.to_string().contains("locked by another process"));
    drop(log);
    open(dir.path(), 4096);
}

/// Writes three synced batches and returns the written entries, the open segment's path, its
/// bytes, where the last batch starts in it, and how many entries were synced before it.
fn three_batches(dir: &Path) -> (Vec<Entry>, PathBuf, Vec<u8>, usize, usize) {
    let mut log = open(dir, 64 << 10);
    // Payload sizes that leave padding in some records; bytes never zero (see `entry`).
    let written: Vec<Entry> = (1..=14)
        .map(|index| entry(index, 1 + index / 6, 20 + (index as usize * 37) % 120))
        .collect();
    log.append(&written[..6]).unwrap();
    log.sync().unwrap();
    log.append(&written[6..10]).unwrap();
    log.sync().unwrap();
    let region_start = log.open.as_ref().unwrap().end;
    log.append(&written[10..]).unwrap();
    log.sync().unwrap();
    let path = dir.join(&log.open.as_ref().unwrap().name);
    drop(log);
    let bytes = fs::read(&path).unwrap();
    (written, path, bytes, region_start, 10)
}

/// Where each entry's payload ends in the open segment, and where its record ends.
fn record_ends(written: &[Entry]) -> Vec<(usize, usize)> {
    let mut offset = SEGMENT_HEADER_BYTES;
    written
        .iter()
        .map(|entry| {
            let payload_end = offset + RECORD_HEADER_BYTES + entry.payload.len();
            offset += record_bytes(entry.payload.len());
            (payload_end, offset)
        })
        .collect()
}

#[test]
fn test_crash_cut_at_every_byte_of_the_last_batch() {
    // The power is cut while the last batch is being written: every byte from some offset on
    // is lost (reads back as zero). For every such offset, recovery keeps exactly the entries
    // whose bytes were all written (payloads have no zero byte, so a cut inside one shows),
    // which always includes the entries synced before the batch, and a new entry appended
    // afterwards lands right after them.
    let dir = tempfile::tempdir().unwrap();
    let (written, path, bytes, region_start, synced) = three_batches(dir.path());
    let ends = record_ends(&written);
    let region_end = ends.last().unwrap().1;
    for cut in region_start..=region_end {
        let mut damaged = bytes.clone();
        damaged[cut..region_end].fill(0);
        fs::write(&path, &damaged).unwrap();
        let mut log = open(dir.path(), 64 << 10);
        let expected = ends
            .iter()
            .take_while(|(payload_end, _)| *payload_end <= cut)
            .count();
        assert!(expected >= synced);
        assert_eq!(log.last_index(), LogIndex(expected as u64), "cut at {cut}");
        assert_prefix(&log, 1, &written, expected as u64);
        if cut % 97 == 0 {
            let next = entry(expected as u64 + 1, 9, 33);
            log.append(std::slice::from_ref(&next)).unwrap();
            log.sync().unwrap();
            drop(log);
            let log = open(dir.path(), 64 << 10);
            assert_eq!(log.last_index(), next.index);
            assert_eq!(read_all(&log, 1, next.index.0 + 1).pop().unwrap(), next);
        }
    }
}

#[test]
fn test_crash_bit_flip_at_every_byte_of_the_last_batch() {
    // A bit flipped anywhere in the last batch's records (header, payload or padding) makes
    // that record invalid. In any record but the last, valid records follow: that is damage,
    // not a torn write, and opening fails naming the file and the bad record's offset, changing
    // nothing (the entries after it may have been acknowledged). In the last record it is a
    // torn write: recovery keeps the records before it (or refuses, when the flip shortens the
    // length the header claims and leaves non-zero bytes after it). A flip in the zeroed space
    // after the last record is junk of a torn write: every entry stays.
    let dir = tempfile::tempdir().unwrap();
    let (written, path, bytes, region_start, synced) = three_batches(dir.path());
    let ends = record_ends(&written);
    let region_end = ends.last().unwrap().1;
    let last_start = ends[ends.len() - 2].1;
    let name = path.file_name().unwrap().to_str().unwrap().to_string();
    let (mut refused, mut kept) = (0, 0);
    for position in region_start..region_end + 64 {
        let mut damaged = bytes.clone();
        damaged[position] ^= 1 << (position % 8);
        fs::write(&path, &damaged).unwrap();
        let expected = ends.iter().take_while(|(_, end)| *end <= position).count();
        assert!(expected >= synced);
        let record_start = if expected == 0 {
            SEGMENT_HEADER_BYTES
        } else {
            ends[expected - 1].1
        };
        let log = match SegmentLog::open(dir.path(), options(64 << 10)) {
            Ok(log) => log,
            Err(error) => {
                assert!(position < region_end, "flip at {position}: {error}");
                let text = error.to_string();
                assert!(text.contains(&name), "{text}");
                assert!(
                    text.contains(&format!("byte offset {record_start}")),
                    "{text}"
                );
                assert!(text.contains("not a torn write"), "{text}");
                assert_eq!(fs::read(&path).unwrap(), damaged, "flip at {position}");
                refused += 1;
                continue;
            }
        };
        assert!(
            position >= last_start,
            "flip at {position} in entry {}: valid entries after it were dropped",
            expected + 1
        );
        kept += 1;
        assert_eq!(
            log.last_index(),
            LogIndex(expected as u64),
            "flip at {position}"
        );
        assert_prefix(&log, 1, &written, expected as u64);
        drop(log);
        // Recovery zeroed everything after the kept records.
        let recovered = fs::read(&path).unwrap();
        assert!(
            recovered[record_start..].iter().all(|&b| b == 0),
            "flip at {position}"
        );
    }
    assert!(refused >= last_start - region_start, "{refused}");
    assert!(kept >= region_end - last_start, "{kept}");
}

#[test]
fn test_bad_record_followed_by_valid_ones_is_an_error_naming_file_and_offset() {
    // Entries 1..=8 are synced (acknowledged); one byte of entry 3 flips. Recovery used to take
    // that for a torn tail and drop 3..=8 silently; now opening fails, naming the file and the
    // offset of entry 3, and changes nothing.
    let dir = tempfile::tempdir().unwrap();
    let mut log = open(dir.path(), 64 << 10);
    let written = entries(1..=8, 1, 40);
    log.append(&written).unwrap();
    log.sync().unwrap();
    let name = log.open.as_ref().unwrap().name.clone();
    drop(log);
    let path = dir.path().join(&name);
    let clean = fs::read(&path).unwrap();
    let ends = record_ends(&written);
    let third = ends[1].1;
    let mut bytes = clean.clone();
    bytes[third + RECORD_HEADER_BYTES + 5] ^= 0x10;
    fs::write(&path, &bytes).unwrap();
    let error = SegmentLog::open(dir.path(), options(64 << 10)).unwrap_err();
    let text = error.to_string();
    assert!(text.contains(&name), "{text}");
    assert!(text.contains(&format!("byte offset {third}")), "{text}");
    assert_eq!(fs::read(&path).unwrap(), bytes);
    // A record whose header decodes but is followed by junk past its claimed end: damage too.
    let mut bytes = clean.clone();
    let last_end = ends[7].1;
    bytes[ends[6].1 + RECORD_HEADER_BYTES] ^= 0x01;
    bytes[last_end + 200] = 0x5a;
    fs::write(&path, &bytes).unwrap();
    let error = SegmentLog::open(dir.path(), options(64 << 10)).unwrap_err();
    assert!(
        error
            .to_string()
            .contains(&format!("byte offset {}", ends[6].1)),
        "{error}"
    );
    // Junk after a last record that is intact is a torn write of a next record: kept.
    let mut bytes = clean.clone();
    bytes[last_end + 200] = 0x5a;
    fs::write(&path, &bytes).unwrap();
    let log = open(dir.path(), 64 << 10);
    assert_eq!(log.last_index(), LogIndex(8));
    assert_prefix(&log, 1, &written, 8);
}

#[test]
fn test_torn_entry_never_resurrects_later_ones() {
    // Entries 6 and 7 are written; 6's header never reached the disk and 7 is torn too (a
    // crash): recovery keeps 1..=5 and zeroes 7's bytes. Otherwise a new, shorter entry 6
    // followed by the old 7's bytes could bring back an entry from a history the new leader
    // overwrote.
    let dir = tempfile::tempdir().unwrap();
    let mut log = open(dir.path(), 64 << 10);
    log.append(&entries(1..=5, 1, 40)).unwrap();
    log.sync().unwrap();
    let torn_offset = log.open.as_ref().unwrap().end;
    log.append(&[entry(6, 1, 40), entry(7, 1, 40)]).unwrap();
    log.sync().unwrap();
    let path = dir.path().join(&log.open.as_ref().unwrap().name);
    drop(log);
    let mut bytes = fs::read(&path).unwrap();
    bytes[torn_offset..torn_offset + RECORD_HEADER_BYTES].fill(0);
    let seventh = torn_offset + record_bytes(40);
    bytes[seventh + RECORD_HEADER_BYTES + 3] ^= 0xff;
    fs::write(&path, &bytes).unwrap();
    let mut log = open(dir.path(), 64 << 10);
    assert_eq!(log.last_index(), LogIndex(5));
    // The new entry 6 has the same size as the old one, so the old 7 would sit right after it.
    log.append(&[entry(6, 2, 40)]).unwrap();
    log.sync().unwrap();
    drop(log);
    let log = open(dir.path(), 64 << 10);
    assert_eq!(log.last_index(), LogIndex(6));
    assert_eq!(log.term(LogIndex(6)).unwrap(), Some(Term(2)));
}

#[test]
fn test_damaged_closed_segment_is_an_error_naming_file_and_offset() {
    // A closed segment was synced before it was closed: damage in it is not a torn write, and
    // opening fails, naming the file and the offset of the bad record.
    let dir = tempfile::tempdir().unwrap();
    let mut log = open(dir.path(), 4096);
    log.append(&entries(1..=10, 1, 1000)).unwrap();
    log.sync().unwrap();
    drop(log);
    let name = "00000000000000000004-00000000000000000006";
    let path = dir.path().join(name);
    let mut bytes = fs::read(&path).unwrap();
    let second = SEGMENT_HEADER_BYTES + record_bytes(1000);
    bytes[second + 100] ^= 0x01;
    fs::write(&path, &bytes).unwrap();
    let error = SegmentLog::open(dir.path(), options(4096)).unwrap_err();
    let text = error.to_string();
    assert!(text.contains(name), "{text}");
    assert!(text.contains(&format!("byte offset {second}")), "{text}");
    assert!(text.contains("crc mismatch"), "{text}");
    // Nothing was deleted or changed to "recover".
    assert_eq!(fs::read(&path).unwrap(), bytes);
    assert_eq!(segment_names(dir.path()).len(), 4);
}

#[test]
fn test_closed_segment_larger_than_any_segment_is_an_error_not_a_map() {
    // A closed segment grown past SEGMENT_BYTES_MAX (2 GiB) is damage, refused before it is
    // mapped: on a 32-bit machine, mapping such a file whole would exhaust the address space.
    // The file grows sparsely here, so the test costs no disk space.
    let dir = tempfile::tempdir().unwrap();
    let mut log = open(dir.path(), 4096);
    log.append(&entries(1..=10, 1, 1000)).unwrap();
    log.sync().unwrap();
    drop(log);
    let name = "00000000000000000004-00000000000000000006";
    let file = File::options()
        .write(true)
        .open(dir.path().join(name))
        .unwrap();
    file.set_len(SEGMENT_BYTES_MAX + 4096).unwrap();
    drop(file);
    let error = SegmentLog::open(dir.path(), options(4096)).unwrap_err();
    let text = error.to_string();
    assert!(text.contains(name), "{text}");
    assert!(text.contains("larger than any segment"), "{text}");
}

#[test]
fn test_gap_between_segments_is_an_error() {
    // A missing middle segment (lost file) leaves a hole in the log: opening fails.
    let dir = tempfile::tempdir().unwrap();
    let mut log = open(dir.path(), 4096);
    log.append(&entries(1..=10, 1, 1000)).unwrap();
    log.sync().unwrap();
    drop(log);
    fs::remove_file(dir.path().join("00000000000000000004-00000000000000000006")).unwrap();
    let error = SegmentLog::open(dir.path(), options(4096)).unwrap_err();
    assert!(matches!(error, LogError::Gap { .. }), "{error}");
    let text = error.to_string();
    assert!(
        text.contains("00000000000000000007-00000000000000000009"),
        "{text}"
    );
    assert!(text.contains("continues at index 4"), "{text}");
}

#[test]
fn test_closed_segment_with_wrong_range_is_an_error() {
    // A closed segment whose records do not match its name is refused.
    let dir = tempfile::tempdir().unwrap();
    let mut log = open(dir.path(), 4096);
    log.append(&entries(1..=4, 1, 1000)).unwrap();
    log.sync().unwrap();
    drop(log);
    fs::rename(
        dir.path().join("00000000000000000001-00000000000000000003"),
        dir.path().join("00000000000000000001-00000000000000000002"),
    )
    .unwrap();
    let error = SegmentLog::open(dir.path(), options(4096)).unwrap_err();
    assert!(error.to_string().contains("its name says 1..=2"), "{error}");
}

#[test]
fn test_torn_metadata_newer_complete_version_wins() {
    // Saves go to metadata1 and metadata2 in turn. Tearing the newer file (a crash during its
    // write) brings back the previous hard state; tearing both is an error, never a silent
    // reset of the term and vote.
    let dir = tempfile::tempdir().unwrap();
    let mut log = open(dir.path(), 4096);
    for term in 1..=3 {
        log.save_hard_state(HardState {
            term: Term(term),
            vote: Some(NodeId(term)),
        })
        .unwrap();
    }
    // Counter 1 was the creation, so term 3 is counter 4, in metadata2.
    drop(log);
    let newer = dir.path().join("metadata2");
    let mut bytes = fs::read(&newer).unwrap();
    bytes.truncate(40);
    fs::write(&newer, &bytes).unwrap();
    let mut log = open(dir.path(), 4096);
    assert_eq!(log.hard_state().term, Term(2));
    // The next save overwrites the torn file, and wins.
    log.save_hard_state(HardState {
        term: Term(4),
        vote: None,
    })
    .unwrap();
    drop(log);
    assert_eq!(open(dir.path(), 4096).hard_state().term, Term(4));
    for name in ["metadata1", "metadata2"] {
        let path = dir.path().join(name);
        let mut bytes = fs::read(&path).unwrap();
        bytes[20] ^= 0x10;
        fs::write(&path, &bytes).unwrap();
    }
    let error = SegmentLog::open(dir.path(), options(4096)).unwrap_err();
    assert!(error.to_string().contains("crc mismatch"), "{error}");
}

#[test]
fn test_segments_without_metadata_are_an_error() {
    let dir = tempfile::tempdir().unwrap();
    let mut log = open(dir.path(), 4096);
    log.append(&entries(1..=2, 1, 10)).unwrap();
    log.sync().unwrap();
    drop(log);
    fs::remove_file(dir.path().join("metadata1")).unwrap();
    let error = SegmentLog::open(dir.path(), options(4096)).unwrap_err();
    assert!(matches!(error, LogError::MetadataMissing { .. }), "{error}");
}

#[test]
fn test_failed_preallocation_is_clean_and_not_sticky() {
    // The disk is full when a batch needs new segments: the append fails with ENOSPC before
    // writing any entry of the batch, and the log stays usable: once space is back, the same
    // batch goes in.
    let dir = tempfile::tempdir().unwrap();
    let mut log = open(dir.path(), 4096);
    let written = entries(1..=12, 1, 1000);
    log.append(&written[..2]).unwrap();
    log.sync().unwrap();
    let files_before = segment_names(dir.path());
    log.fail_preallocation_after(1);
    let error = log.append(&written[2..]).unwrap_err();
    assert_eq!(error.kind(), io::ErrorKind::StorageFull, "{error}");
    assert_eq!(log.last_index(), LogIndex(2));
    assert_eq!(read_all(&log, 1, 3), &written[..2]);
    // One spare was prepared before the failure; no temporary file is left behind.
    assert!(list_dir(&crate::StdDisk, dir.path())
        .unwrap()
        .iter()
        .all(|name| !name.ends_with(".tmp")));
    assert_eq!(segment_names(dir.path()).len(), files_before.len() + 1);
    log.append(&written[2..]).unwrap();
    log.sync().unwrap();
    drop(log);
    let log = open(dir.path(), 4096);
    assert_eq!(read_all(&log, 1, 13), written);
}

#[test]
fn test_entry_larger_than_a_segment_gets_its_own() {
    // A 20 KB entry in a log of 4 KiB segments gets a segment just large enough (whole pages).
    let dir = tempfile::tempdir().unwrap();
    let mut log = open(dir.path(), 4096);
    let written = vec![entry(1, 1, 100), entry(2, 1, 20_000), entry(3, 1, 1000)];
    log.append(&written).unwrap();
    log.sync().unwrap();
    assert_eq!(read_all(&log, 1, 4), written);
    drop(log);
    let log = open(dir.path(), 4096);
    assert_eq!(read_all(&log, 1, 4), written);
    // Entry 2's segment is whole pages of this machine: 20 KiB with 4 KiB pages, where it is
    // closed as `2-2`; 64 KiB on a 64 KiB-page kernel (aarch64), where entry 3 fits in its slack
    // and it is still open. Every other segment keeps the configured 4 KiB.
    let page_bytes = mmap::page_bytes();
    let big = (SEGMENT_HEADER_BYTES + record_bytes(20_000)).next_multiple_of(page_bytes) as u64;
    let sizes: Vec<(String, u64)> = segment_names(dir.path())
        .into_iter()
        .map(|name| {
            let len = fs::metadata(dir.path().join(&name)).unwrap().len();
            (name, len)
        })
        .collect();
    let big_files: Vec<&String> = sizes
        .iter()
        .filter(|(_, len)| *len == big)
        .map(|(name, _)| name)
        .collect();
    assert_eq!(big_files.len(), 1, "{sizes:?}");
    assert!(
        sizes.iter().all(|(_, len)| *len == big || *len == 4096),
        "{sizes:?}"
    );
    if page_bytes == 4096 {
        assert_eq!(big_files[0], "00000000000000000002-00000000000000000002");
    }
}

#[test]
fn test_segment_capacity_ignores_the_page_size_when_the_record_fits() {
    // aarch64 kernels may use 64 KiB pages: a log of 4 KiB segments keeps 4 KiB segments there
    // (the tests count records per segment), and only an oversized record's own segment is
    // rounded up to whole pages of the machine.
    for page_bytes in [4096, 16 << 10, 64 << 10] {
        assert_eq!(segment_capacity(4096, 1032, page_bytes), 4096);
        assert_eq!(segment_capacity(4096, 4096 - 16, page_bytes), 4096);
        assert_eq!(segment_capacity(8 << 20, 1032, page_bytes), 8 << 20);
        assert_eq!(
            segment_capacity(4096, 4096, page_bytes),
            4112_usize.next_multiple_of(page_bytes)
        );
    }
    assert_eq!(segment_capacity(4096, 20_032, 4096), 20_480);
    assert_eq!(segment_capacity(4096, 20_032, 64 << 10), 64 << 10);
    assert_eq!(segment_capacity(4096, 70_000, 64 << 10), 128 << 10);
}

#[test]
fn test_mapped_bytes_of_closed_segments_are_bounded() {
    // Oversized entries get segments of their own, so the count of cached maps alone does not
    // bound the address space (a 32-bit process has 3 GiB: four maps of 1 GiB entries do not
    // fit). The byte budget unmaps older segments, but the one read last always stays mapped.
    let dir = tempfile::tempdir().unwrap();
    let budget = 100_000;
    let options = Options {
        segment_bytes: 4096,
        maps_cached_max: 4,
        maps_cached_bytes_max: budget,
    };
    let mut log = SegmentLog::open(dir.path(), options.clone()).unwrap();
    let mut written = entries(1..=6, 1, 1000);
    written.extend([
        entry(7, 1, 60_000),
        entry(8, 1, 150_000),
        entry(9, 1, 60_000),
    ]);
    written.extend(entries(10..=15, 1, 1000));
    log.append(&written).unwrap();
    log.sync().unwrap();
    drop(log);
    let log = SegmentLog::open(dir.path(), options).unwrap();
    for index in 1..=15 {
        let read = read_all(&log, index, index + 1);
        assert_eq!(read[0], written[index as usize - 1]);
        drop(read);
        let (count, bytes) = (log.maps_cached_count(), log.maps_cached_bytes());
        assert!(count <= 4);
        assert!(
            bytes <= budget || count == 1,
            "index {index}: {count} maps, {bytes} bytes"
        );
        if index == 8 {
            // The 150 KB entry's segment alone is over the budget: everything else went.
            assert_eq!(count, 1);
            assert!(bytes > budget);
        }
    }
    // Reading everything at once keeps each payload's map alive through the payload, not the
    // cache: the cache stays within its budget all the same.
    assert_eq!(read_all(&log, 1, 16), written);
    assert!(log.maps_cached_bytes() <= budget || log.maps_cached_count() == 1);
}

#[test]
fn test_closed_segments_are_mapped_lazily_and_bounded() {
    // Reading a log of 30 segments maps at most `maps_cached_max` closed segments at a time,
    // and once the payloads are dropped, the process maps no more segment files than that
    // (plus the open one): memory does not grow with the log.
    let dir = tempfile::tempdir().unwrap();
    let mut log = open(dir.path(), 4096);
    let written = entries(1..=90, 1, 1000);
    log.append(&written).unwrap();
    log.sync().unwrap();
    drop(log);
    let log = open(dir.path(), 4096);
    assert_eq!(log.maps_cached_count(), 0, "nothing mapped before a read");
    // term() answers from memory, for every index, without mapping a segment.
    for index in 1..=90 {
        assert_eq!(log.term(LogIndex(index)).unwrap(), Some(Term(1)));
    }
    assert_eq!(log.maps_cached_count(), 0, "term() maps nothing");
    for index in 1..=90 {
        let read = read_all(&log, index, index + 1);
        assert_eq!(read[0], written[index as usize - 1]);
        assert!(log.maps_cached_count() <= 2);
    }
    let maps = fs::read_to_string("/proc/self/maps").unwrap();
    let dir_text = dir.path().to_string_lossy().to_string();
    let mapped: std::collections::HashSet<&str> = maps
        .lines()
        .filter(|line| line.contains(&dir_text))
        .filter_map(|line| line.split_whitespace().last())
        .collect();
    assert!(mapped.len() <= 3, "{mapped:?}");
    assert!(mapped.len() >= 2, "the cache did map segments: {mapped:?}");
}

#[test]
fn test_payloads_are_windows_into_the_map() {
    // A payload read from the log borrows the segment's map: no copy.
    let dir = tempfile::tempdir().unwrap();
    let mut log = open(dir.path(), 4096);
    log.append(&entries(1..=5, 1, 1000)).unwrap();
    let read = read_all(&log, 1, 6);
    let open_map = log.open.as_ref().unwrap().writer.map();
    let last = &read[4].payload;
    let map_bytes = open_map.slice(0..open_map.frozen());
    let map_range = map_bytes.as_ptr_range();
    assert!(
        map_range.contains(&last.as_ptr()),
        "the payload points into the open map"
    );
}

/// Writes entries 1..=20 (1000 bytes each, 4 KiB segments: closed 1-3 .. 16-18, open 19-20).
fn seven_segments(dir: &Path) -> (SegmentLog, Vec<Entry>) {
    let mut log = open(dir, 4096);
    let written = entries(1..=20, 1, 1000);
    log.append(&written).unwrap();
    log.sync().unwrap();
    (log, written)
}

#[test]
fn test_crash_at_every_step_of_a_truncation() {
    // A truncation deletes and renames several files. Cut the power before each of its file
    // operations in turn: the reopened log is always a prefix of the old one that still holds
    // every entry up to the truncation point, and it accepts new entries after it.
    for point in [4u64, 9, 19] {
        let mut steps = 0;
        loop {
            let dir = tempfile::tempdir().unwrap();
            let (mut log, written) = seven_segments(dir.path());
            log.crash_before_file_operation(steps);
            let finished = log.truncate_after(LogIndex(point)).is_ok();
            drop(log);
            let mut log = open(dir.path(), 4096);
            assert!(
                log.last_index() >= LogIndex(point),
                "point {point} step {steps}"
            );
            assert_prefix(&log, 1, &written, point);
            if finished {
                assert_eq!(log.last_index(), LogIndex(point));
            }
            log.truncate_after(LogIndex(point)).unwrap();
            let next = entry(point + 1, 2, 77);
            log.append(std::slice::from_ref(&next)).unwrap();
            log.sync().unwrap();
            drop(log);
            let log = open(dir.path(), 4096);
            assert_eq!(read_all(&log, point + 1, point + 2), [next]);
            if finished {
                break;
            }
            steps += 1;
        }
        assert!(steps >= 2, "the truncation took several file operations");
    }
}

#[test]
fn test_crash_at_every_step_of_a_compaction() {
    // Compaction records the new first index in the metadata, then deletes the segments it
    // covers: a crash at any step reopens either the old log or the compacted one, and a
    // compacted one never shows the covered segments again.
    for (through, term) in [(7u64, 1u64), (30, 4)] {
        let mut steps = 0;
        loop {
            let dir = tempfile::tempdir().unwrap();
            let (mut log, written) = seven_segments(dir.path());
            log.crash_before_file_operation(steps);
            let finished = log.compact_through(LogIndex(through), Term(term)).is_ok();
            drop(log);
            let log = open(dir.path(), 4096);
            if log.first_index() == LogIndex(1) {
                assert!(!finished);
                assert_prefix(&log, 1, &written, 20);
            } else {
                assert_eq!(log.first_index(), LogIndex(through + 1));
                assert_eq!(log.term(LogIndex(through)).unwrap(), Some(Term(term)));
                if through < 20 {
                    assert_prefix(&log, through + 1, &written[through as usize..], 20);
                } else {
                    assert_eq!(log.last_index(), LogIndex(through));
                }
                let files = segment_names(dir.path());
                assert!(
                    files.iter().all(|name| parse_closed_name(name)
                        .is_none_or(|(_, last)| last > LogIndex(through))),
                    "{files:?}"
                );
            }
            if finished {
                break;
            }
            steps += 1;
        }
        assert!(steps >= 1);
    }
}

#[test]
fn test_stray_temporary_files_are_removed() {
    let dir = tempfile::tempdir().unwrap();
    drop(open(dir.path(), 4096));
    fs::write(dir.path().join("open-9.tmp"), b"half-made segment").unwrap();
    fs::write(dir.path().join("notes.txt"), b"not ours").unwrap();
    fs::write(dir.path().join("draft.tmp"), b"not ours either").unwrap();
    drop(open(dir.path(), 4096));
    let names = list_dir(&crate::StdDisk, dir.path()).unwrap();
    assert!(!names.contains(&"open-9.tmp".to_string()));
    assert!(
        names.contains(&"notes.txt".to_string()),
        "unknown files are left alone"
    );
    assert!(
        names.contains(&"draft.tmp".to_string()),
        "only our own temporary files are removed"
    );
}

#[test]
fn test_unfinished_spare_is_removed_but_junk_is_an_error() {
    // Spares are prepared without a sync: after a crash one may be empty or all zeros. It never
    // held an entry, so recovery removes it. An open segment with a bad header and non-zero
    // bytes is damage, not an unfinished spare: an error.
    let dir = tempfile::tempdir().unwrap();
    let mut log = open(dir.path(), 4096);
    log.append(&entries(1..=2, 1, 100)).unwrap();
    log.sync().unwrap();
    drop(log);
    fs::write(dir.path().join("open-7"), vec![0u8; 4096]).unwrap();
    fs::write(dir.path().join("open-8"), b"").unwrap();
    let log = open(dir.path(), 4096);
    assert_eq!(log.last_index(), LogIndex(2));
    let names = segment_names(dir.path());
    assert!(!names.contains(&"open-7".to_string()), "{names:?}");
    assert!(!names.contains(&"open-8".to_string()), "{names:?}");
    drop(log);
    let mut junk = vec![0u8; 4096];
    junk[100] = 1;
    fs::write(dir.path().join("open-9"), &junk).unwrap();
    let error = SegmentLog::open(dir.path(), options(4096)).unwrap_err();
    assert!(error.to_string().contains("open-9"), "{error}");
    assert!(error.to_string().contains("bad magic"), "{error}");
}

#[test]
fn test_failure_is_sticky_after_a_crash_point() {
    // After a failed file operation the log refuses appends, until reopened.
    let dir = tempfile::tempdir().unwrap();
    let (mut log, _) = seven_segments(dir.path());
    log.crash_before_file_operation(0);
    assert!(log.truncate_after(LogIndex(5)).is_err());
    let error = log.append(&[entry(21, 1, 1)]).unwrap_err();
    assert!(error.to_string().contains("reopen"), "{error}");
    drop(log);
    let mut log = open(dir.path(), 4096);
    let next = log.last_index().0 + 1;
    log.append(&[entry(next, 1, 1)]).unwrap();
}

#[test]
fn test_random_operations_match_a_model() {
    // Random appends, syncs, truncations, compactions, hard state saves and reopens, checked
    // against a plain vector after every step. SEED=n reruns one seed; SEEDS=n runs more.
    let seeds: Vec<u64> = match std::env::var("SEED") {
        Ok(seed) => vec![seed.parse().expect("SEED is a number")],
        Err(_) => {
            let count = std::env::var("SEEDS").map_or(12, |n| n.parse().expect("SEEDS"));
            (1..=count).collect()
        }
    };
    for seed in seeds {
        let result = std::panic::catch_unwind(|| random_operations(seed));
        if result.is_err() {
            panic!("random operations failed: reproduce with SEED={seed}");
        }
    }
}

fn random_operations(seed: u64) {
    let mut prng = Prng(seed);
    let dir = tempfile::tempdir().unwrap();
    let segment_bytes = [4096, 8192, 64 << 10][prng.below(3) as usize];
    let mut log = open(dir.path(), segment_bytes);
    let mut model: Vec<Entry> = Vec::new();
    let mut first = 1u64;
    let mut compacted_term = 0u64;
    let mut term = 1u64;
    let mut hard_state = HardState::default();
    for _ in 0..150 {
        let last = first + model.len() as u64 - 1;
        match prng.below(20) {
            0..=7 => {
                let count = 1 + prng.below(12);
                let batch: Vec<Entry> = (last + 1..=last + count)
                    .map(|index| entry(index, term, prng.below(1500) as usize))
                    .collect();
                log.append(&batch).unwrap();
                model.extend(batch);
            }
            8..=10 => log.sync().unwrap(),
            11..=12 => {
                let to = first - 1 + prng.below(model.len() as u64 + 1);
                log.truncate_after(LogIndex(to)).unwrap();
                model.truncate((to + 1 - first) as usize);
                term += 1;
            }
            13 => {
                let through = first - 1 + prng.below(model.len() as u64 + 5);
                if through >= first {
                    let through_term = model
                        .get((through - first) as usize)
                        .map_or(term, |entry| entry.term.0);
                    log.compact_through(LogIndex(through), Term(through_term))
                        .unwrap();
                    let dropped = ((through + 1 - first) as usize).min(model.len());
                    model.drain(..dropped);
                    first = through + 1;
                    compacted_term = through_term;
                }
            }
            14 => {
                hard_state = HardState {
                    term: Term(hard_state.term.0 + prng.below(2)),
                    vote: Some(NodeId(1 + prng.below(5))),
                };
                log.save_hard_state(hard_state).unwrap();
            }
            _ => {
                drop(log);
                log = open(dir.path(), segment_bytes);
            }
        }
        assert_eq!(log.first_index(), LogIndex(first));
        assert_eq!(log.last_index(), LogIndex(first + model.len() as u64 - 1));
        assert_eq!(
            log.term(LogIndex(first - 1)).unwrap(),
            Some(Term(compacted_term))
        );
        assert_eq!(log.hard_state(), hard_state);
        if !model.is_empty() {
            let low = first + prng.below(model.len() as u64);
            let high = low + prng.below(first + model.len() as u64 - low + 1);
            let read = read_all(&log, low, high);
            assert_eq!(
                read,
                &model[(low - first) as usize..(high - first) as usize]
            );
            let probe = low;
            assert_eq!(
                log.term(LogIndex(probe)).unwrap(),
                Some(model[(probe - first) as usize].term)
            );
        }
    }
    drop(log);
    let log = open(dir.path(), segment_bytes);
    assert_eq!(read_all(&log, first, first + model.len() as u64), model);
}

#[test]
fn test_log_can_move_to_another_thread() {
    // The host may open the log on one thread and run it on the event loop's.
    fn assert_send<T: Send>() {}
    assert_send::<SegmentLog>();
    assert_send::<Payload>();
    fn assert_sync<T: Sync>() {}
    assert_sync::<Payload>();
}

#[test]
fn test_damage_after_open_is_caught_on_read() {
    // Bytes of a closed segment that go bad after the log was opened (the disk lies, or
    // someone writes into the file) are caught by the crc check of every read: the read
    // fails, naming the file and offset, instead of handing out bad bytes.
    let dir = tempfile::tempdir().unwrap();
    let mut log = open(dir.path(), 4096);
    let written = entries(1..=10, 1, 1000);
    log.append(&written).unwrap();
    log.sync().unwrap();
    drop(log);
    let log = open(dir.path(), 4096);
    let name = "00000000000000000004-00000000000000000006";
    let second = SEGMENT_HEADER_BYTES + record_bytes(1000);
    // Written in place (never truncated: the file may be mapped).
    let file = OpenOptions::new()
        .write(true)
        .open(dir.path().join(name))
        .unwrap();
    file.write_all_at(&[0x00], (second + RECORD_HEADER_BYTES + 10) as u64)
        .unwrap();
    assert_eq!(read_all(&log, 1, 5), &written[..4]);
    let mut out = Vec::new();
    let error = log
        .entries(LogIndex(1), LogIndex(11), u64::MAX, &mut out)
        .unwrap_err();
    assert_eq!(error.kind(), io::ErrorKind::InvalidData);
    let text = error.to_string();
    assert!(text.contains(name), "{text}");
    assert!(
        text.contains(&format!("byte offset {second}: crc mismatch")),
        "{text}"
    );
    // Entries of other segments still read.
    assert_eq!(read_all(&log, 7, 11), &written[6..]);
}

#[test]
fn test_open_creates_missing_directories() {
    // A data directory several levels below an existing one is created, with its snapshot
    // directory, and holds entries across a reopen.
    let base = tempfile::tempdir().unwrap();
    let dir = base.path().join("a").join("b").join("data");
    let mut log = open(&dir, 4096);
    log.append(&entries(1..=2, 1, 10)).unwrap();
    log.sync().unwrap();
    assert!(dir.join("snapshots").is_dir());
    drop(log);
    assert_eq!(open(&dir, 4096).last_index(), LogIndex(2));
}

#[test]
fn test_next_segment_prepared_ahead_is_used() {
    // A spare prepared while idle becomes the next open segment: filling the first segment
    // creates no new file, and preparing again while a spare waits does nothing.
    let dir = tempfile::tempdir().unwrap();
    let mut log = open(dir.path(), 4096);
    log.append(&entries(1..=1, 1, 1000)).unwrap();
    log.prepare_next_segment().unwrap();
    log.prepare_next_segment().unwrap();
    assert_eq!(segment_names(dir.path()), ["open-1", "open-2"]);
    log.append(&entries(2..=4, 1, 1000)).unwrap();
    log.sync().unwrap();
    assert_eq!(
        segment_names(dir.path()),
        ["00000000000000000001-00000000000000000003", "open-2"]
    );
    // Preparing when the disk is full fails cleanly and changes nothing.
    log.fail_preallocation_after(0);
    let error = log.prepare_next_segment().unwrap_err();
    assert_eq!(error.kind(), io::ErrorKind::StorageFull);
    log.append(&entries(5..=5, 1, 1000)).unwrap();
    log.sync().unwrap();
    drop(log);
    assert_eq!(open(dir.path(), 4096).last_index(), LogIndex(5));
}

#[test]
fn test_crash_at_every_step_of_a_rollover() {
    // An append crossing several segments creates spares and closes full segments. Cut the
    // power before each of those file operations in turn: the reopened log is a prefix of
    // what was written that holds every entry synced before the append, and it takes new
    // entries.
    let written = entries(1..=16, 1, 1000);
    let mut steps = 0;
    loop {
        let dir = tempfile::tempdir().unwrap();
        let mut log = open(dir.path(), 4096);
        log.append(&written[..2]).unwrap();
        log.sync().unwrap();
        log.crash_before_file_operation(steps);
        let finished = log.append(&written[2..]).is_ok();
        if finished {
            log.sync().unwrap();
        }
        drop(log);
        let mut log = open(dir.path(), 4096);
        assert_prefix(&log, 1, &written, if finished { 16 } else { 2 });
        let next = log.last_index().next();
        log.append(&[entry(next.0, 2, 500)]).unwrap();
        log.sync().unwrap();
        drop(log);
        assert_eq!(open(dir.path(), 4096).last_index(), next);
        if finished {
            break;
        }
        steps += 1;
    }
    assert!(
        steps >= 8,
        "creating and closing segments took {steps} file operations"
    );
}

#[test]
fn test_read_hard_state_reads_the_metadata_without_opening_the_log() {
    let dir = tempfile::tempdir().unwrap();
    assert_eq!(read_hard_state(dir.path()).unwrap(), None);
    let mut log = open(dir.path(), 1 << 20);
    let saved = HardState {
        term: Term(7),
        vote: Some(NodeId(3)),
    };
    log.save_hard_state(saved).unwrap();
    log.append(&entries(1..=5, 7, 100)).unwrap();
    log.sync().unwrap();
    drop(log);
    assert_eq!(read_hard_state(dir.path()).unwrap(), Some(saved));
    for name in METADATA_FILE_NAMES {
        std::fs::write(dir.path().join(name), b"garbage").unwrap();
    }
    assert!(matches!(
        read_hard_state(dir.path()),
        Err(LogError::Corrupt { .. })
    ));
}

#[test]
fn test_mapped_pages_leave_memory_and_entries_stay_readable() {
    // Appending 6 MiB to an 8 MiB segment in synced batches, each read back through the map
    // (as a leader reads what it sends; writes go through the file and map nothing in), yet
    // only the newest OPEN_RESIDENT_BYTES to twice that stay resident; release_memory drops
    // the rest, a segment closed by a rollover leaves memory at once, and every entry still
    // reads back as written (from the page cache).
    let dir = tempfile::tempdir().unwrap();
    // Partial pages at either end of a released range stay: two pages of slack (8 KiB with
    // 4 KiB pages, 128 KiB on a 64 KiB-page kernel).
    let slack = 2 * crate::mmap::page_bytes() as u64 / 1024;
    let mut log = SegmentLog::open(dir.path(), Options::default()).unwrap();
    let batch = 64;
    let payload = 16 * 1024;
    let mut written = Vec::new();
    for first in (1..=384u64).step_by(batch) {
        let batch_entries = entries(first..=first + batch as u64 - 1, 1, payload);
        log.append(&batch_entries).unwrap();
        assert_eq!(read_all(&log, first, first + batch as u64), batch_entries);
        log.sync().unwrap();
        written.extend(batch_entries);
        let resident = resident_kib_under(dir.path());
        assert!(
            resident <= (2 * OPEN_RESIDENT_BYTES + batch * (payload + 64)) as u64 / 1024 + slack,
            "{resident} KiB resident after {} entries",
            written.len()
        );
    }
    assert!(
        resident_kib_under(dir.path()) >= 512,
        "the newest bytes stay mapped in"
    );
    assert!(log.release_memory() >= 512 * 1024);
    let resident = resident_kib_under(dir.path());
    assert!(
        resident <= slack,
        "{resident} KiB resident after release_memory"
    );
    assert_eq!(read_all(&log, 1, 385), written);
    // A rollover: the full segment is closed and its pages leave with it.
    log.release_memory();
    let more = entries(385..=640, 1, payload);
    log.append(&more).unwrap();
    log.sync().unwrap();
    written.extend(more);
    assert!(!log.closed.is_empty(), "a segment was closed");
    assert!(
        resident_kib_under(dir.path()) <= (2 * OPEN_RESIDENT_BYTES) as u64 / 1024 + slack,
        "{} KiB resident after a rollover",
        resident_kib_under(dir.path())
    );
    assert_eq!(read_all(&log, 1, 641), written);
    assert!(log.release_memory() > 0);
    drop(log);
    let log = SegmentLog::open(dir.path(), Options::default()).unwrap();
    assert_eq!(read_all(&log, 1, 641), written);
}

#[test]
fn test_sync_runs_on_another_thread_while_the_log_appends() {
    // A sync begun at entry 5 and run on another thread covers exactly entries 1..=5: entries
    // appended while it runs stay unsynced (a power cut may take them) until the next sync.
    let dir = tempfile::tempdir().unwrap();
    let mut log = open(dir.path(), 64 << 10);
    log.append(&entries(1..=5, 1, 100)).unwrap();
    let request = log.sync_begin().unwrap();
    assert_eq!(request.last_index(), LogIndex(5));
    let running = std::thread::spawn(move || {
        let result = request.run();
        (request, result)
    });
    log.append(&entries(6..=8, 1, 100)).unwrap();
    let (request, result) = running.join().unwrap();
    assert_eq!(log.sync_end(request, result).unwrap(), LogIndex(5));
    assert_eq!(log.durable_index(), LogIndex(5));
    let (_, offset, length) = log.unsynced_bytes().expect("entries 6..=8 are unsynced");
    assert_eq!(length, 3 * record_bytes(100) as u64);
    assert_eq!(
        offset,
        (SEGMENT_HEADER_BYTES + 5 * record_bytes(100)) as u64
    );
    log.sync().unwrap();
    assert_eq!(log.durable_index(), LogIndex(8));
    assert!(log.unsynced_bytes().is_none());
    // Nothing left to flush: a request with nothing to do, and the index stays.
    let request = log.sync_begin().unwrap();
    let result = request.run();
    assert_eq!(log.sync_end(request, result).unwrap(), LogIndex(8));
}

#[test]
fn test_sync_begun_before_a_truncation_makes_nothing_durable() {
    // A sync covering entries 1..=6 (term 1) is in flight when a new leader's entries cut the
    // log after 3 and the same indexes come back, even under the same term as before: the
    // request never covered those new bytes, so the log must not call them durable. The
    // entries the truncation kept are durable (it syncs what it keeps).
    let dir = tempfile::tempdir().unwrap();
    let mut log = open(dir.path(), 64 << 10);
    log.append(&entries(1..=6, 1, 100)).unwrap();
    let request = log.sync_begin().unwrap();
    log.truncate_after(LogIndex(3)).unwrap();
    assert_eq!(log.durable_index(), LogIndex(3));
    log.append(&entries(4..=6, 1, 100)).unwrap();
    let result = request.run();
    assert!(result.is_ok());
    assert_eq!(log.sync_end(request, result).unwrap(), LogIndex(3));
    assert_eq!(log.durable_index(), LogIndex(3));
    assert!(log.unsynced_bytes().is_some(), "the new 4..=6 are unsynced");
    log.sync().unwrap();
    assert_eq!(log.durable_index(), LogIndex(6));
}

#[test]
fn test_sync_in_flight_across_rotation_and_compaction() {
    // 1000-byte entries in 4 KiB segments, three per segment. A sync is begun with entry 4
    // in the open segment; entries appended meanwhile close that segment (closing syncs it)
    // and open another, which the old request must not mark synced; compaction then removes
    // the segment the request maps. The request still runs (its map keeps the unlinked file's
    // pages) and ends cleanly.
    let dir = tempfile::tempdir().unwrap();
    let mut log = open(dir.path(), 4096);
    log.append(&entries(1..=4, 1, 1000)).unwrap();
    let request = log.sync_begin().unwrap();
    log.append(&entries(5..=7, 1, 1000)).unwrap();
    assert_eq!(
        log.durable_index(),
        LogIndex(6),
        "closing a segment syncs it"
    );
    log.compact_through(LogIndex(6), Term(1)).unwrap();
    let result = request.run();
    assert!(result.is_ok());
    assert_eq!(log.sync_end(request, result).unwrap(), LogIndex(6));
    assert!(
        log.unsynced_bytes().is_some(),
        "entry 7, in the new segment, is not synced by the old request"
    );
    log.sync().unwrap();
    assert_eq!(log.durable_index(), LogIndex(7));
    drop(log);
    let log = open(dir.path(), 4096);
    assert_eq!(read_all(&log, 7, 8), entries(7..=7, 1, 1000));
}

#[test]
fn test_failed_sync_run_is_sticky() {
    // A flush that failed on the sync thread stops the log, as a failed `sync` does.
    let dir = tempfile::tempdir().unwrap();
    let mut log = open(dir.path(), 64 << 10);
    log.append(&entries(1..=2, 1, 100)).unwrap();
    let request = log.sync_begin().unwrap();
    let error = log
        .sync_end(request, Err(io::Error::other("EIO")))
        .unwrap_err();
    assert!(error.to_string().contains("syncing segment"), "{error}");
    assert_eq!(log.durable_index(), LogIndex(0));
    assert!(log.append(&entries(3..=3, 1, 100)).is_err());
    assert!(matches!(log.sync_begin(), Err(LogError::Failed)));
}

#[test]
fn test_conformance_segment_log_on_a_simulated_disk() {
    // The shared suite on the simulated disk: segments are read into memory and written
    // through the file seam instead of mapped.
    let disk = crate::SimDisk::new(1);
    testing::run_all(&mut testing::SegmentLogHarness::on(
        disk.shared(),
        "/logs",
        options(4096),
    ));
}

#[test]
fn test_power_losses_on_a_simulated_disk_keep_every_synced_entry() {
    // Batches appended to 4 KiB segments, some synced, then the power is cut (every unsynced
    // write lost, or a prefix of them kept in order with the next one torn). For many seeds
    // the log reopens, holds every synced entry and a prefix of the rest, and takes new
    // entries after them.
    let mut lost_some = 0;
    for seed in 0..60 {
        let disk = crate::SimDisk::new(seed);
        let shared = disk.shared();
        let dir = Path::new("/log");
        let mut log = SegmentLog::open_on(shared.clone(), dir, options(4096)).unwrap();
        let mut prng = Prng(seed);
        let mut written = Vec::new();
        let mut synced = 0;
        for batch in 0..6 {
            let first = written.len() as u64 + 1;
            let count = 1 + prng.below(5);
            let batch_entries = entries(
                first..=first + count - 1,
                1 + batch / 3,
                200 + prng.below(900) as usize,
            );
            log.append(&batch_entries).unwrap();
            written.extend(batch_entries);
            if prng.below(2) == 0 {
                log.sync().unwrap();
                synced = written.len();
            }
        }
        drop(log);
        let mode = if seed % 2 == 0 {
            crate::PowerLoss::DropUnsynced
        } else {
            crate::PowerLoss::TornPrefix
        };
        disk.power_loss(mode);
        let mut log = SegmentLog::open_on(shared.clone(), dir, options(4096)).unwrap();
        let last = log.last_index().0 as usize;
        assert!(last >= synced, "seed {seed}: {last} < {synced}");
        assert!(last <= written.len());
        assert_prefix(&log, 1, &written, last as u64);
        lost_some += usize::from(last < written.len());
        let next = entry(last as u64 + 1, 9, 50);
        log.append(std::slice::from_ref(&next)).unwrap();
        log.sync().unwrap();
        drop(log);
        disk.power_loss(crate::PowerLoss::DropUnsynced);
        let log = SegmentLog::open_on(shared, dir, options(4096)).unwrap();
        assert_eq!(log.last_index(), next.index);
    }
    assert!(lost_some > 10, "{lost_some}");
}

#[test]
fn test_a_failed_write_or_sync_on_a_simulated_disk_is_sticky() {
    // EIO on the write of an entry (through to the file) or on the sync: the call fails and
    // every later change is refused until the log is reopened; reopened, it holds what was
    // synced before.
    for op in [crate::SimOp::Write, crate::SimOp::Sync] {
        let disk = crate::SimDisk::new(3);
        let shared = disk.shared();
        let dir = Path::new("/log");
        let mut log = SegmentLog::open_on(shared.clone(), dir, options(4096)).unwrap();
        log.append(&entries(1..=3, 1, 100)).unwrap();
        log.sync().unwrap();
        disk.fail_after(op, 0);
        let failed = log
            .append(&entries(4..=5, 1, 100))
            .and_then(|()| log.sync());
        assert!(failed.is_err(), "{op:?}");
        if op == crate::SimOp::Write {
            // The batch's entries were staged, never readable: the log forgets them, and what
            // it holds still reads back.
            assert_eq!(log.last_index(), LogIndex(3));
            assert_eq!(read_all(&log, 1, 4), entries(1..=3, 1, 100));
        }
        assert!(log.append(&entries(6..=6, 1, 100)).is_err(), "{op:?}");
        drop(log);
        disk.power_loss(crate::PowerLoss::DropUnsynced);
        let log = SegmentLog::open_on(shared, dir, options(4096)).unwrap();
        assert_eq!(log.last_index(), LogIndex(3), "{op:?}");
    }
}

#[test]
fn test_names_a_crash_kept_are_made_durable_at_open() {
    // Seed 50,096: a rollover's directory sync fails (EIO) and the process stops; its page
    // cache kept the closed segment's new name. Reopened, the log must make that name durable
    // before it goes on: else a power cut after later segments brings the old name back, and
    // two open segments hold entries (taken for damage).
    let disk = crate::SimDisk::new(5);
    let shared = disk.shared();
    let dir = Path::new("/log");
    let mut log = SegmentLog::open_on(shared.clone(), dir, options(4096)).unwrap();
    log.append(&entries(1..=2, 1, 1000)).unwrap();
    log.sync().unwrap();
    disk.fail_after(crate::SimOp::SyncDir, 0);
    let failed = log
        .append(&entries(3..=8, 1, 1000))
        .and_then(|()| log.sync());
    assert!(failed.is_err(), "a directory sync failed");
    drop(log);
    disk.clear_countdowns();
    // A process crash: the disk keeps every write and every name.
    let mut log = SegmentLog::open_on(shared.clone(), dir, options(4096)).unwrap();
    // A small entry, in the open segment: no rollover (whose directory sync would make every
    // name durable) before the power cut.
    let first_new = log.last_index().0 + 1;
    log.append(&entries(first_new..=first_new, 1, 10)).unwrap();
    log.sync().unwrap();
    let synced = log.last_index();
    drop(log);
    disk.power_loss(crate::PowerLoss::DropUnsynced);
    let log = SegmentLog::open_on(shared, dir, options(4096)).unwrap();
    assert_eq!(log.last_index(), synced);
}

#[test]
fn test_a_compaction_point_a_crash_kept_is_made_durable_at_open() {
    // Seed 347: the sync of a compaction's metadata save fails (EIO) and the process stops;
    // its page cache kept the new point. Reopened, the log removes the segments the point
    // covers, so it must make the point durable first: else a power cut takes the point back
    // while the segments stay gone, and the log has a gap.
    let disk = crate::SimDisk::new(7);
    let shared = disk.shared();
    let dir = Path::new("/log");
    let mut log = SegmentLog::open_on(shared.clone(), dir, options(4096)).unwrap();
    log.append(&entries(1..=9, 1, 1000)).unwrap();
    log.sync().unwrap();
    disk.fail_after(crate::SimOp::Sync, 0);
    assert!(log.compact_through(LogIndex(6), Term(1)).is_err());
    drop(log);
    disk.clear_countdowns();
    // A process crash: the disk keeps every write.
    let mut log = SegmentLog::open_on(shared.clone(), dir, options(4096)).unwrap();
    let next = log.last_index().0 + 1;
    log.append(&entries(next..=next, 1, 10)).unwrap();
    log.sync().unwrap();
    let (first, last) = (log.first_index(), log.last_index());
    drop(log);
    disk.power_loss(crate::PowerLoss::DropUnsynced);
    let log = SegmentLog::open_on(shared, dir, options(4096)).unwrap();
    assert_eq!((log.first_index(), log.last_index()), (first, last));
}

#[test]
fn test_background_close_refuses_appends_until_its_sync_request_ends() {
    // 1000-byte entries in 4 KiB segments, three per segment. With background closes the
    // fourth append is refused, changing nothing; the next sync request flushes the full
    // segment, renames it and syncs the directory (on another thread here), and meanwhile the
    // log refuses appends, truncations and compactions. Once it ends the entries it closed are
    // durable, a spare is open, and the refused batch goes in.
    let dir = tempfile::tempdir().unwrap();
    let mut log = open(dir.path(), 4096);
    log.set_background_close(true);
    log.append(&entries(1..=3, 1, 1000)).unwrap();
    let refused = log.append(&entries(4..=4, 1, 1000)).unwrap_err();
    assert!(crate::is_closing(&refused), "{refused}");
    assert_eq!(log.last_index(), LogIndex(3));
    assert!(log.close_pending() && !log.closing());
    assert_eq!(
        segment_names(dir.path())
            .iter()
            .filter(|n| n.starts_with("open-"))
            .count(),
        2
    );
    let request = log.sync_begin().unwrap();
    assert!(request.closes_segment());
    assert_eq!(request.last_index(), LogIndex(3));
    assert!(log.closing());
    let running = std::thread::spawn(move || {
        let result = request.run();
        (request, result)
    });
    for refused in [
        log.append(&entries(4..=4, 1, 1000)).unwrap_err(),
        log.truncate_after(LogIndex(2)).unwrap_err(),
        log.compact_through(LogIndex(1), Term(1)).unwrap_err(),
        log.sync().unwrap_err(),
    ] {
        assert!(crate::is_closing(&refused), "{refused}");
    }
    assert!(matches!(log.sync_begin(), Err(LogError::Closing)));
    log.prepare_next_segment().unwrap(); // Quietly nothing while the close is out.
    assert_eq!(log.durable_index(), LogIndex(0));
    let (request, result) = running.join().unwrap();
    assert_eq!(log.sync_end(request, result).unwrap(), LogIndex(3));
    assert!(!log.close_pending());
    let names = segment_names(dir.path());
    assert!(
        names.contains(&closed_name(LogIndex(1), LogIndex(3))),
        "{names:?}"
    );
    log.append(&entries(4..=5, 1, 1000)).unwrap();
    log.sync().unwrap();
    assert_eq!(log.durable_index(), LogIndex(5));
    assert_eq!(log.closed.len(), 1);
    let written = read_all(&log, 1, 6);
    drop(log);
    let log = SegmentLog::open(dir.path(), options(4096)).unwrap();
    assert_eq!(read_all(&log, 1, 6), written);
}

#[test]
fn test_background_close_by_a_plain_sync_and_after_a_truncation() {
    // `sync` (the stop's) runs a wanted close itself; a truncation drops a wanted close (the
    // open segment it cut may have room again); a batch larger than a segment still rolls over
    // in place.
    let dir = tempfile::tempdir().unwrap();
    let mut log = open(dir.path(), 4096);
    log.set_background_close(true);
    log.append(&entries(1..=3, 1, 1000)).unwrap();
    assert!(crate::is_closing(
        &log.append(&entries(4..=4, 1, 1000)).unwrap_err()
    ));
    log.sync().unwrap();
    assert_eq!(log.durable_index(), LogIndex(3));
    assert!(!log.close_pending());
    log.append(&entries(4..=6, 1, 1000)).unwrap();
    assert!(crate::is_closing(
        &log.append(&entries(7..=7, 1, 1000)).unwrap_err()
    ));
    log.truncate_after(LogIndex(5)).unwrap();
    assert!(!log.close_pending());
    log.append(&entries(6..=6, 2, 1000)).unwrap();
    // Five entries at once need more than a fresh segment: rolled over in place.
    log.append(&entries(7..=11, 2, 1000)).unwrap();
    log.sync().unwrap();
    assert_eq!(log.durable_index(), LogIndex(11));
    let written = read_all(&log, 1, 12);
    drop(log);
    let log = SegmentLog::open(dir.path(), options(4096)).unwrap();
    assert_eq!(read_all(&log, 1, 12), written);
}

#[test]
fn test_background_close_cut_by_a_crash_recovers_every_synced_entry() {
    // The close request is begun but never run (the process dies): the full segment keeps its
    // `open-N` name and nothing was written to the spare; recovery finds every entry synced
    // before, and the log goes on.
    let disk = crate::SimDisk::new(7);
    let dir = Path::new("/log");
    let mut log = SegmentLog::open_on(disk.shared(), dir, options(4096)).unwrap();
    log.set_background_close(true);
    log.append(&entries(1..=3, 1, 1000)).unwrap();
    log.sync().unwrap();
    assert!(crate::is_closing(
        &log.append(&entries(4..=4, 1, 1000)).unwrap_err()
    ));
    let request = log.sync_begin().unwrap();
    assert!(request.closes_segment());
    drop(request);
    drop(log);
    disk.power_loss(crate::PowerLoss::DropUnsynced);
    let mut log = SegmentLog::open_on(disk.shared(), dir, options(4096)).unwrap();
    assert_eq!(log.last_index(), LogIndex(3));
    log.set_background_close(true);
    assert!(crate::is_closing(
        &log.append(&entries(4..=4, 1, 1000)).unwrap_err()
    ));
    let request = log.sync_begin().unwrap();
    let result = request.run();
    assert_eq!(log.sync_end(request, result).unwrap(), LogIndex(3));
    log.append(&entries(4..=4, 1, 1000)).unwrap();
    log.sync().unwrap();
    drop(log);
    disk.power_loss(crate::PowerLoss::DropUnsynced);
    let log = SegmentLog::open_on(disk.shared(), dir, options(4096)).unwrap();
    assert_eq!(log.last_index(), LogIndex(4));
}

#[test]
fn test_background_removal_leaves_the_files_to_the_caller_and_a_crash_before_is_safe() {
    // 1000-byte entries in 4 KiB segments: entries 1..=9 fill three closed segments. With
    // background removal a compaction through 6 saves its point and takes the two segments it
    // covers out of the log, but leaves their files: `take_removals` hands them out once. A
    // reopen before they are deleted (a crash) deletes them itself; deleting them later finds
    // them gone, which is no error. On the live log, running the removal deletes them.
    let dir = tempfile::tempdir().unwrap();
    let mut log = open(dir.path(), 4096);
    log.set_background_removal(true);
    for index in 1..=10 {
        log.append(&entries(index..=index, 1, 1000)).unwrap();
    }
    log.sync().unwrap();
    let before = segment_names(dir.path());
    log.compact_through(LogIndex(6), Term(1)).unwrap();
    assert_eq!(log.first_index(), LogIndex(7));
    assert_eq!(segment_names(dir.path()), before, "nothing deleted yet");
    let removal = log.take_removals().expect("two segments to delete");
    let covered: Vec<String> = removal
        .paths()
        .iter()
        .map(|p| p.file_name().unwrap().to_string_lossy().into_owned())
        .collect();
    assert_eq!(
        covered,
        [
            closed_name(LogIndex(1), LogIndex(3)),
            closed_name(LogIndex(4), LogIndex(6))
        ]
    );
    assert!(log.take_removals().is_none(), "handed out once");
    let written = read_all(&log, 7, 11);

    // A crash before the removal ran: the reopen finishes the compaction.
    drop(log);
    let log = SegmentLog::open(dir.path(), options(4096)).unwrap();
    assert_eq!(log.first_index(), LogIndex(7));
    assert_eq!(read_all(&log, 7, 11), written);
    let names = segment_names(dir.path());
    assert!(covered.iter().all(|n| !names.contains(n)), "{names:?}");
    removal.run().unwrap();

    // On a live log, running it deletes the files.
    let mut log = log;
    log.set_background_removal(true);
    log.compact_through(LogIndex(9), Term(1)).unwrap();
    let removal = log.take_removals().expect("a segment to delete");
    assert!(removal.paths().iter().all(|p| p.exists()));
    removal.run().unwrap();
    assert!(removal.paths().iter().all(|p| !p.exists()));
    assert_eq!(read_all(&log, 10, 11), written[3..].to_vec());
}

#[test]
fn test_a_spare_prepared_on_another_thread_takes_the_next_entries() {
    // 1000-byte entries in 4 KiB segments. The next segment is prepared by a request run on
    // another thread; none is asked for while one is out or ready. Handed back, it is the
    // segment the next rollover opens (no other file is made), and a reopen finds every entry.
    // A request whose run never came back (a crash) leaves a spare the reopen keeps.
    let dir = tempfile::tempdir().unwrap();
    let mut log = open(dir.path(), 4096);
    log.append(&entries(1..=2, 1, 1000)).unwrap();
    let files = segment_names(dir.path()).len();
    let mut request = log.spare_request().unwrap().expect("no spare yet");
    assert!(log.spare_request().unwrap().is_none(), "one out at a time");
    let (request, result) = std::thread::spawn(move || {
        let result = request.run();
        (request, result)
    })
    .join()
    .unwrap();
    log.spare_ready(request, result).unwrap();
    assert_eq!(segment_names(dir.path()).len(), files + 1);
    assert!(log.spare_request().unwrap().is_none(), "a spare is ready");
    log.append(&entries(3..=5, 1, 1000)).unwrap();
    log.sync().unwrap();
    assert_eq!(log.closed.len(), 1);
    assert_eq!(
        segment_names(dir.path()).len(),
        files + 1,
        "the rollover used it"
    );
    let written = read_all(&log, 1, 6);

    let mut lost = log.spare_request().unwrap().expect("the spare was used");
    lost.run().unwrap();
    drop(lost);
    drop(log);
    let mut log = SegmentLog::open(dir.path(), options(4096)).unwrap();
    assert_eq!(read_all(&log, 1, 6), written);
    assert!(
        log.spare_request().unwrap().is_none(),
        "the reopen kept it as a spare"
    );
}

#[test]
fn test_a_spare_that_finds_the_disk_full_leaves_nothing_and_changes_nothing() {
    // A spare request on a simulated disk with no room: its run fails with a full disk, its
    // temporary file is gone, the log takes it back as a plain full-disk error (not sticky),
    // and a later request succeeds once there is room.
    let disk = crate::SimDisk::new(7);
    let dir = std::path::PathBuf::from("/log");
    let mut log = SegmentLog::open_on(disk.shared(), &dir, options(4096)).unwrap();
    log.append(&entries(1..=2, 1, 1000)).unwrap();
    let names = |disk: &crate::SimDisk| {
        let mut names: Vec<String> = disk
            .shared()
            .read_dir(&dir)
            .unwrap()
            .into_iter()
            .map(|n| n.into_string().unwrap())
            .collect();
        names.sort();
        names
    };
    let before = names(&disk);
    disk.set_budget(Some(disk.used_bytes()));
    let mut request = log.spare_request().unwrap().unwrap();
    let result = request.run();
    assert_eq!(
        result.as_ref().unwrap_err().kind(),
        io::ErrorKind::StorageFull
    );
    let error = log.spare_ready(request, result).unwrap_err();
    assert_eq!(error.kind(), io::ErrorKind::StorageFull, "{error}");
    assert_eq!(names(&disk), before);
    disk.set_budget(None);
    let mut request = log.spare_request().unwrap().expect("usable still");
    let result = request.run();
    log.spare_ready(request, result).unwrap();
    log.append(&entries(3..=4, 1, 1000)).unwrap();
    log.sync().unwrap();
}

#[test]
fn test_a_spare_handed_back_during_a_close_waits_for_a_directory_sync_of_its_own() {
    // A spare asked for before the open segment filled comes back while the close is out: its
    // rename may have come after the close's directory sync, so the close's end opens the
    // spare that sync covered, and this one joins the spares with a directory sync owed.
    let dir = tempfile::tempdir().unwrap();
    let mut log = open(dir.path(), 4096);
    log.set_background_close(true);
    log.append(&entries(1..=1, 1, 1000)).unwrap();
    let mut request = log.spare_request().unwrap().expect("no spare yet");
    log.append(&entries(2..=3, 1, 1000)).unwrap();
    let refused = log.append(&entries(4..=4, 1, 1000)).unwrap_err();
    assert!(crate::is_closing(&refused), "{refused}");
    let close = log.sync_begin().unwrap();
    assert!(close.closes_segment());
    let result = request.run();
    log.spare_ready(request, result).unwrap();
    assert_eq!(log.spares.len(), 1, "held back until the close ends");
    let result = close.run();
    log.sync_end(close, result).unwrap();
    let open = log
        .open
        .as_ref()
        .expect("the covered spare is open")
        .counter;
    assert_eq!(log.spares.len(), 1);
    assert_ne!(log.spares[0].counter, open);
    assert!(log.dir_sync_pending, "its name is not durable yet");
    log.append(&entries(4..=6, 1, 1000)).unwrap();
    log.sync().unwrap();
    let written = read_all(&log, 1, 7);
    drop(log);
    let log = SegmentLog::open(dir.path(), options(4096)).unwrap();
    assert_eq!(read_all(&log, 1, 7), written);
}
