//! Hand-built WALs (each case a log SQLite itself could leave behind: torn writes, corruption,
//! an earlier generation's frames) and a real one written by SQLite.

use super::*;

const PAGE: u32 = 512;

/// Builds a WAL the way SQLite writes one, frame by frame.
struct WalBuilder {
    bytes: Vec<u8>,
    big_endian: bool,
    salt: [u32; 2],
    running: [u32; 2],
}

impl WalBuilder {
    fn new(big_endian: bool, salt: [u32; 2]) -> WalBuilder {
        let mut bytes = Vec::new();
        let magic = if big_endian {
            WAL_MAGIC_BIG_ENDIAN
        } else {
            WAL_MAGIC_LITTLE_ENDIAN
        };
        for word in [magic, WAL_FORMAT_VERSION, PAGE, 1, salt[0], salt[1]] {
            bytes.extend_from_slice(&word.to_be_bytes());
        }
        let running = checksum(big_endian, &bytes, [0, 0]);
        bytes.extend_from_slice(&running[0].to_be_bytes());
        bytes.extend_from_slice(&running[1].to_be_bytes());
        WalBuilder {
            bytes,
            big_endian,
            salt,
            running,
        }
    }

    /// Appends a frame for `page_number` filled with `fill`, as a commit when `commit_pages`
    /// is not 0.
    fn frame(&mut self, page_number: u32, commit_pages: u32, fill: u8) -> &mut WalBuilder {
        let salt = self.salt;
        self.frame_salted(page_number, commit_pages, fill, salt)
    }

    fn frame_salted(
        &mut self,
        page_number: u32,
        commit_pages: u32,
        fill: u8,
        salt: [u32; 2],
    ) -> &mut WalBuilder {
        let mut header = Vec::new();
        for word in [page_number, commit_pages, salt[0], salt[1]] {
            header.extend_from_slice(&word.to_be_bytes());
        }
        let page = page_image(fill);
        self.running = checksum(self.big_endian, &header[..8], self.running);
        self.running = checksum(self.big_endian, &page, self.running);
        header.extend_from_slice(&self.running[0].to_be_bytes());
        header.extend_from_slice(&self.running[1].to_be_bytes());
        self.bytes.extend_from_slice(&header);
        self.bytes.extend_from_slice(&page);
        self
    }

    fn bytes(&self) -> Vec<u8> {
        self.bytes.clone()
    }
}

fn page_image(fill: u8) -> Vec<u8> {
    vec![fill; PAGE as usize]
}

/// A main file of `fills.len()` pages; page 1 carries a header naming the page size.
fn main_image(fills: &[u8]) -> Vec<u8> {
    let mut image: Vec<u8> = fills.iter().flat_map(|&f| page_image(f)).collect();
    if !image.is_empty() {
        image[16..18].copy_from_slice(&(PAGE as u16).to_be_bytes());
    }
    image
}

/// The fill byte of each page of an image (the byte at the end of the page, away from page
/// 1's header).
fn fills(image: &[u8]) -> Vec<u8> {
    image
        .chunks(PAGE as usize)
        .map(|page| page[PAGE as usize - 1])
        .collect()
}

fn frame_offset(frame: usize) -> usize {
    HEADER_BYTES + frame * (FRAME_HEADER_BYTES + PAGE as usize)
}

#[test]
fn test_checksum_follows_sqlites_definition() {
    // Pairs (1, 2) then (1, 2), little-endian words: s0 = 0+1+0 = 1, s1 = 0+2+1 = 3, then
    // s0 = 1+1+3 = 5, s1 = 3+2+5 = 10.
    let data = [1, 0, 0, 0, 2, 0, 0, 0, 1, 0, 0, 0, 2, 0, 0, 0];
    assert_eq!(checksum(false, &data[..8], [0, 0]), [1, 3]);
    assert_eq!(checksum(false, &data, [0, 0]), [5, 10]);
    // The same bytes read big-endian.
    assert_eq!(
        checksum(true, &data[..8], [0, 0]),
        [1 << 24, (2 << 24) + (1 << 24)]
    );
    // Additions wrap.
    assert_eq!(
        checksum(false, &[0xff; 8], [u32::MAX, 0]),
        [u32::MAX - 1, u32::MAX - 2]
    );
}

#[test]
fn test_empty_wal_leaves_the_main_file_as_it_is() {
    let mut main = main_image(&[1, 2]);
    let applied = apply(&mut main, &[]).unwrap();
    assert_eq!(applied.log.end, LogEnd::Empty);
    assert_eq!(applied.pages, 2);
    assert_eq!(fills(&main), [1, 2]);
}

