//! `atoll add`: the raw ADD request, for operators.

use super::{
    change_membership, configuration, connect, explain, parse_node_id, CliError, ClusterArgs,
};

/// Add a node to the cluster's configuration as a spare (raw ADD, for operators).
///
/// Asks the leader (ADD) to put node ID at ADDRESS into the Raft configuration as a spare; the
/// command returns once the change is committed. The node itself must be run with that id and
/// address (`atoll join` prepares a node and asks for this by itself; this command is for
/// repairs and scripts). Make it replicate and vote with `atoll assign --role voter`.
///
/// Example: atoll add --cluster 127.0.0.1:9001 --id 4 --address 127.0.0.1:9004
#[derive(clap::Args, Debug)]
#[command(verbatim_doc_comment)]
pub struct Args {
    #[command(flatten)]
    pub cluster: ClusterArgs,

    /// Id of the new node (decimal, or hexadecimal with 0x); unique in the cluster.
    #[arg(long, value_name = "N", value_parser = parse_node_id)]
    pub id: u64,

    /// Address the new node serves and advertises, exactly as clients will dial it.
    #[arg(long, value_name = "HOST:PORT", value_parser = super::parse_address)]
    pub address: String,
}

/// Runs `atoll add`.
pub fn run(args: Args) -> Result<(), CliError> {
    let mut client = connect(&args.cluster)?;
    let nodes = configuration(&mut client)?;
    if let Some(node) = nodes.iter().find(|n| n.id == args.id) {
        return Err(CliError::new(format!(
            "node id {} is already in the cluster, at {}; pick another id",
            node.id, node.address
        )));
    }
    if let Some(node) = nodes.iter().find(|n| n.address == args.address) {
        return Err(CliError::new(format!(
            "address {} is already node {}'s; remove that node first or pick another address",
            node.address, node.id
        )));
    }
    change_membership(&args.cluster, || client.add(args.id, &args.address)).map_err(|e| {
        CliError::new(format!(
            "adding node {} ({}): {}; `atoll cluster` shows whether it is a member",
            args.id,
            args.address,
            explain(&e)
        ))
    })?;
    println!(
        "added node {} ({}) as a spare; `atoll assign --id {} --role voter` makes it vote",
        args.id, args.address, args.id
    );
    Ok(())
}
