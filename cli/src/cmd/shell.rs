//! `atoll shell`: a SQL shell on one database of the cluster, one-shot or interactive.
//!
//! Each statement goes as QUERY_SQL when it returns rows (SELECT, VALUES, PRAGMA, EXPLAIN, WITH,
//! anything with RETURNING) and as EXEC_SQL otherwise, as the Python client decides. dqlite 1.11
//! answers a query without result columns (`PRAGMA foreign_keys = ON`) with FAILURE 1 "not an
//! error" before running it, so that exact answer is followed by the same statement as EXEC_SQL;
//! atoll and newer dqlite answer an empty ROWS.
//!
//! A write with RETURNING outside a transaction runs in a BEGIN … COMMIT of its own: dqlite
//! 1.11 loses such a write and aborts otherwise.
//!
//! The connection persists for the session, so a transaction (BEGIN … COMMIT) spans
//! statements. The client finds the leader again when it changes between statements; a
//! statement whose outcome is unknown (the connection broke while it ran) is never resent,
//! unless it is a read-only query outside a transaction.

use std::io::{self, BufRead, BufWriter, IsTerminal, Write};
use std::path::PathBuf;

use atoll_net::client::{Client, ClientError};
use atoll_net::protocol::Value;
use rustyline::error::ReadlineError;

use super::{cluster, connect, explain, no_leader_message, CliError, ClusterArgs};
use crate::output::{self, Format, JsonRows};
use atoll_net::sql;

/// Run SQL on a database of the cluster: one-shot, or an interactive shell.
///
/// With SQL, runs it and prints the results; several statements separated by `;` run one after
/// another and the first failure stops them (exit status 1). SQL starting with `.` is a
/// dot-command (`.tables`). Without SQL, reads statements from the terminal with line editing
/// and history ($ATOLL_HISTORY, else $HOME/.atoll_history; a statement continues over lines
/// until `;`), or from standard input when it is not a terminal (errors are reported with
/// their line and the exit status is 1 if any statement failed).
///
/// Dot-commands: .help, .tables, .schema (all, or one TABLE), .cluster, .leader, .mode MODE,
/// .quit (or .exit, or Ctrl-D).
///
/// Output formats: table (aligned columns, NULL as NULL, blobs as x'00ff', then "N rows" or
/// "OK (N rows changed)"); json (each query's rows as an array of objects; integers and floats
/// as numbers, text as strings, blobs as lowercase hex strings, NULL as null; statements
/// without rows print nothing); csv (a header line, then the rows; NULL is an empty field,
/// blobs are hex).
///
/// Examples:
///   atoll shell --cluster 127.0.0.1:9001 app
///   atoll shell --cluster 127.0.0.1:9001 app "CREATE TABLE t (k TEXT, v BLOB); SELECT * FROM t"
///   atoll shell --cluster 127.0.0.1:9001,127.0.0.1:9002 app --format json "SELECT * FROM t"
///   atoll shell --cluster 127.0.0.1:9001 app < script.sql
#[derive(clap::Args, Debug)]
#[command(verbatim_doc_comment)]
pub struct Args {
    #[command(flatten)]
    pub cluster: ClusterArgs,

    /// Name of the database (created on first use).
    #[arg(value_name = "DB")]
    pub database: String,

    /// SQL to run, or a dot-command; without it the shell reads statements interactively.
    #[arg(value_name = "SQL")]
    pub sql: Option<String>,

    /// Output format.
    #[arg(short = 'f', long, value_name = "FORMAT", default_value = "table")]
    pub format: Format,

    /// Read plain lines from standard input even on a terminal (no line editing, no history).
    #[arg(long)]
    pub no_readline: bool,

    /// When reading statements from standard input, stop at the first one that fails.
    #[arg(long)]
    pub bail: bool,
}

const HELP: &str = "\
Enter SQL statements terminated by `;` (they may span lines), or a dot-command:
  .help                  this text
  .tables                list the tables and views
  .schema [TABLE]        the CREATE statements (of one table, its indexes and triggers)
  .cluster               the nodes of the cluster (id, address, role, leader, reachable)
  .leader                the node this shell talks to
  .mode [table|json|csv] show or set the output format
  .quit, .exit           leave (Ctrl-D too); an open transaction is rolled back
";

/// Why a statement or dot-command did not complete.
enum StepError {
    /// Said to the user; the session goes on.
    Failed(String),
    /// Writing our own output failed (a closed pipe): stop.
    Output(io::Error),
}

impl From<io::Error> for StepError {
    fn from(e: io::Error) -> Self {
        StepError::Output(e)
    }
}