#[test]
fn test_commits_apply_in_log_order() {
    // Two transactions: the first grows the database to 3 pages, the second rewrites page 2
    // and adds page 4. The later image of page 2 wins.
    let mut main = main_image(&[1, 2]);
    let wal = WalBuilder::new(false, [11, 22])
        .frame(1, 0, 0xa1)
        .frame(2, 0, 0xa2)
        .frame(3, 3, 0xa3)
        .frame(2, 0, 0xb2)
        .frame(4, 4, 0xb4)
        .bytes();
    let applied = apply(&mut main, &wal).unwrap();
    assert_eq!(applied.log.end, LogEnd::Clean);
    assert_eq!(applied.log.commits, 2);
    assert_eq!(applied.log.frames.len(), 5);
    assert_eq!(applied.pages, 4);
    assert_eq!(fills(&main), [0xa1, 0xb2, 0xa3, 0xb4]);
}

#[test]
fn test_big_endian_checksums_are_verified_too() {
    let mut main = main_image(&[1]);
    let wal = WalBuilder::new(true, [5, 6]).frame(1, 1, 9).bytes();
    let applied = apply(&mut main, &wal).unwrap();
    assert!(applied.log.header.unwrap().big_endian);
    assert_eq!(fills(&main), [9]);
}

#[test]
fn test_frames_after_the_last_commit_are_ignored() {
    // The second transaction never wrote its commit frame: it did not happen.
    let mut main = main_image(&[1, 2]);
    let wal = WalBuilder::new(false, [1, 2])
        .frame(1, 2, 0xa1)
        .frame(2, 0, 0xb2)
        .frame(3, 0, 0xb3)
        .bytes();
    let applied = apply(&mut main, &wal).unwrap();
    assert_eq!(applied.log.commits, 1);
    assert_eq!(applied.log.uncommitted_frames, 2);
    assert_eq!(fills(&main), [0xa1, 2]);
}

#[test]
fn test_torn_last_frame_ends_the_log() {
    // The last commit frame was only partly written before a crash: its transaction is lost,
    // the one before stands.
    let mut main = main_image(&[1, 2]);
    let mut wal = WalBuilder::new(false, [1, 2])
        .frame(2, 2, 0xa2)
        .frame(1, 0, 0xb1)
        .frame(2, 2, 0xb2)
        .bytes();
    wal.truncate(wal.len() - 100);
    let applied = apply(&mut main, &wal).unwrap();
    assert_eq!(applied.log.end, LogEnd::TornFrame { frame: 2 });
    assert_eq!(applied.log.commits, 1);
    assert_eq!(applied.log.uncommitted_frames, 1);
    assert_eq!(fills(&main), [1, 0xa2]);
}

#[test]
fn test_bad_checksum_midway_ends_the_log() {
    // A flipped byte in frame 1's page breaks the checksum chain: frame 1 and everything after
    // it (including a later commit) are not part of the log.
    let mut main = main_image(&[1, 2]);
    let mut wal = WalBuilder::new(false, [1, 2])
        .frame(1, 2, 0xa1)
        .frame(2, 0, 0xb2)
        .frame(1, 2, 0xb1)
        .bytes();
    wal[frame_offset(1) + FRAME_HEADER_BYTES + 7] ^= 0x40;
    let applied = apply(&mut main, &wal).unwrap();
    assert_eq!(applied.log.end, LogEnd::BadFrame { frame: 1 });
    assert_eq!(applied.log.commits, 1);
    assert_eq!(fills(&main), [0xa1, 2]);
}

#[test]
fn test_frames_of_an_earlier_generation_end_the_log() {
    // After a checkpoint SQLite restarts the log with new salts and overwrites it from the
    // start; frames left from the older generation carry the old salts and must not be
    // applied, even when their checksums chain.
    let mut main = main_image(&[1, 2]);
    let wal = WalBuilder::new(false, [7, 8])
        .frame(1, 2, 0xa1)
        .frame_salted(2, 2, 0xee, [6, 8])
        .bytes();
    let applied = apply(&mut main, &wal).unwrap();
    assert_eq!(applied.log.end, LogEnd::SaltMismatch { frame: 1 });
    assert_eq!(fills(&main), [0xa1, 2]);
}

#[test]
fn test_commit_size_cuts_or_extends_the_image() {
    // A VACUUM shrank the database to 2 pages: pages past the commit's size go.
    let mut main = main_image(&[1, 2, 3, 4]);
    let wal = WalBuilder::new(false, [1, 1]).frame(1, 2, 0xa1).bytes();
    apply(&mut main, &wal).unwrap();
    assert_eq!(fills(&main), [0xa1, 2]);
    // A database that exists only in the log (dqlite 1.11 may send an empty main file).
    let mut main = Vec::new();
    let wal = WalBuilder::new(false, [1, 1])
        .frame(2, 0, 0xa2)
        .frame(1, 2, 0xa1)
        .bytes();
    let applied = apply(&mut main, &wal).unwrap();
    assert_eq!(applied.pages, 2);
    assert_eq!(fills(&main), [0xa1, 0xa2]);
}

