//! Formats across hosts: every byte atoll writes to disk or sends to a peer means the same on
//! every machine, big-endian IBM Z included.
//!
//! `formats_cross_host` writes a Raft log (segments, its metadata file with the hard state), a
//! snapshot, the replicated commands of a workload, a Raft message and a database with its WAL,
//! all from a fixed workload, then reads, recovers and applies them and checks the answers.
//! Alone (as in `cargo test`) it also checks that writing twice gives the same bytes. With
//! `ATOLL_FORMATS_EXPORT=DIR` it leaves its artefacts in DIR; with `ATOLL_FORMATS_IMPORT=DIR` it
//! reads, recovers and applies the artefacts another build (another architecture) left there,
//! and requires them to be byte-identical to its own. `scripts/cross-test` runs it natively,
//! under qemu for each target, and natively again on the target's artefacts.

use std::collections::BTreeMap;
use std::fs;
use std::io::Read;
use std::path::{Path, PathBuf};

use atoll_core::{
    Applied, Engine, EngineConfig, Recovery, Reply, Response, Rows, SessionId, Target, Value,
};
use atoll_raft::codec::{decode_message_slice, encode_message_to_vec};
use atoll_raft::{Configuration, MemberRole, Message, MessageKind};
use atoll_storage::{
    Entry, EntryKind, HardState, LogIndex, LogRead, LogStore, NodeId, Options, Payload, SegmentLog,
    Term,
};

const DATABASE: &str = "formats.db";
/// Rows inserted by the workload, one transaction per batch: enough for several pages, frames
/// in the WAL after the checkpoint and several log segments.
const BATCHES: i64 = 12;
const ROWS_PER_BATCH: i64 = 25;
/// Small segments, so the log has several closed ones and an open one.
const SEGMENT_BYTES: u64 = 8192;
/// The engine's (fixed) clock, so nothing depends on when the test runs.
const NOW_MS: u64 = 1_700_000_000_000;

fn engine_config(dir: &Path, node: u64) -> EngineConfig {
    let mut config = EngineConfig::new(dir, node);
    // No automatic checkpoint: the test checkpoints once, half way, so the database has both a
    // file and a WAL.
    config.checkpoint_frames = 1_000_000;
    config.checkpoint_jitter_frames = 0;
    config.checkpoint_sync_in_background = false;
    config
}

fn open_engine(dir: &Path, node: u64) -> Engine {
    open_engine_recovering(dir, node).0
}

fn open_engine_recovering(dir: &Path, node: u64) -> (Engine, Recovery) {
    let (mut engine, recovery) = Engine::open(engine_config(dir, node)).unwrap();
    engine.set_time(NOW_MS);
    (engine, recovery)
}

fn session(engine: &mut Engine) -> SessionId {
    let session = engine.open_session().unwrap();
    engine.open_database(session, DATABASE).unwrap();
    session
}

fn query_all(engine: &mut Engine, sql: &str) -> Rows {
    let session = session(engine);
    let reply = engine
        .query(session, DATABASE, Target::Sql(sql), &[])
        .unwrap();
    let Reply::Done(Response::Rows(mut rows)) = reply else {
        panic!("{sql:?} answered {reply:?}");
    };
    while !rows.done {
        let next = engine.query_next(session).unwrap();
        rows.values.extend(next.values);
        rows.done = next.done;
    }
    engine.close_session(session);
    rows
}

/// The row values of the workload: every SQLite storage class, the extremes of integers, floats
/// whose bytes are not palindromes, multi-byte text and blobs of several lengths.
fn row(batch: i64, k: i64) -> Vec<Value> {
    let n = batch * ROWS_PER_BATCH + k;
    let integer = match n % 4 {
        0 => i64::MIN + n,
        1 => i64::MAX - n,
        2 => -n * 0x0102_0304_0506,
        _ => n << 40,
    };
    let float = if n % 3 == 0 {
        -(n as f64) / 7.0
    } else {
        1.0e300 / (n as f64 + 1.0)
    };
    let text = format!(
        "ligne {n}: Zürich → 東京 {}",
        "ab".repeat((n % 17) as usize)
    );
    let blob: Vec<u8> = (0..(n % 97) * 5)
        .map(|i| (i as u8).wrapping_mul(31) ^ n as u8)
        .collect();
    let nullable = if n % 5 == 0 {
        Value::Null
    } else {
        Value::Integer(n)
    };
    vec![
        Value::Integer(integer),
        Value::Float(float),
        Value::Text(text),
        Value::Blob(blob),
        nullable,
    ]
}

