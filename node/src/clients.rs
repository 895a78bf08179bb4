//! The dqlite protocol server: one [`Client`] per connection, every request of protocol
//! version 1 answered (section 7 of the reference), results streamed in bounded pieces.
//!
//! Preconditions are checked in dqlite's order (reference section 8, newer servers): requests
//! that read or write data need a ready leader (else FAILURE 10250 "not leader"), then an open
//! database (db id 0, else 12 "no database opened"), then a known statement id.

use atoll_core::{ExecError, Reply, Response as CoreResponse, Rows as CoreRows, Target};
use atoll_net::client::OPEN_FOLLOWER_READS;
use atoll_net::protocol::{
    Checksums, ClusterFormat, Header, NodeInfo, NodeMetadata, NodeStatus, Request, Response,
    ResponseType, Role, RowsBatch, RowsEnd, ValueRef, VerifyState, HEADER_BYTES,
};
use atoll_net::reactor::{Completion, ConnId};
use atoll_raft::{LogIndex, MemberRole, NodeId, Payload, StateRole, Term};
use log::{debug, info, warn};

use super::values::{self, Declared};
use super::Node;
use atoll_net::sql;

/// WELCOME's heartbeat timeout, as dqlite announces it (no client sends heartbeats).
const HEARTBEAT_TIMEOUT_MS: u64 = 15_000;
/// Bytes of ROWS messages encoded per turn for one connection; the next piece is encoded when
/// the connection has drained, so a large result never sits in memory whole.
const ROWS_PIECE_BYTES: usize = 64 * 1024;
/// Bytes of a DUMP image sent per piece, for the same reason.
const DUMP_PIECE_BYTES: usize = 256 * 1024;

/// What a connection is doing.
#[derive(Default)]
enum State {
    /// Waiting for its next request.
    #[default]
    Idle,
    /// Its request is with the engine (queued or proposed); the answer is a completion.
    Waiting,
    /// A result set is being streamed.
    Rows(RowsStream),
    /// A DUMP image is being streamed.
    Dump(Box<DumpStream>),
}

struct RowsStream {
    rows: CoreRows,
    declared: Vec<Declared>,
    /// The next row of `rows` to encode.
    row_next: usize,
    /// The engine has more batches after `rows`.
    more: bool,
}

struct DumpStream {
    image: atoll_core::DatabaseImage,
    /// Image bytes not yet sent.
    remaining: u64,
    wal_name: String,
}

/// One client connection.
pub(super) struct Client {
    /// The engine session, opened with the database.
    pub(super) session: Option<atoll_core::SessionId>,
    database: Option<String>,
    /// Protocol statement id (index) → engine statement id. dqlite hands out the lowest free
    /// id, starting at 0.
    statements: Vec<Option<u32>>,
    state: State,
    /// Opened with atoll's follower-reads flag: queries are served by this node, leader or
    /// not (after a read index from the leader); writes still need the leader.
    follower_reads: bool,
    /// When its current request arrived (write latency).
    request_at: std::time::Instant,
}

impl Client {
    pub(super) fn new(now: std::time::Instant) -> Client {
        Client {
            session: None,
            database: None,
            statements: Vec::new(),
            state: State::Idle,
            follower_reads: false,
            request_at: now,
        }
    }
}

/// A membership or transfer request waiting for raft.
pub(super) struct ChangeWaiter {
    pub(super) conn: ConnId,
    kind: ChangeKind,
}

enum ChangeKind {
    /// Answered once the configuration entry at `index` (appended in `term`) is applied.
    Entry { index: LogIndex, term: Term },
    /// Answered once node `id` is a voter, or failed when raft abandons its promotion.
    Promotion { id: NodeId },
    /// Answered once this node no longer leads, or failed when the transfer aborts.
    Transfer,
}

/// A request's precondition that failed: its FAILURE.
type Refusal = (u64, String);

pub(super) fn not_leader() -> Refusal {
    (values::CODE_NOT_LEADER, "not leader".to_owned())
}

fn no_database() -> Refusal {
    (values::CODE_NOT_FOUND, "no database opened".to_owned())
}

fn no_statement() -> Refusal {
    (
        values::CODE_NOT_FOUND,
        "no statement with the given id".to_owned(),
    )
}

fn wire_role(role: MemberRole) -> Role {
    match role {
        MemberRole::Voter => Role::Voter,
        MemberRole::Standby => Role::Standby,
        MemberRole::Spare => Role::Spare,
    }
}

fn member_role(role: Role) -> MemberRole {
    match role {
        Role::Voter => MemberRole::Voter,
        Role::Standby => MemberRole::Standby,
        Role::Spare => MemberRole::Spare,
    }
}

