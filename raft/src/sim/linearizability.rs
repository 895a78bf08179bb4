//! A linearizability checker for single registers (Wing and Gong's search with Lowe's
//! memoization, as in Porcupine): is there a total order of the operations, consistent with
//! real time, in which every read returns the latest write?
//!
//! Histories are checked per key (registers compose). Writes whose outcome the client never
//! learned (its node crashed) have no response: they may take effect anywhere after their
//! invocation, or never.

use std::collections::HashSet;

/// What an operation did.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum OpKind {
    /// Wrote this value.
    Write(u64),
    /// Read this value (0: never written).
    Read(u64),
}

/// One client operation on one register.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub struct Operation {
    /// When the client invoked it.
    pub invoke: u64,
    /// When the client saw its result; `None` if it never did (a write that may have happened).
    pub response: Option<u64>,
    /// What it did.
    pub kind: OpKind,
    /// For a write: its position in the replicated log, if known. Known positions fix the
    /// order of writes (the state machine applies them in log order), which keeps the search
    /// linear in the number of writes instead of exponential.
    pub log_index: Option<u64>,
}

/// The most operations one register's history may hold (the search tracks them in a u128).
pub const OPERATIONS_PER_KEY_MAX: usize = 128;

/// Whether `history` (one register, initially 0) is linearizable. On failure, a description.
/// Writes without a response are optional (they may never have happened) unless `effective`
/// says the caller knows they took effect.
pub fn check_register(history: &[Operation]) -> Result<(), String> {
    check_register_with(history, false)
}

/// Like [`check_register`]; with `writes_effective`, every write in the history took effect
/// (the simulator settles unanswered writes from the committed log first), which keeps the
/// search small.
pub fn check_register_with(history: &[Operation], writes_effective: bool) -> Result<(), String> {
    let ops: Vec<Operation> = history
        .iter()
        .copied()
        .filter(|op| op.response.is_some() || matches!(op.kind, OpKind::Write(_)))
        .collect();
    assert!(
        ops.len() <= OPERATIONS_PER_KEY_MAX,
        "history too long for one register"
    );
    let required: u128 = ops
        .iter()
        .enumerate()
        .filter(|(_, op)| op.response.is_some() || writes_effective)
        .fold(0, |mask, (position, _)| mask | (1u128 << position));
    // For each write with a log position, the writes that must come before it.
    let before: Vec<u128> = ops
        .iter()
        .map(|op| match (op.kind, op.log_index) {
            (OpKind::Write(_), Some(index)) => ops
                .iter()
                .enumerate()
                .filter(|(_, other)| {
                    matches!(other.kind, OpKind::Write(_))
                        && other.log_index.is_some_and(|other| other < index)
                })
                .fold(0, |mask, (position, _)| mask | (1u128 << position)),
            _ => 0,
        })
        .collect();
    let mut search = Search {
        ops: &ops,
        before,
        required,
        failed: HashSet::new(),
        budget: 2_000_000,
    };
    if search.linearize(0, 0) {
        return Ok(());
    }
    if search.budget == 0 {
        // Give up rather than hang: report it, so it is noticed and the workload shrunk.
        return Err(format!(
            "search budget exhausted on {} operations",
            ops.len()
        ));
    }
    Err(format!("not linearizable: {}", describe(&ops)))
}

struct Search<'a> {
    ops: &'a [Operation],
    before: Vec<u128>,
    required: u128,
    /// States (operations done, register value) known not to lead to a linearization.
    failed: HashSet<(u128, u64)>,
    budget: u64,
}

impl Search<'_> {
    /// The earliest response among operations not yet linearized: an operation may come next
    /// only if it began before that.
    fn first_response(&self, done: u128) -> u64 {
        self.ops
            .iter()
            .enumerate()
            .filter(|(position, _)| done & (1u128 << position) == 0)
            .filter_map(|(_, op)| op.response)
            .min()
            .unwrap_or(u64::MAX)
    }

    fn linearize(&mut self, mut done: u128, value: u64) -> bool {
        // Reads change nothing, so one that may come next and returns the current value can be
        // placed right away: if any linearization exists, one with the read here does too.
        // This keeps concurrent reads from multiplying the states searched.
        loop {
            let first_response = self.first_response(done);
            let ready = self.ops.iter().enumerate().position(|(position, op)| {
                done & (1u128 << position) == 0
                    && op.invoke <= first_response
                    && op.kind == OpKind::Read(value)
            });
            match ready {
                Some(position) => done |= 1u128 << position,
                None => break,
            }
        }
        if done & self.required == self.required {
            return true;
        }
        if self.budget == 0 || self.failed.contains(&(done, value)) {
            return false;
        }
        self.budget -= 1;
        let first_response = self.first_response(done);
        for (position, op) in self.ops.iter().enumerate() {
            let bit = 1u128 << position;
            if done & bit != 0 || op.invoke > first_response {
                continue;
            }
            if done & self.before[position] != self.before[position] {
                continue;
            }
            if let OpKind::Write(written) = op.kind {
                if self.linearize(done | bit, written) {
                    return true;
                }
            }
        }
        self.failed.insert((done, value));
        false
    }
}

fn describe(ops: &[Operation]) -> String {
    let mut sorted = ops.to_vec();
    sorted.sort_by_key(|op| op.invoke);
    sorted
        .iter()
        .map(|op| {
            let end = op.response.map_or("?".to_string(), |t| t.to_string());
            match op.kind {
                OpKind::Write(v) => format!("[{}..{end}] w{v}", op.invoke),
                OpKind::Read(v) => format!("[{}..{end}] r{v}", op.invoke),
            }
        })
        .collect::<Vec<_>>()
        .join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn op(invoke: u64, response: Option<u64>, kind: OpKind) -> Operation {
        Operation {
            invoke,
            response,
            kind,
            log_index: None,
        }
    }

    #[test]
    fn test_linearizable_histories_pass() {
        // Overlapping write and read: the read may see either value.
        let history = [
            op(0, Some(10), OpKind::Write(1)),
            op(5, Some(6), OpKind::Read(1)),
            op(7, Some(8), OpKind::Read(1)),
            op(11, Some(12), OpKind::Read(1)),
        ];
        assert_eq!(check_register(&history), Ok(()));
        // An indeterminate write may have happened...
        let history = [
            op(0, None, OpKind::Write(5)),
            op(3, Some(4), OpKind::Read(5)),
        ];
        assert_eq!(check_register(&history), Ok(()));
        // ...or not.
        let history = [
            op(0, None, OpKind::Write(5)),
            op(3, Some(4), OpKind::Read(0)),
        ];
        assert_eq!(check_register(&history), Ok(()));
    }

    #[test]
    fn test_stale_read_fails() {
        // The write finished before the read began, yet the read missed it.
        let history = [
            op(0, Some(2), OpKind::Write(1)),
            op(3, Some(4), OpKind::Read(0)),
        ];
        assert!(check_register(&history).is_err());
        // A read went back in time: saw 2, then a later read saw 1.
        let history = [
            op(0, Some(1), OpKind::Write(1)),
            op(2, Some(3), OpKind::Write(2)),
            op(4, Some(5), OpKind::Read(2)),
            op(6, Some(7), OpKind::Read(1)),
        ];
        assert!(check_register(&history).is_err());
        // A read of a value nobody wrote.
        let history = [op(0, Some(1), OpKind::Read(9))];
        assert!(check_register(&history).is_err());
    }
}
