"""asyncpg in the driver matrix (tests/tests/drivers.rs, SPEC section 14).

Usage: asyncpg_matrix.py ROUTER_PORT PLAIN_PORT
The workload of matrix_common.py through a router and through a plain PostgreSQL with
asyncpg's own ways of talking: every query with arguments is a named prepared statement
(asyncpg's statement cache) in binary format; explicit prepare(); executemany;
copy_records_to_table (binary COPY); cursors inside transactions (portals read in
batches); transactions and errors with their SQLSTATEs.
"""

import asyncio
import sys

import asyncpg

from matrix_common import (
    AFTER_LOAD_DDL,
    DISTRIBUTE,
    ERRORS,
    READS,
    FANOUT_READS,
    SCHEMA,
    VOID,
    SimpleVerifier,
    Matrix,
    account_rows,
    event_rows,
    expect_equal,
    expect_rows,
    norm,
)




class Servers:
    """Connections to the router and to the plain PostgreSQL."""

    def __init__(self, router_port, plain_port):
        self.ports = (router_port, plain_port)
        self.r = self.p = None

    async def connect(self):
        for c in (self.r, self.p):
            if c is not None:
                await c.close()
        self.r, self.p = [
            await asyncpg.connect(host="127.0.0.1", port=port, user="postgres")
            for port in self.ports
        ]


class AsyncMatrix(Matrix):
    """Matrix for coroutines: a failed check reconnects both servers, so one failure
    does not hide the next check's result."""

    def __init__(self, driver, servers):
        super().__init__(driver)
        self.servers = servers

    async def acheck(self, name, coro_fn):
        error = None
        try:
            await coro_fn()
        except Exception as e:  # noqa: BLE001 - reported through check below
            error = e

        def report():
            if error is not None:
                raise error

        self.check(name, report)
        if error is not None:
            await self.servers.connect()


def rows_of(records):
    return norm([tuple(r) for r in records])