/// The byte offset where the statement after the first one starts in `text` (the tail offset
/// of a schema-1 STMT), or the text's length when there is none.
fn tail_offset(text: &str) -> u64 {
    let split = sql::split(text);
    let Some(first) = split.statements.first() else {
        return text.len() as u64;
    };
    let end = first.as_ptr() as usize - text.as_ptr() as usize + first.len();
    match text[end..].find(';') {
        Some(at) => (end + at + 1) as u64,
        None => text.len() as u64,
    }
}

/// Whether SQL text holds no statement (empty, blanks, comments).
fn is_empty_sql(text: &str) -> bool {
    let split = sql::split(text);
    split.statements.is_empty() && split.rest.is_empty()
}

/// The first statement of SQL text: QUERY_SQL runs only that one, as dqlite 1.11 does.
fn first_statement(text: &str) -> &str {
    let split = sql::split(text);
    split.statements.first().copied().unwrap_or(split.rest)
}

impl Node {
    /// Answers a request, or starts the work that will answer it.
    pub(super) fn on_request(&mut self, conn: ConnId, request: Request) {
        if let Some(client) = self.clients.get_mut(&conn) {
            client.request_at = self.clock.now();
        }
        self.serve_request(conn, request, false);
    }

    /// Answers a request; `read_confirmed` says a query's read index is applied (see
    /// `reads.rs`): until then a query waits for it.
    pub(super) fn serve_request(&mut self, conn: ConnId, request: Request, read_confirmed: bool) {
        let Some(client) = self.clients.get(&conn) else {
            return;
        };
        if !matches!(client.state, State::Idle) {
            // The reactor hands out one request at a time; a second one is a bug.
            warn!("{conn}: a request while another is in progress");
            return;
        }
        // Follower reads: OPEN with the flag, then reads, on any node.
        let follower_reads = client.follower_reads
            || matches!(&request, Request::Open { flags, .. } if flags & OPEN_FOLLOWER_READS != 0);
        let needs_leader = match request {
            Request::Open { .. }
            | Request::Prepare { .. }
            | Request::Query { .. }
            | Request::QuerySql { .. } => !follower_reads,
            Request::Exec { .. }
            | Request::ExecSql { .. }
            | Request::Add { .. }
            | Request::Assign { .. }
            | Request::Remove { .. }
            | Request::Transfer { .. } => true,
            _ => false,
        };
        let leading = self.raft.role() == StateRole::Leader;
        if needs_leader && !leading {
            return self.refuse(conn, not_leader());
        }
        if (needs_leader || request.is_query()) && leading && !self.leader_ready() {
            // A new leader first applies what earlier terms committed.
            self.parked.push((conn, request));
            return;
        }
        if request.is_query() && !read_confirmed {
            // Answered once a read index confirms this node's view (batched per turn).
            self.reads.gather(conn, request, self.clock.now());
            return;
        }
        match request {
            Request::Leader => {
                let (id, address) = self.leader_info();
                self.send(conn, &Response::Server { id, address });
            }
            Request::Client { id } => {
                debug!("{conn}: client id {id}");
                self.send(
                    conn,
                    &Response::Welcome {
                        heartbeat_timeout_ms: HEARTBEAT_TIMEOUT_MS,
                    },
                );
            }
            Request::Heartbeat { .. } => self.refuse(
                conn,
                (values::CODE_PARSE, "unrecognized request type".to_owned()),
            ),
            Request::Connect { id, address } => {
                // dqlite's raft hand-over: atoll nodes talk to each other their own way.
                info!("{conn}: CONNECT from dqlite node {id} at {address:?} refused");
                self.refuse(
                    conn,
                    (
                        values::CODE_PARSE,
                        "unrecognized request type: atoll does not speak dqlite's raft".into(),
                    ),
                );
                self.reactor.close_after_flush(conn);
            }
            Request::Open { name, flags, .. } => {
                self.open_database(conn, &name, flags & OPEN_FOLLOWER_READS != 0)
            }
            Request::Prepare {
                db_id,
                sql,
                with_tail,
            } => self.prepare(conn, db_id, &sql, with_tail),
            Request::Exec {
                db_id,
                stmt_id,
                params,
            } => self.statement(conn, db_id, stmt_id, params, false),
            Request::Query {
                db_id,
                stmt_id,
                params,
            } => self.statement(conn, db_id, stmt_id, params, true),
            Request::Finalize { db_id, stmt_id } => self.finalize(conn, db_id, stmt_id),
            Request::ExecSql { db_id, sql, params } => self.sql(conn, db_id, &sql, params, false),
            Request::QuerySql { db_id, sql, params } => self.sql(conn, db_id, &sql, params, true),
            Request::Interrupt { .. } => {
                // The reactor hands over the INTERRUPT only once the stream it stops has
                // ended (as dqlite does): nothing is left to stop.
                self.send(conn, &Response::Empty);
            }
            Request::Add { id, address } => self.add(conn, id, &address),
            Request::Assign { id, role } => self.assign(conn, id, role),
            Request::Remove { id } => self.remove(conn, id),
            Request::Dump { name } => self.dump(conn, &name),
            Request::Cluster { format } => {
                let nodes = self
                    .raft
                    .configuration()
                    .members()
                    .map(|(id, member)| NodeInfo {
                        id: id.0,
                        address: member.address.clone(),
                        role: (format == ClusterFormat::V1).then(|| wire_role(member.role)),
                    })
                    .collect();
                self.send(conn, &Response::Servers { nodes });
            }
            Request::Transfer { id } => self.transfer(conn, id),
            Request::Describe => self.send(
                conn,
                &Response::Metadata {
                    failure_domain: 0,
                    weight: self.weight,
                },
            ),
            Request::DescribeV1 => {
                let metadata = self.metadata();
                self.send(conn, &Response::MetadataV1(metadata));
            }
            Request::Weight { weight } => {
                self.weight = weight;
                self.send(conn, &Response::Empty);
            }
            Request::Verify { index, database } => self.verify_request(conn, index, &database),
            Request::Status => {
                let status = self.status();
                self.send(conn, &Response::Status(Box::new(status)));
            }
            Request::Restore {
                database,
                restore_id,
                offset,
                total,
                data,
            } => self.restore_request(
                conn,
                super::restore::Piece {
                    database: &database,
                    restore_id,
                    offset,
                    total,
                    data: &data,
                },
            ),
            Request::Repair { database } => match self.request_repair(&database) {
                Ok(()) => self.send(conn, &Response::Empty),
                Err(why) => self.refuse(conn, (values::CODE_ERROR, why)),
            },
        }
    }

