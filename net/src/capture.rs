//! Real dqlite traffic as test vectors, and a harness that replays it against a server.
//!
//! A capture file (`../shared/reference/captures/*.txt`, copied into `net/tests/captures/`) lists
//! every message of every TCP connection of a scenario recorded against dqlite 1.11; each
//! `raw C>S <hex>` / `raw S>C <hex>` line is one complete message. [`parse_capture`] reads such a
//! file, [`Conversation::decode`] decodes its messages with the right context, and [`replay`]
//! sends the client's messages of a capture to a live server, in order, on fresh connections, and
//! compares the server's answers with dqlite's as decoded values ([`Answer`]), leaving out what
//! legitimately differs: node ids, addresses (mapped), file contents, and how rows are split into
//! batches.

use std::collections::HashMap;
use std::fmt;
use std::io::{self, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::time::{Duration, Instant};

use crate::blocking::{read_message, ReadError};
use crate::protocol::{
    DecodeError, Greeting, ProtocolVersion, Request, Response, ResponseContext, Rows, RowsEnd,
    Value, HEADER_BYTES,
};

/// Direction of a captured message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    /// Client to server.
    ClientToServer,
    /// Server to client.
    ServerToClient,
}

/// One captured message: the exact bytes (header and body, or the 8-byte version word).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CapturedMessage {
    /// Who sent it.
    pub direction: Direction,
    /// The bytes.
    pub bytes: Vec<u8>,
}

/// One TCP connection of a capture.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CaptureConnection {
    /// The connection's number in the file.
    pub number: u32,
    /// The server address the client dialed, as written in the file.
    pub server: String,
    /// Messages in wire order.
    pub messages: Vec<CapturedMessage>,
}

/// A parsed capture file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Capture {
    /// The file name without `.txt`.
    pub name: String,
    /// Connections in file order.
    pub connections: Vec<CaptureConnection>,
}

/// Why a capture could not be used.
#[derive(Debug)]
pub enum CaptureError {
    /// The file could not be read.
    Io(io::Error),
    /// A line of the file is malformed.
    Syntax {
        /// 1-based line number.
        line: usize,
        /// What is wrong.
        reason: String,
    },
    /// A captured message does not decode.
    Decode {
        /// The connection number.
        connection: u32,
        /// Index of the message in the connection.
        message: usize,
        /// The decoder's error.
        error: DecodeError,
    },
}

impl fmt::Display for CaptureError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CaptureError::Io(e) => write!(f, "reading capture: {e}"),
            CaptureError::Syntax { line, reason } => write!(f, "line {line}: {reason}"),
            CaptureError::Decode {
                connection,
                message,
                error,
            } => write!(f, "connection {connection}, message {message}: {error}"),
        }
    }
}

impl std::error::Error for CaptureError {}

impl From<io::Error> for CaptureError {
    fn from(e: io::Error) -> Self {
        CaptureError::Io(e)
    }
}

fn parse_hex(hex: &str, line: usize) -> Result<Vec<u8>, CaptureError> {
    let syntax = |reason: &str| CaptureError::Syntax {
        line,
        reason: reason.to_owned(),
    };
    if !hex.len().is_multiple_of(2) {
        return Err(syntax("odd number of hex digits"));
    }
    (0..hex.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&hex[i..i + 2], 16).map_err(|_| syntax("bad hex digit")))
        .collect()
}

