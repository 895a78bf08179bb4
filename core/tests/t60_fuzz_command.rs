//! The `core_command` fuzz target's function on stable: seeded random bytes, and mutations of
//! real commands (so that many inputs decode and reach `apply`), never panic, and a malformed
//! command never writes (`Scratch::run` checks the directory).

mod common;

use atoll_core::command::Command;
use atoll_core::fuzzing::Scratch;
use common::*;

#[test]
fn test_random_and_mutated_commands_never_panic() {
    let mut rng = Prng::new(seed(4242));
    // Real commands from a small workload, written for 512-byte pages like the scratch engine.
    let dir = tempfile::tempdir().unwrap();
    let mut config = config(dir.path(), 1);
    config.page_size = 512;
    let (mut leader, _) = atoll_core::Engine::open(config).unwrap();
    let s = session(&mut leader, "fuzz.db");
    let mut commands = Vec::new();
    for sql in [
        "CREATE TABLE t(a, b)",
        "INSERT INTO t VALUES (1, randomblob(2000))",
        "CREATE INDEX t_a ON t(a)",
        "DELETE FROM t",
    ] {
        leader
            .exec(s, "fuzz.db", atoll_core::Target::Sql(sql), &[])
            .unwrap();
        for proposal in leader.take_proposals() {
            let index = leader.applied_index() + 1;
            leader.apply(index, &proposal.command).unwrap();
            commands.push(proposal.command);
        }
    }
    assert!(Command::decode(&commands[0]).is_ok());
    let mut scratch = Scratch::new();
    // The real commands in order apply cleanly.
    for command in &commands {
        scratch.run(command);
    }
    for round in 0..2000 {
        let input: Vec<u8> = match round % 3 {
            0 => (0..rng.below(600)).map(|_| rng.next_u64() as u8).collect(),
            _ => {
                let mut bytes = commands[rng.below(commands.len() as u64) as usize].clone();
                for _ in 0..1 + rng.below(4) {
                    let at = rng.below(bytes.len() as u64) as usize;
                    match rng.below(3) {
                        0 => bytes[at] = rng.next_u64() as u8,
                        1 => bytes.truncate(at),
                        _ => bytes[at..].iter_mut().take(8).for_each(|b| *b = 0),
                    }
                    if bytes.is_empty() {
                        break;
                    }
                }
                bytes
            }
        };
        scratch.run_input(&input);
    }
    // Structured inputs: well-formed commands from random bytes reach the WAL code, across
    // wal-index regions, restarts and checkpoints.
    for _ in 0..3000 {
        let input: Vec<u8> = (0..64).map(|_| rng.next_u64() as u8 | 1).collect();
        scratch.run_input(&input);
    }
}