    /// VERIFY: index 0 makes a verify point (leader only) and answers its index, pending;
    /// otherwise this node's checksums at that point.
    fn verify_request(&mut self, conn: ConnId, index: u64, database: &str) {
        let applied = self.raft.applied().0;
        if index > 0 {
            let answer = self.verify.answer(self.config.id, applied, index);
            return self.send(conn, &Response::Checksums(answer));
        }
        let payload = match super::verify::encode_point(database) {
            Ok(payload) => payload,
            Err(why) => return self.refuse(conn, (values::CODE_ERROR, why)),
        };
        match self.raft.propose(Payload::from_vec(payload)) {
            Ok(index) => {
                info!("{conn}: verify point {index} proposed for {database:?}");
                let answer = Checksums {
                    index: index.0,
                    node_id: self.config.id,
                    applied_index: applied,
                    state: VerifyState::Pending,
                    databases: Vec::new(),
                };
                self.send(conn, &Response::Checksums(answer));
            }
            Err(e) => {
                let refusal = Self::raft_refusal(e);
                self.refuse(conn, refusal);
            }
        }
    }

    /// What `/metrics` reports besides the node's own counters.
    pub(super) fn metrics_sample(&self) -> super::metrics::Sample {
        let leader = self.raft.role() == StateRole::Leader;
        let last = self.raft.last_index().0;
        let peer_lags = if leader {
            self.raft
                .progress()
                .filter(|(id, _)| id.0 != self.config.id)
                .map(|(id, progress)| (id.0, last.saturating_sub(progress.match_index().0)))
                .collect()
        } else {
            Vec::new()
        };
        super::metrics::Sample {
            term: self.raft.term().0,
            commit_index: self.raft.commit_index().0,
            applied_index: self.raft.applied().0,
            is_leader: leader,
            peer_lags,
            snapshots: self.stats.snapshots + self.stats.snapshots_installed,
            snapshots_refused: self.stats.snapshots_refused,
            databases: self.engine.database_names().len() as u64,
            client_connections: self.clients.len() as u64,
            resident_memory_bytes: super::metrics::resident_memory_bytes(),
        }
    }

    /// STATUS: what `atoll status` shows of this node.
    fn status(&self) -> NodeStatus {
        let last_contact_ms = if self.raft.role() == StateRole::Leader {
            0
        } else {
            self.last_leader_contact.map_or(u64::MAX, |at| {
                self.clock.now().saturating_duration_since(at).as_millis() as u64
            })
        };
        NodeStatus {
            metadata: self.metadata(),
            last_contact_ms,
            disk_free_bytes: self.files.available_bytes(&self.data_dir).unwrap_or(0),
            databases: self.engine.database_names().len() as u64,
            rss_bytes: super::metrics::resident_memory_bytes().unwrap_or(0),
            repairing: self.repairing(),
            version: env!("CARGO_PKG_VERSION").to_owned(),
        }
    }

