"""psycopg 3 in the driver matrix (tests/tests/drivers.rs, SPEC section 14).

Usage: psycopg_matrix.py ROUTER_PORT PLAIN_PORT
The workload of matrix_common.py through a router and through a plain PostgreSQL, with
psycopg's own ways of talking: text and binary results, server-side prepared
statements, pipeline mode, executemany, COPY, server-side (named) cursors, transactions
and errors with their SQLSTATEs. Everything psycopg runs through its default cursor is
the extended protocol.
"""

import re
import sys

import psycopg

from matrix_common import (
    VOID,
    AFTER_LOAD_DDL,
    DISTRIBUTE,
    ERRORS,
    READS,
    SCHEMA,
    Matrix,
    account_rows,
    event_rows,
    expect_equal,
    expect_rows,
    norm,
)


def pg(sql):
    """$n placeholders as psycopg's %s."""
    return re.sub(r"\$\d+", "%s", sql)


def extended(conn, sql, params=None):
    """Run `sql` on the extended protocol: psycopg uses the simple protocol for a
    statement without parameters unless results are binary."""
    return conn.cursor(binary=True).execute(sql, params)


def conninfo(port):
    return f"host=127.0.0.1 port={port} user=postgres dbname=postgres"


def main(router_port, plain_port):
    m = Matrix("psycopg")
    r = p = None
    both = ()

    def connect():
        """Fresh connections (after a failed check, so one failure does not hide the
        next check's result)."""
        nonlocal r, p, both
        for c in (r, p):
            if c is not None:
                c.close()
        r = psycopg.connect(conninfo(router_port), autocommit=True)
        p = psycopg.connect(conninfo(plain_port), autocommit=True)
        both = (r, p)

    connect()
    m.on_failure = connect

    def schema():
        for c in both:
            for sql in SCHEMA:
                extended(c, sql)

    m.check("CREATE TABLE (extended protocol)", schema)

    def distribute(run_sql):
        def run():
            for sql in DISTRIBUTE:
                row = run_sql(r, sql).fetchone()
                expect_equal(sql, row, run_sql(p, VOID).fetchone())

        return run

    m.check(
        "create_distributed_table (extended protocol)",
        distribute(extended),
    )
    if m.failed_named("create_distributed_table"):
        m.check("create_distributed_table (simple protocol)", distribute(psycopg.Connection.execute))

    def load():
        rows = account_rows()
        for c in both:
            with c.cursor() as cur:
                # Every row in one implicit transaction, spanning both shards.
                cur.executemany(
                    "INSERT INTO accounts (id, owner, balance, region, created) "
                    "VALUES (%s, %s, %s, %s, %s)",
                    rows[:150],
                )
            with c.cursor() as cur:
                with cur.copy(
                    "COPY accounts (id, owner, balance, region, created) FROM STDIN"
                ) as copy:
                    for row in rows[150:]:
                        copy.write_row(row)
            with c.cursor() as cur:
                with cur.copy("COPY events (account_id, seq, kind, amount) FROM STDIN") as copy:
                    for row in event_rows():
                        copy.write_row(row)
        expect_equal(
            "count",
            r.execute("SELECT count(*) FROM accounts").fetchone(),
            p.execute("SELECT count(*) FROM accounts").fetchone(),
        )

    m.check("bulk load: executemany and COPY", load)

    def insert_without_columns():
        for c in both:
            c.execute("INSERT INTO accounts VALUES (%s, %s, %s, %s, %s)", (1001, "nc", 1, 1, None))
            c.execute("DELETE FROM accounts WHERE id = %s", (1001,))

    m.check("INSERT without a column list, with parameters", insert_without_columns)

    def multi_row_insert():
        for c in both:
            cur = c.execute(
                "INSERT INTO accounts (id, owner, balance, region) VALUES "
                "(%s, 'm', 1, 0), (%s, 'm', 1, 0), (%s, 'm', 1, 0)",
                (2001, 2002, 2003),
            )
            expect_equal("rowcount", cur.rowcount, 3)
            c.execute("DELETE FROM accounts WHERE id IN (2001, 2002, 2003)")

    m.check(
        "multi-row INSERT with parameters spanning shards",
        multi_row_insert,
    )

    def ddl(run_sql):
        def run():
            for sql in AFTER_LOAD_DDL:
                run_sql(r, sql)
                run_sql(p, sql)

        return run

    m.check("DDL on distributed tables (extended protocol)", ddl(extended))
    if m.failed_named("DDL on"):
        m.check("DDL on distributed tables (simple protocol)", ddl(psycopg.Connection.execute))

    def reads(binary, prepare):
        def run():
            for name, sql, params in READS:
                got = []
                for c in both:
                    with c.cursor(binary=binary) as cur:
                        cur.execute(pg(sql), params, prepare=prepare)
                        got.append(norm(cur.fetchall()))
                expect_rows(name, got[0], got[1])

        return run

    m.check("reads, text results", reads(False, None))
    m.check("reads, binary results", reads(True, None))
    m.check("reads, prepared statements", reads(False, True))
    m.check("reads, prepared statements, binary results", reads(True, True))

    def pipeline(reads):
        def run():
            got = []
            for c in both:
                out = []
                with c.pipeline():
                    curs = []
                    for _name, sql, params in reads:
                        cur = c.cursor()
                        cur.execute(pg(sql), params)
                        curs.append(cur)
                    for cur in curs:
                        out.append(norm(cur.fetchall()))
                got.append(out)
            expect_rows("pipelined reads", got[0], got[1])

        return run

    m.check("pipeline mode: point reads in one pipeline", pipeline(READS[:3]))
    m.check("pipeline mode: fan-out reads in one pipeline", pipeline(READS[3:]))
    m.check(
        "pipeline mode: point and fan-out reads in one pipeline",
        pipeline(READS),
    )

    def pipeline_writes():
        for c in both:
            with c.pipeline():
                c.execute("UPDATE accounts SET balance = balance + %s WHERE id = %s", (1, 10))
                c.execute("UPDATE accounts SET balance = balance + %s WHERE id = %s", (1, 11))
                c.execute("UPDATE accounts SET balance = balance + %s WHERE region = %s", (1, 4))
        sql = "SELECT sum(balance) FROM accounts"
        expect_equal("sum", r.execute(sql).fetchone(), p.execute(sql).fetchone())

    m.check(
        "pipeline mode: writes on several shards",
        pipeline_writes,
    )

    def executemany_update():
        for c in both:
            with c.cursor() as cur:
                cur.executemany(
                    "UPDATE events SET amount = amount + %s WHERE account_id = %s AND seq = %s",
                    [(1, i, 1) for i in range(1, 41)],
                )
        sql = "SELECT sum(amount) FROM events"
        expect_equal("sum", r.execute(sql).fetchone(), p.execute(sql).fetchone())

    m.check("executemany UPDATE across shards", executemany_update)

    def named_cursor(sql, params, fetch):
        def run():
            got = []
            for c in both:
                out = []
                with c.transaction():
                    with c.cursor(name="matrix_cur") as cur:
                        cur.execute(pg(sql), params)
                        while True:
                            rows = cur.fetchmany(fetch)
                            if not rows:
                                break
                            out.extend(rows)
                got.append(norm(out))
            expect_rows(sql, got[0], got[1])

        return run

    m.check(
        "server-side cursor on one shard",
        named_cursor("SELECT seq, kind FROM events WHERE account_id = $1 ORDER BY seq", [7], 2),
    )
    m.check(
        "server-side cursor over every shard",
        named_cursor("SELECT id, owner FROM accounts WHERE region = $1 ORDER BY id", [2], 9),
    )

    def transaction_commit():
        for c in both:
            with psycopg.connect(conninfo(router_port if c is r else plain_port)) as t:
                t.execute("UPDATE accounts SET balance = balance - %s WHERE id = %s", (5, 1))
                t.execute("UPDATE accounts SET balance = balance + %s WHERE id = %s", (5, 2))
                t.execute("UPDATE accounts SET balance = balance + %s WHERE id = %s", (3, 3))
                t.execute("INSERT INTO events (account_id, seq, kind, amount) VALUES (%s, 9, 'tx', 1)", (4,))
                t.execute("INSERT INTO events (account_id, seq, kind, amount) VALUES (%s, 9, 'tx', 1)", (5,))
                t.commit()
        sql = "SELECT id, balance FROM accounts WHERE id IN (1, 2, 3) ORDER BY id"
        expect_equal("rows", norm(r.execute(sql).fetchall()), norm(p.execute(sql).fetchall()))
        sql = "SELECT count(*) FROM events WHERE seq = 9"
        expect_equal("count", r.execute(sql).fetchone(), (2,))

    m.check("multi-shard transaction, committed", transaction_commit)

    def transaction_rollback():
        with psycopg.connect(conninfo(router_port)) as t:
            before = t.execute("SELECT sum(balance), count(*) FROM accounts").fetchone()
            t.execute("UPDATE accounts SET balance = balance + 1")
            t.execute("DELETE FROM accounts WHERE id IN (7, 8, 9)")
            mid = t.execute("SELECT count(*) FROM accounts").fetchone()
            expect_equal("count in the transaction", mid, (before[1] - 3,))
            t.rollback()
            after = t.execute("SELECT sum(balance), count(*) FROM accounts").fetchone()
            expect_equal("after rollback", after, before)

    m.check("multi-shard transaction, rolled back", transaction_rollback)

    def in_params():
        sql = "SELECT id, owner FROM accounts WHERE id IN (%s, %s, %s) ORDER BY id"
        expect_equal(
            sql,
            norm(r.execute(sql, (3, 100, 150)).fetchall()),
            norm(p.execute(sql, (3, 100, 150)).fetchall()),
        )

    m.check("key IN ($1, $2, $3) with parameters", in_params)

    def error(sql, params, want, binary):
        def run():
            states = []
            for c in both:
                try:
                    c.cursor(binary=binary).execute(pg(sql), params)
                    states.append(None)
                except psycopg.Error as e:
                    states.append(e.sqlstate)
            expect_equal(sql, states[0], states[1])
            expect_equal(sql, states[0], want)

        return run

    for name, sql, params, want in ERRORS:
        m.check(f"error {want}: {name}", error(sql, params, want, False))
        m.check(f"error {want}: {name} (binary: extended protocol)", error(sql, params, want, True))

    def aborted_transaction():
        states = []
        for port in (router_port, plain_port):
            with psycopg.connect(conninfo(port)) as t:
                t.execute("UPDATE accounts SET balance = balance + 1 WHERE id = %s", (20,))
                got = []
                for sql, params in (
                    ("UPDATE accounts SET balance = -5 WHERE id = %s", (21,)),
                    ("SELECT count(*) FROM accounts", None),
                ):
                    try:
                        t.execute(sql, params)
                        got.append(None)
                    except psycopg.Error as e:
                        got.append(e.sqlstate)
                t.rollback()
                states.append(got)
                ok = t.execute("SELECT balance FROM accounts WHERE id = %s", (20,)).fetchone()
                states.append(norm([ok]))
        expect_equal("SQLSTATEs in a failed transaction", states[0], states[2])
        expect_equal("after rollback", states[1], states[3])
        expect_equal("SQLSTATEs", states[0], ["23514", "25P02"])

    m.check("error inside a transaction, then 25P02, then rollback", aborted_transaction)

    def truncate(run_sql):
        def run():
            for c in both:
                run_sql(c, "TRUNCATE events")
            expect_equal("count", r.execute("SELECT count(*) FROM events").fetchone(), (0,))

        return run

    m.check("TRUNCATE a distributed table (simple protocol)", truncate(psycopg.Connection.execute))
    m.check(
        "TRUNCATE a distributed table (extended protocol)", truncate(extended)
    )

    for c in (r, p):
        c.close()
    m.finish()


if __name__ == "__main__":
    main(int(sys.argv[1]), int(sys.argv[2]))
