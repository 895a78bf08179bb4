//! Raw prepared statements: SQLite's statement API (prepare, bind, step, result columns,
//! EXPLAIN mode) used directly, so that a connection (`crate::vfs::Conn`) can keep its
//! statements without rusqlite's borrow of it; and `sqlite3_complete`. Besides `vfs/`, the one
//! module of atoll-core with `unsafe`: each block with its SAFETY comment.

use std::ffi::{c_char, c_int, CStr, CString};
use std::ptr::{self, NonNull};

use rusqlite::ffi;

use crate::value::Value;

/// Whether `text` ends a complete SQL statement, as `sqlite3_complete()` answers: the last
/// token is a `;` outside strings, comments and trigger bodies. Text holding a NUL byte is
/// never complete (SQLite would read only up to it).
pub(crate) fn complete(text: &str) -> bool {
    let Ok(text) = CString::new(text) else {
        return false;
    };
    // SAFETY: `text` is a NUL-terminated string that lives across the call; sqlite3_complete
    // only reads it.
    unsafe { ffi::sqlite3_complete(text.as_ptr()) != 0 }
}

/// What a step produced.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Step {
    /// A row is available.
    Row,
    /// The statement ran to completion.
    Done,
}

/// A prepared statement. Only `crate::vfs::Conn` creates and owns them (so none outlives its
/// connection); dropping one finalizes it.
pub(crate) struct RawStmt {
    statement: NonNull<ffi::sqlite3_stmt>,
    db: *mut ffi::sqlite3,
}

// SAFETY: a statement is used only through its owning Conn, from one thread at a time.
unsafe impl Send for RawStmt {}

fn error_of(db: *mut ffi::sqlite3, code: c_int) -> rusqlite::Error {
    // SAFETY: `db` is a live connection handle; errmsg returns a NUL-terminated string owned by
    // SQLite that we copy at once.
    let (extended, message) = unsafe {
        let extended = ffi::sqlite3_extended_errcode(db);
        let message = CStr::from_ptr(ffi::sqlite3_errmsg(db))
            .to_string_lossy()
            .into_owned();
        (extended, message)
    };
    let extended = if extended & 0xff == code & 0xff {
        extended
    } else {
        code
    };
    rusqlite::Error::SqliteFailure(ffi::Error::new(extended), Some(message))
}

/// Binds text bytes (copied by SQLite), valid UTF-8 or not: SQLite keeps them as given.
///
/// # Safety
/// `statement` is a live statement handle.
unsafe fn bind_text(statement: *mut ffi::sqlite3_stmt, position: c_int, text: &[u8]) -> c_int {
    // SAFETY: the caller passes a live statement; the pointer is valid for `text.len()` bytes
    // and SQLITE_TRANSIENT makes SQLite copy them before returning.
    unsafe {
        ffi::sqlite3_bind_text64(
            statement,
            position,
            text.as_ptr().cast(),
            text.len() as u64,
            ffi::SQLITE_TRANSIENT(),
            ffi::SQLITE_UTF8 as u8,
        )
    }
}

impl RawStmt {
    /// Prepares the first statement of `sql` on `connection`.
    pub(crate) fn prepare(
        connection: &rusqlite::Connection,
        sql: &str,
        persistent: bool,
    ) -> Result<(Option<RawStmt>, usize), rusqlite::Error> {
        let Ok(length) = c_int::try_from(sql.len()) else {
            return Err(rusqlite::Error::SqliteFailure(
                ffi::Error::new(ffi::SQLITE_TOOBIG),
                Some("statement too long".to_string()),
            ));
        };
        let flags = if persistent {
            ffi::SQLITE_PREPARE_PERSISTENT
        } else {
            0
        };
        // SAFETY: the handle is valid while `connection` lives.
        let db = unsafe { connection.handle() };
        let mut statement = ptr::null_mut();
        let mut tail: *const c_char = ptr::null();
        // SAFETY: `sql` is valid for `length` bytes; out-pointers are valid locals.
        let rc = unsafe {
            ffi::sqlite3_prepare_v3(
                db,
                sql.as_ptr().cast(),
                length,
                flags,
                &mut statement,
                &mut tail,
            )
        };
        if rc != ffi::SQLITE_OK {
            return Err(error_of(db, rc));
        }
        let used = if tail.is_null() {
            sql.len()
        } else {
            // SAFETY: SQLite sets `tail` to a position within `sql`.
            (unsafe { tail.offset_from(sql.as_ptr().cast()) }) as usize
        };
        let statement = NonNull::new(statement).map(|statement| RawStmt { statement, db });
        Ok((statement, used.min(sql.len())))
    }

