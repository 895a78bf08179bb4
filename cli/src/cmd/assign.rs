//! `atoll assign`: changes a node's role.

use atoll_net::protocol::Role;

use super::{
    change_membership, configuration, connect, explain, find_node, parse_node_id, role_name,
    CliError, ClusterArgs,
};

/// A role a node can be given.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum RoleArg {
    /// Replicates the log and votes; only voters can lead.
    Voter,
    /// Replicates the log, does not vote (ready to be promoted quickly).
    Standby,
    /// Does not replicate and does not vote.
    Spare,
}

impl From<RoleArg> for Role {
    fn from(role: RoleArg) -> Role {
        match role {
            RoleArg::Voter => Role::Voter,
            RoleArg::Standby => Role::Standby,
            RoleArg::Spare => Role::Spare,
        }
    }
}

/// Change a node's role.
///
/// Asks the leader (ASSIGN) to make node ID a voter, a standby or a spare; the command returns
/// once the change is committed (promotion to voter first waits for the node to catch up).
/// Note that a server that manages roles by itself (dqlite's app package, atoll's automatic
/// roles) may change the role again later to keep its target numbers of voters and standbys.
///
/// Example: atoll assign --cluster 127.0.0.1:9001 --id 3297041220608546238 --role voter
#[derive(clap::Args, Debug)]
#[command(verbatim_doc_comment)]
pub struct Args {
    #[command(flatten)]
    pub cluster: ClusterArgs,

    /// Id of the node (decimal, or hexadecimal with 0x).
    #[arg(long, value_name = "N", value_parser = parse_node_id)]
    pub id: u64,

    /// The new role.
    #[arg(long, value_name = "ROLE")]
    pub role: RoleArg,
}

/// Runs `atoll assign`.
pub fn run(args: Args) -> Result<(), CliError> {
    let mut client = connect(&args.cluster)?;
    let nodes = configuration(&mut client)?;
    let node = find_node(&nodes, args.id, &args.cluster)?;
    let role = Role::from(args.role);
    if node.role == Some(role) {
        println!(
            "node {} ({}) is already a {}; nothing to do",
            node.id,
            node.address,
            role_name(Some(role))
        );
        return Ok(());
    }
    change_membership(&args.cluster, || client.assign(node.id, role)).map_err(|e| {
        CliError::new(format!(
            "making node {} ({}) a {}: {}; `atoll cluster` shows its current role",
            node.id,
            node.address,
            role_name(Some(role)),
            explain(&e)
        ))
    })?;
    println!(
        "node {} ({}): {} -> {}",
        node.id,
        node.address,
        role_name(node.role),
        role_name(Some(role))
    );
    Ok(())
}
