//! `atoll start`: runs a node in the foreground until SIGINT or SIGTERM.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM, SIGUSR1};
use signal_hook::iterator::Signals;

use super::{CliError, NodeSettings};
use atoll_node::config::NodeConfig;
use atoll_node::{Node, StartOptions};

/// Run a node in the foreground: serve clients on its address until SIGINT or SIGTERM.
///
/// The node recovers its data directory first (the Raft log, the last snapshot, the
/// databases, replaying committed entries the databases do not reflect yet), then serves
/// dqlite's client protocol: the dqlite shell, go-dqlite, the Python driver and `atoll shell`
/// all work against it. Every write goes through the Raft log and is synced to disk before it
/// is acknowledged (on a majority of the voters). Any node accepts clients: followers name
/// the leader, as dqlite's do. A node made by `atoll join` asks the cluster to add it at its
/// first start.
///
/// SIGINT or SIGTERM stop it cleanly; a leader first hands leadership to another voter (a
/// second signal stops it at once). SIGUSR1 writes the loop's timings (where writes' time
/// goes, the longest loop turns) to DIR/timings and resets them. Settings given here
/// (timing, roles) are written to DIR/atoll.conf and stay for later starts.
///
/// With TLS (DIR/cluster.crt, from `atoll init --tls`), SIGHUP reloads the certificate, key
/// and trust root: new connections use them, open ones drain (rotation without downtime).
///
/// A node that finds its log, a snapshot or a database damaged (at start, or SQLite answering
/// "malformed" while it serves; a leader hands over first) moves its data to
/// `DIR/quarantine/<time>/` (never deleted) and is rebuilt from the leader, in this process.
///
/// Logs go to standard error (RUST_LOG=debug for more, or -v).
///
/// Example:
///   atoll start --data-dir /var/lib/atoll --metrics-address 127.0.0.1:9101
#[derive(clap::Args, Debug)]
#[command(verbatim_doc_comment)]
pub struct Args {
    /// The data directory made by `atoll init` or `atoll join`.
    #[arg(long, value_name = "DIR")]
    pub data_dir: PathBuf,

    #[command(flatten)]
    pub settings: NodeSettings,

    /// Close a client connection idle this long (no request in flight); 0 keeps idle clients
    /// forever. Idle connections hold slots of the 1,024-client limit. Not kept.
    #[arg(long, value_name = "SECONDS", default_value_t = CLIENT_IDLE_TIMEOUT_S_DEFAULT)]
    pub client_idle_timeout: u64,

    /// Serve Prometheus metrics at http://HOST:PORT/metrics (plain HTTP/1.1, from the node's
    /// own event loop): Raft term, indexes, leadership, elections, peer lag, write latency,
    /// group commit sizes, log sync times, snapshots, databases, connections, memory. Not kept
    /// in atoll.conf. Example: --metrics-address 127.0.0.1:9101
    #[arg(long, value_name = "HOST:PORT")]
    pub metrics_address: Option<String>,

    /// A database found damaged again within this many seconds of a repair from peers (in
    /// this process) is not repaired again by itself: the damage then likely came from the
    /// leader's copy. Writes to it stay refused until an operator acts. Not kept.
    #[arg(long, value_name = "SECONDS", default_value_t = REPAIR_AGAIN_AFTER_S_DEFAULT)]
    pub repair_again_after: u64,

    /// Testing only: dial node ID at HOST:PORT instead of its address (tests route a node's
    /// outbound peer connections through fault-injecting proxies). Repeatable; not kept.
    #[arg(long, value_name = "ID=HOST:PORT", hide = true, value_parser = parse_route)]
    pub peer_route: Vec<(u64, String)>,
}

fn parse_route(text: &str) -> Result<(u64, String), String> {
    let (id, address) = text
        .split_once('=')
        .ok_or_else(|| format!("`{text}` is not ID=HOST:PORT"))?;
    Ok((super::parse_node_id(id)?, super::parse_address(address)?))
}

/// Default of --repair-again-after: ten minutes.
const REPAIR_AGAIN_AFTER_S_DEFAULT: u64 = 600;