/// What a dot-command asks the session loop to do.
#[derive(Debug, PartialEq, Eq)]
enum Next {
    Continue,
    Quit,
}

/// A failing query, from the request or from writing its rows.
enum QueryError {
    Client(ClientError),
    /// The connection failed after some rows were printed.
    Midway(ClientError),
    Output(io::Error),
}

/// One shell session: a connection to the leader with the database open.
struct Session {
    client: Client,
    cluster: ClusterArgs,
    format: Format,
    /// A transaction is open on the connection (BEGIN or SAVEPOINT ran, no COMMIT/ROLLBACK
    /// yet), judged from the statements that succeeded.
    in_transaction: bool,
}

impl Session {
    fn open(args: &Args) -> Result<Session, CliError> {
        let mut client = connect(&args.cluster)?;
        client.open(&args.database).map_err(|e| {
            CliError::new(format!(
                "opening database {:?}: {}",
                args.database,
                explain(&e)
            ))
        })?;
        Ok(Session {
            client,
            cluster: args.cluster.clone(),
            format: args.format,
            in_transaction: false,
        })
    }

    /// Runs one statement and prints its result.
    fn statement(&mut self, statement: &str) -> Result<(), StepError> {
        if sql::has_returning(statement) && !self.in_transaction {
            return self.statement_bracketed(statement);
        }
        self.statement_alone(statement)
    }

    /// Runs a write with RETURNING in a transaction of its own. dqlite 1.11 loses such a write
    /// sent as QUERY_SQL outside a transaction and then aborts on the next request (observed);
    /// inside BEGIN … COMMIT it commits it. Correct servers do the same work either way.
    fn statement_bracketed(&mut self, statement: &str) -> Result<(), StepError> {
        if let Err(e) = self.client.exec_sql("BEGIN", &[]) {
            return Err(StepError::Failed(format!(
                "starting a transaction for the RETURNING statement: {}",
                explain(&e)
            )));
        }
        if let Err(failed) = self.statement_alone(statement) {
            // Nothing to keep; a broken connection has rolled back already.
            if let Err(e) = self.client.exec_sql("ROLLBACK", &[]) {
                log::debug!("rollback after a failed RETURNING statement: {e}");
            }
            return Err(failed);
        }
        self.client.exec_sql("COMMIT", &[]).map_err(|e| {
            StepError::Failed(format!(
                "committing the RETURNING statement (its rows are shown above): {}",
                explain(&e)
            ))
        })?;
        Ok(())
    }

    fn statement_alone(&mut self, statement: &str) -> Result<(), StepError> {
        let mut out = BufWriter::new(io::stdout().lock());
        let result = if sql::returns_rows(statement) {
            self.query(&mut out, statement)
        } else {
            self.exec(&mut out, statement).map_err(QueryError::Client)
        };
        out.flush()?;
        match result {
            Ok(()) => {
                if let Some(open) = sql::transaction_effect(statement) {
                    self.in_transaction = open;
                }
                Ok(())
            }
            Err(QueryError::Output(e)) => Err(StepError::Output(e)),
            Err(QueryError::Midway(e)) => {
                let message = format!(
                    "{}; the result above is incomplete",
                    self.failure(statement, &e)
                );
                Err(StepError::Failed(message))
            }
            Err(QueryError::Client(e)) => Err(StepError::Failed(self.failure(statement, &e))),
        }
    }

    fn exec(&mut self, out: &mut impl Write, statement: &str) -> Result<(), ClientError> {
        let result = self.client.exec_sql(statement, &[])?;
        if self.format == Format::Table {
            let written = if sql::counts_changes(statement) {
                writeln!(
                    out,
                    "OK ({} changed)",
                    output::plural(result.rows_affected, "row")
                )
            } else {
                writeln!(out, "OK")
            };
            // A closed output is noticed by the flush that follows.
            written.ok();
        }
        Ok(())
    }

    fn query(&mut self, out: &mut impl Write, statement: &str) -> Result<(), QueryError> {
        match self.query_once(out, statement) {
            // dqlite 1.11 refuses a query without result columns before running it.
            Err(QueryError::Client(ClientError::Failure { code: 1, message }))
                if message == "not an error" =>
            {
                log::debug!("zero-column query refused by a dqlite 1.11 node: sent as EXEC_SQL");
                self.exec(out, statement).map_err(QueryError::Client)
            }
            // Reading again is safe: it changes nothing.
            Err(QueryError::Client(ClientError::OutcomeUnknown(e)))
                if sql::is_read_only(statement) && !self.in_transaction =>
            {
                log::info!("connection lost during a read ({e}); reading again");
                self.query_once(out, statement)
            }
            other => other,
        }
    }

