// node-postgres in the driver matrix (tests/tests/drivers.rs, SPEC section 14).
//
// Usage: NODE_PATH=... node node_pg_matrix.js ROUTER_PORT PLAIN_PORT
// The matrix workload (the schema, data, reads and SQLSTATEs of
// tests/python/matrix_common.py) through a router and through a plain PostgreSQL with
// Debian's node-pg: parameterized queries (the extended protocol, unnamed), named
// prepared statements, pg-cursor (a portal read in batches), transactions and errors
// with their SQLSTATEs. A query without values is the simple protocol. Reads are
// compared as JSON of array rows.
//
// The program prints one line per check and OK at the end when none failed.

'use strict';

const { Client } = require('pg');
const Cursor = require('pg-cursor');

const N_ACCOUNTS = 200;
const KINDS = ['deposit', 'fee', 'transfer'];

const READS = [
  ['point read', 'SELECT id, owner, balance, region, created FROM accounts WHERE id = $1', [17]],
  ['point read, other shard', 'SELECT owner, balance FROM accounts WHERE id = $1', [123]],
  [
    'co-located point join',
    'SELECT a.owner, e.seq, e.kind, e.amount FROM accounts a JOIN events e ' +
      'ON e.account_id = a.id WHERE a.id = $1 ORDER BY e.seq',
    [42],
  ],
  ['fan-out count', 'SELECT count(*) FROM accounts', []],
  [
    'fan-out aggregates',
    'SELECT count(*), sum(balance), min(balance), max(owner), avg(region) FROM accounts',
    [],
  ],
  ['fan-out sum with parameter', 'SELECT sum(amount) FROM events WHERE amount > $1', [0]],
  [
    'fan-out ORDER BY LIMIT',
    'SELECT id, owner, balance FROM accounts WHERE region = $1 ORDER BY balance DESC, id LIMIT 7',
    [3],
  ],
  [
    'fan-out GROUP BY ORDER BY',
    'SELECT region, count(*), sum(balance), avg(balance) FROM accounts GROUP BY region ORDER BY region',
    [],
  ],
  [
    'fan-out GROUP BY with parameter',
    'SELECT kind, count(*), sum(amount), min(amount), max(amount) FROM events ' +
      'WHERE amount > $1 GROUP BY kind ORDER BY kind',
    [-5],
  ],
  [
    'fan-out co-located join GROUP BY',
    'SELECT a.region, count(*), sum(e.amount) FROM accounts a JOIN events e ' +
      'ON e.account_id = a.id GROUP BY a.region ORDER BY a.region',
    [],
  ],
  ['key IN list', 'SELECT id, region FROM accounts WHERE id IN (1, 2, 3, 150, 199) ORDER BY id', []],
  [
    'ORDER BY a column not selected',
    'SELECT owner FROM accounts WHERE created = $1 ORDER BY balance, id',
    ['2024-01-05'],
  ],
];

const ERRORS = [
  ['duplicate key', "INSERT INTO accounts (id, owner, balance, region) VALUES ($1, 'x', 1, 0)", [5], '23505'],
  ['check violation', 'UPDATE accounts SET balance = -1 WHERE id = $1', [6], '23514'],
  ['not-null violation on a fan-out write', 'UPDATE accounts SET owner = NULL WHERE region = $1', [2], '23502'],
  ['undefined table', 'SELECT * FROM no_such_table WHERE id = $1', [1], '42P01'],
  ['undefined column', 'SELECT no_such_column FROM accounts', [], '42703'],
  ['division by zero on every shard', 'SELECT sum(1 / (region - region)) FROM accounts', [], '22012'],
  ['syntax error', 'SELEC 1', [], '42601'],
];

let passed = 0;
const failed = [];
let r;
let p;
let ports;

function connect(port) {
  const c = new Client({ host: '127.0.0.1', port, user: 'postgres', database: 'postgres' });
  // A broken connection must fail the check that uses it, not the process.
  c.on('error', () => {});
  return c.connect().then(() => c);
}

async function reconnect() {
  for (const c of [r, p]) {
    if (c) {
      await c.end().catch(() => {});
    }
  }
  r = await connect(ports[0]);
  p = await connect(ports[1]);
}

async function check(name, body) {
  try {
    await body();
    passed++;
    console.log(`ok    node-pg: ${name}`);
  } catch (e) {
    failed.push(name);
    console.log(`FAIL  node-pg: ${name}: ${e.code ? '[' + e.code + '] ' : ''}${e.message}`);
    if (process.env.PGSHARD_DRIVER_TRACE) {
      console.log(e.stack);
    }
    await reconnect();
  }
}

function expectEqual(what, got, want) {
  const g = JSON.stringify(got);
  const w = JSON.stringify(want);
  if (g !== w) {
    throw new Error(`${what}: router gave ${g}, plain PostgreSQL ${w}`);
  }
}

/** Rows as arrays, with the column names. */
async function rows(c, text, values, name) {
  const res = await c.query({ text, values, rowMode: 'array', name });
  return { fields: res.fields.map((f) => f.name), rows: res.rows };
}

