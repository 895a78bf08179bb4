//! The whole-stack simulator (`atoll_node::sim`) on a few dozen seeds: three full nodes on one
//! thread and one simulated clock, clients writing, reading and committing transactions under
//! network faults, crashes, restarts, leadership transfers and membership changes (joins,
//! removals, role changes, automatic roles). Every seed must run clean
//! (linearizable per key, no acknowledged write lost, no uncommitted value visible, replicas
//! byte-identical, live after healing), and a seed must replay identically, or a reproducer
//! would not reproduce. Longer runs: `cargo run --release -p atoll-node --example sim`.

use atoll_node::sim::{run_seed, SimConfig};

fn config(seed: u64) -> SimConfig {
    SimConfig {
        seed,
        nodes: 3,
        fault_ms: 2_000,
    }
}

#[test]
fn test_simulated_seeds_run_clean() {
    let mut commits = 0;
    for seed in 0..24 {
        let report = run_seed(&config(seed));
        assert!(
            report.violations.is_empty(),
            "seed {seed}: {:?}\nreproduce with: cargo run --release -p atoll-node --example sim \
             -- --seeds {seed}..{} --fault-ms 2000",
            report.violations,
            seed + 1
        );
        commits += report.commits;
    }
    assert!(
        commits > 24 * 20,
        "the clients got {commits} writes through"
    );
}

#[test]
fn test_a_seed_replays_identically() {
    let first = run_seed(&config(1_000));
    let second = run_seed(&config(1_000));
    assert!(first.violations.is_empty(), "{:?}", first.violations);
    assert!(first.commits > 0);
    assert_eq!(first.fingerprint, second.fingerprint);
    assert_eq!(first.commits, second.commits);
    assert_eq!(first.elections, second.elections);
    assert_eq!(first.simulated, second.simulated);
}

/// Seeds that once found a bug, at their own settings (the draws of a seed change as the
/// simulator grows: keep each only while it still reaches its flow).
#[test]
fn test_seeds_that_found_bugs_run_clean() {
    // 144, 179: a node holding an uncommitted configuration that removed node 2 refused every
    // message from node 2, the next leader, forever (peers.rs, refuse_message).
    for seed in [144, 179] {
        let report = run_seed(&SimConfig {
            seed,
            nodes: 3,
            fault_ms: 10_000,
        });
        assert!(report.violations.is_empty(), "seed {seed}: {:?}", report.violations);
    }
}
