//! Responses (server to client), sections 6 and 7 of the reference: type codes, layouts, encode
//! and decode, and [`RowsBatch`], which streams a result set as ROWS messages under a byte budget
//! the way dqlite does.

use super::codec::{put_text, put_u32, put_u64, DecodeError, Reader, WORD_BYTES};
use super::request::ClusterFormat;
use super::value::{decode_row, encode_row, Value, ValueRef};
use super::{finish_message, split_message, write_message, Header, ProtocolVersion, HEADER_BYTES};

/// End marker of a final ROWS message.
pub const ROWS_DONE: u64 = 0xffff_ffff_ffff_ffff;
/// End marker of a ROWS message that more ROWS messages follow.
pub const ROWS_PART: u64 = 0xeeee_eeee_eeee_eeee;
/// dqlite fills a ROWS message until it holds at least this many bytes (header included), then
/// sends it with PART; using the same target reproduces dqlite's batches byte for byte.
pub const ROWS_BATCH_BYTES_TARGET: usize = 4096;

/// Response type codes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum ResponseType {
    /// FAILURE (0).
    Failure = 0,
    /// SERVER (1), the answer to LEADER.
    Server = 1,
    /// WELCOME (2), the answer to CLIENT.
    Welcome = 2,
    /// SERVERS (3), the answer to CLUSTER.
    Servers = 3,
    /// DB (4), the answer to OPEN.
    Db = 4,
    /// STMT (5), the answer to PREPARE.
    Stmt = 5,
    /// RESULT (6), the answer to EXEC and EXEC_SQL.
    Result = 6,
    /// ROWS (7), the answer to QUERY and QUERY_SQL.
    Rows = 7,
    /// EMPTY (8).
    Empty = 8,
    /// FILES (9), the answer to DUMP.
    Files = 9,
    /// METADATA (10), the answer to DESCRIBE.
    Metadata = 10,
    /// CHECKSUMS (128, atoll only), the answer to VERIFY.
    Checksums = 128,
    /// STATUS (129, atoll only), the answer to STATUS.
    Status = 129,
}

impl ResponseType {
    /// The type for a wire code, if protocol version 1 defines one.
    pub fn from_code(code: u8) -> Option<ResponseType> {
        use ResponseType::*;
        Some(match code {
            0 => Failure,
            1 => Server,
            2 => Welcome,
            3 => Servers,
            4 => Db,
            5 => Stmt,
            6 => Result,
            7 => Rows,
            8 => Empty,
            9 => Files,
            10 => Metadata,
            128 => Checksums,
            129 => Status,
            _ => return None,
        })
    }

    /// The wire code.
    pub fn code(self) -> u8 {
        self as u8
    }

    /// The name the reference uses.
    pub fn name(self) -> &'static str {
        use ResponseType::*;
        match self {
            Failure => "FAILURE",
            Server => "SERVER",
            Welcome => "WELCOME",
            Servers => "SERVERS",
            Db => "DB",
            Stmt => "STMT",
            Result => "RESULT",
            Rows => "ROWS",
            Empty => "EMPTY",
            Files => "FILES",
            Metadata => "METADATA",
            Checksums => "CHECKSUMS",
            Status => "STATUS",
        }
    }
}

/// A node's role (SERVERS format 1, ASSIGN).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Role {
    /// Replicates the log and votes (0).
    Voter,
    /// Replicates the log, does not vote (1).
    Standby,
    /// Does not replicate (2).
    Spare,
}

impl Role {
    /// The role for a wire value; dqlite does not reject other values, atoll does.
    pub fn from_word(word: u64) -> Result<Role, DecodeError> {
        match word {
            0 => Ok(Role::Voter),
            1 => Ok(Role::Standby),
            2 => Ok(Role::Spare),
            other => Err(DecodeError::InvalidRole(other)),
        }
    }

    /// The wire value.
    pub fn word(self) -> u64 {
        match self {
            Role::Voter => 0,
            Role::Standby => 1,
            Role::Spare => 2,
        }
    }
}

/// One node of a SERVERS answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeInfo {
    /// Node id.
    pub id: u64,
    /// The address clients dial.
    pub address: String,
    /// Role; `None` in format 0, which carries none.
    pub role: Option<Role>,
}

/// One file of a FILES answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct File {
    /// File name: the database name, then the name + `-wal`.
    pub name: String,
    /// Raw contents; a multiple of 8 bytes (whole pages and WAL frames), because the next name
    /// follows the data directly.
    pub data: Vec<u8>,
}

