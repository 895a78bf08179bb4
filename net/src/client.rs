//! A blocking dqlite client for the CLI and the benchmarks: std sockets with timeouts, leader
//! discovery as the reference's section 10 describes, reconnection on "not leader" where that is
//! safe, and every request of protocol version 1.
//!
//! Two levels:
//! - [`Connection`]: one TCP connection to one node, one method per request.
//! - [`Client`]: a connection to the cluster's leader, found from a list of addresses and found
//!   again when the leader changes.
//!
//! Retry rules (never guess about a write):
//! - FAILURE 10250 "not leader" (or its legacy twin 8202) means the node refused before doing
//!   anything, so [`Client`] rediscovers the leader and resends the request, unless a transaction
//!   is open on the connection (it would be lost silently): then the caller gets the failure.
//! - FAILURE 10506 "leadership lost" (or 8458), or a connection that breaks after a SQL or
//!   membership request was written, means the request may or may not have taken effect: the
//!   caller gets [`ClientError::OutcomeUnknown`]; the next call reconnects.

use std::fmt;
use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpStream, ToSocketAddrs};
use std::thread;
use std::time::{Duration, Instant};

use crate::blocking::{read_message, ReadError};
use crate::protocol::{
    Checksums, ClusterFormat, DecodeError, File, NodeInfo, NodeMetadata, NodeStatus,
    ProtocolVersion, Request, Response, ResponseContext, ResponseType, Role, Rows, RowsEnd, Value,
    HEADER_BYTES,
};

/// OPEN flag (atoll-specific): serve this connection's queries on the node it is connected to,
/// leader or not. The node asks the leader for a read index (ReadIndex), waits until it has
/// applied it, and reads locally: linearizable reads that spread over the followers. Writes on
/// such a connection still need the leader (FAILURE 10250 elsewhere). dqlite ignores the flag.
pub const OPEN_FOLLOWER_READS: u64 = 1 << 48;

/// "not leader" (SQLITE_IOERR_NOT_LEADER).
pub const CODE_NOT_LEADER: u64 = 10250;
/// "leadership lost" while a write was replicated (SQLITE_IOERR_LEADERSHIP_LOST).
pub const CODE_LEADERSHIP_LOST: u64 = 10506;
/// Pre-2020 dqlite's "not leader".
pub const CODE_NOT_LEADER_LEGACY: u64 = 8202;
/// Pre-2020 dqlite's "leadership lost".
pub const CODE_LEADERSHIP_LOST_LEGACY: u64 = 8458;

/// Timeouts, limits and identity of a client.
#[derive(Debug, Clone)]
pub struct ClientConfig {
    /// Time to establish one TCP connection.
    pub connect_timeout: Duration,
    /// Time to write a request or to wait for each response message.
    pub request_timeout: Duration,
    /// Total time leader discovery may take before [`ClientError::NoLeader`].
    pub leader_timeout: Duration,
    /// First pause between discovery rounds; doubles up to `backoff_max`.
    pub backoff_initial: Duration,
    /// Longest pause between discovery rounds.
    pub backoff_max: Duration,
    /// Largest response body accepted (a DUMP answer holds whole files).
    pub response_body_bytes_max: u64,
    /// Id sent with CLIENT.
    pub client_id: u64,
    /// TLS with the cluster's certificate (`None`: plaintext).
    pub tls: Option<crate::tls::TlsContext>,
}

impl Default for ClientConfig {
    fn default() -> Self {
        ClientConfig {
            connect_timeout: Duration::from_secs(5),
            request_timeout: Duration::from_secs(30),
            leader_timeout: Duration::from_secs(10),
            backoff_initial: Duration::from_millis(50),
            backoff_max: Duration::from_secs(1),
            response_body_bytes_max: 1 << 30,
            client_id: 0,
            tls: None,
        }
    }
}

/// A protocol violation by the server.
#[derive(Debug, Clone, PartialEq)]
pub enum ProtocolError {
    /// A response did not decode.
    Decode(DecodeError),
    /// A response of the wrong type for the request.
    Unexpected {
        /// What the request expects.
        expected: ResponseType,
        /// What came.
        got: ResponseType,
    },
    /// A LEADER answer with id 0 and a non-empty address, or the like.
    Invalid(String),
}

impl fmt::Display for ProtocolError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ProtocolError::Decode(e) => write!(f, "undecodable response: {e}"),
            ProtocolError::Unexpected { expected, got } => write!(
                f,
                "expected a {} response, got {}",
                expected.name(),
                got.name()
            ),
            ProtocolError::Invalid(what) => write!(f, "invalid response: {what}"),
        }
    }
}

impl std::error::Error for ProtocolError {}

/// What went wrong with a client call.
#[derive(Debug)]
pub enum ClientError {
    /// The connection failed, timed out or was closed.
    Io(io::Error),
    /// The server broke the protocol.
    Protocol(ProtocolError),
    /// The server answered FAILURE.
    Failure {
        /// SQLite or dqlite code (section 9 of the reference).
        code: u64,
        /// The server's message.
        message: String,
    },
    /// No node named itself leader before the deadline.
    NoLeader {
        /// What each attempt found, for the error message.
        attempts: Vec<String>,
    },
    /// The request may or may not have taken effect (leadership lost mid-write, or the
    /// connection broke after the request was sent). It was not retried.
    OutcomeUnknown(Box<ClientError>),
    /// A prepared statement of an earlier connection (the client reconnected since).
    StatementExpired,
    /// A parameter the protocol cannot carry (UNIXTIME, text with a NUL byte).
    InvalidParameter(String),
    /// An address that does not resolve.
    InvalidAddress(String),
}

