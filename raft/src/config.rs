//! The node's tunables. Times are in ticks: the host decides how long a tick is (atoll: 10 ms).

use std::fmt;

use crate::NodeId;

/// Every tunable of a node, validated by [`Config::validate`] when the node is built.
#[derive(Clone, Debug)]
pub struct Config {
    /// This node's id (never 0).
    pub id: NodeId,
    /// The leader sends a heartbeat every `heartbeat_ticks`.
    pub heartbeat_ticks: u32,
    /// A follower that hears nothing from a leader for a randomized timeout drawn from
    /// `election_timeout_ticks_min..election_timeout_ticks_max` campaigns. The minimum is also
    /// the check-quorum window and the leader lease during which votes are ignored.
    pub election_timeout_ticks_min: u32,
    /// Exclusive upper bound of the randomized election timeout.
    pub election_timeout_ticks_max: u32,
    /// Campaign with a pre-vote round first, so that a node back from a partition neither
    /// disrupts a healthy leader nor inflates the term (Raft dissertation section 9.6).
    pub pre_vote: bool,
    /// A leader that has not heard from a quorum within `election_timeout_ticks_min` steps down,
    /// and followers ignore votes while they hear from their leader (dissertation section 6.2).
    pub check_quorum: bool,
    /// The most entries in one append message.
    pub append_entries_max: u32,
    /// The most payload bytes in one append message (at least one entry is always sent).
    pub append_bytes_max: u64,
    /// The most append messages in flight to one follower (pipelining with flow control).
    pub inflight_msgs_max: u32,
    /// The most payload bytes in flight to one follower.
    pub inflight_bytes_max: u64,
    /// The most uncommitted payload bytes a leader accepts before dropping proposals.
    pub uncommitted_bytes_max: u64,
    /// The most payload bytes of committed entries handed out in one ready.
    pub apply_bytes_max: u64,
    /// The size of one snapshot chunk sent to a follower.
    pub snapshot_chunk_bytes: u32,
    /// The most snapshot chunks in flight to one follower.
    pub snapshot_chunks_inflight_max: u32,
    /// How many entries before a snapshot's index stay in the log when it compacts, so that a
    /// follower slightly behind still catches up from the log instead of a snapshot.
    pub snapshot_trailing_entries: u64,
    /// The most read requests waiting for confirmation on a leader or for a response on a
    /// follower.
    pub reads_pending_max: u32,
    /// Seed of the generator drawing election timeouts. Hosts pass something different per node
    /// (the node id mixed with the start time is enough): equal seeds mean equal timeouts.
    pub seed: u64,
}

impl Config {
    /// Defaults sized for a LAN cluster with a 10 ms tick: a heartbeat every 20 ms and an
    /// election timeout of 100–200 ms, so a leader's failure is noticed and a new one elected
    /// within about 100–250 ms (one or two message round trips after the timeout).
    pub fn new(id: NodeId) -> Config {
        Config {
            id,
            heartbeat_ticks: 2,
            election_timeout_ticks_min: 10,
            election_timeout_ticks_max: 20,
            pre_vote: true,
            check_quorum: true,
            append_entries_max: 1024,
            append_bytes_max: 1 << 20,
            inflight_msgs_max: 64,
            inflight_bytes_max: 16 << 20,
            uncommitted_bytes_max: 64 << 20,
            apply_bytes_max: 16 << 20,
            snapshot_chunk_bytes: 1 << 20,
            snapshot_chunks_inflight_max: 4,
            snapshot_trailing_entries: 1024,
            reads_pending_max: 4096,
            seed: id.0,
        }
    }

    /// Checks every tunable and their relations.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let fail = |why| Err(ConfigError(why));
        if self.id.0 == 0 {
            return fail("id must not be 0");
        }
        if self.heartbeat_ticks == 0 {
            return fail("heartbeat_ticks must be at least 1");
        }
        if self.election_timeout_ticks_min <= self.heartbeat_ticks {
            return fail("election_timeout_ticks_min must exceed heartbeat_ticks");
        }
        if self.election_timeout_ticks_max <= self.election_timeout_ticks_min {
            return fail("election_timeout_ticks_max must exceed election_timeout_ticks_min");
        }
        if self.append_entries_max == 0 || self.append_bytes_max == 0 {
            return fail("append_entries_max and append_bytes_max must be positive");
        }
        if self.append_entries_max > crate::codec::ENTRIES_PER_MESSAGE_MAX {
            return fail("append_entries_max exceeds what one message may carry");
        }
        if self.append_bytes_max > crate::codec::MESSAGE_BYTES_MAX / 2 {
            return fail("append_bytes_max exceeds half of what one message may carry");
        }
        if self.inflight_msgs_max == 0 || self.inflight_bytes_max == 0 {
            return fail("inflight_msgs_max and inflight_bytes_max must be positive");
        }
        if self.uncommitted_bytes_max == 0 || self.apply_bytes_max == 0 {
            return fail("uncommitted_bytes_max and apply_bytes_max must be positive");
        }
        if self.snapshot_chunk_bytes == 0
            || u64::from(self.snapshot_chunk_bytes) > crate::codec::SNAPSHOT_CHUNK_BYTES_MAX
        {
            return fail("snapshot_chunk_bytes must be in 1..=SNAPSHOT_CHUNK_BYTES_MAX");
        }
        if self.snapshot_chunks_inflight_max == 0 || self.reads_pending_max == 0 {
            return fail("snapshot_chunks_inflight_max and reads_pending_max must be positive");
        }
        Ok(())
    }
}

/// A tunable out of range: the node was not built.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError(pub &'static str);

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "invalid raft config: {}", self.0)
    }
}

impl std::error::Error for ConfigError {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn test_config_validation() {
        let config = Config::new(NodeId(1));
        assert_eq!(config.validate(), Ok(()));
        let mut bad = config.clone();
        bad.id = NodeId(0);
        assert!(bad.validate().is_err());
        let mut bad = config.clone();
        bad.election_timeout_ticks_min = bad.heartbeat_ticks;
        assert!(bad.validate().is_err());
        let mut bad = config.clone();
        bad.election_timeout_ticks_max = bad.election_timeout_ticks_min;
        assert!(bad.validate().is_err());
        let mut bad = config;
        bad.snapshot_chunk_bytes = 0;
        assert!(bad.validate().is_err());
    }
}
