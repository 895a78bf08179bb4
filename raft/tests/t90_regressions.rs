//! Regression tests: each seed here once broke an invariant in the simulator. The name says
//! the seed; the comment says what broke and why the fix holds.

use atoll_raft::sim::{run, SimOptions};

fn replay(seed: u64, nodes: usize) {
    if let Err(violation) = run(&SimOptions::new(seed, nodes)) {
        panic!("{violation}");
    }
}

/// A leader removed node 2, then demoted itself, and the second configuration brought node 2
/// back as a voter: the leader never applied its own configuration entries (only followers
/// did), so each change was computed from the configuration before the previous one. With no
/// node believing itself a voter of an up-to-date log, the cluster never elected a leader.
#[test]
fn t90_seed_1257() {
    replay(1257, 3);
}
