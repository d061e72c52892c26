"""What an SQLite FTS5 trigram index costs a write, three ways: ``python -m bench.fts_pending [N]``.

Raw ``sqlite3`` (WAL, ``synchronous=NORMAL``), ``N`` steps (default 3,000) written as Chainlit
writes them: created empty, then updated with their text, each in its own transaction. Layouts:
``none`` (no search index), ``sync`` (FTS5 external content kept by triggers that index every
write at once: chainlit-orm's layout up to schema version 4) and ``pending`` (writes go to a
pending list that is indexed 256 rows at a time: version 5, ``schema_gen.search``). For
``pending`` the cost of indexing what is left on the list at the end is printed apart, and
FTS5's ``integrity-check`` runs. Figures are microseconds per step; run it twice, the order
alternates.
"""

from __future__ import annotations

import os
import sqlite3
import sys
import tempfile
import time
import uuid

TEXT = "message {i} of thread {t}: lorem ipsum dolor sit amet, consectetur adipiscing elit. "


def _setup(path: str, mode: str) -> sqlite3.Connection:
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=NORMAL")
    conn.execute("CREATE TABLE steps (id TEXT PRIMARY KEY, threadId TEXT, output TEXT, "
                 "outputFolded TEXT, meta TEXT)")
    conn.execute("CREATE INDEX st ON steps (threadId)")
    if mode == "none":
        return conn
    conn.execute("CREATE VIRTUAL TABLE fts USING fts5(outputFolded, content='steps', "
                 "content_rowid='rowid', tokenize='trigram case_sensitive 1')")
    unindex = ("INSERT INTO fts(fts, rowid, outputFolded) "
               "VALUES ('delete', old.rowid, old.outputFolded);")
    if mode == "sync":
        index = "INSERT INTO fts(rowid, outputFolded) VALUES (new.rowid, new.outputFolded);"
        conn.execute(f"CREATE TRIGGER ai AFTER INSERT ON steps BEGIN {index} END")
        conn.execute(f"CREATE TRIGGER ad AFTER DELETE ON steps BEGIN {unindex} END")
        conn.execute("CREATE TRIGGER au AFTER UPDATE OF outputFolded ON steps WHEN "
                     f"old.outputFolded IS NOT new.outputFolded BEGIN {unindex} {index} END")
        return conn
    unlisted = "NOT EXISTS (SELECT 1 FROM pend WHERE r = old.rowid)"
    conn.execute("CREATE TABLE pend (r INTEGER PRIMARY KEY)")
    conn.execute("CREATE TRIGGER pi AFTER INSERT ON steps BEGIN INSERT INTO pend (r) SELECT "
                 "new.rowid WHERE NOT EXISTS (SELECT 1 FROM pend WHERE r = new.rowid); END")
    conn.execute("CREATE TRIGGER pu AFTER UPDATE OF outputFolded ON steps WHEN "
                 f"old.outputFolded IS NOT new.outputFolded AND {unlisted} BEGIN {unindex} "
                 "INSERT INTO pend (r) VALUES (new.rowid); END")
    conn.execute("CREATE TRIGGER pf AFTER INSERT ON pend WHEN (SELECT count(*) FROM pend) >= 256 "
                 "BEGIN INSERT INTO fts(rowid, outputFolded) SELECT p.r, s.outputFolded FROM "
                 "pend AS p JOIN steps AS s ON s.rowid = p.r; DELETE FROM pend; END")
    return conn


def run(mode: str, n: int) -> str:
    """Write ``n`` steps in layout ``mode``; the line to print."""
    path = os.path.join(tempfile.mkdtemp(), f"{mode}.db")
    conn = _setup(path, mode)
    start = time.perf_counter()
    for i in range(n):
        sid, tid = str(uuid.uuid4()), str(i // 6)
        text = TEXT.format(i=i, t=tid)
        for output in ("", text):  # create, then update, each its own transaction
            conn.execute("BEGIN IMMEDIATE")
            conn.execute("INSERT INTO steps VALUES (?, ?, ?, ?, ?) ON CONFLICT (id) DO UPDATE "
                         "SET output = excluded.output, outputFolded = excluded.outputFolded",
                         (sid, tid, output, output.casefold(), "{}"))
            conn.execute("COMMIT")
    line = f"{mode:8s} {(time.perf_counter() - start) * 1e6 / n:7.1f} us/step"
    if mode == "pending":
        start = time.perf_counter()
        conn.execute("BEGIN IMMEDIATE")
        conn.execute("INSERT INTO fts(rowid, outputFolded) SELECT p.r, s.outputFolded "
                     "FROM pend AS p JOIN steps AS s ON s.rowid = p.r")
        conn.execute("DELETE FROM pend")
        conn.execute("COMMIT")
        line += f"; the list's rest indexed: {(time.perf_counter() - start) * 1e3:.1f} ms"
        conn.execute("INSERT INTO fts(fts, rank) VALUES ('integrity-check', 1)")
    conn.close()
    return line


if __name__ == "__main__":
    count = int(sys.argv[1]) if len(sys.argv) > 1 else 3000
    for layout in ("none", "sync", "pending", "pending", "sync", "none"):
        print(run(layout, count))
