//! Requests (client to server), section 7 of the reference: type codes, layouts, encode and
//! decode.

use super::codec::{put_blob, put_text, put_u32, put_u64, DecodeError, Reader};
use super::response::Role;
use super::value::{decode_params, encode_params, params_schema, Value};
use super::{split_message, write_message, Header};

/// Request type codes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum RequestType {
    /// LEADER (0) → SERVER.
    Leader = 0,
    /// CLIENT (1) → WELCOME.
    Client = 1,
    /// HEARTBEAT (2): obsolete, no stock client sends it.
    Heartbeat = 2,
    /// OPEN (3) → DB.
    Open = 3,
    /// PREPARE (4) → STMT.
    Prepare = 4,
    /// EXEC (5) → RESULT.
    Exec = 5,
    /// QUERY (6) → ROWS…
    Query = 6,
    /// FINALIZE (7) → EMPTY.
    Finalize = 7,
    /// EXEC_SQL (8) → RESULT.
    ExecSql = 8,
    /// QUERY_SQL (9) → ROWS…
    QuerySql = 9,
    /// INTERRUPT (10) → EMPTY.
    Interrupt = 10,
    /// CONNECT (11): dqlite's raft transport hand-over.
    Connect = 11,
    /// ADD (12) → EMPTY.
    Add = 12,
    /// ASSIGN (13) → EMPTY.
    Assign = 13,
    /// REMOVE (14) → EMPTY.
    Remove = 14,
    /// DUMP (15) → FILES.
    Dump = 15,
    /// CLUSTER (16) → SERVERS.
    Cluster = 16,
    /// TRANSFER (17) → EMPTY.
    Transfer = 17,
    /// DESCRIBE (18) → METADATA.
    Describe = 18,
    /// WEIGHT (19) → EMPTY.
    Weight = 19,
    /// VERIFY (128, atoll only) → CHECKSUMS.
    Verify = 128,
    /// STATUS (129, atoll only) → STATUS.
    Status = 129,
    /// REPAIR (130, atoll only) → EMPTY.
    Repair = 130,
    /// RESTORE (131, atoll only) → EMPTY.
    Restore = 131,
}

impl RequestType {
    /// The type for a wire code, if protocol version 1 defines one.
    pub fn from_code(code: u8) -> Option<RequestType> {
        use RequestType::*;
        Some(match code {
            0 => Leader,
            1 => Client,
            2 => Heartbeat,
            3 => Open,
            4 => Prepare,
            5 => Exec,
            6 => Query,
            7 => Finalize,
            8 => ExecSql,
            9 => QuerySql,
            10 => Interrupt,
            11 => Connect,
            12 => Add,
            13 => Assign,
            14 => Remove,
            15 => Dump,
            16 => Cluster,
            17 => Transfer,
            18 => Describe,
            19 => Weight,
            128 => Verify,
            129 => Status,
            130 => Repair,
            131 => Restore,
            _ => return None,
        })
    }

    /// The wire code.
    pub fn code(self) -> u8 {
        self as u8
    }

    /// The name the reference uses (LEADER, EXEC_SQL, …).
    pub fn name(self) -> &'static str {
        use RequestType::*;
        match self {
            Leader => "LEADER",
            Client => "CLIENT",
            Heartbeat => "HEARTBEAT",
            Open => "OPEN",
            Prepare => "PREPARE",
            Exec => "EXEC",
            Query => "QUERY",
            Finalize => "FINALIZE",
            ExecSql => "EXEC_SQL",
            QuerySql => "QUERY_SQL",
            Interrupt => "INTERRUPT",
            Connect => "CONNECT",
            Add => "ADD",
            Assign => "ASSIGN",
            Remove => "REMOVE",
            Dump => "DUMP",
            Cluster => "CLUSTER",
            Transfer => "TRANSFER",
            Describe => "DESCRIBE",
            Weight => "WEIGHT",
            Verify => "VERIFY",
            Status => "STATUS",
            Repair => "REPAIR",
            Restore => "RESTORE",
        }
    }
}

