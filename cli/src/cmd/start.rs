//! `atoll start`: runs a node in the foreground until SIGINT or SIGTERM.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use signal_hook::consts::{SIGINT, SIGTERM};
use signal_hook::iterator::Signals;

use super::CliError;
use crate::node::Node;

/// Run a node in the foreground: serve clients on its address until SIGINT or SIGTERM.
///
/// The node recovers its data directory first (the Raft log, the last snapshot, the
/// databases, replaying committed entries the databases do not reflect yet), then serves
/// dqlite's client protocol: the dqlite shell, go-dqlite, the Python driver and `atoll shell`
/// all work against it. Every write goes through the Raft log and is synced to disk before it
/// is acknowledged. SIGINT or SIGTERM stop it cleanly (a second one stops it at once).
///
/// Logs go to standard error (RUST_LOG=debug for more, or -v).
///
/// Example:
///   atoll start --data-dir /var/lib/atoll
#[derive(clap::Args, Debug)]
#[command(verbatim_doc_comment)]
pub struct Args {
    /// The data directory made by `atoll init`.
    #[arg(long, value_name = "DIR")]
    pub data_dir: PathBuf,
}

/// Runs `atoll start`.
pub fn run(args: Args) -> Result<(), CliError> {
    let shutdown = Arc::new(AtomicBool::new(false));
    let mut node =
        Node::open(&args.data_dir, shutdown.clone()).map_err(|e| CliError::new(e.to_string()))?;
    let waker = node
        .waker()
        .map_err(|e| CliError::new(format!("creating the wake-up handle: {e}")))?;
    let mut signals = Signals::new([SIGINT, SIGTERM])
        .map_err(|e| CliError::new(format!("installing the signal handlers: {e}")))?;
    std::thread::Builder::new()
        .name("signals".into())
        .spawn(move || {
            // The first signal asks the loop to stop; a second one (the stop hangs) ends the
            // process at once: every acknowledged write is durable already.
            for signal in signals.forever() {
                if shutdown.swap(true, Ordering::SeqCst) {
                    log::warn!("signal {signal} again: exiting now");
                    std::process::exit(1);
                }
                log::info!("signal {signal}: stopping");
                if let Err(e) = waker.wake() {
                    log::error!("waking the node loop: {e}");
                }
            }
        })
        .map_err(|e| CliError::new(format!("starting the signal thread: {e}")))?;
    node.run().map_err(|e| CliError::new(e.to_string()))
}
