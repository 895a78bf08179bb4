//! The engine: named databases, client sessions, the write queue with group commit, apply,
//! checkpoints and recovery. See the crate documentation for the flow of a write.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::fs;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{mpsc, Arc};
use std::thread::JoinHandle;

use byteorder::{BigEndian, ByteOrder};

use crate::command::{validate_database_name, Command, CommandHeader};
use crate::error::{Applied, EngineError, ExecError};
use crate::lifecycle::WriteState;
use crate::record::{self, Record};
use crate::sql;
use crate::value::{Rows, Value};
use crate::vfs::{Conn, DbFiles, DbOptions, FrameRef, RawStmt, Role, Step, Vfs};

mod closer;
mod idle;
mod limits;
pub(crate) use idle::remove as remove_idle_marks;
pub(crate) use limits::DATABASES_TOTAL_MAX;
pub use limits::{DATABASES_MAX_DEFAULT, STATEMENT_BYTES_MAX_DEFAULT};

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
    /// Page cache per connection, in KiB (kept small: one connection per client session).
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
            checkpoint_frames: 4096,
            checkpoint_jitter_frames: 0,
            checkpoint_jitter_seed: node_id,
            checkpoint_sync_in_background: false,
            batch_bytes: 64 * 1024,
            sessions_max: 16 * 1024,
            statements_max: 1024,
            statement_bytes_max: limits::STATEMENT_BYTES_MAX_DEFAULT,
            databases_max: limits::DATABASES_MAX_DEFAULT,
            transaction_time_max: 0,
            open_check_budget: limits::OPEN_CHECK_BUDGET_DEFAULT,
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
        if self.group_max == 0 || self.queue_max == 0 || self.checkpoint_frames == 0 {
            return Err(EngineError::Config(
                "group_max, queue_max and checkpoint_frames >= 1",
            ));
        }
        Ok(())
    }
}

/// What recovery found for one database.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DatabaseRecovery {
    /// The database.
    pub name: String,
    /// Its main file reflects the log up to this index: replay must start after it.
    pub checkpoint_index: u64,
    /// A checkpoint towards this index was interrupted: the database answers queries only once
    /// the log has been applied up to here (0: none).
    pub replay_through: u64,
}

/// What [`Engine::open`] found on disk.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Recovery {
    /// Every database, by name.
    pub databases: Vec<DatabaseRecovery>,
}

impl Recovery {
    /// The index after which the host must replay committed commands (the minimum checkpoint
    /// index), or `None` without databases.
    pub fn replay_from(&self) -> Option<u64> {
        self.databases.iter().map(|d| d.checkpoint_index).min()
    }
}

/// Capacity the apply buffer keeps between commands.
const SCRATCH_RETAINED_BYTES: usize = 2 * 1024 * 1024;

/// Statement id under which SQL-text statements are kept while they run.
const AD_HOC_STATEMENT: u32 = u32::MAX;

/// The bytes of a fresh, empty WAL-mode database page 1, identical on every node (it matches
/// what SQLite writes for `PRAGMA journal_mode=WAL` on a new file, with our version number).
pub(crate) fn empty_database_page(page_size: u32) -> Vec<u8> {
    let mut page = vec![0u8; page_size as usize];
    page[0..16].copy_from_slice(b"SQLite format 3\0");
    let size_code = if page_size == 65536 {
        1
    } else {
        page_size as u16
    };
    BigEndian::write_u16(&mut page[16..18], size_code);
    page[18] = 2; // write version: WAL
    page[19] = 2; // read version: WAL
    page[21] = 64;
    page[22] = 32;
    page[23] = 32;
    BigEndian::write_u32(&mut page[24..28], 1); // change counter
    BigEndian::write_u32(&mut page[28..32], 1); // pages
    BigEndian::write_u32(&mut page[92..96], 1); // version-valid-for
    BigEndian::write_u32(
        &mut page[96..100],
        rusqlite::ffi::SQLITE_VERSION_NUMBER as u32,
    );
    page[100] = 0x0d; // an empty table b-tree leaf: sqlite_schema
    let content = if page_size == 65536 {
        0
    } else {
        page_size as u16
    };
    BigEndian::write_u16(&mut page[105..107], content);
    page
}

