//! Crashes: an engine dropped without closing (leaked, as a killed process would leave it), its
//! WAL truncated or corrupted at random offsets, then reopened and replayed from the log after
//! its checkpoint index: it must hold exactly the committed state. Also a crash between a
//! checkpoint and the record that says so. Reproduce with `SEED=…`.

mod common;

use atoll_core::{Engine, EngineError, ExecError, Target, Value};
use common::*;

const QUERY: &str = "SELECT id, k, v, length(b), hex(substr(b, -4)) FROM t ORDER BY id";

fn workload(rng: &mut Prng) -> (String, Vec<Value>) {
    match rng.below(10) {
        0..=5 => (
            "INSERT INTO t(k, v, b) VALUES (?, ?, randomblob(?))".to_string(),
            vec![
                Value::Integer(rng.below(20) as i64),
                Value::Text(format!("v{}", rng.next_u64())),
                Value::Integer(if rng.chance(5) {
                    200_000
                } else {
                    rng.below(2000) as i64
                }),
            ],
        ),
        6..=7 => (
            "UPDATE t SET v = v || 'x' WHERE k = ?".to_string(),
            vec![Value::Integer(rng.below(20) as i64)],
        ),
        _ => (
            "DELETE FROM t WHERE k = ?".to_string(),
            vec![Value::Integer(rng.below(20) as i64)],
        ),
    }
}

/// Replays `log` after the engine's recovery point.
fn replay(engine: &mut Engine, log: &[Vec<u8>], from: u64) {
    for (position, command) in log.iter().enumerate() {
        let index = position as u64 + 1;
        if index > from {
            engine.apply(index, command).unwrap();
        }
    }
}

/// Applies the entries of `log` the engine has not applied yet.
fn catch_up(engine: &mut Engine, log: &[Vec<u8>]) {
    let from = engine.applied_index();
    replay(engine, log, from);
}

fn reopen(dir: &std::path::Path, log: &[Vec<u8>]) -> Engine {
    let (mut engine, recovery) = Engine::open(config(dir, 2)).unwrap();
    replay(&mut engine, log, recovery.replay_from().unwrap_or(0));
    engine
}

fn corrupt_wal(rng: &mut Prng, path: &std::path::Path) -> String {
    let wal = format!("{}-wal", path.display());
    let mut bytes = std::fs::read(&wal).unwrap_or_default();
    if bytes.is_empty() {
        return "empty WAL".to_string();
    }
    let at = rng.below(bytes.len() as u64) as usize;
    let what = match rng.below(3) {
        0 => {
            bytes.truncate(at);
            format!("truncated at {at}")
        }
        1 => {
            for i in at..(at + 64).min(bytes.len()) {
                bytes[i] ^= 0x5a;
            }
            format!("flipped 64 bytes at {at}")
        }
        _ => {
            bytes.extend((0..5000).map(|i| i as u8));
            "appended garbage".to_string()
        }
    };
    std::fs::write(&wal, bytes).unwrap();
    what
}

#[test]
fn test_crash_with_damaged_wal_recovers_committed_state() {
    let first = seed(100);
    for seed in first..first + 4 {
        let mut rng = Prng::new(seed);
        let mut cluster = Cluster::new(0);
        let s = session(&mut cluster.leader, "c.db");
        cluster
            .write(
                s,
                "c.db",
                "CREATE TABLE t(id INTEGER PRIMARY KEY, k, v, b)",
                &[],
            )
            .unwrap();
        let dir = tempfile::tempdir().unwrap();
        let mut follower = reopen(dir.path(), &cluster.log);
        for round in 0..6 {
            for _ in 0..(5 + rng.below(40)) {
                let (sql, params) = workload(&mut rng);
                cluster.write(s, "c.db", &sql, &params).unwrap();
                catch_up(&mut follower, &cluster.log);
            }
            // Crash: no close, no checkpoint; the process's memory (wal-index) is gone.
            let path = follower.database_path("c.db").unwrap().to_path_buf();
            std::mem::forget(follower);
            let damage = corrupt_wal(&mut rng, &path);
            follower = reopen(dir.path(), &cluster.log);
            let f = session(&mut follower, "c.db");
            let expected = query_all(&mut cluster.leader, s, "c.db", QUERY).values;
            let actual = query_all(&mut follower, f, "c.db", QUERY).values;
            assert!(
                expected == actual,
                "seed {seed} round {round} ({damage}): state differs after recovery"
            );
            assert_eq!(follower.integrity_check("c.db").unwrap(), vec!["ok"]);
            follower.close_session(f);
        }
    }
}

