//! `atoll transfer`: hands leadership to another voter.

use atoll_net::client::ClientError;
use atoll_net::protocol::Role;

use super::{
    change_membership, configuration, configuration_error, connect, explain, find_node,
    parse_node_id, role_name, CliError, ClusterArgs,
};

/// Hand leadership to another voter.
///
/// Asks the leader (TRANSFER) to hand over to voter ID, or, without --id (or with 0), to the
/// voter it finds best. The command returns once the handover is done and prints the new
/// leader. Useful before stopping the leader's machine for maintenance.
///
/// Example: atoll transfer --cluster 127.0.0.1:9001 --id 3297041220608546238
#[derive(clap::Args, Debug)]
#[command(verbatim_doc_comment)]
pub struct Args {
    #[command(flatten)]
    pub cluster: ClusterArgs,

    /// Id of the voter to lead next (decimal, or hexadecimal with 0x); 0 or absent: the
    /// leader picks one.
    #[arg(long, value_name = "N", value_parser = parse_target)]
    pub id: Option<u64>,
}

fn parse_target(text: &str) -> Result<u64, String> {
    if text.trim() == "0" {
        return Ok(0);
    }
    parse_node_id(text)
}

/// Runs `atoll transfer`.
pub fn run(args: Args) -> Result<(), CliError> {
    let mut client = connect(&args.cluster)?;
    let configuration_error = |e: ClientError| configuration_error(&e);
    let nodes = configuration(&mut client)?;
    let (old_id, old_address) = client
        .leader()
        .map_err(configuration_error)?
        .ok_or_else(|| CliError::new("the leader no longer names itself; retry"))?;
    let target = args.id.unwrap_or(0);
    if target != 0 {
        let node = find_node(&nodes, target, &args.cluster)?;
        if node.id == old_id {
            println!("node {} ({}) is already the leader", node.id, node.address);
            return Ok(());
        }
        if node.role != Some(Role::Voter) {
            return Err(CliError::new(format!(
                "node {} ({}) is a {}: only voters can lead; make it one first with `atoll \
                 assign --id {} --role voter`",
                node.id,
                node.address,
                role_name(node.role),
                node.id
            )));
        }
    }
    change_membership(&args.cluster, || client.transfer(target)).map_err(|e| {
        CliError::new(format!(
            "transferring leadership from node {old_id} ({old_address}): {}",
            explain(&e)
        ))
    })?;
    match client.leader() {
        Ok(Some((id, address))) => {
            println!("leadership moved from node {old_id} ({old_address}) to node {id} ({address})")
        }
        _ => println!(
            "node {old_id} ({old_address}) handed leadership over; the new leader is not known \
             yet: see `atoll cluster`"
        ),
    }
    Ok(())
}