/// How a ROWS message ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RowsEnd {
    /// The result set is complete.
    Done,
    /// More ROWS messages follow without a further request.
    Part,
}

impl RowsEnd {
    /// The marker word.
    pub fn marker(self) -> u64 {
        match self {
            RowsEnd::Done => ROWS_DONE,
            RowsEnd::Part => ROWS_PART,
        }
    }
}

/// One ROWS message: every batch repeats the column names.
#[derive(Debug, Clone, PartialEq)]
pub struct Rows {
    /// Column names.
    pub columns: Vec<String>,
    /// Rows, each with one value per column; every row carries its own type codes.
    pub rows: Vec<Vec<Value>>,
    /// DONE or PART.
    pub end: RowsEnd,
}

/// One response.
#[derive(Debug, Clone, PartialEq)]
pub enum Response {
    /// The request failed.
    Failure {
        /// SQLite or dqlite result code (section 9).
        code: u64,
        /// Message text.
        message: String,
    },
    /// The leader this node knows of; id 0 and "" when it knows none.
    Server {
        /// Leader's node id (0 in the legacy layout, which carries none).
        id: u64,
        /// Leader's address, exactly the string clients dial.
        address: String,
    },
    /// The answer to CLIENT.
    Welcome {
        /// Heartbeat timeout in milliseconds (dqlite: 15000).
        heartbeat_timeout_ms: u64,
    },
    /// The cluster configuration, in configuration order.
    Servers {
        /// The nodes.
        nodes: Vec<NodeInfo>,
    },
    /// The answer to OPEN.
    Db {
        /// Database id (always 0).
        id: u32,
    },
    /// The answer to PREPARE.
    Stmt {
        /// Database id.
        db_id: u32,
        /// Statement id.
        stmt_id: u32,
        /// Number of parameters (the highest placeholder index).
        params_count: u64,
        /// Schema 1 only: byte offset of the next statement in the SQL text.
        tail_offset: Option<u64>,
    },
    /// The answer to EXEC and EXEC_SQL.
    Result {
        /// `sqlite3_last_insert_rowid` of the connection.
        last_insert_id: u64,
        /// `sqlite3_changes` of the connection.
        rows_affected: u64,
    },
    /// One batch of a result set.
    Rows(Rows),
    /// Success without data.
    Empty,
    /// The answer to DUMP.
    Files(Vec<File>),
    /// The answer to DESCRIBE.
    Metadata {
        /// Failure domain.
        failure_domain: u64,
        /// Weight.
        weight: u64,
    },
    /// An atoll node's answer to DESCRIBE format 1 ([`crate::protocol::Request::DescribeV1`]):
    /// a METADATA message whose body starts as format 0's and goes on with atoll's words.
    MetadataV1(NodeMetadata),
    /// An atoll node's answer to VERIFY.
    Checksums(Checksums),
    /// An atoll node's answer to STATUS (boxed: the largest answer by far).
    Status(Box<NodeStatus>),
}

/// Where a node stands with a verify point (CHECKSUMS' state word).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VerifyState {
    /// The checksums are computed (0).
    Done,
    /// The node has not applied the point yet, or is still reading its databases (1).
    Pending,
    /// The node cannot say: it skipped the point (caught up by snapshot past it) or forgot it
    /// (only the newest points are kept) (2).
    Unavailable,
}

impl VerifyState {
    /// The wire word.
    pub fn word(self) -> u64 {
        match self {
            VerifyState::Done => 0,
            VerifyState::Pending => 1,
            VerifyState::Unavailable => 2,
        }
    }
}

/// One database's checksum at a verify point.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DatabaseChecksum {
    /// The database's name.
    pub name: String,
    /// Its size in pages.
    pub pages: u64,
    /// The checksum of its image (crc32 of every page in order, in the low 32 bits).
    pub checksum: u64,
}

/// CHECKSUMS: index, node id, applied index, state, count, then per database name, pages,
/// checksum (words and texts as everywhere else).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Checksums {
    /// The verify point.
    pub index: u64,
    /// The answering node.
    pub node_id: u64,
    /// Its applied index when it answered.
    pub applied_index: u64,
    /// Whether the checksums below are there.
    pub state: VerifyState,
    /// The checksums (state Done only).
    pub databases: Vec<DatabaseChecksum>,
}

