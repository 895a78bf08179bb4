//! The simulator's clients: each one a state machine speaking the dqlite protocol through the
//! fabric (LEADER, OPEN, EXEC_SQL, QUERY_SQL, and an operator's TRANSFER, REMOVE and ASSIGN),
//! one request at a time, recording every operation on the keyed rows in the history the
//! checkers read.
//!
//! Rows: `kv(k, v)` holds one register per key; every write sets a value never written before,
//! so a read names the one write it saw. A trigger copies every committed write into
//! `writes(v, k)`, which the end-of-run check reads on every replica.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::time::Duration;

use atoll_net::client::OPEN_FOLLOWER_READS;
use atoll_net::protocol::{Request, Response, RowsEnd, Value};
use atoll_net::reactor::ConnId;
use atoll_raft::sim::linearizability::{OpKind, Operation, OPERATIONS_PER_KEY_MAX};

use crate::inputs::{Random, SeededRandom};
use crate::sim_network::Fabric;

/// The database every client uses.
pub const DATABASE: &str = "sim";
/// Statements creating the schema (idempotent: the setup retries them until all succeed).
pub const SCHEMA: [&str; 4] = [
    "CREATE TABLE IF NOT EXISTS kv(k INTEGER PRIMARY KEY, v INTEGER NOT NULL)",
    "CREATE TABLE IF NOT EXISTS writes(v INTEGER PRIMARY KEY, k INTEGER NOT NULL)",
    "CREATE TRIGGER IF NOT EXISTS kv_insert AFTER INSERT ON kv \
     BEGIN INSERT INTO writes VALUES (new.v, new.k); END",
    "CREATE TRIGGER IF NOT EXISTS kv_update AFTER UPDATE ON kv \
     BEGIN INSERT INTO writes VALUES (new.v, new.k); END",
];
const WRITE_SQL: &str =
    "INSERT INTO kv(k, v) VALUES (?, ?) ON CONFLICT(k) DO UPDATE SET v = excluded.v";
const READ_SQL: &str = "SELECT v FROM kv WHERE k = ?";
/// A request unanswered this long is given up: the connection is closed.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(3);
/// Registers the clients use at a time: the first this many that are not full. A full key (its
/// history at the checker's bound) is retired and the next one taken.
pub const KEYS: u64 = 6;
/// Operations recorded per key: room left for the final reads.
const OPERATIONS_PER_KEY_ISSUED_MAX: usize = OPERATIONS_PER_KEY_MAX - 16;

/// What every client shares: the history and the counters.
#[derive(Debug, Default)]
pub struct Shared {
    /// Per key, every operation (times in nanoseconds of simulated time).
    pub history: BTreeMap<u64, Vec<Operation>>,
    /// Writes the cluster acknowledged: value -> key.
    pub acknowledged: BTreeMap<u64, u64>,
    /// Every value a client asked to write: value -> key.
    pub issued: BTreeMap<u64, u64>,
    /// Values of transactions that never sent COMMIT (rolled back by closing): must never be
    /// visible.
    pub aborted: BTreeSet<u64>,
    /// The last value handed out.
    pub value_last: u64,
    /// A leadership transfer to this node is wanted (taken by the first client on a leader).
    pub transfer_wanted: Option<u64>,
    /// Leadership transfers asked.
    pub transfers: u64,
    /// Membership changes (REMOVE, ASSIGN) wanted, each taken by the next client on a leader
    /// (two at once race each other: raft must take one change at a time).
    pub membership_wanted: VecDeque<Request>,
    /// Membership changes asked, and those answered done.
    pub membership_asked: u64,
    /// Membership changes answered done.
    pub membership_done: u64,
    /// The setup (schema) is done.
    pub schema_ready: bool,
    /// Protocol violations seen by clients (garbage on the wire, unexpected answers).
    pub violations: Vec<String>,
}

impl Shared {
    fn key_full(&self, key: u64) -> bool {
        self.history.get(&key).map_or(0, Vec::len) >= OPERATIONS_PER_KEY_ISSUED_MAX
    }

    /// The first key not full at or after `base`.
    fn key_from(&self, base: u64) -> u64 {
        (base..)
            .find(|&key| !self.key_full(key))
            .expect("keys are unbounded")
    }

    /// The keys in use: the first [`KEYS`] not full.
    fn keys(&self) -> Vec<u64> {
        let mut keys = Vec::new();
        let mut key = 0;
        while keys.len() < KEYS as usize {
            key = self.key_from(key);
            keys.push(key);
            key += 1;
        }
        keys
    }
}

