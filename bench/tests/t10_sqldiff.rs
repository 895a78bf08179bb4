//! The differential SQL tester on fixed seeds against a real node (`atoll-bench sqldiff` runs
//! thousands): every answer of atoll equals a local SQLite connection's, byte for byte.

use atoll_bench::cluster::SingleNode;
use atoll_bench::sqldiff;

#[test]
fn test_fixed_seeds_answer_as_sqlite() {
    let node = SingleNode::start().unwrap();
    let out = tempfile::tempdir().unwrap();
    for seed in 1..=6 {
        if let Err(report) = sqldiff::check_seed(&node.address(), seed, Some(out.path())) {
            panic!("{report}");
        }
    }
}