/// STATUS: what `atoll status` shows of a node (words, then the version text).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct NodeStatus {
    /// Raft status as DESCRIBE format 1 has it.
    pub metadata: NodeMetadata,
    /// Milliseconds since the node last heard from its leader (0 on the leader; `u64::MAX`
    /// when it never has).
    pub last_contact_ms: u64,
    /// Bytes free for the node's data directory.
    pub disk_free_bytes: u64,
    /// Databases the node holds.
    pub databases: u64,
    /// The node's resident memory in bytes (0 when unknown).
    pub rss_bytes: u64,
    /// The node is being rebuilt from the leader after finding its data damaged (its vote is
    /// withheld meanwhile).
    pub repairing: bool,
    /// The node's version.
    pub version: String,
}

/// What an atoll node says about itself in METADATA format 1: dqlite's two words, then its
/// identity and Raft status (every field a `u64`, in this order).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct NodeMetadata {
    /// Failure domain (as format 0).
    pub failure_domain: u64,
    /// Weight (as format 0).
    pub weight: u64,
    /// The node's id.
    pub id: u64,
    /// Reserved, 0: an atoll node no longer tells clients its cluster id (the word stays for
    /// the layout; `atoll join` takes the id from its join token).
    pub cluster_id: u64,
    /// The node's current Raft term.
    pub term: u64,
    /// Raft state: 0 follower, 1 pre-candidate, 2 candidate, 3 leader.
    pub state: u64,
    /// The id of the leader the node knows, 0 for none.
    pub leader_id: u64,
    /// The node's commit index.
    pub commit_index: u64,
    /// The node's applied index: every entry up to it is in its databases.
    pub applied_index: u64,
    /// The last index of the node's Raft log.
    pub last_index: u64,
    /// How many of the node's databases are known corrupt (they refuse writes; the node's log
    /// names them).
    pub corrupt_databases: u64,
}

impl NodeMetadata {
    /// Words in the body of a METADATA format 1 message.
    pub const WORDS: usize = 11;

    /// The words, in wire order.
    pub fn words(&self) -> [u64; NodeMetadata::WORDS] {
        [
            self.failure_domain,
            self.weight,
            self.id,
            self.cluster_id,
            self.term,
            self.state,
            self.leader_id,
            self.commit_index,
            self.applied_index,
            self.last_index,
            self.corrupt_databases,
        ]
    }

    fn read(r: &mut Reader<'_>) -> Result<NodeMetadata, DecodeError> {
        Ok(NodeMetadata {
            failure_domain: r.u64("failure domain")?,
            weight: r.u64("weight")?,
            id: r.u64("node id")?,
            cluster_id: r.u64("cluster id")?,
            term: r.u64("term")?,
            state: r.u64("raft state")?,
            leader_id: r.u64("leader id")?,
            commit_index: r.u64("commit index")?,
            applied_index: r.u64("applied index")?,
            last_index: r.u64("last index")?,
            corrupt_databases: r.u64("corrupt databases")?,
        })
    }
}

/// What a response decoder must know that the response itself does not say: the connection's
/// protocol version (SERVER's layout) and the format the CLUSTER request asked for (SERVERS').
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ResponseContext {
    /// The version word the connection started with.
    pub version: ProtocolVersion,
    /// The format of the last CLUSTER request.
    pub cluster_format: ClusterFormat,
}

impl Default for ResponseContext {
    fn default() -> Self {
        ResponseContext {
            version: ProtocolVersion::V1,
            cluster_format: ClusterFormat::V1,
        }
    }
}

impl Response {
    /// The response's type.
    pub fn response_type(&self) -> ResponseType {
        match self {
            Response::Failure { .. } => ResponseType::Failure,
            Response::Server { .. } => ResponseType::Server,
            Response::Welcome { .. } => ResponseType::Welcome,
            Response::Servers { .. } => ResponseType::Servers,
            Response::Db { .. } => ResponseType::Db,
            Response::Stmt { .. } => ResponseType::Stmt,
            Response::Result { .. } => ResponseType::Result,
            Response::Rows(_) => ResponseType::Rows,
            Response::Empty => ResponseType::Empty,
            Response::Files(_) => ResponseType::Files,
            Response::Metadata { .. } | Response::MetadataV1(_) => ResponseType::Metadata,
            Response::Checksums(_) => ResponseType::Checksums,
            Response::Status(_) => ResponseType::Status,
        }
    }

    /// A FAILURE with this code and message.
    pub fn failure(code: u64, message: impl Into<String>) -> Response {
        Response::Failure {
            code,
            message: message.into(),
        }
    }

