//! The node (`atoll init` / `atoll start` / `atoll demo`) as real processes on loopback, driven
//! by real dqlite clients. One test binary (its modules below) so the suite links once.
//!
//! - `t10_dqlite_shell`: go-dqlite's `dqlite` shell: types, NULLs, blobs, errors, 10,000 rows,
//!   `.cluster`, `.leader`, `.describe`, `.weight`, `.dump`.
//! - `t11_python`: dqlite-dbapi and sqlalchemy-dqlite (Python 3.13, `scripts/setup-test-deps`).
//! - `t12_captures`: dqlite 1.11's captured traffic replayed against atoll, with every
//!   intentional difference listed.
//! - `t13_commands`: `atoll demo`, `atoll init` refusals, a clean SIGTERM stop, a locked data
//!   directory.
//! - `t14_protocol`: membership requests on one node; a DUMP streamed in pieces.
//! - `t57_peer_auth`: forged peer traffic with and without the secret; idle clients vs peers.
//! - `t20_cluster`: three nodes from `atoll init` + `atoll join`, identical databases; failover
//!   under a write loop; a restarted node catches up.
//! - `t21_membership`: joins, promotions, removals (also the dqlite shell's `.remove`) and a
//!   transfer while a client writes; automatic roles; SIGTERM handover; follower reads; the
//!   Python client pointed at a follower.
//! - `t22_mixed_arch`: one native node and two of another architecture's build (under qemu,
//!   `ATOLL_PEER_BINARY`; ignored otherwise): entries and snapshots both ways, identical DUMPs.
//! - `t50_durability`: kill -9 and restart; a crash loop under concurrent writers.
//! - `t51_concurrency`: 64 concurrent writers, no "database is locked", group commit.
//! - `t55_cluster_faults`: an isolated leader (fault-injecting proxies between the nodes);
//!   a node back after log compaction catches up by snapshot.
//! - `t54_forged_peer_messages`: raft messages with out-of-range fields on the peer port are
//!   refused; the node stays up, unchanged.
//! - `t56_disk_full`: a node's data directory on a small tmpfs that fills up: writes refused
//!   with SQLITE_FULL, reads served, everything back once space is freed (root only).
//! - `t58_tls`: a TLS cluster (init --tls, joins) with the dqlite shell's -c/-k, failover and
//!   a snapshot catch-up over TLS; plaintext, untrusted certificates, handshake garbage
//!   refused; certificate rotation on SIGHUP under load.
//! - `t59_memory`: after 64 sessions wrote and read 12 MiB, the idle node's resident memory
//!   comes back to within 8 MiB of its start.
//! - `t52_bad_input`: malformed frames, wrong versions, oversized messages, unknown ids, while
//!   another client keeps being served.
//! - `t53_hardening`: an idle reader (no loop stall, rolled back past the limit), header-only
//!   requests under a 1 GiB address-space limit, too many parameters, database names under a
//!   low open-file limit, a corrupt page.
//! - `t60_operations`: `atoll backup` from the leader and from a follower; `atoll recover`
//!   after the loss of a majority.
//! - `t61_page_repair`: a damaged database page (found at start, a damaged header page, a
//!   "malformed" answer on the leader) repaired from peers without an operator.

#[path = "../support/mod.rs"]
mod support;

mod t10_dqlite_shell;
mod t11_python;
mod t12_captures;
mod t13_commands;
mod t14_protocol;
mod t15_session;
mod t20_cluster;
mod t21_membership;
mod t22_mixed_arch;
mod t50_durability;
mod t51_concurrency;
mod t52_bad_input;
mod t53_hardening;
mod t54_forged_peer_messages;
mod t55_cluster_faults;
mod t56_disk_full;
mod t57_peer_auth;
mod t58_tls;
mod t59_memory;
mod t60_operations;
mod t61_page_repair;
