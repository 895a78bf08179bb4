//! `sqldiff`: differential SQL testing. A seed makes a script (schemas, data, queries, DML,
//! multi-statement text with transaction control, failing statements, TEMP objects, PRAGMAs,
//! the counter functions, invalid UTF-8 text) for two sessions; it runs through atoll over the
//! dqlite wire (one client connection per session) and through local rusqlite connections of
//! the same SQLite (one per session, on one WAL file), and every answer is compared exactly:
//! RESULT counters, column names, values (floats by bits, text by bytes), FAILURE codes and
//! messages. A mismatch writes a reproducer file (the script and both answers).
//!
//! `atoll-bench sqldiff --seeds A..B [--address HOST:PORT] [--out DIR]`: without `--address`
//! it starts a node of its own. `bench/tests/t10_sqldiff.rs` runs a few fixed seeds in CI.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use atoll_net::client::{ClientConfig, ClientError, Connection};
use atoll_net::protocol::Value;
use rusqlite::fallible_iterator::FallibleIterator;
use rusqlite::types::{ToSqlOutput, ValueRef};

use crate::cluster::SingleNode;
use crate::Options;

/// Sessions a script uses.
pub const SESSIONS: usize = 2;
/// Steps of a generated script after its schema.
const STEPS: usize = 120;
/// The text of the newest dqlite for EXEC of a statement that yields rows.
const ROWS_IN_EXEC: &str = "rows yielded when none expected for EXEC request";

/// One request of a script.
#[derive(Debug, Clone)]
pub struct Step {
    /// The session (0-based) that sends it.
    pub session: usize,
    /// QUERY_SQL (rows) or EXEC_SQL (a RESULT).
    pub query: bool,
    /// The SQL text.
    pub sql: String,
    /// Its parameters.
    pub params: Vec<Value>,
}

/// A value as compared: floats by their bits.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Cell {
    /// NULL.
    Null,
    /// An integer.
    Integer(i64),
    /// A float's bits.
    Float(u64),
    /// Text bytes (UTF-8 or not).
    Text(Vec<u8>),
    /// A blob.
    Blob(Vec<u8>),
}

/// The answer to a step.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Answer {
    /// RESULT.
    Result {
        /// The connection's last insert rowid.
        last_insert_id: u64,
        /// The connection's `changes()`.
        rows_affected: u64,
    },
    /// ROWS, whole.
    Rows {
        /// Column names.
        columns: Vec<String>,
        /// The rows.
        rows: Vec<Vec<Cell>>,
    },
    /// FAILURE.
    Failure {
        /// The (extended) result code.
        code: u64,
        /// The message.
        message: String,
    },
}

fn cell_of_wire(value: &Value) -> Cell {
    match value {
        Value::Null => Cell::Null,
        Value::Integer(v) | Value::UnixTime(v) => Cell::Integer(*v),
        Value::Boolean(v) => Cell::Integer(i64::from(*v)),
        Value::Float(v) => Cell::Float(v.to_bits()),
        Value::Text(v) | Value::Iso8601(v) => Cell::Text(v.as_bytes().to_vec()),
        Value::RawText(v) => Cell::Text(v.clone()),
        Value::Blob(v) => Cell::Blob(v.clone()),
    }
}

fn cell_of_local(value: ValueRef<'_>) -> Cell {
    match value {
        ValueRef::Null => Cell::Null,
        ValueRef::Integer(v) => Cell::Integer(v),
        ValueRef::Real(v) => Cell::Float(v.to_bits()),
        // The wire carries text up to its first NUL (as dqlite's C strings do).
        ValueRef::Text(v) => Cell::Text(v.split(|&b| b == 0).next().unwrap_or_default().to_vec()),
        ValueRef::Blob(v) => Cell::Blob(v.to_vec()),
    }
}

/// atoll's side: one client connection per session, on database `name`.
pub struct Remote {
    connections: Vec<Connection>,
}

impl Remote {
    /// Connects `sessions` clients to `address` and opens `database` on each.
    pub fn open(address: &str, database: &str, sessions: usize) -> Result<Remote, String> {
        let config = ClientConfig::default();
        let connections = (0..sessions)
            .map(|_| {
                let mut connection =
                    Connection::connect(address, &config).map_err(|e| e.to_string())?;
                connection.open(database).map_err(|e| e.to_string())?;
                Ok(connection)
            })
            .collect::<Result<Vec<_>, String>>()?;
        Ok(Remote { connections })
    }