/// Sets the intent field (bytes 32..40) of the newest valid slot of a checkpoint record file
/// (two 64-byte slots, sequence at 40..48, crc32 of 0..48 at 48..52) and fixes its crc.
fn with_intent(record: &[u8], intent: u64) -> Vec<u8> {
    let mut bytes = record.to_vec();
    let valid = |slot: &[u8]| {
        crc32fast::hash(&slot[0..48]) == u32::from_le_bytes(slot[48..52].try_into().unwrap())
    };
    let sequence = |slot: &[u8]| u64::from_le_bytes(slot[40..48].try_into().unwrap());
    let newest = (0..2)
        .filter(|i| valid(&bytes[i * 64..(i + 1) * 64]))
        .max_by_key(|i| sequence(&bytes[i * 64..(i + 1) * 64]))
        .expect("a valid slot");
    let slot = &mut bytes[newest * 64..(newest + 1) * 64];
    slot[32..40].copy_from_slice(&intent.to_le_bytes());
    let crc = crc32fast::hash(&slot[0..48]);
    slot[48..52].copy_from_slice(&crc.to_le_bytes());
    bytes
}

#[test]
fn test_crash_between_checkpoint_and_record() {
    // The main file was checkpointed up to index N, but the crash came before the record saying
    // so: the record still names the old index, with the intent to reach N. Recovery replays
    // from the old index, refuses reads until it has passed N, and ends in the committed state.
    let mut rng = Prng::new(seed(7));
    let mut cluster = Cluster::new(0);
    let s = session(&mut cluster.leader, "c.db");
    cluster
        .write(
            s,
            "c.db",
            "CREATE TABLE t(id INTEGER PRIMARY KEY, k, v, b)",
            &[],
        )
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let mut follower = reopen(dir.path(), &cluster.log);
    let mut apply_some = |cluster: &mut Cluster, follower: &mut Engine, count: usize| {
        for _ in 0..count {
            let (sql, params) = workload(&mut rng);
            cluster.write(s, "c.db", &sql, &params).unwrap();
            catch_up(follower, &cluster.log);
        }
    };
    apply_some(&mut cluster, &mut follower, 20);
    follower.checkpoint(true).unwrap();
    let path = follower.database_path("c.db").unwrap().to_path_buf();
    let record_path = format!("{}-atoll", path.display());
    let old_record = std::fs::read(&record_path).unwrap();
    let old_index = follower.checkpoint_index("c.db").unwrap();
    apply_some(&mut cluster, &mut follower, 30);
    follower.checkpoint(true).unwrap();
    let checkpointed = follower.checkpoint_index("c.db").unwrap();
    assert!(checkpointed > old_index);
    std::mem::forget(follower);
    std::fs::write(&record_path, with_intent(&old_record, checkpointed)).unwrap();
    let (mut follower, recovery) = Engine::open(config(dir.path(), 2)).unwrap();
    assert_eq!(recovery.replay_from(), Some(old_index));
    assert_eq!(recovery.databases[0].replay_through, checkpointed);
    let f = session(&mut follower, "c.db");
    assert!(matches!(
        follower.query(f, "c.db", Target::Sql(QUERY), &[]),
        Err(ExecError::Recovering { .. })
    ));
    replay(&mut follower, &cluster.log, old_index);
    let expected = query_all(&mut cluster.leader, s, "c.db", QUERY).values;
    assert_eq!(query_all(&mut follower, f, "c.db", QUERY).values, expected);
    assert_eq!(follower.integrity_check("c.db").unwrap(), vec!["ok"]);
    // Once replayed, a checkpoint records the real index again.
    follower.checkpoint(true).unwrap();
    assert_eq!(
        follower.checkpoint_index("c.db"),
        Some(cluster.log.len() as u64)
    );
}

