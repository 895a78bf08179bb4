"""dqlite-dbapi against an atoll node: parameterized INSERT/SELECT of every type, transactions
(commit and rollback), errors with SQLite's codes. Usage: dbapi_check.py HOST:PORT. Prints one
line per check and `all dbapi checks passed` last; any failure raises (exit status 1)."""

import datetime
import sys

import dqlitedbapi

address = sys.argv[1]


def check(name, got, want):
    if got != want:
        raise AssertionError(f"{name}: got {got!r}, want {want!r}")
    print(f"ok: {name}")


conn = dqlitedbapi.connect(address, database=sys.argv[2] if len(sys.argv) > 2 else "dbapi")
cur = conn.cursor()
cur.execute(
    "CREATE TABLE vals (id INTEGER PRIMARY KEY, i INTEGER, r REAL, t TEXT, b BLOB, n TEXT, "
    "flag BOOLEAN, at DATETIME)"
)
conn.commit()

rows = [
    (1, 42, 3.5, "hello", b"\x00\xff\x10", None, True, "2024-01-02 03:04:05"),
    (2, -9223372036854775808, -0.125, "ünïcödé ✓", b"", None, False, None),
    (3, 9223372036854775807, 1e300, "", bytes(range(256)) * 10, "x", True,
     datetime.datetime(2023, 11, 14, 22, 13, 20)),
]
cur.executemany("INSERT INTO vals VALUES (?, ?, ?, ?, ?, ?, ?, ?)", rows)
conn.commit()

cur.execute("SELECT id, i, r, t, b, n, flag FROM vals WHERE id >= ? ORDER BY id", (1,))
got = cur.fetchall()
check("row count", len(got), 3)
for row, want in zip(got, rows):
    check(f"row {want[0]} values", tuple(row), tuple(want[:7]))
check("blob type", type(got[0][4]), bytes)
check("boolean type", type(got[0][6]), bool)

cur.execute("SELECT at FROM vals ORDER BY id")
at = [row[0] for row in cur.fetchall()]
check("datetime from text", at[0], datetime.datetime(2024, 1, 2, 3, 4, 5))
check("NULL datetime", at[1], None)
check("datetime parameter round trip", at[2].replace(tzinfo=None),
      datetime.datetime(2023, 11, 14, 22, 13, 20))

cur.execute("SELECT ?, ?, ?, ?, ?", (7, 2.25, "s", b"\x01", None))
check("parameters echoed", tuple(cur.fetchone()), (7, 2.25, "s", b"\x01", None))

# More than 255 parameters go with the 32-bit count of schema 1.
many = list(range(300))
cur.execute("SELECT " + ", ".join("?" for _ in many), many)
check("300 parameters", list(cur.fetchone()), many)

# dqlite-dbapi is autocommit by default: transactions are explicit. One whose body raises is
# rolled back and leaves nothing; one that ends cleanly keeps everything.
class Abort(Exception):
    pass


try:
    with conn.transaction():
        cur.execute("INSERT INTO vals (id, i) VALUES (10, 1)")
        cur.execute("INSERT INTO vals (id, i) VALUES (11, 1)")
        raise Abort()
except Abort:
    pass
cur.execute("SELECT count(*) FROM vals WHERE id >= 10")
check("rolled back", cur.fetchone()[0], 0)
with conn.transaction():
    cur.execute("INSERT INTO vals (id, i) VALUES (10, 1)")
    cur.execute("UPDATE vals SET i = i + 1 WHERE id = 10")
    check("rowcount of an update", cur.rowcount, 1)
cur.execute("SELECT i FROM vals WHERE id = 10")
check("committed", cur.fetchone()[0], 2)

# RETURNING through QUERY_SQL commits its write.
cur.execute("INSERT INTO vals (id, i) VALUES (20, 5) RETURNING id, i * 2")
check("returning", tuple(cur.fetchone()), (20, 10))
conn.commit()
cur.execute("SELECT count(*) FROM vals WHERE id = 20")
check("returning committed", cur.fetchone()[0], 1)

# A zero-column query (dbapi sends PRAGMA as QUERY_SQL).
cur.execute("PRAGMA foreign_keys = ON")
check("zero-column pragma", cur.fetchall(), [])

# Errors carry SQLite's messages; the connection stays usable.
for sql, wanted, kind in [
    ("SELEC 1", "syntax error", dqlitedbapi.OperationalError),
    ("SELECT * FROM nosuch", "no such table", dqlitedbapi.OperationalError),
    ("INSERT INTO vals (id) VALUES (1)", "UNIQUE constraint failed", dqlitedbapi.IntegrityError),
]:
    try:
        cur.execute(sql)
    except dqlitedbapi.Error as error:
        check(f"error for {sql!r}", (wanted in str(error), isinstance(error, kind)), (True, True))
    else:
        raise AssertionError(f"{sql!r} did not fail")

cur.execute("SELECT count(*) FROM vals")
check("still serving", cur.fetchone()[0], 5)

# A large result comes in many batches.
cur.execute(
    "WITH RECURSIVE c(n) AS (SELECT 1 UNION ALL SELECT n + 1 FROM c WHERE n < 5000) "
    "SELECT n, 'row ' || n FROM c"
)
big = cur.fetchall()
check("5000 rows", (len(big), big[-1][0], big[-1][1]), (5000, 5000, "row 5000"))
conn.close()
print("all dbapi checks passed")
