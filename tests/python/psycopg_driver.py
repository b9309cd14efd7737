"""psycopg 3 against a pgshard router (driven by tests/tests/drivers.rs).

Usage: psycopg_driver.py PORT
Exercises what a Python application does: server-side parameter binding (extended
protocol), prepared statements (prepare=True), binary results, transactions with
rollback, multi-shard writes with parameters, errors with their SQLSTATE, pipelined
executemany (on one shard, and across shards: atomic), and metadata queries. Every check
raises on a mismatch; the script prints OK at the end.
"""

import sys
import uuid

import psycopg
from psycopg import errors


def main(port: int) -> None:
    conninfo = f"host=127.0.0.1 port={port} user=postgres dbname=postgres"
    with psycopg.connect(conninfo, autocommit=True) as conn:
        assert conn.info.server_version >= 150000, conn.info.server_version
        conn.execute(
            "CREATE TABLE py_users (id bigint PRIMARY KEY, name text, score numeric(8,2), "
            "tag uuid, active boolean)"
        )
        conn.execute("CREATE TABLE py_batch (id bigint PRIMARY KEY, name text)")
        rows = [(i, f"user {i}", i * 1.5, uuid.uuid4(), i % 2 == 0) for i in range(1, 51)]
        # One statement per Sync. (psycopg's executemany pipelines every row into one
        # implicit transaction, which spans shards: that needs two-phase commit.)
        for row in rows:
            conn.execute(
                "INSERT INTO py_users (id, name, score, tag, active) VALUES (%s, %s, %s, %s, %s)",
                row,
            )
        # executemany whose rows all live on one shard is one single-shard transaction.
        with conn.cursor() as cur:
            cur.executemany("UPDATE py_users SET active = active WHERE id = %s", [(1,), (1,), (1,)])
        # executemany pipelines every row into one implicit transaction (one Sync): rows
        # on several shards commit together (two-phase commit at the Sync)…
        with conn.cursor() as cur:
            cur.executemany(
                "INSERT INTO py_batch (id, name) VALUES (%s, %s)",
                [(1000 + i, f"batch {i}") for i in range(20)],
            )
        got = conn.execute("SELECT count(*) FROM py_batch WHERE id >= 1000").fetchone()
        assert got == (20,), got
        # …or not at all: a duplicate key anywhere in the batch leaves none of its rows.
        try:
            with conn.cursor() as cur:
                cur.executemany(
                    "INSERT INTO py_batch (id, name) VALUES (%s, %s)",
                    [(2000 + i, "x") for i in range(10)] + [(1005, "dup")],
                )
            raise AssertionError("duplicate key accepted in a batch")
        except errors.UniqueViolation:
            pass
        got = conn.execute("SELECT count(*) FROM py_batch WHERE id >= 2000").fetchone()
        assert got == (0,), got
        # The session goes on, in and out of batches.
        got = conn.execute("SELECT count(*) FROM py_batch").fetchone()
        assert got == (20,), got
        for i, name, score, tag, active in rows:
            got = conn.execute(
                "SELECT name, score, tag, active FROM py_users WHERE id = %s", (i,)
            ).fetchone()
            assert got is not None, i
            assert got[0] == name and float(got[1]) == score and got[2] == tag and got[3] == active, got

        # Prepared on the server (psycopg prepares after repeated use or when asked).
        for i in range(1, 11):
            got = conn.execute(
                "SELECT id, name FROM py_users WHERE id = %s", (i,), prepare=True
            ).fetchone()
            assert got == (i, f"user {i}"), got

        # Binary results.
        with conn.cursor(binary=True) as cur:
            cur.execute("SELECT id, score, tag FROM py_users WHERE id = %s", (7,))
            got = cur.fetchone()
            assert got[0] == 7 and float(got[1]) == 10.5, got

        # Errors keep their SQLSTATE; the session survives them.
        try:
            conn.execute("INSERT INTO py_users (id, name) VALUES (%s, %s)", (1, "dup"))
            raise AssertionError("duplicate key accepted")
        except errors.UniqueViolation:
            pass
        try:
            conn.execute("SELECT * FROM py_no_such_table")
            raise AssertionError("missing table accepted")
        except errors.UndefinedTable:
            pass

        # Multi-shard writes with bound parameters (no shard key in the WHERE clause):
        # on every shard, committed atomically at the statement's Sync.
        cur = conn.execute("UPDATE py_users SET score = score + %s WHERE active = %s", (1, True))
        assert cur.rowcount == 25, cur.rowcount
        got = conn.execute(
            "SELECT count(*) FROM py_users WHERE active AND score = id * 1.5 + %s", (1,)
        ).fetchone()
        assert got == (25,), got

        # Metadata queries drivers and ORMs run.
        cols = conn.execute(
            "SELECT column_name FROM information_schema.columns "
            "WHERE table_name = 'py_users' ORDER BY ordinal_position"
        ).fetchall()
        assert [c[0] for c in cols] == ["id", "name", "score", "tag", "active"], cols

    # A transaction pinned to one shard, rolled back, then committed.
    with psycopg.connect(conninfo) as conn:
        conn.execute("UPDATE py_users SET name = 'changed' WHERE id = %s", (3,))
        conn.rollback()
        got = conn.execute("SELECT name FROM py_users WHERE id = %s", (3,)).fetchone()
        assert got == ("user 3",), got
        conn.execute("UPDATE py_users SET name = 'committed' WHERE id = %s", (3,))
        conn.commit()
        # A multi-shard write inside a transaction, rolled back on every shard.
        cur = conn.execute("UPDATE py_users SET name = name || %s", ("!",))
        assert cur.rowcount == 50, cur.rowcount
        conn.rollback()
        got = conn.execute("SELECT count(*) FROM py_users WHERE name LIKE %s", ("%!",)).fetchone()
        assert got == (0,), got
        got = conn.execute("SELECT name FROM py_users WHERE id = %s", (3,)).fetchone()
        assert got == ("committed",), got
        conn.commit()
    print("OK")


if __name__ == "__main__":
    main(int(sys.argv[1]))