#[test]
fn test_creation_interrupted_before_or_after_the_record() {
    // A database is created record first, file second. A crash before the record leaves a file
    // that never held data: it is removed (other files are left alone). A crash after the
    // record but before the file: the empty database is recreated.
    let dir = tempfile::tempdir().unwrap();
    {
        let (mut engine, _) = Engine::open(config(dir.path(), 1)).unwrap();
        session(&mut engine, "kept.db");
        session(&mut engine, "orphan.db");
    }
    std::fs::remove_file(dir.path().join("orphan.db-atoll")).unwrap();
    std::fs::remove_file(dir.path().join("kept.db")).unwrap();
    std::fs::write(dir.path().join("notes.txt"), b"not a database").unwrap();
    let (mut engine, recovery) = Engine::open(config(dir.path(), 1)).unwrap();
    assert_eq!(engine.database_names(), vec!["kept.db"]);
    assert_eq!(recovery.databases.len(), 1);
    assert!(!dir.path().join("orphan.db").exists());
    assert!(dir.path().join("notes.txt").exists());
    let s = session(&mut engine, "kept.db");
    let rows = query_all(
        &mut engine,
        s,
        "kept.db",
        "SELECT count(*) FROM sqlite_schema",
    );
    assert_eq!(rows.values, vec![Value::Integer(0)]);
    assert_eq!(engine.integrity_check("kept.db").unwrap(), vec!["ok"]);
}

#[test]
fn test_power_loss_during_a_checkpoint_on_a_simulated_disk() {
    // A follower on a simulated disk checkpoints; the fdatasync of its main file fails (after
    // the intent was recorded and SQLite wrote the pages) and the power is cut, keeping a prefix
    // of the unsynced writes, torn: the main file holds a mix of states, possibly a new header
    // page counting pages the file never got. Recovery must open it without reading its schema,
    // replay from the record's checkpoint index and end in the committed state.
    use atoll_storage::{PowerLoss, SimDisk, SimOp};
    let first = seed(300);
    for seed in first..first + 24 {
        let mut rng = Prng::new(seed);
        let mut cluster = Cluster::new(0);
        let s = session(&mut cluster.leader, "c.db");
        cluster
            .write(
                s,
                "c.db",
                "CREATE TABLE t(id INTEGER PRIMARY KEY, k, v, b)",
                &[],
            )
            .unwrap();
        let disk = SimDisk::new(seed);
        let dir = std::path::Path::new("/node/db");
        atoll_storage::disk::create_dir_durably(&*disk.shared(), dir).unwrap();
        let open = || {
            let mut config = config(dir, 2);
            config.disk = disk.shared();
            Engine::open(config).unwrap()
        };
        let (mut follower, _) = open();
        catch_up(&mut follower, &cluster.log);
        for _ in 0..(20 + rng.below(60)) {
            let (sql, params) = workload(&mut rng);
            cluster.write(s, "c.db", &sql, &params).unwrap();
            catch_up(&mut follower, &cluster.log);
        }
        // Everything so far is on the disk; the checkpoint's writes are all that is unsynced
        // when the power goes. The intent record's sync works, the main file's fails.
        disk.write_back();
        disk.fail_after(SimOp::Sync, 1);
        assert!(follower.checkpoint(true).is_err(), "seed {seed}");
        drop(follower);
        disk.power_loss(PowerLoss::TornPrefix);
        let (mut follower, recovery) = open();
        replay(
            &mut follower,
            &cluster.log,
            recovery.replay_from().unwrap_or(0),
        );
        let f = session(&mut follower, "c.db");
        let expected = query_all(&mut cluster.leader, s, "c.db", QUERY).values;
        assert!(
            query_all(&mut follower, f, "c.db", QUERY).values == expected,
            "seed {seed}: state differs after recovery"
        );
        assert_eq!(follower.integrity_check("c.db").unwrap(), vec!["ok"]);
    }
}

