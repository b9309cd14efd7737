// pgjdbc in the driver matrix (tests/tests/drivers.rs, SPEC section 14).
//
// Usage: java -cp .:postgresql.jar JdbcMatrix ROUTER_PORT PLAIN_PORT
// The matrix workload (the same schema, data, reads and SQLSTATEs as
// tests/python/matrix_common.py) through a router and through a plain PostgreSQL, the
// way a Java application talks: Statement and PreparedStatement (pgjdbc uses the
// extended protocol for both, and server-side prepared statements from the fifth
// execution on), executeBatch, reWriteBatchedInserts, setFetchSize cursors (portals
// read in batches inside a transaction), transactions, DDL, and errors with their
// SQLSTATEs. Reads are compared row by row as text.
//
// The program prints one line per check and OK at the end when none failed.

import java.math.BigDecimal;
import java.sql.Connection;
import java.sql.Date;
import java.sql.DriverManager;
import java.sql.PreparedStatement;
import java.sql.ResultSet;
import java.sql.ResultSetMetaData;
import java.sql.SQLException;
import java.sql.Statement;
import java.time.LocalDate;
import java.util.ArrayList;
import java.util.List;
import java.util.Objects;
import java.util.Properties;

public class JdbcMatrix {
    static final int N_ACCOUNTS = 200;
    static final String[] KINDS = {"deposit", "fee", "transfer"};

    interface Check {
        void run() throws Exception;
    }

    static int passed = 0;
    static List<String> failed = new ArrayList<>();
    static String routerUrl;
    static String plainUrl;
    static Connection r;
    static Connection p;

    static Connection connect(String url, Properties extra) throws SQLException {
        Properties props = new Properties();
        props.setProperty("user", "postgres");
        if (extra != null) {
            props.putAll(extra);
        }
        return DriverManager.getConnection(url, props);
    }

    static void reconnect() throws SQLException {
        for (Connection c : new Connection[] {r, p}) {
            if (c != null) {
                try {
                    c.close();
                } catch (SQLException e) {
                    // already broken: that is why we reconnect
                }
            }
        }
        r = connect(routerUrl, null);
        p = connect(plainUrl, null);
    }

    /** Run a check. */
    static void check(String name, Check body) throws SQLException {
        try {
            body.run();
            passed++;
            System.out.println("ok    jdbc: " + name);
        } catch (Exception e) {
            failed.add(name);
            String state = e instanceof SQLException ? " [" + ((SQLException) e).getSQLState() + "]" : "";
            System.out.println("FAIL  jdbc: " + name + ": " + e.getClass().getSimpleName() + state + ": " + e.getMessage());
            if (System.getenv("PGSHARD_DRIVER_TRACE") != null) {
                e.printStackTrace(System.out);
            }
            reconnect();
        }
    }

    static void expectEqual(String what, Object got, Object want) {
        if (!Objects.equals(got, want)) {
            throw new AssertionError(what + ": router gave " + got + ", plain PostgreSQL " + want);
        }
    }

    /** Every row of a result as text, in order. */
    static List<List<String>> rows(ResultSet rs) throws SQLException {
        List<List<String>> out = new ArrayList<>();
        ResultSetMetaData md = rs.getMetaData();
        while (rs.next()) {
            List<String> row = new ArrayList<>();
            for (int i = 1; i <= md.getColumnCount(); i++) {
                row.add(md.getColumnLabel(i) + "=" + rs.getString(i));
            }
            out.add(row);
        }
        return out;
    }

    static List<List<String>> query(Connection c, String sql, Object... params) throws SQLException {
        try (PreparedStatement ps = c.prepareStatement(sql)) {
            for (int i = 0; i < params.length; i++) {
                ps.setObject(i + 1, params[i]);
            }
            try (ResultSet rs = ps.executeQuery()) {
                return rows(rs);
            }
        }
    }

    /** The same query on both servers, compared. */
    static List<List<String>> same(String sql, Object... params) throws SQLException {
        List<List<String>> got = query(r, sql, params);
        expectEqual(sql, got, query(p, sql, params));
        return got;
    }

