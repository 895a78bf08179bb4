//! Turns bytes into a simulator schedule (seed, cluster size, scripted crashes, partitions,
//! membership changes, transfers, snapshots) and runs it: every invariant must hold.

#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    atoll_raft::sim::fuzz_simulation(data);
});