/// Parses the text of a capture file.
pub fn parse_capture(name: &str, text: &str) -> Result<Capture, CaptureError> {
    let mut connections: Vec<CaptureConnection> = Vec::new();
    for (index, line) in text.lines().enumerate() {
        let line_number = index + 1;
        if let Some(rest) = line.strip_prefix("== connection ") {
            // "== connection N: client port P -> server ADDR[ (note)]"
            let (number, rest) = rest.split_once(':').ok_or(CaptureError::Syntax {
                line: line_number,
                reason: "connection line without ':'".into(),
            })?;
            let number = number.trim().parse().map_err(|_| CaptureError::Syntax {
                line: line_number,
                reason: "connection number".into(),
            })?;
            let server = rest
                .split_once("-> server ")
                .map(|(_, server)| server.split_whitespace().next().unwrap_or_default())
                .unwrap_or_default()
                .to_owned();
            connections.push(CaptureConnection {
                number,
                server,
                messages: Vec::new(),
            });
        } else if let Some(rest) = line.strip_prefix("raw ") {
            let (direction, hex) = rest.split_once(' ').ok_or(CaptureError::Syntax {
                line: line_number,
                reason: "raw line without direction".into(),
            })?;
            let direction = match direction {
                "C>S" => Direction::ClientToServer,
                "S>C" => Direction::ServerToClient,
                other => {
                    return Err(CaptureError::Syntax {
                        line: line_number,
                        reason: format!("unknown direction {other}"),
                    })
                }
            };
            let bytes = parse_hex(hex.trim(), line_number)?;
            let connection = connections.last_mut().ok_or(CaptureError::Syntax {
                line: line_number,
                reason: "raw line before any connection".into(),
            })?;
            connection
                .messages
                .push(CapturedMessage { direction, bytes });
        }
    }
    Ok(Capture {
        name: name.to_owned(),
        connections,
    })
}

/// Reads and parses every `*.txt` capture of a directory, sorted by name (README.md aside).
pub fn load_captures(dir: &Path) -> Result<Vec<Capture>, CaptureError> {
    let mut paths: Vec<_> = std::fs::read_dir(dir)?
        .map(|entry| entry.map(|e| e.path()))
        .collect::<Result<_, _>>()?;
    paths.retain(|p| p.extension().is_some_and(|e| e == "txt"));
    paths.sort();
    let mut captures = Vec::with_capacity(paths.len());
    for path in paths {
        let name = path
            .file_stem()
            .and_then(|s| s.to_str())
            .unwrap_or_default()
            .to_owned();
        captures.push(parse_capture(&name, &std::fs::read_to_string(&path)?)?);
    }
    Ok(captures)
}

/// One request of a conversation with the responses that followed it before the next request.
#[derive(Debug, Clone, PartialEq)]
pub struct Exchange {
    /// The request's bytes.
    pub request_bytes: Vec<u8>,
    /// The decoded request; an error for requests dqlite's clients were probed with on purpose
    /// (capture 17 sends type 42).
    pub request: Result<Request, DecodeError>,
    /// The responses' bytes and decoded values, in wire order.
    pub responses: Vec<(Vec<u8>, Response)>,
}

/// A decoded connection.
#[derive(Debug, Clone, PartialEq)]
pub struct Conversation {
    /// The version word the client sent first; `None` when the capture joined mid-stream.
    pub version_word: Option<u64>,
    /// Requests and their responses.
    pub exchanges: Vec<Exchange>,
}

impl Conversation {
    /// Decodes a captured connection. Requests are decoded as requests; each response with the
    /// context of the connection (its version word, the format of the last CLUSTER request). An
    /// 8-byte client message is the version word: every real request is at least 16 bytes.
    pub fn decode(connection: &CaptureConnection) -> Result<Conversation, CaptureError> {
        let mut conversation = Conversation {
            version_word: None,
            exchanges: Vec::new(),
        };
        let mut context = ResponseContext::default();
        for (index, message) in connection.messages.iter().enumerate() {
            let error = |error| CaptureError::Decode {
                connection: connection.number,
                message: index,
                error,
            };
            match message.direction {
                Direction::ClientToServer if message.bytes.len() == HEADER_BYTES => {
                    let word = u64::from_le_bytes(
                        message.bytes[..].try_into().expect("length checked above"),
                    );
                    conversation.version_word = Some(word);
                    if let Ok(Greeting::Client(version)) = Greeting::decode(word) {
                        context.version = version;
                    }
                }
                Direction::ClientToServer => {
                    let request = Request::decode_message(&message.bytes);
                    if let Ok(Request::Cluster { format }) = request {
                        context.cluster_format = format;
                    }
                    conversation.exchanges.push(Exchange {
                        request_bytes: message.bytes.clone(),
                        request,
                        responses: Vec::new(),
                    });
                }
                Direction::ServerToClient => {
                    let response =
                        Response::decode_message(&message.bytes, &context).map_err(error)?;
                    let exchange =
                        conversation
                            .exchanges
                            .last_mut()
                            .ok_or(error(DecodeError::Truncated {
                                field: "request before response",
                                needed: 1,
                                remaining: 0,
                            }))?;
                    exchange.responses.push((message.bytes.clone(), response));
                }
            }
        }
        Ok(conversation)
    }
}