/// The layout of the SERVERS answer to CLUSTER.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ClusterFormat {
    /// Format 0: id and address per node.
    V0,
    /// Format 1: id, address and role per node (what every stock client sends).
    V1,
}

impl ClusterFormat {
    /// The wire value.
    pub fn word(self) -> u64 {
        match self {
            ClusterFormat::V0 => 0,
            ClusterFormat::V1 => 1,
        }
    }
}

/// One request. Field widths follow the wire: EXEC/QUERY/FINALIZE carry 32-bit ids, the others
/// 64-bit ones.
#[derive(Debug, Clone, PartialEq)]
pub enum Request {
    /// Which node does this node believe leads? (The body word is unused.)
    Leader,
    /// Registers the client; the id is only recorded.
    Client {
        /// Client id (go-dqlite sends 0, Python a random number).
        id: u64,
    },
    /// Obsolete heartbeat; a server answers FAILURE 1005.
    Heartbeat {
        /// Client timestamp.
        timestamp: u64,
    },
    /// Opens a database on this connection.
    Open {
        /// Database name (a plain file name).
        name: String,
        /// Open flags, ignored by servers.
        flags: u64,
        /// VFS name, ignored by servers.
        vfs: String,
    },
    /// Prepares a statement.
    Prepare {
        /// Database id (always 0).
        db_id: u64,
        /// SQL text.
        sql: String,
        /// Schema 1: any number of statements, the STMT answer carries the tail offset.
        with_tail: bool,
    },
    /// Runs a prepared statement to completion.
    Exec {
        /// Database id.
        db_id: u32,
        /// Statement id.
        stmt_id: u32,
        /// Parameters bound to placeholders 1..n.
        params: Vec<Value>,
    },
    /// Runs a prepared statement and streams its rows.
    Query {
        /// Database id.
        db_id: u32,
        /// Statement id.
        stmt_id: u32,
        /// Parameters bound to placeholders 1..n.
        params: Vec<Value>,
    },
    /// Frees a prepared statement.
    Finalize {
        /// Database id.
        db_id: u32,
        /// Statement id.
        stmt_id: u32,
    },
    /// Runs SQL text (possibly several statements) without rows.
    ExecSql {
        /// Database id.
        db_id: u64,
        /// SQL text.
        sql: String,
        /// Parameters.
        params: Vec<Value>,
    },
    /// Runs the first statement of SQL text and streams its rows.
    QuerySql {
        /// Database id.
        db_id: u64,
        /// SQL text.
        sql: String,
        /// Parameters.
        params: Vec<Value>,
    },
    /// Stops the query streaming on this connection.
    Interrupt {
        /// Database id.
        db_id: u64,
    },
    /// dqlite's raft transport hand-over; not used by clients.
    Connect {
        /// Node id of the connecting node.
        id: u64,
        /// Address of the connecting node.
        address: String,
    },
    /// Adds a node to the configuration as a spare.
    Add {
        /// Node id.
        id: u64,
        /// Node address.
        address: String,
    },
    /// Changes a node's role. `None` is the pre-roles one-word form, which means voter.
    Assign {
        /// Node id.
        id: u64,
        /// New role.
        role: Option<Role>,
    },
    /// Removes a node from the configuration.
    Remove {
        /// Node id.
        id: u64,
    },
    /// Asks for the files of a database.
    Dump {
        /// Database name.
        name: String,
    },
    /// Asks for the cluster configuration.
    Cluster {
        /// Answer layout.
        format: ClusterFormat,
    },
    /// Transfers leadership; id 0 lets the leader pick.
    Transfer {
        /// Target voter id, or 0.
        id: u64,
    },
    /// Asks for this node's metadata (format 0, dqlite's).
    Describe,
    /// Asks an atoll node for its metadata and Raft status (DESCRIBE format 1, atoll-specific:
    /// answered with [`crate::protocol::Response::MetadataV1`]). Never send it to a dqlite node
    /// (1.11 answers twice and may crash); see [`crate::protocol::VERSION_ATOLL_1`].
    DescribeV1,
    /// Sets this node's weight.
    Weight {
        /// New weight.
        weight: u64,
    },
    /// atoll only (type 128), answered with CHECKSUMS. `index` 0 asks the leader to propose a
    /// verify point for `database` (empty: every database); the answer carries its index.
    /// `index` > 0 asks a node for its checksums at that verify point.
    Verify {
        /// The verify point, or 0 to make one.
        index: u64,
        /// The database, or empty for all.
        database: String,
    },
    /// atoll only (type 129): the node's status for `atoll status`, answered with STATUS.
    Status,
    /// atoll only (type 130): tells a node that its copy of `database` was found damaged
    /// (`atoll verify --repair`): it moves its data aside and is rebuilt from the leader.
    /// Answered with EMPTY before the node stops to do it.
    Repair {
        /// The damaged database, for the node's log.
        database: String,
    },
    /// atoll only (type 131): one piece of a restore (`atoll restore`), sent to the leader in
    /// order; the piece that reaches `total` replaces the database. Answered with EMPTY once
    /// the piece is committed and applied on the leader.
    Restore {
        /// The database to replace.
        database: String,
        /// Chosen by the client, the same for every piece of one restore.
        restore_id: u64,
        /// Where `data` goes in the file.
        offset: u64,
        /// The whole file's length.
        total: u64,
        /// The bytes.
        data: Vec<u8>,
    },
}