    /// Whether this response completes the answer to its request: everything but a ROWS batch
    /// that ends with PART.
    pub fn is_final(&self) -> bool {
        !matches!(
            self,
            Response::Rows(Rows {
                end: RowsEnd::Part,
                ..
            })
        )
    }

    /// Appends the whole message. `version` selects SERVER's layout (legacy: address only).
    pub fn encode(&self, out: &mut Vec<u8>, version: ProtocolVersion) {
        if let Response::Rows(rows) = self {
            let mut batch = RowsBatch::begin(out, &rows.columns, usize::MAX);
            for row in &rows.rows {
                batch.push_values(row);
            }
            batch.finish(rows.end);
            return;
        }
        let schema = match self {
            Response::Stmt {
                tail_offset: Some(_),
                ..
            } => 1,
            _ => 0,
        };
        let kind = self.response_type().code();
        write_message(out, kind, schema, |out| match self {
            Response::Failure { code, message } => {
                put_u64(out, *code);
                put_text(out, message);
            }
            Response::Server { id, address } => {
                if version == ProtocolVersion::V1 {
                    put_u64(out, *id);
                }
                put_text(out, address);
            }
            Response::Welcome {
                heartbeat_timeout_ms,
            } => put_u64(out, *heartbeat_timeout_ms),
            Response::Servers { nodes } => {
                put_u64(out, nodes.len() as u64);
                for node in nodes {
                    put_u64(out, node.id);
                    put_text(out, &node.address);
                    if let Some(role) = node.role {
                        put_u64(out, role.word());
                    }
                }
            }
            Response::Db { id } => {
                put_u32(out, *id);
                put_u32(out, 0);
            }
            Response::Stmt {
                db_id,
                stmt_id,
                params_count,
                tail_offset,
            } => {
                put_u32(out, *db_id);
                put_u32(out, *stmt_id);
                put_u64(out, *params_count);
                if let Some(tail_offset) = tail_offset {
                    put_u64(out, *tail_offset);
                }
            }
            Response::Result {
                last_insert_id,
                rows_affected,
            } => {
                put_u64(out, *last_insert_id);
                put_u64(out, *rows_affected);
            }
            Response::Empty => put_u64(out, 0),
            Response::Files(files) => {
                put_u64(out, files.len() as u64);
                for file in files {
                    put_text(out, &file.name);
                    put_u64(out, file.data.len() as u64);
                    out.extend_from_slice(&file.data);
                }
            }
            Response::Metadata {
                failure_domain,
                weight,
            } => {
                put_u64(out, *failure_domain);
                put_u64(out, *weight);
            }
            Response::MetadataV1(m) => m.words().into_iter().for_each(|w| put_u64(out, w)),
            Response::Checksums(c) => {
                put_u64(out, c.index);
                put_u64(out, c.node_id);
                put_u64(out, c.applied_index);
                put_u64(out, c.state.word());
                put_u64(out, c.databases.len() as u64);
                for database in &c.databases {
                    put_text(out, &database.name);
                    put_u64(out, database.pages);
                    put_u64(out, database.checksum);
                }
            }
            Response::Status(status) => {
                status
                    .metadata
                    .words()
                    .into_iter()
                    .for_each(|w| put_u64(out, w));
                put_u64(out, status.last_contact_ms);
                put_u64(out, status.disk_free_bytes);
                put_u64(out, status.databases);
                put_u64(out, status.rss_bytes);
                put_u64(out, u64::from(status.repairing));
                put_text(out, &status.version);
            }
            Response::Rows(_) => unreachable!("ROWS is encoded by RowsBatch above"),
        });
    }

    /// Decodes one complete message (header and body, nothing more).
    pub fn decode_message(
        message: &[u8],
        context: &ResponseContext,
    ) -> Result<Response, DecodeError> {
        let (header, body) = split_message(message)?;
        Response::decode(header, body, context)
    }