/// The image `Engine::database_image` streams of `name`, whole.
fn image_of(engine: &mut Engine, name: &str) -> Result<Vec<u8>, EngineError> {
    let mut image = engine.database_image(name)?.expect("the database exists");
    let mut bytes = Vec::new();
    std::io::Read::read_to_end(&mut image, &mut bytes).unwrap();
    Ok(bytes)
}

#[test]
fn test_no_image_of_a_database_ahead_of_the_applied_index() {
    // A checkpoint towards index N copied its pages into the main file, and the crash came
    // before the record said so: the node restarts at the old checkpoint index with a main
    // file holding a mix of states up to N. An image "as of the applied index" (what DUMP,
    // verify points and the simulator's replica checker read) does not exist until replay has
    // passed N: before, it is refused (it once returned the mix, which no replica had at that
    // index); after, it is the leader's image at the same index, byte for byte.
    let mut rng = Prng::new(seed(11));
    let mut cluster = Cluster::new(0);
    let s = session(&mut cluster.leader, "c.db");
    cluster
        .write(
            s,
            "c.db",
            "CREATE TABLE t(id INTEGER PRIMARY KEY, k, v, b)",
            &[],
        )
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let mut follower = reopen(dir.path(), &cluster.log);
    let mut write_some = |cluster: &mut Cluster, follower: &mut Engine, count: usize| {
        for _ in 0..count {
            let (sql, params) = workload(&mut rng);
            cluster.write(s, "c.db", &sql, &params).unwrap();
            catch_up(follower, &cluster.log);
        }
    };
    write_some(&mut cluster, &mut follower, 10);
    follower.checkpoint(true).unwrap();
    let path = follower.database_path("c.db").unwrap().to_path_buf();
    let record_path = format!("{}-atoll", path.display());
    let old_record = std::fs::read(&record_path).unwrap();
    let old_index = follower.checkpoint_index("c.db").unwrap();
    let old_image = image_of(&mut follower, "c.db").unwrap();
    write_some(&mut cluster, &mut follower, 20);
    follower.checkpoint(true).unwrap();
    let checkpointed = follower.checkpoint_index("c.db").unwrap();
    assert!(checkpointed > old_index + 1);
    std::mem::forget(follower);
    std::fs::write(&record_path, with_intent(&old_record, checkpointed)).unwrap();

    let (mut follower, recovery) = Engine::open(config(dir.path(), 2)).unwrap();
    assert_eq!(recovery.replay_from(), Some(old_index));
    assert_eq!(follower.applied_index(), old_index);
    // The main file is not the state at `old_index`: an image of it would differ from the
    // one taken at that index before the crash.
    match image_of(&mut follower, "c.db") {
        Err(EngineError::NotSettled { database, index }) => {
            assert_eq!((database.as_str(), index), ("c.db", checkpointed));
        }
        Ok(image) => panic!(
            "an image at {old_index} from a mixed main file (same as before the crash: {})",
            image == old_image
        ),
        Err(e) => panic!("{e}"),
    }
    for index in old_index + 1..=cluster.log.len() as u64 {
        follower
            .apply(index, &cluster.log[index as usize - 1])
            .unwrap();
        let image = image_of(&mut follower, "c.db");
        if index < checkpointed {
            assert!(
                matches!(image, Err(EngineError::NotSettled { .. })),
                "an image at {index}, before replay passed {checkpointed}"
            );
        } else {
            assert!(image.is_ok(), "no image at {index}");
        }
    }
    assert_eq!(
        image_of(&mut follower, "c.db").unwrap(),
        image_of(&mut cluster.leader, "c.db").unwrap()
    );
}