    fn query_once(&mut self, out: &mut impl Write, statement: &str) -> Result<(), QueryError> {
        let format = self.format;
        let rows = self
            .client
            .query_sql_rows(statement, &[])
            .map_err(QueryError::Client)?;
        let columns = rows.columns().to_vec();
        if columns.is_empty() {
            // atoll and newer dqlite answer a query without result columns with an empty ROWS.
            for row in rows {
                row.map_err(QueryError::Client)?;
            }
            if format == Format::Table {
                writeln!(out, "OK").map_err(QueryError::Output)?;
            }
            return Ok(());
        }
        match format {
            Format::Table => {
                let mut all = Vec::new();
                for row in rows {
                    all.push(row.map_err(QueryError::Client)?);
                }
                output::write_table(out, &columns, &all).map_err(QueryError::Output)?;
                writeln!(out, "{}", output::plural(all.len() as u64, "row"))
                    .map_err(QueryError::Output)?;
            }
            Format::Json => {
                let mut json = JsonRows::begin(out).map_err(QueryError::Output)?;
                let mut printed = false;
                for row in rows {
                    let row = row.map_err(|e| midway(e, printed))?;
                    json.row(out, &columns, &row).map_err(QueryError::Output)?;
                    printed = true;
                }
                json.end(out).map_err(QueryError::Output)?;
            }
            Format::Csv => {
                output::write_csv_header(out, &columns).map_err(QueryError::Output)?;
                let mut printed = false;
                for row in rows {
                    let row = row.map_err(|e| midway(e, printed))?;
                    output::write_csv_row(out, &row).map_err(QueryError::Output)?;
                    printed = true;
                }
            }
        }
        Ok(())
    }

    /// A failed statement in words, with what it means for an open transaction.
    fn failure(&mut self, statement: &str, e: &ClientError) -> String {
        let ends_transaction = sql::transaction_effect(statement) == Some(false);
        let connection_lost = match e {
            ClientError::OutcomeUnknown(_) | ClientError::Io(_) | ClientError::NoLeader { .. } => {
                true
            }
            e => e.is_not_leader() || e.is_leadership_lost(),
        };
        let mut message = match e {
            ClientError::Failure { .. } if e.is_not_leader() => format!(
                "the leader changed ({}); the statement did not run",
                explain(e)
            ),
            ClientError::OutcomeUnknown(inner) => format!(
                "the connection to the leader was lost while the statement ran ({}): it may or \
                 may not have taken effect, and it was not retried; check before running it \
                 again",
                explain(inner)
            ),
            ClientError::NoLeader { attempts } => no_leader_message(&self.cluster, attempts),
            e => explain(e),
        };
        if connection_lost && self.in_transaction {
            self.in_transaction = false;
            if !ends_transaction {
                message.push_str(
                    "; the open transaction was lost with the connection (the server rolls it \
                     back): start it again",
                );
            }
        }
        message
    }

    /// Runs a dot-command.
    fn dot(&mut self, line: &str) -> Result<Next, StepError> {
        let mut words = line.split_whitespace();
        let command = words.next().unwrap_or_default();
        let argument = words.next();
        if let Some(extra) = words.next() {
            return Err(StepError::Failed(format!(
                "{command}: unexpected argument {extra:?}; .help lists the commands"
            )));
        }
        let mut out = BufWriter::new(io::stdout().lock());
        let failed = |e: ClientError| StepError::Failed(explain(&e));
        match (command, argument) {
            (".quit" | ".exit", None) => return Ok(Next::Quit),
            (".help", None) => out.write_all(HELP.as_bytes())?,
            (".tables", None) => {
                let result = self
                    .client
                    .query_sql(
                        "SELECT name FROM sqlite_master WHERE type IN ('table', 'view') \
                         AND name NOT LIKE 'sqlite_%' ORDER BY name",
                        &[],
                    )
                    .map_err(failed)?;
                for row in &result.rows {
                    if let Some(Value::Text(name)) = row.first() {
                        writeln!(out, "{name}")?;
                    }
                }
            }
            (".schema", table) => {
                let mut query = String::from(
                    "SELECT sql FROM sqlite_master WHERE sql IS NOT NULL \
                     AND name NOT LIKE 'sqlite_%'",
                );
                let mut params = Vec::new();
                if let Some(table) = table {
                    query.push_str(" AND lower(tbl_name) = lower(?)");
                    params.push(Value::Text(table.to_owned()));
                }
                query.push_str(" ORDER BY rowid");
                let result = self.client.query_sql(&query, &params).map_err(failed)?;
                if result.rows.is_empty() {
                    if let Some(table) = table {
                        return Err(StepError::Failed(format!("no table named {table:?}")));
                    }
                }
                for row in &result.rows {
                    if let Some(Value::Text(sql)) = row.first() {
                        writeln!(out, "{sql};")?;
                    }
                }
            }
            (".cluster", None) => {
                let nodes = cluster::collect(&mut self.client).map_err(failed)?;
                cluster::write(&mut out, &nodes, self.format)?;
            }
            (".leader", None) => match self.client.leader().map_err(failed)? {
                Some((id, address)) => writeln!(out, "node {id} at {address}")?,
                None => writeln!(out, "no leader known")?,
            },
            (".mode", None) => writeln!(out, "{}", self.format.name())?,
            (".mode", Some(name)) => match Format::from_name(name) {
                Some(format) => self.format = format,
                None => {
                    return Err(StepError::Failed(format!(
                        "unknown mode {name:?}: use table, json or csv"
                    )))
                }
            },
            (".quit" | ".exit" | ".help" | ".tables" | ".cluster" | ".leader", Some(extra)) => {
                return Err(StepError::Failed(format!(
                    "{command} takes no argument (got {extra:?})"
                )))
            }
            _ => {
                return Err(StepError::Failed(format!(
                    "unknown command {command}; .help lists the commands"
                )))
            }
        }
        out.flush()?;
        Ok(Next::Continue)
    }
}

