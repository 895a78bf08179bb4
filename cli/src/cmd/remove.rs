//! `atoll remove`: takes a node out of the cluster's configuration.

use super::{
    change_membership, configuration, connect, explain, find_node, parse_node_id, CliError,
    ClusterArgs,
};

/// Remove a node from the cluster.
///
/// Asks the leader (REMOVE) to take node ID out of the Raft configuration; the command returns
/// once the change is committed. The node's process keeps running until it is stopped; its
/// data directory is no longer a member and should be deleted before the address is reused.
/// `atoll cluster` lists the ids.
///
/// Example: atoll remove --cluster 127.0.0.1:9001 --id 3297041220608546238
#[derive(clap::Args, Debug)]
#[command(verbatim_doc_comment)]
pub struct Args {
    #[command(flatten)]
    pub cluster: ClusterArgs,

    /// Id of the node to remove (decimal, or hexadecimal with 0x).
    #[arg(long, value_name = "N", value_parser = parse_node_id)]
    pub id: u64,
}

/// Runs `atoll remove`.
pub fn run(args: Args) -> Result<(), CliError> {
    let mut client = connect(&args.cluster)?;
    let nodes = configuration(&mut client)?;
    let node = find_node(&nodes, args.id, &args.cluster)?;
    if nodes.len() == 1 {
        return Err(CliError::new(format!(
            "node {} is the only node of the cluster: removing it would leave no cluster",
            node.id
        )));
    }
    change_membership(&args.cluster, || client.remove(node.id)).map_err(|e| {
        CliError::new(format!(
            "removing node {} ({}): {}; `atoll cluster` shows whether it is still a member",
            node.id,
            node.address,
            explain(&e)
        ))
    })?;
    println!(
        "removed node {} ({}) from the cluster; stop its process and delete its data directory",
        node.id, node.address
    );
    Ok(())
}
