//! The engine of one node: its public types and configuration, its state (databases, sessions,
//! each database's write slot), opening it, and what it reports about its databases. The rest
//! lives in one file per concern: `session.rs` (the clock, sessions, prepared statements),
//! `request.rs` (EXEC and QUERY), `queue.rs` (the write queue and group commit), `apply.rs`,
//! `checkpoint.rs`, `recovery.rs`, `install.rs` (what snapshots need), `closer.rs` and `idle.rs`
//! (idle databases), `limits.rs`.
//! See the crate documentation for the flow of a write.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use atoll_storage::Disk;

use crate::error::{EngineError, ExecError};
use crate::lifecycle::WriteState;
use crate::record::Record;
use crate::value::{Rows, Value};
use crate::vfs::{Conn, DbFiles, Vfs};

mod apply;
mod checkpoint;
mod closer;
mod idle;
mod install;
mod limits;
mod memory;
mod queue;
mod recovery;
mod request;
mod session;
use checkpoint::Checkpointer;
pub(crate) use idle::remove as remove_idle_marks;
pub(crate) use install::{SnapshotPart, SNAPSHOT_TEMP_SUFFIX};
pub(crate) use limits::DATABASES_TOTAL_MAX;
pub use limits::{DATABASES_MAX_DEFAULT, STATEMENT_BYTES_MAX_DEFAULT};
pub use memory::SQLITE_HEAP_SOFT_LIMIT_BYTES;
#[cfg(test)]
pub(crate) use recovery::empty_database_page;
pub use recovery::{DatabaseRecovery, Recovery};

/// A client session (one client connection of the protocol server).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SessionId(pub u64);

/// What a request runs: SQL text (one or more statements) or a prepared statement.
#[derive(Debug, Clone, Copy)]
pub enum Target<'a> {
    /// SQL text; parameters bind to its first statement.
    Sql(&'a str),
    /// A statement prepared on the session with [`Engine::prepare`].
    Statement(u32),
}

/// The result of a request.
#[derive(Debug, Clone, PartialEq)]
pub enum Response {
    /// A statement ran: the connection's last insert rowid and the rows it changed.
    Exec {
        /// `sqlite3_last_insert_rowid`.
        last_insert_id: i64,
        /// `sqlite3_changes64`.
        rows_changed: u64,
    },
    /// Rows of a query (a batch: see [`Rows::done`] and [`Engine::query_next`]).
    Rows(Rows),
}

/// What a request call returns at once.
#[derive(Debug, Clone, PartialEq)]
pub enum Reply {
    /// Finished: here is the response.
    Done(Response),
    /// Waiting for the database's write slot; the response comes later as a [`Completion`].
    Queued,
    /// Its frames were proposed as `proposal` (see [`Engine::take_proposals`]); the response
    /// comes as a [`Completion`] once the command is applied or discarded.
    Proposed {
        /// The proposal id.
        proposal: u64,
    },
}

/// A response that was not returned by the call that made the request.
#[derive(Debug)]
pub struct Completion {
    /// The session the response is for.
    pub session: SessionId,
    /// The response, or why the request failed.
    pub result: Result<Response, ExecError>,
}

/// A command the host must propose to Raft, then pass to [`Engine::apply`] once committed (or
/// report with [`Engine::discard`] if the proposal fails).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Proposal {
    /// The database it writes.
    pub database: String,
    /// The engine's id for it (also inside the command).
    pub id: u64,
    /// The encoded command ([`crate::command`]).
    pub command: Vec<u8>,
    /// The writes it carries (more than one: group commit).
    pub writes: usize,
    /// Commands of the same database in flight ahead of it when it ran (it was computed on top
    /// of them): 0 when it ran on the applied state.
    pub ahead: usize,
}