impl ClientError {
    /// Whether this is FAILURE "not leader" (current or legacy code).
    pub fn is_not_leader(&self) -> bool {
        matches!(self, ClientError::Failure { code, .. }
            if *code == CODE_NOT_LEADER || *code == CODE_NOT_LEADER_LEGACY)
    }

    /// Whether this is FAILURE "leadership lost" (current or legacy code).
    pub fn is_leadership_lost(&self) -> bool {
        matches!(self, ClientError::Failure { code, .. }
            if *code == CODE_LEADERSHIP_LOST || *code == CODE_LEADERSHIP_LOST_LEGACY)
    }
}

impl fmt::Display for ClientError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ClientError::Io(e) => write!(f, "connection error: {e}"),
            ClientError::Protocol(e) => write!(f, "protocol error: {e}"),
            ClientError::Failure { code, message } => write!(f, "{message} (code {code})"),
            ClientError::NoLeader { attempts } => {
                write!(f, "no leader found: {}", attempts.join("; "))
            }
            ClientError::OutcomeUnknown(e) => {
                write!(f, "the request may or may not have taken effect: {e}")
            }
            ClientError::StatementExpired => {
                write!(f, "prepared statement belongs to an earlier connection")
            }
            ClientError::InvalidParameter(why) => write!(f, "invalid parameter: {why}"),
            ClientError::InvalidAddress(address) => write!(f, "invalid address {address}"),
        }
    }
}

impl std::error::Error for ClientError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            ClientError::Io(e) => Some(e),
            ClientError::Protocol(e) => Some(e),
            ClientError::OutcomeUnknown(e) => Some(e.as_ref()),
            _ => None,
        }
    }
}

impl From<io::Error> for ClientError {
    fn from(e: io::Error) -> Self {
        ClientError::Io(e)
    }
}

impl From<ProtocolError> for ClientError {
    fn from(e: ProtocolError) -> Self {
        ClientError::Protocol(e)
    }
}

impl From<ReadError> for ClientError {
    fn from(e: ReadError) -> Self {
        match e {
            ReadError::Io(e) => ClientError::Io(e),
            ReadError::Decode(e) => ClientError::Protocol(ProtocolError::Decode(e)),
        }
    }
}

/// The answer to EXEC and EXEC_SQL.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ExecResult {
    /// Last insert rowid of the connection.
    pub last_insert_id: u64,
    /// Rows changed by the last statement.
    pub rows_affected: u64,
}

/// A whole result set.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct QueryResult {
    /// Column names.
    pub columns: Vec<String>,
    /// Rows, one value per column.
    pub rows: Vec<Vec<Value>>,
}

/// A prepared statement, valid on the connection that prepared it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Statement {
    /// Statement id.
    pub id: u32,
    /// Number of parameters.
    pub params_count: u64,
    epoch: u64,
}

/// Checks that parameters can be sent: UNIXTIME is never accepted as a parameter by dqlite, and
/// text cannot carry a NUL byte.
fn check_params(params: &[Value]) -> Result<(), ClientError> {
    for (i, value) in params.iter().enumerate() {
        match value {
            Value::UnixTime(_) => {
                return Err(ClientError::InvalidParameter(format!(
                    "parameter {}: UNIXTIME cannot be a parameter; send an INTEGER",
                    i + 1
                )))
            }
            Value::Text(text) | Value::Iso8601(text) if text.contains('\0') => {
                return Err(ClientError::InvalidParameter(format!(
                    "parameter {}: text contains a NUL byte; send a BLOB",
                    i + 1
                )))
            }
            _ => {}
        }
    }
    Ok(())
}

/// A connection's byte stream: plaintext or TLS.
#[derive(Debug)]
enum Stream {
    Plain(TcpStream),
    Tls(Box<rustls::StreamOwned<rustls::ClientConnection, TcpStream>>),
}

impl Read for Stream {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            Stream::Plain(stream) => stream.read(buf),
            Stream::Tls(stream) => stream.read(buf),
        }
    }
}

impl Write for Stream {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            Stream::Plain(stream) => stream.write(buf),
            Stream::Tls(stream) => stream.write(buf),
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        match self {
            Stream::Plain(stream) => stream.flush(),
            Stream::Tls(stream) => stream.flush(),
        }
    }
}

/// One connection to one node.
#[derive(Debug)]
pub struct Connection {
    stream: Stream,
    address: String,
    context: ResponseContext,
    buffer: Vec<u8>,
    response_body_bytes_max: u64,
    /// The connection broke mid-conversation; it cannot be used any more.
    broken: bool,
}

impl Connection {
    /// Connects to `address` (`host:port`) and sends the version word.
    pub fn connect(address: &str, config: &ClientConfig) -> Result<Connection, ClientError> {
        Connection::connect_with(address, config, ProtocolVersion::V1.word())
    }

    /// Connects to `address` announcing an atoll client ([`crate::protocol::VERSION_ATOLL_1`])
    /// and asks LEADER to learn whether the node is an atoll node: `Ok(None)` when the node
    /// closed the connection (a dqlite node refuses the word), the connection otherwise. On it,
    /// atoll-specific requests ([`Connection::describe_v1`]) are safe.
    pub fn connect_atoll(
        address: &str,
        config: &ClientConfig,
    ) -> Result<Option<Connection>, ClientError> {
        let mut connection =
            Connection::connect_with(address, config, crate::protocol::VERSION_ATOLL_1)?;
        match connection.leader() {
            Ok(_) => Ok(Some(connection)),
            Err(ClientError::Io(e))
                if matches!(
                    e.kind(),
                    io::ErrorKind::UnexpectedEof
                        | io::ErrorKind::ConnectionReset
                        | io::ErrorKind::BrokenPipe
                ) =>
            {
                Ok(None)
            }
            Err(e) => Err(e),
        }
    }

