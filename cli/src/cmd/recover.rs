//! `atoll recover`: quorum-loss recovery on a stopped survivor.

use std::path::PathBuf;

use super::CliError;
use crate::node::recover;

/// Make the surviving nodes a cluster again after the majority is lost for good.
///
/// Run on ONE stopped survivor: it rewrites that node's configuration so that the nodes named
/// by --voters (this one among them; ids of the current configuration) are the only members,
/// all voters. It appends one configuration entry to the node's log in a new term; databases,
/// snapshots and the rest of the log are kept. Started again, the node elects itself (alone) or
/// is elected by the other named survivors, which are restarted unchanged: its log, ending in
/// the newest term, wins their votes, and they take the new configuration from it. Lost nodes
/// come back as new nodes: empty their data directories and `atoll join` them.
///
/// Pick the survivor with --inspect on each: the one with the highest last log term, then
/// index, holds every entry any survivor holds. Entries only the lost nodes held are lost.
/// Refused while the node runs (its data directory is locked). Never let a lost node come back
/// with its old log: it could elect itself in the old configuration.
///
/// Example: atoll recover --data-dir /var/lib/atoll --inspect
///          atoll recover --data-dir /var/lib/atoll --voters 3
///          atoll start --data-dir /var/lib/atoll
#[derive(clap::Args, Debug)]
#[command(verbatim_doc_comment)]
pub struct Args {
    /// The stopped node's data directory.
    #[arg(long, value_name = "DIR")]
    pub data_dir: PathBuf,

    /// Ids of the surviving nodes that form the cluster (this node among them), comma-separated.
    #[arg(
        long,
        value_name = "ID[,ID...]",
        value_delimiter = ',',
        value_parser = super::parse_node_id,
        required_unless_present = "inspect",
        conflicts_with = "inspect"
    )]
    pub voters: Vec<u64>,

    /// Print the node's last log index and term, term, vote and configuration; change nothing.
    #[arg(long)]
    pub inspect: bool,
}

/// Runs `atoll recover`.
pub fn run(args: Args) -> Result<(), CliError> {
    if args.inspect {
        let state = recover::inspect(&args.data_dir).map_err(CliError::new)?;
        println!("{}", state.describe());
        return Ok(());
    }
    let (before, configuration) =
        recover::recover(&args.data_dir, &args.voters).map_err(CliError::new)?;
    let removed: Vec<String> = before
        .configuration
        .members()
        .filter(|(id, _)| configuration.get(*id).is_none())
        .map(|(id, member)| format!("{} ({})", id.0, member.address))
        .collect();
    let voters: Vec<String> = configuration
        .members()
        .map(|(id, member)| format!("{} ({})", id.0, member.address))
        .collect();
    println!(
        "node {}: the configuration is now {} voter(s): {}; removed: {}. Start it with: atoll \
         start --data-dir {}",
        before.id,
        voters.len(),
        voters.join(", "),
        if removed.is_empty() {
            "none".to_owned()
        } else {
            removed.join(", ")
        },
        args.data_dir.display()
    );
    Ok(())
}
