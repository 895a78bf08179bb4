//! Joining a cluster: a node prepared by `atoll join` asks the leader, at its first start, to
//! add it (ADD: as a spare, as dqlite does); automatic roles then promote it and it catches up
//! from the log or a snapshot.
//!
//! The request is a blocking client call (`atoll_net::client`: leader discovery, retries), so
//! it runs on a helper thread that touches no node state: it reports through a channel and
//! wakes the loop. The loop ends the join when the Raft configuration it receives names this
//! node, and then removes `join` from `atoll.conf`: a restart of a member never asks again.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{self, Receiver, TryRecvError};
use std::sync::Arc;
use std::thread;
use std::time::Duration;

use atoll_net::client::{Client, ClientConfig, ClientError};
use log::{error, info, warn};

use super::{Node, NodeError};

/// Longest pause between two attempts to be added.
const RETRY_PAUSE_MAX: Duration = Duration::from_secs(2);

/// A join in progress.
pub(super) struct Join {
    /// The helper's outcome: `Ok` once the leader added this node.
    outcome: Receiver<Result<(), String>>,
    /// Asks the helper to give up (the node stops).
    stop: Arc<AtomicBool>,
    added: bool,
}

impl Drop for Join {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
    }
}

/// Asks the cluster at `addresses` to add node `id` at `address`, until it answers or `stop`.
fn request_add(
    tls: Option<atoll_net::tls::TlsContext>,
    addresses: &[String],
    id: u64,
    address: &str,
    stop: &AtomicBool,
) -> Result<(), String> {
    let config = ClientConfig {
        connect_timeout: Duration::from_secs(1),
        request_timeout: Duration::from_secs(10),
        leader_timeout: Duration::from_secs(5),
        tls,
        ..ClientConfig::default()
    };
    let mut pause = Duration::from_millis(100);
    // Bounded by `stop`: the node sets it when it stops.
    while !stop.load(Ordering::SeqCst) {
        let attempt = (|| -> Result<Result<(), String>, ClientError> {
            let mut client = Client::connect(addresses, config.clone())?;
            let nodes = client.cluster()?;
            if let Some(node) = nodes.iter().find(|n| n.id == id) {
                return Ok(if node.address == address {
                    Ok(()) // Added already (an earlier answer was lost).
                } else {
                    Err(format!(
                        "node id {id} is already in the cluster at {}, not {address}",
                        node.address
                    ))
                });
            }
            if let Some(node) = nodes.iter().find(|n| n.address == address) {
                return Ok(Err(format!(
                    "address {address} is already node {}'s in the cluster",
                    node.id
                )));
            }
            client.add(id, address)?;
            Ok(Ok(()))
        })();
        match attempt {
            Ok(outcome) => return outcome,
            Err(e) => {
                warn!(
                    "asking {} to add this node: {e}; retrying",
                    addresses.join(",")
                );
                thread::sleep(pause);
                pause = (pause * 2).min(RETRY_PAUSE_MAX);
            }
        }
    }
    Err("stopped before the cluster answered".into())
}

impl Node {
    /// Starts the join helper if this node was prepared by `atoll join` and is not a member
    /// yet.
    pub(super) fn start_join(&mut self) -> Result<(), NodeError> {
        if self.config.join.is_empty() {
            return Ok(());
        }
        if self.is_member() {
            return self.join_done();
        }
        let (sender, outcome) = mpsc::channel();
        let stop = Arc::new(AtomicBool::new(false));
        let waker = self
            .reactor
            .waker()
            .map_err(|e| NodeError::Start(format!("creating the wake-up handle: {e}")))?;
        let (addresses, id, address) = (
            self.config.join.clone(),
            self.config.id,
            self.config.address.clone(),
        );
        let helper_stop = stop.clone();
        let tls = super::tls::load(&self.data_dir).map_err(NodeError::Start)?;
        info!(
            "joining the cluster at {}: asking its leader to add node {id} ({address})",
            addresses.join(",")
        );
        thread::Builder::new()
            .name("join".into())
            .spawn(move || {
                let result = request_add(tls, &addresses, id, &address, &helper_stop);
                let _ = sender.send(result);
                let _ = waker.wake();
            })
            .map_err(|e| NodeError::Start(format!("starting the join thread: {e}")))?;
        self.join = Some(Join {
            outcome,
            stop,
            added: false,
        });
        Ok(())
    }

    fn is_member(&self) -> bool {
        self.raft
            .configuration()
            .get(atoll_raft::NodeId(self.config.id))
            .is_some()
    }

    /// Once per turn: the helper's answer, and the end of the join when the configuration this
    /// node received names it.
    pub(super) fn join_step(&mut self) {
        let Some(join) = self.join.as_mut() else {
            return;
        };
        if !join.added {
            match join.outcome.try_recv() {
                Ok(Ok(())) => {
                    info!("the leader added this node as a spare; waiting for the log");
                    join.added = true;
                }
                Ok(Err(why)) => {
                    error!("cannot join the cluster: {why}");
                    self.join = None;
                    return;
                }
                Err(TryRecvError::Empty) => {}
                Err(TryRecvError::Disconnected) => {
                    error!("the join helper ended without an answer");
                    self.join = None;
                    return;
                }
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