/// A failure while rows stream: after some were printed the result is incomplete.
fn midway(e: ClientError, printed: bool) -> QueryError {
    if printed {
        QueryError::Midway(e)
    } else {
        QueryError::Client(e)
    }
}

/// Where interactive lines come from.
enum Lines {
    /// A terminal, with line editing and history.
    Editor {
        editor: Box<rustyline::DefaultEditor>,
        history: Option<PathBuf>,
    },
    /// Plain lines (a pipe, a file, or `--no-readline`), prompting only on a terminal.
    Plain {
        stdin: io::StdinLock<'static>,
        prompt: bool,
    },
}

/// One read from [`Lines`].
enum Line {
    Text(String),
    /// Ctrl-C: drop the statement being typed.
    Interrupted,
    End,
}

fn history_path() -> Option<PathBuf> {
    match std::env::var_os("ATOLL_HISTORY") {
        Some(path) if path.is_empty() => None,
        Some(path) => Some(PathBuf::from(path)),
        None => std::env::var_os("HOME").map(|home| PathBuf::from(home).join(".atoll_history")),
    }
}

impl Lines {
    fn new(no_readline: bool) -> Lines {
        let terminal = io::stdin().is_terminal();
        if terminal && !no_readline {
            match rustyline::DefaultEditor::new() {
                Ok(mut editor) => {
                    let history = history_path();
                    if let Some(path) = &history {
                        if path.exists() {
                            if let Err(e) = editor.load_history(path) {
                                log::warn!("cannot read history {}: {e}", path.display());
                            }
                        }
                    }
                    return Lines::Editor {
                        editor: Box::new(editor),
                        history,
                    };
                }
                Err(e) => log::warn!("no line editing ({e}); reading plain lines"),
            }
        }
        Lines::Plain {
            stdin: io::stdin().lock(),
            prompt: terminal,
        }
    }

    fn interactive(&self) -> bool {
        matches!(
            self,
            Lines::Editor { .. } | Lines::Plain { prompt: true, .. }
        )
    }

    fn read(&mut self, prompt: &str) -> io::Result<Line> {
        match self {
            Lines::Editor { editor, .. } => match editor.readline(prompt) {
                Ok(line) => Ok(Line::Text(line)),
                Err(ReadlineError::Interrupted) => Ok(Line::Interrupted),
                Err(ReadlineError::Eof) => Ok(Line::End),
                Err(ReadlineError::Io(e)) => Err(e),
                Err(e) => Err(io::Error::other(e.to_string())),
            },
            Lines::Plain {
                stdin,
                prompt: show,
            } => {
                if *show {
                    let mut stdout = io::stdout();
                    stdout.write_all(prompt.as_bytes())?;
                    stdout.flush()?;
                }
                let mut line = String::new();
                if stdin.read_line(&mut line)? == 0 {
                    return Ok(Line::End);
                }
                let trimmed = line.trim_end_matches(['\n', '\r']).len();
                line.truncate(trimmed);
                Ok(Line::Text(line))
            }
        }
    }

    fn remember(&mut self, entry: &str) {
        if let Lines::Editor { editor, .. } = self {
            if let Err(e) = editor.add_history_entry(entry) {
                log::debug!("history: {e}");
            }
        }
    }

