//! Seeds of the whole-stack simulator that once failed, each with the bug it found. They must
//! stay clean: a reproducer that passes again is how a fix is shown to hold.

use atoll_node::sim::{run_seed, SimConfig};

/// (seed, what it found).
const SEEDS: &[(u64, &str)] = &[
    (
        710,
        "a voter lagging behind the change that added a new member dropped its vote for it (no \
         address for a node outside its configuration): no leader could be elected",
    ),
    (
        3572,
        "a voter that an uncommitted configuration removed, holding that entry, would not \
         campaign, and the remaining voter lacked the entry so could not win: no leader (the \
         dissertation's section 4.2.2: such a node still campaigns)",
    ),
    (
        1772,
        "proposal ids restarted at 1 with every open: a command of the node's previous run, \
         committed after the restart, was taken for the new run's own (the engine asserted)",
    ),
];

#[test]
fn test_seeds_that_once_failed_run_clean() {
    for &(seed, found) in SEEDS {
        let report = run_seed(&SimConfig {
            seed,
            nodes: 3,
            fault_ms: 10_000,
        });
        assert!(
            report.violations.is_empty(),
            "seed {seed} (once found: {found}): {:?}",
            report.violations
        );
        assert!(report.commits > 0, "seed {seed}: no write went through");
    }
}
