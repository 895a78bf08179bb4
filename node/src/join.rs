//! Joining a cluster: a node prepared by `atoll join` asks the leader, at its first start, to
//! add it (ADD: as a spare, as dqlite does); automatic roles then promote it and it catches up
//! from the log or a snapshot.
//!
//! The asking is a small state machine of the loop, on requests the node makes itself through
//! its network ([`Network::outbound_request`](crate::network::Network::outbound_request)), so
//! that the simulator runs it on its one thread: LEADER to one of the `join` addresses (in
//! turn), CLUSTER to the leader it names (added already? the id or the address taken by
//! another node?), then ADD. Any failure (no leader known, a connection refused, a FAILURE
//! answer, a timeout) starts over after a pause that doubles up to [`RETRY_PAUSE_MAX`]. The
//! loop ends the join when the Raft configuration it receives names this node, and then
//! removes `join` from `atoll.conf`: a restart of a member never asks again.

use std::time::{Duration, Instant};

use atoll_net::protocol::{ClusterFormat, Request, Response};
use log::{error, info, warn};

use super::{Node, NodeError};
use crate::network::{OutboundAnswer, OutboundId};

/// Longest pause between two attempts to be added.
const RETRY_PAUSE_MAX: Duration = Duration::from_secs(2);
/// First pause after a failed attempt.
const RETRY_PAUSE_MIN: Duration = Duration::from_millis(100);
/// Longest wait for one answer (an ADD is answered once the change is applied).
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

/// Where a join stands.
#[derive(Debug)]
enum Stage {
    /// Nothing asked; the next attempt at `at`.
    Waiting { at: Instant },
    /// LEADER asked of one of the `join` addresses.
    Leader { request: OutboundId },
    /// CLUSTER asked of the leader at `leader`.
    Cluster { request: OutboundId, leader: String },
    /// ADD asked of the leader.
    Add { request: OutboundId },
    /// The leader added this node; waiting for the configuration to arrive.
    Added,
}

/// A join in progress.
pub(super) struct Join {
    stage: Stage,
    /// The `join` address to ask next.
    next_address: usize,
    /// The pause after the next failure.
    pause: Duration,
}

/// What one answer means for the join.
enum Next {
    Ask { address: String, request: Request },
    Added,
    Retry(String),
    Fail(String),
}

impl Node {
    /// Starts the join if this node was prepared by `atoll join` and is not a member yet.
    pub(super) fn start_join(&mut self) -> Result<(), NodeError> {
        if self.config.join.is_empty() {
            return Ok(());
        }
        if self.is_member() {
            return self.join_done();
        }
        info!(
            "joining the cluster at {}: asking its leader to add node {} ({})",
            self.config.join.join(","),
            self.config.id,
            self.config.address
        );
        self.join = Some(Join {
            stage: Stage::Waiting {
                at: self.clock.now(),
            },
            next_address: 0,
            pause: RETRY_PAUSE_MIN,
        });
        Ok(())
    }

    fn is_member(&self) -> bool {
        self.raft
            .configuration()
            .get(atoll_raft::NodeId(self.config.id))
            .is_some()
    }

    /// Sends `request` to `address` for the join.
    fn join_ask(&mut self, address: &str, request: Request) -> OutboundId {
        self.reactor
            .outbound_request(address, request, REQUEST_TIMEOUT)
    }

    /// An answer to one of this node's own requests (only the join makes them).
    pub(super) fn on_outbound_answer(&mut self, answer: OutboundAnswer) {
        let Some(join) = self.join.as_ref() else {
            return;
        };
        let (id, address) = (self.config.id, self.config.address.clone());
        let next = match (&join.stage, answer.result) {
            (Stage::Leader { request }, result) if *request == answer.id => match result {
                Ok(Response::Server {
                    id: leader,
                    address,
                }) if leader != 0 => Next::Ask {
                    address,
                    request: Request::Cluster {
                        format: ClusterFormat::V0,
                    },
                },
                Ok(Response::Server { .. }) => Next::Retry("no leader known".into()),
                Ok(other) => Next::Retry(format!("LEADER answered {other:?}")),
                Err(e) => Next::Retry(e),
            },
            (Stage::Cluster { request, leader }, result) if *request == answer.id => {
                let leader = leader.clone();
                match result {
                    Ok(Response::Servers { nodes }) => {
                        if let Some(node) = nodes.iter().find(|n| n.id == id) {
                            if node.address == address {
                                Next::Added // An earlier answer was lost.
                            } else {
                                Next::Fail(format!(
                                    "node id {id} is already in the cluster at {}, not {address}",
                                    node.address
                                ))
                            }
                        } else if let Some(node) = nodes.iter().find(|n| n.address == address) {
                            Next::Fail(format!(
                                "address {address} is already node {}'s in the cluster",
                                node.id
                            ))
                        } else {
                            Next::Ask {
                                address: leader,
                                request: Request::Add {
                                    id,
                                    address: address.clone(),
                                },
                            }
                        }
                    }
                    Ok(other) => Next::Retry(format!("CLUSTER answered {other:?}")),
                    Err(e) => Next::Retry(e),
                }
            }
            (Stage::Add { request }, result) if *request == answer.id => match result {
                Ok(Response::Empty) => Next::Added,
                Ok(Response::Failure { message, .. }) => Next::Retry(message),
                Ok(other) => Next::Retry(format!("ADD answered {other:?}")),
                Err(e) => Next::Retry(e),
            },
            _ => return, // An answer to an attempt given up.
        };
        let now = self.clock.now();
        match next {
            Next::Ask { address, request } => {
                let adding = matches!(request, Request::Add { .. });
                let id = self.join_ask(&address, request);
                let join = self.join.as_mut().expect("checked above");
                join.stage = if adding {
                    Stage::Add { request: id }
                } else {
                    Stage::Cluster {
                        request: id,
                        leader: address,
                    }
                };
            }
            Next::Added => {
                info!("the leader added this node as a spare; waiting for the log");
                self.join.as_mut().expect("checked above").stage = Stage::Added;
            }
            Next::Retry(why) => {
                let join = self.join.as_mut().expect("checked above");
                warn!(
                    "asking {} to add this node: {why}; retrying",
                    self.config.join.join(",")
                );
                join.stage = Stage::Waiting {
                    at: now + join.pause,
                };
                join.pause = (join.pause * 2).min(RETRY_PAUSE_MAX);
            }
            Next::Fail(why) => {
                error!("cannot join the cluster: {why}");
                self.join = None;
            }
        }
    }

    /// Once per turn: the next attempt when due, and the end of the join when the
    /// configuration this node received names it.
    pub(super) fn join_step(&mut self) {
        let Some(join) = self.join.as_mut() else {
            return;
        };
        if let Stage::Waiting { at } = join.stage {
            if self.clock.now() >= at {
                let address = self.config.join[join.next_address % self.config.join.len()].clone();
                join.next_address = (join.next_address + 1) % self.config.join.len();
                let request = self.join_ask(&address, Request::Leader);
                self.join.as_mut().expect("checked above").stage = Stage::Leader { request };
            }
        }
        if self.is_member() {
            self.join = None;
            if let Err(e) = self.join_done() {
                error!("{e}");
            }
        }
    }

    /// Removes `join` from the configuration file: this node is a member now.
    fn join_done(&mut self) -> Result<(), NodeError> {
        info!("node {} is a member of the cluster", self.config.id);
        self.config.join.clear();
        self.config.write(&self.data_dir).map_err(|e| {
            NodeError::Fatal(format!("rewriting the configuration after joining: {e}"))
        })
    }
}