    /// This node's identity and Raft status, for DESCRIBE format 1 (atoll's extension).
    fn metadata(&self) -> NodeMetadata {
        NodeMetadata {
            failure_domain: 0,
            weight: self.weight,
            id: self.config.id,
            // Never told to clients: with a leaked secret it would be all a forger needs, and
            // clients have no use for it (`atoll join` takes it from the join token).
            cluster_id: 0,
            term: self.raft.term().0,
            state: match self.raft.role() {
                StateRole::Follower => 0,
                StateRole::PreCandidate => 1,
                StateRole::Candidate => 2,
                StateRole::Leader => 3,
            },
            leader_id: self.raft.leader_id().map_or(0, |id| id.0),
            commit_index: self.raft.commit_index().0,
            applied_index: self.raft.applied().0,
            last_index: self.raft.last_index().0,
            corrupt_databases: self.engine.corrupt_databases().len() as u64,
        }
    }

    /// The leader this node knows, as LEADER answers it: id 0 and "" when it knows none or is
    /// not a voter itself (only voters report a leader, as in dqlite).
    fn leader_info(&self) -> (u64, String) {
        let configuration = self.raft.configuration();
        if !configuration.is_voter(NodeId(self.config.id)) {
            return (0, String::new());
        }
        match self.raft.leader_id() {
            Some(id) if id.0 == self.config.id => (id.0, self.config.address.clone()),
            Some(id) => match configuration.get(id) {
                Some(member) => (id.0, member.address.clone()),
                None => (0, String::new()),
            },
            None => (0, String::new()),
        }
    }

    pub(super) fn send(&mut self, conn: ConnId, response: &Response) {
        if let Err(e) = self.reactor.send(conn, response) {
            debug!("{conn}: answer not sent: {e}");
        }
    }

    pub(super) fn refuse(&mut self, conn: ConnId, (code, message): Refusal) {
        debug!("{conn}: FAILURE {code} {message:?}");
        self.send(conn, &Response::Failure { code, message });
    }

    /// The open database of a request naming `db_id`, with its session.
    fn database(
        &self,
        conn: ConnId,
        db_id: u64,
    ) -> Result<(atoll_core::SessionId, String), Refusal> {
        let client = self.clients.get(&conn).ok_or_else(no_database)?;
        match (&client.database, client.session) {
            (Some(name), Some(session)) if db_id == 0 => Ok((session, name.clone())),
            _ => Err(no_database()),
        }
    }

    fn open_database(&mut self, conn: ConnId, name: &str, follower_reads: bool) {
        let client = self.clients.get(&conn).expect("checked by on_request");
        if client.database.is_some() {
            return self.refuse(
                conn,
                (
                    values::CODE_BUSY,
                    "a database for this connection is already open".to_owned(),
                ),
            );
        }
        let session = match client.session {
            Some(session) => session,
            None => match self.engine.open_session() {
                Ok(session) => session,
                Err(e) => return self.refuse(conn, values::failure(&e)),
            },
        };
        let client = self.clients.get_mut(&conn).expect("checked above");
        client.session = Some(session);
        self.sessions.insert(session, conn);
        match self.engine.open_database(session, name) {
            Ok(()) => {
                let client = self.clients.get_mut(&conn).expect("checked above");
                client.database = Some(name.to_owned());
                client.follower_reads = follower_reads;
                self.send(conn, &Response::Db { id: 0 });
            }
            Err(e) => self.refuse(conn, values::failure(&e)),
        }
    }

    fn prepare(&mut self, conn: ConnId, db_id: u64, text: &str, with_tail: bool) {
        let (session, database) = match self.database(conn, db_id) {
            Ok(found) => found,
            Err(refusal) => return self.refuse(conn, refusal),
        };
        if is_empty_sql(text) {
            return self.refuse(conn, (0, "empty statement".to_owned()));
        }
        match self.engine.prepare(session, &database, text) {
            Ok((engine_id, params_count)) => {
                let client = self.clients.get_mut(&conn).expect("checked by database()");
                let stmt_id = match client.statements.iter().position(Option::is_none) {
                    Some(free) => {
                        client.statements[free] = Some(engine_id);
                        free
                    }
                    None => {
                        client.statements.push(Some(engine_id));
                        client.statements.len() - 1
                    }
                };
                let response = Response::Stmt {
                    db_id: 0,
                    stmt_id: stmt_id as u32,
                    params_count: params_count as u64,
                    tail_offset: with_tail.then(|| tail_offset(text)),
                };
                self.send(conn, &response);
            }
            Err(e) => self.refuse(conn, values::failure(&e)),
        }
    }

