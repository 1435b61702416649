#!/usr/bin/env python3
"""What migration 0012's list indexes cost a key insert on SQLite, one transaction per key.

    python3 scripts/sqlite-index-cost.py

Builds the SQLite schema from crates/keyward-store/migrations/sqlite/ three times in a temporary
directory (WAL, synchronous=NORMAL, as keyward opens it) and times 3,000 single-key
transactions on each:
- without migration 0012;
- with it, but without the trigger that feeds the FTS5 name index;
- with all of migration 0012.
Python's own sqlite3 module runs the SQL: the figures are per-transaction differences, not
keyward's throughput (docs/benchmarks.md, "A million keys").
"""
import os
import sqlite3
import tempfile
import time

MIGRATIONS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "crates",
                          "keyward-store", "migrations", "sqlite")
KEYS = 3000


def schema(path, with_0012, with_name_index):
    c = sqlite3.connect(path, isolation_level=None)
    c.execute("PRAGMA journal_mode=WAL")
    c.execute("PRAGMA synchronous=NORMAL")
    for f in sorted(os.listdir(MIGRATIONS)):
        if f.startswith("0012") and not with_0012:
            continue
        with open(os.path.join(MIGRATIONS, f)) as sql:
            c.executescript(sql.read())
    if with_0012 and not with_name_index:
        c.execute("DROP TRIGGER key_names_insert")
    c.execute("INSERT INTO keyspaces (id, name, prefix, policy, created_at, updated_at) "
              "VALUES ('ks', 'n', 'p', '{}', 0, 0)")
    return c


def per_insert_us(c):
    started = time.perf_counter()
    for i in range(KEYS):
        c.execute("BEGIN")
        c.execute("INSERT INTO keys (id, keyspace_id, name, owner, scopes, labels, meta, hash, "
                  "start_chars, end_chars, enabled, created_at, created_by, updated_at) "
                  "VALUES (?, 'ks', ?, 'o', '[]', '{\"env\":\"prod\"}', '{}', ?, 'a', 'b', 1, ?, '{}', ?)",
                  (f"key_{i}", f"billing key {i}", os.urandom(32), i, i))
        c.execute("COMMIT")
    return (time.perf_counter() - started) / KEYS * 1e6


with tempfile.TemporaryDirectory() as d:
    for name, with_0012, with_name_index in [
        ("without migration 0012", False, False),
        ("0012 without the FTS5 name index", True, False),
        ("0012 in full", True, True),
    ]:
        c = schema(os.path.join(d, f"{len(name)}.db"), with_0012, with_name_index)
        print(f"{name}: {per_insert_us(c):.1f} µs per single-key transaction")
        c.close()
