"""What every Python driver of the matrix shares (tests/tests/drivers.rs runs them).

The matrix runs one workload through a pgshard router and through a plain PostgreSQL
and compares what it reads: the schema, the data, the read queries and the expected
SQLSTATEs live here so the drivers check the same things; how each driver talks to the
server lives in its own script.

Every check fails on a mismatch; the script prints one line per check and OK at the end
only when none failed.
"""

import datetime
import decimal
import os
import sys
import traceback


# The schema, created on both servers. On the router, each table is then distributed
# (create_distributed_table), `events` co-located with `accounts`.
SCHEMA = [
    "CREATE TABLE accounts (id bigint PRIMARY KEY, owner text NOT NULL, "
    "balance numeric(12,2) NOT NULL CHECK (balance >= 0), region int NOT NULL, "
    "created date)",
    "CREATE TABLE events (account_id bigint NOT NULL, seq int NOT NULL, kind text, "
    "amount int, PRIMARY KEY (account_id, seq))",
]
DISTRIBUTE = [
    "SELECT create_distributed_table('accounts', 'id')",
    "SELECT create_distributed_table('events', 'account_id', colocate_with => 'accounts')",
]
# DDL on distributed tables, after the load (runs on every shard).
AFTER_LOAD_DDL = [
    "CREATE INDEX accounts_region ON accounts (region)",
    "ALTER TABLE events ADD COLUMN note text DEFAULT 'n'",
]

N_ACCOUNTS = 200
KINDS = ["deposit", "fee", "transfer"]


def account_rows():
    """(id, owner, balance, region, created) for every account."""
    return [
        (
            i,
            f"owner {i}",
            decimal.Decimal(i * 37 % 1000) + decimal.Decimal("0.50"),
            i % 5,
            datetime.date(2024, 1, 1) + datetime.timedelta(days=i % 30),
        )
        for i in range(1, N_ACCOUNTS + 1)
    ]


def event_rows():
    """(account_id, seq, kind, amount): three events per account."""
    return [
        (i, s, KINDS[(i + s) % 3], (i * s) % 50 - 10)
        for i in range(1, N_ACCOUNTS + 1)
        for s in range(1, 4)
    ]


# Reads compared between the router and plain PostgreSQL: (name, sql with $n, params).
# Point reads pin the shard key; the others fan out with aggregates, GROUP BY, ORDER BY,
# LIMIT and a co-located join.
READS = [
    ("point read", "SELECT id, owner, balance, region, created FROM accounts WHERE id = $1", [17]),
    ("point read, other shard", "SELECT owner, balance FROM accounts WHERE id = $1", [123]),
    (
        "co-located point join",
        "SELECT a.owner, e.seq, e.kind, e.amount FROM accounts a JOIN events e "
        "ON e.account_id = a.id WHERE a.id = $1 ORDER BY e.seq",
        [42],
    ),
    ("fan-out count", "SELECT count(*) FROM accounts", []),
    (
        "fan-out aggregates",
        "SELECT count(*), sum(balance), min(balance), max(owner), avg(region) FROM accounts",
        [],
    ),
    ("fan-out sum with parameter", "SELECT sum(amount) FROM events WHERE amount > $1", [0]),
    (
        "fan-out ORDER BY LIMIT",
        "SELECT id, owner, balance FROM accounts WHERE region = $1 "
        "ORDER BY balance DESC, id LIMIT 7",
        [3],
    ),
    (
        "fan-out GROUP BY ORDER BY",
        "SELECT region, count(*), sum(balance), avg(balance) FROM accounts "
        "GROUP BY region ORDER BY region",
        [],
    ),
    (
        "fan-out GROUP BY with parameter",
        "SELECT kind, count(*), sum(amount), min(amount), max(amount) FROM events "
        "WHERE amount > $1 GROUP BY kind ORDER BY kind",
        [-5],
    ),
    (
        "fan-out co-located join GROUP BY",
        "SELECT a.region, count(*), sum(e.amount) FROM accounts a JOIN events e "
        "ON e.account_id = a.id GROUP BY a.region ORDER BY a.region",
        [],
    ),
    (
        "key IN list",
        "SELECT id, region FROM accounts WHERE id IN (1, 2, 3, 150, 199) ORDER BY id",
        [],
    ),
    (
        "ORDER BY a column not selected",
        "SELECT owner FROM accounts WHERE created = $1 ORDER BY balance, id",
        [datetime.date(2024, 1, 5)],
    ),
]

