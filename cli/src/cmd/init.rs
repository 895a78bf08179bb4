//! `atoll init`: sets up the data directory of the first node of a new cluster.

use std::path::PathBuf;

use atoll_net::peer::ClusterSecret;

use super::CliError;
use atoll_node::secret::JoinToken;
use atoll_node::{self as node, config::NodeConfig};

/// Set up a new cluster of one voter: this node, in a new, empty data directory.
///
/// Writes DIR/atoll.conf (the node's id, its address, a random cluster id, and the timing and
/// role settings), DIR/cluster.secret (a random secret every node of the cluster proves it
/// holds before the others accept its messages; both files mode 0600) and a Raft log whose
/// first entry is the cluster configuration with this node as its only voter. Then run the
/// node with `atoll start --data-dir DIR`; add nodes with `atoll join --join-token TOKEN`: the
/// token is printed here, and again by `atoll token --data-dir DIR`. Keep it private.
///
/// The address is what the node listens on and what it tells clients and other nodes to dial:
/// write it exactly as clients will (127.0.0.1:9001, not localhost:9001 if they use the IP).
///
/// Example:
///   atoll init --data-dir /var/lib/atoll --address 127.0.0.1:9001
#[derive(clap::Args, Debug)]
#[command(verbatim_doc_comment)]
pub struct Args {
    /// The data directory to create (it must not exist, or be empty).
    #[arg(long, value_name = "DIR")]
    pub data_dir: PathBuf,

    /// The address to listen on and advertise, HOST:PORT.
    #[arg(long, value_name = "HOST:PORT")]
    pub address: String,

    /// This node's id in the cluster (any number but 0).
    #[arg(long, value_name = "N", default_value = "1", value_parser = super::parse_node_id)]
    pub id: u64,

    #[command(flatten)]
    pub settings: super::NodeSettings,
}

/// Runs `atoll init`.
pub fn run(args: Args) -> Result<(), CliError> {
    let mut config = NodeConfig::new(args.id, args.address.trim().to_owned());
    args.settings.apply(&mut config)?;
    let secret = ClusterSecret::generate()
        .map_err(|e| CliError::new(format!("drawing the cluster secret: {e}")))?;
    node::init(&args.data_dir, &config, &secret).map_err(|e| CliError::new(e.to_string()))?;
    let token = JoinToken {
        cluster_id: config.cluster_id,
        secret,
    };
    println!(
        "initialized node {} at {} in {} (a new cluster of one voter); run it with:\n  atoll \
         start --data-dir {}\njoin token (other nodes join with `atoll join --join-token \
         TOKEN`; keep it private; `atoll token --data-dir {}` prints it again):\n{}",
        config.id,
        config.address,
        args.data_dir.display(),
        args.data_dir.display(),
        args.data_dir.display(),
        token.to_text()
    );
    Ok(())
}
