//! Between the engine's values and errors and the dqlite wire: parameters in, rows and FAILURE
//! codes out.

use atoll_core::{ExecError, Value as CoreValue};
use atoll_net::protocol::{Value as WireValue, ValueRef};

/// FAILURE code of a request that needs the leader on a node that is not (SQLITE_IOERR_NOT_LEADER).
pub const CODE_NOT_LEADER: u64 = 10250;
/// FAILURE code of a write whose leader lost leadership before it committed
/// (SQLITE_IOERR_LEADERSHIP_LOST): its outcome is unknown to the client.
pub const CODE_LEADERSHIP_LOST: u64 = 10506;
/// SQLITE_ERROR.
pub const CODE_ERROR: u64 = 1;
/// SQLITE_BUSY.
pub const CODE_BUSY: u64 = 5;
/// SQLITE_NOTFOUND: no database open, unknown statement id.
pub const CODE_NOT_FOUND: u64 = 12;
/// DQLITE_NOTFOUND: DUMP of an unknown database.
pub const CODE_DQLITE_NOT_FOUND: u64 = 1002;
/// DQLITE_PARSE: a request atoll does not understand.
pub const CODE_PARSE: u64 = 1005;

/// The engine's discard reason when a proposal was not accepted (nothing happened: the client
/// may retry on the leader).
pub const REASON_NOT_LEADER: &str = "not leader";
/// The engine's discard reason when raft refused a proposal for now (too many uncommitted
/// bytes, a leadership transfer): nothing happened, the client may retry.
pub const REASON_BUSY: &str = "busy: the leader is not accepting writes right now, try again";
/// The engine's discard reason when the disk is full (nothing happened: the client may retry
/// once space is freed). Answered with SQLITE_FULL.
pub const REASON_DISK_FULL: &str = "disk full: writes are refused until space is freed";
/// SQLITE_FULL: the disk is full.
pub const CODE_FULL: u64 = 13;
/// The engine's discard reason when leadership was lost with writes in flight.
pub const REASON_LEADERSHIP_LOST: &str = "leadership lost";

/// A parameter from the wire, as the engine binds it. ISO8601 binds as text and BOOLEAN as an
/// integer, as dqlite does; UNIXTIME never arrives (the decoder refuses it in parameters).
pub fn parameter(value: WireValue) -> CoreValue {
    match value {
        WireValue::Integer(v) | WireValue::UnixTime(v) => CoreValue::Integer(v),
        WireValue::Float(v) => CoreValue::Float(v),
        WireValue::Text(v) | WireValue::Iso8601(v) => CoreValue::Text(v),
        WireValue::RawText(v) => CoreValue::RawText(v),
        WireValue::Blob(v) => CoreValue::Blob(v),
        WireValue::Null => CoreValue::Null,
        WireValue::Boolean(v) => CoreValue::Integer(i64::from(v)),
    }
}

/// How a column's declared type changes the wire types of its values (dqlite's mapping).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Declared {
    /// Values go with their own type.
    Plain,
    /// `DATETIME`, `DATE`, `TIMESTAMP`: integers as UNIXTIME, text as ISO8601, NULL as "".
    Time,
    /// `BOOLEAN`: integers as BOOLEAN, NULL as false.
    Boolean,
}

impl Declared {
    /// The mapping for a declared type, compared case-insensitively and exactly.
    pub fn of(declared: Option<&str>) -> Declared {
        match declared {
            Some(t)
                if t.eq_ignore_ascii_case("DATETIME")
                    || t.eq_ignore_ascii_case("DATE")
                    || t.eq_ignore_ascii_case("TIMESTAMP") =>
            {
                Declared::Time
            }
            Some(t) if t.eq_ignore_ascii_case("BOOLEAN") => Declared::Boolean,
            _ => Declared::Plain,
        }
    }
}

/// A cell as it goes on the wire. Text stops at its first NUL, as dqlite's (C string) encoding
/// does: the wire format cannot carry one. A value of a type the declared mapping does not
/// expect (a float in a DATETIME column) goes with its own type, where dqlite 1.11 aborts.
pub fn cell(value: &CoreValue, declared: Declared) -> ValueRef<'_> {
    match (value, declared) {
        (CoreValue::Integer(v), Declared::Time) => ValueRef::UnixTime(*v),
        (CoreValue::Text(v), Declared::Time) => ValueRef::Iso8601(until_nul(v)),
        (CoreValue::Null, Declared::Time) => ValueRef::Iso8601(""),
        (CoreValue::Integer(v), Declared::Boolean) => ValueRef::Boolean(*v != 0),
        (CoreValue::Null, Declared::Boolean) => ValueRef::Boolean(false),
        (CoreValue::Integer(v), Declared::Plain) => ValueRef::Integer(*v),
        (CoreValue::Float(v), _) => ValueRef::Float(*v),
        (CoreValue::Text(v), _) => ValueRef::Text(until_nul(v)),
        (CoreValue::RawText(v), _) => {
            ValueRef::RawText(v.split(|&b| b == 0).next().unwrap_or_default())
        }
        (CoreValue::Blob(v), _) => ValueRef::Blob(v),
        (CoreValue::Null, Declared::Plain) => ValueRef::Null,
    }
}