    fn engine_statement(&self, conn: ConnId, stmt_id: u32) -> Option<u32> {
        let client = self.clients.get(&conn)?;
        client.statements.get(stmt_id as usize).copied().flatten()
    }

    fn statement(
        &mut self,
        conn: ConnId,
        db_id: u32,
        stmt_id: u32,
        params: Vec<atoll_net::protocol::Value>,
        query: bool,
    ) {
        let (session, database) = match self.database(conn, u64::from(db_id)) {
            Ok(found) => found,
            Err(refusal) => return self.refuse(conn, refusal),
        };
        let Some(statement) = self.engine_statement(conn, stmt_id) else {
            return self.refuse(conn, no_statement());
        };
        let params: Vec<_> = params.into_iter().map(values::parameter).collect();
        let target = Target::Statement(statement);
        let reply = if query {
            self.engine.query(session, &database, target, &params)
        } else {
            self.engine.exec(session, &database, target, &params)
        };
        self.on_reply(conn, reply);
    }

    fn finalize(&mut self, conn: ConnId, db_id: u32, stmt_id: u32) {
        let (session, _) = match self.database(conn, u64::from(db_id)) {
            Ok(found) => found,
            Err(refusal) => return self.refuse(conn, refusal),
        };
        let Some(statement) = self.engine_statement(conn, stmt_id) else {
            return self.refuse(conn, no_statement());
        };
        if let Some(client) = self.clients.get_mut(&conn) {
            client.statements[stmt_id as usize] = None;
            while client.statements.last() == Some(&None) {
                client.statements.pop();
            }
        }
        match self.engine.finalize(session, statement) {
            Ok(()) => self.send(conn, &Response::Empty),
            Err(e) => self.refuse(conn, values::failure(&e)),
        }
    }

    fn sql(
        &mut self,
        conn: ConnId,
        db_id: u64,
        text: &str,
        params: Vec<atoll_net::protocol::Value>,
        query: bool,
    ) {
        let (session, database) = match self.database(conn, db_id) {
            Ok(found) => found,
            Err(refusal) => return self.refuse(conn, refusal),
        };
        if is_empty_sql(text) {
            return if query {
                self.refuse(conn, (0, "empty statement".to_owned()))
            } else {
                self.send(
                    conn,
                    &Response::Result {
                        last_insert_id: 0,
                        rows_affected: 0,
                    },
                )
            };
        }
        let params: Vec<_> = params.into_iter().map(values::parameter).collect();
        let reply = if query {
            let text = first_statement(text);
            self.engine
                .query(session, &database, Target::Sql(text), &params)
        } else {
            self.engine
                .exec(session, &database, Target::Sql(text), &params)
        };
        self.on_reply(conn, reply);
    }

    /// What an engine call returned: an answer now, or one to wait for.
    fn on_reply(&mut self, conn: ConnId, reply: Result<Reply, ExecError>) {
        match reply {
            Ok(Reply::Done(response)) => self.complete(conn, Ok(response)),
            Ok(Reply::Queued | Reply::Proposed { .. }) => {
                if let Some(client) = self.clients.get_mut(&conn) {
                    client.state = State::Waiting;
                }
            }
            Err(e) => self.complete(conn, Err(e)),
        }
        self.drain_engine();
    }

    /// Answers a request with the engine's response.
    pub(super) fn complete(&mut self, conn: ConnId, result: Result<CoreResponse, ExecError>) {
        let now = self.clock.now();
        let Some(client) = self.clients.get_mut(&conn) else {
            return;
        };
        if matches!(client.state, State::Waiting) && result.is_ok() {
            // A write the engine queued or proposed: answered after its commit.
            let took = now
                .saturating_duration_since(client.request_at)
                .as_secs_f64();
            self.metrics.write_latency.observe(took);
        }
        client.state = State::Idle;
        match result {
            Ok(CoreResponse::Exec {
                last_insert_id,
                rows_changed,
            }) => self.send(
                conn,
                &Response::Result {
                    last_insert_id: last_insert_id as u64,
                    rows_affected: rows_changed,
                },
            ),
            Ok(CoreResponse::Rows(rows)) => {
                let declared = rows
                    .declared_types
                    .iter()
                    .map(|t| Declared::of(t.as_deref()))
                    .collect();
                let more = !rows.done;
                client.state = State::Rows(RowsStream {
                    rows,
                    declared,
                    row_next: 0,
                    more,
                });
                self.send_rows(conn);
            }
            Err(e) => self.refuse(conn, values::failure(&e)),
        }
    }