impl Request {
    /// The request's type.
    pub fn request_type(&self) -> RequestType {
        use RequestType as T;
        match self {
            Request::Leader => T::Leader,
            Request::Client { .. } => T::Client,
            Request::Heartbeat { .. } => T::Heartbeat,
            Request::Open { .. } => T::Open,
            Request::Prepare { .. } => T::Prepare,
            Request::Exec { .. } => T::Exec,
            Request::Query { .. } => T::Query,
            Request::Finalize { .. } => T::Finalize,
            Request::ExecSql { .. } => T::ExecSql,
            Request::QuerySql { .. } => T::QuerySql,
            Request::Interrupt { .. } => T::Interrupt,
            Request::Connect { .. } => T::Connect,
            Request::Add { .. } => T::Add,
            Request::Assign { .. } => T::Assign,
            Request::Remove { .. } => T::Remove,
            Request::Dump { .. } => T::Dump,
            Request::Cluster { .. } => T::Cluster,
            Request::Transfer { .. } => T::Transfer,
            Request::Describe | Request::DescribeV1 => T::Describe,
            Request::Weight { .. } => T::Weight,
            Request::Verify { .. } => T::Verify,
            Request::Status => T::Status,
            Request::Repair { .. } => T::Repair,
            Request::Restore { .. } => T::Restore,
        }
    }

    /// Whether the answer is a stream of ROWS messages (QUERY and QUERY_SQL).
    pub fn is_query(&self) -> bool {
        matches!(self, Request::Query { .. } | Request::QuerySql { .. })
    }

    /// The schema byte this request is sent with.
    fn schema(&self) -> u8 {
        match self {
            Request::Prepare { with_tail, .. } => u8::from(*with_tail),
            Request::Exec { params, .. }
            | Request::Query { params, .. }
            | Request::ExecSql { params, .. }
            | Request::QuerySql { params, .. } => params_schema(params.len()),
            _ => 0,
        }
    }

    /// Appends the whole message (header and body).
    pub fn encode(&self, out: &mut Vec<u8>) {
        let kind = self.request_type().code();
        write_message(out, kind, self.schema(), |out| self.encode_body(out));
    }