# Statements that fail, with the SQLSTATE both servers must answer.
ERRORS = [
    ("duplicate key", "INSERT INTO accounts (id, owner, balance, region) VALUES ($1, 'x', 1, 0)", [5], "23505"),
    ("check violation", "UPDATE accounts SET balance = -1 WHERE id = $1", [6], "23514"),
    ("not-null violation on a fan-out write", "UPDATE accounts SET owner = NULL WHERE region = $1", [2], "23502"),
    ("undefined table", "SELECT * FROM no_such_table WHERE id = $1", [1], "42P01"),
    ("undefined column", "SELECT no_such_column FROM accounts", [], "42703"),
    ("division by zero on every shard", "SELECT sum(1 / (region - region)) FROM accounts", [], "22012"),
    ("syntax error", "SELEC 1", [], "42601"),
]


def norm(rows):
    """Rows as comparable text: the Python values' reprs keep numeric scale and type."""
    return [tuple(repr(v) for v in row) for row in rows]


class Matrix:
    """Runs named checks, records the outcome of each, and summarises."""

    def __init__(self, driver):
        self.driver = driver
        self.failed = []
        self.passed = 0
        self.on_failure = None

    def check(self, name, fn):
        """Run `fn`, report its outcome."""
        try:
            fn()
            self.passed += 1
            print(f"ok    {self.driver}: {name}", flush=True)
        except Exception as e:  # noqa: BLE001 - every failure is reported, then counted
            self.failed.append((name, e))
            print(f"FAIL  {self.driver}: {name}: {type(e).__name__}: {e}", flush=True)
            if os.environ.get("PGSHARD_DRIVER_TRACE"):
                traceback.print_exc()
            if self.on_failure is not None:
                self.on_failure()

    def failed_named(self, prefix):
        """Whether a check whose name starts with `prefix` failed."""
        return any(name.startswith(prefix) for name, _e in self.failed)

    def finish(self):
        print(
            f"{self.driver}: {self.passed} passed, {len(self.failed)} failed",
            flush=True,
        )
        if self.failed:
            sys.exit(1)
        print("OK")


def expect_rows(what, got, want):
    """Like expect_equal, for a read that must return rows (two empty answers would
    agree without proving anything)."""
    if not want:
        raise AssertionError(f"{what}: plain PostgreSQL returned no rows")
    expect_equal(what, got, want)


def expect_equal(what, got, want):
    if got != want:
        raise AssertionError(f"{what}: router gave {got!r}, plain PostgreSQL {want!r}")


# What plain PostgreSQL answers for a function returning void (create_distributed_table
# and create_reference_table return void, as Citus' do): each driver's own value for it.
VOID = "SELECT pg_sleep(0)"

# Reads of READS that run on more than one shard.
FANOUT_READS = {name for name, _sql, _params in READS[3:]}


class SimpleVerifier:
    """Compares a query's answer through the router with plain PostgreSQL's over the
    simple query protocol (psycopg's ClientCursor): an independent witness of what a
    driver wrote, for drivers whose own multi-shard reads are gated."""

    def __init__(self, router_port, plain_port):
        import psycopg

        self.conns = [
            psycopg.connect(
                f"host=127.0.0.1 port={port} user=postgres dbname=postgres",
                autocommit=True,
                cursor_factory=psycopg.ClientCursor,
            )
            for port in (router_port, plain_port)
        ]

    def same(self, sql):
        got = [norm(c.execute(sql).fetchall()) for c in self.conns]
        expect_rows(sql, got[0], got[1])
        return got[0]

    def close(self):
        for c in self.conns:
            c.close()
