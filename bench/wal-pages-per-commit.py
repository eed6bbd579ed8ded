#!/usr/bin/env python3
"""How many WAL pages one SQLite commit of webhook events writes.

A model of the webhook outbox's write path, without the server: the
`webhook_events` table and its indexes as schema version 7 creates them
(crates/tokengate-store/src/schema.rs), 20,000 events already stored, then
commits of BATCH new events each, with the automatic checkpoint off so that
the WAL's growth is exactly what the commits wrote. Prints, per batch size
and payload size, the pages each commit appended to the WAL and the WAL
bytes per event; also without AUTOINCREMENT and the `received_at` index,
and with random (not nearly sequential) event ids.

The server writes about twice the WAL bytes to disk: a checkpoint copies
each page once more into the database file.

Usage: python3 bench/wal-pages-per-commit.py [DIR]   (DIR: scratch space, /tmp)
"""
import os
import random
import sqlite3
import string
import sys

PAGE = 4096
FRAME = PAGE + 24  # WAL frame header
WAL_HEADER = 32


def model(path, batch, payload_len, autoinc=True, received_idx=True, random_ids=False, n=6000):
    for suffix in ("", "-wal", "-shm"):
        try:
            os.remove(path + suffix)
        except FileNotFoundError:
            pass
    db = sqlite3.connect(path, isolation_level=None)
    db.execute(f"PRAGMA page_size = {PAGE}")
    db.execute("PRAGMA journal_mode = WAL")
    db.execute("PRAGMA wal_autocheckpoint = 0")
    db.execute("PRAGMA synchronous = NORMAL")
    pk = "seq INTEGER PRIMARY KEY" + (" AUTOINCREMENT" if autoinc else "")
    db.execute(
        f"CREATE TABLE webhook_events ({pk}, source TEXT NOT NULL, event_id TEXT NOT NULL, "
        "event_type TEXT, received_at INTEGER NOT NULL, payload BLOB NOT NULL, "
        "app_state TEXT NOT NULL, app_attempts INTEGER NOT NULL, app_next_at INTEGER NOT NULL, "
        "app_error TEXT, nats_state TEXT NOT NULL, nats_attempts INTEGER NOT NULL, "
        "nats_next_at INTEGER NOT NULL, nats_error TEXT, UNIQUE (source, event_id))"
    )
    db.execute("CREATE INDEX webhook_events_app ON webhook_events (source, seq) WHERE app_state = 'pending'")
    db.execute("CREATE INDEX webhook_events_nats ON webhook_events (source, seq) WHERE nats_state = 'pending'")
    if received_idx:
        db.execute("CREATE INDEX webhook_events_received ON webhook_events (received_at)")
    payload = os.urandom(payload_len)

    def insert(i):
        if random_ids:
            eid = "".join(random.choice(string.ascii_letters) for _ in range(24))
        else:  # as bench/webhook.lua: two load threads, a counter each
            eid = f"evt-{i % 2 + 1}-{i // 2}"
        db.execute(
            "INSERT INTO webhook_events (source, event_id, event_type, received_at, payload, "
            "app_state, app_attempts, app_next_at, nats_state, nats_attempts, nats_next_at) "
            "VALUES ('bench', ?, 'charge.succeeded', ?, ?, 'none', 0, 0, 'none', 0, 0)",
            (eid, 1_700_000_000_000 + i, payload),
        )

    i = 0
    for _ in range(40):  # 20,000 events already stored
        db.execute("BEGIN")
        for _ in range(500):
            i += 1
            insert(i)
        db.execute("COMMIT")
    db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    commits = n // batch
    for _ in range(commits):
        db.execute("BEGIN")
        for _ in range(batch):
            i += 1
            insert(i)
        db.execute("COMMIT")
    wal = os.path.getsize(path + "-wal") - WAL_HEADER
    db.close()
    return wal / FRAME / commits, wal / (commits * batch)


def main():
    path = os.path.join(sys.argv[1] if len(sys.argv) > 1 else "/tmp", "wal-pages-model.db")
    print("batch | payload | pages/commit, WAL bytes/event: as shipped | no AUTOINCREMENT, no received_at index | random event ids")
    for batch in (3, 5, 10, 20):
        for payload in (2048, 1184, 64):
            a = model(path, batch, payload)
            b = model(path, batch, payload, autoinc=False, received_idx=False)
            c = model(path, batch, payload, random_ids=True)
            print(f"{batch:5} | {payload:7} | {a[0]:5.1f} {a[1]:6.0f} | {b[0]:5.1f} {b[1]:6.0f} | {c[0]:5.1f} {c[1]:6.0f}")
    for suffix in ("", "-wal", "-shm"):
        try:
            os.remove(path + suffix)
        except FileNotFoundError:
            pass


if __name__ == "__main__":
    main()
