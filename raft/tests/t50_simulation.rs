//! The CI-sized simulation: a few hundred seeds over 3, 5 and 7 nodes, every invariant checked
//! after every step (see `atoll_raft::sim`). Longer runs: the `sim` example.

use atoll_raft::sim::{run, SimOptions};

/// Seeds per node count; `SIM_SEEDS` overrides it (for a longer local run).
fn seeds_per_size() -> u64 {
    std::env::var("SIM_SEEDS")
        .ok()
        .and_then(|value| value.parse().ok())
        .unwrap_or(150)
}

fn run_range(nodes: usize, offset: u64) {
    let count = seeds_per_size();
    let mut commits = 0;
    for seed in offset..offset + count {
        match run(&SimOptions::new(seed, nodes)) {
            Ok(report) => {
                // Every seed must make progress: a simulator that commits nothing checks nothing.
                assert!(report.commits > 0, "seed {seed} committed nothing");
                assert!(report.elections > 0, "seed {seed} elected nobody");
                commits += report.commits;
            }
            Err(violation) => panic!("{violation}"),
        }
    }
    assert!(
        commits > count * 20,
        "suspiciously little traffic: {commits} commits"
    );
}

#[test]
fn test_simulation_3_nodes() {
    run_range(3, 0);
}

#[test]
fn test_simulation_5_nodes() {
    run_range(5, 1_000_000);
}

#[test]
fn test_simulation_7_nodes() {
    run_range(7, 2_000_000);
}