    fn connect_with(
        address: &str,
        config: &ClientConfig,
        version_word: u64,
    ) -> Result<Connection, ClientError> {
        let resolved: Vec<SocketAddr> = address
            .to_socket_addrs()
            .map_err(|_| ClientError::InvalidAddress(address.to_owned()))?
            .collect();
        let mut last_error = None;
        for socket_address in resolved {
            match TcpStream::connect_timeout(&socket_address, config.connect_timeout) {
                Ok(stream) => {
                    stream.set_nodelay(true)?;
                    stream.set_read_timeout(Some(config.request_timeout))?;
                    stream.set_write_timeout(Some(config.request_timeout))?;
                    let stream = match &config.tls {
                        None => Stream::Plain(stream),
                        Some(tls) => {
                            let session = tls.client_connection().map_err(|e| {
                                ClientError::Io(io::Error::new(io::ErrorKind::InvalidInput, e))
                            })?;
                            Stream::Tls(Box::new(rustls::StreamOwned::new(session, stream)))
                        }
                    };
                    let mut connection = Connection {
                        stream,
                        address: address.to_owned(),
                        context: ResponseContext::default(),
                        buffer: Vec::new(),
                        response_body_bytes_max: config.response_body_bytes_max,
                        broken: false,
                    };
                    connection.stream.write_all(&version_word.to_le_bytes())?;
                    connection.stream.flush()?;
                    return Ok(connection);
                }
                Err(e) => last_error = Some(e),
            }
        }
        Err(ClientError::Io(last_error.unwrap_or_else(|| {
            io::Error::new(io::ErrorKind::NotFound, "address resolves to nothing")
        })))
    }

    /// The address this connection dialed, as given.
    pub fn address(&self) -> &str {
        &self.address
    }

    /// Whether an I/O error or protocol violation made the connection unusable.
    pub fn is_broken(&self) -> bool {
        self.broken
    }

    /// Sends one request.
    pub fn send(&mut self, request: &Request) -> Result<(), ClientError> {
        if let Request::Cluster { format } = request {
            self.context.cluster_format = *format;
        }
        self.buffer.clear();
        request.encode(&mut self.buffer);
        let result = self
            .stream
            .write_all(&self.buffer)
            .and_then(|()| self.stream.flush());
        if result.is_err() {
            self.broken = true;
        }
        Ok(result?)
    }

    /// Receives one response; FAILURE becomes [`ClientError::Failure`].
    pub fn receive(&mut self) -> Result<Response, ClientError> {
        let header = match read_message(
            &mut self.stream,
            self.response_body_bytes_max,
            &mut self.buffer,
        ) {
            Ok(header) => header,
            Err(e) => {
                self.broken = true;
                return Err(e.into());
            }
        };
        let response = Response::decode(header, &self.buffer[HEADER_BYTES..], &self.context)
            .map_err(|e| {
                self.broken = true;
                ProtocolError::Decode(e)
            })?;
        match response {
            Response::Failure { code, message } => Err(ClientError::Failure { code, message }),
            response => Ok(response),
        }
    }

    /// Sends a request and receives its one response, checking its type.
    fn call(&mut self, request: &Request, expected: ResponseType) -> Result<Response, ClientError> {
        self.send(request)?;
        let response = self.receive()?;
        if response.response_type() != expected {
            self.broken = true;
            return Err(ProtocolError::Unexpected {
                expected,
                got: response.response_type(),
            }
            .into());
        }
        Ok(response)
    }

    fn call_empty(&mut self, request: &Request) -> Result<(), ClientError> {
        self.call(request, ResponseType::Empty).map(|_| ())
    }

    /// LEADER: the leader this node knows of, `None` if it knows none.
    pub fn leader(&mut self) -> Result<Option<(u64, String)>, ClientError> {
        let Response::Server { id, address } = self.call(&Request::Leader, ResponseType::Server)?
        else {
            unreachable!("call checked the type")
        };
        if address.is_empty() {
            return Ok(None);
        }
        if id == 0 {
            return Err(ProtocolError::Invalid(format!("leader {address} with id 0")).into());
        }
        Ok(Some((id, address)))
    }

    /// CLIENT: registers; returns the heartbeat timeout in milliseconds.
    pub fn register(&mut self, id: u64) -> Result<u64, ClientError> {
        match self.call(&Request::Client { id }, ResponseType::Welcome)? {
            Response::Welcome {
                heartbeat_timeout_ms,
            } => Ok(heartbeat_timeout_ms),
            _ => unreachable!("call checked the type"),
        }
    }

    /// OPEN: opens a database on this connection (its id is always 0).
    pub fn open(&mut self, name: &str) -> Result<(), ClientError> {
        self.open_with_flags(name, 0)
    }

    /// OPEN with flags: [`OPEN_FOLLOWER_READS`] asks an atoll node to serve this connection's
    /// queries itself, leader or not (dqlite ignores the flags).
    pub fn open_with_flags(&mut self, name: &str, flags: u64) -> Result<(), ClientError> {
        let request = Request::Open {
            name: name.to_owned(),
            flags,
            vfs: "volatile".into(),
        };
        match self.call(&request, ResponseType::Db)? {
            Response::Db { id: 0 } => Ok(()),
            Response::Db { id } => Err(ProtocolError::Invalid(format!("db id {id}")).into()),
            _ => unreachable!("call checked the type"),
        }
    }

    /// EXEC_SQL: runs SQL text (several statements allowed) with parameters.
    pub fn exec_sql(&mut self, sql: &str, params: &[Value]) -> Result<ExecResult, ClientError> {
        check_params(params)?;
        let request = Request::ExecSql {
            db_id: 0,
            sql: sql.to_owned(),
            params: params.to_vec(),
        };
        self.exec_request(&request)
    }

