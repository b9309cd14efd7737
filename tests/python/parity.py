"""Extended-protocol parity through real drivers (SPEC §6): psycopg 3 with binary
parameters and results, and asyncpg, against a pgshard router on a 2-shard cluster
whose table `par_items` (id bigint) is distributed. Prints OK when every check passed.

Usage: parity.py PORT
"""

import asyncio
import sys

import asyncpg
import psycopg

PORT = int(sys.argv[1])
DSN = f"host=127.0.0.1 port={PORT} user=postgres dbname=postgres"


def psycopg_binary():
    with psycopg.connect(DSN, autocommit=True) as conn:
        cur = conn.cursor(binary=True)
        cur.execute(
            "CREATE TABLE par_items (id bigint PRIMARY KEY, price numeric(10,2), qty int, name text)"
        )
        # INSERT without a column list, in a transaction (psycopg's default), one by one
        # and with executemany (a pipeline: several Executes before one Sync).
        with conn.transaction():
            for i in range(1, 21):
                cur.execute(
                    "INSERT INTO par_items VALUES (%s, %s, %s, %s)",
                    (i, i * 1.5, i % 3, f"n{i}"),
                )
        cur.executemany(
            "INSERT INTO par_items VALUES (%s, %s, %s, %s)",
            [(i, i * 1.5, i % 3, f"n{i}") for i in range(21, 31)],
        )
        cur.execute("SELECT count(*), sum(qty) FROM par_items")
        assert cur.fetchone() == (30, sum(i % 3 for i in range(1, 31))), "counts"
        # A multi-row INSERT whose keys are parameters, across shards.
        cur.execute(
            "INSERT INTO par_items (id, price, qty, name) VALUES (%s, %s, 1, %s), (%s, %s, 1, %s)",
            (101, 1, "a", 102, 2, "b"),
        )
        # Sorted multi-shard read, binary sort keys (numeric, text, int).
        cur.execute("SELECT id, price, name FROM par_items ORDER BY price DESC, name LIMIT 3")
        assert [r[0] for r in cur.fetchall()] == [30, 29, 28], "order"
        cur.execute(
            "SELECT qty, count(*) FROM par_items WHERE id < %s GROUP BY qty ORDER BY qty", (100,)
        )
        assert cur.fetchall() == [(0, 10), (1, 10), (2, 10)], "group"
        # Statements on every shard, a router function, SQL-level PREPARE/EXECUTE.
        cur.execute("CREATE INDEX par_items_qty ON par_items (qty)")
        cur.execute("CREATE TABLE par_local (k int PRIMARY KEY, v text)")
        cur.execute("INSERT INTO par_local VALUES (1, 'x'), (2, 'y')")
        cur.execute("SELECT create_reference_table('par_local')")
        cur.execute("SELECT v FROM par_local WHERE k = %s", (2,))
        assert cur.fetchone() == ("y",), "reference"
        cur.execute("PREPARE par_get (bigint) AS SELECT name FROM par_items WHERE id = $1")
        cur.execute("EXECUTE par_get(7)")
        assert cur.fetchone() == ("n7",), "execute"
        cur.execute("DEALLOCATE par_get")
        cur.execute("TRUNCATE par_local")
        cur.execute("SELECT count(*) FROM par_local")
        assert cur.fetchone() == (0,), "truncate"


async def asyncpg_checks():
    conn = await asyncpg.connect(host="127.0.0.1", port=PORT, user="postgres", database="postgres")
    try:
        total = await conn.fetchval("SELECT sum(price) FROM par_items WHERE id <= 30")
        assert float(total) == sum(i * 1.5 for i in range(1, 31)), total
        rows = await conn.fetch(
            "SELECT qty, count(*) FROM par_items WHERE id < $1 GROUP BY qty ORDER BY qty", 100
        )
        assert [tuple(r) for r in rows] == [(0, 10), (1, 10), (2, 10)], rows
        await conn.execute(
            "INSERT INTO par_items (id, price, qty, name) VALUES ($1, $2, 1, $3), ($4, $5, 1, $6)",
            201, 1, "c", 202, 2, "d",
        )
        n = await conn.fetchval("SELECT count(*) FROM par_items WHERE id > $1", 200)
        assert n == 2, n
        async with conn.transaction():
            await conn.execute("ALTER TABLE par_items ADD COLUMN note text")
            await conn.execute("UPDATE par_items SET note = $1 WHERE id = $2", "hi", 201)
        note = await conn.fetchval("SELECT note FROM par_items WHERE id = $1", 201)
        assert note == "hi", note
    finally:
        await conn.close()


psycopg_binary()
asyncio.run(asyncpg_checks())
print("OK")