const SELECT: &str = "SELECT id, i, r, s, b, n FROM t ORDER BY id";

/// The cluster configuration carried by the log's first entry and the snapshot.
fn configuration() -> Configuration {
    let mut configuration = Configuration::new();
    configuration.insert(NodeId(1), "10.0.0.1:9001", MemberRole::Voter);
    configuration.insert(NodeId(2), "[fd00::2]:9001", MemberRole::Voter);
    configuration.insert(
        NodeId(0x0102_0304_0506_0708),
        "node-c:9001",
        MemberRole::Standby,
    );
    configuration.insert(NodeId(4), "node-d:9001", MemberRole::Spare);
    configuration
}

/// The Raft log: the configuration at index 1 (term 1), a no-op opening term 2, then the
/// commands, one term change half way.
fn log_entries(commands: &[Vec<u8>]) -> Vec<Entry> {
    let mut entries = vec![
        Entry {
            index: LogIndex(1),
            term: Term(1),
            kind: EntryKind::Configuration,
            payload: Payload::from_vec(configuration().encode_to_vec()),
        },
        Entry {
            index: LogIndex(2),
            term: Term(2),
            kind: EntryKind::Noop,
            payload: Payload::empty(),
        },
    ];
    for (k, command) in commands.iter().enumerate() {
        let term = if k < commands.len() / 2 {
            2
        } else {
            0x0001_0002_0003
        };
        entries.push(Entry {
            index: LogIndex(3 + k as u64),
            term: Term(term),
            kind: EntryKind::Command,
            payload: Payload::from_vec(command.clone()),
        });
    }
    entries
}

const HARD_STATE: HardState = HardState {
    term: Term(0x0001_0002_0003),
    vote: Some(NodeId(0x0102_0304_0506_0708)),
};

/// The append message a leader sends with the last three entries.
fn message(entries: &[Entry]) -> Message {
    let mut message = Message::new(
        MessageKind::Append,
        NodeId(1),
        NodeId(0x0102_0304_0506_0708),
        HARD_STATE.term,
    );
    let tail = &entries[entries.len() - 3..];
    let previous = &entries[entries.len() - 4];
    message.index = previous.index;
    message.log_term = previous.term;
    message.commit = LogIndex(entries.len() as u64 - 1);
    message.context = 0x1122_3344_5566_7788;
    message.entries = tail.to_vec();
    message
}

fn entry_bytes(entry: &Entry) -> (u64, u64, EntryKind, Vec<u8>) {
    (
        entry.index.0,
        entry.term.0,
        entry.kind,
        entry.payload.as_ref().to_vec(),
    )
}