/// The engine's settings. Time values are in whatever unit the host passes to
/// [`Engine::set_time`] (milliseconds, ticks): the engine has no clock.
#[derive(Debug, Clone)]
pub struct EngineConfig {
    /// The directory holding the databases (the node holds its lock). It belongs to the engine:
    /// recovery removes SQLite files in it that have no checkpoint record.
    pub dir: PathBuf,
    /// This node's id, written into commands so the engine recognises its own proposals.
    pub node_id: u64,
    /// The page size of new databases.
    pub page_size: u32,
    /// The most bytes of frames one transaction may produce (default 64 MiB).
    pub transaction_bytes_max: usize,
    /// Page cache of each of the engine's own connections (one per open database, and
    /// snapshot readers), in KiB. Client sessions' connections keep SQLite's default, which
    /// the client may change; the soft heap limit bounds all of them together
    /// (`engine/memory.rs`).
    pub cache_kib: u32,
    /// The most writers queued per database.
    pub queue_max: usize,
    /// The longest a writer waits for the write slot before failing with a timeout.
    pub queue_wait_max: u64,
    /// The longest a writer waits while another session's explicit transaction holds the
    /// write slot before failing with SQLITE_BUSY "database is locked" (as SQLite and dqlite
    /// answer such a writer). Writers queued behind group commit never see it.
    pub transaction_wait_max: u64,
    /// The most queued autocommit writes committed together in one command.
    pub group_max: usize,
    /// The most commands of one database in flight (proposed, not yet applied): each next
    /// group of autocommit writers runs on top of the ones before it, and is proposed without
    /// waiting for their apply, once the host reported where the last one went in the log
    /// ([`Engine::proposed`]). 1: a group waits for the apply of the one before it.
    pub chain_max: usize,
    /// Checkpoint a database once its WAL holds this many frames.
    pub checkpoint_frames: u32,
    /// Up to this many frames more, drawn anew for every checkpoint (0: none). Nodes of a
    /// cluster apply the same entries, so without it they would all checkpoint (and stall
    /// their loops) in the same instant; with it, a leader keeps hearing from some follower.
    pub checkpoint_jitter_frames: u32,
    /// Seed of the generator behind `checkpoint_jitter_frames`: the engine has no randomness of
    /// its own, so one seed replays the same checkpoints (the host draws it; default: the node
    /// id, which already keeps the replicas of a cluster apart).
    pub checkpoint_jitter_seed: u64,
    /// The id of this engine's first proposal; later ones count up from it. A command carries
    /// its origin node and proposal id, and the engine knows its own commands by them, so an
    /// id must not repeat while a command of an earlier run of the same node may still be
    /// applied (proposed before a crash, committed after the restart): the host draws it at
    /// random for every open. Default 1.
    pub first_proposal: u64,
    /// Whether a checkpoint's durable half (fdatasync of the main file, then its record) runs
    /// on a helper thread instead of inside `apply`: the host's loop then stalls only for the
    /// copy, and takes the new checkpoint index from [`Engine::poll_checkpoints`]. Forced
    /// checkpoints, snapshots and closing wait for it. Off by default.
    pub checkpoint_sync_in_background: bool,
    /// Approximate bytes of values per row batch of a query.
    pub batch_bytes: usize,
    /// The most sessions.
    pub sessions_max: usize,
    /// The most prepared statements per session.
    pub statements_max: usize,
    /// The most bytes of SQL text a session keeps prepared (SQLite's compiled statements take
    /// a few times their text): past it, PREPARE fails with a limit error.
    pub statement_bytes_max: usize,
    /// The most databases open at once (each keeps two files and its control connection
    /// open); to open another, the least recently used idle one is closed
    /// (`engine/closer.rs`), and without one a session's OPEN fails with
    /// [`ExecError::TooManyDatabases`]. Commands from the leader always open their database.
    /// A node holds at most 4096 databases in all.
    pub databases_max: usize,
    /// A client transaction (read or write) open longer than this, in host time units, is
    /// rolled back by [`Engine::set_time`]; the session's next request on that database fails
    /// with [`ExecError::Aborted`]. 0: no limit.
    pub transaction_time_max: u64,
    /// Wall-clock budget for `PRAGMA quick_check` of the databases at [`Engine::open`]; a
    /// database whose check does not finish in what is left is not checked (logged).
    pub open_check_budget: std::time::Duration,
    /// Where the databases' files are: every file the engine and SQLite (through its VFS)
    /// touch goes through it. Default: the operating system's ([`atoll_storage::StdDisk`]).
    pub disk: Arc<dyn Disk>,
}