/// What a client's operation is.
#[derive(Debug, Clone)]
enum Op {
    Schema {
        next: usize,
    },
    Write {
        key: u64,
        value: u64,
    },
    Read {
        key: u64,
    },
    /// BEGIN, the writes, COMMIT; `sent` requests sent so far.
    Transaction {
        writes: Vec<(u64, u64)>,
        sent: usize,
    },
    Transfer {
        to: u64,
    },
    /// REMOVE or ASSIGN.
    Membership {
        request: Request,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Stage {
    /// No connection.
    Down,
    /// LEADER sent.
    AskLeader,
    /// OPEN sent.
    Opening,
    /// Open, between operations.
    Ready,
    /// An operation's request is out.
    Busy,
}

/// One simulated client session (reconnecting as needed).
#[derive(Debug)]
pub struct SimClient {
    /// Its number.
    pub id: usize,
    /// Reads only, on any node (atoll's follower reads), instead of following the leader.
    follower_reads: bool,
    conn: Option<ConnId>,
    node: u64,
    stage: Stage,
    op: Option<(Op, u64)>,
    /// ROWS batches of the current answer.
    rows: Vec<Vec<Value>>,
    /// The next request of a transaction, held back until `next_at` (a client that thinks
    /// between statements keeps its transaction open across faults and leader changes).
    delayed: Option<Request>,
    /// When to act next (nanoseconds of simulated time).
    next_at: u64,
    /// When the request out is given up.
    deadline: u64,
    /// The leader to try first.
    hint: Option<u64>,
    /// Issue no new operations (the run is quiescing); final reads only.
    pub quiet: bool,
    /// Keys still to read at the end (final reads).
    pub final_reads: VecDeque<u64>,
    random: SeededRandom,
}

/// The fabric and the time, for one client step.
pub struct Context<'a> {
    /// The network.
    pub fabric: &'a Fabric,
    /// Nanoseconds of simulated time.
    pub now: u64,
    /// Nodes that are up (connectable), ascending.
    pub up: &'a [u64],
    /// Shared history.
    pub shared: &'a mut Shared,
}

impl SimClient {
    /// A client; `seed` draws its choices.
    pub fn new(id: usize, follower_reads: bool, seed: u64) -> SimClient {
        SimClient {
            id,
            follower_reads,
            conn: None,
            node: 0,
            stage: Stage::Down,
            op: None,
            rows: Vec::new(),
            delayed: None,
            next_at: 0,
            deadline: 0,
            hint: None,
            quiet: false,
            final_reads: VecDeque::new(),
            random: SeededRandom::new(seed),
        }
    }

    /// A one-line description, for reports.
    pub fn describe(&self) -> String {
        format!(
            "client {} on node {} ({:?}, conn {:?}): {:?}, next at {} ms",
            self.id,
            self.node,
            self.stage,
            self.conn,
            self.op,
            self.next_at / 1_000_000
        )
    }

    /// Whether an operation is in flight.
    pub fn busy(&self) -> bool {
        self.op.is_some()
    }

    /// When the client next wants to act (nanoseconds), if it waits for nothing else.
    pub fn next_at(&self) -> u64 {
        if self.stage == Stage::Down || self.stage == Stage::Ready || self.delayed.is_some() {
            self.next_at
        } else {
            self.deadline
        }
    }

    fn below(&mut self, n: u64) -> u64 {
        self.random.next_u64() % n.max(1)
    }

    fn pause(&mut self, now: u64, min_ms: u64, max_ms: u64) {
        let span = (max_ms - min_ms) * 1_000_000;
        self.next_at = now + min_ms * 1_000_000 + self.below(span + 1);
    }

    /// Receives, times out, and acts.
    pub fn step(&mut self, ctx: &mut Context<'_>) {
        if let Some(conn) = self.conn {
            let received = ctx.fabric.client_receive(conn);
            if let Some(e) = received.garbage {
                ctx.shared
                    .violations
                    .push(format!("client {}: undecodable response: {e}", self.id));
            }
            for response in received.responses {
                if let Response::Rows(rows) = &response {
                    self.rows.extend(rows.rows.iter().cloned());
                    if rows.end == RowsEnd::Part {
                        continue;
                    }
                }
                self.on_final(response, ctx);
            }
            if received.closed && self.conn == Some(conn) {
                self.conn = None;
                self.on_lost(ctx);
            }
        }
        if matches!(self.stage, Stage::AskLeader | Stage::Opening | Stage::Busy)
            && ctx.now >= self.deadline
        {
            self.drop_connection(ctx);
        }
        if ctx.now < self.next_at {
            return;
        }
        if let Some(request) = self.delayed.take() {
            self.send(ctx, Stage::Busy, request);
            return;
        }
        match self.stage {
            Stage::Down => self.connect(ctx),
            Stage::Ready => self.start_op(ctx),
            _ => {}
        }
    }

