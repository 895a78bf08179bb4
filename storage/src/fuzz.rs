//! Entry points for the fuzz targets in `fuzz/`, also fed seeded random bytes by ordinary tests
//! so stable CI covers them.
//!
//! Each function takes arbitrary bytes, runs them through the same decoding and recovery code
//! that opening a log uses, and checks the outcome: never a panic, never an out-of-bounds read,
//! never an unbounded loop; only a clean prefix of valid records or a clean error.

use crate::meta::Metadata;
use crate::segment::{self, Stop, RECORD_ALIGN_BYTES, SEGMENT_HEADER_BYTES};
use crate::snapshot;

/// Treats `bytes` as a segment file and recovers it as recovery would (as an open segment: keep
/// the valid prefix, drop a torn tail; as a closed one: all or an error), checking that
/// everything kept really is a contiguous run of valid records.
///
/// The first byte picks the shape, so the fuzzer reaches the records without first guessing
/// the magic number: odd, the rest is what follows a valid file header; even, the rest is the
/// whole file, header included.
pub fn recover_segment_bytes(bytes: &[u8]) {
    let Some((&mode, rest)) = bytes.split_first() else {
        return;
    };
    if mode % 2 == 1 {
        let mut file = segment::encode_segment_header().to_vec();
        file.extend_from_slice(rest);
        recover_segment_file(&file);
    } else {
        recover_segment_file(rest);
    }
}

fn recover_segment_file(bytes: &[u8]) {
    if segment::check_segment_header(bytes).is_err() {
        return;
    }
    let mut records = Vec::new();
    let scan = segment::scan(bytes, |record| records.push(*record));
    assert_eq!(scan.count as usize, records.len());
    assert!(scan.end <= bytes.len());
    assert_eq!(scan.end % RECORD_ALIGN_BYTES, 0);
    let mut expected_offset = SEGMENT_HEADER_BYTES;
    for pair in records.windows(2) {
        assert_eq!(
            pair[1].index.0,
            pair[0].index.0 + 1,
            "kept records are contiguous"
        );
    }
    for record in &records {
        assert_eq!(record.offset, expected_offset);
        assert!(record.payload_start + record.payload_len <= record.end);
        assert!(record.end <= scan.end);
        // Every kept record decodes again on its own, as a read would.
        let again = segment::decode_record(bytes, record.offset, None)
            .expect("a kept record is valid")
            .expect("a kept record is not an end marker");
        assert_eq!(&again, record);
        expected_offset = record.end;
    }
    assert_eq!(scan.first, records.first().map(|record| record.index));
    assert_eq!(scan.last, records.last().map(|record| record.index));
    // The torn tail recovery would zero lies within the file and after the kept records.
    if let Some(last) = segment::last_nonzero(bytes, scan.end) {
        assert!(last >= scan.end && last < bytes.len());
        assert!(!scan.tail_zero);
    } else {
        assert!(scan.tail_zero);
    }
    if let Stop::Invalid { offset, .. } = scan.stop {
        assert_eq!(offset, scan.end);
    }
    // Damage after the kept records is named by a non-zero byte inside the file past them.
    if let Some((offset, _)) = segment::damage_after(bytes, scan.end) {
        assert!(offset > scan.end && offset < bytes.len());
        assert!(bytes[offset..].iter().any(|&b| b != 0));
    }
}

/// Treats `bytes` as a metadata file: it decodes to a record that encodes back to the same
/// bytes, or is rejected.
pub fn recover_metadata_bytes(bytes: &[u8]) {
    if let Ok(metadata) = Metadata::decode(bytes) {
        assert!(metadata.counter > 0);
        assert_eq!(&metadata.encode()[..], bytes, "decode and encode agree");
    }
}