/// The logical answer to one request, as a client sees it: what is compared in a replay.
#[derive(Debug, Clone, PartialEq)]
pub enum Answer {
    /// One response (anything but ROWS).
    Response(Response),
    /// A whole result set: the rows of every batch, in order, whatever the batch boundaries.
    Rows {
        /// Column names.
        columns: Vec<String>,
        /// All rows.
        rows: Vec<Vec<Value>>,
        /// A FAILURE that ended the stream instead of DONE.
        failure: Option<(u64, String)>,
        /// Whether the stream ended with DONE or a FAILURE (false: the client stopped reading).
        complete: bool,
    },
    /// No answer: the server stayed silent or closed the connection.
    NoReply,
}

/// Assembles the logical answers of a conversation: one per exchange. ROWS batches that arrive
/// after the client has sent its next request (the INTERRUPT case) still belong to the query
/// that started the stream.
pub fn answers(exchanges: &[Vec<Response>]) -> Vec<Answer> {
    let mut answers = vec![Answer::NoReply; exchanges.len()];
    let mut stream: Option<usize> = None;
    for (index, responses) in exchanges.iter().enumerate() {
        for response in responses {
            match (response, stream) {
                (Response::Rows(batch), Some(owner)) => {
                    if let Answer::Rows { rows, complete, .. } = &mut answers[owner] {
                        rows.extend(batch.rows.iter().cloned());
                        *complete = batch.end == RowsEnd::Done;
                    }
                    if batch.end == RowsEnd::Done {
                        stream = None;
                    }
                }
                (Response::Rows(Rows { columns, rows, end }), None) => {
                    answers[index] = Answer::Rows {
                        columns: columns.clone(),
                        rows: rows.clone(),
                        failure: None,
                        complete: *end == RowsEnd::Done,
                    };
                    if *end == RowsEnd::Part {
                        stream = Some(index);
                    }
                }
                (Response::Failure { code, message }, Some(owner)) => {
                    if let Answer::Rows {
                        failure, complete, ..
                    } = &mut answers[owner]
                    {
                        *failure = Some((*code, message.clone()));
                        *complete = true;
                    }
                    stream = None;
                }
                (other, _) => {
                    answers[index] = Answer::Response(other.clone());
                    stream = None;
                }
            }
        }
    }
    answers
}

/// What the replay harness compares: node ids reduced to "zero or not", addresses translated
/// from the capture's to the live server's, DUMP files reduced to names and sizes (their bytes
/// hold WAL salts and checksums that differ run to run).
fn normalize(answer: &Answer, addresses: &HashMap<String, String>) -> Answer {
    let address = |a: &String| addresses.get(a).cloned().unwrap_or_else(|| a.clone());
    let id = |id: u64| u64::from(id != 0);
    match answer {
        Answer::Response(Response::Server { id: i, address: a }) => {
            Answer::Response(Response::Server {
                id: id(*i),
                address: address(a),
            })
        }
        Answer::Response(Response::Servers { nodes }) => Answer::Response(Response::Servers {
            nodes: nodes
                .iter()
                .map(|n| crate::protocol::NodeInfo {
                    id: id(n.id),
                    address: address(&n.address),
                    role: n.role,
                })
                .collect(),
        }),
        Answer::Response(Response::Files(files)) => Answer::Response(Response::Files(
            files
                .iter()
                .map(|f| crate::protocol::File {
                    name: format!("{} ({} bytes)", f.name, f.data.len()),
                    data: Vec::new(),
                })
                .collect(),
        )),
        other => other.clone(),
    }
}

/// How to replay captures against a live server.
#[derive(Debug, Clone)]
pub struct ReplayOptions {
    /// Capture server address (as written in the file) → the live server to use for it.
    /// Connections to an unmapped address are skipped.
    pub servers: Vec<(String, SocketAddr)>,
    /// How long to wait for each expected response.
    pub response_timeout: Duration,
    /// How long to listen for an answer dqlite never gave (HEARTBEAT, unknown types).
    pub silence_timeout: Duration,
    /// For captures that joined a connection mid-stream (no version word, no OPEN): the
    /// database to OPEN first. `None` skips such connections.
    pub mid_stream_database: Option<String>,
    /// Largest response body accepted.
    pub body_bytes_max: u64,
}