    fn raw(&self) -> *mut ffi::sqlite3_stmt {
        self.statement.as_ptr()
    }

    /// Number of parameters.
    pub(crate) fn parameter_count(&self) -> usize {
        // SAFETY: the statement is live.
        unsafe { ffi::sqlite3_bind_parameter_count(self.raw()) as usize }
    }

    /// Whether the statement leaves the database unchanged (transaction control counts as
    /// read-only, as SQLite defines it).
    pub(crate) fn readonly(&self) -> bool {
        // SAFETY: the statement is live.
        unsafe { ffi::sqlite3_stmt_readonly(self.raw()) != 0 }
    }

    /// Switches the statement to EXPLAIN mode (its steps yield its bytecode, one row per
    /// instruction: addr, opcode, p1, p2, p3, p4, p5, comment) or back. The statement must be
    /// reset (not mid-run); SQLite may prepare it again.
    pub(crate) fn set_explain(&mut self, explain: bool) -> Result<(), rusqlite::Error> {
        // SAFETY: the statement is live; SQLite checks that it is not running.
        let rc = unsafe { ffi::sqlite3_stmt_explain(self.raw(), c_int::from(explain)) };
        if rc != ffi::SQLITE_OK {
            return Err(error_of(self.db, rc));
        }
        Ok(())
    }

    /// The statement's SQL text.
    pub(crate) fn sql(&self) -> String {
        // SAFETY: the statement is live; sqlite3_sql returns its NUL-terminated text.
        unsafe {
            let text = ffi::sqlite3_sql(self.raw());
            if text.is_null() {
                return String::new();
            }
            CStr::from_ptr(text).to_string_lossy().into_owned()
        }
    }

    /// Binds `values` to parameters 1.. and NULL to the rest. More values than parameters fail
    /// as SQLite's own bind fails (SQLITE_RANGE, "column index out of range"), as dqlite
    /// answers.
    pub(crate) fn bind_all(&mut self, values: &[Value]) -> Result<(), rusqlite::Error> {
        // Placeholders without a value are NULL (as dqlite binds them, and as a fresh SQLite
        // statement reads them), also after an execution that bound them.
        let nulls = self.parameter_count().saturating_sub(values.len());
        let nulls = std::iter::repeat_n(&Value::Null, nulls);
        for (index, value) in values.iter().chain(nulls).enumerate() {
            let Ok(position) = c_int::try_from(index + 1) else {
                return Err(error_of(self.db, ffi::SQLITE_RANGE));
            };
            // SAFETY: the statement is live; text and blob pointers are valid for their lengths
            // and SQLITE_TRANSIENT makes SQLite copy them before returning.
            let rc = unsafe {
                match value {
                    Value::Null => ffi::sqlite3_bind_null(self.raw(), position),
                    Value::Integer(v) => ffi::sqlite3_bind_int64(self.raw(), position, *v),
                    Value::Float(v) => ffi::sqlite3_bind_double(self.raw(), position, *v),
                    Value::Text(text) => bind_text(self.raw(), position, text.as_bytes()),
                    Value::RawText(text) => bind_text(self.raw(), position, text),
                    Value::Blob(blob) => ffi::sqlite3_bind_blob64(
                        self.raw(),
                        position,
                        blob.as_ptr().cast(),
                        blob.len() as u64,
                        ffi::SQLITE_TRANSIENT(),
                    ),
                }
            };
            if rc != ffi::SQLITE_OK {
                return Err(error_of(self.db, rc));
            }
        }
        Ok(())
    }