impl EngineConfig {
    /// Defaults for a node with data directory `dir` and id `node_id`.
    pub fn new(dir: impl Into<PathBuf>, node_id: u64) -> EngineConfig {
        EngineConfig {
            dir: dir.into(),
            node_id,
            page_size: 4096,
            transaction_bytes_max: 64 * 1024 * 1024,
            cache_kib: 256,
            queue_max: 4096,
            queue_wait_max: 10_000,
            transaction_wait_max: 500,
            group_max: 64,
            chain_max: 4,
            checkpoint_frames: 4096,
            checkpoint_jitter_frames: 0,
            checkpoint_jitter_seed: node_id,
            first_proposal: 1,
            checkpoint_sync_in_background: false,
            batch_bytes: 64 * 1024,
            sessions_max: 16 * 1024,
            statements_max: 1024,
            statement_bytes_max: limits::STATEMENT_BYTES_MAX_DEFAULT,
            databases_max: limits::DATABASES_MAX_DEFAULT,
            transaction_time_max: 0,
            open_check_budget: limits::OPEN_CHECK_BUDGET_DEFAULT,
            disk: atoll_storage::StdDisk::shared(),
        }
    }

    fn validate(&self) -> Result<(), EngineError> {
        if !self.page_size.is_power_of_two() || !(512..=65536).contains(&self.page_size) {
            return Err(EngineError::Config(
                "page_size must be a power of two in 512..=65536",
            ));
        }
        if self.transaction_bytes_max < 2 * self.page_size as usize {
            return Err(EngineError::Config(
                "transaction_bytes_max is below two pages",
            ));
        }
        if self.databases_max == 0 {
            return Err(EngineError::Config("databases_max >= 1"));
        }
        if self.group_max == 0
            || self.queue_max == 0
            || self.checkpoint_frames == 0
            || self.chain_max == 0
        {
            return Err(EngineError::Config(
                "group_max, queue_max, chain_max and checkpoint_frames >= 1",
            ));
        }
        Ok(())
    }
}

/// Statement id under which SQL-text statements are kept while they run.
const AD_HOC_STATEMENT: u32 = u32::MAX;

/// Who holds a database's write slot.
#[derive(Debug)]
enum Slot {
    /// Nobody: the next queued writer may go.
    Free,
    /// A session's explicit transaction, between its requests.
    Transaction(SessionId),
    /// Commands are out, oldest first (never empty, at most `chain_max`): each next one was
    /// computed on top of the one before it, and its members are answered when it is applied
    /// or discarded. A discarded link takes every link after it along.
    Chain(VecDeque<Link>),
}

/// A command in flight and the sessions it answers.
#[derive(Debug)]
struct Link {
    proposal: u64,
    members: Vec<Member>,
    /// Where the host put it in the log ([`Engine::proposed`]): the base index of the next
    /// link. A link is captured on top of another only once this is known.
    index: Option<u64>,
}

/// A session whose request ran in a chain: answered when the chain's command is applied (or
/// at once if the chain committed nothing). A request that failed after some of its statements
/// committed is a member too: its error is its answer, its committed statements stay.
#[derive(Debug)]
struct Member {
    session: SessionId,
    result: Result<Response, ExecError>,
}

/// Work waiting for the write slot: a request that runs on the session's own connection.
#[derive(Debug)]
struct Work {
    target: OwnedTarget,
    params: Vec<Value>,
    query: bool,
    /// Runs as a chain of its own: it may open a transaction (transaction control in its text,
    /// `BEGIN IMMEDIATE`, a write inside a read transaction).
    alone: bool,
}

#[derive(Debug, Clone)]
enum OwnedTarget {
    Sql(String),
    Statement(u32),
}

#[derive(Debug)]
struct Waiter {
    session: SessionId,
    work: Work,
    since: u64,
}