/** The same query on both servers (values given: the extended protocol), compared. */
async function same(text, values, name) {
  const got = await rows(r, text, values, name);
  expectEqual(text, got, await rows(p, text, values, name));
  if (got.rows.length === 0) {
    throw new Error(`${text}: no rows on either server`);
  }
  return got;
}

const messages = new Map();

/** The SQLSTATE a statement fails with (null when it succeeds); the message is kept
 * for the report of a mismatch. */
async function sqlState(c, text, values) {
  try {
    await c.query({ text, values });
    return null;
  } catch (e) {
    messages.set(e.code, e.message);
    return e.code;
  }
}

function accountRow(i) {
  const created = new Date(Date.UTC(2024, 0, 1 + (i % 30))).toISOString().slice(0, 10);
  return [i, `owner ${i}`, `${(i * 37) % 1000}.50`, i % 5, created];
}

async function main() {
  ports = process.argv.slice(2, 4).map(Number);
  await reconnect();

  await check('CREATE TABLE (simple protocol)', async () => {
    for (const c of [r, p]) {
      await c.query(
        'CREATE TABLE accounts (id bigint PRIMARY KEY, owner text NOT NULL, ' +
          'balance numeric(12,2) NOT NULL CHECK (balance >= 0), region int NOT NULL, created date)',
      );
      await c.query(
        'CREATE TABLE events (account_id bigint NOT NULL, seq int NOT NULL, kind text, ' +
          'amount int, PRIMARY KEY (account_id, seq))',
      );
    }
  });

  const distribute = [
    "SELECT create_distributed_table('accounts', 'id')",
    "SELECT create_distributed_table('events', 'account_id', colocate_with => 'accounts')",
  ];
  await check(
    'create_distributed_table (named statement: extended protocol)',
    async () => {
      for (const [i, sql] of distribute.entries()) {
        // void, as Citus' function: compared with a void function's value.
        expectEqual(sql, (await rows(r, sql, [], `dist${i}`)).rows, (await rows(p, 'SELECT pg_sleep(0)')).rows);
      }
    },
  );
  if (failed.some((n) => n.startsWith('create_distributed_table'))) {
    await check('create_distributed_table (simple protocol)', async () => {
      for (const sql of distribute) {
        expectEqual(sql, (await rows(r, sql)).rows, (await rows(p, 'SELECT pg_sleep(0)')).rows);
      }
    });
  }

  await check('bulk load: parameterized INSERTs in one multi-shard transaction', async () => {
    for (const c of [r, p]) {
      await c.query('BEGIN');
      for (let i = 1; i <= N_ACCOUNTS; i++) {
        await c.query(
          'INSERT INTO accounts (id, owner, balance, region, created) VALUES ($1, $2, $3, $4, $5)',
          accountRow(i),
        );
        for (let s = 1; s <= 3; s++) {
          await c.query('INSERT INTO events (account_id, seq, kind, amount) VALUES ($1, $2, $3, $4)', [
            i,
            s,
            KINDS[(i + s) % 3],
            ((i * s) % 50) - 10,
          ]);
        }
      }
      await c.query('COMMIT');
    }
    await same('SELECT id, owner, balance, region, created FROM accounts WHERE id = $1', [77]);
  });

  await check(
    'multi-row INSERT with parameters spanning shards',
    async () => {
      for (const c of [r, p]) {
        const res = await c.query(
          "INSERT INTO accounts (id, owner, balance, region) VALUES ($1, 'm', 1, 0), ($2, 'm', 1, 0), ($3, 'm', 1, 0)",
          [2001, 2002, 2003],
        );
        expectEqual('rowCount', res.rowCount, 3);
        await c.query('DELETE FROM accounts WHERE id IN (2001, 2002, 2003)');
      }
    },
  );

  const ddl = ['CREATE INDEX accounts_region ON accounts (region)', "ALTER TABLE events ADD COLUMN note text DEFAULT 'n'"];
  await check(
    'DDL on distributed tables (named statement: extended protocol)',
    async () => {
      for (const [i, sql] of ddl.entries()) {
        for (const c of [r, p]) {
          await c.query({ text: sql, name: `ddl${i}` });
        }
      }
    },
  );
  if (failed.some((n) => n.startsWith('DDL on'))) {
    await check('DDL on distributed tables (simple protocol)', async () => {
      for (const sql of ddl) {
        for (const c of [r, p]) {
          await c.query(sql.replace('INDEX ', 'INDEX IF NOT EXISTS ').replace('COLUMN ', 'COLUMN IF NOT EXISTS '));
        }
      }
      await same("SELECT count(*) FROM events WHERE note = 'n'");
    });
  }

  for (const [i, [name, sql, values]] of READS.entries()) {
    // The first three reads stay on one shard; the others fan out, and on the extended
    // protocol they meet the router's portal bug (not on every run: it depends on the
    // router's backend connections, so all of them wait for the fix).
    const fanout = i >= 3;
    // Without values a query is the simple protocol; with them, the extended one.
    await check(
      `query: ${name}`,
      () => same(sql, values.length ? values : undefined),
    );
    await check(
      `named prepared statement x3: ${name}`,
      async () => {
        for (let n = 0; n < 3; n++) {
          await same(sql, values, `read_${name.replace(/\W/g, '_')}`);
        }
      },
    );
  }

  async function cursorRows(c, sql, values, batch) {
    await c.query('BEGIN');
    const cursor = c.query(new Cursor(sql, values, { rowMode: 'array' }));
    const out = [];
    for (;;) {
      const got = await cursor.read(batch);
      if (got.length === 0) {
        break;
      }
      out.push(...got);
    }
    await cursor.close();
    await c.query('COMMIT');
    return out;
  }
  for (const [name, sql, values, batch] of [
    ['pg-cursor, one shard', 'SELECT seq, kind, amount FROM events WHERE account_id = $1 ORDER BY seq', [9], 2],
    ['pg-cursor, every shard', 'SELECT id, owner, balance FROM accounts WHERE region = $1 ORDER BY id', [4], 7],
    ['pg-cursor, every shard, GROUP BY', 'SELECT kind, count(*) FROM events WHERE amount > $1 GROUP BY kind ORDER BY kind', [0], 1],
  ]) {
    await check(name, async () => {
      const got = await cursorRows(r, sql, values, batch);
      expectEqual(sql, got, await cursorRows(p, sql, values, batch));
      if (got.length === 0) {
        throw new Error(`${sql}: no rows`);
      }
    });
  }

  await check('multi-shard transaction, committed', async () => {
    for (const c of [r, p]) {
      await c.query('BEGIN');
      await c.query('UPDATE accounts SET balance = balance - $1 WHERE id = $2', [4, 1]);
      await c.query('UPDATE accounts SET balance = balance + $1 WHERE id = $2', [4, 2]);
      await c.query('UPDATE accounts SET balance = balance + $1 WHERE id = $2', [1, 3]);
      await c.query("INSERT INTO events (account_id, seq, kind, amount) VALUES ($1, 9, 'tx', 1)", [4]);
      await c.query("INSERT INTO events (account_id, seq, kind, amount) VALUES ($1, 9, 'tx', 1)", [5]);
      await c.query('UPDATE accounts SET region = region WHERE region = $1', [1]);
      await c.query('COMMIT');
    }
    await same('SELECT id, balance FROM accounts WHERE id <= $1 ORDER BY id', [5]);
    expectEqual('tx events', (await same('SELECT account_id FROM events WHERE seq = 9 ORDER BY 1')).rows.length, 2);
  });

  await check('multi-shard transaction, rolled back', async () => {
    const before = await same('SELECT sum(balance), count(*) FROM accounts');
    await r.query('BEGIN');
    const upd = await r.query('UPDATE accounts SET balance = balance + $1', [1]);
    expectEqual('rows updated', upd.rowCount, N_ACCOUNTS);
    await r.query('DELETE FROM accounts WHERE id IN (7, 8, 9)');
    const mid = await rows(r, 'SELECT count(*) FROM accounts');
    expectEqual('in the transaction', mid.rows, [[String(N_ACCOUNTS - 3)]]);
    await r.query('ROLLBACK');
    expectEqual('after rollback', await same('SELECT sum(balance), count(*) FROM accounts'), before);
  });

  for (const [name, sql, values, want] of ERRORS) {
    await check(
      `error ${want}: ${name}`,
      async () => {
        const got = await sqlState(r, sql, values.length ? values : undefined);
        const routerMessage = messages.get(got);
        const plain = await sqlState(p, sql, values.length ? values : undefined);
        expectEqual(`${sql} (router: ${routerMessage})`, got, plain);
        expectEqual(sql, got, want);
      },
    );
  }

  await check('error inside a transaction, then 25P02, then rollback', async () => {
    const got = [];
    for (const c of [r, p]) {
      const states = [];
      await c.query('BEGIN');
      await c.query('UPDATE accounts SET balance = balance + 1 WHERE id = $1', [20]);
      states.push(await sqlState(c, 'UPDATE accounts SET balance = -5 WHERE id = $1', [21]));
      states.push(await sqlState(c, 'SELECT count(*) FROM accounts'));
      await c.query('ROLLBACK');
      states.push((await rows(c, 'SELECT balance FROM accounts WHERE id = $1', [20])).rows);
      got.push(states);
    }
    expectEqual('in a failed transaction', got[0], got[1]);
    expectEqual('SQLSTATEs', got[0].slice(0, 2), ['23514', '25P02']);
  });

  await r.end();
  await p.end();
  console.log(
    `node-pg: ${passed} passed, ${failed.length} failed`,
  );
  if (failed.length > 0) {
    process.exit(1);
  }
  console.log('OK');
}

main().catch((e) => {
  console.log(`node-pg: ${e.stack}`);
  process.exit(1);
});
