//! Runs the deterministic simulator over a range of seeds.
//!
//! `cargo run --release -p atoll-raft --example raft_sim -- --seeds START..END
//! [--nodes N]`
//!
//! Prints, last, `sim: <n> seeds, <v> violations, <c> commits, <e> elections`. A violation
//! prints its seed and the command that replays it, and the run exits non-zero.

use std::process::ExitCode;
use std::time::Instant;

use atoll_raft::sim::{run, SimOptions, SimReport};

fn usage() -> &'static str {
    "usage: raft_sim --seeds START..END [--nodes 3|5|7] [--fault-ticks N] [--verbose]\n\
     Runs one simulated cluster per seed, checking Raft's invariants after every step.\n\
     Without --nodes, each seed uses 3, 5 or 7 nodes in turn (seed % 3)."
}

fn parse_range(text: &str) -> Option<(u64, u64)> {
    let (start, end) = text.split_once("..")?;
    let start = start.parse().ok()?;
    let end = end.parse().ok()?;
    (start < end).then_some((start, end))
}

fn main() -> ExitCode {
    // RUST_LOG=info (or debug) prints what the nodes do; the simulator's time is not in it.
    env_logger::init();
    let args: Vec<String> = std::env::args().skip(1).collect();
    let mut seeds = (0u64, 100u64);
    let mut nodes: Option<usize> = None;
    let mut fault_ticks: Option<u64> = None;
    let mut verbose = false;
    let mut position = 0;
    while position < args.len() {
        let value = args.get(position + 1);
        match (args[position].as_str(), value) {
            ("--seeds", Some(value)) => match parse_range(value) {
                Some(range) => seeds = range,
                None => {
                    eprintln!("sim: bad --seeds {value:?} (want START..END)\n{}", usage());
                    return ExitCode::from(2);
                }
            },
            ("--nodes", Some(value)) => match value.parse() {
                Ok(count @ (3 | 5 | 7)) => nodes = Some(count),
                _ => {
                    eprintln!("sim: --nodes takes 3, 5 or 7\n{}", usage());
                    return ExitCode::from(2);
                }
            },
            ("--fault-ticks", Some(value)) => match value.parse() {
                Ok(ticks) => fault_ticks = Some(ticks),
                _ => {
                    eprintln!("sim: bad --fault-ticks\n{}", usage());
                    return ExitCode::from(2);
                }
            },
            ("--verbose", _) => {
                verbose = true;
                position += 1;
                continue;
            }
            ("--help" | "-h", _) => {
                println!("{}", usage());
                return ExitCode::SUCCESS;
            }
            (other, _) => {
                eprintln!("sim: unknown argument {other:?}\n{}", usage());
                return ExitCode::from(2);
            }
        }
        position += 2;
    }
    let started = Instant::now();
    let mut total = SimReport::default();
    let mut violations = 0u64;
    let mut count = 0u64;
    for seed in seeds.0..seeds.1 {
        count += 1;
        let count = nodes.unwrap_or([3, 5, 7][(seed % 3) as usize]);
        let mut options = SimOptions::new(seed, count);
        if let Some(ticks) = fault_ticks {
            // A longer fault phase leaves more to catch up (late joiners need whole
            // snapshots, streams restart when the leader snapshots again): the bound grows.
            options.fault_ticks = ticks;
            options.liveness_ticks = options.liveness_ticks.max(500 + ticks / 4);
        }
        match run(&options) {
            Ok(report) => {
                if verbose {
                    eprintln!("seed {seed} ({count} nodes): {report:?}");
                }
                total.add(&report);
            }
            Err(violation) => {
                violations += 1;
                eprintln!("{violation}");
                break;
            }
        }
    }
    eprintln!(
        "sim: {} client operations ({} follower reads), {} crashes, {} partitions, {} \
         membership changes, {} transfers, {} snapshots installed, worst recovery {} ticks, \
         {:.1}s",
        total.operations,
        total.follower_reads,
        total.crashes,
        total.partitions,
        total.membership_changes,
        total.transfers,
        total.snapshots_installed,
        total.recovery_ticks,
        started.elapsed().as_secs_f64()
    );
    println!(
        "sim: {count} seeds, {violations} violations, {} commits, {} elections",
        total.commits, total.elections
    );
    if violations > 0 {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    }
}