    /// Decodes a response body of the type `header` names.
    pub fn decode(
        header: Header,
        body: &[u8],
        context: &ResponseContext,
    ) -> Result<Response, DecodeError> {
        let Some(kind) = ResponseType::from_code(header.kind) else {
            return Err(DecodeError::UnknownResponseType(header.kind));
        };
        if body.is_empty() {
            return Err(DecodeError::EmptyBody { kind: header.kind });
        }
        let mut r = Reader::new(body);
        let response = match kind {
            ResponseType::Failure => Response::Failure {
                code: r.u64("failure code")?,
                message: r.text("failure message")?.to_owned(),
            },
            ResponseType::Server => match context.version {
                ProtocolVersion::V1 => Response::Server {
                    id: r.u64("leader id")?,
                    address: r.text("leader address")?.to_owned(),
                },
                ProtocolVersion::Legacy => Response::Server {
                    id: 0,
                    address: r.text("leader address")?.to_owned(),
                },
            },
            ResponseType::Welcome => Response::Welcome {
                heartbeat_timeout_ms: r.u64("heartbeat timeout")?,
            },
            ResponseType::Servers => {
                let count = r.u64("node count")?;
                let with_role = context.cluster_format == ClusterFormat::V1;
                let node_bytes_min = if with_role { 3 } else { 2 } * WORD_BYTES;
                let count = r.check_count(count, node_bytes_min, "node")?;
                let mut nodes = Vec::with_capacity(count);
                for _ in 0..count {
                    let id = r.u64("node id")?;
                    let address = r.text("node address")?.to_owned();
                    let role = if with_role {
                        Some(Role::from_word(r.u64("node role")?)?)
                    } else {
                        None
                    };
                    nodes.push(NodeInfo { id, address, role });
                }
                Response::Servers { nodes }
            }
            ResponseType::Db => {
                let id = r.u32("db id")?;
                r.u32("db unused")?;
                Response::Db { id }
            }
            ResponseType::Stmt => Response::Stmt {
                db_id: r.u32("db id")?,
                stmt_id: r.u32("statement id")?,
                params_count: r.u64("parameter count")?,
                tail_offset: if header.schema == 1 {
                    Some(r.u64("tail offset")?)
                } else {
                    None
                },
            },
            ResponseType::Result => Response::Result {
                last_insert_id: r.u64("last insert id")?,
                rows_affected: r.u64("rows affected")?,
            },
            ResponseType::Rows => Response::Rows(decode_rows(&mut r)?),
            ResponseType::Empty => {
                r.u64("empty unused")?;
                Response::Empty
            }
            ResponseType::Files => {
                let count = r.u64("file count")?;
                let count = r.check_count(count, 2 * WORD_BYTES, "file")?;
                let mut files = Vec::with_capacity(count);
                for _ in 0..count {
                    let name = r.text("file name")?.to_owned();
                    let size = r.u64("file size")?;
                    let size = r.check_count(size, 1, "file data")?;
                    let data = r.take(size, "file data")?.to_vec();
                    files.push(File { name, data });
                }
                Response::Files(files)
            }
            // Format 0 is two words; atoll's format 1 (asked only of atoll nodes) is longer.
            ResponseType::Metadata if body.len() == NodeMetadata::WORDS * 8 => {
                Response::MetadataV1(NodeMetadata::read(&mut r)?)
            }
            ResponseType::Checksums => {
                let index = r.u64("verify index")?;
                let node_id = r.u64("node id")?;
                let applied_index = r.u64("applied index")?;
                let state = match r.u64("verify state")? {
                    0 => VerifyState::Done,
                    1 => VerifyState::Pending,
                    2 => VerifyState::Unavailable,
                    format => {
                        return Err(DecodeError::InvalidFormat {
                            field: "verify state",
                            format,
                        })
                    }
                };
                let count = r.u64("database count")?;
                let count = r.check_count(count, 3 * WORD_BYTES, "database checksum")?;
                let mut databases = Vec::with_capacity(count);
                for _ in 0..count {
                    databases.push(DatabaseChecksum {
                        name: r.text("database name")?.to_owned(),
                        pages: r.u64("pages")?,
                        checksum: r.u64("checksum")?,
                    });
                }
                Response::Checksums(Checksums {
                    index,
                    node_id,
                    applied_index,
                    state,
                    databases,
                })
            }
            ResponseType::Status => Response::Status(Box::new(NodeStatus {
                metadata: NodeMetadata::read(&mut r)?,
                last_contact_ms: r.u64("last contact")?,
                disk_free_bytes: r.u64("disk free")?,
                databases: r.u64("databases")?,
                rss_bytes: r.u64("resident memory")?,
                repairing: r.u64("repairing")? != 0,
                version: r.text("version")?.to_owned(),
            })),
            ResponseType::Metadata => Response::Metadata {
                failure_domain: r.u64("failure domain")?,
                weight: r.u64("weight")?,
            },
        };
        Ok(response)
    }
}

