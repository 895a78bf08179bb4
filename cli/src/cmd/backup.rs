//! `atoll backup`: a consistent SQLite file of a database, from the leader or a follower.

use std::fs::File;
use std::io::{self, IsTerminal, Write};
use std::path::PathBuf;

use atoll_net::client::{ClientError, Connection};
use atoll_net::protocol::{File as ProtocolFile, Role};

use super::dump::{check_target, dump_error, with_suffix, write_files};
use super::{configuration, connect, explain, CliError, ClusterArgs};
use atoll_node::database_header;

/// Back up a database of the cluster to a SQLite file.
///
/// Writes a self-contained SQLite file (`sqlite3 FILE` opens it) holding the database exactly as
/// one node has applied the log through one index: an atoll node builds the image inside its
/// event loop, between two applied entries, so no transaction is ever half in it. The image is
/// streamed to disk as it arrives (never whole in memory), with progress on a terminal. By default
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
    let nodes = configuration(&mut client)?;
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

/// Streams the DUMP answer of `connection` into a temporary file beside `output`, then checks
/// it and renames it over `output` (an atoll node sends an applied image; a WAL, from dqlite,
/// is applied in memory as `dump` does). Returns the line that says what was written.
fn stream_to(connection: &mut Connection, args: &Args) -> Result<String, CliError> {
    let output = &args.output;
    let temporary = with_suffix(output, &format!(".atoll-backup-{}.tmp", std::process::id()));
    let result = (|| {
        let mut file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(&temporary)
            .map_err(|e| CliError::new(format!("creating {}: {e}", temporary.display())))?;
        let terminal = io::stderr().is_terminal();
        let mut shown = 0;
        let mut progress = |done: u64, total: u64| {
            if terminal && (done - shown >= 1 << 20 || done == total) {
                shown = done;
                eprint!(
                    "\rbackup of {:?}: {} of {} MiB",
                    args.database,
                    done >> 20,
                    total.div_ceil(1 << 20)
                );
            }
        };
        let wal = {
            let mut writer = io::BufWriter::new(&mut file);
            let wal = connection
                .dump_to(&args.database, &mut writer, &mut progress)
                .map_err(|e: ClientError| dump_error(&args.database, e))?;
            writer
                .flush()
                .map_err(|e| CliError::new(format!("writing {}: {e}", temporary.display())))?;
            wal
        };
        if terminal {
            eprintln!();
        }
        let length = file
            .metadata()
            .map_err(|e| CliError::new(format!("reading {}: {e}", temporary.display())))?
            .len();
        if !wal.is_empty() || length == 0 {
            // dqlite's live WAL (or its empty answer to an unknown name): the in-memory path.
            drop(file);
            let main = std::fs::read(&temporary)
                .map_err(|e| CliError::new(format!("reading {}: {e}", temporary.display())))?;
            let files = vec![
                ProtocolFile {
                    name: args.database.clone(),
                    data: main,
                },
                ProtocolFile {
                    name: format!("{}-wal", args.database),
                    data: wal,
                },
            ];
            return write_files(&args.database, files, output);
        }
        let mut header = [0u8; database_header::HEADER_BYTES];
        let read = std::os::unix::fs::FileExt::read_at(&file, &mut header, 0)
            .map_err(|e| CliError::new(format!("reading {}: {e}", temporary.display())))?;
        let info = database_header::inspect_header(&header[..read], length).map_err(|e| {
            CliError::new(format!(
                "the dump of {:?} is not a valid database ({e}); nothing written",
                args.database
            ))
        })?;
        let install = || -> io::Result<()> {
            file.sync_all()?;
            std::fs::rename(&temporary, output)?;
            let directory = match output.parent() {
                Some(parent) if !parent.as_os_str().is_empty() => parent.to_path_buf(),
                _ => PathBuf::from("."),
            };
            File::open(directory)?.sync_all()
        };
        install().map_err(|e| {
            CliError::new(format!(
                "writing {}: {e}; it was left as it was",
                output.display()
            ))
        })?;
        Ok(format!(
            "wrote {}: {} pages of {} bytes ({length} bytes), streamed",
            output.display(),
            info.pages,
            info.page_bytes
        ))
    })();
    let _ = std::fs::remove_file(&temporary);
    result
}

/// Runs `atoll backup`.
pub fn run(args: Args) -> Result<(), CliError> {
    check_target(&args.output)?;
    let (mut connection, source) = if args.from_follower {
        let (connection, id, applied) = connect_follower(&args)?;
        (
            connection,
            format!("follower {id} (applied index {applied} or later)"),
        )
    } else {
        let mut client = connect(&args.cluster)?;
        let leader = client
            .leader()
            .map_err(|e| CliError::new(format!("asking for the leader: {}", explain(&e))))?;
        let Some((_, address)) = leader else {
            return Err(CliError::new("the cluster has no leader; try again"));
        };
        let connection = Connection::connect(&address, &args.cluster.client_config())
            .map_err(|e| CliError::new(format!("connecting to the leader: {}", explain(&e))))?;
        (connection, "the leader".to_owned())
    };
    let summary = stream_to(&mut connection, &args)?;
    println!("backup of {:?} from {source}: {summary}", args.database);
    Ok(())
}