async def main(router_port, plain_port):
    servers = Servers(router_port, plain_port)
    await servers.connect()
    verify = SimpleVerifier(router_port, plain_port)
    m = AsyncMatrix("asyncpg", servers)

    def r():
        return servers.r

    def p():
        return servers.p

    async def schema():
        for c in (r(), p()):
            for sql in SCHEMA:
                await c.execute(sql)

    await m.acheck("CREATE TABLE (simple protocol)", schema)

    async def distribute():
        for sql in DISTRIBUTE:
            # fetchval prepares the statement: the extended protocol. The function
            # returns void, as Citus' does: compared with a void function's value.
            expect_equal(sql, await r().fetchval(sql), await p().fetchval(VOID))

    await m.acheck(
        "create_distributed_table (extended protocol, prepared first)",
        distribute,
    )

    async def distribute_simple():
        for sql in DISTRIBUTE:
            # execute() without arguments: the simple query protocol.
            expect_equal(sql, await r().execute(sql), "SELECT 1")

    if any(name.startswith("create_distributed_table") for name, _ in m.failed):
        # The rest of the matrix needs distributed tables.
        await m.acheck("create_distributed_table (simple protocol)", distribute_simple)

    async def copy_accounts():
        for c in (r(), p()):
            await c.copy_records_to_table(
                "accounts",
                records=account_rows(),
                columns=["id", "owner", "balance", "region", "created"],
            )
        verify.same("SELECT count(*), sum(balance) FROM accounts")

    await m.acheck("bulk load: copy_records_to_table across shards", copy_accounts)

    async def executemany_events():
        for c in (r(), p()):
            await c.executemany(
                "INSERT INTO events (account_id, seq, kind, amount) VALUES ($1, $2, $3, $4)",
                event_rows(),
            )
        verify.same("SELECT count(*), sum(amount) FROM events")

    await m.acheck("bulk load: executemany INSERT across shards", executemany_events)

    async def ddl():
        for sql in AFTER_LOAD_DDL:
            for c in (r(), p()):
                stmt = await c.prepare(sql)
                await stmt.fetch()

    await m.acheck(
        "DDL on distributed tables (prepared, extended protocol)",
        ddl,
    )

    async def ddl_simple():
        for sql in AFTER_LOAD_DDL:
            for c in (r(), p()):
                await c.execute(sql)

    if any(name.startswith("DDL on") for name, _ in m.failed):
        await m.acheck("DDL on distributed tables (simple protocol)", ddl_simple)

    def read(sql, params):
        async def run():
            got = [rows_of(await c.fetch(sql, *params)) for c in (r(), p())]
            expect_rows(sql, got[0], got[1])

        return run

    for name, sql, params in READS:
        await m.acheck(
            f"fetch: {name}", read(sql, params)
        )

    def prepared(fanout):
        async def run():
            for name, sql, params in READS:
                if (name in FANOUT_READS) != fanout:
                    continue
                stmts = [await c.prepare(sql) for c in (r(), p())]
                for _ in range(3):
                    got = [rows_of(await s.fetch(*params)) for s in stmts]
                    expect_rows(name, got[0], got[1])

        return run

    await m.acheck("prepare() reused: single-shard reads", prepared(False))
    await m.acheck("prepare() reused: fan-out reads", prepared(True))

    async def fetchval():
        for sql in (
            "SELECT sum(balance) FROM accounts",
            "SELECT count(*) FROM events",
            "SELECT max(owner) FROM accounts WHERE region = $1",
        ):
            args = [1] if "$1" in sql else []
            got = [await c.fetchval(sql, *args) for c in (r(), p())]
            expect_equal(sql, repr(got[0]), repr(got[1]))

    await m.acheck("fetchval of fan-out aggregates", fetchval)

    def cursors(sql, params, batch):
        async def run():
            got = []
            for c in (r(), p()):
                out = []
                async with c.transaction():
                    cur = await c.cursor(sql, *params)
                    while True:
                        rows = await cur.fetch(batch)
                        if not rows:
                            break
                        out.extend(rows)
                    # and the iterator form, with prefetch
                    again = [rec async for rec in c.cursor(sql, *params, prefetch=batch)]
                    expect_equal("iterated cursor", rows_of(again), rows_of(out))
                got.append(rows_of(out))
            expect_rows(sql, got[0], got[1])

        return run

    await m.acheck(
        "cursor in a transaction, one shard",
        cursors(
            "SELECT seq, kind, amount FROM events WHERE account_id = $1 ORDER BY seq", [9], 2
        ),
    )
    await m.acheck(
        "cursor in a transaction, every shard",
        cursors(
            "SELECT id, owner, balance FROM accounts WHERE region = $1 ORDER BY id", [4], 7
        ),
    )

    async def executemany_update():
        for c in (r(), p()):
            await c.executemany(
                "UPDATE accounts SET balance = balance + $1 WHERE id = $2",
                [(i % 3, i) for i in range(1, 61)],
            )
        verify.same("SELECT sum(balance) FROM accounts")

    await m.acheck("executemany UPDATE across shards", executemany_update)

    async def txn_commit():
        for c in (r(), p()):
            async with c.transaction():
                await c.execute("UPDATE accounts SET balance = balance - $1 WHERE id = $2", 4, 1)
                await c.execute("UPDATE accounts SET balance = balance + $1 WHERE id = $2", 4, 2)
                await c.execute("UPDATE accounts SET balance = balance + $1 WHERE id = $2", 1, 3)
                await c.execute(
                    "INSERT INTO events (account_id, seq, kind, amount) VALUES ($1, 9, 'tx', 1)", 4
                )
                await c.execute(
                    "INSERT INTO events (account_id, seq, kind, amount) VALUES ($1, 9, 'tx', 1)", 5
                )
        verify.same("SELECT id, balance FROM accounts WHERE id <= 5 ORDER BY id")
        got = verify.same("SELECT account_id FROM events WHERE seq = 9 ORDER BY 1")
        expect_equal("tx events", got, [("4",), ("5",)])

    await m.acheck("multi-shard transaction, committed", txn_commit)

    class Rollback(Exception):
        pass

    async def txn_rollback():
        c = r()
        before = verify.same("SELECT sum(balance), count(*) FROM accounts")
        try:
            async with c.transaction():
                await c.execute("UPDATE accounts SET balance = balance + $1", 1)
                await c.execute("DELETE FROM accounts WHERE id IN (7, 8, 9)")
                # execute() without arguments: the simple protocol; its tag counts rows.
                mid = await c.execute("SELECT id FROM accounts")
                expect_equal("rows in the transaction", mid, f"SELECT {int(before[0][1]) - 3}")
                raise Rollback()
        except Rollback:
            pass
        after = verify.same("SELECT sum(balance), count(*) FROM accounts")
        expect_equal("after rollback", after, before)

    await m.acheck("multi-shard transaction, rolled back", txn_rollback)

    def error(sql, params, want):
        async def run():
            states = []
            for c in (r(), p()):
                try:
                    await c.fetch(sql, *params)
                    states.append((None, ""))
                except asyncpg.PostgresError as e:
                    states.append((e.sqlstate, str(e)))
            expect_equal(f"{sql} (router: {states[0]})", states[0][0], states[1][0])
            expect_equal(sql, states[0][0], want)

        return run

    for name, sql, params, want in ERRORS:
        await m.acheck(
            f"error {want}: {name}",
            error(sql, params, want),
        )

    async def aborted():
        got = []
        for c in (r(), p()):
            states = []
            tr = c.transaction()
            await tr.start()
            await c.execute("UPDATE accounts SET balance = balance + 1 WHERE id = $1", 20)
            for sql, args in (
                ("UPDATE accounts SET balance = -5 WHERE id = $1", [21]),
                ("SELECT count(*) FROM accounts", []),
            ):
                try:
                    await c.fetch(sql, *args)
                    states.append(None)
                except asyncpg.PostgresError as e:
                    states.append(e.sqlstate)
            await tr.rollback()
            states.append(str(await c.fetchval("SELECT balance FROM accounts WHERE id = $1", 20)))
            got.append(states)
        expect_equal("in a failed transaction", got[0], got[1])
        expect_equal("SQLSTATEs", got[0][:2], ["23514", "25P02"])

    await m.acheck("error inside a transaction, then 25P02, then rollback", aborted)

    async def copy_spanning():
        for c in (r(), p()):
            await c.copy_records_to_table(
                "events",
                records=[(i, 20, "copy", i) for i in range(1, 201, 3)],
                columns=["account_id", "seq", "kind", "amount"],
            )
        verify.same("SELECT kind, count(*), sum(amount) FROM events GROUP BY kind ORDER BY kind")

    await m.acheck("copy_records_to_table into a co-located table", copy_spanning)

    await servers.r.close()
    await servers.p.close()
    verify.close()
    m.finish()


if __name__ == "__main__":
    asyncio.run(main(int(sys.argv[1]), int(sys.argv[2])))
