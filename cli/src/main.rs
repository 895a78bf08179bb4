//! `atoll`: the command line of a distributed SQLite.
//!
//! The node commands (`init`, `join`, `start`, `demo`, `recover`) set up and run a node (the
//! `atoll-node` crate: the loop wiring the reactor, Raft, the log and the SQLite engine).
//!
//! The client commands (`shell`, `dump`, `backup`, `restore`, `verify`, `status`, `cluster`,
//! `add`, `assign`, `remove`, `transfer`) talk to a running cluster over dqlite's client wire
//! protocol through `atoll_net::client`; they work against atoll and dqlite nodes alike
//! (`restore`, `verify` and `status` need atoll nodes). They never touch SQLite: `dump` applies
//! the WAL itself (`atoll_core::wal`). Each subcommand lives in `cmd/<name>.rs` with its `Args`
//! and `run`.

#![forbid(unsafe_code)]

mod cmd;
mod output;

use std::process::ExitCode;

use clap::{ArgAction, Parser, Subcommand};

use cmd::CliError;

/// atoll: a distributed SQLite that speaks dqlite's client wire protocol.
///
/// Every client command takes --cluster HOST:PORT[,...]: the address of any node (or several);
/// the leader is found from them. Logs go to standard error: -v for debug, -vv for trace, or
/// RUST_LOG (e.g. RUST_LOG=atoll_net=debug).
#[derive(Parser, Debug)]
#[command(
    name = "atoll",
    version,
    propagate_version = true,
    arg_required_else_help = true
)]
struct Cli {
    /// More log output on standard error (-v debug, -vv trace); RUST_LOG applies otherwise.
    #[arg(short, long, global = true, action = ArgAction::Count)]
    verbose: u8,

    #[command(subcommand)]
    command: Command,
}

/// The subcommands. A new one is a variant here, an arm in `run`, and a module in `cmd/` whose
/// `Args` doc comment is its help (first line: the summary in `atoll --help`).
#[derive(Subcommand, Debug)]
enum Command {
    Init(cmd::init::Args),
    Join(cmd::join::Args),
    Token(cmd::token::Args),
    Start(cmd::start::Args),
    Demo(cmd::demo::Args),
    Shell(cmd::shell::Args),
    Dump(cmd::dump::Args),
    Backup(cmd::backup::Args),
    Restore(cmd::restore::Args),
    Verify(cmd::verify::Args),
    Status(cmd::status::Args),
    Cluster(cmd::cluster::Args),
    Add(cmd::add::Args),
    Assign(cmd::assign::Args),
    Remove(cmd::remove::Args),
    Transfer(cmd::transfer::Args),
    Cert(cmd::cert::Args),
    Recover(cmd::recover::Args),
}

impl Command {
    /// The log level when neither -v nor RUST_LOG says otherwise: client commands keep quiet
    /// unless something is wrong.
    fn log_level_default(&self) -> &'static str {
        match self {
            // A node says what it does: startup, elections, snapshots, errors.
            Command::Start(_) => "info",
            _ => "warn",
        }
    }
}

impl Command {
    /// The cluster a client command talks to.
    fn cluster_args(&mut self) -> Option<&mut cmd::ClusterArgs> {
        match self {
            Command::Shell(args) => Some(&mut args.cluster),
            Command::Dump(args) => Some(&mut args.cluster),
            Command::Backup(args) => Some(&mut args.cluster),
            Command::Restore(args) => Some(&mut args.cluster),
            Command::Verify(args) => Some(&mut args.cluster),
            Command::Status(args) => Some(&mut args.cluster),
            Command::Cluster(args) => Some(&mut args.cluster),
            Command::Add(args) => Some(&mut args.cluster),
            Command::Assign(args) => Some(&mut args.cluster),
            Command::Remove(args) => Some(&mut args.cluster),
            Command::Transfer(args) => Some(&mut args.cluster),
            _ => None,
        }
    }
}

fn run(mut command: Command) -> Result<(), CliError> {
    if let Some(cluster) = command.cluster_args() {
        cluster.check_tls()?;
    }
    match command {
        Command::Init(args) => cmd::init::run(args),
        Command::Join(args) => cmd::join::run(args),
        Command::Token(args) => cmd::token::run(args),
        Command::Start(args) => cmd::start::run(args),
        Command::Demo(args) => cmd::demo::run(args),
        Command::Shell(args) => cmd::shell::run(args),
        Command::Dump(args) => cmd::dump::run(args),
        Command::Backup(args) => cmd::backup::run(args),
        Command::Restore(args) => cmd::restore::run(args),
        Command::Verify(args) => cmd::verify::run(args),
        Command::Status(args) => cmd::status::run(args),
        Command::Cluster(args) => cmd::cluster::run(args),
        Command::Add(args) => cmd::add::run(args),
        Command::Assign(args) => cmd::assign::run(args),
        Command::Remove(args) => cmd::remove::run(args),
        Command::Transfer(args) => cmd::transfer::run(args),
        Command::Cert(args) => cmd::cert::run(args),
        Command::Recover(args) => cmd::recover::run(args),
    }
}

fn init_logging(verbose: u8, default_level: &str) {
    let mut builder = match verbose {
        0 => env_logger::Builder::from_env(
            env_logger::Env::default().default_filter_or(default_level),
        ),
        1 => {
            let mut builder = env_logger::Builder::new();
            builder.parse_filters("debug");
            builder
        }
        _ => {
            let mut builder = env_logger::Builder::new();
            builder.parse_filters("trace");
            builder
        }
    };
    builder.format_timestamp_millis().init();
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logging(cli.verbose, cli.command.log_level_default());
    match run(cli.command) {
        Ok(()) => ExitCode::SUCCESS,
        Err(CliError::Reported) => ExitCode::FAILURE,
        Err(CliError::Message(message)) => {
            eprintln!("error: {message}");
            ExitCode::FAILURE
        }
    }
}