    fn exec_request(&mut self, request: &Request) -> Result<ExecResult, ClientError> {
        match self.call(request, ResponseType::Result)? {
            Response::Result {
                last_insert_id,
                rows_affected,
            } => Ok(ExecResult {
                last_insert_id,
                rows_affected,
            }),
            _ => unreachable!("call checked the type"),
        }
    }

    /// QUERY_SQL: runs the first statement of SQL text and collects every row batch.
    pub fn query_sql(&mut self, sql: &str, params: &[Value]) -> Result<QueryResult, ClientError> {
        self.query_sql_rows(sql, params)?.collect_all()
    }

    /// QUERY_SQL, rows read batch by batch as the iterator advances. Dropping it before the end
    /// interrupts the query.
    pub fn query_sql_rows(
        &mut self,
        sql: &str,
        params: &[Value],
    ) -> Result<RowsIter<'_>, ClientError> {
        check_params(params)?;
        let request = Request::QuerySql {
            db_id: 0,
            sql: sql.to_owned(),
            params: params.to_vec(),
        };
        self.send(&request)?;
        RowsIter::start(self)
    }

    /// PREPARE.
    pub fn prepare(&mut self, sql: &str) -> Result<(u32, u64), ClientError> {
        let request = Request::Prepare {
            db_id: 0,
            sql: sql.to_owned(),
            with_tail: false,
        };
        match self.call(&request, ResponseType::Stmt)? {
            Response::Stmt {
                stmt_id,
                params_count,
                ..
            } => Ok((stmt_id, params_count)),
            _ => unreachable!("call checked the type"),
        }
    }

    /// EXEC of a prepared statement.
    pub fn exec(&mut self, stmt_id: u32, params: &[Value]) -> Result<ExecResult, ClientError> {
        check_params(params)?;
        self.exec_request(&Request::Exec {
            db_id: 0,
            stmt_id,
            params: params.to_vec(),
        })
    }

    /// QUERY of a prepared statement, every batch collected.
    pub fn query(&mut self, stmt_id: u32, params: &[Value]) -> Result<QueryResult, ClientError> {
        check_params(params)?;
        self.send(&Request::Query {
            db_id: 0,
            stmt_id,
            params: params.to_vec(),
        })?;
        RowsIter::start(self)?.collect_all()
    }

    /// FINALIZE.
    pub fn finalize(&mut self, stmt_id: u32) -> Result<(), ClientError> {
        self.call_empty(&Request::Finalize { db_id: 0, stmt_id })
    }

    /// INTERRUPT, discarding the rest of a streaming result until EMPTY arrives.
    pub fn interrupt(&mut self) -> Result<(), ClientError> {
        self.send(&Request::Interrupt { db_id: 0 })?;
        // Bounded by the server's result set, which it finishes before answering.
        loop {
            match self.receive()? {
                Response::Rows(_) => continue,
                Response::Empty => return Ok(()),
                other => {
                    self.broken = true;
                    return Err(ProtocolError::Unexpected {
                        expected: ResponseType::Empty,
                        got: other.response_type(),
                    }
                    .into());
                }
            }
        }
    }

    /// CLUSTER (format 1): the configuration with roles.
    pub fn cluster(&mut self) -> Result<Vec<NodeInfo>, ClientError> {
        let request = Request::Cluster {
            format: ClusterFormat::V1,
        };
        match self.call(&request, ResponseType::Servers)? {
            Response::Servers { nodes } => Ok(nodes),
            _ => unreachable!("call checked the type"),
        }
    }

    /// DESCRIBE: (failure domain, weight) of this node.
    pub fn describe(&mut self) -> Result<(u64, u64), ClientError> {
        match self.call(&Request::Describe, ResponseType::Metadata)? {
            Response::Metadata {
                failure_domain,
                weight,
            } => Ok((failure_domain, weight)),
            _ => unreachable!("call checked the type"),
        }
    }

    /// DESCRIBE format 1: an atoll node's metadata and Raft status. Only on a connection made
    /// with [`Connection::connect_atoll`] that found an atoll node: dqlite 1.11 answers a
    /// non-zero format twice and may crash.
    pub fn describe_v1(&mut self) -> Result<NodeMetadata, ClientError> {
        match self.call(&Request::DescribeV1, ResponseType::Metadata)? {
            Response::MetadataV1(metadata) => Ok(metadata),
            _ => {
                self.broken = true;
                Err(ProtocolError::Invalid("METADATA without atoll's words".into()).into())
            }
        }
    }

    /// VERIFY (atoll only): `index` 0 asks the leader to make a verify point for `database`
    /// (empty: all); otherwise this node's checksums at that point.
    pub fn verify(&mut self, index: u64, database: &str) -> Result<Checksums, ClientError> {
        let request = Request::Verify {
            index,
            database: database.to_owned(),
        };
        match self.call(&request, ResponseType::Checksums)? {
            Response::Checksums(checksums) => Ok(checksums),
            _ => unreachable!("call checked the type"),
        }
    }

    /// REPAIR (atoll only): tells this node its copy of `database` is damaged; it stops, moves
    /// its data aside and is rebuilt from the leader.
    pub fn repair(&mut self, database: &str) -> Result<(), ClientError> {
        self.call_empty(&Request::Repair {
            database: database.to_owned(),
        })
    }

    /// RESTORE (atoll only): one piece of a restore; see [`Request::Restore`].
    pub fn restore_piece(
        &mut self,
        database: &str,
        restore_id: u64,
        offset: u64,
        total: u64,
        data: &[u8],
    ) -> Result<(), ClientError> {
        self.call_empty(&Request::Restore {
            database: database.to_owned(),
            restore_id,
            offset,
            total,
            data: data.to_vec(),
        })
    }

    /// STATUS (atoll only): the node's status.
    pub fn status(&mut self) -> Result<NodeStatus, ClientError> {
        match self.call(&Request::Status, ResponseType::Status)? {
            Response::Status(status) => Ok(*status),
            _ => unreachable!("call checked the type"),
        }
    }

    /// WEIGHT: sets this node's weight.
    pub fn weight(&mut self, weight: u64) -> Result<(), ClientError> {
        self.call_empty(&Request::Weight { weight })
    }

    /// DUMP: the files of a database.
    pub fn dump(&mut self, name: &str) -> Result<Vec<File>, ClientError> {
        let request = Request::Dump {
            name: name.to_owned(),
        };
        match self.call(&request, ResponseType::Files)? {
            Response::Files(files) => Ok(files),
            _ => unreachable!("call checked the type"),
        }
    }

    /// DUMP streamed: the main file's bytes go to `main` as they arrive (never whole in
    /// memory), `progress(done, total)` is called after each chunk; returns the WAL file's
    /// bytes (empty from atoll, which sends an applied image; dqlite 1.11 sends its live WAL,
    /// bounded by the response limit). A FAILURE answer is an error before anything is written.
    pub fn dump_to(
        &mut self,
        name: &str,
        main: &mut dyn Write,
        progress: &mut dyn FnMut(u64, u64),
    ) -> Result<Vec<u8>, ClientError> {
        self.send(&Request::Dump {
            name: name.to_owned(),
        })?;
        let result = self.stream_files(main, progress);
        if result.is_err() {
            self.broken = true;
        }
        result
    }

    fn stream_files(
        &mut self,
        main: &mut dyn Write,
        progress: &mut dyn FnMut(u64, u64),
    ) -> Result<Vec<u8>, ClientError> {
        use std::io::Read;
        let mut header_bytes = [0u8; HEADER_BYTES];
        self.stream.read_exact(&mut header_bytes)?;
        let header = crate::protocol::Header::decode(header_bytes);
        if header.kind != ResponseType::Files.code() {
            // FAILURE and anything else: small, read and decoded as usual.
            let body = header
                .body_bytes_checked(self.response_body_bytes_max)
                .map_err(ProtocolError::Decode)?;
            let mut bytes = vec![0u8; body];
            self.stream.read_exact(&mut bytes)?;
            let response =
                Response::decode(header, &bytes, &self.context).map_err(ProtocolError::Decode)?;
            return Err(match response {
                Response::Failure { code, message } => ClientError::Failure { code, message },
                other => ProtocolError::Unexpected {
                    expected: ResponseType::Files,
                    got: other.response_type(),
                }
                .into(),
            });
        }
        let mut remaining = u64::from(header.words) * 8;
        let invalid = |what: &str| ClientError::from(ProtocolError::Invalid(what.to_owned()));
        let word = |stream: &mut Stream, remaining: &mut u64| -> Result<[u8; 8], ClientError> {
            if *remaining < 8 {
                return Err(invalid("FILES ends early"));
            }
            let mut bytes = [0u8; 8];
            stream.read_exact(&mut bytes)?;
            *remaining -= 8;
            Ok(bytes)
        };
        // A name: words up to the one holding its NUL (at most 4 KiB).
        let name = |stream: &mut Stream, remaining: &mut u64| -> Result<(), ClientError> {
            for _ in 0..512 {
                if word(stream, remaining)?.contains(&0) {
                    return Ok(());
                }
            }
            Err(invalid("a FILES name longer than 4 KiB"))
        };
        let count = u64::from_le_bytes(word(&mut self.stream, &mut remaining)?);
        if !(1..=2).contains(&count) {
            return Err(invalid("FILES without one or two files"));
        }
        name(&mut self.stream, &mut remaining)?;
        let size = u64::from_le_bytes(word(&mut self.stream, &mut remaining)?);
        if size > remaining {
            return Err(invalid("a FILES size past the message"));
        }
        let mut buffer = vec![0u8; 64 * 1024];
        let mut done = 0;
        while done < size {
            let want = usize::try_from((size - done).min(buffer.len() as u64)).unwrap_or(0);
            self.stream.read_exact(&mut buffer[..want])?;
            main.write_all(&buffer[..want])?;
            done += want as u64;
            progress(done, size);
        }
        remaining -= size;
        let mut wal = Vec::new();
        if count == 2 {
            name(&mut self.stream, &mut remaining)?;
            let size = u64::from_le_bytes(word(&mut self.stream, &mut remaining)?);
            if size > remaining || size > self.response_body_bytes_max {
                return Err(invalid("a FILES WAL past the message or the limit"));
            }
            wal = vec![0u8; usize::try_from(size).map_err(|_| invalid("WAL too large"))?];
            self.stream.read_exact(&mut wal)?;
            remaining -= size;
        }
        if remaining != 0 {
            return Err(invalid("bytes after the FILES"));
        }
        Ok(wal)
    }

    /// ADD: adds a node as a spare.
    pub fn add(&mut self, id: u64, address: &str) -> Result<(), ClientError> {
        self.call_empty(&Request::Add {
            id,
            address: address.to_owned(),
        })
    }

    /// ASSIGN: changes a node's role.
    pub fn assign(&mut self, id: u64, role: Role) -> Result<(), ClientError> {
        self.call_empty(&Request::Assign {
            id,
            role: Some(role),
        })
    }

    /// REMOVE: removes a node.
    pub fn remove(&mut self, id: u64) -> Result<(), ClientError> {
        self.call_empty(&Request::Remove { id })
    }

    /// TRANSFER: hands leadership to `id` (0: the leader picks).
    pub fn transfer(&mut self, id: u64) -> Result<(), ClientError> {
        self.call_empty(&Request::Transfer { id })
    }
}