    /// Runs a step; a broken connection is an error (not an answer).
    pub fn run(&mut self, step: &Step) -> Result<Answer, String> {
        let connection = &mut self.connections[step.session];
        let outcome = if step.query {
            connection
                .query_sql(&step.sql, &step.params)
                .map(|result| Answer::Rows {
                    columns: result.columns,
                    rows: result
                        .rows
                        .iter()
                        .map(|row| row.iter().map(cell_of_wire).collect())
                        .collect(),
                })
        } else {
            connection
                .exec_sql(&step.sql, &step.params)
                .map(|result| Answer::Result {
                    last_insert_id: result.last_insert_id,
                    rows_affected: result.rows_affected,
                })
        };
        match outcome {
            Ok(answer) => Ok(answer),
            Err(ClientError::Failure { code, message }) => Ok(Answer::Failure { code, message }),
            Err(other) => Err(format!("session {}: {other}", step.session)),
        }
    }
}

/// The reference: one rusqlite connection per session on one WAL database file.
pub struct Local {
    connections: Vec<rusqlite::Connection>,
    _dir: tempfile::TempDir,
}

fn failure_of(error: rusqlite::Error) -> Answer {
    match error {
        rusqlite::Error::SqliteFailure(error, message) => Answer::Failure {
            code: u64::try_from(error.extended_code).unwrap_or(1),
            message: message.unwrap_or_else(|| error.to_string()),
        },
        other => Answer::Failure {
            code: 1,
            message: other.to_string(),
        },
    }
}

fn bind(statement: &mut rusqlite::Statement<'_>, params: &[Value]) -> rusqlite::Result<()> {
    for (index, value) in params.iter().enumerate() {
        let output = match value {
            Value::Null => ToSqlOutput::Borrowed(ValueRef::Null),
            Value::Integer(v) | Value::UnixTime(v) => ToSqlOutput::Borrowed(ValueRef::Integer(*v)),
            Value::Boolean(v) => ToSqlOutput::Borrowed(ValueRef::Integer(i64::from(*v))),
            Value::Float(v) => ToSqlOutput::Borrowed(ValueRef::Real(*v)),
            Value::Text(v) | Value::Iso8601(v) => {
                ToSqlOutput::Borrowed(ValueRef::Text(v.as_bytes()))
            }
            Value::RawText(v) => ToSqlOutput::Borrowed(ValueRef::Text(v)),
            Value::Blob(v) => ToSqlOutput::Borrowed(ValueRef::Blob(v)),
        };
        statement.raw_bind_parameter(index + 1, output)?;
    }
    Ok(())
}

impl Local {
    /// Opens `sessions` connections on a new WAL database in a temporary directory.
    pub fn open(sessions: usize) -> Result<Local, String> {
        let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
        let path = dir.path().join("reference.db");
        let connections = (0..sessions)
            .map(|_| {
                let connection = rusqlite::Connection::open(&path)?;
                connection.query_row("PRAGMA journal_mode = WAL", [], |_| Ok(()))?;
                Ok(connection)
            })
            .collect::<rusqlite::Result<Vec<_>>>()
            .map_err(|e| e.to_string())?;
        Ok(Local {
            connections,
            _dir: dir,
        })
    }

    /// Runs a step as atoll answers it: EXEC_SQL statement by statement (parameters bind to
    /// the first; a statement that yields rows fails), QUERY_SQL its first statement.
    pub fn run(&mut self, step: &Step) -> Answer {
        let connection = &self.connections[step.session];
        if step.query {
            return Self::query(connection, step).unwrap_or_else(failure_of);
        }
        let mut batch = rusqlite::Batch::new(connection, &step.sql);
        let mut first = true;
        let mut ran = false;
        // Bounded: every iteration consumes a statement of the text.
        loop {
            let mut statement = match batch.next() {
                Ok(Some(statement)) => statement,
                Ok(None) => break,
                Err(error) => return failure_of(error),
            };
            ran = true;
            if first {
                if let Err(error) = bind(&mut statement, &step.params) {
                    return failure_of(error);
                }
                first = false;
            }
            let mut rows = statement.raw_query();
            match rows.next() {
                Ok(Some(_)) => {
                    return Answer::Failure {
                        code: 1,
                        message: ROWS_IN_EXEC.to_owned(),
                    }
                }
                Ok(None) => {}
                Err(error) => return failure_of(error),
            }
        }
        if !ran {
            return Answer::Result {
                last_insert_id: 0,
                rows_affected: 0,
            };
        }
        Answer::Result {
            last_insert_id: connection.last_insert_rowid() as u64,
            rows_affected: connection.changes(),
        }
    }