struct Database {
    path: PathBuf,
    files: Arc<DbFiles>,
    control: Conn,
    slot: Slot,
    /// Members of the chain a session transaction (holding `slot`) continues: answered with
    /// the chain's command once the transaction ends.
    chain_members: Vec<Member>,
    queue: VecDeque<Waiter>,
    /// The durable record as last written.
    record: Record,
    /// The last command applied (in memory; durable as of `record.checkpoint_index`).
    last_command_index: u64,
    /// Reads wait until the log is applied up to here (an interrupted checkpoint).
    recovering_until: u64,
    /// Cloned by live snapshot readers; checkpoints wait while any exists.
    snapshot_token: Arc<()>,
    /// The policy checkpoints once the WAL reaches this many frames; after an incomplete try
    /// (a reader still needs frames) it waits for a quarter of the policy more, so a long
    /// reader does not cost a record fsync on every apply.
    checkpoint_at_frames: u32,
    /// A checkpoint's sync and record are with the checkpointer thread: no record is written
    /// for this database, and no checkpoint started, until it answers.
    sync_pending: bool,
    /// When the session transaction holding `slot` took it (host time).
    transaction_since: u64,
    /// Why the database is known to be corrupt (an integrity check, or SQLITE_CORRUPT from a
    /// statement): writes to it are refused. Sticky until the engine is reopened.
    corrupt: Option<String>,
    /// The index an idle mark (`engine/idle.rs`) durably advanced this database's checkpoint
    /// index to (0: none); its on-disk record may be older.
    idle_mark: u64,
    /// Host time it was last opened by a session or written by `apply` (the idle closer
    /// closes the least recently used first).
    used_at: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Txn {
    None,
    /// A deferred transaction that has not written (no write slot).
    Read,
    /// A transaction holding the database's write slot.
    Write,
}

struct SessionDb {
    conn: Conn,
    txn: Txn,
    /// Host time at which the open transaction (`txn` not `None`) began.
    txn_since: u64,
    aborted: Option<String>,
}

struct Cursor {
    database: String,
    statement: u32,
}

struct Session {
    state: WriteState,
    databases: HashMap<String, SessionDb>,
    statements: HashMap<u32, String>,
    next_statement: u32,
    /// Bytes of SQL text of the statements it keeps prepared.
    statement_bytes: usize,
    cursor: Option<Cursor>,
}

static VFS_COUNTER: AtomicU64 = AtomicU64::new(0);

/// The replicated SQLite engine of one node.
///
/// Field order matters: connections (in `databases` and `sessions`) close before the VFS.
pub struct Engine {
    config: EngineConfig,
    sessions: HashMap<SessionId, Session>,
    databases: BTreeMap<String, Database>,
    next_session: u64,
    next_proposal: u64,
    /// Invariant: strictly increases with every `apply` / `note_applied`.
    applied_index: u64,
    now: u64,
    proposals: Vec<Proposal>,
    completions: Vec<Completion>,
    scratch: Vec<u8>,
    vfs: Arc<Vfs>,
    /// State of the generator behind `checkpoint_jitter_frames` (splitmix64).
    jitter_state: u64,
    /// With `checkpoint_sync_in_background`.
    checkpointer: Option<Checkpointer>,
    /// A checkpoint's fdatasync (of a main file or a record) failed: fatal, never retried
    /// (after a failed fsync the kernel may have dropped the dirty pages and marked them clean,
    /// so a later fsync that succeeds proves nothing). See [`Engine::sync_failure`].
    sync_failure: Option<String>,
    /// Databases a forced checkpoint found idle (nothing to copy, record behind): their
    /// checkpoint index advances together at the end of it.
    idle_found: Vec<String>,
    /// Databases closed while idle (`engine/closer.rs`); `databases` holds the open ones.
    closed: BTreeMap<String, closer::Closed>,
    /// Databases found corrupt and not yet reported (`Engine::take_corrupt_found`).
    corrupt_found: Vec<(String, String)>,
}

impl Engine {
    /// Opens the engine on `config.dir`, recovering every database found there: the WAL of each
    /// is dropped (it is never the durable copy) and its checkpoint index reported. The host
    /// then replays committed commands after [`Recovery::replay_from`] through [`Engine::apply`].
    pub fn open(config: EngineConfig) -> Result<(Engine, Recovery), EngineError> {
        config.validate()?;
        let config_seed = config.checkpoint_jitter_seed;
        let first_proposal = config.first_proposal;
        config.disk.create_dir_all(&config.dir)?;
        let dir = config.disk.canonicalize(&config.dir)?;
        let name = format!(
            "atoll-{}-{}",
            std::process::id(),
            VFS_COUNTER.fetch_add(1, Ordering::Relaxed)
        );
        memory::configure();
        let vfs = Arc::new(Vfs::register(&name, Arc::clone(&config.disk))?);
        let mut engine = Engine {
            config: EngineConfig { dir, ..config },
            sessions: HashMap::new(),
            databases: BTreeMap::new(),
            next_session: 1,
            next_proposal: first_proposal,
            applied_index: 0,
            now: 0,
            proposals: Vec::new(),
            completions: Vec::new(),
            scratch: Vec::new(),
            vfs,
            jitter_state: config_seed,
            checkpointer: None,
            sync_failure: None,
            idle_found: Vec::new(),
            closed: BTreeMap::new(),
            corrupt_found: Vec::new(),
        };
        if engine.config.checkpoint_sync_in_background {
            engine.checkpointer = Some(Checkpointer::start()?);
        }
        let recovery = engine.recover()?;
        engine.applied_index = recovery.replay_from().unwrap_or(0);
        Ok((engine, recovery))
    }

