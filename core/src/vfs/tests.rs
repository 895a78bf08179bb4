//! Unit tests of the hand-written wal-index: appends across region boundaries are found by the
//! same lookup SQLite uses, and cleaning drops exactly the entries past a frame.

use super::*;
use crate::wal;

fn database(dir: &Path) -> (Vfs, Arc<DbFiles>) {
    static COUNTER: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let name = format!(
        "atoll-vfs-test-{}",
        COUNTER.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
    );
    let vfs = Vfs::register(&name, atoll_storage::StdDisk::shared()).unwrap();
    let path = dir.join("x");
    std::fs::write(&path, crate::engine::empty_database_page(512)).unwrap();
    let files = vfs
        .add_database(
            &path,
            DbOptions {
                page_size: 512,
                capture_bytes_max: 1 << 20,
            },
        )
        .unwrap();
    (vfs, files)
}

#[test]
fn test_index_append_find_and_clean_across_regions() {
    let dir = tempfile::tempdir().unwrap();
    let (_vfs, files) = database(dir.path());
    let mut state = files.state.lock().unwrap();
    state.ensure_region(0).unwrap();
    // Frames 1..=9000 span three regions; page numbers repeat every 700 frames.
    let frames = 9000u32;
    for frame in 1..=frames {
        state.index_append(frame, frame % 700 + 1).unwrap();
    }
    // The latest frame of a page wins, within any prefix of the WAL.
    assert_eq!(state.find_frame(1, frames), Some(8400));
    assert_eq!(state.find_frame(1, 8399), Some(7700));
    assert_eq!(state.find_frame(5, 10), Some(4));
    assert_eq!(state.find_frame(701, frames), None);
    // Cleaning past frame 5000 (region 1) forgets later frames.
    state.clean_hash_after(5000, frames);
    assert_eq!(state.find_frame(1, frames), Some(4900));
    // Appending again after the cleaned point works as in SQLite.
    state.index_append(5001, 1).unwrap();
    assert_eq!(state.find_frame(1, 5001), Some(5001));
    assert_eq!(wal::frame_region(5001), 1);
}

#[test]
fn test_capture_refuses_wal_writes_outside_transactions() {
    let dir = tempfile::tempdir().unwrap();
    let (_vfs, files) = database(dir.path());
    // No captured writer holds the lock: SQLite may not write the WAL.
    assert_eq!(
        files.wal_write(&[0u8; 24], 32),
        rusqlite::ffi::SQLITE_IOERR_WRITE
    );
    assert_eq!(
        std::fs::metadata(wal_path_of(&files.path)).unwrap().len(),
        0
    );
}

#[test]
fn test_captured_wal_offsets_4_gib_out_never_wrap() {
    // Regression (armv7): the distance of a WAL offset into the captured frames was cast with
    // `as usize`, so on a 32-bit machine an offset 4 GiB past them wrapped onto them: a write
    // there would overwrite captured frames and a read would return them. Now such a write is
    // past the capture limit (SQLITE_FULL) and such a read is short and zero-filled, on every
    // machine; a read just past the captured bytes no longer panics either.
    let dir = tempfile::tempdir().unwrap();
    let (_vfs, files) = database(dir.path());
    files.state.lock().unwrap().capture.active = true;
    let start = wal::frame_offset(1, 512);
    let frame = vec![7u8; wal::FRAME_HEADER_BYTES + 512];
    assert_eq!(files.wal_write(&frame, start), OK);
    let far = start + (1u64 << 32);
    assert_eq!(files.wal_write(&[9u8; 24], far), rusqlite::ffi::SQLITE_FULL);
    for offset in [far, start + frame.len() as u64 + 8] {
        let mut read = vec![1u8; 24];
        assert_eq!(
            files.wal_read(&mut read, offset),
            rusqlite::ffi::SQLITE_IOERR_SHORT_READ
        );
        assert_eq!(read, vec![0u8; 24]);
    }
    let mut read = vec![0u8; 24];
    assert_eq!(files.wal_read(&mut read, start), OK);
    assert_eq!(read, vec![7u8; 24]);
}
