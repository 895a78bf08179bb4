//! The fuzz targets' functions on seeded random inputs, so that stable CI exercises them too
//! (`fuzz/fuzz_targets/raft_message.rs`, `fuzz/fuzz_targets/raft_sim.rs`).

use atoll_raft::prng::Prng;

/// Random schedules: seed, cluster size and up to 64 scripted events each.
#[test]
fn test_fuzz_simulation_with_seeded_schedules() {
    let mut prng = Prng::new(0x5eed_f022);
    for _ in 0..24 {
        let length = 9 + prng.below(3 * 64) as usize;
        let bytes: Vec<u8> = (0..length).map(|_| prng.next_u64() as u8).collect();
        atoll_raft::sim::fuzz_simulation(&bytes);
    }
    // Degenerate inputs are schedules too.
    atoll_raft::sim::fuzz_simulation(&[]);
    atoll_raft::sim::fuzz_simulation(&[0xff; 300]);
}

/// Random bytes into the message decoder (the codec's own tests also mutate valid messages).
#[test]
fn test_fuzz_message_decoding_with_seeded_bytes() {
    let mut prng = Prng::new(0xc0dec);
    for _ in 0..20_000 {
        let length = prng.below(160) as usize;
        let bytes: Vec<u8> = (0..length).map(|_| prng.next_u64() as u8).collect();
        atoll_raft::codec::fuzz_decode_message(&bytes);
    }
}