    /// The connection wrote everything: the next piece of its stream.
    pub(super) fn on_drained(&mut self, conn: ConnId) {
        let Some(client) = self.clients.get_mut(&conn) else {
            return;
        };
        match &mut client.state {
            State::Rows(stream) if stream.row_next >= stream.rows.row_count() && stream.more => {
                let session = client.session.expect("a stream has a session");
                match self.engine.query_next(session) {
                    Ok(rows) => {
                        let client = self.clients.get_mut(&conn).expect("checked above");
                        if let State::Rows(stream) = &mut client.state {
                            stream.more = !rows.done;
                            stream.rows = rows;
                            stream.row_next = 0;
                        }
                        self.send_rows(conn);
                    }
                    Err(e) => {
                        // An error while producing rows: a FAILURE after the rows sent so far.
                        let client = self.clients.get_mut(&conn).expect("checked above");
                        client.state = State::Idle;
                        self.refuse(conn, values::failure(&e));
                    }
                }
            }
            State::Rows(_) => self.send_rows(conn),
            State::Dump(_) => self.send_dump(conn),
            State::Idle | State::Waiting => {}
        }
    }

    /// Encodes the next piece of a result set: ROWS batches of about 4 KiB (as dqlite's), up to
    /// [`ROWS_PIECE_BYTES`] per call; the last batch of the result ends with DONE.
    fn send_rows(&mut self, conn: ConnId) {
        let Some(client) = self.clients.get_mut(&conn) else {
            return;
        };
        let State::Rows(mut stream) = std::mem::take(&mut client.state) else {
            return;
        };
        let sent = self.reactor.send_encoded(conn, |out| {
            let start = out.len();
            let columns = stream.rows.columns.len();
            let row_count = stream.rows.row_count();
            let mut cells: Vec<ValueRef<'_>> = Vec::with_capacity(columns);
            // Bounded: every batch takes at least one row, or ends the piece.
            loop {
                let mut batch = RowsBatch::begin(
                    out,
                    &stream.rows.columns,
                    atoll_net::protocol::response::ROWS_BATCH_BYTES_TARGET,
                );
                // A batch takes at least one row even when the column names alone fill it (a
                // thousand columns): otherwise the stream would send empty batches for ever.
                while stream.row_next < row_count && (batch.rows_count() == 0 || !batch.is_full()) {
                    cells.clear();
                    let row = stream.rows.row(stream.row_next);
                    cells.extend(
                        row.iter()
                            .zip(&stream.declared)
                            .map(|(value, declared)| values::cell(value, *declared)),
                    );
                    batch.push_row(&cells);
                    stream.row_next += 1;
                }
                let exhausted = stream.row_next >= row_count;
                if exhausted && !stream.more {
                    batch.finish(RowsEnd::Done);
                    return Completion::Final;
                }
                batch.finish(RowsEnd::Part);
                if exhausted || out.len() - start >= ROWS_PIECE_BYTES {
                    return Completion::More;
                }
            }
        });
        if sent.is_ok() {
            let done = stream.row_next >= stream.rows.row_count() && !stream.more;
            if !done {
                if let Some(client) = self.clients.get_mut(&conn) {
                    client.state = State::Rows(stream);
                }
            }
        }
    }