/// Rows of a query, read one ROWS batch at a time. Dropping it before the last batch sends
/// INTERRUPT and discards what is left, as go-dqlite does, so the connection stays usable.
#[derive(Debug)]
pub struct RowsIter<'a> {
    connection: &'a mut Connection,
    columns: Vec<String>,
    batch: std::vec::IntoIter<Vec<Value>>,
    done: bool,
}

impl<'a> RowsIter<'a> {
    fn start(connection: &'a mut Connection) -> Result<RowsIter<'a>, ClientError> {
        let first = Self::receive_batch(connection)?;
        Ok(Self::with_first_batch(connection, first))
    }

    fn with_first_batch(connection: &'a mut Connection, first: Rows) -> RowsIter<'a> {
        let Rows { columns, rows, end } = first;
        RowsIter {
            connection,
            columns,
            batch: rows.into_iter(),
            done: end == RowsEnd::Done,
        }
    }

    fn receive_batch(connection: &mut Connection) -> Result<Rows, ClientError> {
        match connection.receive()? {
            Response::Rows(rows) => Ok(rows),
            other => {
                connection.broken = true;
                Err(ProtocolError::Unexpected {
                    expected: ResponseType::Rows,
                    got: other.response_type(),
                }
                .into())
            }
        }
    }

    /// Column names.
    pub fn columns(&self) -> &[String] {
        &self.columns
    }

    /// Reads every remaining row.
    pub fn collect_all(mut self) -> Result<QueryResult, ClientError> {
        let mut rows = Vec::new();
        for row in &mut self {
            rows.push(row?);
        }
        Ok(QueryResult {
            columns: std::mem::take(&mut self.columns),
            rows,
        })
    }
}

impl Iterator for RowsIter<'_> {
    type Item = Result<Vec<Value>, ClientError>;

    fn next(&mut self) -> Option<Self::Item> {
        // Bounded: each turn either yields a row or reads one batch (the server ends the stream
        // with DONE or a FAILURE).
        loop {
            if let Some(row) = self.batch.next() {
                return Some(Ok(row));
            }
            if self.done {
                return None;
            }
            match Self::receive_batch(self.connection) {
                Ok(rows) => {
                    self.done = rows.end == RowsEnd::Done;
                    self.batch = rows.rows.into_iter();
                }
                Err(e) => {
                    self.done = true;
                    return Some(Err(e));
                }
            }
        }
    }
}

impl Drop for RowsIter<'_> {
    fn drop(&mut self) {
        if !self.done && !self.connection.broken && self.connection.interrupt().is_err() {
            self.connection.broken = true;
        }
    }
}