/// Treats `bytes` as the start of a snapshot file: its metadata decodes to something that
/// encodes back to the same header and configuration, or is rejected.
pub fn decode_snapshot_bytes(bytes: &[u8]) {
    if let Ok(meta) = snapshot::decode_snapshot_meta(bytes) {
        let header = meta.encode_header();
        assert_eq!(
            &header[..],
            &bytes[..header.len()],
            "decode and encode agree"
        );
        let configuration = &bytes[header.len()..header.len() + meta.configuration.len()];
        assert_eq!(meta.configuration, configuration);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::segment::{encode_record_header, encode_segment_header, record_bytes};
    use crate::types::{EntryKind, LogIndex, Term};

    /// splitmix64: a small PRNG of our own, so a seed means the same bytes forever.
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
            self.next() % bound
        }
    }

    /// A valid segment of a few records, to mutate: random bytes alone almost never get past
    /// the magic number.
    fn valid_segment(prng: &mut Prng) -> Vec<u8> {
        let mut bytes = encode_segment_header().to_vec();
        let first = 1 + prng.below(1000);
        for k in 0..prng.below(6) {
            let payload: Vec<u8> = (0..prng.below(40)).map(|_| prng.next() as u8).collect();
            let header = encode_record_header(
                LogIndex(first + k),
                Term(1 + prng.below(3)),
                EntryKind::Command,
                &payload,
            );
            bytes.extend_from_slice(&header);
            bytes.extend_from_slice(&payload);
            bytes.resize(
                bytes.len() + record_bytes(payload.len()) - 32 - payload.len(),
                0,
            );
        }
        bytes.resize(bytes.len() + prng.below(64) as usize, 0);
        bytes
    }

    /// The header and configuration of a valid snapshot file.
    fn valid_snapshot_start(prng: &mut Prng) -> Vec<u8> {
        let meta = crate::snapshot::SnapshotMeta {
            index: LogIndex(prng.below(1000)),
            term: Term(prng.below(10)),
            configuration: (0..prng.below(40)).map(|_| prng.next() as u8).collect(),
            data_bytes: prng.below(1 << 20),
            data_crc: prng.next() as u32,
        };
        let mut bytes = meta.encode_header().to_vec();
        bytes.extend_from_slice(&meta.configuration);
        decode_snapshot_bytes(&bytes);
        assert_eq!(crate::snapshot::decode_snapshot_meta(&bytes), Ok(meta));
        bytes
    }

    fn mutate(prng: &mut Prng, bytes: &mut Vec<u8>) {
        for _ in 0..prng.below(4) {
            match prng.below(3) {
                0 if !bytes.is_empty() => {
                    let position = prng.below(bytes.len() as u64) as usize;
                    bytes[position] ^= 1 << prng.below(8);
                }
                1 if !bytes.is_empty() => {
                    let len = prng.below(bytes.len() as u64 + 1) as usize;
                    bytes.truncate(len);
                }
                _ => bytes.push(prng.next() as u8),
            }
        }
    }

    #[test]
    fn test_fuzz_entry_points_with_seeded_bytes() {
        // The fuzz targets' functions on a few thousand seeded inputs: valid files, mutated
        // ones, and plain noise. Any panic names the seed that reproduces it.
        let seed = std::env::var("SEED")
            .ok()
            .and_then(|seed| seed.parse().ok())
            .unwrap_or(0x5eed);
        for case in 0..3000u64 {
            let mut prng = Prng(seed ^ case.wrapping_mul(0x2545_f491_4f6c_dd1d));
            let mut bytes = match case % 4 {
                0 => valid_segment(&mut prng),
                1 => crate::meta::Metadata {
                    counter: 1 + prng.below(10),
                    ..Default::default()
                }
                .encode()
                .to_vec(),
                2 => valid_snapshot_start(&mut prng),
                _ => (0..prng.below(300)).map(|_| prng.next() as u8).collect(),
            };
            mutate(&mut prng, &mut bytes);
            let run = std::panic::catch_unwind(|| {
                recover_segment_file(&bytes);
                recover_segment_bytes(&bytes);
                recover_metadata_bytes(&bytes);
                decode_snapshot_bytes(&bytes);
            });
            assert!(run.is_ok(), "reproduce with SEED={seed} (case {case})");
        }
    }

    #[test]
    fn test_valid_segment_is_kept_whole() {
        // The check has teeth: an intact file keeps all its records.
        let mut prng = Prng(7);
        for _ in 0..50 {
            let bytes = valid_segment(&mut prng);
            let scan = segment::scan(&bytes, |_| {});
            assert_eq!(scan.stop, Stop::Clean);
            assert!(scan.tail_zero);
            recover_segment_file(&bytes);
            let mut with_mode = vec![0u8];
            with_mode.extend_from_slice(&bytes);
            recover_segment_bytes(&with_mode);
        }
    }
}
