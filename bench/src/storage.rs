//! The `storage` suite: durable appends of 4 KiB entries to a [`SegmentLog`], one sync per entry
//! and per batch of 16 and 256 entries, against the raw limit of the same disk measured in the
//! same run and the same directory: a 4 KiB `write` plus `fdatasync`, in a loop, appending to a
//! file.
//!
//! An op is one entry made durable; a latency sample is one append-and-sync call (one entry, or
//! one batch). Each case runs several rounds in a fresh log; ops/s is the median over rounds,
//! the percentiles are over every sample.
//!
//! Options: `--dir PATH` (default: the system temporary directory) picks the file system;
//! `--rounds N` overrides the number of rounds.

use std::fs::{self, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use atoll_bench::{median, Options, Samples};
use atoll_storage::{Entry, EntryKind, LogIndex, LogStore, Payload, SegmentLog, Term};

const ENTRY_BYTES: usize = 4096;
const MIB: f64 = 1024.0 * 1024.0;

/// One case: how many entries per sync, and how many syncs per round.
struct Case {
    name: &'static str,
    batch_entries: usize,
    syncs_per_round: usize,
}

struct Measured {
    name: &'static str,
    ops_per_second: f64,
    mib_per_second: f64,
    samples: Samples,
}

/// Runs the suite and prints its summary lines.
pub fn run(options: &Options) -> Result<(), String> {
    let base = options
        .value("--dir")
        .map(PathBuf::from)
        .unwrap_or_else(std::env::temp_dir);
    let rounds: usize = match options.value("--rounds") {
        Some(text) => text
            .parse()
            .map_err(|_| format!("--rounds wants a number, not {text:?}"))?,
        None if options.quick => 1,
        None => 5,
    };
    let scale = if options.quick { 1 } else { 20 };
    let cases = [
        Case {
            name: "single",
            batch_entries: 1,
            syncs_per_round: 100 * scale,
        },
        Case {
            name: "batch-16",
            batch_entries: 16,
            syncs_per_round: 20 * scale,
        },
        Case {
            name: "batch-256",
            batch_entries: 256,
            syncs_per_round: 2 * scale,
        },
    ];
    let dir = base.join(format!("atoll-bench-storage-{}", std::process::id()));
    fs::create_dir_all(&dir).map_err(|error| format!("creating {}: {error}", dir.display()))?;
    let result = run_in(&dir, rounds, 100 * scale, &cases);
    let _ = fs::remove_dir_all(&dir);
    let measured = result?;

    let raw_ops = measured[0].ops_per_second;
    println!(
        "storage: {} rounds of 4 KiB entries in {} (an op is one entry made durable)",
        rounds,
        base.display()
    );
    for case in &measured[BASELINES..] {
        println!(
            "storage {}: {:.1} MiB/s durable ({} entries per sync)",
            case.name,
            case.mib_per_second,
            cases
                .iter()
                .find(|c| c.name == case.name)
                .map_or(0, |c| c.batch_entries)
        );
    }
    for mut case in measured {
        let p50 = case.samples.percentile(50.0);
        let p99 = case.samples.percentile(99.0);
        println!(
            "storage {}: {:.0} ops/s, p50 {} µs, p99 {} µs, ratio-to-raw {:.2}",
            case.name,
            case.ops_per_second,
            p50.as_micros(),
            p99.as_micros(),
            case.ops_per_second / raw_ops
        );
    }
    Ok(())
}

fn run_in(
    dir: &Path,
    rounds: usize,
    raw_syncs_per_round: usize,
    cases: &[Case],
) -> Result<Vec<Measured>, String> {
    let mut measured = vec![
        Measured {
            name: "raw-fdatasync",
            ops_per_second: 0.0,
            mib_per_second: 0.0,
            samples: Samples::with_capacity(rounds * raw_syncs_per_round),
        },
        Measured {
            name: "raw-overwrite-fdatasync",
            ops_per_second: 0.0,
            mib_per_second: 0.0,
            samples: Samples::with_capacity(rounds * raw_syncs_per_round),
        },
    ];
    for case in cases {
        measured.push(Measured {
            name: case.name,
            ops_per_second: 0.0,
            mib_per_second: 0.0,
            samples: Samples::with_capacity(rounds * case.syncs_per_round),
        });
    }
    let mut rates: Vec<Vec<f64>> = vec![Vec::new(); measured.len()];
    // Rounds interleave the cases, so a slow spell of the disk hits them all alike.
    for round in 0..rounds {
        let rate = raw_round(dir, round, raw_syncs_per_round, &mut measured[0].samples)?;
        rates[0].push(rate);
        let rate = raw_overwrite_round(dir, round, raw_syncs_per_round, &mut measured[1].samples)?;
        rates[1].push(rate);
        for (k, case) in cases.iter().enumerate() {
            let rate = log_round(dir, round, case, &mut measured[k + BASELINES].samples)?;
            rates[k + BASELINES].push(rate);
        }
    }
    for (case, rates) in measured.iter_mut().zip(rates) {
        case.ops_per_second = median(&rates);
        case.mib_per_second = case.ops_per_second * ENTRY_BYTES as f64 / MIB;
    }
    Ok(measured)
}

/// The number of baseline cases that come first in the measured list: the plain append loop
/// (what `ratio-to-raw` divides by, as the issue defines the raw limit) and the overwrite loop.
const BASELINES: usize = 2;

/// The device's durable-write limit without any file-size change: overwrite 4 KiB blocks of a
/// file that was fully written and synced beforehand, `fdatasync` after each. Appending (the
/// plain raw case) also makes every `fdatasync` commit a new file size, which a preallocated
/// segment log avoids; this case shows how close the log gets to the disk itself.
fn raw_overwrite_round(
    dir: &Path,
    round: usize,
    syncs: usize,
    samples: &mut Samples,
) -> Result<f64, String> {
    use std::os::unix::fs::FileExt;

    let path = dir.join(format!("raw-overwrite-{round}"));
    let file = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .open(&path)
        .map_err(|error| format!("creating {}: {error}", path.display()))?;
    let block = vec![0x5au8; ENTRY_BYTES];
    for k in 0..syncs {
        file.write_all_at(&block, (k * ENTRY_BYTES) as u64)
            .map_err(|error| format!("preparing {}: {error}", path.display()))?;
    }
    file.sync_all()
        .map_err(|error| format!("syncing {}: {error}", path.display()))?;
    let start = Instant::now();
    for k in 0..syncs {
        let began = Instant::now();
        file.write_all_at(&block, (k * ENTRY_BYTES) as u64)
            .and_then(|()| file.sync_data())
            .map_err(|error| format!("raw overwrite of {}: {error}", path.display()))?;
        samples.push(began.elapsed());
    }
    let rate = syncs as f64 / start.elapsed().as_secs_f64();
    drop(file);
    fs::remove_file(&path).map_err(|error| format!("removing {}: {error}", path.display()))?;
    Ok(rate)
}

/// The raw limit: append 4 KiB with `write`, then `fdatasync`, in a loop. Returns ops/s.
fn raw_round(dir: &Path, round: usize, syncs: usize, samples: &mut Samples) -> Result<f64, String> {
    let path = dir.join(format!("raw-{round}"));
    let mut file = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .open(&path)
        .map_err(|error| format!("creating {}: {error}", path.display()))?;
    let block = vec![0x5au8; ENTRY_BYTES];
    let start = Instant::now();
    for _ in 0..syncs {
        let began = Instant::now();
        file.write_all(&block)
            .and_then(|()| file.sync_data())
            .map_err(|error| format!("raw write to {}: {error}", path.display()))?;
        samples.push(began.elapsed());
    }
    let rate = syncs as f64 / start.elapsed().as_secs_f64();
    drop(file);
    fs::remove_file(&path).map_err(|error| format!("removing {}: {error}", path.display()))?;
    Ok(rate)
}

/// One round of a log case in a fresh log. Returns entries made durable per second.
fn log_round(dir: &Path, round: usize, case: &Case, samples: &mut Samples) -> Result<f64, String> {
    let log_dir = dir.join(format!("log-{}-{round}", case.name));
    let mut log = SegmentLog::open(&log_dir, atoll_storage::Options::default())
        .map_err(|error| format!("opening {}: {error}", log_dir.display()))?;
    // Payloads are built before timing: the benchmark measures the log, not the allocator.
    let payload = Payload::from_vec(vec![0xa5u8; ENTRY_BYTES]);
    let mut batch: Vec<Entry> = Vec::with_capacity(case.batch_entries);
    let mut next = 1u64;
    let mut elapsed = Duration::ZERO;
    for _ in 0..case.syncs_per_round {
        batch.clear();
        for _ in 0..case.batch_entries {
            batch.push(Entry {
                index: LogIndex(next),
                term: Term(1),
                kind: EntryKind::Command,
                payload: payload.clone(),
            });
            next += 1;
        }
        let began = Instant::now();
        log.append(&batch)
            .and_then(|()| log.sync())
            .map_err(|error| format!("appending to {}: {error}", log_dir.display()))?;
        let took = began.elapsed();
        elapsed += took;
        samples.push(took);
    }
    assert_eq!(log.durable_index(), LogIndex(next - 1));
    drop(log);
    fs::remove_dir_all(&log_dir)
        .map_err(|error| format!("removing {}: {error}", log_dir.display()))?;
    Ok((case.syncs_per_round * case.batch_entries) as f64 / elapsed.as_secs_f64())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn test_quick_run_in_a_temporary_directory() {
        // The suite runs end to end and every case makes entries durable at a positive rate.
        let dir = tempfile::tempdir().unwrap();
        let cases = [Case {
            name: "batch-4",
            batch_entries: 4,
            syncs_per_round: 3,
        }];
        let measured = run_in(dir.path(), 1, 3, &cases).unwrap();
        assert_eq!(measured.len(), BASELINES + 1);
        assert!(measured.iter().all(|case| case.ops_per_second > 0.0));
        assert_eq!(measured[0].samples.len(), 3);
        assert_eq!(measured[1].samples.len(), 3);
        assert_eq!(measured[BASELINES].samples.len(), 3);
    }
}
