//! Shared helpers for the engine's integration tests: a leader and followers in one process,
//! a seeded PRNG, and query helpers.
#![allow(dead_code)]

use std::path::Path;

use atoll_core::{
    Applied, Completion, Engine, EngineConfig, Proposal, Reply, Response, Rows, SessionId, Target,
    Value,
};

/// A small, stable PRNG (xorshift64*): a seed means the same workload forever.
pub struct Prng(u64);

impl Prng {
    pub fn new(seed: u64) -> Prng {
        Prng(seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1)
    }

    pub fn next_u64(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    pub fn below(&mut self, bound: u64) -> u64 {
        self.next_u64() % bound
    }

    pub fn chance(&mut self, percent: u64) -> bool {
        self.below(100) < percent
    }
}

/// The seed from `SEED`, or `default`.
pub fn seed(default: u64) -> u64 {
    std::env::var("SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(default)
}

pub fn config(dir: &Path, node: u64) -> EngineConfig {
    let mut config = EngineConfig::new(dir, node);
    config.checkpoint_frames = 64;
    config
}

/// A leader engine, followers, and the committed log (index = position + 1).
pub struct Cluster {
    pub dirs: Vec<tempfile::TempDir>,
    pub leader: Engine,
    pub followers: Vec<Engine>,
    pub log: Vec<Vec<u8>>,
}

impl Cluster {
    pub fn new(followers: usize) -> Cluster {
        Cluster::with_config(followers, |_| {})
    }

    /// A cluster whose engines' configurations `tweak` changes first.
    pub fn with_config(followers: usize, tweak: impl Fn(&mut EngineConfig)) -> Cluster {
        let dirs: Vec<tempfile::TempDir> = (0..=followers)
            .map(|_| tempfile::tempdir().unwrap())
            .collect();
        let open = |i: usize| {
            let mut config = config(dirs[i].path(), i as u64 + 1);
            tweak(&mut config);
            Engine::open(config).unwrap().0
        };
        let leader = open(0);
        let followers = (1..=followers).map(open).collect();
        Cluster {
            dirs,
            leader,
            followers,
            log: Vec::new(),
        }
    }

    /// Commits every outstanding proposal: appends it to the log and applies it everywhere.
    pub fn commit_all(&mut self) -> usize {
        let mut count = 0;
        // Applying may grant queued writers, which propose again: loop until quiet (bounded by
        // the number of queued requests).
        for _ in 0..100_000 {
            let proposals: Vec<Proposal> = self.leader.take_proposals();
            if proposals.is_empty() {
                return count;
            }
            for proposal in proposals {
                self.log.push(proposal.command.clone());
                let index = self.log.len() as u64;
                let applied = self.leader.apply(index, &proposal.command).unwrap();
                assert!(matches!(applied, Applied::Frames { .. }), "{applied:?}");
                for follower in &mut self.followers {
                    let applied = follower.apply(index, &proposal.command).unwrap();
                    assert!(matches!(applied, Applied::Frames { .. }), "{applied:?}");
                }
                count += 1;
            }
        }
        panic!("proposals never stopped");
    }

    /// Runs a write on the leader and commits it; returns its response.
    pub fn write(
        &mut self,
        session: SessionId,
        db: &str,
        sql: &str,
        params: &[Value],
    ) -> Result<Response, atoll_core::ExecError> {
        match self.leader.exec(session, db, Target::Sql(sql), params)? {
            Reply::Done(response) => Ok(response),
            Reply::Queued => panic!("unexpected queueing"),
            Reply::Proposed { .. } => {
                self.commit_all();
                let mut completions: Vec<Completion> = self.leader.take_completions();
                let position = completions
                    .iter()
                    .position(|c| c.session == session)
                    .expect("the write completed");
                completions.remove(position).result
            }
        }
    }
}

/// All rows of a read query (following batches).
pub fn query_all(engine: &mut Engine, session: SessionId, db: &str, sql: &str) -> Rows {
    let reply = engine
        .query(session, db, Target::Sql(sql), &[])
        .unwrap_or_else(|e| panic!("query {sql:?}: {e}"));
    let Reply::Done(Response::Rows(mut rows)) = reply else {
        panic!("query {sql:?} did not answer rows: {reply:?}");
    };
    while !rows.done {
        let next = engine.query_next(session).unwrap();
        rows.values.extend(next.values);
        rows.done = next.done;
    }
    rows
}

/// Opens a session with `db` open.
pub fn session(engine: &mut Engine, db: &str) -> SessionId {
    let session = engine.open_session().unwrap();
    engine.open_database(session, db).unwrap();
    session
}
