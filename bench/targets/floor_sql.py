"""The raw-driver floor on PostgreSQL (asyncpg), SQLite (aiosqlite) and MariaDB (asyncmy).

Hand-written, fewest statements per operation, on a schema that has exactly the indexes each
operation needs. See bench/README.md "The floor" for the definition; never tune it down.
"""

from __future__ import annotations

import json
import os
from typing import Any

from chainlit.types import PageInfo, PaginatedResponse, Pagination, ThreadFilter
from chainlit.user import PersistedUser

from .. import rawdb
from ..dataset import Dataset, ThreadRec
from .base import Target

STEP_COLS = ("id", "threadId", "parentId", "name", "type", "streaming", "waitForAnswer", "isError",
             "metadata", "tags", "input", "output", "createdAt", "command", "start", "end",
             "generation", "showInput", "language", "defaultOpen", "autoCollapse", "modes")
STEP_JSON = {"metadata", "tags", "generation", "modes", "showInput"}
STEP_BOOL = {"streaming", "waitForAnswer", "isError", "defaultOpen", "autoCollapse"}
ELEM_COLS = ("id", "threadId", "type", "url", "chainlitKey", "name", "display", "objectKey", "size",
             "page", "language", "forId", "mime", "props", "autoPlay", "playerConfig")
ELEM_JSON = {"props", "playerConfig"}
THREAD_COLS = ("id", "createdAt", "name", "userId", "userIdentifier", "tags", "metadata")

TYPES = {
    #            id                          json      ts (indexed)   bool       text
    "postgresql": ("UUID", "JSONB", "TEXT", "BOOLEAN", "TEXT"),
    "sqlite": ("TEXT", "TEXT", "TEXT", "INTEGER", "TEXT"),
    "mariadb": ("CHAR(36) CHARACTER SET ascii", "LONGTEXT", "VARCHAR(32) CHARACTER SET ascii",
                "BOOLEAN", "TEXT"),
}


def search_ddl(dialect: str) -> list[str]:
    """The name-search index of the pooled floors (see bench/README.md "The floor"): a trigram
    index on threads.name. PostgreSQL: pg_trgm GIN. SQLite: an FTS5 trigram table over the name
    (external content: the name is stored once, in threads), kept current by triggers; its rowid
    is the thread row's rowid. MariaDB has no n-gram index: none (its search is a scan)."""
    if dialect == "postgresql":
        return ["CREATE EXTENSION IF NOT EXISTS pg_trgm",
                'CREATE INDEX "threads_name_trgm" ON "threads" USING gin ("name" gin_trgm_ops)']
    if dialect == "sqlite":
        ins = 'INSERT INTO "threads_name_fts" (rowid, "name") VALUES (new.rowid, new."name")'
        dele = ('INSERT INTO "threads_name_fts" ("threads_name_fts", rowid, "name") '
                "VALUES ('delete', old.rowid, old.\"name\")")
        return [
            'CREATE VIRTUAL TABLE "threads_name_fts" USING fts5("name", content=\'threads\', '
            "content_rowid='rowid', tokenize='trigram')",
            f'CREATE TRIGGER "threads_fts_ins" AFTER INSERT ON "threads" BEGIN {ins}; END',
            f'CREATE TRIGGER "threads_fts_del" AFTER DELETE ON "threads" BEGIN {dele}; END',
            'CREATE TRIGGER "threads_fts_upd" AFTER UPDATE OF "name" ON "threads" '
            f'WHEN old."name" IS NOT new."name" BEGIN {dele}; {ins}; END',
        ]
    return []


