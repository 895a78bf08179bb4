//! `atoll-bench`: benchmarks that report medians and ratios against a baseline measured in the
//! same run.
//!
//! Usage: `atoll-bench SUITE [--quick] [suite options]`, where SUITE is one of the suites listed
//! by `atoll-bench --help`, or `all` to run every suite. `--quick` shrinks every suite so CI can
//! check that it still compiles and runs; its numbers mean nothing.

use std::alloc::System;
use std::process::ExitCode;

use stats_alloc::{StatsAlloc, INSTRUMENTED_SYSTEM};

mod raft;
mod storage;

/// Counts every allocation, so suites can report allocations per operation.
#[global_allocator]
static GLOBAL: &StatsAlloc<System> = &INSTRUMENTED_SYSTEM;

/// Allocations since the process started.
fn allocations() -> u64 {
    GLOBAL.stats().allocations as u64
}

/// A benchmark suite: a name, a one-line description, and the function that runs it with the
/// remaining command-line arguments.
struct Suite {
    name: &'static str,
    about: &'static str,
    run: fn(&atoll_bench::Options) -> Result<(), String>,
}

/// Every suite, in the order `all` runs them.
const SUITES: &[Suite] = &[
    Suite {
        name: "storage",
        about: "durable 4 KiB appends (1, 16, 256 per sync) against raw write+fdatasync",
        run: storage::run,
    },
    Suite {
        name: "raft",
        about: "proposals through an in-memory 3-node cluster: entries/s, allocations/entry",
        run: |options| raft::run(options, allocations),
    },
    Suite {
        name: "core",
        about: "single-row 1 KiB inserts through exec + apply vs plain SQLite (WAL, sync off)",
        run: atoll_bench::core::run,
    },
    Suite {
        name: "failover",
        about: "real nodes: kill -9 of the leader to the next acknowledged write, repeated \
                (--nodes N --rounds R --heartbeat-ms H --election-timeout-ms E \
                --server atoll|dqlite-demo)",
        run: atoll_bench::cluster::failover,
    },
    Suite {
        name: "kv",
        about: "real nodes: dqlite-benchmark's kvwrite and kvreadwrite, raw fdatasync \
                baseline, per-write breakdown, RSS (--nodes N --workers W[,W..] --seconds S \
                --value-size B --workloads kvwrite,kvreadwrite --plot FILE.svg; --dqlite runs \
                dqlite-benchmark too; --tls then a TLS cluster's rows; timing flags as for \
                failover)",
        run: atoll_bench::cluster::kv,
    },
    Suite {
        name: "sqldiff",
        about: "differential SQL: seeded scripts through a real node vs local SQLite, answers \
                compared exactly (--seeds A..B --address HOST:PORT --out DIR)",
        run: atoll_bench::sqldiff::run,
    },
];

fn usage() -> String {
    let mut text = String::from(
        "usage: atoll-bench SUITE [--quick] [options]\n\n\
         Runs a benchmark and prints, last, one summary line per case.\n\
         --quick  a few iterations only (CI uses it to keep benchmarks running)\n\nsuites:\n",
    );
    for suite in SUITES {
        text.push_str(&format!("  {:<10} {}\n", suite.name, suite.about));
    }
    text.push_str("  all        every suite above, in order\n");
    text
}

fn main() -> ExitCode {
    env_logger::init();
    let args: Vec<String> = std::env::args().skip(1).collect();
    let Some(name) = args.first() else {
        eprint!("{}", usage());
        return ExitCode::from(2);
    };
    // `atoll-bench kv --help` too: a suite must not start a run when asked what it does.
    if args.iter().any(|arg| arg == "--help" || arg == "-h") {
        print!("{}", usage());
        return ExitCode::SUCCESS;
    }
    let options = match atoll_bench::Options::parse(&args[1..]) {
        Ok(options) => options,
        Err(message) => {
            eprintln!("atoll-bench: {message}\n\n{}", usage());
            return ExitCode::from(2);
        }
    };
    let selected: Vec<&Suite> = if name == "all" {
        SUITES.iter().collect()
    } else {
        match SUITES.iter().find(|suite| suite.name == name) {
            Some(suite) => vec![suite],
            None => {
                eprintln!("atoll-bench: unknown suite {name:?}\n\n{}", usage());
                return ExitCode::from(2);
            }
        }
    };
    if selected.is_empty() {
        println!("atoll-bench: no suites yet");
    }
    for suite in selected {
        if let Err(message) = (suite.run)(&options) {
            eprintln!("atoll-bench {}: {message}", suite.name);
            return ExitCode::FAILURE;
        }
    }
    ExitCode::SUCCESS
}