    fn encode_body(&self, out: &mut Vec<u8>) {
        match self {
            Request::Leader | Request::Describe | Request::Status => put_u64(out, 0),
            Request::Verify { index, database } => {
                put_u64(out, *index);
                put_text(out, database);
            }
            Request::Repair { database } => put_text(out, database),
            Request::Restore {
                database,
                restore_id,
                offset,
                total,
                data,
            } => {
                put_text(out, database);
                put_u64(out, *restore_id);
                put_u64(out, *offset);
                put_u64(out, *total);
                put_blob(out, data);
            }
            Request::DescribeV1 => put_u64(out, 1),
            Request::Client { id } => put_u64(out, *id),
            Request::Heartbeat { timestamp } => put_u64(out, *timestamp),
            Request::Open { name, flags, vfs } => {
                put_text(out, name);
                put_u64(out, *flags);
                put_text(out, vfs);
            }
            Request::Prepare { db_id, sql, .. } => {
                put_u64(out, *db_id);
                put_text(out, sql);
            }
            Request::Exec {
                db_id,
                stmt_id,
                params,
            }
            | Request::Query {
                db_id,
                stmt_id,
                params,
            } => {
                put_u32(out, *db_id);
                put_u32(out, *stmt_id);
                encode_params(out, params);
            }
            Request::Finalize { db_id, stmt_id } => {
                put_u32(out, *db_id);
                put_u32(out, *stmt_id);
            }
            Request::ExecSql { db_id, sql, params } | Request::QuerySql { db_id, sql, params } => {
                put_u64(out, *db_id);
                put_text(out, sql);
                encode_params(out, params);
            }
            Request::Interrupt { db_id } => put_u64(out, *db_id),
            Request::Connect { id, address } | Request::Add { id, address } => {
                put_u64(out, *id);
                put_text(out, address);
            }
            Request::Assign { id, role } => {
                put_u64(out, *id);
                if let Some(role) = role {
                    put_u64(out, role.word());
                }
            }
            Request::Remove { id } | Request::Transfer { id } => put_u64(out, *id),
            Request::Dump { name } => put_text(out, name),
            Request::Cluster { format } => put_u64(out, format.word()),
            Request::Weight { weight } => put_u64(out, *weight),
        }
    }

    /// Decodes one complete message (header and body, nothing more).
    pub fn decode_message(message: &[u8]) -> Result<Request, DecodeError> {
        let (header, body) = split_message(message)?;
        Request::decode(header, body)
    }

