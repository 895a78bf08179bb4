//! `atoll dump`: a consistent SQLite file of a database of the cluster, written atomically.

use std::fs;
use std::fs::File as FsFile;
use std::io::Write;
use std::path::{Path, PathBuf};

use atoll_net::client::ClientError;
use atoll_net::protocol::File;

use super::{connect, explain, CliError, ClusterArgs};
use atoll_core::wal;
use atoll_node::database_header;

/// dqlite's "database does not exist" answer to DUMP (newer servers).
const CODE_DATABASE_NOT_FOUND: u64 = 1002;

/// Write a database of the cluster to a SQLite file.
///
/// Asks the leader for the database (DUMP) and writes a consistent, self-contained SQLite file
/// that `sqlite3 FILE` opens. Servers answer with the main file and its write-ahead log (dqlite
/// 1.11 sends the log as it is; atoll and newer dqlite send an applied image and an empty log):
/// the committed transactions of the log are applied to the main file here, without SQLite,
/// checking the log's checksums as SQLite does. The file is written to a temporary file next to
/// FILE, synced, and renamed over FILE, so FILE is either the old one or the whole new one.
///
/// Example: atoll dump --cluster 127.0.0.1:9001 app -o app.db
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
}

/// `path` with `suffix` appended to its file name.
pub fn with_suffix(path: &Path, suffix: &str) -> PathBuf {
    let mut name = path.file_name().unwrap_or_default().to_os_string();
    name.push(suffix);
    path.with_file_name(name)
}

/// Writes `bytes` to `path` atomically: a temporary file in the same directory, fsync, rename,
/// fsync of the directory.
fn write_atomically(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let temporary = with_suffix(path, &format!(".atoll-dump-{}.tmp", std::process::id()));
    let result = (|| {
        let mut file = FsFile::create(&temporary)?;
        file.write_all(bytes)?;
        file.sync_all()?;
        drop(file);
        fs::rename(&temporary, path)?;
        let directory = match path.parent() {
            Some(parent) if !parent.as_os_str().is_empty() => parent.to_path_buf(),
            _ => PathBuf::from("."),
        };
        FsFile::open(directory)?.sync_all()
    })();
    if result.is_err() {
        let _ = fs::remove_file(&temporary);
    }
    result
}

/// Refuses a target whose `-wal` file is non-empty: SQLite would apply it to the new file.
pub fn check_target(output: &Path) -> Result<(), CliError> {
    // A log beside the target belongs to the file being replaced (or to a process that has it
    // open): SQLite would apply it to the new file and corrupt it.
    let stale_wal = with_suffix(output, "-wal");
    if fs::metadata(&stale_wal).is_ok_and(|m| m.len() > 0) {
        return Err(CliError::new(format!(
            "{} exists: {} is in use by SQLite or was not closed cleanly; close it or write to \
             another file",
            stale_wal.display(),
            output.display()
        )));
    }
    Ok(())
}

/// Turns a DUMP answer into `what` should be said of a failed DUMP.
pub fn dump_error(database: &str, e: ClientError) -> CliError {
    match e {
        ClientError::Failure { code, .. } if code == CODE_DATABASE_NOT_FOUND => CliError::new(
            format!("there is no database named {database:?} on the cluster"),
        ),
        other => CliError::new(format!("dumping {database:?}: {}", explain(&other))),
    }
}

/// Applies a DUMP answer's WAL to its main file, checks the image and writes it to `output`
/// atomically; returns the line that says what was written.
pub fn write_files(database: &str, files: Vec<File>, output: &Path) -> Result<String, CliError> {
    let mut files = files.into_iter();
    let (Some(main), wal_file) = (files.next(), files.next()) else {
        return Err(CliError::new(format!(
            "the node answered DUMP of {database:?} with no file"
        )));
    };
    let wal_bytes = wal_file.map(|f| f.data).unwrap_or_default();
    log::info!(
        "DUMP of {database:?}: main file {} bytes, WAL {} bytes",
        main.data.len(),
        wal_bytes.len()
    );
    if main.data.is_empty() && wal_bytes.is_empty() {
        // dqlite 1.11 answers an unknown name with two empty files, as it does for a database
        // that was opened but never written.
        return Err(CliError::new(format!(
            "the cluster has no data for database {database:?} (it does not exist, or nothing \
             was ever written to it); nothing written"
        )));
    }
    let mut image = main.data;
    let applied = wal::apply(&mut image, &wal_bytes).map_err(|e| {
        CliError::new(format!(
            "the dump of {database:?} is inconsistent: {e}; nothing written"
        ))
    })?;
    match applied.log.end {
        wal::LogEnd::Empty | wal::LogEnd::Clean => {}
        end => log::warn!("the WAL ends early ({end:?}); its valid committed frames were used"),
    }
    let info = database_header::inspect(&image).map_err(|e| {
        CliError::new(format!(
            "the dump of {database:?} is not a valid database ({e}); nothing written"
        ))
    })?;
    write_atomically(output, &image).map_err(|e| {
        CliError::new(format!(
            "writing {}: {e}; it was left as it was",
            output.display()
        ))
    })?;
    Ok(format!(
        "wrote {}: {} pages of {} bytes ({} bytes), {} committed WAL frames of {} transactions \
         applied",
        output.display(),
        info.pages,
        info.page_bytes,
        image.len(),
        applied.log.frames.len(),
        applied.log.commits
    ))
}

/// Runs `atoll dump`.
pub fn run(args: Args) -> Result<(), CliError> {
    check_target(&args.output)?;
    let mut client = connect(&args.cluster)?;
    let files = client
        .dump(&args.database)
        .map_err(|e| dump_error(&args.database, e))?;
    println!("{}", write_files(&args.database, files, &args.output)?);
    Ok(())
}
