//! `atoll restore`: replace a database of the cluster with a SQLite file.

use std::fs::File;
use std::io::{self, IsTerminal, Read, Write};
use std::os::unix::fs::FileExt;
use std::path::PathBuf;

use super::dump::with_suffix;
use super::{connect, explain, CliError, ClusterArgs};
use crate::database_header;

/// Bytes sent per RESTORE piece (one Raft entry each).
const PIECE_BYTES: usize = 1 << 20;

/// Replace a database of the cluster with a SQLite file (e.g. one `atoll backup` wrote).
///
/// The file is checked first (a SQLite header, whole pages, a consistent page count; a file
/// that is not a database is refused and nothing changes), then sent to the leader in pieces
/// of 1 MiB, each one a Raft entry that every node stages on its disk; the last piece makes
/// every node swap the database at the same index, atomically: readers see the old database
/// or the new one, never a mix, and clients must open the database again. The file must not
/// have a non-empty `-wal` beside it (checkpoint it first: `sqlite3 FILE 'PRAGMA
/// wal_checkpoint(TRUNCATE)'`). Progress is shown on a terminal. If the leader changes midway
/// the pieces are sent again to the new one (a piece is idempotent).
///
/// Example: atoll restore --cluster 127.0.0.1:9001 app app-backup.db
#[derive(clap::Args, Debug)]
#[command(verbatim_doc_comment)]
pub struct Args {
    #[command(flatten)]
    pub cluster: ClusterArgs,

    /// Name of the database to replace (created if it does not exist).
    #[arg(value_name = "DB")]
    pub database: String,

    /// The SQLite file to restore.
    #[arg(value_name = "FILE")]
    pub file: PathBuf,
}

/// A random restore id: the clock and the process id are enough to tell restores apart.
fn restore_id() -> u64 {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64);
    nanos ^ (u64::from(std::process::id()) << 40) | 1
}

/// Runs `atoll restore`.
pub fn run(args: Args) -> Result<(), CliError> {
    let path = &args.file;
    let open = |e: io::Error| CliError::new(format!("reading {}: {e}", path.display()));
    let file = File::open(path).map_err(open)?;
    let total = file.metadata().map_err(open)?.len();
    let wal = with_suffix(path, "-wal");
    if std::fs::metadata(&wal).is_ok_and(|m| m.len() > 0) {
        return Err(CliError::new(format!(
            "{} is not empty: part of the database is still in its log; checkpoint it first \
             (sqlite3 {} 'PRAGMA wal_checkpoint(TRUNCATE)'); nothing changed",
            wal.display(),
            path.display()
        )));
    }
    let mut header = [0u8; database_header::HEADER_BYTES];
    let read = (&file)
        .take(header.len() as u64)
        .read(&mut header)
        .map_err(open)?;
    let info = database_header::inspect_header(&header[..read], total).map_err(|e| {
        CliError::new(format!(
            "{} is not a valid SQLite database ({e}); nothing changed",
            path.display()
        ))
    })?;
    let mut client = connect(&args.cluster)?;
    let id = restore_id();
    let progress = io::stderr().is_terminal();
    let mut buffer = vec![0u8; PIECE_BYTES];
    let mut offset = 0u64;
    while offset < total {
        let length = usize::try_from((total - offset).min(PIECE_BYTES as u64)).unwrap_or(0);
        let piece = &mut buffer[..length];
        file.read_exact_at(piece, offset).map_err(open)?;
        if offset == 0 {
            // Served in WAL mode, as every atoll database (file format bytes 18 and 19).
            piece[18] = 2;
            piece[19] = 2;
        }
        client
            .restore_piece(&args.database, id, offset, total, piece)
            .map_err(|e| {
                CliError::new(format!(
                    "restoring {:?} at byte {offset} of {total}: {}{}",
                    args.database,
                    explain(&e),
                    if offset + length as u64 == total {
                        ""
                    } else {
                        "; the database was not changed"
                    }
                ))
            })?;
        offset += length as u64;
        if progress {
            eprint!(
                "\rrestoring {:?}: {} of {} MiB",
                args.database,
                offset >> 20,
                total.div_ceil(1 << 20)
            );
            let _ = io::stderr().flush();
        }
    }
    if progress {
        eprintln!();
    }
    println!(
        "restored {:?} from {}: {} pages of {} bytes ({total} bytes)",
        args.database,
        path.display(),
        info.pages,
        info.page_bytes
    );
    Ok(())
}
