//! `atoll`: the command line of a distributed SQLite.

#![forbid(unsafe_code)]

use clap::Parser;

/// atoll: a distributed SQLite that speaks dqlite's client wire protocol.
#[derive(Parser, Debug)]
#[command(version, about, long_about = None)]
struct Cli {}

fn main() {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info")).init();
    let _cli = Cli::parse();
    eprintln!("atoll: no node yet; see `atoll-bench storage` for the storage benchmark");
    std::process::exit(2);
}