    /// The index the main file of `database` durably reflects.
    pub fn checkpoint_index(&self, database: &str) -> Option<u64> {
        match self.databases.get(database) {
            Some(db) => Some(db.record.checkpoint_index),
            None => Some(self.closed.get(database)?.record.checkpoint_index),
        }
    }

    /// The index of the last command applied to `database` (the base a new command for it
    /// must carry).
    pub fn last_command_index(&self, database: &str) -> Option<u64> {
        match self.databases.get(database) {
            Some(db) => Some(db.last_command_index),
            None => Some(self.closed.get(database)?.last_command_index),
        }
    }

    /// The minimum checkpoint index over all databases: Raft may compact its log up to it.
    pub fn min_checkpoint_index(&self) -> Option<u64> {
        let open = self.databases.values().map(|db| &db.record);
        let closed = self.closed.values().map(|closed| &closed.record);
        open.chain(closed)
            .map(|record| record.checkpoint_index)
            .min()
    }

    /// The names of the databases, in order.
    pub fn database_names(&self) -> Vec<String> {
        let mut names: Vec<String> = self.databases.keys().cloned().collect();
        names.extend(self.closed.keys().cloned());
        names.sort();
        names
    }

    /// How many databases are open now (at most `databases_max`, unless replicated writes
    /// needed more).
    pub fn open_database_count(&self) -> usize {
        self.databases.len()
    }

    /// Runs `PRAGMA integrity_check` on a database through its control connection; returns
    /// SQLite's report (`["ok"]` when healthy).
    pub fn integrity_check(&self, database: &str) -> Result<Vec<String>, ExecError> {
        let db = self
            .databases
            .get(database)
            .ok_or_else(|| ExecError::DatabaseNotOpen(database.to_string()))?;
        db.control.configure()?;
        let connection = db.control.connection();
        let mut statement = connection.prepare("PRAGMA integrity_check")?;
        let rows = statement.query_map([], |row| row.get::<_, String>(0))?;
        Ok(rows.collect::<Result<Vec<_>, _>>()?)
    }

    /// The path of a database's main file (for tests and tools).
    pub fn database_path(&self, database: &str) -> Option<&Path> {
        match self.databases.get(database) {
            Some(db) => Some(db.path.as_path()),
            None => Some(self.closed.get(database)?.path.as_path()),
        }
    }

    pub(crate) fn vfs(&self) -> &Arc<Vfs> {
        &self.vfs
    }

    pub(crate) fn cache_kib(&self) -> u32 {
        self.config.cache_kib
    }

    pub(crate) fn dir(&self) -> &Path {
        &self.config.dir
    }

    /// Where the databases' files are.
    pub(crate) fn disk(&self) -> &Arc<dyn Disk> {
        &self.config.disk
    }
}