    static void update(Connection c, String sql, Object... params) throws SQLException {
        try (PreparedStatement ps = c.prepareStatement(sql)) {
            for (int i = 0; i < params.length; i++) {
                ps.setObject(i + 1, params[i]);
            }
            ps.executeUpdate();
        }
    }

    /** PreparedStatement.execute(): no row limit on the Execute (executeUpdate asks for one). */
    static void execute(Connection c, String sql, Object... params) throws SQLException {
        try (PreparedStatement ps = c.prepareStatement(sql)) {
            for (int i = 0; i < params.length; i++) {
                ps.setObject(i + 1, params[i]);
            }
            ps.execute();
        }
    }

    /** A connection on the simple query protocol, for what the router refuses on the extended one. */
    static void simple(String... sqls) throws SQLException {
        Properties props = new Properties();
        props.setProperty("preferQueryMode", "simple");
        try (Connection c = connect(routerUrl, props); Statement s = c.createStatement()) {
            for (String sql : sqls) {
                s.execute(sql);
            }
        }
    }


    static void both(String sql, Object... params) throws SQLException {
        update(r, sql, params);
        update(p, sql, params);
    }

    static String sqlState(Connection c, String sql, Object... params) {
        try {
            query(c, sql, params);
            return null;
        } catch (SQLException e) {
            return e.getSQLState();
        }
    }

    // The reads of matrix_common.READS: point reads first, then fan-out reads.
    static final Object[][] READS = {
        {"point read", "SELECT id, owner, balance, region, created FROM accounts WHERE id = ?", 17L},
        {"point read, other shard", "SELECT owner, balance FROM accounts WHERE id = ?", 123L},
        {"co-located point join", "SELECT a.owner, e.seq, e.kind, e.amount FROM accounts a JOIN events e "
            + "ON e.account_id = a.id WHERE a.id = ? ORDER BY e.seq", 42L},
        {"fan-out count", "SELECT count(*) FROM accounts"},
        {"fan-out aggregates", "SELECT count(*), sum(balance), min(balance), max(owner), avg(region) FROM accounts"},
        {"fan-out sum with parameter", "SELECT sum(amount) FROM events WHERE amount > ?", 0},
        {"fan-out ORDER BY LIMIT", "SELECT id, owner, balance FROM accounts WHERE region = ? "
            + "ORDER BY balance DESC, id LIMIT 7", 3},
        {"fan-out GROUP BY ORDER BY", "SELECT region, count(*), sum(balance), avg(balance) FROM accounts "
            + "GROUP BY region ORDER BY region"},
        {"fan-out GROUP BY with parameter", "SELECT kind, count(*), sum(amount), min(amount), max(amount) "
            + "FROM events WHERE amount > ? GROUP BY kind ORDER BY kind", -5},
        {"fan-out co-located join GROUP BY", "SELECT a.region, count(*), sum(e.amount) FROM accounts a "
            + "JOIN events e ON e.account_id = a.id GROUP BY a.region ORDER BY a.region"},
        {"key IN list", "SELECT id, region FROM accounts WHERE id IN (1, 2, 3, 150, 199) ORDER BY id"},
        {"ORDER BY a column not selected", "SELECT owner FROM accounts WHERE created = ? ORDER BY balance, id",
            Date.valueOf(LocalDate.of(2024, 1, 5))},
    };

    static Object[] paramsOf(Object[] read) {
        Object[] params = new Object[read.length - 2];
        System.arraycopy(read, 2, params, 0, params.length);
        return params;
    }

