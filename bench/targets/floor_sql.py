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


def ddl(dialect: str) -> str:
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
    kind = "floor"

    def __init__(self, workdir: str, backend: str) -> None:
        super().__init__(workdir)
        self.backend = backend
        self.name = f"floor/{backend}"
        self.description = {"postgresql": "asyncpg", "sqlite": "aiosqlite",
                            "mariadb": "asyncmy"}[backend] + ", hand-written SQL"
        self.db: Any = None
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
        self.list_sql = {
            (c, s): sel + (f" AND {keyset}" if c else "") + (f' AND "name" {like} ?' if s else "")
            + ' ORDER BY "activity" DESC, "id" DESC LIMIT ?'
            for c in (False, True) for s in (False, True)}
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
            path = os.path.join(self.workdir, "floor.sqlite")
            for ext in ("", "-wal", "-shm", "-journal"):
                if os.path.exists(path + ext):
                    os.remove(path + ext)
            self.db = await rawdb.SqliteDB.open(path, **self.sqlite_pragmas)
            self.settings.update(await self.db.pragmas())
        await self.db.script(ddl(self.backend))
        await self.load(ds)
        if self.backend == "postgresql" or self.backend == "sqlite":
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
            async with self.db.transaction() as tx:
                await tx.execute(self.step_upsert, row)
                at = step["createdAt"]
                await tx.execute(self.bump_sql, (at, step["threadId"], at))

    update_step = create_step

    async def list_threads(self, pagination: Pagination, filters: ThreadFilter) -> Any:
        args: list[Any] = [filters.userId]
        if pagination.cursor:
            activity, tid = pagination.cursor.split("|", 1)
            args += [activity, activity, tid] if self.backend == "mariadb" else [activity, tid]
        if filters.search:
            args.append(f"%{filters.search}%")
        args.append(pagination.first + 1)
        rows = await self.db.fetch(self.list_sql[(bool(pagination.cursor), bool(filters.search))],
                                   args)
        more = len(rows) > pagination.first
        rows = rows[:pagination.first]
        data = [self._thread_dict(r) for r in rows]
        return PaginatedResponse(
            pageInfo=PageInfo(hasNextPage=more, startCursor=data[0]["id"] if data else None,
                              endCursor=f"{rows[-1][7]}|{rows[-1][0]}" if rows else None),
            data=data)

    async def get_thread(self, thread_id: str) -> dict[str, Any] | None:
        head = await self.db.fetch(self.thread_sql, (thread_id,))
        if not head:
            return None
        thread = self._thread_dict(head[0])
        o = len(THREAD_COLS)
        thread["elements"] = [self._elem_dict(r, o) for r in head if r[o] is not None]
        rows = await self.db.fetch(self.steps_sql, (thread_id,))
        thread["steps"] = [self._step_dict(r) for r in rows]
        return thread

    async def delete_thread(self, thread_id: str) -> None:
        if self.backend == "postgresql":
            await self.db.execute(self.delete_cte, (thread_id,))
            return
        async with self.db.transaction() as tx:
            for table, col in (("feedbacks", "threadId"), ("elements", "threadId"),
                               ("steps", "threadId"), ("threads", "id")):
                await tx.execute(f'DELETE FROM "{table}" WHERE "{col}" = ?', (thread_id,))

    async def leftover_rows(self, thread: ThreadRec) -> int | None:
        n = 0
        for table, col in (("feedbacks", "threadId"), ("elements", "threadId"),
                           ("steps", "threadId"), ("threads", "id")):
            rows = await self.db.fetch(f'SELECT COUNT(*) FROM "{table}" WHERE "{col}" = ?',
                                       (thread.id,))
            n += rows[0][0]
        return n