fn until_nul(text: &str) -> &str {
    match text.find('\0') {
        Some(at) => &text[..at],
        None => text,
    }
}

/// The FAILURE code and message of an engine error: SQLite's extended code and its own message
/// for SQL errors (clients map them like local SQLite errors), dqlite's codes for leadership.
pub fn failure(error: &ExecError) -> (u64, String) {
    match error {
        ExecError::Sqlite(_) => (code_of(error), error.client_message()),
        ExecError::Discarded(reason) if reason == REASON_NOT_LEADER => {
            (CODE_NOT_LEADER, "not leader".to_owned())
        }
        ExecError::Discarded(reason) if reason == REASON_BUSY => (CODE_BUSY, reason.clone()),
        ExecError::Discarded(reason) if reason == REASON_DISK_FULL => (CODE_FULL, reason.clone()),
        ExecError::Discarded(_) => (CODE_LEADERSHIP_LOST, "leadership lost".to_owned()),
        ExecError::Io(error) if crate::disk::is_full(error) => (
            CODE_FULL,
            format!("disk full: nothing was changed, try again once space is freed ({error})"),
        ),
        ExecError::UnknownStatement(_) => {
            (CODE_NOT_FOUND, "no statement with the given id".to_owned())
        }
        ExecError::DatabaseNotOpen(_) => (CODE_NOT_FOUND, "no database opened".to_owned()),
        ExecError::Timeout { waited } => (
            CODE_BUSY,
            format!("database is locked: waited {waited} ms for the write lock"),
        ),
        other => (code_of(other), other.client_message()),
    }
}

/// The engine's SQLite result code as a FAILURE code (codes are non-negative).
fn code_of(error: &ExecError) -> u64 {
    u64::try_from(error.code()).unwrap_or(CODE_ERROR)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn test_declared_type_mapping_with_dqlite_null_quirks() {
        let time = Declared::of(Some("datetime"));
        assert_eq!(time, Declared::Time);
        assert_eq!(Declared::of(Some("DATE")), Declared::Time);
        assert_eq!(Declared::of(Some("TimeStamp")), Declared::Time);
        assert_eq!(Declared::of(Some("DATETIME2")), Declared::Plain);
        assert_eq!(Declared::of(None), Declared::Plain);
        let boolean = Declared::of(Some("boolean"));
        assert_eq!(cell(&CoreValue::Integer(5), time), ValueRef::UnixTime(5));
        assert_eq!(
            cell(&CoreValue::Text("2024-01-02".into()), time),
            ValueRef::Iso8601("2024-01-02")
        );
        assert_eq!(cell(&CoreValue::Null, time), ValueRef::Iso8601(""));
        assert_eq!(cell(&CoreValue::Float(1.5), time), ValueRef::Float(1.5));
        assert_eq!(cell(&CoreValue::Blob(vec![1]), time), ValueRef::Blob(&[1]));
        assert_eq!(
            cell(&CoreValue::Integer(0), boolean),
            ValueRef::Boolean(false)
        );
        assert_eq!(
            cell(&CoreValue::Integer(2), boolean),
            ValueRef::Boolean(true)
        );
        assert_eq!(cell(&CoreValue::Null, boolean), ValueRef::Boolean(false));
        assert_eq!(
            cell(&CoreValue::Text("yes".into()), boolean),
            ValueRef::Text("yes")
        );
        assert_eq!(
            cell(&CoreValue::Text("a\0b".into()), Declared::Plain),
            ValueRef::Text("a")
        );
    }

    #[test]
    fn test_parameters_bind_as_dqlite_binds_them() {
        assert_eq!(parameter(WireValue::Boolean(true)), CoreValue::Integer(1));
        assert_eq!(
            parameter(WireValue::Iso8601("2024".into())),
            CoreValue::Text("2024".into())
        );
        assert_eq!(parameter(WireValue::Null), CoreValue::Null);
    }

    #[test]
    fn test_failures_keep_sqlite_codes_and_messages() {
        let error = ExecError::Sqlite(rusqlite::Error::SqliteFailure(
            rusqlite::ffi::Error::new(2067),
            Some("UNIQUE constraint failed: t.k".into()),
        ));
        assert_eq!(
            failure(&error),
            (2067, "UNIQUE constraint failed: t.k".into())
        );
        let lost = ExecError::Discarded(REASON_LEADERSHIP_LOST.into());
        assert_eq!(failure(&lost).0, CODE_LEADERSHIP_LOST);
        let full = ExecError::Discarded(REASON_DISK_FULL.into());
        assert_eq!(failure(&full), (CODE_FULL, REASON_DISK_FULL.to_owned()));
        let enospc = ExecError::Io(std::io::Error::from(std::io::ErrorKind::StorageFull));
        let (code, message) = failure(&enospc);
        assert_eq!(code, CODE_FULL);
        assert!(message.starts_with("disk full"), "{message}");
        let eio = ExecError::Io(std::io::Error::other("EIO"));
        assert_ne!(failure(&eio).0, CODE_FULL);
        let not_leader = ExecError::Discarded(REASON_NOT_LEADER.into());
        assert_eq!(failure(&not_leader), (CODE_NOT_LEADER, "not leader".into()));
        assert_eq!(failure(&ExecError::Timeout { waited: 5000 }).0, CODE_BUSY);
    }
}