#[test]
fn test_invalid_header_means_no_log() {
    let good = WalBuilder::new(false, [1, 2]).frame(1, 1, 0xa1).bytes();
    let mut bad_magic = good.clone();
    bad_magic[3] = 0x84;
    let mut bad_checksum = good.clone();
    bad_checksum[12] ^= 1;
    for (wal, problem) in [
        (bad_magic, HeaderProblem::Magic(0x377f_0684)),
        (bad_checksum, HeaderProblem::Checksum),
        (good[..20].to_vec(), HeaderProblem::Short),
    ] {
        let mut main = main_image(&[1]);
        let applied = apply(&mut main, &wal).unwrap();
        assert_eq!(applied.log.end, LogEnd::InvalidHeader(problem));
        assert_eq!(fills(&main), [1], "the main file is unchanged");
    }
}

#[test]
fn test_inconsistent_files_are_refused_and_change_nothing() {
    let wal = WalBuilder::new(false, [1, 2]).frame(1, 1, 0xa1).bytes();
    // The main file says 1024-byte pages, the WAL 512.
    let mut main = main_image(&[1, 2]);
    main[16..18].copy_from_slice(&1024u16.to_be_bytes());
    let before = main.clone();
    assert_eq!(
        apply(&mut main, &wal),
        Err(ApplyError::PageSizeMismatch {
            main: 1024,
            wal: 512
        })
    );
    assert_eq!(main, before);
    // A commit claiming a size no file holds (a corrupt log with a valid checksum).
    let wal = WalBuilder::new(false, [1, 2])
        .frame(1, 1_000_000, 0xa1)
        .bytes();
    let mut main = main_image(&[1]);
    assert!(matches!(
        apply(&mut main, &wal),
        Err(ApplyError::SizeImplausible {
            pages: 1_000_000,
            ..
        })
    ));
    assert_eq!(fills(&main), [1]);
}

#[test]
fn test_a_wal_written_by_sqlite_applies_to_its_main_file() {
    // SQLite itself writes a main file and a WAL (checkpoints off, so the data lives in the
    // WAL); applying the WAL must give a database that SQLite reads with every row.
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("db");
    let connection = rusqlite::Connection::open(&path).unwrap();
    connection
        .pragma_update(None, "journal_mode", "WAL")
        .unwrap();
    connection
        .pragma_update(None, "wal_autocheckpoint", 0)
        .unwrap();
    connection
        .execute_batch("CREATE TABLE t (id INTEGER PRIMARY KEY, v TEXT)")
        .unwrap();
    for batch in 0..5 {
        let tx = connection.unchecked_transaction().unwrap();
        for i in 0..200 {
            tx.execute(
                "INSERT INTO t (v) VALUES (?1)",
                [format!("row {batch} {i} {}", "x".repeat(i % 50))],
            )
            .unwrap();
        }
        tx.commit().unwrap();
    }
    connection
        .execute("DELETE FROM t WHERE id % 7 = 0", [])
        .unwrap();
    let mut main = std::fs::read(&path).unwrap();
    let wal = std::fs::read(dir.path().join("db-wal")).unwrap();
    assert!(wal.len() > 10 * 4096, "the rows are in the WAL");
    drop(connection);

    let applied = apply(&mut main, &wal).unwrap();
    assert_eq!(applied.log.end, LogEnd::Clean);
    assert_eq!(applied.log.commits, 7);
    // The database header's page count (bytes 28..32, big-endian) matches the image.
    let pages = u32::from_be_bytes(main[28..32].try_into().unwrap());
    assert_eq!(u64::from(pages), applied.pages);
    assert_eq!(main.len() as u64, u64::from(pages) * 4096);

    let copy = dir.path().join("copy");
    std::fs::write(&copy, &main).unwrap();
    let copy = rusqlite::Connection::open(&copy).unwrap();
    let (count, sum): (i64, i64) = copy
        .query_row("SELECT count(*), sum(id) FROM t", [], |r| {
            Ok((r.get(0)?, r.get(1)?))
        })
        .unwrap();
    let expected: Vec<i64> = (1..=1000).filter(|id| id % 7 != 0).collect();
    assert_eq!(count, expected.len() as i64);
    assert_eq!(sum, expected.iter().sum::<i64>());
    let check: String = copy
        .query_row("PRAGMA integrity_check", [], |r| r.get(0))
        .unwrap();
    assert_eq!(check, "ok");
}