    fn dump(&mut self, conn: ConnId, name: &str) {
        let image = match self.engine.database_image(name) {
            Ok(Some(image)) => image,
            Ok(None) => {
                return self.refuse(
                    conn,
                    (
                        values::CODE_DQLITE_NOT_FOUND,
                        "database does not exists".to_owned(),
                    ),
                )
            }
            // Replay after a restart has not reached the state its main file holds: no image
            // of the applied index exists yet; the client may try again.
            Err(e @ atoll_core::EngineError::NotSettled { .. }) => {
                return self.refuse(conn, (values::CODE_BUSY, e.to_string()));
            }
            Err(e) => {
                warn!("DUMP of {name:?}: {e}");
                return self.refuse(conn, (values::CODE_ERROR, format!("dump failed: {e}")));
            }
        };
        // FILES: count, then (name, size, bytes) for the image and for an empty WAL. The header
        // announces the whole length; the image follows in pieces, one per drain.
        let wal_name = format!("{name}-wal");
        let text_bytes = |text: &str| (text.len() + 1).div_ceil(8) * 8;
        let size = image.len_bytes();
        let body_bytes = 8 + text_bytes(name) as u64 + 8 + size + text_bytes(&wal_name) as u64 + 8;
        let Ok(words) = u32::try_from(body_bytes / 8) else {
            return self.refuse(
                conn,
                (values::CODE_ERROR, "database too large to DUMP".to_owned()),
            );
        };
        let header = Header {
            words,
            kind: ResponseType::Files.code(),
            schema: 0,
            extra: 0,
        };
        let sent = self.reactor.send_encoded(conn, |out| {
            out.extend_from_slice(&header.encode());
            atoll_net::protocol::codec::put_u64(out, 2);
            atoll_net::protocol::codec::put_text(out, name);
            atoll_net::protocol::codec::put_u64(out, size);
            Completion::More
        });
        if sent.is_err() {
            return;
        }
        debug_assert_eq!(HEADER_BYTES, 8);
        if let Some(client) = self.clients.get_mut(&conn) {
            client.state = State::Dump(Box::new(DumpStream {
                image,
                remaining: size,
                wal_name,
            }));
        }
    }

    /// The next piece of a DUMP image; the last one carries the (empty) WAL file.
    fn send_dump(&mut self, conn: ConnId) {
        let Some(client) = self.clients.get_mut(&conn) else {
            return;
        };
        let State::Dump(mut stream) = std::mem::take(&mut client.state) else {
            return;
        };
        let mut failure = None;
        let sent = self.reactor.send_encoded(conn, |out| {
            let piece = stream.remaining.min(DUMP_PIECE_BYTES as u64) as usize;
            let start = out.len();
            out.resize(start + piece, 0);
            if let Err(e) = std::io::Read::read_exact(&mut stream.image, &mut out[start..]) {
                failure = Some(e);
            }
            stream.remaining -= piece as u64;
            if stream.remaining > 0 {
                return Completion::More;
            }
            atoll_net::protocol::codec::put_text(out, &stream.wal_name);
            atoll_net::protocol::codec::put_u64(out, 0);
            Completion::Final
        });
        if let Some(e) = failure {
            // The message is half sent: the only honest end is to close the connection.
            warn!("{conn}: DUMP failed while reading the database: {e}; closing");
            self.reactor.close(conn);
            return;
        }
        if sent.is_ok() && stream.remaining > 0 {
            if let Some(client) = self.clients.get_mut(&conn) {
                client.state = State::Dump(stream);
            }
        }
    }

    // ---- membership -------------------------------------------------------------------------

    pub(super) fn raft_refusal(error: atoll_raft::Error) -> Refusal {
        use atoll_raft::Error;
        match error {
            Error::NotLeader { .. } => not_leader(),
            Error::ConfChangeInProgress => (
                values::CODE_BUSY,
                "a configuration change is already in progress".to_owned(),
            ),
            Error::TransferInProgress => (
                values::CODE_BUSY,
                "a leadership transfer is in progress".to_owned(),
            ),
            Error::ProposalDropped => (
                values::CODE_BUSY,
                "the leader is busy; try again".to_owned(),
            ),
            Error::UnknownNode(_) => (values::CODE_ERROR, "server ID is not valid".to_owned()),
            Error::InvalidConfChange(why) | Error::InvalidRequest(why) => {
                (values::CODE_ERROR, why.to_owned())
            }
            other => (values::CODE_ERROR, other.to_string()),
        }
    }

    /// A configuration change raft accepted: answered when its entry is applied.
    fn wait_for_entry(&mut self, conn: ConnId, last_before: LogIndex) {
        let index = self.raft.last_index();
        if index == last_before {
            // Nothing to change (the node already has that role).
            return self.send(conn, &Response::Empty);
        }
        let term = self.raft.term();
        self.changes.push(ChangeWaiter {
            conn,
            kind: ChangeKind::Entry { index, term },
        });
    }

    fn add(&mut self, conn: ConnId, id: u64, address: &str) {
        let last = self.raft.last_index();
        match self.raft.add(NodeId(id), address, MemberRole::Spare) {
            Ok(()) => {
                info!("adding node {id} at {address} as a spare");
                self.wait_for_entry(conn, last);
            }
            Err(e) => self.refuse(conn, Self::raft_refusal(e)),
        }
    }

