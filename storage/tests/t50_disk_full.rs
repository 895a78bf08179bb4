//! A full disk, for real: the kernel refuses to allocate a segment's blocks, and the log must
//! answer with a clean error, change nothing, and keep working.
//!
//! The test re-runs itself in a child process whose file size limit (`ulimit -f`) is below the
//! size of the segment one entry needs, so `posix_fallocate` fails with `EFBIG` as it would
//! with `ENOSPC` on a full disk. It lives in its own test binary because spawning a process
//! from a multi-threaded test binary briefly shares every open file (and so the `flock` of other
//! tests' logs) with the child, between its fork and its exec.

use std::io;
use std::path::PathBuf;
use std::process::Command;

use atoll_storage::{
    Entry, EntryKind, LogError, LogIndex, LogRead, LogStore, Options, Payload, SegmentLog, Term,
};

const CHILD_ENV: &str = "ATOLL_FSIZE_CHILD";

fn entry(index: u64, payload_bytes: usize) -> Entry {
    Entry {
        index: LogIndex(index),
        term: Term(1),
        kind: EntryKind::Command,
        payload: Payload::from_vec(vec![index as u8 | 1; payload_bytes]),
    }
}

fn options() -> Options {
    Options {
        segment_bytes: 64 << 10,
        ..Options::default()
    }
}

fn os_error(error: &io::Error) -> Option<i32> {
    error.raw_os_error().or_else(|| {
        let inner = error.get_ref()?.downcast_ref::<LogError>()?;
        let source = std::error::Error::source(inner)?.downcast_ref::<io::Error>()?;
        source.raw_os_error()
    })
}

#[test]
fn test_file_size_limit_fails_append_cleanly() {
    if std::env::var_os(CHILD_ENV).is_some() {
        return child();
    }
    let dir = tempfile::tempdir().unwrap();
    let output = Command::new("bash")
        .arg("-c")
        // SIGXFSZ ignored (inherited across exec), so the kernel answers EFBIG instead of
        // killing the process.
        .arg(r#"trap "" XFSZ; ulimit -f 256; exec "$0" "$@""#)
        .arg(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "test_file_size_limit_fails_append_cleanly",
            "--nocapture",
        ])
        .env(CHILD_ENV, dir.path())
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "child failed:\n{stdout}\n{stderr}");
    assert!(
        stderr.contains("child: append refused with EFBIG"),
        "{stdout}\n{stderr}"
    );
    // The parent, without the limit, reopens what the child left: the entries it synced.
    let log = SegmentLog::open(dir.path(), options()).unwrap();
    assert_eq!(log.last_index(), LogIndex(5));
}

fn child() {
    let dir = PathBuf::from(std::env::var_os(CHILD_ENV).unwrap());
    let mut log = SegmentLog::open(&dir, options()).unwrap();
    log.append(&(1..=3).map(|index| entry(index, 1000)).collect::<Vec<_>>())
        .unwrap();
    log.sync().unwrap();
    // A 300 KiB payload needs a segment of its own, beyond the 256 KiB file size limit.
    let error = log.append(&[entry(4, 300 << 10)]).unwrap_err();
    assert_eq!(os_error(&error), Some(libc::EFBIG), "{error}");
    eprintln!("child: append refused with EFBIG ({error})");
    assert_eq!(log.last_index(), LogIndex(3));
    let names: Vec<String> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|entry| entry.unwrap().file_name().into_string().unwrap())
        .collect();
    assert!(
        names.iter().all(|name| !name.ends_with(".tmp")),
        "{names:?}"
    );
    // Not sticky: smaller entries still go in, and survive a reopen.
    log.append(&[entry(4, 1000), entry(5, 1000)]).unwrap();
    log.sync().unwrap();
    drop(log);
    let log = SegmentLog::open(&dir, options()).unwrap();
    assert_eq!(log.last_index(), LogIndex(5));
}
