#!/usr/bin/env python3
"""Opens N idle client connections to a PostgreSQL-protocol endpoint and reports the
memory a server process spends on them (issue 16, many clients).

Each connection completes the startup handshake (StartupMessage, trust or cleartext
authentication, until ReadyForQuery) and then stays idle. The server's resident set
(VmRSS from /proc/PID/status) is read before the first connection and once all are
open; the difference divided by N is the memory per idle client. While they are held,
one more connection runs `SELECT 1` to show the server still answers.

usage: idle_clients.py HOST PORT PID N [USER] [DATABASE]
prints: key=value lines (opened, failed, rss_before_kb, rss_after_kb, kb_per_client,
        select_ok)
"""
import asyncio
import resource
import struct
import sys

# A handshake not answered within this many seconds counts as failed (a server out of
# file descriptors leaves new connections unaccepted in the listen queue).
HANDSHAKE_TIMEOUT = 5


def rss_kb(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise RuntimeError("no VmRSS")


def startup_message(user, database):
    body = struct.pack("!i", 196608)
    for k, v in (("user", user), ("database", database)):
        body += k.encode() + b"\0" + v.encode() + b"\0"
    body += b"\0"
    return struct.pack("!i", len(body) + 4) + body


async def read_message(reader):
    head = await reader.readexactly(5)
    tag, length = head[:1], struct.unpack("!i", head[1:])[0]
    return tag, await reader.readexactly(length - 4)


async def connect(host, port, user, database):
    reader, writer = await asyncio.open_connection(host, port)
    writer.write(startup_message(user, database))
    await writer.drain()
    while True:
        tag, body = await read_message(reader)
        if tag == b"E":
            writer.close()
            raise RuntimeError(body.split(b"\0M", 1)[-1].split(b"\0", 1)[0].decode())
        if tag == b"R" and struct.unpack("!i", body[:4])[0] == 3:  # cleartext password
            pw = b"\0"
            writer.write(b"p" + struct.pack("!i", len(pw) + 4) + pw)
            await writer.drain()
        if tag == b"Z":
            return reader, writer


async def select_one(host, port, user, database):
    reader, writer = await connect(host, port, user, database)
    q = b"SELECT 1\0"
    writer.write(b"Q" + struct.pack("!i", len(q) + 4) + q)
    await writer.drain()
    ok = False
    while True:
        tag, body = await read_message(reader)
        if tag == b"D":
            ok = body == struct.pack("!hi", 1, 1) + b"1"
        if tag == b"Z":
            break
    writer.write(b"X" + struct.pack("!i", 4))
    writer.close()
    return ok


async def main():
    host, port, pid, n = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
    user = sys.argv[5] if len(sys.argv) > 5 else "postgres"
    database = sys.argv[6] if len(sys.argv) > 6 else "postgres"
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    before = rss_kb(pid)
    conns, failed, errors = [], 0, {}
    batch = 200  # at most this many handshakes in flight
    for start in range(0, n, batch):
        results = await asyncio.gather(
            *(
                asyncio.wait_for(connect(host, port, user, database), HANDSHAKE_TIMEOUT)
                for _ in range(min(batch, n - start))
            ),
            return_exceptions=True,
        )
        for r in results:
            if isinstance(r, BaseException):
                failed += 1
                text = str(r) or type(r).__name__
                errors[text] = errors.get(text, 0) + 1
            else:
                conns.append(r)
        if all(isinstance(r, BaseException) for r in results):
            # The server takes no more clients: report what it holds.
            errors["stopped opening after a batch that failed entirely"] = 1
            break
    after = rss_kb(pid)
    try:
        ok = await asyncio.wait_for(select_one(host, port, user, database), HANDSHAKE_TIMEOUT)
    except (OSError, asyncio.TimeoutError) as e:
        ok = "no (" + (str(e) or type(e).__name__) + ")"
    print(f"opened={len(conns)}")
    print(f"failed={failed}")
    for e, c in errors.items():
        print(f"error={c}x {e}")
    print(f"rss_before_kb={before}")
    print(f"rss_after_kb={after}")
    print(f"kb_per_client={(after - before) / max(len(conns), 1):.2f}")
    print(f"select_ok={ok}")
    for _, w in conns:
        w.close()


asyncio.run(main())