    /// Decodes a request body of the type and schema `header` names. The body length must be
    /// the header's; bytes after the known fields are ignored, as dqlite does.
    pub fn decode(header: Header, body: &[u8]) -> Result<Request, DecodeError> {
        let Some(kind) = RequestType::from_code(header.kind) else {
            return Err(DecodeError::UnknownRequestType(header.kind));
        };
        if body.is_empty() {
            return Err(DecodeError::EmptyBody { kind: header.kind });
        }
        let schema_max = match kind {
            RequestType::Prepare
            | RequestType::Exec
            | RequestType::Query
            | RequestType::ExecSql
            | RequestType::QuerySql => 1,
            _ => 0,
        };
        if header.schema > schema_max {
            return Err(DecodeError::UnknownSchema {
                kind: header.kind,
                schema: header.schema,
            });
        }
        let mut r = Reader::new(body);
        let request = match kind {
            RequestType::Leader => {
                r.u64("leader unused")?;
                Request::Leader
            }
            RequestType::Client => Request::Client {
                id: r.u64("client id")?,
            },
            RequestType::Heartbeat => Request::Heartbeat {
                timestamp: r.u64("heartbeat timestamp")?,
            },
            RequestType::Open => Request::Open {
                name: r.text("database name")?.to_owned(),
                flags: r.u64("open flags")?,
                vfs: r.text("vfs name")?.to_owned(),
            },
            RequestType::Prepare => Request::Prepare {
                db_id: r.u64("db id")?,
                sql: r.text("sql")?.to_owned(),
                with_tail: header.schema == 1,
            },
            RequestType::Exec | RequestType::Query => {
                let db_id = r.u32("db id")?;
                let stmt_id = r.u32("statement id")?;
                let params = decode_params(&mut r, header.kind, header.schema)?;
                if kind == RequestType::Exec {
                    Request::Exec {
                        db_id,
                        stmt_id,
                        params,
                    }
                } else {
                    Request::Query {
                        db_id,
                        stmt_id,
                        params,
                    }
                }
            }
            RequestType::Finalize => Request::Finalize {
                db_id: r.u32("db id")?,
                stmt_id: r.u32("statement id")?,
            },
            RequestType::ExecSql | RequestType::QuerySql => {
                let db_id = r.u64("db id")?;
                let sql = r.text("sql")?.to_owned();
                let params = decode_params(&mut r, header.kind, header.schema)?;
                if kind == RequestType::ExecSql {
                    Request::ExecSql { db_id, sql, params }
                } else {
                    Request::QuerySql { db_id, sql, params }
                }
            }
            RequestType::Interrupt => Request::Interrupt {
                db_id: r.u64("db id")?,
            },
            RequestType::Connect => Request::Connect {
                id: r.u64("node id")?,
                address: r.text("node address")?.to_owned(),
            },
            RequestType::Add => Request::Add {
                id: r.u64("node id")?,
                address: r.text("node address")?.to_owned(),
            },
            RequestType::Assign => {
                let id = r.u64("node id")?;
                // The role word is optional: a one-word body is the pre-roles "promote".
                let role = if r.is_empty() {
                    None
                } else {
                    Some(Role::from_word(r.u64("node role")?)?)
                };
                Request::Assign { id, role }
            }
            RequestType::Remove => Request::Remove {
                id: r.u64("node id")?,
            },
            RequestType::Dump => Request::Dump {
                name: r.text("database name")?.to_owned(),
            },
            RequestType::Cluster => {
                let format = match r.u64("cluster format")? {
                    0 => ClusterFormat::V0,
                    1 => ClusterFormat::V1,
                    format => {
                        return Err(DecodeError::InvalidFormat {
                            field: "cluster format",
                            format,
                        })
                    }
                };
                Request::Cluster { format }
            }
            RequestType::Transfer => Request::Transfer {
                id: r.u64("node id")?,
            },
            RequestType::Describe => match r.u64("describe format")? {
                0 => Request::Describe,
                1 => Request::DescribeV1,
                format => {
                    return Err(DecodeError::InvalidFormat {
                        field: "describe format",
                        format,
                    })
                }
            },
            RequestType::Weight => Request::Weight {
                weight: r.u64("weight")?,
            },
            RequestType::Verify => Request::Verify {
                index: r.u64("verify index")?,
                database: r.text("database name")?.to_owned(),
            },
            RequestType::Status => {
                r.u64("status unused")?;
                Request::Status
            }
            RequestType::Repair => Request::Repair {
                database: r.text("database name")?.to_owned(),
            },
            RequestType::Restore => Request::Restore {
                database: r.text("database name")?.to_owned(),
                restore_id: r.u64("restore id")?,
                offset: r.u64("restore offset")?,
                total: r.u64("restore total")?,
                data: r.blob("restore data")?.to_vec(),
            },
        };
        Ok(request)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::codec::DecodeError;
    use crate::protocol::HEADER_BYTES;

    fn round_trip(request: Request) {
        let mut out = Vec::new();
        request.encode(&mut out);
        assert_eq!(out.len() % 8, 0);
        assert_eq!(Request::decode_message(&out).unwrap(), request);
    }

    #[test]
    fn test_every_request_round_trips() {
        round_trip(Request::Leader);
        round_trip(Request::Client { id: 7 });
        round_trip(Request::Heartbeat { timestamp: 9 });
        round_trip(Request::Open {
            name: "test".into(),
            flags: 0,
            vfs: "volatile".into(),
        });
        round_trip(Request::Prepare {
            db_id: 0,
            sql: "SELECT 1; SELECT 2".into(),
            with_tail: true,
        });
        round_trip(Request::Exec {
            db_id: 0,
            stmt_id: 3,
            params: vec![Value::Integer(1), Value::Text("x".into())],
        });
        round_trip(Request::Query {
            db_id: 0,
            stmt_id: 3,
            params: vec![],
        });
        round_trip(Request::Finalize {
            db_id: 0,
            stmt_id: 3,
        });
        round_trip(Request::ExecSql {
            db_id: 0,
            sql: "INSERT INTO t VALUES (?)".into(),
            params: (0..300).map(Value::Integer).collect(),
        });
        round_trip(Request::QuerySql {
            db_id: 0,
            sql: "SELECT ?".into(),
            params: vec![Value::Boolean(true)],
        });
        round_trip(Request::Interrupt { db_id: 0 });
        round_trip(Request::Connect {
            id: 2,
            address: "127.0.0.1:9002".into(),
        });
        round_trip(Request::Add {
            id: 2,
            address: "127.0.0.1:9002".into(),
        });
        round_trip(Request::Assign { id: 2, role: None });
        round_trip(Request::Assign {
            id: 2,
            role: Some(Role::Standby),
        });
        round_trip(Request::Remove { id: 2 });
        round_trip(Request::Dump { name: "db".into() });
        round_trip(Request::Cluster {
            format: ClusterFormat::V0,
        });
        round_trip(Request::Transfer { id: 0 });
        round_trip(Request::Describe);
        round_trip(Request::Status);
        round_trip(Request::Repair {
            database: "app".into(),
        });
        round_trip(Request::Restore {
            database: "app".into(),
            restore_id: 9,
            offset: 4096,
            total: 8192,
            data: vec![7; 13],
        });
        round_trip(Request::Verify {
            index: 12,
            database: "app".into(),
        });
        round_trip(Request::DescribeV1);
        round_trip(Request::Weight { weight: 3 });
    }

    #[test]
    fn test_decode_rejects_what_dqlite_crashes_or_hangs_on() {
        // Unknown type: an error carrying the type, so the server can answer FAILURE 1005.
        let message = [1u8, 0, 0, 0, 42, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0];
        let error = Request::decode_message(&message).unwrap_err();
        assert_eq!(error, DecodeError::UnknownRequestType(42));
        assert_eq!(error.failure_code(), 1005);
        // words = 0.
        let message = [0u8, 0, 0, 0, 0, 0, 0, 0];
        assert_eq!(
            Request::decode_message(&message),
            Err(DecodeError::EmptyBody { kind: 0 })
        );
        // DESCRIBE with a format other than 0 and atoll's 1.
        let message = [1u8, 0, 0, 0, 18, 0, 0, 0, 2, 0, 0, 0, 0, 0, 0, 0];
        let error = Request::decode_message(&message).unwrap_err();
        assert_eq!(error.failure_code(), 15);
        // A schema byte on a type that has no schema 1.
        let message = [1u8, 0, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0];
        assert_eq!(
            Request::decode_message(&message),
            Err(DecodeError::UnknownSchema { kind: 0, schema: 1 })
        );
        // ASSIGN with a role outside 0..=2.
        let mut message = vec![2u8, 0, 0, 0, 13, 0, 0, 0];
        message.extend_from_slice(&[1, 0, 0, 0, 0, 0, 0, 0, 3, 0, 0, 0, 0, 0, 0, 0]);
        assert_eq!(
            Request::decode_message(&message),
            Err(DecodeError::InvalidRole(3))
        );
    }

    #[test]
    fn test_header_word_count_is_validated() {
        let header = Header {
            words: u32::MAX,
            kind: 8,
            schema: 0,
            extra: 0,
        };
        assert!(matches!(
            header.body_bytes_checked(1 << 20),
            Err(DecodeError::MessageTooLarge { .. })
        ));
        assert_eq!(header.encode().len(), HEADER_BYTES);
        assert_eq!(Header::decode(header.encode()), header);
    }
}
