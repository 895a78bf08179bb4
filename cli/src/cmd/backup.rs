//! `atoll backup`: a consistent SQLite file of a database, from the leader or a follower.

use std::path::PathBuf;

use atoll_net::client::{ClientError, Connection};
use atoll_net::protocol::Role;

use super::dump::{check_target, dump_error, write_files};
use super::{connect, explain, CliError, ClusterArgs};

/// Back up a database of the cluster to a SQLite file.
///
/// Writes a self-contained SQLite file (`sqlite3 FILE` opens it) holding the database exactly as
/// one node has applied the log through one index: an atoll node builds the image inside its
/// event loop, between two applied entries, so no transaction is ever half in it. By default
/// the leader serves it (the newest committed data); with --from-follower a reachable voter or
/// standby that does not lead serves it, sparing the leader the reads (its copy may lag the
/// leader by a few entries: the index it had applied is printed). The file is written to a
/// temporary file beside FILE, synced and renamed, so FILE is the old one or the whole new one.
///
/// Example: atoll backup --cluster 127.0.0.1:9001,127.0.0.1:9002 app -o app.db --from-follower
#[derive(clap::Args, Debug)]
#[command(verbatim_doc_comment)]
pub struct Args {
    #[command(flatten)]
    pub cluster: ClusterArgs,

    /// Name of the database (as given to OPEN, e.g. by `atoll shell --cluster … NAME`).
    #[arg(value_name = "DB")]
    pub database: String,

    /// The SQLite file to write (replaced if it exists).
    #[arg(short = 'o', long, value_name = "FILE")]
    pub output: PathBuf,

    /// Read the database from a follower (a voter or standby other than the leader) instead of
    /// the leader; fails when no follower answers.
    #[arg(long)]
    pub from_follower: bool,
}

/// Dials an atoll follower of the cluster: a voter or standby that is not the leader and
/// answers atoll's version word. Returns the connection, its id and its applied index.
fn connect_follower(args: &Args) -> Result<(Connection, u64, u64), CliError> {
    let mut client = connect(&args.cluster)?;
    let nodes = client.cluster().map_err(|e| {
        CliError::new(format!(
            "reading the cluster configuration: {}",
            explain(&e)
        ))
    })?;
    let leader = client
        .leader()
        .map_err(|e| CliError::new(format!("asking for the leader: {}", explain(&e))))?
        .map(|(id, _)| id);
    let config = args.cluster.client_config();
    let mut tried = Vec::new();
    for node in &nodes {
        if Some(node.id) == leader || !matches!(node.role, Some(Role::Voter | Role::Standby)) {
            continue;
        }
        let attempt = Connection::connect_atoll(&node.address, &config).and_then(|c| {
            let Some(mut connection) = c else {
                return Ok(None);
            };
            let metadata = connection.describe_v1()?;
            Ok(Some((connection, metadata)))
        });
        match attempt {
            Ok(Some((connection, metadata))) if metadata.state != 3 => {
                return Ok((connection, node.id, metadata.applied_index))
            }
            Ok(Some(_)) => tried.push(format!("{} (leads now)", node.address)),
            Ok(None) => tried.push(format!("{} (not an atoll node)", node.address)),
            Err(e) => tried.push(format!("{} ({})", node.address, explain(&e))),
        }
    }
    Err(CliError::new(if tried.is_empty() {
        "the cluster has no follower (voter or standby other than the leader) to back up from; \
         leave out --from-follower to read from the leader"
            .to_owned()
    } else {
        format!("no follower answered: {}", tried.join(", "))
    }))
}

/// Runs `atoll backup`.
pub fn run(args: Args) -> Result<(), CliError> {
    check_target(&args.output)?;
    let (files, source) = if args.from_follower {
        let (mut connection, id, applied) = connect_follower(&args)?;
        let files = connection
            .dump(&args.database)
            .map_err(|e: ClientError| dump_error(&args.database, e))?;
        (
            files,
            format!("follower {id} (applied index {applied} or later)"),
        )
    } else {
        let mut client = connect(&args.cluster)?;
        let files = client
            .dump(&args.database)
            .map_err(|e| dump_error(&args.database, e))?;
        (files, "the leader".to_owned())
    };
    let summary = write_files(&args.database, files, &args.output)?;
    println!("backup of {:?} from {source}: {summary}", args.database);
    Ok(())
}