impl ReplayOptions {
    /// Options for one live server standing in for the capture's `127.0.0.1:9001`.
    pub fn single(server: SocketAddr) -> ReplayOptions {
        ReplayOptions {
            servers: vec![("127.0.0.1:9001".to_owned(), server)],
            response_timeout: Duration::from_secs(10),
            silence_timeout: Duration::from_millis(500),
            mid_stream_database: None,
            body_bytes_max: 1 << 30,
        }
    }
}

/// The outcome of one request in a replay.
#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    /// The live answer decodes to the same values as dqlite's (after normalization).
    Identical,
    /// The answers differ.
    Different {
        /// dqlite's answer, normalized.
        expected: Answer,
        /// The live server's answer, normalized.
        actual: Answer,
    },
}

/// One replayed request.
#[derive(Debug, Clone, PartialEq)]
pub struct Step {
    /// The capture's connection number.
    pub connection: u32,
    /// The request sent (an error for a deliberately undecodable one).
    pub request: Result<Request, DecodeError>,
    /// How its answer compared.
    pub outcome: Outcome,
}

/// The result of replaying one capture.
#[derive(Debug, Clone, PartialEq)]
pub struct ReplayReport {
    /// The capture's name.
    pub capture: String,
    /// Every replayed request, in order.
    pub steps: Vec<Step>,
    /// Connections not replayed, with the reason.
    pub skipped: Vec<(u32, String)>,
}

impl ReplayReport {
    /// Whether every replayed request got an identical answer and nothing was skipped.
    pub fn is_identical(&self) -> bool {
        self.skipped.is_empty() && self.steps.iter().all(|s| s.outcome == Outcome::Identical)
    }
}

impl fmt::Display for ReplayReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let identical = self
            .steps
            .iter()
            .filter(|s| s.outcome == Outcome::Identical)
            .count();
        writeln!(
            f,
            "{}: {identical}/{} identical, {} connection(s) skipped",
            self.capture,
            self.steps.len(),
            self.skipped.len()
        )?;
        for (connection, reason) in &self.skipped {
            writeln!(f, "  connection {connection} skipped: {reason}")?;
        }
        for step in &self.steps {
            if let Outcome::Different { expected, actual } = &step.outcome {
                writeln!(
                    f,
                    "  connection {} {}: expected {expected:?}\n    actual {actual:?}",
                    step.connection,
                    request_name(&step.request)
                )?;
            }
        }
        Ok(())
    }
}

/// The reference's name of a request, or the undecodable type code.
pub fn request_name(request: &Result<Request, DecodeError>) -> String {
    match request {
        Ok(request) => request.request_type().name().to_owned(),
        Err(error) => format!("undecodable ({error})"),
    }
}

/// Replays every connection of `capture`, in order, each on a fresh TCP connection to the live
/// server mapped for it, and compares each request's answer with dqlite's.
pub fn replay(capture: &Capture, options: &ReplayOptions) -> Result<ReplayReport, CaptureError> {
    let addresses: HashMap<String, String> = options
        .servers
        .iter()
        .map(|(captured, live)| (captured.clone(), live.to_string()))
        .collect();
    let mut report = ReplayReport {
        capture: capture.name.clone(),
        steps: Vec::new(),
        skipped: Vec::new(),
    };
    for connection in &capture.connections {
        let Some(&(_, server)) = options
            .servers
            .iter()
            .find(|(c, _)| *c == connection.server)
        else {
            report.skipped.push((
                connection.number,
                format!("no live server mapped for {}", connection.server),
            ));
            continue;
        };
        let conversation = Conversation::decode(connection)?;
        if conversation.version_word.is_none() && options.mid_stream_database.is_none() {
            report.skipped.push((
                connection.number,
                "joined mid-stream and no database to open was given".into(),
            ));
            continue;
        }
        let actual = replay_connection(&conversation, server, options)?;
        let expected: Vec<Vec<Response>> = conversation
            .exchanges
            .iter()
            .map(|e| e.responses.iter().map(|(_, r)| r.clone()).collect())
            .collect();
        let expected = answers(&expected);
        let actual = answers(&actual);
        for ((exchange, expected), actual) in
            conversation.exchanges.iter().zip(expected).zip(actual)
        {
            let expected = normalize(&expected, &addresses);
            let actual = normalize(&actual, &HashMap::new());
            let outcome = if expected == actual {
                Outcome::Identical
            } else {
                Outcome::Different { expected, actual }
            };
            report.steps.push(Step {
                connection: connection.number,
                request: exchange.request.clone(),
                outcome,
            });
        }
    }
    Ok(report)
}