/// Runs the workload in `dir`: the engine's database (file and WAL) in `dir/engine`, the
/// commands in `dir/commands`, the log and its snapshot in `dir/log`, the message in
/// `dir/message.bin`. Returns the commands.
fn produce(dir: &Path) -> Vec<Vec<u8>> {
    fs::create_dir_all(dir.join("commands")).unwrap();
    let mut engine = open_engine(&dir.join("engine"), 1);
    let writer = session(&mut engine);
    let mut commands = Vec::new();
    let mut write = |engine: &mut Engine, sql: &str, params: &[Value]| {
        let reply = engine
            .exec(writer, DATABASE, Target::Sql(sql), params)
            .unwrap();
        match reply {
            // BEGIN and the statements inside a transaction propose nothing.
            Reply::Done(_) => return,
            Reply::Proposed { .. } => {}
            Reply::Queued => panic!("{sql}: queued"),
        }
        for proposal in engine.take_proposals() {
            let index = 3 + commands.len() as u64;
            let applied = engine.apply(index, &proposal.command).unwrap();
            assert!(matches!(applied, Applied::Frames { .. }), "{applied:?}");
            commands.push(proposal.command);
        }
        let completions = engine.take_completions();
        assert_eq!(completions.len(), 1);
        assert!(completions[0].result.is_ok(), "{sql}: {completions:?}");
    };
    write(
        &mut engine,
        "CREATE TABLE t(id INTEGER PRIMARY KEY, i INTEGER, r REAL, s TEXT, b BLOB, n)",
        &[],
    );
    write(&mut engine, "CREATE INDEX t_s ON t(s)", &[]);
    for batch in 0..BATCHES {
        write(&mut engine, "BEGIN", &[]);
        for k in 0..ROWS_PER_BATCH {
            write(
                &mut engine,
                "INSERT INTO t(i, r, s, b, n) VALUES (?, ?, ?, ?, ?)",
                &row(batch, k),
            );
        }
        write(&mut engine, "COMMIT", &[]);
        if batch == BATCHES / 2 {
            engine.checkpoint(true).unwrap();
        }
    }
    write(&mut engine, "DELETE FROM t WHERE id % 7 = 3", &[]);
    write(
        &mut engine,
        "UPDATE t SET r = -r, n = ? WHERE id % 5 = 1",
        &[Value::Float(0.1)],
    );
    for (k, command) in commands.iter().enumerate() {
        fs::write(
            dir.join("commands").join(format!("{:04}.cmd", k + 3)),
            command,
        )
        .unwrap();
    }

    let entries = log_entries(&commands);
    let mut log = SegmentLog::open(
        dir.join("log"),
        Options {
            segment_bytes: SEGMENT_BYTES,
            ..Options::default()
        },
    )
    .unwrap();
    log.save_hard_state(HARD_STATE).unwrap();
    for chunk in entries.chunks(5) {
        log.append(chunk).unwrap();
        log.sync().unwrap();
    }
    let last = entries.last().unwrap();
    let mut snapshot = engine.snapshot().unwrap();
    assert_eq!(snapshot.index(), last.index.0);
    let mut writer = log
        .snapshots()
        .create(last.index, last.term, &configuration().encode_to_vec())
        .unwrap();
    std::io::copy(&mut snapshot, &mut writer).unwrap();
    writer.finish().unwrap();
    drop(log);
    drop(engine);
    fs::write(
        dir.join("message.bin"),
        encode_message_to_vec(&message(&entries)),
    )
    .unwrap();
    commands
}

