//! `atoll join`: prepares a node that joins an existing cluster.

use std::path::PathBuf;
use std::time::Duration;

use atoll_net::client::{ClientConfig, Connection};

use super::{explain, parse_address, parse_node_id, CliError, NodeSettings};
use crate::node::{self, config::NodeConfig};

/// Prepare a node that joins a running cluster.
///
/// Asks a node of the cluster (any of --cluster) for the cluster's id, checks that the id and
/// address are free, and sets up DIR: atoll.conf (with the cluster id and the addresses to
/// join through) and an empty Raft log. Then run it with `atoll start --data-dir DIR`: at its
/// first start it asks the leader to add it (as a spare, as dqlite does), the leader promotes it
/// as the cluster needs (automatic roles: 3 voters, then up to 3 standbys), and it catches up
/// from the log, or from a snapshot when the log was compacted.
///
/// The cluster must be running atoll (the cluster id comes from an atoll-specific request).
///
/// Example:
///   atoll join --data-dir /var/lib/atoll --address 127.0.0.1:9002 --cluster 127.0.0.1:9001
#[derive(clap::Args, Debug)]
#[command(verbatim_doc_comment)]
pub struct Args {
    /// The data directory to create (it must not exist, or be empty).
    #[arg(long, value_name = "DIR")]
    pub data_dir: PathBuf,

    /// The address to listen on and advertise, HOST:PORT (exactly as clients will dial it).
    #[arg(long, value_name = "HOST:PORT", value_parser = parse_address)]
    pub address: String,

    /// Addresses of one or more nodes of the cluster to join, comma-separated.
    #[arg(
        short = 'c',
        long,
        value_name = "HOST:PORT[,...]",
        value_delimiter = ',',
        required = true,
        value_parser = parse_address
    )]
    pub cluster: Vec<String>,

    /// This node's id (decimal, or hexadecimal with 0x); default: a random one.
    #[arg(long, value_name = "N", value_parser = parse_node_id)]
    pub id: Option<u64>,

    #[command(flatten)]
    pub settings: NodeSettings,
}

/// What `atoll join` learns from the cluster.
struct ClusterFacts {
    cluster_id: u64,
    members: Vec<(u64, String)>,
}

/// Asks the first atoll node of `addresses` that answers for the cluster id and members.
fn ask_cluster(addresses: &[String]) -> Result<ClusterFacts, CliError> {
    let config = ClientConfig {
        connect_timeout: Duration::from_secs(2),
        request_timeout: Duration::from_secs(5),
        ..ClientConfig::default()
    };
    let mut problems = Vec::new();
    for address in addresses {
        match Connection::connect_atoll(address, &config) {
            Ok(Some(mut connection)) => {
                let facts = connection.describe_v1().and_then(|metadata| {
                    let nodes = connection.cluster()?;
                    Ok(ClusterFacts {
                        cluster_id: metadata.cluster_id,
                        members: nodes.into_iter().map(|n| (n.id, n.address)).collect(),
                    })
                });
                match facts {
                    Ok(facts) => return Ok(facts),
                    Err(e) => problems.push(format!("{address}: {}", explain(&e))),
                }
            }
            Ok(None) => problems.push(format!(
                "{address} is not an atoll node (a dqlite node? atoll joins atoll clusters)"
            )),
            Err(e) => problems.push(format!("{address}: {}", explain(&e))),
        }
    }
    Err(CliError::new(format!(
        "cannot learn the cluster from {}: {}; is the cluster running (`atoll start`)?",
        addresses.join(","),
        problems.join("; ")
    )))
}

/// Runs `atoll join`.
pub fn run(args: Args) -> Result<(), CliError> {
    let address = args.address.trim().to_owned();
    let facts = ask_cluster(&args.cluster)?;
    let id = match args.id {
        Some(id) => id,
        // Random, non-zero, below 2^63 (some clients keep ids in signed integers).
        None => (node::config::random_u64() >> 1).max(2),
    };
    if let Some((_, at)) = facts.members.iter().find(|(member, _)| *member == id) {
        return Err(CliError::new(format!(
            "node id {id} is already in the cluster (at {at}); pick another --id"
        )));
    }
    if let Some((member, _)) = facts.members.iter().find(|(_, at)| *at == address) {
        return Err(CliError::new(format!(
            "address {address} is already node {member}'s; remove that node first (`atoll \
             remove`) or pick another address"
        )));
    }
    let mut config = NodeConfig::new(id, address);
    config.cluster_id = facts.cluster_id;
    config.join = args.cluster.clone();
    args.settings.apply(&mut config)?;
    node::prepare_join(&args.data_dir, &config).map_err(|e| CliError::new(e.to_string()))?;
    println!(
        "prepared node {id} at {} in {} to join the cluster {:016x} ({} member(s)); run it \
         with:\n  atoll start --data-dir {}",
        config.address,
        args.data_dir.display(),
        config.cluster_id,
        facts.members.len(),
        args.data_dir.display()
    );
    Ok(())
}