/// Sends a conversation's requests to `server` and collects the raw responses of each, reading
/// the way the captured client did: a query until its stream ends (or only its first batch when
/// the captured client sent its next request after a PART batch), an INTERRUPT until EMPTY, a
/// request dqlite never answered for `silence_timeout`, anything else one message.
fn replay_connection(
    conversation: &Conversation,
    server: SocketAddr,
    options: &ReplayOptions,
) -> Result<Vec<Vec<Response>>, CaptureError> {
    let mut stream = TcpStream::connect_timeout(&server, options.response_timeout)?;
    stream.set_nodelay(true)?;
    let mut context = ResponseContext::default();
    let mut prelude = Vec::new();
    match conversation.version_word {
        Some(word) => {
            prelude.extend_from_slice(&word.to_le_bytes());
            if let Ok(Greeting::Client(version)) = Greeting::decode(word) {
                context.version = version;
            }
        }
        None => {
            prelude.extend_from_slice(&ProtocolVersion::V1.word().to_le_bytes());
        }
    }
    stream.write_all(&prelude)?;
    let mut closed = false;
    let mut message = Vec::new();
    if conversation.version_word.is_none() {
        let name = options.mid_stream_database.clone().unwrap_or_default();
        let mut open = Vec::new();
        Request::Open {
            name,
            flags: 0,
            vfs: "volatile".into(),
        }
        .encode(&mut open);
        stream.write_all(&open)?;
        stream.set_read_timeout(Some(options.response_timeout))?;
        read_message(&mut stream, options.body_bytes_max, &mut message)
            .map_err(|e| CaptureError::Io(io::Error::other(e.to_string())))?;
    }
    let mut all = Vec::with_capacity(conversation.exchanges.len());
    for exchange in &conversation.exchanges {
        let mut responses = Vec::new();
        if let Ok(Request::Cluster { format }) = exchange.request {
            context.cluster_format = format;
        }
        if closed || stream.write_all(&exchange.request_bytes).is_err() {
            closed = true;
            all.push(responses);
            continue;
        }
        let expected = &exchange.responses;
        let interrupted_after_part = matches!(
            expected.last(),
            Some((
                _,
                Response::Rows(Rows {
                    end: RowsEnd::Part,
                    ..
                })
            ))
        );
        let deadline_timeout = if expected.is_empty() {
            options.silence_timeout
        } else {
            options.response_timeout
        };
        let deadline = Instant::now() + deadline_timeout;
        // Bounded: every turn reads one message before the deadline or stops.
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                break;
            }
            stream.set_read_timeout(Some(left))?;
            match read_message(&mut stream, options.body_bytes_max, &mut message) {
                Ok(header) => {
                    let body = &message[HEADER_BYTES..];
                    let response = Response::decode(header, body, &context).map_err(|error| {
                        CaptureError::Decode {
                            connection: 0,
                            message: all.len(),
                            error,
                        }
                    })?;
                    let done = match (&exchange.request, &response) {
                        (Ok(Request::Interrupt { .. }), Response::Rows(_)) => false,
                        (_, Response::Rows(rows)) => {
                            rows.end == RowsEnd::Done || interrupted_after_part
                        }
                        _ => true,
                    };
                    responses.push(response);
                    if done {
                        break;
                    }
                }
                Err(ReadError::Io(e))
                    if matches!(
                        e.kind(),
                        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                    ) =>
                {
                    break
                }
                Err(_) => {
                    closed = true;
                    break;
                }
            }
        }
        all.push(responses);
    }
    Ok(all)
}
