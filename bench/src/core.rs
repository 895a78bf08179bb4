//! The `core` suite: single-row inserts of 1 KiB values, each its own transaction, through the
//! replicated engine (exec, then apply of the proposed command, as the node's event loop does on
//! a one-node cluster) and through plain SQLite (WAL mode, `synchronous=OFF`, a cached prepared
//! statement) in the same run. Prints, last:
//! `core exec+apply: <tx/s>, plain sqlite: <tx/s>, ratio <x>`.

use std::path::PathBuf;
use std::time::Instant;

use atoll_core::{Engine, EngineConfig, Reply, Target, Value};

use crate::{median, Options};

const VALUE_BYTES: usize = 1024;

struct TempDir(PathBuf);

impl TempDir {
    fn new(tag: &str) -> Result<TempDir, String> {
        static COUNTER: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let path = std::env::temp_dir().join(format!(
            "atoll-bench-{tag}-{}-{}",
            std::process::id(),
            COUNTER.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
        ));
        std::fs::create_dir_all(&path).map_err(|e| e.to_string())?;
        Ok(TempDir(path))
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn value(i: u64) -> Vec<u8> {
    (0..VALUE_BYTES).map(|j| (i as usize + j) as u8).collect()
}

/// One round through the engine: returns transactions per second.
fn round_core(transactions: u64) -> Result<f64, String> {
    let dir = TempDir::new("core")?;
    let (mut engine, _) = Engine::open(EngineConfig::new(&dir.0, 1)).map_err(|e| e.to_string())?;
    let session = engine.open_session().map_err(|e| e.to_string())?;
    engine
        .open_database(session, "bench")
        .map_err(|e| e.to_string())?;
    let mut index = 0u64;
    let mut run = |engine: &mut Engine, target: Target<'_>, params: &[Value]| {
        match engine.exec(session, "bench", target, params) {
            Ok(Reply::Proposed { .. }) => {}
            other => return Err(format!("unexpected reply {other:?}")),
        }
        for proposal in engine.take_proposals() {
            index += 1;
            engine
                .apply(index, &proposal.command)
                .map_err(|e| e.to_string())?;
        }
        for completion in engine.take_completions() {
            completion.result.map_err(|e| e.to_string())?;
        }
        Ok(())
    };
    run(
        &mut engine,
        Target::Sql("CREATE TABLE kv(id INTEGER PRIMARY KEY, v BLOB)"),
        &[],
    )?;
    let (insert, _) = engine
        .prepare(session, "bench", "INSERT INTO kv(v) VALUES (?)")
        .map_err(|e| e.to_string())?;
    let values: Vec<Value> = (0..16).map(|i| Value::Blob(value(i))).collect();
    let start = Instant::now();
    for i in 0..transactions {
        let params = std::slice::from_ref(&values[(i % 16) as usize]);
        run(&mut engine, Target::Statement(insert), params)?;
    }
    Ok(transactions as f64 / start.elapsed().as_secs_f64())
}

/// One round through plain SQLite: returns transactions per second.
fn round_plain(transactions: u64) -> Result<f64, String> {
    let dir = TempDir::new("plain")?;
    let conn = rusqlite::Connection::open(dir.0.join("bench")).map_err(|e| e.to_string())?;
    conn.execute_batch(
        "PRAGMA journal_mode = WAL; PRAGMA synchronous = OFF; \
         CREATE TABLE kv(id INTEGER PRIMARY KEY, v BLOB);",
    )
    .map_err(|e| e.to_string())?;
    let values: Vec<Vec<u8>> = (0..16).map(value).collect();
    let mut insert = conn
        .prepare_cached("INSERT INTO kv(v) VALUES (?)")
        .map_err(|e| e.to_string())?;
    let start = Instant::now();
    for i in 0..transactions {
        insert
            .execute([&values[(i % 16) as usize]])
            .map_err(|e| e.to_string())?;
    }
    Ok(transactions as f64 / start.elapsed().as_secs_f64())
}

/// Runs the suite.
pub fn run(options: &Options) -> Result<(), String> {
    let (rounds, transactions) = if options.quick { (3, 300) } else { (7, 20_000) };
    let mut core = Vec::new();
    let mut plain = Vec::new();
    for round in 0..rounds {
        // Interleave so that machine noise hits both alike.
        let c = round_core(transactions)?;
        let p = round_plain(transactions)?;
        println!("round {round}: core exec+apply {c:.0} tx/s, plain sqlite {p:.0} tx/s");
        core.push(c);
        plain.push(p);
    }
    let core = median(&core);
    let plain = median(&plain);
    println!(
        "core exec+apply: {core:.0} tx/s, plain sqlite: {plain:.0} tx/s, ratio {:.2}",
        core / plain
    );
    Ok(())
}
