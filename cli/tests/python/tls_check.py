"""dqlite-dbapi over TLS: its `dial_func` hook dials with Python's ssl module, presenting the
cluster certificate and trusting it as the root (as go-dqlite's app.WithTLS does).

Usage: tls_check.py CERT KEY HOST:PORT
"""

import asyncio
import ssl
import sys

import dqlitedbapi

cert, key, address = sys.argv[1], sys.argv[2], sys.argv[3]
context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
context.load_cert_chain(cert, key)
context.load_verify_locations(cert)


async def dial(target):
    host, port = target.rsplit(":", 1)
    # The generated certificate names "atoll" (hostnames of edge nodes vary).
    return await asyncio.open_connection(host, int(port), ssl=context, server_hostname="atoll")


connection = dqlitedbapi.connect(address, database="py_tls", dial_func=dial)
cursor = connection.cursor()
cursor.execute("CREATE TABLE t (x TEXT, b BLOB)")
cursor.execute("INSERT INTO t VALUES (?, ?)", ("python over TLS", b"\x00\xff"))
connection.commit()
cursor.execute("SELECT x, b FROM t")
assert cursor.fetchall() == [("python over TLS", b"\x00\xff")]
connection.close()
print("tls dbapi check passed")