def ddl(dialect: str, search_index: bool = False) -> str:
    ID, J, TS, B, T = TYPES[dialect]
    ident = "VARCHAR(255)" if dialect == "mariadb" else "TEXT"
    desc = " DESC" if dialect != "mariadb" else ""
    stmts = [
        f'CREATE TABLE "users" ("id" {ID} PRIMARY KEY, "identifier" {ident} NOT NULL UNIQUE, '
        f'"metadata" {J} NOT NULL, "createdAt" {TS})',
        f'CREATE TABLE "threads" ("id" {ID} PRIMARY KEY, "createdAt" {TS} NOT NULL, "name" {T}, '
        f'"userId" {ID}, "userIdentifier" {ident}, "tags" {J}, "metadata" {J} NOT NULL, '
        f'"activity" {TS} NOT NULL)',
        f'CREATE INDEX "threads_user_activity" ON "threads" ("userId", "activity"{desc}, "id"{desc})',
        f'CREATE TABLE "steps" ("id" {ID} PRIMARY KEY, "threadId" {ID} NOT NULL, "parentId" {ID}, '
        f'"name" {T}, "type" {T}, "streaming" {B}, "waitForAnswer" {B}, "isError" {B}, '
        f'"metadata" {J}, "tags" {J}, "input" {T}, "output" {T}, "createdAt" {TS}, "command" {T}, '
        f'"start" {TS}, "end" {TS}, "generation" {J}, "showInput" {T}, "language" {T}, '
        f'"defaultOpen" {B}, "autoCollapse" {B}, "modes" {J})',
        'CREATE INDEX "steps_thread" ON "steps" ("threadId", "createdAt")',
        f'CREATE TABLE "elements" ("id" {ID} PRIMARY KEY, "threadId" {ID}, "type" {T}, "url" {T}, '
        f'"chainlitKey" {T}, "name" {T}, "display" {T}, "objectKey" {T}, "size" {T}, "page" INT, '
        f'"language" {T}, "forId" {ID}, "mime" {T}, "props" {J}, "autoPlay" {B}, '
        f'"playerConfig" {J})',
        'CREATE INDEX "elements_thread" ON "elements" ("threadId")',
        f'CREATE TABLE "feedbacks" ("id" {ID} PRIMARY KEY, "forId" {ID} NOT NULL, '
        f'"threadId" {ID} NOT NULL, "value" INT NOT NULL, "comment" {T})',
        'CREATE INDEX "feedbacks_for" ON "feedbacks" ("forId")',
        'CREATE INDEX "feedbacks_thread" ON "feedbacks" ("threadId")',
    ]
    if dialect == "mariadb":
        stmts = [s.replace('"', "`") + " " if s.startswith("CREATE TABLE") else s.replace('"', "`")
                 for s in stmts]
    if search_index:
        stmts += search_ddl(dialect)
    return ";\n".join(stmts) + ";"


def q(cols: tuple[str, ...], prefix: str = "") -> str:
    return ", ".join(f'{prefix}"{c}"' for c in cols)


def _ph(n: int) -> str:
    return ", ".join("?" * n)


def upsert_sql(dialect: str, table: str, cols: tuple[str, ...]) -> str:
    base = f'INSERT INTO "{table}" ({q(cols)}) VALUES ({_ph(len(cols))}) '
    if dialect == "mariadb":
        return base + "ON DUPLICATE KEY UPDATE " + ", ".join(
            f'"{c}" = COALESCE(VALUES("{c}"), "{c}")' for c in cols if c != "id")
    return base + 'ON CONFLICT ("id") DO UPDATE SET ' + ", ".join(
        f'"{c}" = COALESCE(excluded."{c}", "{table}"."{c}")' for c in cols if c != "id")