    fn drop_connection(&mut self, ctx: &mut Context<'_>) {
        if let Some(conn) = self.conn.take() {
            ctx.fabric.client_close(conn);
        }
        self.on_lost(ctx);
    }

    /// The connection is gone: the operation in flight ends without an answer.
    fn on_lost(&mut self, ctx: &mut Context<'_>) {
        self.delayed = None;
        if let Some((op, invoke)) = self.op.take() {
            self.end_op(op, invoke, None, ctx);
        }
        self.stage = Stage::Down;
        self.rows.clear();
        self.pause(ctx.now, 1, 50);
    }

    fn connect(&mut self, ctx: &mut Context<'_>) {
        if ctx.up.is_empty() {
            self.pause(ctx.now, 10, 50);
            return;
        }
        let node = match self.hint.take() {
            Some(hint) if !self.follower_reads && ctx.up.contains(&hint) => hint,
            _ => ctx.up[self.below(ctx.up.len() as u64) as usize],
        };
        let Some(conn) = ctx.fabric.client_connect(node) else {
            self.pause(ctx.now, 10, 50);
            return;
        };
        self.conn = Some(conn);
        self.node = node;
        if self.follower_reads {
            self.send(ctx, Stage::Opening, open_request(true));
        } else {
            self.send(ctx, Stage::AskLeader, Request::Leader);
        }
    }

    fn send(&mut self, ctx: &mut Context<'_>, stage: Stage, request: Request) {
        let conn = self.conn.expect("sending on a connection");
        self.stage = stage;
        self.rows.clear();
        self.deadline = ctx.now + REQUEST_TIMEOUT.as_nanos() as u64;
        if !ctx.fabric.client_send(conn, request) {
            self.drop_connection(ctx);
        }
    }

    fn start_op(&mut self, ctx: &mut Context<'_>) {
        let now = ctx.now;
        let op = if !ctx.shared.schema_ready {
            if self.id != 0 {
                self.pause(now, 10, 20);
                return;
            }
            Op::Schema { next: 0 }
        } else if self.quiet {
            match self.final_reads.pop_front() {
                Some(key) => Op::Read { key },
                None => {
                    self.pause(now, 50, 100);
                    return;
                }
            }
        } else if let (false, Some(to)) = (self.follower_reads, ctx.shared.transfer_wanted) {
            ctx.shared.transfer_wanted = None;
            ctx.shared.transfers += 1;
            Op::Transfer { to }
        } else if let (false, Some(request)) = (
            self.follower_reads,
            ctx.shared.membership_wanted.front().cloned(),
        ) {
            ctx.shared.membership_wanted.pop_front();
            ctx.shared.membership_asked += 1;
            Op::Membership { request }
        } else {
            let keys = ctx.shared.keys();
            let key = keys[self.below(KEYS) as usize];
            match (self.follower_reads, self.below(10)) {
                (true, _) | (false, 0..=3) => Op::Read { key },
                (false, 4..=7) => Op::Write {
                    key,
                    value: next_value(ctx.shared, key),
                },
                _ => {
                    let other = keys
                        .into_iter()
                        .filter(|&k| k != key)
                        .nth(self.below(KEYS - 1) as usize);
                    let other = other.expect("KEYS - 1 other keys");
                    let writes = vec![
                        (key, next_value(ctx.shared, key)),
                        (other, next_value(ctx.shared, other)),
                    ];
                    Op::Transaction { writes, sent: 0 }
                }
            }
        };
        let request = match &op {
            Op::Schema { next } => exec(SCHEMA[*next], vec![]),
            Op::Write { key, value } => exec(WRITE_SQL, vec![int(*key), int(*value)]),
            Op::Read { key } => Request::QuerySql {
                db_id: 0,
                sql: READ_SQL.into(),
                params: vec![int(*key)],
            },
            Op::Transaction { .. } => exec("BEGIN", vec![]),
            Op::Transfer { to } => Request::Transfer { id: *to },
            Op::Membership { request } => request.clone(),
        };
        self.op = Some((op, now));
        self.send(ctx, Stage::Busy, request);
    }

    fn on_final(&mut self, response: Response, ctx: &mut Context<'_>) {
        let now = ctx.now;
        match self.stage {
            Stage::AskLeader => match response {
                Response::Server { id, .. } if id == self.node => {
                    self.send(ctx, Stage::Opening, open_request(false))
                }
                Response::Server { id, .. } => {
                    self.hint = (id != 0).then_some(id);
                    self.drop_connection(ctx);
                    if self.hint.is_some() {
                        self.next_at = now;
                    }
                }
                _ => self.drop_connection(ctx),
            },
            Stage::Opening => match response {
                Response::Db { .. } => {
                    self.stage = Stage::Ready;
                    self.next_at = now;
                }
                _ => self.drop_connection(ctx),
            },
            Stage::Busy => self.on_op_answer(response, ctx),
            Stage::Down | Stage::Ready => ctx.shared.violations.push(format!(
                "client {}: an answer with no request out: {response:?}",
                self.id
            )),
        }
    }