    fn query(connection: &rusqlite::Connection, step: &Step) -> rusqlite::Result<Answer> {
        let mut batch = rusqlite::Batch::new(connection, &step.sql);
        let Some(mut statement) = batch.next()? else {
            return Ok(Answer::Failure {
                code: 0,
                message: "empty statement".to_owned(),
            });
        };
        bind(&mut statement, &step.params)?;
        let columns: Vec<String> = statement.column_names().map(|c| c.to_string()).collect();
        let count = columns.len();
        let mut rows = statement.raw_query();
        let mut out = Vec::new();
        while let Some(row) = rows.next()? {
            out.push(
                (0..count)
                    .map(|i| row.get_ref(i).map(cell_of_local))
                    .collect::<rusqlite::Result<Vec<_>>>()?,
            );
        }
        Ok(Answer::Rows { columns, rows: out })
    }
}

/// xorshift64*: a seed means the same script forever.
struct Prng(u64);

impl Prng {
    fn new(seed: u64) -> Prng {
        Prng(seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1)
    }

    fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn below(&mut self, bound: usize) -> usize {
        (self.next() % bound as u64) as usize
    }

    fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[self.below(items.len())]
    }
}

const AFFINITIES: [&str; 7] = [
    "",
    "INTEGER",
    "REAL",
    "TEXT",
    "BLOB",
    "NUMERIC",
    "VARCHAR(8)",
];
const TABLES: usize = 3;

fn random_value(rng: &mut Prng) -> Value {
    match rng.below(12) {
        0 => Value::Null,
        1 => Value::Integer(*rng.pick(&[0, 1, -1, i64::MAX, i64::MIN, 42, 1 << 40])),
        2 | 3 => Value::Integer(rng.below(50) as i64 - 10),
        4 => Value::Float(*rng.pick(&[0.5, -0.0, 2.0, 1e300, -3.25, 0.1, 1e-310])),
        5 | 6 => Value::Text(
            rng.pick(&["", "a", "abc", "héllo ✓", "it's", "10", "1e3", " x "])
                .to_string(),
        ),
        7 => Value::RawText(vec![0xff, b'a', 0xc3, rng.below(256) as u8 | 0x80]),
        8 => Value::Blob((0..rng.below(6)).map(|_| rng.below(256) as u8).collect()),
        9 => Value::Text(format!("t{}", rng.below(30))),
        10 => Value::Integer(rng.below(30) as i64),
        _ => Value::Float(rng.below(1000) as f64 / 8.0),
    }
}

fn literal(rng: &mut Prng) -> String {
    match rng.below(8) {
        0 => "NULL".into(),
        1 => format!("{}", rng.below(100) as i64 - 20),
        2 => format!("{}.{}", rng.below(100), rng.below(100)),
        3 => format!("'s{}'", rng.below(20)),
        4 => format!("x'{:02x}{:02x}'", rng.below(256), rng.below(256)),
        5 => format!("CAST(x'ff{:02x}61' AS TEXT)", rng.below(256)),
        6 => "'ünï'".into(),
        _ => format!("{}", rng.below(30)),
    }
}

fn step(session: usize, query: bool, sql: impl Into<String>, params: Vec<Value>) -> Step {
    Step {
        session,
        query,
        sql: sql.into(),
        params,
    }
}