    fn save(&mut self) {
        if let Lines::Editor {
            editor,
            history: Some(path),
        } = self
        {
            if let Err(e) = editor.save_history(path) {
                log::warn!("cannot write history {}: {e}", path.display());
            }
        }
    }
}

/// Reads and runs statements until the end of input or `.quit`.
fn interactive(session: &mut Session, args: &Args) -> Result<(), CliError> {
    let mut lines = Lines::new(args.no_readline);
    let interactive = lines.interactive();
    if interactive {
        println!(
            "atoll shell: database {:?} on the leader at {}. End statements with `;`; .help \
             for help.",
            args.database,
            session.client.leader_address().unwrap_or("?")
        );
    }
    let mut buffer = String::new();
    let mut line_number = 0u64;
    let mut statement_line = 1u64;
    let mut failures = 0u64;
    // Reports a failed step; says whether to stop.
    let mut report = |message: &str, line: u64| -> bool {
        failures += 1;
        if interactive {
            eprintln!("error: {message}");
        } else {
            eprintln!("error (line {line}): {message}");
        }
        args.bail && !interactive
    };
    // Bounded by the input: each turn consumes a line.
    let mut stop = false;
    while !stop {
        let prompt = if buffer.is_empty() {
            "atoll> "
        } else {
            "  ...> "
        };
        let line = match lines.read(prompt) {
            Ok(Line::Text(line)) => line,
            Ok(Line::Interrupted) => {
                buffer.clear();
                continue;
            }
            Ok(Line::End) => break,
            Err(e) => return Err(CliError::new(format!("reading input: {e}"))),
        };
        line_number += 1;
        if buffer.is_empty() {
            statement_line = line_number;
            let command = line.trim();
            if command.starts_with('.') {
                lines.remember(command);
                match session.dot(command) {
                    Ok(Next::Continue) => {}
                    Ok(Next::Quit) => break,
                    Err(StepError::Failed(message)) => stop = report(&message, line_number),
                    Err(StepError::Output(e)) => return Err(e.into()),
                }
                continue;
            }
        }
        buffer.push_str(&line);
        buffer.push('\n');
        let split = sql::split(&buffer);
        if split.statements.is_empty() {
            if split.rest.is_empty() {
                buffer.clear();
            }
            continue;
        }
        lines.remember(buffer.trim());
        for statement in &split.statements {
            match session.statement(statement) {
                Ok(()) => {}
                Err(StepError::Failed(message)) => {
                    stop = report(&message, statement_line);
                    if stop {
                        break;
                    }
                }
                Err(StepError::Output(e)) => return Err(e.into()),
            }
        }
        buffer = if split.rest.is_empty() {
            String::new()
        } else {
            format!("{}\n", split.rest)
        };
        statement_line = line_number;
    }
    // A statement left without its `;` at the end of the input still runs.
    let rest = sql::split(&buffer).rest.to_owned();
    if !stop && !rest.is_empty() {
        match session.statement(&rest) {
            Ok(()) => {}
            Err(StepError::Failed(message)) => {
                report(&message, statement_line);
            }
            Err(StepError::Output(e)) => return Err(e.into()),
        }
    }
    lines.save();
    if session.in_transaction {
        eprintln!("note: the open transaction is rolled back as the connection closes");
    }
    if failures > 0 && !interactive {
        return Err(CliError::Reported);
    }
    Ok(())
}

/// Runs `atoll shell`.
pub fn run(args: Args) -> Result<(), CliError> {
    let mut session = Session::open(&args)?;
    let Some(text) = &args.sql else {
        return interactive(&mut session, &args);
    };
    let text = text.trim();
    if text.starts_with('.') {
        return match session.dot(text) {
            Ok(_) => Ok(()),
            Err(StepError::Failed(message)) => Err(CliError::new(message)),
            Err(StepError::Output(e)) => Err(e.into()),
        };
    }
    let split = sql::split(text);
    let rest = (!split.rest.is_empty()).then_some(split.rest);
    let statements: Vec<&str> = split.statements.iter().copied().chain(rest).collect();
    if statements.is_empty() {
        return Err(CliError::new("no SQL statement to run"));
    }
    let several = statements.len() > 1;
    for (index, statement) in statements.iter().enumerate() {
        match session.statement(statement) {
            Ok(()) => {}
            Err(StepError::Failed(message)) if several => {
                return Err(CliError::new(format!(
                    "statement {} of {} failed, the ones after it did not run: {message}",
                    index + 1,
                    statements.len()
                )))
            }
            Err(StepError::Failed(message)) => return Err(CliError::new(message)),
            Err(StepError::Output(e)) => return Err(e.into()),
        }
    }
    Ok(())
}