    fn on_op_answer(&mut self, response: Response, ctx: &mut Context<'_>) {
        let Some((op, invoke)) = self.op.take() else {
            return;
        };
        let failed = matches!(response, Response::Failure { .. });
        if let (Op::Transaction { writes, sent }, false) = (&op, failed) {
            // BEGIN (0), the writes (1..=n), COMMIT (n + 1).
            let sent = sent + 1;
            if sent <= writes.len() + 1 {
                let request = match writes.get(sent - 1) {
                    Some((key, value)) => exec(WRITE_SQL, vec![int(*key), int(*value)]),
                    None => exec("COMMIT", vec![]),
                };
                self.op = Some((
                    Op::Transaction {
                        writes: writes.clone(),
                        sent,
                    },
                    invoke,
                ));
                if self.below(8) == 0 {
                    self.pause(ctx.now, 0, 300);
                    self.deadline = self.next_at + REQUEST_TIMEOUT.as_nanos() as u64;
                    self.delayed = Some(request);
                } else {
                    self.send(ctx, Stage::Busy, request);
                }
                return;
            }
        }
        if let (Op::Schema { next }, false) = (&op, failed) {
            if next + 1 < SCHEMA.len() {
                self.op = Some((Op::Schema { next: next + 1 }, invoke));
                self.send(ctx, Stage::Busy, exec(SCHEMA[next + 1], vec![]));
                return;
            }
            ctx.shared.schema_ready = true;
        }
        let answer = (!failed).then_some(response);
        self.end_op(op, invoke, answer, ctx);
        if failed {
            self.drop_connection(ctx);
        } else {
            self.stage = Stage::Ready;
            self.pause(ctx.now, 0, 20);
        }
    }

    /// Records an operation's outcome: `answer` is its successful final response, `None` if
    /// it failed or the connection was lost (a write's outcome is then unknown).
    fn end_op(&mut self, op: Op, invoke: u64, answer: Option<Response>, ctx: &mut Context<'_>) {
        let now = ctx.now;
        let shared = &mut *ctx.shared;
        match op {
            Op::Schema { .. } | Op::Transfer { .. } => {}
            Op::Membership { .. } => shared.membership_done += u64::from(answer.is_some()),
            Op::Write { key, value } => {
                let response = answer.map(|_| now);
                if response.is_some() {
                    shared.acknowledged.insert(value, key);
                }
                push(shared, key, invoke, response, OpKind::Write(value));
            }
            Op::Read { key } => {
                let Some(answer) = answer else {
                    return;
                };
                let value = match (&answer, self.rows.first().and_then(|row| row.first())) {
                    (Response::Rows(_), None) => 0,
                    (Response::Rows(_), Some(Value::Integer(v))) => *v as u64,
                    _ => {
                        shared.violations.push(format!(
                            "client {}: read of key {key} answered {answer:?} ({:?})",
                            self.id, self.rows
                        ));
                        return;
                    }
                };
                push(shared, key, invoke, Some(now), OpKind::Read(value));
            }
            Op::Transaction { writes, sent } => {
                let committed = answer.is_some() && sent == writes.len() + 1;
                let commit_sent = sent == writes.len() + 1;
                for (key, value) in writes {
                    if committed {
                        shared.acknowledged.insert(value, key);
                        push(shared, key, invoke, Some(now), OpKind::Write(value));
                    } else if commit_sent {
                        push(shared, key, invoke, None, OpKind::Write(value));
                    } else {
                        // Never committed: the connection is closed, which rolls it back.
                        shared.aborted.insert(value);
                    }
                }
            }
        }
    }
}

fn push(shared: &mut Shared, key: u64, invoke: u64, response: Option<u64>, kind: OpKind) {
    shared.history.entry(key).or_default().push(Operation {
        invoke,
        response,
        kind,
        log_index: None,
    });
}

fn next_value(shared: &mut Shared, key: u64) -> u64 {
    shared.value_last += 1;
    shared.issued.insert(shared.value_last, key);
    shared.value_last
}

fn int(value: u64) -> Value {
    Value::Integer(value as i64)
}

fn exec(sql: &str, params: Vec<Value>) -> Request {
    Request::ExecSql {
        db_id: 0,
        sql: sql.into(),
        params,
    }
}

fn open_request(follower_reads: bool) -> Request {
    Request::Open {
        name: DATABASE.into(),
        flags: if follower_reads {
            OPEN_FOLLOWER_READS
        } else {
            0
        },
        vfs: String::new(),
    }
}