class FloorSQL(Target):
    """``variant="pool"``: the driver's pool (SQLite: one writer behind a lock and 2 readers),
    with the name-search index where the engine has one (:func:`search_ddl`).
    ``variant="1conn"`` (SQLite only): one aiosqlite connection in autocommit serving every
    caller (:class:`rawdb.SqliteOneDB`), no search index: the second harness's floor."""

    kind = "floor"

    def __init__(self, workdir: str, backend: str, variant: str = "pool") -> None:
        super().__init__(workdir)
        if variant not in ("pool", "1conn") or (variant == "1conn" and backend != "sqlite"):
            raise ValueError(f"no {variant} floor on {backend}")
        self.backend = backend
        self.variant = variant
        self.name = f"floor/{backend}" + ("-1conn" if variant == "1conn" else "")
        self.search_index = variant == "pool" and backend in ("postgresql", "sqlite")
        self.description = {"postgresql": "asyncpg pool (16)",
                            "sqlite": "aiosqlite, 1 writer behind a lock + 2 readers",
                            "mariadb": "asyncmy pool (16, autocommit)"}[backend]
        if variant == "1conn":
            self.description = "aiosqlite, one connection in autocommit serving every caller"
        self.description += ", hand-written SQL; name search: " + (
            {"postgresql": "pg_trgm GIN on threads.name", "sqlite": "FTS5 trigram on threads.name"
             }[backend] + " (terms >= 3 characters), else a scan" if self.search_index
            else "a scan (LIKE) of the user's threads")
        self.db: Any = None
        self.search_db: Any = None  # PostgreSQL: the trigram search's connections
        self.sqlite_pragmas: dict[str, str] = {}  # set by the runner to match the ORM target
        d = backend
        self.step_upsert = upsert_sql(d, "steps", STEP_COLS)
        if d == "postgresql":
            self.step_upsert_user = (
                f"WITH s AS ({self.step_upsert} RETURNING \"threadId\", \"createdAt\") "
                'UPDATE "threads" AS t SET "activity" = s."createdAt" FROM s '
                'WHERE t."id" = s."threadId" AND t."activity" < s."createdAt"')
        self.bump_sql = ('UPDATE "threads" SET "activity" = ? WHERE "id" = ? AND "activity" < ?')
        merge = {"postgresql": 'jsonb_strip_nulls("threads"."metadata" || excluded."metadata")',
                 "sqlite": 'json_patch("threads"."metadata", excluded."metadata")',
                 "mariadb": 'JSON_MERGE_PATCH("metadata", VALUES("metadata"))'}[d]
        tcols = ("id", "createdAt", "name", "userId", "userIdentifier", "tags", "metadata",
                 "activity")
        values = '?, ?, ?, ?, (SELECT "identifier" FROM "users" WHERE "id" = ?), ?, ?, ?'
        if d == "mariadb":
            sets = [f'"{c}" = COALESCE(VALUES("{c}"), "{c}")'
                    for c in ("name", "userId", "userIdentifier", "tags")]
            self.thread_upsert = (f'INSERT INTO "threads" ({q(tcols)}) VALUES ({values}) '
                                  "ON DUPLICATE KEY UPDATE " + ", ".join(sets)
                                  + f', "metadata" = {merge}')
        else:
            sets = [f'"{c}" = COALESCE(excluded."{c}", "threads"."{c}")'
                    for c in ("name", "userId", "userIdentifier", "tags")]
            self.thread_upsert = (f'INSERT INTO "threads" ({q(tcols)}) VALUES ({values}) '
                                  'ON CONFLICT ("id") DO UPDATE SET ' + ", ".join(sets)
                                  + f', "metadata" = {merge}')
        like = "ILIKE" if d == "postgresql" else "LIKE"
        keyset = ('("activity", "id") < (?, ?)' if d != "mariadb"
                  else '("activity" < ? OR ("activity" = ? AND "id" < ?))')
        sel = f'SELECT {q((*THREAD_COLS, "activity"))} FROM "threads" WHERE "userId" = ?'
        # search: None, "scan" (LIKE on the name, read through the user's list index) or "index"
        # (the trigram index, for terms of 3 characters or more); same parameters in all shapes
        self.list_sql = {
            (c, s): sel + (f" AND {keyset}" if c else "") + (f' AND "name" {like} ?' if s else "")
            + ' ORDER BY "activity" DESC, "id" DESC LIMIT ?'
            for c in (False, True) for s in (None, "scan")}
        if self.search_index and d == "postgresql":
            # the term's rows in the whole store through the trigram index (a bitmap scan; the
            # CTE keeps the user's list index out of that scan), then those of the user, sorted.
            # The pattern is the first parameter here (list_threads puts it first)
            tsel = (f'WITH m AS MATERIALIZED (SELECT {q((*THREAD_COLS, "activity"))} '
                    'FROM "threads" WHERE "name" ILIKE ?) '
                    f'SELECT {q((*THREAD_COLS, "activity"))} FROM m WHERE "userId" = ?')
            for c in (False, True):
                self.list_sql[(c, "index")] = (
                    tsel + (' AND ("activity", "id") < (?, ?)' if c else "")
                    + ' ORDER BY "activity" DESC, "id" DESC LIMIT ?')
        elif self.search_index:
            # FTS5 first (CROSS JOIN fixes the join order): the term's rows in the whole store,
            # then those of the user, sorted
            tsel = (f'SELECT {q((*THREAD_COLS, "activity"), "t.")} FROM "threads_name_fts" f '
                    'CROSS JOIN "threads" t ON t.rowid = f.rowid WHERE t."userId" = ?')
            for c in (False, True):
                self.list_sql[(c, "index")] = (
                    tsel + (' AND (t."activity", t."id") < (?, ?)' if c else "")
                    + ' AND f."name" LIKE ? ORDER BY t."activity" DESC, t."id" DESC LIMIT ?')
        self.thread_sql = (f'SELECT {q(THREAD_COLS, "t.")}, {q(ELEM_COLS, "e.")} FROM "threads" t '
                           'LEFT JOIN "elements" e ON e."threadId" = t."id" WHERE t."id" = ?')
        self.steps_sql = (f'SELECT {q(STEP_COLS, "s.")}, f."id", f."value", f."comment" '
                          'FROM "steps" s LEFT JOIN "feedbacks" f ON f."forId" = s."id" '
                          'WHERE s."threadId" = ? ORDER BY s."createdAt", s."id"')
        self.delete_cte = ('WITH f AS (DELETE FROM "feedbacks" WHERE "threadId" = $1), '
                           'e AS (DELETE FROM "elements" WHERE "threadId" = $1), '
                           's AS (DELETE FROM "steps" WHERE "threadId" = $1) '
                           'DELETE FROM "threads" WHERE "id" = $1')

    # ---- value conversion -----------------------------------------------------------------
    def _j(self, v: Any) -> Any:
        return None if v is None else json.dumps(v)

    def _b(self, v: Any) -> Any:
        return None if v is None else bool(v)

    def step_row(self, s: dict[str, Any]) -> tuple[Any, ...]:
        out = []
        for c in STEP_COLS:
            v = s.get(c)
            if c in STEP_JSON:
                v = self._j(v)
            elif c in STEP_BOOL:
                v = self._b(v)
            out.append(v)
        return tuple(out)

    def elem_row(self, e: dict[str, Any]) -> tuple[Any, ...]:
        return tuple(self._j(e.get(c)) if c in ELEM_JSON else
                     self._b(e.get(c)) if c == "autoPlay" else e.get(c) for c in ELEM_COLS)

    @staticmethod
    def _u(v: Any) -> Any:
        return None if v is None else str(v)

    @staticmethod
    def _l(v: Any) -> Any:
        return None if v is None else json.loads(v)

    def _step_dict(self, r: Any) -> dict[str, Any]:
        d: dict[str, Any] = {}
        for i, c in enumerate(STEP_COLS):
            v = r[i]
            if c in STEP_JSON:
                v = self._l(v)
            elif c in STEP_BOOL:
                v = None if v is None else bool(v)
            elif c in ("id", "threadId", "parentId"):
                v = self._u(v)
            d[c] = v
        if r[22] is not None:
            d["feedback"] = {"id": self._u(r[22]), "forId": d["id"], "value": r[23],
                             "comment": r[24]}
        return d

    def _elem_dict(self, r: Any, o: int) -> dict[str, Any]:
        d = {}
        for i, c in enumerate(ELEM_COLS):
            v = r[o + i]
            if c in ELEM_JSON:
                v = self._l(v)
            elif c == "autoPlay":
                v = None if v is None else bool(v)
            elif c in ("id", "threadId", "forId"):
                v = self._u(v)
            d[c] = v
        return d

    def _thread_dict(self, r: Any) -> dict[str, Any]:
        return {"id": self._u(r[0]), "createdAt": r[1], "name": r[2], "userId": self._u(r[3]),
                "userIdentifier": r[4], "tags": self._l(r[5]), "metadata": self._l(r[6]) or {},
                "steps": [], "elements": []}

    # ---- lifecycle ------------------------------------------------------------------------
    async def setup(self, ds: Dataset) -> None:
        if self.backend == "postgresql":
            await rawdb.pg_recreate("bench_floor")
            self.db = await rawdb.PgDB.open("bench_floor")
        elif self.backend == "mariadb":
            await rawdb.my_recreate("bench_floor")
            self.db = await rawdb.MyDB.open("bench_floor")
        else:
            one = self.variant == "1conn"
            path = os.path.join(self.workdir, "floor1.sqlite" if one else "floor.sqlite")
            for ext in ("", "-wal", "-shm", "-journal"):
                if os.path.exists(path + ext):
                    os.remove(path + ext)
            if one:
                self.db = await rawdb.SqliteOneDB.open(path, **self.sqlite_pragmas)
            else:
                self.db = await rawdb.SqliteDB.open(path, **self.sqlite_pragmas)
            self.settings.update(await self.db.pragmas())
        if self.backend == "postgresql":
            self.settings["synchronous_commit"] = await rawdb.pg_show("bench_floor",
                                                                      "synchronous_commit")
        await self.db.script(ddl(self.backend, self.search_index))
        await self.load(ds)
        if self.backend == "postgresql":  # VACUUM too: see targets/orm.py
            await self.db.script("VACUUM ANALYZE")
            if self.search_index:
                # the trigram search runs on connections that never scan the table: the planner
                # estimates a GIN trigram lookup dearer than a scan of a small table (it chose a
                # scan: 37 ms against 2.7 ms through the index at 11,000 threads)
                self.search_db = await rawdb.PgDB.open(
                    "bench_floor", size=4, server_settings={"enable_seqscan": "off"})
        elif self.backend == "sqlite":
            await self.db.script("ANALYZE")

    async def load(self, ds: Dataset) -> None:
        db = self.db
        users = [(u.id, u.identifier, json.dumps(u.metadata), u.created_at) for u in ds.users]
        await db.executemany(f'INSERT INTO "users" VALUES ({_ph(4)})', users)
        threads, steps, elems, fbs = [], [], [], []
        for t in ds.threads:
            threads.append((t.id, t.created_at, t.name, t.user.id, t.user.identifier, None,
                            json.dumps(t.metadata), t.activity))
            steps.extend(self.step_row(s) for s in t.steps)
            elems.extend(self.elem_row(e) for e in t.elements)
            fbs.extend((f["id"], f["forId"], f["threadId"], f["value"], f["comment"])
                       for f in t.feedbacks)
        for sql, rows in ((f'INSERT INTO "threads" VALUES ({_ph(8)})', threads),
                          (f'INSERT INTO "steps" ({q(STEP_COLS)}) VALUES ({_ph(len(STEP_COLS))})',
                           steps),
                          (f'INSERT INTO "elements" ({q(ELEM_COLS)}) VALUES ({_ph(len(ELEM_COLS))})',
                           elems),
                          (f'INSERT INTO "feedbacks" VALUES ({_ph(5)})', fbs)):
            for i in range(0, len(rows), 5000):
                await db.executemany(sql, rows[i:i + 5000])

    async def close(self) -> None:
        if self.db is not None:
            await self.db.close()
        if self.search_db is not None:
            await self.search_db.close()

    # ---- operations -----------------------------------------------------------------------
    async def get_user(self, identifier: str) -> Any:
        rows = await self.db.fetch('SELECT "id", "identifier", "metadata", "createdAt" '
                                   'FROM "users" WHERE "identifier" = ?', (identifier,))
        if not rows:
            return None
        r = rows[0]
        return PersistedUser(id=str(r[0]), identifier=r[1], createdAt=r[3],
                             metadata=json.loads(r[2]))

    async def update_thread(self, thread_id: str, name: str | None = None,
                            user_id: str | None = None, metadata: dict | None = None,
                            tags: list[str] | None = None) -> None:
        from chainlit.utils import utc_now

        now = utc_now()
        await self.db.execute(self.thread_upsert, (
            thread_id, now, name, user_id, user_id, self._j(tags), json.dumps(metadata or {}),
            now))

    async def create_step(self, step: dict[str, Any]) -> None:
        row = self.step_row(step)
        if step.get("type") != "user_message" or not step.get("createdAt"):
            await self.db.execute(self.step_upsert, row)
        elif self.backend == "postgresql":
            await self.db.execute(self.step_upsert_user, row)
        else:
            at = step["createdAt"]
            await self.db.transact([(self.step_upsert, row),
                                    (self.bump_sql, (at, step["threadId"], at))])

    update_step = create_step

    async def list_threads(self, pagination: Pagination, filters: ThreadFilter) -> Any:
        args: list[Any] = [filters.userId]
        if pagination.cursor:
            activity, tid = pagination.cursor.split("|", 1)
            args += [activity, activity, tid] if self.backend == "mariadb" else [activity, tid]
        shape = None
        if filters.search:
            args.append(f"%{filters.search}%")
            shape = "index" if self.search_index and len(filters.search) >= 3 else "scan"
        args.append(pagination.first + 1)
        db = self.db
        if shape == "index" and self.backend == "postgresql":
            args.insert(0, args.pop(-2))  # the pattern first (the CTE's parameter)
            db = self.search_db
        rows = await db.fetch(self.list_sql[(bool(pagination.cursor), shape)], args)
        more = len(rows) > pagination.first
        rows = rows[:pagination.first]
        data = [self._thread_dict(r) for r in rows]
        return PaginatedResponse(
            pageInfo=PageInfo(hasNextPage=more, startCursor=data[0]["id"] if data else None,
                              endCursor=f"{rows[-1][7]}|{rows[-1][0]}" if rows else None),
            data=data)

    async def get_thread(self, thread_id: str) -> dict[str, Any] | None:
        if self.variant == "1conn":  # both statements in one hop
            head, rows = await self.db.fetch_seq([(self.thread_sql, (thread_id,)),
                                                  (self.steps_sql, (thread_id,))])
            if not head:
                return None
        else:
            head = await self.db.fetch(self.thread_sql, (thread_id,))
            if not head:
                return None
            rows = await self.db.fetch(self.steps_sql, (thread_id,))
        thread = self._thread_dict(head[0])
        o = len(THREAD_COLS)
        thread["elements"] = [self._elem_dict(r, o) for r in head if r[o] is not None]
        thread["steps"] = [self._step_dict(r) for r in rows]
        return thread

    async def delete_thread(self, thread_id: str) -> None:
        if self.backend == "postgresql":
            await self.db.execute(self.delete_cte, (thread_id,))
            return
        await self.db.transact([(f'DELETE FROM "{table}" WHERE "{col}" = ?', (thread_id,))
                                for table, col in (("feedbacks", "threadId"),
                                                   ("elements", "threadId"),
                                                   ("steps", "threadId"), ("threads", "id"))])

    async def leftover_rows(self, thread: ThreadRec) -> int | None:
        n = 0
        for table, col in (("feedbacks", "threadId"), ("elements", "threadId"),
                           ("steps", "threadId"), ("threads", "id")):
            rows = await self.db.fetch(f'SELECT COUNT(*) FROM "{table}" WHERE "{col}" = ?',
                                       (thread.id,))
            n += rows[0][0]
        return n
