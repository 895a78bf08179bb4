//! Automatic roles, decided by the leader: keep `voters` voters and `standbys` standbys, promote
//! joining spares as needed, and replace a voter unreachable for `unreachable_ms` by a standby
//! or a spare, then demote it. No operator is needed; `roles = manual` in `atoll.conf` turns it
//! off.
//!
//! One change at a time, each logged at info: nothing is decided while a configuration change
//! or a promotion is in flight, while an operator's membership request waits, or during a
//! leadership transfer. Promotion to voter goes through raft's catch-up rounds, so a node that
//! cannot keep up (or is down) is never made a voter; a spare that fails to come up is left
//! alone for a while before it is tried again.
//!
//! Order of the rules (the first that applies acts):
//! 1. fewer voters than wanted, or a voter unreachable past the threshold: promote the most
//!    caught-up reachable standby, else a spare, to voter;
//! 2. more voters than wanted: demote an unreachable voter to spare, else the least caught-up
//!    voter (never the leader) to standby;
//! 3. a standby unreachable past the threshold: demote it to spare;
//! 4. fewer standbys than wanted: promote a spare to standby;
//! 5. more standbys than wanted: demote the least caught-up standby to spare.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use atoll_raft::{MemberRole, NodeId, StateRole};
use log::{debug, info};

use super::Node;

/// How often the leader looks at the roles.
const ROLES_INTERVAL: Duration = Duration::from_millis(100);
/// A spare that could not be promoted (or a standby demoted as unreachable) is not chosen
/// again for this many unreachable thresholds.
const FAILED_BACKOFF_THRESHOLDS: u32 = 10;

/// The leader's role-management state.
#[derive(Default)]
pub(super) struct Roles {
    next_check_at: Option<Instant>,
    /// The promotion to voter this policy started, watched until raft finishes or abandons it.
    promoting: Option<NodeId>,
    /// Nodes that failed to come up, and when.
    failed: HashMap<NodeId, Instant>,
}

/// One member as the policy sees it.
struct Member {
    id: NodeId,
    role: MemberRole,
    /// Heard from within the last election timeout (the leader itself always is).
    reachable: bool,
    /// Not heard from for the unreachable threshold.
    unreachable: bool,
    match_index: u64,
}

impl Node {
    /// Runs the policy when it is due: on a leader whose term's first entry is applied and
    /// when no change is in flight.
    pub(super) fn roles_step(&mut self) {
        if !self.config.auto_roles || self.raft.role() != StateRole::Leader {
            self.roles.promoting = None;
            self.roles.next_check_at = None;
            return;
        }
        let now = self.clock.now();
        if self.roles.next_check_at.is_some_and(|at| now < at) {
            return;
        }
        self.roles.next_check_at = Some(now + ROLES_INTERVAL);
        if let Some(id) = self.roles.promoting {
            if self.raft.promotion().is_some() {
                return;
            }
            self.roles.promoting = None;
            if self.raft.configuration().role(id) != Some(MemberRole::Voter) {
                info!("automatic roles: node {id} did not catch up; not promoted");
                self.roles.failed.insert(id, now);
            }
        }
        let busy = !self.leader_ready()
            || self.raft.configuration_index() > self.raft.commit_index()
            || self.raft.promotion().is_some()
            || self.raft.transferee().is_some()
            || !self.changes.is_empty()
            || self.handover_until.is_some();
        if busy {
            return;
        }
        let backoff = Duration::from_millis(self.config.unreachable_ms) * FAILED_BACKOFF_THRESHOLDS;
        self.roles
            .failed
            .retain(|_, at| now.saturating_duration_since(*at) < backoff);
        self.roles_decide();
    }

    fn roles_members(&self) -> Vec<Member> {
        let me = NodeId(self.config.id);
        let tick_ms = self.config.tick_ms.max(1);
        let unreachable_ticks = self.config.unreachable_ms / tick_ms;
        let reachable_ticks = u64::from(self.config.election_ticks_max);
        let progress: HashMap<NodeId, (u64, u64)> = self
            .raft
            .progress()
            .map(|(id, p)| (id, (p.last_contact_ticks(), p.match_index().0)))
            .collect();
        self.raft
            .configuration()
            .members()
            .map(|(id, member)| {
                let (contact, match_index) = match progress.get(&id) {
                    _ if id == me => (0, self.raft.last_index().0),
                    Some(&(contact, match_index)) => (contact, match_index),
                    // A spare gets no messages: nothing is known about it.
                    None => (u64::MAX, 0),
                };
                Member {
                    id,
                    role: member.role,
                    reachable: contact <= reachable_ticks,
                    unreachable: member.role != MemberRole::Spare && contact >= unreachable_ticks,
                    match_index,
                }
            })
            .collect()
    }