/// Default of --client-idle-timeout: five minutes (the reactor's default).
const CLIENT_IDLE_TIMEOUT_S_DEFAULT: u64 = atoll_net::reactor::IDLE_TIMEOUT.as_secs();

/// Runs `atoll start`.
pub fn run(args: Args) -> Result<(), CliError> {
    if args.settings.any() {
        let mut config = NodeConfig::read(&args.data_dir).map_err(CliError::new)?;
        let before = config.clone();
        args.settings.apply(&mut config)?;
        if config != before {
            config
                .write(&args.data_dir)
                .map_err(|e| CliError::new(format!("writing {}: {e}", args.data_dir.display())))?;
            log::info!(
                "settings changed and kept in atoll.conf: tick {} ms, heartbeat {} ms, election \
                 timeout {} ms, roles {}, {} voters, {} standbys, unreachable after {} ms",
                config.tick_ms,
                config.heartbeat_ms(),
                config.election_timeout_ms(),
                if config.auto_roles { "auto" } else { "manual" },
                config.voters,
                config.standbys,
                config.unreachable_ms
            );
        }
    }
    let options = StartOptions {
        peer_routes: args.peer_route.into_iter().collect(),
        client_idle_timeout: (args.client_idle_timeout > 0)
            .then(|| std::time::Duration::from_secs(args.client_idle_timeout)),
        tls_reload: Arc::new(AtomicBool::new(false)),
        metrics_address: args.metrics_address,
        repair_again_after: Some(std::time::Duration::from_secs(args.repair_again_after)),
        snapshot_trailing_entries: None,
        log_segment_bytes: None,
    };
    let tls_reload = options.tls_reload.clone();
    let shutdown = Arc::new(AtomicBool::new(false));
    let mut node = Node::open(&args.data_dir, shutdown.clone(), options)
        .map_err(|e| CliError::new(e.to_string()))?;
    // The signal thread wakes and flags whichever node runs: a repair restarts the node in
    // place (a new reactor, a new timings flag), and the handles are swapped for the new ones.
    let handles = |node: &mut Node| -> Result<_, CliError> {
        let waker = node
            .waker()
            .map_err(|e| CliError::new(format!("creating the wake-up handle: {e}")))?;
        Ok((waker, node.timings_flag()))
    };
    let current = Arc::new(Mutex::new(handles(&mut node)?));
    let mut signals = Signals::new([SIGINT, SIGTERM, SIGUSR1, SIGHUP])
        .map_err(|e| CliError::new(format!("installing the signal handlers: {e}")))?;
    let signal_handles = current.clone();
    let stop_requested = shutdown.clone();
    std::thread::Builder::new()
        .name("signals".into())
        .spawn(move || {
            // The first signal asks the loop to stop; a second one (the stop hangs) ends the
            // process at once: every acknowledged write is durable already.
            // SIGUSR1 asks for the loop's timings (`DATA_DIR/timings`), SIGHUP for a TLS
            // reload; neither stops the node.
            for signal in signals.forever() {
                let handles = signal_handles.lock().unwrap_or_else(|e| e.into_inner());
                let (waker, timings) = &*handles;
                if signal == SIGUSR1 || signal == SIGHUP {
                    if signal == SIGHUP {
                        log::info!("SIGHUP: reloading the TLS files");
                        tls_reload.store(true, Ordering::SeqCst);
                    } else {
                        timings.store(true, Ordering::SeqCst);
                    }
                    if let Err(e) = waker.wake() {
                        log::error!("waking the node loop: {e}");
                    }
                    continue;
                }
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
    // Until a stop that is not for a repair: damage found while running (a corrupt database,
    // a REPAIR request) stops the loop, and the node is reopened in this process from an empty
    // log, its damaged data moved aside, to be rebuilt from the leader.
    loop {
        node.run().map_err(|e| CliError::new(e.to_string()))?;
        if !node.repair_requested() || stop_requested.load(Ordering::SeqCst) {
            // A signal while stopping for a repair: the operator's stop wins (damage found at
            // the next start is repaired then).
            break;
        }
        node = node
            .reopen_repaired()
            .map_err(|e| CliError::new(e.to_string()))?;
        *current.lock().unwrap_or_else(|e| e.into_inner()) = handles(&mut node)?;
    }
    Ok(())
}
