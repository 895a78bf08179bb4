//! `atoll token`: prints (or sets up) the join token of a node's cluster.

use std::path::PathBuf;

use atoll_net::peer::ClusterSecret;

use super::CliError;
use atoll_node::config::NodeConfig;
use atoll_node::secret::{self, JoinToken};

/// Print the join token of this node's cluster (what `atoll join --join-token` needs).
///
/// The token carries the cluster's id and secret: nodes prove to each other that they hold the
/// secret before any Raft message is accepted. Anyone holding the token can join the cluster:
/// keep it as private as the data directory.
///
/// Data directories made before nodes authenticated each other have no secret, and `atoll
/// start` refuses them. To upgrade such a cluster: stop it, run `atoll token --data-dir DIR
/// --generate` on one node (it prints the new token), then `atoll token --data-dir DIR --set
/// TOKEN` on every other node, and start them all.
///
/// Example:
///   atoll token --data-dir /var/lib/atoll
#[derive(clap::Args, Debug)]
#[command(verbatim_doc_comment)]
pub struct Args {
    /// The node's data directory.
    #[arg(long, value_name = "DIR")]
    pub data_dir: PathBuf,

    /// Draw a new secret for a data directory that has none (upgrading an older cluster).
    #[arg(long, conflicts_with = "set")]
    pub generate: bool,

    /// Store the secret of this token in a data directory that has none (the token must be of
    /// this node's cluster).
    #[arg(long, value_name = "TOKEN")]
    pub set: Option<String>,
}

/// Runs `atoll token`.
pub fn run(args: Args) -> Result<(), CliError> {
    let config = NodeConfig::read(&args.data_dir).map_err(CliError::new)?;
    let dir = &args.data_dir;
    let new_secret = if args.generate {
        Some(ClusterSecret::generate().map_err(|e| CliError::new(format!("drawing: {e}")))?)
    } else if let Some(text) = &args.set {
        let token = JoinToken::parse(text).map_err(CliError::new)?;
        if token.cluster_id != config.cluster_id {
            return Err(CliError::new(format!(
                "the token is for cluster {:016x}, this node belongs to cluster {:016x}",
                token.cluster_id, config.cluster_id
            )));
        }
        Some(token.secret)
    } else {
        None
    };
    if let Some(new_secret) = new_secret {
        if secret::has_secret(dir) {
            return Err(CliError::new(format!(
                "{} already has a cluster secret: `atoll token --data-dir {}` prints its token",
                dir.display(),
                dir.display()
            )));
        }
        secret::write_secret(dir, &new_secret)
            .map_err(|e| CliError::new(format!("writing the cluster secret: {e}")))?;
    }
    let secret = secret::read_secret(dir).map_err(CliError::new)?;
    let token = JoinToken {
        cluster_id: config.cluster_id,
        secret,
    };
    println!("{}", token.to_text());
    Ok(())
}