/// Reads, recovers and applies the artefacts in `dir` (left by any build): each must give the
/// answers of `reference`, this build's own engine after the workload.
fn check(dir: &Path, own_commands: &[Vec<u8>], reference: &Rows) {
    // Work on a copy: opening a log or an engine may write (lock files, recovery).
    let scratch = tempfile::tempdir().unwrap();
    let copy = scratch.path().join("copy");
    copy_tree(dir, &copy);

    // Replicated commands: decode, then apply on a fresh follower.
    let mut commands = Vec::new();
    for (k, _) in own_commands.iter().enumerate() {
        let path = copy.join("commands").join(format!("{:04}.cmd", k + 3));
        let bytes = fs::read(&path).unwrap();
        let command = atoll_core::command::Command::decode(&bytes)
            .unwrap_or_else(|e| panic!("{}: {e:?}", path.display()));
        assert!(command.frame_count() > 0, "{}", path.display());
        commands.push(bytes);
    }
    let mut follower = open_engine(&scratch.path().join("follower"), 2);
    for (k, command) in commands.iter().enumerate() {
        let applied = follower.apply(3 + k as u64, command).unwrap();
        assert!(matches!(applied, Applied::Frames { .. }), "{applied:?}");
    }
    assert_eq!(
        &query_all(&mut follower, SELECT),
        reference,
        "applied commands"
    );
    assert_eq!(follower.integrity_check(DATABASE).unwrap(), ["ok"]);

    // The database file (the WAL is never the durable copy): the engine recovers it from its
    // checkpoint, which must be the one taken half way, and the commands after it are replayed
    // as a restarting host does.
    let (mut recovered, recovery) = open_engine_recovering(&copy.join("engine"), 1);
    let replay_from = recovery.replay_from().expect("the database is found");
    assert!(
        replay_from > 3 && (replay_from as usize) < 2 + commands.len(),
        "checkpoint index {replay_from}"
    );
    for (k, command) in commands.iter().enumerate() {
        let index = 3 + k as u64;
        if index > replay_from {
            recovered.apply(index, command).unwrap();
        }
    }
    assert_eq!(
        &query_all(&mut recovered, SELECT),
        reference,
        "recovered database"
    );
    assert_eq!(recovered.integrity_check(DATABASE).unwrap(), ["ok"]);

    // The database with its WAL as written (the recovery above rewrote the copy's WAL), read by
    // SQLite itself on this host: the WAL's header and frame checksums (always over
    // little-endian words, whatever the writing host) must verify here, or SQLite ignores the
    // frames from the first bad one on and the rows of those transactions are missing.
    let plain = scratch.path().join("plain");
    fs::create_dir_all(&plain).unwrap();
    for suffix in ["", "-wal"] {
        let name = format!("{DATABASE}{suffix}");
        fs::copy(dir.join("engine").join(&name), plain.join(&name)).unwrap();
    }
    assert!(
        fs::metadata(plain.join(format!("{DATABASE}-wal")))
            .unwrap()
            .len()
            > 32,
        "the database has frames in its WAL"
    );
    let (columns, values) = sqlite_rows(&plain.join(DATABASE));
    assert_eq!(columns, reference.columns);
    assert_eq!(
        values, reference.values,
        "SQLite's read of the database and its WAL"
    );

    // The log: every entry, the terms and the hard state of its metadata file.
    let expected = log_entries(own_commands);
    let log = SegmentLog::open(
        copy.join("log"),
        Options {
            segment_bytes: SEGMENT_BYTES,
            ..Options::default()
        },
    )
    .unwrap();
    assert_eq!(log.hard_state(), HARD_STATE);
    assert_eq!(log.first_index(), LogIndex(1));
    assert_eq!(log.last_index(), expected.last().unwrap().index);
    assert!(
        log.segment_files_count() > 2,
        "{} segments",
        log.segment_files_count()
    );
    let mut entries = Vec::new();
    log.entries(LogIndex(1), log.last_index().next(), u64::MAX, &mut entries)
        .unwrap();
    assert_eq!(
        entries.iter().map(entry_bytes).collect::<Vec<_>>(),
        expected.iter().map(entry_bytes).collect::<Vec<_>>()
    );
    for entry in &expected {
        assert_eq!(log.term(entry.index).unwrap(), Some(entry.term));
    }
    let configuration_entry = log_configuration(&entries[0]);
    assert_eq!(configuration_entry, configuration());

    // The snapshot: its metadata, then installed on a fresh engine.
    let meta = log.snapshots().latest().unwrap().expect("a snapshot");
    let last = expected.last().unwrap();
    assert_eq!((meta.index, meta.term), (last.index, last.term));
    assert_eq!(
        Configuration::decode(&meta.configuration).unwrap(),
        configuration()
    );
    let mut stream = log.snapshots().open_reader(&meta).unwrap();
    let mut installed = open_engine(&scratch.path().join("installed"), 3);
    assert_eq!(
        installed.install_snapshot(&mut stream).unwrap(),
        last.index.0
    );
    let mut rest = Vec::new();
    stream.read_to_end(&mut rest).unwrap();
    assert!(rest.is_empty(), "{} bytes after the snapshot", rest.len());
    assert_eq!(
        &query_all(&mut installed, SELECT),
        reference,
        "installed snapshot"
    );
    assert_eq!(installed.integrity_check(DATABASE).unwrap(), ["ok"]);

    // The message a peer would receive.
    let bytes = fs::read(copy.join("message.bin")).unwrap();
    let decoded = decode_message_slice(&bytes).unwrap();
    assert_eq!(decoded, message(&expected));
    assert_eq!(encode_message_to_vec(&decoded), bytes);
}

/// The column names and values of [`SELECT`], read by plain SQLite (not atoll's VFS) from the
/// database at `path` and its WAL, after SQLite's integrity check.
fn sqlite_rows(path: &Path) -> (Vec<String>, Vec<Value>) {
    let db = rusqlite::Connection::open(path).unwrap();
    let journal: String = db
        .query_row("PRAGMA journal_mode", [], |row| row.get(0))
        .unwrap();
    assert_eq!(journal, "wal");
    let check: String = db
        .query_row("PRAGMA integrity_check", [], |row| row.get(0))
        .unwrap();
    assert_eq!(check, "ok");
    let mut statement = db.prepare(SELECT).unwrap();
    let columns: Vec<String> = statement.column_names().map(str::to_owned).collect();
    let mut values = Vec::new();
    let mut rows = statement.query([]).unwrap();
    while let Some(row) = rows.next().unwrap() {
        for k in 0..columns.len() {
            values.push(match row.get_ref(k).unwrap() {
                rusqlite::types::ValueRef::Null => Value::Null,
                rusqlite::types::ValueRef::Integer(i) => Value::Integer(i),
                rusqlite::types::ValueRef::Real(r) => Value::Float(r),
                rusqlite::types::ValueRef::Text(t) => {
                    Value::Text(String::from_utf8(t.to_vec()).unwrap())
                }
                rusqlite::types::ValueRef::Blob(b) => Value::Blob(b.to_vec()),
            });
        }
    }
    (columns, values)
}

