//! The whole-stack deterministic simulator (see `atoll_node::sim`): runs seeds, prints each
//! failing seed with a one-line reproducer, and last
//! `sim: <n> seeds, <v> violations, <c> commits, <e> elections, <k> commands chained (longest
//! chain <l>), <a> in flight at a leader change, <y> applies cut short`; exits 1 on any
//! violation.
//!
//! ```text
//! cargo run --release -p atoll-node --example sim -- --seeds 0..100 [--nodes 3] [--fault-ms 10000]
//! ```
//!
//! `--stop` ends at the first failing seed; `--verbose` prints every seed's counters. A panic
//! in a seed (a node's assertion) is one of its violations. `RUST_LOG=info` (or `debug`)
//! prints the nodes' logs, all nodes interleaved; best with one seed.

use std::process::ExitCode;

use atoll_node::inputs::{Clock, MonotonicClock};
use atoll_node::sim::{run_seed, SeedReport, SimConfig};

fn usage() -> ExitCode {
    eprintln!("usage: sim --seeds A..B [--nodes N] [--fault-ms MS] [--stop] [--verbose]");
    ExitCode::from(2)
}

fn main() -> ExitCode {
    // Off unless RUST_LOG asks (e.g. `RUST_LOG=info` to read what a failing seed did).
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("off")).init();
    let mut seeds = 0..10u64;
    let mut nodes = 3usize;
    let mut fault_ms = 10_000u64;
    let mut verbose = false;
    let mut stop = false;
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        let value = match arg.as_str() {
            "--verbose" => {
                verbose = true;
                continue;
            }
            "--stop" => {
                stop = true;
                continue;
            }
            "--seeds" | "--nodes" | "--fault-ms" => match args.next() {
                Some(value) => value,
                None => return usage(),
            },
            _ => return usage(),
        };
        let parsed = match arg.as_str() {
            "--seeds" => match value.split_once("..") {
                Some((a, b)) => a
                    .parse()
                    .ok()
                    .zip(b.parse().ok())
                    .map(|(a, b)| seeds = a..b),
                None => value.parse().ok().map(|a: u64| seeds = a..a + 1),
            },
            "--nodes" => value.parse().ok().map(|n| nodes = n),
            _ => value.parse().ok().map(|ms| fault_ms = ms),
        };
        if parsed.is_none() || nodes == 0 {
            return usage();
        }
    }
    let started = MonotonicClock.now();
    let (mut count, mut violations, mut commits, mut elections) = (0u64, 0u64, 0u64, 0u64);
    let (mut chained, mut chain_longest, mut abandoned) = (0u64, 0u64, 0u64);
    let mut apply_yields = 0u64;
    for seed in seeds {
        let config = SimConfig {
            seed,
            nodes,
            fault_ms,
        };
        let report = match std::panic::catch_unwind(|| run_seed(&config)) {
            Ok(report) => report,
            Err(panic) => {
                let message = panic
                    .downcast_ref::<String>()
                    .cloned()
                    .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
                    .unwrap_or_default();
                SeedReport {
                    violations: vec![format!("panicked: {message}")],
                    ..SeedReport::default()
                }
            }
        };
        count += 1;
        commits += report.commits;
        elections += report.elections;
        chained += report.chained;
        chain_longest = chain_longest.max(report.chain_longest);
        apply_yields += report.apply_yields;
        abandoned += report.abandoned;
        if verbose {
            println!(
                "seed {seed}: {} commits, {} elections, {} crashes ({} power losses, {} torn \
                 writes), {} I/O error stops, {} full disks ({} ENOSPC), {} transfers, {} joins, \
                 {}/{} membership changes done, {} retired, {} replays, {} snapshots installed, \
                 {} logs compacted, {} commands chained (longest {}), {} abandoned, {}/{} images \
                 compared, {:?} simulated, {} steps, {} turns, fingerprint {:016x}",
                report.commits,
                report.elections,
                report.crashes,
                report.power_losses,
                report.torn_writes,
                report.io_error_stops,
                report.disk_full,
                report.enospc,
                report.transfers,
                report.joins,
                report.membership_done,
                report.membership_asked,
                report.retired,
                report.replays,
                report.snapshots_installed,
                report.compacted,
                report.chained,
                report.chain_longest,
                report.abandoned,
                report.images_compared,
                report.images_hashed,
                report.simulated,
                report.steps,
                report.turns,
                report.fingerprint
            );
        }
        if !report.violations.is_empty() {
            violations += report.violations.len() as u64;
            for violation in &report.violations {
                println!("seed {seed}: {violation}");
            }
            println!(
                "reproduce with: cargo run --release -p atoll-node --example sim -- --seeds \
                 {seed}..{} --nodes {nodes} --fault-ms {fault_ms}",
                seed + 1
            );
            if stop {
                break;
            }
        }
    }
    let took = MonotonicClock.now() - started;
    if verbose {
        println!(
            "{count} seeds in {took:.1?} ({:.2} seeds/s)",
            count as f64 / took.as_secs_f64()
        );
    }
    println!(
        "sim: {count} seeds, {violations} violations, {commits} commits, {elections} elections, \
         {chained} commands chained (longest chain {chain_longest}), {abandoned} in flight at a \
         leader change, {apply_yields} applies cut short"
    );
    if violations > 0 {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    }
}