/// Who holds a database's write slot.
#[derive(Debug)]
enum Slot {
    /// Nobody: the next queued writer may go.
    Free,
    /// A session's explicit transaction, between its requests.
    Transaction(SessionId),
    /// A command is out; its members are answered when it is applied or discarded.
    Proposed { proposal: u64, members: Vec<Member> },
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

/// The durable half of one checkpoint, for the checkpointer thread.
struct SyncJob {
    database: String,
    main: fs::File,
    path: PathBuf,
    record: Record,
}

/// The checkpointer thread's answer: the record now durable, or why not.
struct SyncDone {
    database: String,
    result: std::io::Result<Record>,
}

/// The checkpointer thread: fdatasyncs a main file, then writes its record, in order.
struct Checkpointer {
    jobs: Option<mpsc::Sender<SyncJob>>,
    done: mpsc::Receiver<SyncDone>,
    thread: Option<JoinHandle<()>>,
}

impl Checkpointer {
    fn start() -> Result<Checkpointer, EngineError> {
        let (jobs, job_rx) = mpsc::channel::<SyncJob>();
        let (done_tx, done) = mpsc::channel();
        let thread = std::thread::Builder::new()
            .name("atoll-checkpoint".into())
            .spawn(move || {
                for job in job_rx {
                    // The record may name the new index only once the pages it covers are
                    // durable in the main file.
                    let result = job
                        .main
                        .sync_data()
                        .and_then(|()| record::write(&job.path, &job.record));
                    let answer = SyncDone {
                        database: job.database,
                        result,
                    };
                    if done_tx.send(answer).is_err() {
                        return;
                    }
                }
            })?;
        Ok(Checkpointer {
            jobs: Some(jobs),
            done,
            thread: Some(thread),
        })
    }
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

impl Drop for Engine {
    fn drop(&mut self) {
        self.wait_checkpoints();
        if let Some(mut checkpointer) = self.checkpointer.take() {
            checkpointer.jobs = None;
            if let Some(thread) = checkpointer.thread.take() {
                let _ = thread.join();
            }
        }
    }
}

fn io_exec(error: std::io::Error) -> ExecError {
    ExecError::Io(error)
}

fn misuse(message: &str) -> ExecError {
    ExecError::Sqlite(rusqlite::Error::SqliteFailure(
        rusqlite::ffi::Error::new(rusqlite::ffi::SQLITE_MISUSE),
        Some(message.to_string()),
    ))
}

/// The error of an EXEC whose statement yields rows (the newest dqlite's code and text).
fn rows_in_exec() -> ExecError {
    ExecError::Sqlite(rusqlite::Error::SqliteFailure(
        rusqlite::ffi::Error::new(rusqlite::ffi::SQLITE_ERROR),
        Some("rows yielded when none expected for EXEC request".to_string()),
    ))
}

fn collect_rows(
    statement: &mut RawStmt,
    query: bool,
    batch: Option<usize>,
    conn_result: impl Fn() -> (i64, u64),
) -> Result<(Response, bool), ExecError> {
    let columns = statement.column_count();
    let mut rows = Rows::default();
    if query {
        rows.columns = (0..columns).map(|i| statement.column_name(i)).collect();
        rows.declared_types = (0..columns).map(|i| statement.column_decltype(i)).collect();
    }
    let mut bytes = 0usize;
    loop {
        match statement.step() {
            Ok(Step::Row) => {
                if !query {
                    // As the newest dqlite answers: EXEC is for statements without rows.
                    statement.reset();
                    return Err(rows_in_exec());
                }
                for column in 0..columns {
                    let value = statement.column_value(column);
                    bytes += value.size_bytes();
                    rows.values.push(value);
                }
                if batch.is_some_and(|limit| bytes >= limit) {
                    return Ok((Response::Rows(rows), true));
                }
            }
            Ok(Step::Done) => break,
            Err(error) => {
                statement.reset();
                return Err(error.into());
            }
        }
    }
    statement.reset();
    if query {
        rows.done = true;
        return Ok((Response::Rows(rows), false));
    }
    let (last_insert_id, rows_changed) = conn_result();
    Ok((
        Response::Exec {
            last_insert_id,
            rows_changed,
        },
        false,
    ))
}

/// Runs `target` on `conn`: every statement of SQL text in order (parameters bind to the
/// first), or a prepared statement. A read query returns its first batch and may leave a cursor
/// (the bool); other statements run to completion.
fn run_target(
    conn: &mut Conn,
    target: &OwnedTarget,
    params: &[Value],
    query: bool,
    batch: Option<usize>,
) -> Result<(Response, bool), ExecError> {
    let connection_result = |conn: &Conn| (conn.last_insert_rowid(), conn.changes());
    match target {
        OwnedTarget::Statement(id) => {
            let statement = conn.kept(*id).ok_or(ExecError::UnknownStatement(*id))?;
            let batch = if statement.readonly() { batch } else { None };
            statement
                .bind_all(params)
                .inspect_err(|_| statement.reset())?;
            let outcome = collect_rows(statement, query, batch, || (0, 0))?;
            Ok(fill_exec(outcome, connection_result(conn)))
        }
        OwnedTarget::Sql(text) if batch.is_none() && conn.is_cached(text) => {
            // A single statement this connection ran before: no parsing again (the hot path of
            // autocommit writes).
            let statement = conn.cached(text)?;
            statement
                .bind_all(params)
                .inspect_err(|_| statement.reset())?;
            let outcome = collect_rows(statement, query, None, || (0, 0))?;
            Ok(fill_exec(outcome, connection_result(conn)))
        }
        OwnedTarget::Sql(text) => {
            let mut offset = 0;
            let mut first = true;
            let mut last = (
                Response::Exec {
                    last_insert_id: conn.last_insert_rowid(),
                    rows_changed: 0,
                },
                false,
            );
            while offset < text.len() {
                let (statement, used) = conn.prepare_one(&text[offset..])?;
                offset += used.max(1);
                let Some(statement) = statement else {
                    break;
                };
                let is_last = text[offset.min(text.len())..]
                    .trim_matches(|c: char| c.is_whitespace() || c == ';')
                    .is_empty();
                if first && is_last && batch.is_none() {
                    conn.cache(text, statement);
                    return run_target(conn, target, params, query, batch);
                }
                conn.keep(AD_HOC_STATEMENT, statement);
                let statement = conn.kept(AD_HOC_STATEMENT).expect("just kept");
                let batch = if is_last && statement.readonly() {
                    batch
                } else {
                    None
                };
                let values: &[Value] = if first { params } else { &[] };
                first = false;
                statement
                    .bind_all(values)
                    .inspect_err(|_| statement.reset())?;
                let outcome = collect_rows(statement, query, batch, || (0, 0));
                let outcome = match outcome {
                    Ok(outcome) => outcome,
                    Err(error) => {
                        conn.forget(AD_HOC_STATEMENT);
                        return Err(error);
                    }
                };
                last = fill_exec(outcome, connection_result(conn));
                if last.1 {
                    // A cursor stays open on the ad-hoc statement.
                    return Ok(last);
                }
                conn.forget(AD_HOC_STATEMENT);
            }
            Ok(last)
        }
    }
}

fn fill_exec(outcome: (Response, bool), result: (i64, u64)) -> (Response, bool) {
    match outcome {
        (Response::Exec { .. }, more) => (
            Response::Exec {
                last_insert_id: result.0,
                rows_changed: result.1,
            },
            more,
        ),
        other => other,
    }
}

impl Engine {
    /// Opens the engine on `config.dir`, recovering every database found there: the WAL of each
    /// is dropped (it is never the durable copy) and its checkpoint index reported. The host
    /// then replays committed commands after [`Recovery::replay_from`] through [`Engine::apply`].
    pub fn open(config: EngineConfig) -> Result<(Engine, Recovery), EngineError> {
        config.validate()?;
        let config_seed = config.checkpoint_jitter_seed;
        fs::create_dir_all(&config.dir)?;
        let dir = fs::canonicalize(&config.dir)?;
        let name = format!(
            "atoll-{}-{}",
            std::process::id(),
            VFS_COUNTER.fetch_add(1, Ordering::Relaxed)
        );
        let vfs = Arc::new(Vfs::register(&name)?);
        let mut engine = Engine {
            config: EngineConfig { dir, ..config },
            sessions: HashMap::new(),
            databases: BTreeMap::new(),
            next_session: 1,
            next_proposal: 1,
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

    fn recover(&mut self) -> Result<Recovery, EngineError> {
        let mut names = Vec::new();
        let mut others = Vec::new();
        for entry in fs::read_dir(&self.config.dir)? {
            let entry = entry?;
            let file_name = entry.file_name();
            let Some(file_name) = file_name.to_str() else {
                continue;
            };
            if file_name.ends_with(record::RECORD_TEMP_SUFFIX)
                || file_name.ends_with(SNAPSHOT_TEMP_SUFFIX)
            {
                fs::remove_file(entry.path())?;
            } else if let Some(name) = file_name.strip_suffix(record::RECORD_SUFFIX) {
                names.push(name.to_string());
            } else if !file_name.ends_with(crate::vfs::WAL_SUFFIX) {
                others.push(file_name.to_string());
            }
        }
        names.sort();
        for other in others {
            let path = self.config.dir.join(&other);
            if validate_database_name(&other).is_ok()
                && !names.contains(&other)
                && is_sqlite_file(&path)
            {
                // Created without its record: the creation never became durable, and no
                // checkpoint can have passed the command that created it.
                log::warn!("removing database {other:?}: it has no checkpoint record");
                fs::remove_file(&path)?;
                let _ = fs::remove_file(crate::vfs::wal_path_of(&path));
            }
        }
        let marks = idle::read(&self.config.dir)?;
        let mut recovery = Recovery::default();
        let check_deadline = std::time::Instant::now() + self.config.open_check_budget;
        let mut unchecked = 0usize;
        for name in names {
            let path = self.config.dir.join(&name);
            let record = record::read(&path)?.expect("listed above");
            // Drop the WAL: committed frames come back from the Raft log.
            match fs::OpenOptions::new()
                .write(true)
                .open(crate::vfs::wal_path_of(&path))
            {
                Ok(file) => {
                    file.set_len(0)?;
                    file.sync_all()?;
                }
                Err(error) if error.kind() == std::io::ErrorKind::NotFound => {}
                Err(error) => return Err(error.into()),
            }
            let main_len = fs::metadata(&path).map(|m| m.len()).unwrap_or(0);
            if main_len < u64::from(record.page_size) {
                // Only a database that never held a command may lack its file: created (record
                // first) or being installed from a snapshot (record checkpoint index 0).
                let never_written = record.last_command_index == 0
                    && (record.intent_index == 0 || record.checkpoint_index == 0);
                if !never_written {
                    return Err(EngineError::CorruptRecord(format!(
                        "{}: database file missing or truncated",
                        path.display()
                    )));
                }
                match write_empty_database(&path, record.page_size) {
                    Ok(()) => {}
                    Err(error) if record.intent_index == 0 && is_disk_full(&error) => {
                        // A creation that never finished, on a full disk: undone as a failed
                        // creation is (the node still starts). No command reached it, and no
                        // database was checkpointed past the one that created it: replay
                        // creates it again, as a session's OPEN does, once space is back.
                        let _ = fs::remove_file(&path);
                        let _ = fs::remove_file(crate::vfs::wal_path_of(&path));
                        record::remove(&path)?;
                        log::warn!(
                            "database {name:?}: no room for its empty file ({error}); not \
                             created (created again when used)"
                        );
                        continue;
                    }
                    Err(error) => {
                        let _ = fs::remove_file(&path);
                        return Err(error.into());
                    }
                }
            }
            let on_disk = record.checkpoint_index;
            let record = idle::apply_mark(record, marks.get(&name).copied());
            let replay_through = if record.intent_index > record.checkpoint_index {
                record.intent_index
            } else {
                0
            };
            let idle_mark = if record.checkpoint_index > on_disk {
                record.checkpoint_index
            } else {
                0
            };
            if replay_through == 0 && self.databases.len() >= self.config.databases_max {
                // Past the limit of open databases: opened when first used.
                let closed = closer::Closed {
                    path: self.config.dir.join(&name),
                    record,
                    last_command_index: record.last_command_index,
                    idle_mark,
                    snapshot_token: Arc::new(()),
                    corrupt: None,
                };
                self.closed.insert(name.clone(), closed);
                unchecked += 1;
            } else {
                match self.attach_database(&name, record, replay_through) {
                    Err(EngineError::Sqlite(error)) if limits::is_sqlite_corruption(&error) => {
                        // Its header page (or one read to open it) is damaged: nothing here can
                        // serve it; the host repairs the node from its peers.
                        return Err(EngineError::CorruptDatabase {
                            database: name,
                            reason: error.to_string(),
                        });
                    }
                    other => other?,
                }
                self.databases.get_mut(&name).expect("attached").idle_mark = idle_mark;
                // A database mid-recovery holds a mix of states until replay: not checked.
                if replay_through == 0 && !self.check_at_open(&name, check_deadline) {
                    unchecked += 1;
                }
            }
            log::info!(
                "database {name:?}: checkpoint index {}, replay through {replay_through}",
                record.checkpoint_index
            );
            recovery.databases.push(DatabaseRecovery {
                name,
                checkpoint_index: record.checkpoint_index,
                replay_through,
            });
        }
        if unchecked > 0 {
            log::info!(
                "{unchecked} database(s) not quick_checked at open: the budget of {:?} ran out",
                self.config.open_check_budget
            );
        }
        Ok(recovery)
    }

    /// Opens the files and connections of an existing database.
    fn attach_database(
        &mut self,
        name: &str,
        record: Record,
        recovering_until: u64,
    ) -> Result<(), EngineError> {
        let path = self.config.dir.join(name);
        let options = DbOptions {
            page_size: record.page_size,
            capture_bytes_max: self.config.transaction_bytes_max,
        };
        let files = self.vfs.add_database(&path, options)?;
        let control = match Conn::open(&self.vfs, &path, Role::Plain, self.config.cache_kib) {
            Ok(connections) => connections,
            Err(error) => {
                self.vfs.remove_database(&path);
                return Err(error.into());
            }
        };
        let checkpoint_at_frames = self.next_checkpoint_frames();
        self.databases.insert(
            name.to_string(),
            Database {
                path,
                files,
                control,
                slot: Slot::Free,
                chain_members: Vec::new(),
                queue: VecDeque::new(),
                record,
                last_command_index: record.last_command_index,
                recovering_until,
                snapshot_token: Arc::new(()),
                checkpoint_at_frames,
                sync_pending: false,
                transaction_since: 0,
                corrupt: None,
                idle_mark: 0,
                used_at: self.now,
            },
        );
        Ok(())
    }

    /// Creates a new, empty database that reflects the log up to `created_at`. The record is
    /// made durable before the main file, so a database file without a record never holds data.
    fn create_database(&mut self, name: &str, created_at: u64) -> Result<(), EngineError> {
        assert!(validate_database_name(name).is_ok());
        assert!(!self.databases.contains_key(name));
        let path = self.config.dir.join(name);
        let record = Record {
            page_size: self.config.page_size,
            checkpoint_index: created_at,
            last_command_index: 0,
            intent_index: 0,
            sequence: 0,
        };
        let record = record::write(&path, &record)?;
        let _ = fs::remove_file(crate::vfs::wal_path_of(&path));
        let written = write_empty_database(&path, record.page_size)
            .and_then(|()| record::sync_dir(&self.config.dir));
        if let Err(error) = written {
            // A full disk, typically: nothing half-made stays (the main file first: a crash in
            // between leaves a record alone, which open turns into the same empty database),
            // and the same name can be created once space is freed.
            let _ = fs::remove_file(&path);
            let _ = record::remove(&path);
            return Err(error.into());
        }
        log::info!("created database {name:?} at index {created_at}");
        self.attach_database(name, record, 0)
    }

    // ---- time, sessions, statements -------------------------------------------------------

    /// Tells the engine the host's current time and fails queued writers that waited longer
    /// than `queue_wait_max`, or longer than `transaction_wait_max` behind another session's
    /// explicit transaction (their completions come out of [`Engine::take_completions`]).
    pub fn set_time(&mut self, now: u64) {
        self.now = now;
        let wait_max = self.config.queue_wait_max;
        let transaction_wait_max = self.config.transaction_wait_max;
        let mut expired = Vec::new();
        for database in self.databases.values_mut() {
            let held_since = match database.slot {
                Slot::Transaction(_) => Some(database.transaction_since),
                _ => None,
            };
            database.queue.retain(|waiter| {
                let waited = now.saturating_sub(waiter.since);
                if waited >= wait_max {
                    expired.push((waiter.session, ExecError::Timeout { waited }));
                    return false;
                }
                if let Some(held_since) = held_since {
                    let behind = now.saturating_sub(waiter.since.max(held_since));
                    if behind >= transaction_wait_max {
                        expired.push((waiter.session, ExecError::Locked { waited: behind }));
                        return false;
                    }
                }
                true
            });
        }
        for (session, error) in expired {
            self.complete(session, Err(error));
        }
        self.expire_transactions();
    }

    /// Opens a session.
    pub fn open_session(&mut self) -> Result<SessionId, ExecError> {
        if self.sessions.len() >= self.config.sessions_max {
            return Err(ExecError::Limit("sessions"));
        }
        let id = SessionId(self.next_session);
        self.next_session += 1;
        self.sessions.insert(
            id,
            Session {
                state: WriteState::Idle,
                databases: HashMap::new(),
                statements: HashMap::new(),
                next_statement: 1,
                statement_bytes: 0,
                cursor: None,
            },
        );
        Ok(id)
    }

    /// Closes a session: an open transaction is rolled back and its write slot released, a
    /// queued request leaves the queue, and a proposed write still completes (unanswered).
    pub fn close_session(&mut self, id: SessionId) {
        let Some(mut session) = self.sessions.remove(&id) else {
            return;
        };
        let mut freed = Vec::new();
        match &session.state {
            WriteState::Queued { database, .. } => {
                if let Some(db) = self.databases.get_mut(database) {
                    db.queue.retain(|w| w.session != id);
                }
            }
            WriteState::Transaction { database } => {
                if let Some(sdb) = session.databases.get_mut(database) {
                    sdb.conn.rollback();
                }
                if let Some(db) = self.databases.get_mut(database) {
                    db.slot = Slot::Free;
                    freed.push(database.clone());
                }
            }
            WriteState::Idle | WriteState::Proposed { .. } | WriteState::Executing { .. } => {}
        }
        for sdb in session.databases.values() {
            sdb.conn.rollback();
        }
        drop(session);
        for database in freed {
            // What the chain committed before the transaction still goes.
            let db = self.databases.get_mut(&database).expect("listed");
            let members = std::mem::take(&mut db.chain_members);
            self.end_chain(&database, members);
            self.pump(&database);
        }
    }

    /// Opens database `name` for the session, creating it (empty) if the node has none.
    pub fn open_database(&mut self, session: SessionId, name: &str) -> Result<(), ExecError> {
        validate_database_name(name).map_err(ExecError::BadDatabaseName)?;
        if !self.sessions.contains_key(&session) {
            return Err(ExecError::UnknownSession);
        }
        if !self.databases.contains_key(name) {
            let exec = |error| match error {
                EngineError::Io(error) => ExecError::Io(error),
                EngineError::Sqlite(error) => ExecError::Sqlite(error),
                other => ExecError::Io(std::io::Error::other(other.to_string())),
            };
            if !self.make_room().map_err(exec)? {
                return Err(ExecError::TooManyDatabases {
                    databases_max: self.config.databases_max,
                });
            }
            if !self.reopen(name).map_err(exec)? {
                if self.databases.len() + self.closed.len() >= DATABASES_TOTAL_MAX {
                    return Err(ExecError::Limit(
                        "databases: a node holds at most 4096 (what a snapshot carries)",
                    ));
                }
                self.create_database(name, self.applied_index)
                    .map_err(exec)?;
            }
        }
        let now = self.now;
        self.databases.get_mut(name).expect("open").used_at = now;
        let path = self.databases[name].path.clone();
        let session = self.sessions.get_mut(&session).expect("checked");
        if session.databases.contains_key(name) {
            return Ok(());
        }
        let conn = Conn::open(&self.vfs, &path, Role::Capture, self.config.cache_kib)?;
        session.databases.insert(
            name.to_string(),
            SessionDb {
                conn,
                txn: Txn::None,
                txn_since: 0,
                aborted: None,
            },
        );
        Ok(())
    }

    /// Prepares the first statement of `sql` on the session's connection to `database`; returns
    /// its id and parameter count.
    pub fn prepare(
        &mut self,
        session: SessionId,
        database: &str,
        sql: &str,
    ) -> Result<(u32, usize), ExecError> {
        let statements_max = self.config.statements_max;
        let statement_bytes_max = self.config.statement_bytes_max;
        let session = self
            .sessions
            .get_mut(&session)
            .ok_or(ExecError::UnknownSession)?;
        if session.statements.len() >= statements_max {
            return Err(ExecError::Limit("prepared statements per session"));
        }
        let sdb = session
            .databases
            .get_mut(database)
            .ok_or_else(|| ExecError::DatabaseNotOpen(database.to_string()))?;
        let (statement, used) = sdb.conn.prepare_one(sql)?;
        let statement = statement.ok_or_else(|| misuse("no SQL statement to prepare"))?;
        let bytes = used.min(sql.len());
        if session.statement_bytes.saturating_add(bytes) > statement_bytes_max {
            return Err(ExecError::Limit(
                "bytes of SQL prepared per session (finalize statements first)",
            ));
        }
        session.statement_bytes += bytes;
        let parameters = statement.parameter_count();
        let id = session.next_statement;
        session.next_statement = session.next_statement.wrapping_add(1).max(1);
        if session.next_statement == AD_HOC_STATEMENT {
            session.next_statement = 1;
        }
        sdb.conn.keep(id, statement);
        session.statements.insert(id, database.to_string());
        Ok((id, parameters))
    }

    /// Finalizes a prepared statement.
    pub fn finalize(&mut self, session: SessionId, statement: u32) -> Result<(), ExecError> {
        let session = self
            .sessions
            .get_mut(&session)
            .ok_or(ExecError::UnknownSession)?;
        let database = session
            .statements
            .remove(&statement)
            .ok_or(ExecError::UnknownStatement(statement))?;
        if session
            .cursor
            .as_ref()
            .is_some_and(|c| c.statement == statement)
        {
            session.cursor = None;
        }
        if let Some(sdb) = session.databases.get_mut(&database) {
            if let Some(kept) = sdb.conn.kept(statement) {
                let bytes = kept.sql().len();
                session.statement_bytes = session.statement_bytes.saturating_sub(bytes);
            }
            sdb.conn.forget(statement);
        }
        Ok(())
    }

    // ---- requests --------------------------------------------------------------------------

    /// Executes `target` for the session (SQL with parameters, or a prepared statement).
    /// Reads run at once; writes go through the database's write slot and are answered after
    /// their command is applied.
    pub fn exec(
        &mut self,
        session: SessionId,
        database: &str,
        target: Target<'_>,
        params: &[Value],
    ) -> Result<Reply, ExecError> {
        let reply = self.request(session, database, target, params, false);
        self.note_result(database, reply.as_ref().err());
        reply
    }

    /// Runs a query for the session. A read-only query answers with its first batch of rows
    /// (more with [`Engine::query_next`]); a query that writes (`INSERT … RETURNING`) takes the
    /// write path and answers with all its rows once applied.
    pub fn query(
        &mut self,
        session: SessionId,
        database: &str,
        target: Target<'_>,
        params: &[Value],
    ) -> Result<Reply, ExecError> {
        let reply = self.request(session, database, target, params, true);
        self.note_result(database, reply.as_ref().err());
        reply
    }

    /// The next batch of rows of the session's unfinished query.
    pub fn query_next(&mut self, session: SessionId) -> Result<Rows, ExecError> {
        let batch = self.config.batch_bytes;
        let session = self
            .sessions
            .get_mut(&session)
            .ok_or(ExecError::UnknownSession)?;
        let cursor = session.cursor.take().ok_or(ExecError::NoQuery)?;
        let sdb = session
            .databases
            .get_mut(&cursor.database)
            .ok_or(ExecError::NoQuery)?;
        let statement = sdb.conn.kept(cursor.statement).ok_or(ExecError::NoQuery)?;
        let (response, more) = match collect_rows(statement, true, Some(batch), || (0, 0)) {
            Ok(rows) => rows,
            Err(error) => {
                let database = cursor.database;
                self.note_result(&database, Some(&error));
                return Err(error);
            }
        };
        if more {
            session.cursor = Some(cursor);
        } else if cursor.statement == AD_HOC_STATEMENT {
            sdb.conn.forget(AD_HOC_STATEMENT);
        }
        match response {
            Response::Rows(rows) => Ok(rows),
            Response::Exec { .. } => unreachable!("a cursor is a query"),
        }
    }

    /// Abandons the session's unfinished query, if any.
    fn drop_cursor(session: &mut Session) {
        if let Some(cursor) = session.cursor.take() {
            if let Some(sdb) = session.databases.get_mut(&cursor.database) {
                if cursor.statement == AD_HOC_STATEMENT {
                    sdb.conn.forget(AD_HOC_STATEMENT);
                } else if let Some(statement) = sdb.conn.kept(cursor.statement) {
                    statement.reset();
                }
            }
        }
    }

    fn request(
        &mut self,
        id: SessionId,
        database: &str,
        target: Target<'_>,
        params: &[Value],
        query: bool,
    ) -> Result<Reply, ExecError> {
        let batch = self.config.batch_bytes;
        let applied_index = self.applied_index;
        let now = self.now;
        let session = self
            .sessions
            .get_mut(&id)
            .ok_or(ExecError::UnknownSession)?;
        match &session.state {
            WriteState::Idle => {}
            WriteState::Transaction { database: held } if held == database => {}
            WriteState::Transaction { .. } => {
                // A transaction on another database holds a slot; allow requests elsewhere.
            }
            _ => return Err(ExecError::RequestInProgress),
        }
        Self::drop_cursor(session);
        let db = self
            .databases
            .get_mut(database)
            .ok_or_else(|| ExecError::DatabaseNotOpen(database.to_string()))?;
        db.used_at = now;
        if db.recovering_until > applied_index {
            return Err(ExecError::Recovering {
                index: db.recovering_until,
            });
        }
        let sdb = session
            .databases
            .get_mut(database)
            .ok_or_else(|| ExecError::DatabaseNotOpen(database.to_string()))?;
        if let Some(reason) = sdb.aborted.take() {
            return Err(ExecError::Aborted(reason));
        }
        let owned = match target {
            Target::Sql(sql) => OwnedTarget::Sql(sql.to_string()),
            Target::Statement(statement) => {
                if sdb.conn.kept(statement).is_none() {
                    return Err(ExecError::UnknownStatement(statement));
                }
                OwnedTarget::Statement(statement)
            }
        };
        if sdb.txn == Txn::Write {
            // The session's own transaction holds the slot: run on its connection.
            session.state.transition(WriteState::Executing {
                database: database.to_string(),
            });
            let result = run_target(&mut sdb.conn, &owned, params, query, None);
            self.after_session_statement(id, database, result.map(|(r, _)| r));
            return self.take_reply(id);
        }
        // Classify by the first statement, prepared on the session's connection, asking
        // SQLite (`sql.rs`).
        let (class, single) = match &owned {
            OwnedTarget::Statement(statement) => {
                let statement = sdb.conn.kept(*statement).expect("checked");
                (sql::classify(statement)?, true)
            }
            OwnedTarget::Sql(sql) => {
                let (statement, used) = sdb.conn.prepare_one(sql)?;
                let Some(mut statement) = statement else {
                    return Ok(Reply::Done(Response::Exec {
                        last_insert_id: sdb.conn.last_insert_rowid(),
                        rows_changed: 0,
                    }));
                };
                let single = sql[used.min(sql.len())..]
                    .trim_matches(|c: char| c.is_whitespace() || c == ';')
                    .is_empty();
                let class = sql::classify(&mut statement)?;
                // Kept for the read path, which then runs it without preparing it again.
                sdb.conn.keep(AD_HOC_STATEMENT, statement);
                (class, single)
            }
        };
        if class.readonly && single && !class.takes_write_lock {
            // Reads, BEGIN [DEFERRED], COMMIT/ROLLBACK of a read transaction: no write slot.
            let owned = match owned {
                OwnedTarget::Sql(_) => OwnedTarget::Statement(AD_HOC_STATEMENT),
                statement => statement,
            };
            let result = run_target(&mut sdb.conn, &owned, params, query, Some(batch));
            if !matches!(result, Ok((_, true))) {
                sdb.conn.forget(AD_HOC_STATEMENT);
            }
            sdb.txn = if sdb.conn.is_autocommit() {
                Txn::None
            } else if sdb.txn == Txn::None {
                sdb.txn_since = now;
                Txn::Read
            } else {
                sdb.txn
            };
            let (response, more) = result?;
            if more {
                let OwnedTarget::Statement(statement) = owned else {
                    unreachable!("SQL text runs as the ad-hoc statement")
                };
                session.cursor = Some(Cursor {
                    database: database.to_string(),
                    statement,
                });
            }
            return Ok(Reply::Done(response));
        }
        sdb.conn.forget(AD_HOC_STATEMENT);
        if !matches!(session.state, WriteState::Idle) {
            // Its explicit transaction holds another database's write slot.
            return Err(ExecError::Limit(
                "one write at a time per session: finish the open transaction first",
            ));
        }
        let work = Work {
            target: owned,
            params: params.to_vec(),
            query,
            // Text of several statements may hold transaction control past the first (see
            // `sql.rs`): it runs alone too.
            alone: sdb.txn == Txn::Read
                || class.takes_write_lock
                || class.transaction_control
                || !single,
        };
        self.enqueue(id, database, work)?;
        self.pump(database);
        self.take_reply(id)
    }

    /// The reply for a request that went through the write slot: still queued, proposed, or
    /// finished (its completion is taken back out of the outbox).
    fn take_reply(&mut self, id: SessionId) -> Result<Reply, ExecError> {
        let session = self.sessions.get(&id).ok_or(ExecError::UnknownSession)?;
        match &session.state {
            WriteState::Queued { .. } => return Ok(Reply::Queued),
            WriteState::Proposed { proposal, .. } => {
                return Ok(Reply::Proposed {
                    proposal: *proposal,
                })
            }
            _ => {}
        }
        let Some(position) = self.completions.iter().rposition(|c| c.session == id) else {
            // A member of a chain that another session's transaction continues: answered with
            // the chain's command (a completion) once that transaction ends.
            assert!(
                matches!(session.state, WriteState::Executing { .. }),
                "a finished request left its completion"
            );
            return Ok(Reply::Queued);
        };
        let completion = self.completions.remove(position);
        completion.result.map(Reply::Done)
    }

    fn enqueue(&mut self, id: SessionId, database: &str, work: Work) -> Result<(), ExecError> {
        let queue_max = self.config.queue_max;
        let db = self.databases.get_mut(database).expect("checked by caller");
        if let Some(reason) = &db.corrupt {
            return Err(ExecError::Corrupt {
                database: database.to_string(),
                reason: reason.clone(),
            });
        }
        if db.queue.len() >= queue_max {
            return Err(ExecError::QueueFull {
                queued_max: queue_max,
            });
        }
        db.queue.push_back(Waiter {
            session: id,
            work,
            since: self.now,
        });
        let session = self.sessions.get_mut(&id).expect("checked by caller");
        session.state.transition(WriteState::Queued {
            database: database.to_string(),
            since: self.now,
        });
        Ok(())
    }

    /// Grants the write slot to queued work while it is free: a run of up to `group_max`
    /// requests goes as one chain (one command); work that may open a transaction goes alone.
    fn pump(&mut self, database: &str) {
        // Bounded: every iteration removes at least one waiter from the queue.
        loop {
            let group_max = self.config.group_max;
            let Some(db) = self.databases.get_mut(database) else {
                return;
            };
            if !matches!(db.slot, Slot::Free) || db.queue.is_empty() {
                return;
            }
            let mut waiters = Vec::new();
            while let Some(front) = db.queue.front() {
                if !waiters.is_empty() && (front.work.alone || waiters.len() >= group_max) {
                    break;
                }
                let waiter = db.queue.pop_front().expect("front exists");
                let alone = waiter.work.alone;
                waiters.push(waiter);
                if alone {
                    break;
                }
            }
            self.run_chain(database, waiters);
        }
    }

    /// Runs queued requests one after another, each on its session's own connection (so each
    /// has SQLite's per-connection semantics: TEMP objects, PRAGMAs, `changes()`, statement by
    /// statement execution), inside one chain ([`DbFiles::begin_chain`]): each sees what the
    /// ones before it committed, readers see none of it, and all of it goes as one command.
    /// A request that leaves a transaction open keeps the slot on top of the chain; the
    /// requests after it go back to the front of the queue.
    fn run_chain(&mut self, database: &str, waiters: Vec<Waiter>) {
        let db = self.databases.get_mut(database).expect("pumped");
        if let Err(error) = db.files.begin_chain() {
            let message = error.to_string();
            for waiter in waiters {
                let error = io_exec(std::io::Error::other(message.clone()));
                self.complete(waiter.session, Err(error));
            }
            return;
        }
        let mut members = Vec::new();
        let mut waiters = waiters.into_iter();
        while let Some(waiter) = waiters.next() {
            let id = waiter.session;
            if let Some(session) = self.sessions.get_mut(&id) {
                session.state.transition(WriteState::Executing {
                    database: database.to_string(),
                });
            }
            if let Some(reason) = self.databases[database].corrupt.clone() {
                // An earlier member found the database corrupt: nothing more is written.
                let database = database.to_string();
                self.complete(id, Err(ExecError::Corrupt { database, reason }));
                continue;
            }
            let outcome = self.run_member(database, waiter);
            let error = match &outcome {
                MemberOutcome::Member(member) => member.result.as_ref().err(),
                MemberOutcome::Answer(result) | MemberOutcome::Transaction(result) => {
                    result.as_ref().err()
                }
            };
            if let Some(error) = error.filter(|error| limits::is_corruption(error)) {
                let reason = error.client_message();
                self.mark_corrupt(database, &reason);
            }
            match outcome {
                MemberOutcome::Member(member) => members.push(member),
                MemberOutcome::Answer(result) => self.complete(id, result),
                MemberOutcome::Transaction(result) => {
                    let now = self.now;
                    let db = self.databases.get_mut(database).expect("pumped");
                    db.slot = Slot::Transaction(id);
                    db.transaction_since = now;
                    db.chain_members = members;
                    // The requests after it (still queued) wait for the transaction.
                    let rest: Vec<Waiter> = waiters.collect();
                    for waiter in rest.into_iter().rev() {
                        db.queue.push_front(waiter);
                    }
                    let session = self.sessions.get_mut(&id).expect("ran");
                    session.state.transition(WriteState::Transaction {
                        database: database.to_string(),
                    });
                    self.completions.push(Completion {
                        session: id,
                        result,
                    });
                    return;
                }
            }
        }
        self.end_chain(database, members);
    }

    /// Runs one request of a chain on its session's connection.
    fn run_member(&mut self, database: &str, waiter: Waiter) -> MemberOutcome {
        let bytes_max = self.config.transaction_bytes_max;
        let now = self.now;
        let id = waiter.session;
        let db = self.databases.get_mut(database).expect("pumped");
        let Some(sdb) = self
            .sessions
            .get_mut(&id)
            .and_then(|session| session.databases.get_mut(database))
        else {
            return MemberOutcome::Answer(Err(ExecError::DatabaseNotOpen(database.to_string())));
        };
        let frames_before = live_max_frame(&db.files);
        let Work {
            target,
            params,
            query,
            ..
        } = waiter.work;
        let result = run_target(&mut sdb.conn, &target, &params, query, None).map(|(r, _)| r);
        let result = too_large(&db.files, result, bytes_max);
        if !sdb.conn.is_autocommit() {
            if sdb.txn == Txn::None {
                // The transaction time limit counts from here (`limits.rs`).
                sdb.txn_since = now;
            }
            match keep_transaction(&db.files, &mut sdb.conn) {
                Ok(()) if !db.files.capture_active() => {
                    // A transaction that has not written (`BEGIN; SELECT …`, or a write that
                    // failed): like SQLite's, it blocks no writer until it writes.
                    sdb.txn = Txn::Read;
                    return MemberOutcome::Answer(result);
                }
                Ok(()) => {
                    sdb.txn = Txn::Write;
                    return MemberOutcome::Transaction(result);
                }
                Err(error) => {
                    sdb.txn = Txn::None;
                    return MemberOutcome::Member(Member {
                        session: id,
                        result: Err(error),
                    });
                }
            }
        }
        sdb.txn = Txn::None;
        match result {
            Err(error) if live_max_frame(&db.files) == frames_before => {
                MemberOutcome::Answer(Err(error))
            }
            result => MemberOutcome::Member(Member {
                session: id,
                result,
            }),
        }
    }

    /// Closes the database's chain and proposes what it committed, answering `members` when
    /// it is applied (at once if nothing was committed).
    fn end_chain(&mut self, database: &str, members: Vec<Member>) {
        let db = self.databases.get_mut(database).expect("open database");
        if let Err(error) = db.files.end_chain() {
            db.files.clear_committed();
            let message = error.to_string();
            for member in members {
                let error = io_exec(std::io::Error::other(message.clone()));
                self.complete(member.session, Err(error));
            }
            return;
        }
        self.finish_commit(database, members);
    }

    /// After a statement ran on a session's connection while its transaction held the write
    /// slot: keep the slot while the transaction is open; once it ends, propose the chain's
    /// frames (with the members that ran before the transaction) or release.
    fn after_session_statement(
        &mut self,
        id: SessionId,
        database: &str,
        result: Result<Response, ExecError>,
    ) {
        let bytes_max = self.config.transaction_bytes_max;
        let session = self.sessions.get_mut(&id).expect("running session");
        let sdb = session.databases.get_mut(database).expect("open database");
        let db = self.databases.get_mut(database).expect("open database");
        let mut result = too_large(&db.files, result, bytes_max);
        if !sdb.conn.is_autocommit() {
            match keep_transaction(&db.files, &mut sdb.conn) {
                Ok(()) => {
                    session.state.transition(WriteState::Transaction {
                        database: database.to_string(),
                    });
                    self.completions.push(Completion {
                        session: id,
                        result,
                    });
                    return;
                }
                Err(error) => result = Err(error),
            }
        }
        sdb.txn = Txn::None;
        db.slot = Slot::Free;
        let mut members = std::mem::take(&mut db.chain_members);
        members.push(Member {
            session: id,
            result,
        });
        self.end_chain(database, members);
        self.pump(database);
    }

    /// Turns the frames the last transaction left in the capture buffer into a proposal whose
    /// application answers `members`; without frames, answers them at once.
    fn finish_commit(&mut self, database: &str, members: Vec<Member>) {
        let db = self.databases.get_mut(database).expect("open database");
        assert!(
            matches!(db.slot, Slot::Free),
            "a commit while the slot is held"
        );
        let proposal = self.next_proposal;
        let header = CommandHeader {
            database,
            page_size: db.files.page_size(),
            db_size_pages: 0,
            base_index: db.last_command_index,
            origin: self.config.node_id,
            proposal,
        };
        let encoded = db.files.take_committed(|frames, committed| {
            let mut command = Vec::new();
            let header = CommandHeader {
                db_size_pages: committed.db_size_pages,
                ..header
            };
            Command::encode(&mut command, header, committed.frame_count, frames);
            command
        });
        match encoded {
            Err(error) => {
                let message = error.to_string();
                for member in members {
                    self.complete(
                        member.session,
                        Err(io_exec(std::io::Error::other(message.clone()))),
                    );
                }
            }
            Ok(None) => {
                for member in members {
                    self.complete(member.session, member.result);
                }
            }
            Ok(Some(command)) => {
                self.next_proposal += 1;
                for member in &members {
                    if let Some(session) = self.sessions.get_mut(&member.session) {
                        session.state.transition(WriteState::Proposed {
                            database: database.to_string(),
                            proposal,
                        });
                    }
                }
                let writes = members.len();
                db.slot = Slot::Proposed { proposal, members };
                self.proposals.push(Proposal {
                    database: database.to_string(),
                    id: proposal,
                    command,
                    writes,
                });
            }
        }
    }

    /// Answers a session's request and returns it to `Idle` (sessions that went away are
    /// skipped). Sessions inside a transaction keep it.
    fn complete(&mut self, id: SessionId, result: Result<Response, ExecError>) {
        let Some(session) = self.sessions.get_mut(&id) else {
            return;
        };
        let database = match &session.state {
            WriteState::Idle => None,
            WriteState::Queued { database, .. }
            | WriteState::Executing { database }
            | WriteState::Transaction { database }
            | WriteState::Proposed { database, .. } => Some(database.clone()),
        };
        match session.state {
            WriteState::Transaction { .. } => {}
            _ => session.state.transition(WriteState::Idle),
        }
        if let Some(database) = database {
            self.note_result(&database, result.as_ref().err());
        }
        self.completions.push(Completion {
            session: id,
            result,
        });
    }

    /// Proposals made since the last call, in order. The host proposes each to Raft.
    pub fn take_proposals(&mut self) -> Vec<Proposal> {
        std::mem::take(&mut self.proposals)
    }

    /// Responses produced since the last call (queued, grouped and applied requests).
    pub fn take_completions(&mut self) -> Vec<Completion> {
        std::mem::take(&mut self.completions)
    }

    /// The proposal could not be committed (leadership lost, proposal dropped): its sessions
    /// are answered with an error and the next writers go. The database never saw its frames.
    /// If the same command is nevertheless committed later, `apply` applies it like any other.
    pub fn discard(&mut self, proposal: u64, reason: &str) {
        let Some(name) = self
            .databases
            .iter()
            .find(|(_, db)| matches!(db.slot, Slot::Proposed { proposal: p, .. } if p == proposal))
            .map(|(name, _)| name.clone())
        else {
            return;
        };
        self.fail_proposed(&name, reason);
        self.pump(&name);
    }

    fn fail_proposed(&mut self, database: &str, reason: &str) {
        let db = self.databases.get_mut(database).expect("known database");
        if let Slot::Proposed { members, .. } = std::mem::replace(&mut db.slot, Slot::Free) {
            for member in members {
                self.complete(
                    member.session,
                    Err(ExecError::Discarded(reason.to_string())),
                );
            }
        }
    }

    /// This node stopped being the leader: queued writers fail, open write transactions are
    /// rolled back (their sessions learn it at their next request), and outstanding proposals
    /// are answered with an error. Proposed commands that Raft still commits are applied anyway.
    pub fn abandon_writes(&mut self, reason: &str) {
        let names: Vec<String> = self.databases.keys().cloned().collect();
        for name in names {
            self.abort_local_writes(&name, reason);
            let db = self.databases.get_mut(&name).expect("listed");
            let waiters: Vec<Waiter> = db.queue.drain(..).collect();
            for waiter in waiters {
                self.complete(
                    waiter.session,
                    Err(ExecError::Discarded(reason.to_string())),
                );
            }
        }
    }

    /// Rolls back a session transaction holding the slot of `database` and fails a proposal
    /// that is out for it.
    fn abort_local_writes(&mut self, database: &str, reason: &str) {
        let db = self.databases.get_mut(database).expect("known database");
        match db.slot {
            Slot::Transaction(id) => {
                db.slot = Slot::Free;
                if let Some(session) = self.sessions.get_mut(&id) {
                    if let Some(sdb) = session.databases.get_mut(database) {
                        sdb.conn.rollback();
                        sdb.txn = Txn::None;
                        sdb.aborted = Some(reason.to_string());
                    }
                    session.state.transition(WriteState::Idle);
                }
                if let Err(error) = db.files.end_chain() {
                    log::error!("{database}: closing an abandoned chain: {error}");
                }
                db.files.clear_committed();
                for member in std::mem::take(&mut db.chain_members) {
                    self.complete(
                        member.session,
                        Err(ExecError::Discarded(reason.to_string())),
                    );
                }
            }
            Slot::Proposed { .. } => self.fail_proposed(database, reason),
            Slot::Free => {}
        }
    }

    // ---- apply -----------------------------------------------------------------------------

    /// Applies the committed command at `index` (on every node, the leader included): its frames
    /// are appended to the database's WAL and published atomically; the page bytes are copied
    /// once, straight from `command`. If it is this node's outstanding proposal, its sessions
    /// are answered. Malformed and stale commands are rejected (before anything is written) the
    /// same way on every replica. Errors are I/O failures, after which the database stops
    /// serving until the engine is reopened, except a failed WAL write that published nothing
    /// (a full disk) and [`EngineError::CorruptDatabase`] (a closed database that cannot be
    /// opened again): nothing changed, and the host applies the same entry again later (or,
    /// for a damaged database, repairs the node from its peers).
    pub fn apply(&mut self, index: u64, command: &[u8]) -> Result<Applied, EngineError> {
        assert!(
            index > self.applied_index,
            "apply index {index} after {}",
            self.applied_index
        );
        let decoded = match Command::decode(command) {
            Ok(decoded) => decoded,
            Err(error) => {
                log::warn!("entry {index}: malformed command rejected: {error}");
                self.applied_index = index;
                return Ok(Applied::Malformed(error));
            }
        };
        let name = decoded.database;
        if !self.databases.contains_key(name) {
            // Replicated writes are never refused: past the limit, it is exceeded for a while
            // (and closing another database failing is no reason to fail this apply).
            if let Err(error) = self.make_room() {
                log::warn!("closing an idle database to open {name:?}: {error}");
            }
            match self.reopen(name) {
                Ok(true) => {}
                Ok(false) => self.create_database(name, index - 1)?,
                // A closed database whose header page is damaged (reported once through
                // `take_corrupt_found`): nothing is applied and the applied index stays.
                Err(EngineError::Sqlite(error)) if limits::is_sqlite_corruption(&error) => {
                    return Err(EngineError::CorruptDatabase {
                        database: name.to_string(),
                        reason: error.to_string(),
                    });
                }
                Err(error) => return Err(error),
            }
        }
        let now = self.now;
        let db = self.databases.get_mut(name).expect("exists");
        db.used_at = now;
        if index <= db.record.checkpoint_index {
            self.applied_index = index;
            return Ok(Applied::Skipped);
        }
        let ours = matches!(db.slot, Slot::Proposed { proposal, .. }
            if proposal == decoded.proposal && decoded.origin == self.config.node_id);
        let stale = if decoded.page_size != db.files.page_size() {
            Some(format!(
                "page size {} differs from the database's {}",
                decoded.page_size,
                db.files.page_size()
            ))
        } else if decoded.base_index != db.last_command_index {
            Some(format!(
                "computed against command {}, but the database's last command is {}",
                decoded.base_index, db.last_command_index
            ))
        } else {
            None
        };
        if let Some(reason) = stale {
            log::warn!("entry {index}: stale command for {name:?} rejected: {reason}");
            if ours {
                self.fail_proposed(name, &reason);
                self.pump(name);
            }
            self.applied_index = index;
            return Ok(Applied::Stale {
                database: name.to_string(),
                reason,
            });
        }
        if !ours {
            // Local state computed against the previous database state is now stale.
            self.abort_local_writes(name, "a replicated write changed the database");
        }
        let db = self.databases.get_mut(name).expect("exists");
        let frames: Vec<FrameRef<'_>> = decoded.frames().collect();
        let salt = index.to_le_bytes();
        db.files
            .append_frames(&frames, decoded.db_size_pages, salt, &mut self.scratch)?;
        // A large transaction must not pin its buffer for the life of the engine.
        self.scratch.shrink_to(SCRATCH_RETAINED_BYTES);
        db.last_command_index = index;
        self.applied_index = index;
        if ours {
            if let Slot::Proposed { members, .. } = std::mem::replace(&mut db.slot, Slot::Free) {
                for member in members {
                    self.complete(member.session, member.result);
                }
            }
        }
        let frame_count = decoded.frame_count();
        let database = name.to_string();
        if self.should_checkpoint(&database) {
            if let Err(error) = self.checkpoint_database(&database, false) {
                log::error!("checkpoint of {database:?} failed: {error}");
            }
        }
        self.pump(&database);
        Ok(Applied::Frames {
            database,
            frame_count,
        })
    }

    /// Records that the entry at `index` (a no-op or configuration entry) was applied.
    pub fn note_applied(&mut self, index: u64) {
        assert!(index > self.applied_index);
        self.applied_index = index;
    }

    /// The last index applied.
    pub fn applied_index(&self) -> u64 {
        self.applied_index
    }

    // ---- checkpoints -----------------------------------------------------------------------

    /// The WAL size at which the next checkpoint starts: `checkpoint_frames` plus this
    /// checkpoint's jitter.
    fn next_checkpoint_frames(&mut self) -> u32 {
        let jitter = self.config.checkpoint_jitter_frames;
        if jitter == 0 {
            return self.config.checkpoint_frames;
        }
        self.jitter_state = self.jitter_state.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.jitter_state;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^= z >> 31;
        let extra = (z % (u64::from(jitter) + 1)) as u32;
        self.config.checkpoint_frames.saturating_add(extra)
    }

    fn should_checkpoint(&self, database: &str) -> bool {
        let db = &self.databases[database];
        match db.files.index_header() {
            Ok(Some(header)) => header.max_frame >= db.checkpoint_at_frames,
            _ => false,
        }
    }

    /// Checkpoints every database whose WAL holds frames (or all of them with `force`, which
    /// also advances the recorded index of databases without frames, so an idle database never
    /// holds back log compaction). Returns the minimum checkpoint index afterwards.
    pub fn checkpoint(&mut self, force: bool) -> Result<Option<u64>, EngineError> {
        if force {
            self.wait_checkpoints();
        }
        let names: Vec<String> = self.databases.keys().cloned().collect();
        for name in names {
            let frames = self.databases[&name]
                .files
                .index_header()?
                .map(|h| h.max_frame)
                .unwrap_or(0);
            if force || frames >= self.config.checkpoint_frames {
                self.checkpoint_database(&name, force)?;
            }
        }
        if force {
            // Closed databases are idle with an empty WAL: only their index moves.
            let target = self.applied_index;
            let behind = self
                .closed
                .iter()
                .filter(|(_, closed)| closed.record.checkpoint_index < target)
                .map(|(name, _)| name.clone());
            self.idle_found.extend(behind);
        }
        let idle = std::mem::take(&mut self.idle_found);
        match idle.as_slice() {
            [] => {}
            [name] if self.databases.contains_key(name) => {
                let db = self.databases.get_mut(name).expect("known database");
                let record = Record {
                    checkpoint_index: self.applied_index,
                    last_command_index: db.last_command_index,
                    ..db.record
                };
                db.record = durable(
                    &mut self.sync_failure,
                    name,
                    record::write(&db.path, &record),
                )?;
            }
            _ => self.advance_idle(&idle)?,
        }
        Ok(self.min_checkpoint_index())
    }

    /// Checkpoints one database: records the intent, copies the WAL into the main file
    /// (`wal_checkpoint(PASSIVE)`, or `TRUNCATE` when forced), fsyncs it, then records the new
    /// checkpoint index. Returns whether it completed (readers or an open transaction can make
    /// it wait for a later try).
    fn checkpoint_database(&mut self, name: &str, force: bool) -> Result<bool, EngineError> {
        if self.databases[name].sync_pending {
            if !force {
                return Ok(false);
            }
            self.wait_checkpoints();
        }
        let target = self.applied_index;
        let next_at = self.next_checkpoint_frames();
        let db = self.databases.get_mut(name).expect("known database");
        if matches!(db.slot, Slot::Transaction(_))
            || Arc::strong_count(&db.snapshot_token) > 1
            || db.recovering_until > target
        {
            return Ok(false);
        }
        let frames = db.files.index_header()?.map(|h| h.max_frame).unwrap_or(0);
        if frames == 0 && db.record.intent_index == 0 {
            // Nothing applied since its last checkpoint: it reflects `target` already. Its
            // index advances with the other idle ones, in one write (`checkpoint`).
            if db.record.checkpoint_index < target {
                self.idle_found.push(name.to_string());
            }
            return Ok(true);
        }
        let started = std::time::Instant::now();
        if db.record.intent_index < target {
            let intent = Record {
                intent_index: target,
                ..db.record
            };
            db.record = durable(
                &mut self.sync_failure,
                name,
                record::write(&db.path, &intent),
            )?;
        }
        // PASSIVE copies the frames no reader needs; once all are copied, the next apply starts
        // the WAL over in place (bounded by the policy; rewriting cached file pages is cheaper
        // than growing the file again). A forced checkpoint (the host's, when idle or before
        // compaction) truncates the WAL and gives the space back.
        let sql = if force {
            "PRAGMA wal_checkpoint(TRUNCATE)"
        } else {
            "PRAGMA wal_checkpoint(PASSIVE)"
        };
        let started_copy = std::time::Instant::now();
        let (busy, log, copied): (i64, i64, i64) =
            db.control
                .connection()
                .query_row(sql, [], |row| Ok((row.get(0)?, row.get(1)?, row.get(2)?)))?;
        if busy != 0 || (!force && log != copied) {
            log::debug!("checkpoint of {name:?} is busy; retrying later");
            let step = (self.config.checkpoint_frames / 4).max(1);
            db.checkpoint_at_frames = frames.saturating_add(step);
            return Ok(false);
        }
        db.checkpoint_at_frames = next_at;
        let record = Record {
            checkpoint_index: target,
            last_command_index: db.last_command_index,
            intent_index: 0,
            ..db.record
        };
        if let (false, Some(checkpointer)) = (force, &self.checkpointer) {
            let job = SyncJob {
                database: name.to_string(),
                main: db.files.main_file_clone()?,
                path: db.path.clone(),
                record,
            };
            let jobs = checkpointer.jobs.as_ref().expect("running");
            if jobs.send(job).is_ok() {
                db.sync_pending = true;
                log::debug!(
                    "checkpoint of {name:?} at index {target}: intent {:?}, copy {:?}; \
                     sync and record in the background",
                    started_copy - started,
                    started_copy.elapsed()
                );
                return Ok(true);
            }
            // The thread is gone (it only stops with the engine): sync here.
        }
        let started_sync = std::time::Instant::now();
        let failure = &mut self.sync_failure;
        durable(failure, name, db.files.sync_main())?;
        let synced = std::time::Instant::now();
        db.record = durable(failure, name, record::write(&db.path, &record))?;
        log::debug!(
            "checkpointed {name:?} at index {target}: intent {:?}, copy {:?}, sync {:?}, \
             record {:?}",
            started_copy - started,
            started_sync - started_copy,
            synced - started_sync,
            synced.elapsed()
        );
        Ok(true)
    }

    /// Takes the checkpointer thread's answers (with `checkpoint_sync_in_background`): each
    /// makes a database's new checkpoint index current. Never blocks; the host calls it every
    /// turn of its loop.
    pub fn poll_checkpoints(&mut self) {
        while let Some(done) = self
            .checkpointer
            .as_ref()
            .and_then(|c| c.done.try_recv().ok())
        {
            self.checkpoint_done(done);
        }
    }

    /// Waits for every checkpoint sync in the background to finish.
    pub(crate) fn wait_checkpoints(&mut self) {
        while self.databases.values().any(|db| db.sync_pending) {
            let Some(done) = self.checkpointer.as_ref().and_then(|c| c.done.recv().ok()) else {
                break;
            };
            self.checkpoint_done(done);
        }
    }

    fn checkpoint_done(&mut self, done: SyncDone) {
        let Some(db) = self.databases.get_mut(&done.database) else {
            return;
        };
        db.sync_pending = false;
        match done.result {
            Ok(record) => {
                log::debug!(
                    "checkpointed {:?} at index {} (synced in the background)",
                    done.database,
                    record.checkpoint_index
                );
                db.record = record;
            }
            // The record keeps its intent; never synced again: the host stops (see
            // `sync_failure`), and recovery replays the log from the durable record.
            Err(error) => {
                let _ = durable::<()>(&mut self.sync_failure, &done.database, Err(error));
            }
        }
    }

    /// Why a checkpoint's fdatasync failed, if one did: the host must stop (and restart, which
    /// replays the log from the last durable record). An fsync is never retried after it
    /// failed (PostgreSQL's lesson: the kernel may have dropped the pages it could not write).
    pub fn sync_failure(&self) -> Option<&str> {
        self.sync_failure.as_deref()
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

    pub(crate) fn snapshot_parts(&self) -> Vec<SnapshotPart> {
        self.databases
            .iter()
            .map(|(name, db)| SnapshotPart {
                name: name.clone(),
                path: db.path.clone(),
                files: Arc::clone(&db.files),
                last_command_index: db.last_command_index,
                token: Arc::clone(&db.snapshot_token),
            })
            .collect()
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

    /// Drops every connection and session state of all databases and forgets them (before a
    /// snapshot replaces them). Sessions stay open but must open their databases again.
    pub(crate) fn detach_all(&mut self, reason: &str) {
        self.abandon_writes(reason);
        for session in self.sessions.values_mut() {
            session.cursor = None;
            session.statements.clear();
            session.statement_bytes = 0;
            session.databases.clear();
            if !matches!(session.state, WriteState::Idle) {
                session.state = WriteState::Idle;
            }
        }
        self.closed.clear();
        let databases = std::mem::take(&mut self.databases);
        for (_, db) in databases {
            let path = db.path.clone();
            drop(db);
            self.vfs.remove_database(&path);
        }
    }

    /// Attaches the databases in the directory again after a snapshot install, at `index`.
    pub(crate) fn reattach_after_install(&mut self, index: u64) -> Result<(), EngineError> {
        let recovery = self.recover()?;
        for database in &recovery.databases {
            assert_eq!(database.checkpoint_index, index);
        }
        self.applied_index = index;
        Ok(())
    }
}

/// One database's part of a snapshot.
pub(crate) struct SnapshotPart {
    pub(crate) name: String,
    pub(crate) path: PathBuf,
    pub(crate) files: Arc<DbFiles>,
    pub(crate) last_command_index: u64,
    pub(crate) token: Arc<()>,
}

/// Suffix of a database file being installed from a snapshot.
pub(crate) const SNAPSHOT_TEMP_SUFFIX: &str = "-snapshot.tmp";

/// Whether `path` starts like an SQLite database (other files in the directory are left alone).
fn is_sqlite_file(path: &Path) -> bool {
    use std::io::Read;
    let mut magic = [0u8; 16];
    fs::File::open(path)
        .and_then(|mut file| file.read_exact(&mut magic))
        .is_ok()
        && &magic == b"SQLite format 3\0"
}

/// Writes a fresh database file with the canonical empty page 1, durably.
/// Whether an I/O error means the disk (or the user's quota) is full.
fn is_disk_full(error: &std::io::Error) -> bool {
    matches!(
        error.kind(),
        std::io::ErrorKind::StorageFull | std::io::ErrorKind::QuotaExceeded
    )
}

fn write_empty_database(path: &Path, page_size: u32) -> std::io::Result<()> {
    use std::io::Write;
    let mut file = fs::File::create(path)?;
    file.write_all(&empty_database_page(page_size))?;
    file.sync_all()
}

/// What one request of a chain came to.
enum MemberOutcome {
    /// It is a member: answered with the chain's command.
    Member(Member),
    /// It committed nothing: answered now.
    Answer(Result<Response, ExecError>),
    /// It left a transaction open: it holds the slot, on top of the chain.
    Transaction(Result<Response, ExecError>),
}

/// `mxFrame` of the live wal-index header (0 before SQLite initialised it).
fn live_max_frame(files: &DbFiles) -> u32 {
    files
        .index_header()
        .ok()
        .flatten()
        .map_or(0, |header| header.max_frame)
}

/// A failed statement that overflowed the capture limit is reported as too large.
fn too_large(
    files: &DbFiles,
    result: Result<Response, ExecError>,
    bytes_max: usize,
) -> Result<Response, ExecError> {
    let overflow = files.take_overflow();
    result.map_err(|error| match error {
        ExecError::Sqlite(_) if overflow => ExecError::TransactionTooLarge { bytes_max },
        other => other,
    })
}

/// A connection was left inside a transaction. If the chain committed nothing so far, the
/// transaction continues (it holds the slot; readers see nothing until it commits). A
/// transaction opened after statements of the chain committed (`INSERT …; BEGIN; …` or
/// `COMMIT; BEGIN` in one request) would have to stay open on top of frames no reader may see
/// yet; SQLite cannot keep them apart from its own (a write transaction treats every frame
/// past the published header as its own and may rewrite it in place), so it is rolled back
/// with an error. What committed before it stays.
fn keep_transaction(files: &DbFiles, conn: &mut Conn) -> Result<(), ExecError> {
    if !files.chain_committed() {
        return Ok(());
    }
    conn.rollback();
    Err(ExecError::Aborted(
        "a transaction opened after statements that committed in the same request cannot \
         stay open: send BEGIN in a request of its own"
            .to_string(),
    ))
}

/// Passes `result` on, recording the first failure of a checkpoint's sync in `failure`.
fn durable<T>(
    failure: &mut Option<String>,
    database: &str,
    result: std::io::Result<T>,
) -> Result<T, EngineError> {
    result.map_err(|error| {
        log::error!("checkpoint of {database:?}: sync failed: {error}");
        failure.get_or_insert_with(|| format!("syncing {database:?} in a checkpoint: {error}"));
        EngineError::Io(error)
    })
}