fn log_configuration(entry: &Entry) -> Configuration {
    assert_eq!(entry.kind, EntryKind::Configuration);
    Configuration::decode(entry.payload.as_ref()).unwrap()
}

fn copy_tree(from: &Path, to: &Path) {
    fs::create_dir_all(to).unwrap();
    for item in fs::read_dir(from).unwrap() {
        let item = item.unwrap();
        let target = to.join(item.file_name());
        if item.file_type().unwrap().is_dir() {
            copy_tree(&item.path(), &target);
        } else {
            fs::copy(item.path(), &target).unwrap();
        }
    }
}

/// Every file under `dir` (relative path → bytes).
fn files(dir: &Path) -> BTreeMap<PathBuf, Vec<u8>> {
    fn walk(root: &Path, dir: &Path, out: &mut BTreeMap<PathBuf, Vec<u8>>) {
        for item in fs::read_dir(dir).unwrap() {
            let path = item.unwrap().path();
            if path.is_dir() {
                walk(root, &path, out);
            } else {
                let bytes = fs::read(&path).unwrap();
                out.insert(path.strip_prefix(root).unwrap().to_path_buf(), bytes);
            }
        }
    }
    let mut out = BTreeMap::new();
    walk(dir, dir, &mut out);
    out
}

/// Requires the files under `theirs` to be those under `ours`, byte for byte; names the first
/// differing byte of each file that differs.
fn assert_same_files(ours: &Path, theirs: &Path) {
    let ours = files(ours);
    let theirs = files(theirs);
    assert_eq!(
        ours.keys().collect::<Vec<_>>(),
        theirs.keys().collect::<Vec<_>>(),
        "file lists"
    );
    let mut differing = Vec::new();
    for (path, bytes) in &ours {
        let other = &theirs[path];
        if bytes != other {
            let at = bytes.iter().zip(other).position(|(a, b)| a != b);
            differing.push(format!(
                "{}: {} and {} bytes, first difference at {at:?}",
                path.display(),
                bytes.len(),
                other.len()
            ));
        }
    }
    assert!(
        differing.is_empty(),
        "differing files:\n{}",
        differing.join("\n")
    );
}

#[test]
fn formats_cross_host() {
    let scratch = tempfile::tempdir().unwrap();
    let ours = scratch.path().join("ours");
    let commands = produce(&ours);
    // The answers of this build: a follower that applied every command.
    let reference = {
        let mut follower = open_engine(&scratch.path().join("reference"), 2);
        for (k, command) in commands.iter().enumerate() {
            follower.apply(3 + k as u64, command).unwrap();
        }
        query_all(&mut follower, SELECT)
    };
    assert_eq!(
        reference.values.len() as i64,
        (BATCHES * ROWS_PER_BATCH - (BATCHES * ROWS_PER_BATCH + 4) / 7) * 6,
        "rows after the delete"
    );
    check(&ours, &commands, &reference);

    let import = std::env::var_os("ATOLL_FORMATS_IMPORT").map(PathBuf::from);
    let export = std::env::var_os("ATOLL_FORMATS_EXPORT").map(PathBuf::from);
    match &import {
        Some(theirs) => {
            check(theirs, &commands, &reference);
            assert_same_files(&ours, theirs);
        }
        None => {
            // Alone: the same workload writes the same bytes again.
            let again = scratch.path().join("again");
            produce(&again);
            assert_same_files(&ours, &again);
        }
    }
    if let Some(export) = &export {
        if export.exists() {
            fs::remove_dir_all(export).unwrap();
        }
        copy_tree(&ours, export);
    }
}
