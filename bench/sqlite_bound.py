#!/usr/bin/env python3
"""What SQLite alone can do with our schema: the statements of one group commit
(src/store/group.rs, SQLite side), run from Python's sqlite3 on a database made by the
repository's migrations, with no server, socket or JSON. Each group inserts N messages across
50 conversations and marks the previous group's messages delivered, like the routing bench at
saturation; synchronous=FULL, WAL, the server's page cache.

    python3 bench/sqlite_bound.py --group 3200 --seconds 8

Prints messages/s, the time per group and the pages (log frames) each group writes.
"""

import argparse
import glob
import os
import random
import sqlite3
import tempfile
import time
import uuid
from datetime import datetime, timezone

HERE = os.path.dirname(os.path.abspath(__file__))
MIGRATIONS = os.path.join(HERE, "..", "migrations", "sqlite", "*.sql")


def now():
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds")


def placeholders(rows, width):
    return ",".join(["(" + ",".join("?" * width) + ")"] * rows)


def group(db, pairs, size, marks):
    """One group commit; returns its inbox events (user, seq) for the next group to mark."""
    at = now()
    messages = []
    for _ in range(size):
        conversation, sender, recipient = random.choice(pairs)
        messages.append((uuid.uuid4().bytes, conversation, sender, recipient, "text", "s", at))
    db.execute("BEGIN")
    stored = dict(
        db.execute(
            "INSERT INTO messages (id, conversation_id, sender_id, recipient_id, message_type, "
            "session_id, created_at) VALUES %s ON CONFLICT (id) DO NOTHING RETURNING id, seq"
            % placeholders(size, 7),
            [value for m in messages for value in m],
        ).fetchall()
    )
    received = {}
    for m in messages:
        received[(m[1], m[3])] = received.get((m[1], m[3]), 0) + 1
    db.execute(
        "WITH received (conversation_id, recipient_id, count) AS (VALUES %s) "
        "UPDATE conversations SET last_message_at = ?, "
        "unread_a = unread_a + coalesce((SELECT sum(r.count) FROM received r "
        "WHERE r.conversation_id = conversations.id AND r.recipient_id = user_a), 0), "
        "unread_b = unread_b + coalesce((SELECT sum(r.count) FROM received r "
        "WHERE r.conversation_id = conversations.id AND r.recipient_id <> user_a), 0) "
        "WHERE id IN (SELECT conversation_id FROM received)"
        % placeholders(len(received), 3),
        [value for (c, r), n in received.items() for value in (c, r, n)] + [at],
    )
    counts = {}
    for m in messages:
        counts[m[3]] = counts.get(m[3], 0) + 1
    users = sorted(counts)
    ends = dict(
        db.execute(
            "UPDATE users SET inbox_seq = inbox_seq + CASE id %s END WHERE id IN (%s) "
            "RETURNING id, inbox_seq"
            % (" ".join(["WHEN ? THEN ?"] * len(users)), ",".join("?" * len(users))),
            [value for u in users for value in (u, counts[u])] + users,
        ).fetchall()
    )
    next_seq = {u: ends[u] - counts[u] + 1 for u in users}
    entries = []
    for m in messages:
        entries.append((m[3], next_seq[m[3]], "message", stored[m[0]], at))
        next_seq[m[3]] += 1
    db.execute(
        "INSERT INTO inbox (user_id, seq, kind, message_seq, created_at) VALUES %s"
        % placeholders(size, 5),
        [value for e in entries for value in e],
    )
    if marks:
        marked = db.execute(
            "WITH reported (user_id, seq) AS (VALUES %s) UPDATE inbox SET delivered_at = ? "
            "FROM reported WHERE inbox.user_id = reported.user_id AND inbox.seq = reported.seq "
            "AND inbox.delivered_at IS NULL RETURNING inbox.message_seq, inbox.kind"
            % placeholders(len(marks), 2),
            [value for mark in marks for value in mark] + [at],
        ).fetchall()
        seqs = [seq for seq, kind in marked if kind == "message"]
        db.execute(
            "UPDATE messages SET delivered_at = ? WHERE delivered_at IS NULL AND seq IN (%s) "
            "RETURNING id, conversation_id, sender_id, recipient_id, delivered_at"
            % ",".join("?" * len(seqs)),
            [at] + seqs,
        ).fetchall()
    db.execute("COMMIT")
    return [(e[0], e[1]) for e in entries]


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--group", type=int, default=3200, help="messages per group commit")
    parser.add_argument("--seconds", type=float, default=8)
    parser.add_argument("--preload", type=int, default=200_000, help="messages stored first")
    parser.add_argument("--page-size", type=int, default=4096, help="bytes per database page")
    args = parser.parse_args()

    directory = tempfile.mkdtemp(prefix="kisse-bound-")
    path = os.path.join(directory, "bound.db")
    db = sqlite3.connect(path, isolation_level=None)
    db.execute("PRAGMA page_size=%d" % args.page_size)
    for pragma in ("journal_mode=WAL", "synchronous=FULL", "foreign_keys=ON",
                   "cache_size=-65536", "wal_autocheckpoint=0", "temp_store=MEMORY"):
        db.execute("PRAGMA " + pragma)
    for migration in sorted(glob.glob(MIGRATIONS)):
        db.executescript(open(migration).read())
    users = [uuid.uuid4().bytes for _ in range(100)]
    for u in users:
        db.execute(
            "INSERT INTO users (id, email, username, password_hash, last_seen, "
            "presence_updated_at, created_at) VALUES (?, ?, ?, 'x', ?, ?, ?)",
            (u, u.hex() + "@bench", u.hex(), now(), now(), now()),
        )
    pairs = []
    for i in range(50):
        a, b = users[2 * i], users[2 * i + 1]
        conversation = uuid.uuid4().bytes
        db.execute(
            "INSERT INTO conversations (id, user_a, user_b, created_at) VALUES (?, ?, ?, ?)",
            (conversation, min(a, b), max(a, b), now()),
        )
        pairs.append((conversation, a, b))
    marks = []
    for _ in range(args.preload // 1000):
        marks = group(db, pairs, 1000, marks)
    db.execute("PRAGMA wal_checkpoint(TRUNCATE)")

    log = path + "-wal"
    frame = 24 + db.execute("PRAGMA page_size").fetchone()[0]
    times, frames, marks, sent = [], [], [], 0
    start = time.perf_counter()
    while time.perf_counter() - start < args.seconds:
        before = os.path.getsize(log)
        began = time.perf_counter()
        marks = group(db, pairs, args.group, marks)
        times.append(time.perf_counter() - began)
        frames.append((os.path.getsize(log) - before) / frame)
        sent += args.group
    elapsed = time.perf_counter() - start
    times.sort()
    print(
        f"sqlite alone, groups of {args.group}: {sent / elapsed:,.0f} msg/s | "
        f"group p50 {times[len(times) // 2] * 1000:.1f} ms, "
        f"p90 {times[len(times) * 9 // 10] * 1000:.1f} ms | "
        f"{sum(frames) / len(frames):,.0f} pages written per group"
    )
    db.close()
    for f in glob.glob(path + "*"):
        os.unlink(f)
    os.rmdir(directory)


if __name__ == "__main__":
    main()