/// A client of the cluster: talks to the leader, found from a list of addresses.
#[derive(Debug)]
pub struct Client {
    addresses: Vec<String>,
    config: ClientConfig,
    connection: Option<Connection>,
    database: Option<String>,
    /// Incremented on every new connection; prepared statements carry the epoch they were
    /// prepared in.
    epoch: u64,
    /// A BEGIN or SAVEPOINT succeeded and no COMMIT/END/ROLLBACK/RELEASE yet: the transaction
    /// lives on this connection, so a not-leader answer must not be retried elsewhere.
    transaction_open: bool,
}

/// Pause before retry `attempt` (0-based) of leader discovery.
fn backoff(config: &ClientConfig, attempt: u32) -> Duration {
    let factor = 1u32.checked_shl(attempt.min(16)).unwrap_or(u32::MAX);
    config
        .backoff_initial
        .saturating_mul(factor)
        .min(config.backoff_max)
}

/// Finds the leader among `addresses` as go-dqlite does: ask each node LEADER; a node naming
/// the address it was dialed at is the leader; a node naming another address is followed once
/// (the named node must name itself); rounds repeat with backoff until `config.leader_timeout`.
/// The returned connection has sent CLIENT.
pub fn find_leader(addresses: &[String], config: &ClientConfig) -> Result<Connection, ClientError> {
    let deadline = Instant::now() + config.leader_timeout;
    let mut attempts = Vec::new();
    for round in 0u32.. {
        for address in addresses {
            match try_leader(address, config) {
                Ok(Ok(mut connection)) => {
                    connection.register(config.client_id)?;
                    return Ok(connection);
                }
                Ok(Err(note)) | Err(note) => {
                    if attempts.len() < 16 {
                        attempts.push(note);
                    }
                }
            }
        }
        let pause = backoff(config, round);
        if Instant::now() + pause >= deadline {
            break;
        }
        thread::sleep(pause);
    }
    Err(ClientError::NoLeader { attempts })
}

/// One probe of `address`: `Ok(Ok(conn))` when it (or the node it names) is the leader.
fn try_leader(address: &str, config: &ClientConfig) -> Result<Result<Connection, String>, String> {
    let mut connection =
        Connection::connect(address, config).map_err(|e| format!("{address}: {e}"))?;
    let leader = connection.leader().map_err(|e| format!("{address}: {e}"))?;
    let Some((_, leader)) = leader else {
        return Ok(Err(format!("{address}: knows no leader")));
    };
    if leader == address {
        return Ok(Ok(connection));
    }
    drop(connection);
    let mut connection =
        Connection::connect(&leader, config).map_err(|e| format!("{leader}: {e}"))?;
    match connection.leader().map_err(|e| format!("{leader}: {e}"))? {
        Some((_, named)) if named == leader => Ok(Ok(connection)),
        _ => Ok(Err(format!(
            "{address} names {leader}, which does not name itself"
        ))),
    }
}

