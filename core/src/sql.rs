//! The engine's SQL classifier: what SQLite itself says about SQL text and prepared statements,
//! never the text's first words.
//!
//! The engine routes a request by three answers about its first statement, all from SQLite:
//!
//! - read-only: `sqlite3_stmt_readonly()`. `BEGIN [DEFERRED]`, `COMMIT` and `ROLLBACK` count as
//!   read-only; `BEGIN IMMEDIATE` and `BEGIN EXCLUSIVE` do not (they take the write lock).
//! - takes the write lock without writing (`BEGIN IMMEDIATE`, `BEGIN EXCLUSIVE`): a
//!   transaction-control program whose `OP_Transaction` has p2 (write) set.
//! - transaction control (`BEGIN`, `COMMIT`/`END`, `ROLLBACK`, `SAVEPOINT`, `RELEASE`): its
//!   bytecode holds `OP_AutoCommit` or `OP_Savepoint`. Such work may leave a transaction open, so
//!   it runs alone rather than grouped with other writers.
//!
//! The bytecode is read with `sqlite3_stmt_explain()`, only for statements without result
//! columns, and only up to its first opcode that transaction control never uses: queries never
//! pay for it, an `INSERT` pays two steps. Comments,
//! case, semicolons and string literals cannot fool any of these answers.
//!
//! Statements after the first in SQL text cannot be asked before the ones before them ran (a
//! `CREATE TABLE` earlier in the text makes a later `INSERT` preparable), so text holding more
//! than one statement is treated as possibly transaction control: it runs alone.
//!
//! Clients, which have no SQLite, read SQL text lexically with `atoll_net::sql`; a test in the
//! node crate checks its statement splitter against [`is_complete`].

use crate::stmt::{self, RawStmt, Step};
use crate::value::Value;

/// What SQLite says about one prepared statement.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub(crate) struct Class {
    /// `sqlite3_stmt_readonly()`: the statement writes nothing itself.
    pub(crate) readonly: bool,
    /// The statement takes the database's write lock without writing: `BEGIN IMMEDIATE` or
    /// `BEGIN EXCLUSIVE`.
    pub(crate) takes_write_lock: bool,
    /// The statement opens or ends a transaction or savepoint.
    pub(crate) transaction_control: bool,
}

/// Classifies a prepared statement that is not running (fresh or reset).
pub(crate) fn classify(statement: &mut RawStmt) -> Result<Class, rusqlite::Error> {
    let mut class = Class {
        readonly: statement.readonly(),
        ..Class::default()
    };
    if statement.column_count() > 0 {
        // Transaction control yields no columns: queries never pay for the bytecode.
        return Ok(class);
    }
    statement.set_explain(true)?;
    let scanned = scan_bytecode(statement, &mut class);
    statement.reset();
    let restored = statement.set_explain(false);
    scanned?;
    restored?;
    Ok(class)
}

/// Reads the bytecode of a statement in EXPLAIN mode into `class`. A transaction-control
/// program holds only the opcodes below (`BEGIN EXCLUSIVE`: Init, Transaction per database,
/// AutoCommit, Halt, Goto); the first other opcode ends the scan, so a write costs two steps.
fn scan_bytecode(statement: &mut RawStmt, class: &mut Class) -> Result<(), rusqlite::Error> {
    // Bounded: a program of only these opcodes has one Transaction per attached database (at
    // most 125, SQLite's limit) and a few more.
    while statement.step()? == Step::Row {
        let Value::Text(opcode) = statement.column_value(1) else {
            return Ok(());
        };
        let p2 = match statement.column_value(3) {
            Value::Integer(p2) => p2,
            _ => 0,
        };
        match opcode.as_str() {
            "Init" | "Halt" | "Goto" => {}
            "Transaction" => class.takes_write_lock |= p2 != 0,
            "AutoCommit" | "Savepoint" => class.transaction_control = true,
            _ => {
                class.takes_write_lock = false;
                return Ok(());
            }
        }
    }
    if !class.transaction_control {
        class.takes_write_lock = false;
    }
    Ok(())
}

/// Whether `text` ends with a complete SQL statement, as `sqlite3_complete()` answers: its last
/// token is a `;` outside strings, comments and trigger bodies. Text holding a NUL byte is never
/// complete.
pub fn is_complete(text: &str) -> bool {
    stmt::complete(text)
}