    public static void main(String[] args) throws Exception {
        routerUrl = "jdbc:postgresql://127.0.0.1:" + args[0] + "/postgres";
        plainUrl = "jdbc:postgresql://127.0.0.1:" + args[1] + "/postgres";
        reconnect();

        check("DDL: CREATE TABLE through Statement", () -> {
            for (Connection c : new Connection[] {r, p}) {
                try (Statement s = c.createStatement()) {
                    s.execute("CREATE TABLE accounts (id bigint PRIMARY KEY, owner text NOT NULL, "
                        + "balance numeric(12,2) NOT NULL CHECK (balance >= 0), region int NOT NULL, created date)");
                    s.execute("CREATE TABLE events (account_id bigint NOT NULL, seq int NOT NULL, kind text, "
                        + "amount int, PRIMARY KEY (account_id, seq))");
                }
            }
        });

        String[] distribute = {
            "SELECT create_distributed_table('accounts', 'id')",
            "SELECT create_distributed_table('events', 'account_id', colocate_with => 'accounts')",
        };
        check("create_distributed_table through Statement (extended protocol)", () -> {
            try (Statement s = r.createStatement()) {
                for (String sql : distribute) {
                    try (ResultSet rs = s.executeQuery(sql)) {
                        expectEqual(sql, rows(rs).toString(), "[[create_distributed_table=]]");
                    }
                }
            }
        });

        if (failed.contains("create_distributed_table through Statement (extended protocol)")) {
            // The rest needs distributed tables: the simple query protocol, the one
            // place this program asks pgjdbc for it.
            check("create_distributed_table (preferQueryMode=simple)", () -> {
                Properties simple = new Properties();
                simple.setProperty("preferQueryMode", "simple");
                try (Connection c = connect(routerUrl, simple); Statement s = c.createStatement()) {
                    for (String sql : distribute) {
                        try (ResultSet rs = s.executeQuery(sql)) {
                            expectEqual(sql, rows(rs).toString(), "[[create_distributed_table=]]");
                        }
                    }
                }
            });
        }

        check("bulk load: PreparedStatement executeBatch across shards", () -> {
            for (Connection c : new Connection[] {r, p}) {
                try (PreparedStatement ps = c.prepareStatement(
                        "INSERT INTO accounts (id, owner, balance, region, created) VALUES (?, ?, ?, ?, ?)")) {
                    for (long i = 1; i <= N_ACCOUNTS; i++) {
                        ps.setLong(1, i);
                        ps.setString(2, "owner " + i);
                        ps.setBigDecimal(3, new BigDecimal(i * 37 % 1000).add(new BigDecimal("0.50")));
                        ps.setInt(4, (int) (i % 5));
                        ps.setDate(5, Date.valueOf(LocalDate.of(2024, 1, 1).plusDays(i % 30)));
                        ps.addBatch();
                    }
                    int[] counts = ps.executeBatch();
                    expectEqual("batch size", counts.length, N_ACCOUNTS);
                }
            }
            same("SELECT id, owner, balance, region, created FROM accounts WHERE id = ?", 77L);
        });

        check("bulk load: executeBatch with reWriteBatchedInserts, one shard", () -> {
            Properties rewrite = new Properties();
            rewrite.setProperty("reWriteBatchedInserts", "true");
            for (String url : new String[] {routerUrl, plainUrl}) {
                try (Connection c = connect(url, rewrite);
                        PreparedStatement ps = c.prepareStatement(
                            "INSERT INTO events (account_id, seq, kind, amount) VALUES (?, ?, ?, ?)")) {
                    // Events on one account: a rewritten multi-row INSERT on one shard.
                    for (int s = 1; s <= 3; s++) {
                        ps.setLong(1, 1);
                        ps.setInt(2, s);
                        ps.setString(3, KINDS[(1 + s) % 3]);
                        ps.setInt(4, s % 50 - 10);
                        ps.addBatch();
                    }
                    ps.executeBatch();
                }
            }
            same("SELECT seq, kind, amount FROM events WHERE account_id = ? ORDER BY seq", 1L);
        });

        check("bulk load: reWriteBatchedInserts spanning shards", () -> {
            Properties rewrite = new Properties();
            rewrite.setProperty("reWriteBatchedInserts", "true");
            for (String url : new String[] {routerUrl, plainUrl}) {
                try (Connection c = connect(url, rewrite);
                        PreparedStatement ps = c.prepareStatement(
                            "INSERT INTO events (account_id, seq, kind, amount) VALUES (?, ?, ?, ?)")) {
                    for (long i = 2; i <= N_ACCOUNTS; i++) {
                        for (int s = 1; s <= 3; s++) {
                            ps.setLong(1, i);
                            ps.setInt(2, s);
                            ps.setString(3, KINDS[(int) ((i + s) % 3)]);
                            ps.setInt(4, (int) ((i * s) % 50 - 10));
                            ps.addBatch();
                        }
                    }
                    ps.executeBatch();
                }
            }
            same("SELECT count(*), sum(amount) FROM events");
        });
        if (failed.contains("bulk load: reWriteBatchedInserts spanning shards")
                || failed.contains("bulk load: executeBatch with reWriteBatchedInserts, one shard")) {
            check("bulk load: executeBatch spanning shards (no rewrite)", () -> {
                execute(r, "DELETE FROM events");
                execute(p, "DELETE FROM events");
                for (Connection c : new Connection[] {r, p}) {
                    try (PreparedStatement ps = c.prepareStatement(
                            "INSERT INTO events (account_id, seq, kind, amount) VALUES (?, ?, ?, ?)")) {
                        for (long i = 1; i <= N_ACCOUNTS; i++) {
                            for (int s = 1; s <= 3; s++) {
                                ps.setLong(1, i);
                                ps.setInt(2, s);
                                ps.setString(3, KINDS[(int) ((i + s) % 3)]);
                                ps.setInt(4, (int) ((i * s) % 50 - 10));
                                ps.addBatch();
                            }
                        }
                        ps.executeBatch();
                    }
                }
                same("SELECT count(*), sum(amount) FROM events");
            });
        }

        check("PreparedStatement INSERT without a column list", () -> {
            for (Connection c : new Connection[] {r, p}) {
                try (PreparedStatement ps = c.prepareStatement("INSERT INTO accounts VALUES (?, ?, ?, ?, ?)")) {
                    for (long id = 1001; id <= 1004; id++) {
                        ps.setLong(1, id);
                        ps.setString(2, "no columns");
                        ps.setBigDecimal(3, BigDecimal.ONE);
                        ps.setInt(4, 1);
                        ps.setNull(5, java.sql.Types.DATE);
                        expectEqual("rows", ps.executeUpdate(), 1);
                    }
                }
            }
            same("SELECT id, owner FROM accounts WHERE id > ? ORDER BY id", 1000L);
            execute(r, "DELETE FROM accounts WHERE id > 1000");
            execute(p, "DELETE FROM accounts WHERE id > 1000");
        });

        check("DDL on distributed tables: CREATE INDEX, ALTER TABLE", () -> {
            for (Connection c : new Connection[] {r, p}) {
                try (Statement s = c.createStatement()) {
                    s.execute("CREATE INDEX accounts_region ON accounts (region)");
                    s.execute("ALTER TABLE events ADD COLUMN note text DEFAULT 'n'");
                }
            }
            same("SELECT count(*) FROM events WHERE note = 'n'");
        });
        if (failed.contains("DDL on distributed tables: CREATE INDEX, ALTER TABLE")) {
            check("DDL on distributed tables (preferQueryMode=simple)", () -> {
                try (Statement s = p.createStatement()) {
                    s.execute("CREATE INDEX IF NOT EXISTS accounts_region ON accounts (region)");
                    s.execute("ALTER TABLE events ADD COLUMN IF NOT EXISTS note text DEFAULT 'n'");
                }
                simple("CREATE INDEX IF NOT EXISTS accounts_region ON accounts (region)",
                    "ALTER TABLE events ADD COLUMN IF NOT EXISTS note text DEFAULT 'n'");
                same("SELECT count(*) FROM events WHERE note = 'n'");
            });
        }

        for (Object[] read : READS) {
            String name = (String) read[0];
            String sql = (String) read[1];
            Object[] params = paramsOf(read);
            // Six executions of one PreparedStatement: pgjdbc switches to a named
            // server-side statement (and binary results) from the fifth on.
            check("PreparedStatement x6: " + name, () -> {
                try (PreparedStatement pr = r.prepareStatement(sql); PreparedStatement pp = p.prepareStatement(sql)) {
                    for (int n = 0; n < 6; n++) {
                        for (int i = 0; i < params.length; i++) {
                            pr.setObject(i + 1, params[i]);
                            pp.setObject(i + 1, params[i]);
                        }
                        List<List<String>> got;
                        try (ResultSet rs = pr.executeQuery()) {
                            got = rows(rs);
                        }
                        try (ResultSet rs = pp.executeQuery()) {
                            expectEqual(name + " #" + n, got, rows(rs));
                        }
                        if (got.isEmpty()) {
                            throw new AssertionError(name + ": no rows");
                        }
                    }
                }
            });
        }

        check("Statement: fan-out read without parameters", () -> {
            String sql = "SELECT region, count(*), sum(balance) FROM accounts GROUP BY region ORDER BY region";
            List<List<String>> got;
            try (Statement s = r.createStatement(); ResultSet rs = s.executeQuery(sql)) {
                got = rows(rs);
            }
            try (Statement s = p.createStatement(); ResultSet rs = s.executeQuery(sql)) {
                expectEqual(sql, got, rows(rs));
            }
        });

        String[][] cursors = {
            {"setFetchSize cursor, one shard", "SELECT seq, kind, amount FROM events WHERE account_id = ? ORDER BY seq", "9"},
            {"setFetchSize cursor, every shard", "SELECT id, owner, balance FROM accounts WHERE region = ? ORDER BY id", "4"},
        };
        for (String[] cur : cursors) {
            check(cur[0], () -> {
                List<List<String>> got = null;
                for (Connection c : new Connection[] {r, p}) {
                    c.setAutoCommit(false);
                    try (PreparedStatement ps = c.prepareStatement(cur[1])) {
                        ps.setFetchSize(2);
                        ps.setObject(1, cur[1].contains("account_id") ? (Object) Long.valueOf(cur[2]) : (Object) Integer.valueOf(cur[2]));
                        try (ResultSet rs = ps.executeQuery()) {
                            List<List<String>> rowsOf = rows(rs);
                            if (rowsOf.isEmpty()) {
                                throw new AssertionError(cur[1] + ": no rows");
                            }
                            if (got == null) {
                                got = rowsOf;
                            } else {
                                expectEqual(cur[1], got, rowsOf);
                            }
                        }
                    }
                    c.commit();
                    c.setAutoCommit(true);
                }
            });
        }

        check("executeBatch UPDATE across shards", () -> {
            for (Connection c : new Connection[] {r, p}) {
                try (PreparedStatement ps = c.prepareStatement("UPDATE accounts SET balance = balance + ? WHERE id = ?")) {
                    for (long i = 1; i <= 60; i++) {
                        ps.setBigDecimal(1, new BigDecimal(i % 3));
                        ps.setLong(2, i);
                        ps.addBatch();
                    }
                    int[] counts = ps.executeBatch();
                    expectEqual("batch", counts.length, 60);
                }
            }
            same("SELECT sum(balance) FROM accounts");
        });

        check("multi-shard transaction, committed", () -> {
            for (Connection c : new Connection[] {r, p}) {
                c.setAutoCommit(false);
                update(c, "UPDATE accounts SET balance = balance - ? WHERE id = ?", new BigDecimal(4), 1L);
                update(c, "UPDATE accounts SET balance = balance + ? WHERE id = ?", new BigDecimal(4), 2L);
                update(c, "UPDATE accounts SET balance = balance + ? WHERE id = ?", new BigDecimal(1), 3L);
                update(c, "INSERT INTO events (account_id, seq, kind, amount) VALUES (?, 9, 'tx', 1)", 4L);
                update(c, "INSERT INTO events (account_id, seq, kind, amount) VALUES (?, 9, 'tx', 1)", 5L);
                c.commit();
                c.setAutoCommit(true);
            }
            same("SELECT id, balance FROM accounts WHERE id <= ? ORDER BY id", 5L);
            expectEqual("tx events", same("SELECT account_id FROM events WHERE seq = 9 ORDER BY 1").size(), 2);
        });

        check("multi-shard transaction, rolled back", () -> {
            List<List<String>> before = same("SELECT sum(balance), count(*) FROM accounts");
            r.setAutoCommit(false);
            execute(r, "UPDATE accounts SET balance = balance + ?", new BigDecimal(1));
            execute(r, "DELETE FROM accounts WHERE id IN (7, 8, 9)");
            expectEqual("in the transaction", query(r, "SELECT count(*) FROM accounts").toString(),
                "[[count=" + (Integer.parseInt(before.get(0).get(1).substring(6)) - 3) + "]]");
            r.rollback();
            r.setAutoCommit(true);
            expectEqual("after rollback", same("SELECT sum(balance), count(*) FROM accounts"), before);
        });

        check("executeUpdate of a multi-shard UPDATE, counts", () -> {
            for (Connection c : new Connection[] {r, p}) {
                try (PreparedStatement ps = c.prepareStatement("UPDATE accounts SET region = region WHERE region = ?")) {
                    ps.setInt(1, 1);
                    expectEqual("rows updated", ps.executeUpdate(), 40);
                }
            }
        });

        check("executeUpdate of a multi-shard UPDATE in a transaction", () -> {
            r.setAutoCommit(false);
            update(r, "UPDATE accounts SET balance = balance + ?", new BigDecimal(1));
            r.rollback();
            r.setAutoCommit(true);
        });

        Object[][] errors = {
            {"duplicate key", "INSERT INTO accounts (id, owner, balance, region) VALUES (?, 'x', 1, 0)", "23505", 5L},
            {"check violation", "UPDATE accounts SET balance = -1 WHERE id = ?", "23514", 6L},
            {"not-null violation on a fan-out write", "UPDATE accounts SET owner = NULL WHERE region = ?", "23502", 2},
            {"undefined table", "SELECT * FROM no_such_table WHERE id = ?", "42P01", 1L},
            {"undefined column", "SELECT no_such_column FROM accounts", "42703"},
            {"division by zero on every shard", "SELECT sum(1 / (region - region)) FROM accounts", "22012"},
            {"syntax error", "SELEC 1", "42601"},
        };
        for (Object[] e : errors) {
            String sql = (String) e[1];
            Object[] params = new Object[e.length - 3];
            System.arraycopy(e, 3, params, 0, params.length);
            check("error " + e[2] + ": " + e[0], () -> {
                String got = sqlState(r, sql, params);
                expectEqual(sql, got, sqlState(p, sql, params));
                expectEqual(sql, got, e[2]);
            });
        }

        check("error inside a transaction, then 25P02, then rollback", () -> {
            List<String> got = null;
            for (Connection c : new Connection[] {r, p}) {
                List<String> states = new ArrayList<>();
                c.setAutoCommit(false);
                update(c, "UPDATE accounts SET balance = balance + 1 WHERE id = ?", 20L);
                states.add(sqlState(c, "UPDATE accounts SET balance = -5 WHERE id = ? RETURNING id", 21L));
                states.add(sqlState(c, "SELECT count(*) FROM accounts"));
                c.rollback();
                c.setAutoCommit(true);
                states.add(query(c, "SELECT balance FROM accounts WHERE id = ?", 20L).toString());
                if (got == null) {
                    got = states;
                } else {
                    expectEqual("in a failed transaction", got, states);
                }
            }
            expectEqual("SQLSTATEs", got.subList(0, 2), List.of("23514", "25P02"));
        });

        check("TRUNCATE a distributed table", () -> {
            for (Connection c : new Connection[] {r, p}) {
                try (Statement s = c.createStatement()) {
                    s.execute("TRUNCATE events");
                }
            }
            expectEqual("after TRUNCATE", same("SELECT count(*) FROM events").toString(), "[[count=0]]");
        });

        r.close();
        p.close();
        System.out.println("jdbc: " + passed + " passed, " + failed.size() + " failed");
        if (!failed.isEmpty()) {
            System.exit(1);
        }
        System.out.println("OK");
    }
}