impl Client {
    /// Finds the leader among `addresses` (each `host:port`, exactly as the nodes advertise
    /// themselves) and connects to it.
    pub fn connect<S: AsRef<str>>(
        addresses: &[S],
        config: ClientConfig,
    ) -> Result<Client, ClientError> {
        let mut client = Client {
            addresses: addresses.iter().map(|a| a.as_ref().to_owned()).collect(),
            config,
            connection: None,
            database: None,
            epoch: 0,
            transaction_open: false,
        };
        client.connection()?;
        Ok(client)
    }

    /// The configuration this client was made with.
    pub fn config(&self) -> &ClientConfig {
        &self.config
    }

    /// The leader connection, reconnecting (and reopening the database) if needed.
    fn connection(&mut self) -> Result<&mut Connection, ClientError> {
        if self.connection.as_ref().is_some_and(Connection::is_broken) {
            self.connection = None;
        }
        if self.connection.is_none() {
            self.transaction_open = false;
            let mut connection = find_leader(&self.addresses, &self.config)?;
            if let Some(database) = &self.database {
                connection.open(database)?;
            }
            self.epoch += 1;
            self.connection = Some(connection);
        }
        Ok(self.connection.as_mut().expect("set above"))
    }

    /// The address of the node this client talks to.
    pub fn leader_address(&self) -> Option<&str> {
        self.connection.as_ref().map(Connection::address)
    }

    /// Runs `call` on the leader connection. Not-leader answers are retried on a newly found
    /// leader while no transaction is open and the deadline allows; outcome-unknown cases are
    /// reported as such when `writes` is set.
    fn with_leader<T>(
        &mut self,
        writes: bool,
        mut call: impl FnMut(&mut Connection) -> Result<T, ClientError>,
    ) -> Result<T, ClientError> {
        let deadline = Instant::now() + self.config.leader_timeout;
        for attempt in 0u32.. {
            let transaction_open = self.transaction_open;
            let connection = self.connection()?;
            let result = call(connection);
            let broken = connection.is_broken();
            match result {
                Err(e) if e.is_not_leader() => {
                    self.connection = None;
                    let pause = backoff(&self.config, attempt);
                    if transaction_open || Instant::now() + pause >= deadline {
                        return Err(e);
                    }
                    thread::sleep(pause);
                }
                Err(e) if e.is_leadership_lost() => {
                    self.connection = None;
                    return Err(if writes {
                        ClientError::OutcomeUnknown(Box::new(e))
                    } else {
                        e
                    });
                }
                Err(e) if broken => {
                    self.connection = None;
                    return Err(if writes {
                        ClientError::OutcomeUnknown(Box::new(e))
                    } else {
                        e
                    });
                }
                other => return other,
            }
        }
        unreachable!("the retry loop returns")
    }

    /// Opens `name` on the leader connection (and again after every reconnection).
    pub fn open(&mut self, name: &str) -> Result<(), ClientError> {
        // The database is remembered only once open: a reconnection inside this call (the
        // first node stopped leading) must not open it already, or the OPEN below would be
        // refused as a second one on that connection.
        self.database = None;
        let name = name.to_owned();
        let result = self.with_leader(false, |c| c.open(&name));
        if result.is_ok() {
            self.database = Some(name);
        }
        result
    }

    /// EXEC_SQL on the leader.
    pub fn exec_sql(&mut self, sql: &str, params: &[Value]) -> Result<ExecResult, ClientError> {
        check_params(params)?;
        let result = self.with_leader(true, |c| c.exec_sql(sql, params));
        if result.is_ok() {
            if let Some(open) = crate::sql::text_transaction_effect(sql) {
                self.transaction_open = open;
            }
        }
        result
    }

    /// QUERY_SQL on the leader, every row collected. (QUERY_SQL can write, as with RETURNING,
    /// so a broken connection is reported as an unknown outcome.)
    pub fn query_sql(&mut self, sql: &str, params: &[Value]) -> Result<QueryResult, ClientError> {
        check_params(params)?;
        self.with_leader(true, |c| c.query_sql(sql, params))
    }

