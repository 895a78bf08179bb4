"""dqlite-dbapi, two connections to one atoll database: each behaves as its own SQLite
connection (TEMP tables, PRAGMAs, last_insert_rowid()/changes(); the client refuses
multi-statement text, which the Rust suite covers), and a writer behind the other connection's transaction
gets "database is locked" promptly with its connection still usable. Usage: session_check.py
HOST:PORT. Prints one line per check and `all session checks passed` last."""

import sys
import time

import dqlitedbapi

address = sys.argv[1]


def check(name, got, want):
    if got != want:
        raise AssertionError(f"{name}: got {got!r}, want {want!r}")
    print(f"ok: {name}")


def error_of(cursor, sql, params=()):
    try:
        cursor.execute(sql, params)
    except dqlitedbapi.Error as error:
        return error
    raise AssertionError(f"{sql!r} did not fail")


a = dqlitedbapi.connect(address, database="sessions")
b = dqlitedbapi.connect(address, database="sessions", busy_timeout=0)
ca, cb = a.cursor(), b.cursor()

ca.execute("CREATE TEMP TABLE tt (v)")
ca.execute("INSERT INTO tt VALUES (?)", (1,))
ca.execute("SELECT v FROM tt")
check("TEMP table of its connection", ca.fetchall(), [(1,)])
check("no TEMP table on the other", "no such table: tt" in str(error_of(cb, "SELECT * FROM tt")), True)

ca.execute("CREATE TABLE p (id INTEGER PRIMARY KEY)")
ca.execute("CREATE TABLE c (id INTEGER PRIMARY KEY, p REFERENCES p(id))")
ca.execute("PRAGMA foreign_keys = ON")
cb.execute("PRAGMA foreign_keys = OFF")
cb.execute("INSERT INTO c (p) VALUES (5)")
check("foreign keys off on b", cb.rowcount, 1)
error = error_of(ca, "INSERT INTO c (p) VALUES (5)")
check("foreign keys on for a", isinstance(error, dqlitedbapi.IntegrityError), True)

ca.execute("INSERT INTO p VALUES (10)")
check("lastrowid", ca.lastrowid, 10)
ca.execute("SELECT last_insert_rowid(), changes()")
check("counters of a", ca.fetchall(), [(10, 1)])
cb.execute("SELECT last_insert_rowid(), changes()")
check("counters of b", cb.fetchall(), [(1, 1)])

ca.execute("BEGIN")
ca.execute("INSERT INTO p VALUES (30)")
start = time.monotonic()
error = error_of(cb, "INSERT INTO p VALUES (31)")
waited = time.monotonic() - start
check("busy behind a transaction", (error.code, "database is locked" in str(error)), (5, True))
check("busy answered promptly", waited < 2.0, True)
ca.execute("COMMIT")
cb.execute("INSERT INTO p VALUES (31)")
cb.execute("SELECT id FROM p WHERE id >= 30 ORDER BY id")
check("the connection stays usable", cb.fetchall(), [(30,), (31,)])
print("all session checks passed")
