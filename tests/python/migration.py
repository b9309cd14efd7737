"""A schema migration through a driver (tests/tests/drivers.rs, SPEC section 14).

Usage: migration.py ROUTER_PORT PLAIN_PORT
What a migration tool does, through psycopg on the extended protocol (a binary cursor
makes psycopg send Parse/Bind/Execute even without parameters), against a router and a
plain PostgreSQL: several tables with indexes, CHECK, UNIQUE, NOT NULL and foreign keys
(to a reference table and between co-located tables), then distribution
(create_reference_table, create_distributed_table with colocate_with), a data load,
and a second migration on the distributed tables (a column, an index, a constraint).
The constraints are then exercised with their SQLSTATEs and the data read back against
the plain PostgreSQL. tests/tests/drivers.rs compares every shard's indexes and
constraints with the plain PostgreSQL's afterwards.
"""

import sys

import psycopg

from matrix_common import VOID, Matrix, expect_equal, expect_rows, norm

# The first migration: tables created before they are distributed.
CREATE = [
    "CREATE TABLE countries (code text PRIMARY KEY, name text NOT NULL UNIQUE)",
    "CREATE TABLE customers (id bigint PRIMARY KEY, email text NOT NULL, "
    "country text REFERENCES countries (code), created date DEFAULT '2024-01-01', "
    "CONSTRAINT customers_email_at CHECK (email LIKE '%@%'))",
    "CREATE INDEX customers_country ON customers (country)",
    "CREATE TABLE orders (customer_id bigint NOT NULL REFERENCES customers (id), "
    "order_id bigint NOT NULL, amount numeric(10,2) NOT NULL CHECK (amount > 0), "
    "status text NOT NULL DEFAULT 'new', PRIMARY KEY (customer_id, order_id))",
    "CREATE INDEX orders_status ON orders (status)",
    "CREATE TABLE order_lines (customer_id bigint NOT NULL, order_id bigint NOT NULL, "
    "line int NOT NULL, sku text NOT NULL, qty int NOT NULL CHECK (qty > 0), "
    "PRIMARY KEY (customer_id, order_id, line), "
    "FOREIGN KEY (customer_id, order_id) REFERENCES orders (customer_id, order_id))",
]
DISTRIBUTE = [
    "SELECT create_reference_table('countries')",
    "SELECT create_distributed_table('customers', 'id')",
    "SELECT create_distributed_table('orders', 'customer_id', colocate_with => 'customers')",
    "SELECT create_distributed_table('order_lines', 'customer_id', colocate_with => 'customers')",
]
# The second migration: on distributed tables (runs on every shard).
MIGRATE = [
    "ALTER TABLE orders ADD COLUMN note text DEFAULT ''",
    "CREATE INDEX order_lines_sku ON order_lines (sku)",
    "ALTER TABLE customers ADD CONSTRAINT customers_email_short CHECK (length(email) < 40)",
]

COUNTRIES = [("de", "Germany"), ("fr", "France"), ("jp", "Japan"), ("br", "Brazil")]