    /// QUERY_SQL on the leader, rows read batch by batch. The first batch is read here: a "not
    /// leader" answer comes before any row (nothing ran), so it is retried on a newly found
    /// leader as every other request is; once rows flow, the caller consumes the stream and
    /// nothing is retried. (QUERY_SQL can write, as with RETURNING, so a connection broken
    /// before the first batch is reported as an unknown outcome.)
    pub fn query_sql_rows(
        &mut self,
        sql: &str,
        params: &[Value],
    ) -> Result<RowsIter<'_>, ClientError> {
        check_params(params)?;
        let request = Request::QuerySql {
            db_id: 0,
            sql: sql.to_owned(),
            params: params.to_vec(),
        };
        let first = self.with_leader(true, |c| {
            c.send(&request)?;
            RowsIter::receive_batch(c)
        })?;
        let connection = self
            .connection
            .as_mut()
            .expect("with_leader succeeded on this connection");
        Ok(RowsIter::with_first_batch(connection, first))
    }

    /// PREPARE on the leader connection.
    pub fn prepare(&mut self, sql: &str) -> Result<Statement, ClientError> {
        let (id, params_count) = self.with_leader(false, |c| c.prepare(sql))?;
        Ok(Statement {
            id,
            params_count,
            epoch: self.epoch,
        })
    }

    fn check_statement(&mut self, statement: &Statement) -> Result<(), ClientError> {
        self.connection()?;
        if statement.epoch != self.epoch {
            return Err(ClientError::StatementExpired);
        }
        Ok(())
    }

    /// EXEC of a prepared statement. Not retried on another node: the statement lives on this
    /// connection.
    pub fn exec(
        &mut self,
        statement: &Statement,
        params: &[Value],
    ) -> Result<ExecResult, ClientError> {
        self.check_statement(statement)?;
        let connection = self.connection()?;
        let result = connection.exec(statement.id, params);
        self.unknown_if_broken(result)
    }

    /// QUERY of a prepared statement, every row collected.
    pub fn query(
        &mut self,
        statement: &Statement,
        params: &[Value],
    ) -> Result<QueryResult, ClientError> {
        self.check_statement(statement)?;
        let connection = self.connection()?;
        let result = connection.query(statement.id, params);
        self.unknown_if_broken(result)
    }

    /// FINALIZE of a prepared statement.
    pub fn finalize(&mut self, statement: Statement) -> Result<(), ClientError> {
        self.check_statement(&statement)?;
        self.connection()?.finalize(statement.id)
    }

    fn unknown_if_broken<T>(&mut self, result: Result<T, ClientError>) -> Result<T, ClientError> {
        match result {
            Err(e) if self.connection.as_ref().is_some_and(Connection::is_broken) => {
                self.connection = None;
                Err(ClientError::OutcomeUnknown(Box::new(e)))
            }
            Err(e) if e.is_leadership_lost() => Err(ClientError::OutcomeUnknown(Box::new(e))),
            other => other,
        }
    }

    /// LEADER, asked of the leader connection: (id, address).
    pub fn leader(&mut self) -> Result<Option<(u64, String)>, ClientError> {
        self.with_leader(false, Connection::leader)
    }

    /// CLUSTER: the configuration with roles.
    pub fn cluster(&mut self) -> Result<Vec<NodeInfo>, ClientError> {
        self.with_leader(false, Connection::cluster)
    }

    /// DESCRIBE of the leader node.
    pub fn describe(&mut self) -> Result<(u64, u64), ClientError> {
        self.with_leader(false, Connection::describe)
    }

    /// WEIGHT of the leader node.
    pub fn weight(&mut self, weight: u64) -> Result<(), ClientError> {
        self.with_leader(false, |c| c.weight(weight))
    }

    /// DUMP of a database, from the leader.
    pub fn dump(&mut self, name: &str) -> Result<Vec<File>, ClientError> {
        self.with_leader(false, |c| c.dump(name))
    }

    /// VERIFY on the leader: makes a verify point for `database` (empty: all); returns its
    /// index. Retried on a new leader like a read: an extra point is harmless.
    pub fn verify_point(&mut self, database: &str) -> Result<u64, ClientError> {
        self.with_leader(false, |c| c.verify(0, database))
            .map(|checksums| checksums.index)
    }

    /// A RESTORE piece on the leader. A piece is idempotent (written at its offset), so one
    /// whose answer was lost is simply sent again: retried on a new leader like a read.
    pub fn restore_piece(
        &mut self,
        database: &str,
        restore_id: u64,
        offset: u64,
        total: u64,
        data: &[u8],
    ) -> Result<(), ClientError> {
        self.with_leader(false, |c| {
            c.restore_piece(database, restore_id, offset, total, data)
        })
    }

    /// ADD a node (as a spare).
    pub fn add(&mut self, id: u64, address: &str) -> Result<(), ClientError> {
        self.with_leader(true, |c| c.add(id, address))
    }

    /// ASSIGN a role to a node.
    pub fn assign(&mut self, id: u64, role: Role) -> Result<(), ClientError> {
        self.with_leader(true, |c| c.assign(id, role))
    }

    /// REMOVE a node.
    pub fn remove(&mut self, id: u64) -> Result<(), ClientError> {
        self.with_leader(true, |c| c.remove(id))
    }

    /// TRANSFER leadership (0: the leader picks). The connection is dropped afterwards, since
    /// this node no longer leads; the next call finds the new leader.
    pub fn transfer(&mut self, id: u64) -> Result<(), ClientError> {
        let result = self.with_leader(true, |c| c.transfer(id));
        if result.is_ok() {
            self.connection = None;
        }
        result
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn test_transaction_effect_reads_tokens_not_the_first_word() {
        // The client must know whether a transaction is open: a not-leader answer inside one
        // must not be retried on another node, where the statement would run outside it. The
        // first-word reading this replaced missed the first three (comments, a leading `;`),
        // took the first statement of a text for all of it, and ended the transaction on
        // `ROLLBACK TO` and `RELEASE`, which keep it open.
        use crate::sql::text_transaction_effect as effect;
        assert_eq!(effect("/*c*/ BEGIN IMMEDIATE"), Some(true));
        assert_eq!(effect("-- x\nbegin"), Some(true));
        assert_eq!(effect(";SAVEPOINT a"), Some(true));
        assert_eq!(
            effect("BEGIN; INSERT INTO t VALUES (1); COMMIT"),
            Some(false)
        );
        assert_eq!(effect("rollback to a"), None);
        assert_eq!(effect("RELEASE a"), None);
        assert_eq!(effect("  begin immediate"), Some(true));
        assert_eq!(effect("COMMIT;"), Some(false));
        assert_eq!(effect("INSERT INTO t VALUES ('BEGIN')"), None);
        assert_eq!(effect("EXPLAIN BEGIN"), None);
    }

    #[test]
    fn test_backoff_doubles_up_to_the_cap() {
        let config = ClientConfig::default();
        assert_eq!(backoff(&config, 0), Duration::from_millis(50));
        assert_eq!(backoff(&config, 1), Duration::from_millis(100));
        assert_eq!(backoff(&config, 40), Duration::from_secs(1));
    }

    #[test]
    fn test_params_that_cannot_be_sent_are_refused() {
        assert!(check_params(&[Value::UnixTime(1)]).is_err());
        assert!(check_params(&[Value::Text("a\0b".into())]).is_err());
        assert!(check_params(&[Value::Text("ab".into()), Value::Null]).is_ok());
    }
}
