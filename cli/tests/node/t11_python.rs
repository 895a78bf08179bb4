//! The Python clients against `atoll start`: dqlite-dbapi (every value type as a parameter and
//! in rows, transactions, errors, RETURNING, more than 255 parameters, a zero-column PRAGMA, a
//! large result) and sqlalchemy-dqlite (a table from an ORM model, queries through the ORM).
//! The scripts live in `cli/tests/python/`; the virtual environment comes from
//! `scripts/setup-test-deps` (`ATOLL_TEST_PYTHON` names another interpreter).

use std::path::PathBuf;
use std::process::Command;

use crate::support::{run_command, AtollNode, Node};

pub(crate) fn python() -> PathBuf {
    if let Ok(python) = std::env::var("ATOLL_TEST_PYTHON") {
        return PathBuf::from(python);
    }
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..");
    let python = root.join("target/py313-venv/bin/python");
    assert!(
        python.exists(),
        "{} is missing: run scripts/setup-test-deps (it installs dqlite-dbapi and \
         sqlalchemy-dqlite into that virtual environment)",
        python.display()
    );
    python
}

fn script(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/python")
        .join(name)
}

pub(crate) fn run_script(name: &str, address: &str) -> String {
    let mut command = Command::new(python());
    command.arg(script(name)).arg(address);
    let out = run_command(command, None);
    assert!(
        out.status.success(),
        "{name} failed:\n{}\n{}",
        out.stdout,
        out.stderr
    );
    out.stdout
}

#[test]
fn test_python_dbapi() {
    let node = AtollNode::start();
    let out = run_script("dbapi_check.py", node.address());
    assert!(out.ends_with("all dbapi checks passed\n"), "{out}");
    assert!(out.contains("ok: 300 parameters"), "{out}");
}

#[test]
fn test_python_sqlalchemy_orm() {
    let node = AtollNode::start();
    let out = run_script("sqlalchemy_check.py", node.address());
    assert!(out.ends_with("all sqlalchemy checks passed\n"), "{out}");
}

/// Two dqlite-dbapi connections each behave as their own SQLite connection, and a writer
/// behind the other's transaction gets "database is locked" promptly.
#[test]
fn test_python_sessions_are_connections() {
    let node = AtollNode::start();
    let out = run_script("session_check.py", node.address());
    assert!(out.ends_with("all session checks passed\n"), "{out}");
}
