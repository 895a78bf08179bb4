//! atoll-net: one mio reactor owning every socket and timer, the dqlite client wire protocol
//! (version 1), the peer transport, and a blocking Rust client.
//!
//! What it must never do: block the reactor thread, or let one connection grow the node's memory
//! without bound.

#![forbid(unsafe_code)]

pub mod capture;
pub mod protocol;

pub mod blocking;
pub mod reactor;

pub mod client;
mod conn;
pub mod fuzz;