/// The script of `seed`.
pub fn generate(seed: u64) -> Vec<Step> {
    let mut rng = Prng::new(seed);
    let mut steps = Vec::new();
    for table in 0..TABLES {
        let unique = if rng.below(2) == 0 { " UNIQUE" } else { "" };
        steps.push(step(
            0,
            false,
            format!(
                "CREATE TABLE t{table} (id INTEGER PRIMARY KEY, a {}, b {}, c {}{unique})",
                rng.pick(&AFFINITIES),
                rng.pick(&AFFINITIES),
                rng.pick(&AFFINITIES)
            ),
            vec![],
        ));
    }
    steps.push(step(0, false, "CREATE INDEX i0 ON t0 (a, b)", vec![]));
    steps.push(step(
        0,
        false,
        "CREATE TABLE f (id INTEGER PRIMARY KEY, r REFERENCES t0(id))",
        vec![],
    ));
    for _ in 0..STEPS {
        let session = rng.below(SESSIONS);
        let t = rng.below(TABLES);
        match rng.below(30) {
            24 | 25 => {
                // A transaction over several requests of one session (the other waits).
                steps.push(step(
                    session,
                    false,
                    *rng.pick(&["BEGIN", "BEGIN IMMEDIATE"]),
                    vec![],
                ));
                for _ in 0..rng.below(4) + 1 {
                    steps.push(step(
                        session,
                        rng.below(3) == 0,
                        format!("INSERT INTO t{t} (a, b) VALUES (?, 'in tx') RETURNING id"),
                        vec![random_value(&mut rng)],
                    ));
                }
                steps.push(step(
                    session,
                    true,
                    format!("SELECT count(*) FROM t{t}"),
                    vec![],
                ));
                let end = *rng.pick(&["COMMIT", "ROLLBACK", "END"]);
                steps.push(step(session, false, end, vec![]));
                continue;
            }
            26 => {
                steps.push(step(
                    session,
                    false,
                    format!("PRAGMA foreign_keys = {}", rng.below(2)),
                    vec![],
                ));
                continue;
            }
            27 | 28 => {
                steps.push(step(
                    session,
                    false,
                    "INSERT INTO f (r) VALUES (?)",
                    vec![Value::Integer(rng.below(12) as i64)],
                ));
                continue;
            }
            29 => {
                steps.push(step(
                    session,
                    true,
                    "SELECT count(*), total(r) FROM f",
                    vec![],
                ));
                continue;
            }
            _ => {}
        }
        let s = match rng.below(24) {
            0..=4 => step(
                session,
                false,
                format!("INSERT INTO t{t} (a, b, c) VALUES (?, ?, ?)"),
                (0..3).map(|_| random_value(&mut rng)).collect(),
            ),
            5 => step(
                session,
                false,
                format!(
                    "INSERT INTO t{t} (a, b, c) VALUES ({}, {}, {})",
                    literal(&mut rng),
                    literal(&mut rng),
                    literal(&mut rng)
                ),
                vec![],
            ),
            6 => step(
                session,
                false,
                format!(
                    "UPDATE t{t} SET a = b || ?, c = coalesce(c, 0) + 1 WHERE id % {} = {}",
                    rng.below(4) + 2,
                    rng.below(2)
                ),
                vec![random_value(&mut rng)],
            ),
            7 => step(
                session,
                false,
                format!(
                    "DELETE FROM t{t} WHERE id % {} = {}",
                    rng.below(5) + 3,
                    rng.below(3)
                ),
                vec![],
            ),
            8 => step(
                session,
                false,
                format!(
                    "INSERT INTO t{t} (a) VALUES ({}); INSERT INTO nosuch VALUES (1); \
                     INSERT INTO t{t} (a) VALUES (2)",
                    literal(&mut rng)
                ),
                vec![],
            ),
            9 => step(
                session,
                false,
                format!(
                    "BEGIN; INSERT INTO t{t} (a, b) VALUES (?, 'tx'); UPDATE t{t} SET b = 'u' \
                     WHERE id = last_insert_rowid(); COMMIT"
                ),
                vec![random_value(&mut rng)],
            ),
            10 => step(
                session,
                false,
                format!(
                    "SAVEPOINT sp; INSERT INTO t{t} (a) VALUES ('sp1'); ROLLBACK TO sp; \
                     INSERT INTO t{t} (a) VALUES ('sp2'); RELEASE sp"
                ),
                vec![],
            ),
            11 => step(
                session,
                false,
                format!("INSERT INTO t{t} (id, a) VALUES (?, 'dup')"),
                vec![Value::Integer(rng.below(8) as i64 + 1)],
            ),
            12 => step(
                session,
                false,
                format!(
                    "CREATE TEMP TABLE IF NOT EXISTS tmp{session} (v); \
                     INSERT INTO tmp{session} VALUES (?)"
                ),
                vec![random_value(&mut rng)],
            ),
            13 => step(
                session,
                true,
                format!("SELECT count(*), quote(max(v)) FROM tmp{session}"),
                vec![],
            ),
            14 => step(
                session,
                false,
                format!("PRAGMA case_sensitive_like = {}", rng.below(2)),
                vec![],
            ),
            15 => step(
                session,
                true,
                format!("SELECT id, a FROM t{t} WHERE a LIKE 'T%' ORDER BY id"),
                vec![],
            ),
            16 => step(
                session,
                true,
                "SELECT last_insert_rowid(), changes(), total_changes()",
                vec![],
            ),
            17 => step(session, false, format!("SELECT * FROM t{t}"), vec![]),
            18 => step(
                session,
                true,
                format!(
                    "SELECT count(*), sum(id), total(a), group_concat(quote(b)), max(c) FROM t{t}"
                ),
                vec![],
            ),
            19 => step(
                session,
                true,
                format!(
                    "SELECT id, a, b, c, typeof(a), hex(b), length(c) FROM t{t} WHERE id > ? \
                     ORDER BY id"
                ),
                vec![Value::Integer(rng.below(10) as i64)],
            ),
            20 => step(
                session,
                true,
                format!(
                    "SELECT a + b, a || b, CAST(a AS INTEGER), CAST(b AS REAL), a = ? FROM t{t} \
                     ORDER BY id LIMIT {}",
                    rng.below(10) + 1
                ),
                vec![random_value(&mut rng)],
            ),
            21 => step(
                session,
                true,
                format!("INSERT INTO t{t} (a) VALUES (?) RETURNING id, a"),
                vec![random_value(&mut rng)],
            ),
            22 => step(
                session,
                false,
                format!("CREATE INDEX IF NOT EXISTS ix{t} ON t{t} (c)"),
                vec![],
            ),
            _ => step(
                session,
                true,
                "SELECT ?, ?, typeof(?)",
                vec![
                    random_value(&mut rng),
                    random_value(&mut rng),
                    random_value(&mut rng),
                ],
            ),
        };
        steps.push(s);
    }
    steps
}