    /// Steps once.
    pub(crate) fn step(&mut self) -> Result<Step, rusqlite::Error> {
        // SAFETY: the statement is live.
        let rc = unsafe { ffi::sqlite3_step(self.raw()) };
        match rc {
            ffi::SQLITE_ROW => Ok(Step::Row),
            ffi::SQLITE_DONE => Ok(Step::Done),
            _ => Err(error_of(self.db, rc)),
        }
    }

    /// Resets the statement and clears its bindings, ready for the next execution.
    pub(crate) fn reset(&mut self) {
        // SAFETY: the statement is live. The result repeats the last step's error, which the
        // caller already got from `step`.
        unsafe {
            ffi::sqlite3_reset(self.raw());
            ffi::sqlite3_clear_bindings(self.raw());
        }
    }

    /// Number of result columns.
    pub(crate) fn column_count(&self) -> usize {
        // SAFETY: the statement is live.
        unsafe { ffi::sqlite3_column_count(self.raw()) as usize }
    }

    /// Name of result column `index`.
    pub(crate) fn column_name(&self, index: usize) -> String {
        assert!(index < self.column_count());
        // SAFETY: the statement is live and `index` in range; the name is copied at once.
        unsafe {
            let name = ffi::sqlite3_column_name(self.raw(), index as c_int);
            if name.is_null() {
                return String::new();
            }
            CStr::from_ptr(name).to_string_lossy().into_owned()
        }
    }

    /// Declared type of result column `index`, if it is a table column.
    pub(crate) fn column_decltype(&self, index: usize) -> Option<String> {
        assert!(index < self.column_count());
        // SAFETY: the statement is live and `index` in range; the text is copied at once.
        unsafe {
            let declared = ffi::sqlite3_column_decltype(self.raw(), index as c_int);
            if declared.is_null() {
                return None;
            }
            Some(CStr::from_ptr(declared).to_string_lossy().into_owned())
        }
    }

    /// Value of column `index` of the current row.
    pub(crate) fn column_value(&self, index: usize) -> Value {
        assert!(index < self.column_count());
        let column = index as c_int;
        // SAFETY: the statement is live, positioned on a row, and `index` in range; text and
        // blob pointers are valid for the reported byte counts until the next step, and are
        // copied at once (bytes are read after the pointer, as SQLite requires).
        unsafe {
            match ffi::sqlite3_column_type(self.raw(), column) {
                ffi::SQLITE_INTEGER => {
                    Value::Integer(ffi::sqlite3_column_int64(self.raw(), column))
                }
                ffi::SQLITE_FLOAT => Value::Float(ffi::sqlite3_column_double(self.raw(), column)),
                ffi::SQLITE_TEXT => {
                    let text = ffi::sqlite3_column_text(self.raw(), column);
                    let length = ffi::sqlite3_column_bytes(self.raw(), column) as usize;
                    if text.is_null() {
                        return Value::Text(String::new());
                    }
                    let bytes = std::slice::from_raw_parts(text, length);
                    match String::from_utf8(bytes.to_vec()) {
                        Ok(text) => Value::Text(text),
                        Err(error) => Value::RawText(error.into_bytes()),
                    }
                }
                ffi::SQLITE_BLOB => {
                    let blob = ffi::sqlite3_column_blob(self.raw(), column);
                    let length = ffi::sqlite3_column_bytes(self.raw(), column) as usize;
                    if blob.is_null() {
                        return Value::Blob(Vec::new());
                    }
                    Value::Blob(std::slice::from_raw_parts(blob.cast::<u8>(), length).to_vec())
                }
                _ => Value::Null,
            }
        }
    }
}

impl Drop for RawStmt {
    fn drop(&mut self) {
        // SAFETY: the statement is live and owned by this value; its connection is still open
        // (Conn drops statements before the connection).
        unsafe { ffi::sqlite3_finalize(self.raw()) };
    }
}