    fn assign(&mut self, conn: ConnId, id: u64, role: Option<Role>) {
        // The one-word form predates roles and means voter.
        let role = member_role(role.unwrap_or(Role::Voter));
        let id = NodeId(id);
        let last = self.raft.last_index();
        match self.raft.assign(id, role) {
            Ok(()) if self.raft.promotion().is_some_and(|p| p.id == id) => {
                self.changes.push(ChangeWaiter {
                    conn,
                    kind: ChangeKind::Promotion { id },
                });
            }
            Ok(()) => {
                info!("assigning node {id} the role {role:?}");
                self.wait_for_entry(conn, last);
            }
            Err(e) => self.refuse(conn, Self::raft_refusal(e)),
        }
    }

    fn remove(&mut self, conn: ConnId, id: u64) {
        let last = self.raft.last_index();
        match self.raft.remove(NodeId(id)) {
            Ok(()) => {
                info!("removing node {id}");
                self.wait_for_entry(conn, last);
            }
            Err(e) => self.refuse(conn, Self::raft_refusal(e)),
        }
    }

    fn transfer(&mut self, conn: ConnId, id: u64) {
        let target = (id != 0).then_some(NodeId(id));
        if target.is_some_and(|t| t.0 == self.config.id) {
            return self.refuse(
                conn,
                (values::CODE_ERROR, "server ID is not valid".to_owned()),
            );
        }
        match self.raft.transfer_leadership(target) {
            Ok(to) => {
                info!("transferring leadership to node {to}");
                self.changes.push(ChangeWaiter {
                    conn,
                    kind: ChangeKind::Transfer,
                });
            }
            Err(atoll_raft::Error::InvalidRequest(_)) if target.is_none() => self.refuse(
                conn,
                (
                    values::CODE_ERROR,
                    "there's no other voting server".to_owned(),
                ),
            ),
            Err(atoll_raft::Error::InvalidRequest(_)) => self.refuse(
                conn,
                (values::CODE_ERROR, "server ID is not valid".to_owned()),
            ),
            Err(e) => self.refuse(conn, Self::raft_refusal(e)),
        }
    }

    /// Answers the waiting membership and transfer requests whose outcome is known.
    pub(super) fn check_changes(&mut self) {
        let applied = self.raft.applied();
        let leading = self.raft.role() == StateRole::Leader;
        let mut answers = Vec::new();
        self.changes.retain(|waiter| {
            let answer = match &waiter.kind {
                ChangeKind::Entry { index, term } if applied >= *index => {
                    if self.raft.log_term(*index).is_none_or(|t| t == *term) {
                        Some(Ok(()))
                    } else {
                        Some(Err((
                            values::CODE_LEADERSHIP_LOST,
                            "leadership lost".to_owned(),
                        )))
                    }
                }
                ChangeKind::Entry { .. } => None,
                ChangeKind::Promotion { id } => {
                    let voter = self.raft.configuration().role(*id) == Some(MemberRole::Voter);
                    if voter && self.raft.configuration_index() <= applied {
                        Some(Ok(()))
                    } else if !voter && self.raft.promotion().is_none() {
                        Some(Err((
                            values::CODE_ERROR,
                            format!("node {id} did not catch up with the log: not promoted"),
                        )))
                    } else {
                        None
                    }
                }
                ChangeKind::Transfer if !leading => Some(Ok(())),
                ChangeKind::Transfer if self.raft.transferee().is_none() => Some(Err((
                    values::CODE_ERROR,
                    "leadership transfer failed".to_owned(),
                ))),
                ChangeKind::Transfer => None,
            };
            match answer {
                Some(answer) => {
                    answers.push((waiter.conn, answer));
                    false
                }
                None => true,
            }
        });
        for (conn, answer) in answers {
            match answer {
                Ok(()) => self.send(conn, &Response::Empty),
                Err(refusal) => self.refuse(conn, refusal),
            }
        }
    }

    /// Fails every waiting membership request (leadership lost), except transfers, which
    /// succeed exactly then.
    pub(super) fn fail_changes(&mut self, code: u64, message: &str) {
        let changes = std::mem::take(&mut self.changes);
        for waiter in changes {
            match waiter.kind {
                ChangeKind::Transfer => self.send(waiter.conn, &Response::Empty),
                _ => self.refuse(waiter.conn, (code, message.to_owned())),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn test_sql_helpers() {
        assert!(is_empty_sql(""));
        assert!(is_empty_sql("  -- nothing\n /* at all */ ;"));
        assert!(!is_empty_sql("SELECT 1"));
        assert_eq!(first_statement("SELECT 1; SELECT 2"), "SELECT 1");
        assert_eq!(first_statement("SELECT ';'"), "SELECT ';'");
        assert_eq!(tail_offset("SELECT 1; SELECT 2"), 9);
        assert_eq!(tail_offset("SELECT 1"), 8);
        assert_eq!(tail_offset("SELECT 1;"), 9);
    }
}