    fn roles_decide(&mut self) {
        let me = NodeId(self.config.id);
        let members = self.roles_members();
        let count = |role| members.iter().filter(|m| m.role == role).count() as u32;
        let (voters, standbys) = (count(MemberRole::Voter), count(MemberRole::Standby));
        let (voters_wanted, standbys_wanted) = (self.config.voters, self.config.standbys);
        let failed = |id: &NodeId| self.roles.failed.contains_key(id);
        // Candidates for promotion: reachable standbys, most caught up first, then spares
        // that have not failed recently (lowest id first, so decisions are predictable).
        let mut standbys_ready: Vec<&Member> = members
            .iter()
            .filter(|m| m.role == MemberRole::Standby && m.reachable)
            .collect();
        standbys_ready.sort_by_key(|m| std::cmp::Reverse(m.match_index));
        let spares: Vec<&Member> = members
            .iter()
            .filter(|m| m.role == MemberRole::Spare && !failed(&m.id))
            .collect();
        let dead_voter = members
            .iter()
            .find(|m| m.role == MemberRole::Voter && m.unreachable && m.id != me);

        // 1. Too few voters, or one to replace.
        if voters < voters_wanted || (dead_voter.is_some() && voters <= voters_wanted) {
            if let Some(candidate) = standbys_ready.first().or(spares.first()) {
                let why = match dead_voter {
                    Some(dead) if voters >= voters_wanted => {
                        format!("to replace voter {} (unreachable)", dead.id)
                    }
                    _ => format!("{voters} voter(s) of {voters_wanted} wanted"),
                };
                let id = candidate.id;
                info!("automatic roles: promoting node {id} to voter ({why})");
                if self.roles_assign(id, MemberRole::Voter) {
                    self.roles.promoting = Some(id);
                }
                return;
            }
        }
        // 2. Too many voters.
        if voters > voters_wanted {
            let victim = members
                .iter()
                .filter(|m| m.role == MemberRole::Voter && m.id != me)
                .min_by_key(|m| (!m.unreachable, m.match_index));
            if let Some(victim) = victim {
                let (id, role) = if victim.unreachable {
                    (victim.id, MemberRole::Spare)
                } else {
                    (victim.id, MemberRole::Standby)
                };
                let why = if victim.unreachable {
                    "unreachable"
                } else {
                    "least caught up"
                };
                info!(
                    "automatic roles: demoting voter {id} to {} ({voters} voters of \
                     {voters_wanted} wanted; {why})",
                    role_name(role)
                );
                if role == MemberRole::Spare {
                    self.roles.failed.insert(id, self.clock.now());
                }
                self.roles_assign(id, role);
                return;
            }
        }
        // 3. An unreachable standby makes room for a spare that may be up.
        if let Some(dead) = members
            .iter()
            .find(|m| m.role == MemberRole::Standby && m.unreachable)
        {
            let id = dead.id;
            info!("automatic roles: demoting standby {id} to spare (unreachable)");
            self.roles.failed.insert(id, self.clock.now());
            self.roles_assign(id, MemberRole::Spare);
            return;
        }
        // 4. Too few standbys.
        if standbys < standbys_wanted {
            if let Some(spare) = spares.first() {
                let id = spare.id;
                info!(
                    "automatic roles: promoting spare {id} to standby ({standbys} standby(s) \
                     of {standbys_wanted} wanted)"
                );
                self.roles_assign(id, MemberRole::Standby);
                return;
            }
        }
        // 5. Too many standbys.
        if standbys > standbys_wanted {
            let victim = members
                .iter()
                .filter(|m| m.role == MemberRole::Standby)
                .min_by_key(|m| (!m.unreachable, m.match_index));
            if let Some(victim) = victim {
                let id = victim.id;
                info!(
                    "automatic roles: demoting standby {id} to spare ({standbys} standbys of \
                     {standbys_wanted} wanted)"
                );
                self.roles_assign(id, MemberRole::Spare);
            }
        }
    }

    /// Asks raft for the change; whether it was accepted.
    fn roles_assign(&mut self, id: NodeId, role: MemberRole) -> bool {
        match self.raft.assign(id, role) {
            Ok(()) => true,
            Err(e) => {
                debug!("automatic roles: assigning {id} {role:?} refused: {e}");
                false
            }
        }
    }
}

fn role_name(role: MemberRole) -> &'static str {
    match role {
        MemberRole::Voter => "voter",
        MemberRole::Standby => "standby",
        MemberRole::Spare => "spare",
    }
}