def main(router_port, plain_port):
    m = Matrix("migration")
    info = "host=127.0.0.1 port={} user=postgres dbname=postgres"
    r = p = None
    both = ()

    def connect():
        nonlocal r, p, both
        for c in both:
            c.close()
        r = psycopg.connect(info.format(router_port), autocommit=True)
        p = psycopg.connect(info.format(plain_port), autocommit=True)
        both = (r, p)

    connect()
    m.on_failure = connect

    def extended(c, sql, params=None):
        return c.cursor(binary=True).execute(sql, params)

    def simple(c, sql):
        return c.execute(sql)

    def create():
        for c in both:
            for sql in CREATE:
                extended(c, sql)

    m.check("first migration: tables, indexes, constraints (extended protocol)", create)

    def distribute(run_sql):
        def run():
            for sql in DISTRIBUTE:
                expect_equal(sql, run_sql(r, sql).fetchone(), run_sql(p, VOID).fetchone())

        return run

    m.check("distribution (extended protocol)", distribute(extended))
    if m.failed_named("distribution"):
        m.check("distribution (simple protocol)", distribute(simple))

    def load_reference(many):
        def run():
            for c in both:
                if many:
                    c.cursor().executemany(
                        "INSERT INTO countries (code, name) VALUES (%s, %s)", COUNTRIES
                    )
                else:
                    for row in COUNTRIES:
                        c.execute("INSERT INTO countries (code, name) VALUES (%s, %s)", row)
            expect_equal(
                "countries",
                norm(r.execute("SELECT * FROM countries ORDER BY code").fetchall()),
                norm(p.execute("SELECT * FROM countries ORDER BY code").fetchall()),
            )

        return run

    m.check(
        "data load: executemany into a reference table",
        load_reference(True),
    )
    if m.failed_named("data load: executemany into a reference"):
        m.check("data load: one INSERT per row into a reference table", load_reference(False))

    def load():
        for c in both:
            with c.cursor() as cur:
                cur.executemany(
                    "INSERT INTO customers (id, email, country) VALUES (%s, %s, %s)",
                    [(i, f"c{i}@example.com", COUNTRIES[i % 4][0]) for i in range(1, 61)],
                )
                cur.executemany(
                    "INSERT INTO orders (customer_id, order_id, amount, status) "
                    "VALUES (%s, %s, %s, %s)",
                    [
                        (i, o, f"{i * o % 90 + 1}.25", ["new", "paid", "sent"][(i + o) % 3])
                        for i in range(1, 61)
                        for o in range(1, 3)
                    ],
                )
                cur.executemany(
                    "INSERT INTO order_lines (customer_id, order_id, line, sku, qty) "
                    "VALUES (%s, %s, %s, %s, %s)",
                    [
                        (i, o, ln, f"sku-{(i + ln) % 7}", ln)
                        for i in range(1, 61)
                        for o in range(1, 3)
                        for ln in range(1, 3)
                    ],
                )

    m.check("data load: executemany into the distributed tables", load)

    def migrate(run_sql):
        def run():
            for sql in MIGRATE:
                run_sql(r, sql)
                run_sql(p, sql)

        return run

    m.check(
        "second migration on distributed tables (extended protocol)",
        migrate(extended),
    )
    if m.failed_named("second migration"):
        m.check("second migration on distributed tables (simple protocol)", migrate(simple))

    def schema_visible():
        for sql in (
            "SELECT table_name, column_name, data_type, is_nullable, column_default "
            "FROM information_schema.columns WHERE table_schema = 'public' "
            "ORDER BY table_name, ordinal_position",
            "SELECT tablename, indexname, indexdef FROM pg_indexes "
            "WHERE schemaname = 'public' ORDER BY 1, 2",
            "SELECT conrelid::regclass::text, conname, pg_get_constraintdef(oid) "
            "FROM pg_constraint WHERE connamespace = 'public'::regnamespace ORDER BY 1, 2",
        ):
            got = [norm(extended(c, sql).fetchall()) for c in both]
            expect_rows(sql, got[0], got[1])

    m.check("the schema as a migration tool reads it back", schema_visible)

    def reads():
        for sql, params in (
            (
                "SELECT c.email, o.order_id, o.amount, o.note FROM customers c "
                "JOIN orders o ON o.customer_id = c.id WHERE c.id = %s ORDER BY o.order_id",
                (12,),
            ),
            (
                "SELECT c.country, count(*), sum(l.qty) FROM customers c "
                "JOIN order_lines l ON l.customer_id = c.id GROUP BY c.country ORDER BY 1",
                None,
            ),
            (
                "SELECT n.name, count(*) FROM customers c JOIN countries n "
                "ON n.code = c.country GROUP BY n.name ORDER BY n.name",
                None,
            ),
            ("SELECT status, count(*), sum(amount) FROM orders GROUP BY status ORDER BY status", None),
        ):
            got = [norm(c.execute(sql, params).fetchall()) for c in both]
            expect_rows(sql, got[0], got[1])

    m.check("reads across the migrated tables", reads)

    def constraint(sql, params, want):
        def run():
            states = []
            for c in both:
                try:
                    extended(c, sql, params)
                    states.append(None)
                except psycopg.Error as e:
                    states.append(e.sqlstate)
            expect_equal(sql, states[0], states[1])
            expect_equal(sql, states[0], want)

        return run

    def unique_with_key():
        for c in both:
            extended(c, "CREATE TABLE tags (id bigint NOT NULL, label text NOT NULL)")
            extended(c, "CREATE UNIQUE INDEX tags_id_label ON tags (id, label)")
        expect_equal(
            "distribute",
            r.execute("SELECT create_distributed_table('tags', 'id')").fetchone(),
            ("",),
        )
        for c in both:
            c.execute("INSERT INTO tags VALUES (%s, 'a'), (%s, 'b')", (1, 1))

    m.check(
        "distribute a table whose unique index includes the shard key (simple protocol)",
        unique_with_key,
    )

    for name, sql, params, want in (
        ("foreign key to a co-located table", "INSERT INTO orders (customer_id, order_id, amount) VALUES (%s, 1, 5)", (999,), "23503"),
        ("foreign key to a reference table", "INSERT INTO customers (id, email, country) VALUES (%s, 'x@y', 'zz')", (500,), "23503"),
        ("composite foreign key", "INSERT INTO order_lines VALUES (%s, 9, 1, 's', 1)", (3,), "23503"),
        ("unique on a reference table", "INSERT INTO countries VALUES (%s, 'France')", ("xx",), "23505"),
        ("primary key", "INSERT INTO orders (customer_id, order_id, amount) VALUES (%s, 1, 5)", (4,), "23505"),
        ("CHECK of the first migration", "UPDATE order_lines SET qty = 0 WHERE customer_id = %s", (5,), "23514"),
        ("CHECK added on distributed tables", "UPDATE customers SET email = repeat('x', 50) || '@' WHERE id = %s", (6,), "23514"),
        ("NOT NULL", "UPDATE orders SET status = NULL WHERE customer_id = %s", (7,), "23502"),
        ("delete of a referenced row", "DELETE FROM customers WHERE id = %s", (8,), "23503"),
    ):
        m.check(f"error {want}: {name}", constraint(sql, params, want))

    r.close()
    p.close()
    m.finish()


if __name__ == "__main__":
    main(int(sys.argv[1]), int(sys.argv[2]))