fn describe(steps: &[Step]) -> String {
    let mut text = String::new();
    for (index, step) in steps.iter().enumerate() {
        let kind = if step.query { "QUERY" } else { "EXEC" };
        let _ = writeln!(
            text,
            "{index:4} session {} {kind} {} -- params {:?}",
            step.session, step.sql, step.params
        );
    }
    text
}

/// Runs the script of `seed` on a fresh database of the server at `address` and locally;
/// returns the number of steps, or the first mismatch (written to `out` when given).
pub fn check_seed(address: &str, seed: u64, out: Option<&Path>) -> Result<usize, String> {
    let steps = generate(seed);
    let database = format!("sqldiff-{seed}");
    let mut remote = Remote::open(address, &database, SESSIONS)?;
    let mut local = Local::open(SESSIONS)?;
    for (index, step) in steps.iter().enumerate() {
        let got = remote.run(step)?;
        let expected = local.run(step);
        if got != expected {
            let report = format!(
                "sqldiff seed {seed}: step {index} differs\n  step:     {step:?}\n  sqlite:   \
                 {expected:?}\n  atoll:    {got:?}\n\nscript:\n{}",
                describe(&steps[..=index])
            );
            if let Some(dir) = out {
                let _ = std::fs::create_dir_all(dir);
                let path = dir.join(format!("sqldiff-seed-{seed}.txt"));
                let _ = std::fs::write(&path, &report);
                return Err(format!("{report}\n(reproducer: {})", path.display()));
            }
            return Err(report);
        }
    }
    Ok(steps.len())
}

fn seeds(options: &Options) -> Result<std::ops::Range<u64>, String> {
    let text = options.value("--seeds").unwrap_or("1..21");
    let (a, b) = text
        .split_once("..")
        .ok_or_else(|| format!("--seeds {text}: expected A..B"))?;
    let parse = |s: &str| {
        s.parse::<u64>()
            .map_err(|_| format!("--seeds {text}: bad number"))
    };
    Ok(parse(a)?..parse(b)?)
}

/// The suite: `--seeds A..B` (default 1..21, `--quick` 1..3), `--address`, `--out DIR`
/// (default `sqldiff-failures`). Prints one line per mismatch and a summary.
pub fn run(options: &Options) -> Result<(), String> {
    let seeds = if options.quick && options.value("--seeds").is_none() {
        1..3
    } else {
        seeds(options)?
    };
    let out = PathBuf::from(options.value("--out").unwrap_or("sqldiff-failures"));
    let node;
    let address = match options.value("--address") {
        Some(address) => address.to_owned(),
        None => {
            node = SingleNode::start()?;
            node.address()
        }
    };
    let mut failed = 0;
    let mut steps = 0;
    let count = seeds.end.saturating_sub(seeds.start);
    for seed in seeds {
        match check_seed(&address, seed, Some(&out)) {
            Ok(n) => steps += n,
            Err(report) => {
                failed += 1;
                eprintln!("{report}\n");
            }
        }
    }
    println!("sqldiff: {count} seeds, {steps} steps matched, {failed} seeds with a mismatch");
    if failed > 0 {
        return Err(format!(
            "{failed} seeds differ (reproducers in {})",
            out.display()
        ));
    }
    Ok(())
}