/// Decodes a ROWS body. Each loop turn consumes at least one word, so the loop is bounded by the
/// body size.
fn decode_rows(r: &mut Reader<'_>) -> Result<Rows, DecodeError> {
    let columns_count = r.u64("column count")?;
    let columns_count = r.check_count(columns_count, WORD_BYTES, "column name")?;
    let mut columns = Vec::with_capacity(columns_count);
    for _ in 0..columns_count {
        columns.push(r.text("column name")?.to_owned());
    }
    let mut rows = Vec::new();
    loop {
        let rest = r.peek_rest();
        if rest.len() < WORD_BYTES {
            return Err(DecodeError::Truncated {
                field: "rows end marker",
                needed: WORD_BYTES as u64,
                remaining: rest.len() as u64,
            });
        }
        // A row header's first byte holds type codes <= 11, so it is never 0xee or 0xff; with no
        // columns a row would be empty, so only the marker can follow.
        if columns_count == 0 || rest[0] == 0xee || rest[0] == 0xff {
            let end = match r.u64("rows end marker")? {
                ROWS_DONE => RowsEnd::Done,
                ROWS_PART => RowsEnd::Part,
                other => return Err(DecodeError::InvalidRowsMarker(other)),
            };
            return Ok(Rows { columns, rows, end });
        }
        rows.push(decode_row(r, columns_count)?);
    }
}

/// Writes one ROWS message straight into an output buffer, row by row, so a server can stream a
/// result set of any size in bounded memory: fill a batch until [`RowsBatch::is_full`], finish it
/// with [`RowsEnd::Part`], send it, and start the next one (which repeats the column names) when
/// the connection has drained; finish the last with [`RowsEnd::Done`].
///
/// A batch dropped without [`RowsBatch::finish`] removes its partial message from the buffer.
#[derive(Debug)]
pub struct RowsBatch<'a> {
    out: &'a mut Vec<u8>,
    // Invariant: out[start..] is this batch's partial message.
    start: usize,
    columns_count: usize,
    rows_count: usize,
    message_bytes_target: usize,
    finished: bool,
}

impl<'a> RowsBatch<'a> {
    /// Starts a ROWS message: header placeholder, column count, column names.
    /// `message_bytes_target` is the size (header included) at which the batch counts as full;
    /// [`ROWS_BATCH_BYTES_TARGET`] matches dqlite.
    pub fn begin<S: AsRef<str>>(
        out: &'a mut Vec<u8>,
        columns: &[S],
        message_bytes_target: usize,
    ) -> RowsBatch<'a> {
        let start = out.len();
        out.extend_from_slice(&[0u8; HEADER_BYTES]);
        put_u64(out, columns.len() as u64);
        for column in columns {
            put_text(out, column.as_ref());
        }
        RowsBatch {
            out,
            start,
            columns_count: columns.len(),
            rows_count: 0,
            message_bytes_target,
            finished: false,
        }
    }

    /// Appends one row. A row must have exactly one value per column: anything else is a bug in
    /// the caller, and panics.
    pub fn push_row(&mut self, row: &[ValueRef<'_>]) {
        assert_eq!(row.len(), self.columns_count, "one value per column");
        assert!(!self.finished);
        encode_row(self.out, row);
        self.rows_count += 1;
    }

    /// Appends one row of owned values.
    pub fn push_values(&mut self, row: &[Value]) {
        let row: Vec<ValueRef<'_>> = row.iter().map(Value::as_value_ref).collect();
        self.push_row(&row);
    }

    /// Whether the batch has reached its byte target; dqlite stops adding rows at that point.
    pub fn is_full(&self) -> bool {
        self.message_bytes() >= self.message_bytes_target
    }

    /// Rows in this batch so far.
    pub fn rows_count(&self) -> usize {
        self.rows_count
    }

    /// Size of the message so far, header included, end marker excluded.
    pub fn message_bytes(&self) -> usize {
        self.out.len() - self.start
    }

    /// Writes the end marker and the header; returns the message size in bytes.
    pub fn finish(mut self, end: RowsEnd) -> usize {
        put_u64(self.out, end.marker());
        finish_message(self.out, self.start, ResponseType::Rows.code(), 0);
        self.finished = true;
        self.out.len() - self.start
    }
}

impl Drop for RowsBatch<'_> {
    fn drop(&mut self) {
        if !self.finished {
            self.out.truncate(self.start);
        }
    }
}

#[cfg(test)]
mod tests;
