"""Chainlit's own SQL layers on their published schemas.

- ``SQLAlchemyDataLayer`` on the documented DDL (SQLite and PostgreSQL);
- ``ChainlitDataLayer`` (asyncpg) on the SQL equivalent of the chainlit-datalayer Prisma migrations.
Data are bulk-loaded with the raw drivers in each schema's own layout.
"""

from __future__ import annotations

import json
import os
from datetime import datetime
from pathlib import Path
from typing import Any

from .. import counting, rawdb
from ..dataset import Dataset, ThreadRec
from .base import LayerTarget

HERE = Path(__file__).resolve().parent.parent
REPO = HERE.parent


def docs_ddl(dialect: str) -> tuple[str, str]:
    """(DDL text, where it came from): the test suite's fixture of Chainlit's documented DDL."""
    name = f"chainlit_docs_{dialect}.sql"
    path = REPO / "tests" / "fixtures" / "legacy" / name  # one copy of Chainlit's documented DDL
    return path.read_text(), str(path.relative_to(REPO))


DOCS_STEP_COLS = ("id", "name", "type", "threadId", "parentId", "streaming", "waitForAnswer",
                  "isError", "metadata", "tags", "input", "output", "createdAt", "command", "start",
                  "end", "generation", "showInput", "language", "defaultOpen", "modes")
DOCS_ELEM_COLS = ("id", "threadId", "type", "url", "chainlitKey", "name", "display", "objectKey",
                  "size", "page", "language", "forId", "mime", "props")


def _cols(cols: tuple[str, ...]) -> str:
    return ", ".join(f'"{c}"' for c in cols)


async def bulk(db: rawdb.RawDB, table: str, cols: tuple[str, ...], rows: list[tuple]) -> None:
    sql = f'INSERT INTO "{table}" ({_cols(cols)}) VALUES ({", ".join("?" * len(cols))})'
    for i in range(0, len(rows), 5000):
        await db.executemany(sql, rows[i:i + 5000])


async def load_docs_schema(db: rawdb.RawDB, ds: Dataset, dialect: str) -> None:
    j = json.dumps
    arr = (lambda v: v) if dialect == "postgresql" else (lambda v: None if v is None else j(v))
    await bulk(db, "users", ("id", "identifier", "metadata", "createdAt"),
               [(u.id, u.identifier, j(u.metadata), u.created_at) for u in ds.users])
    threads, steps, elems, fbs = [], [], [], []
    for t in ds.threads:
        threads.append((t.id, t.created_at, t.name, t.user.id, t.user.identifier, None,
                        j(t.metadata)))
        for s in t.steps:
            row = []
            for c in DOCS_STEP_COLS:
                v = s.get(c)
                if c in ("metadata", "generation"):
                    v = j(v if v is not None else {}) if c == "metadata" else j(v)
                elif c == "modes":
                    v = None if v is None else j(v)
                elif c == "tags":
                    v = arr(v)
                elif c == "showInput":
                    v = None if v is None else str(v).lower()
                row.append(v)
            steps.append(tuple(row))
        for e in t.elements:
            elems.append(tuple(j(e.get(c)) if c == "props" else e.get(c) for c in DOCS_ELEM_COLS))
        fbs.extend((f["id"], f["forId"], f["threadId"], f["value"], f["comment"])
                   for f in t.feedbacks)
    await bulk(db, "threads", ("id", "createdAt", "name", "userId", "userIdentifier", "tags",
                               "metadata"), threads)
    await bulk(db, "steps", DOCS_STEP_COLS, steps)
    await bulk(db, "elements", DOCS_ELEM_COLS, elems)
    await bulk(db, "feedbacks", ("id", "forId", "threadId", "value", "comment"), fbs)


async def leftover_docs(db: rawdb.RawDB, thread_id: str) -> int:
    n = 0
    for table, col in (("feedbacks", "threadId"), ("elements", "threadId"),
                       ("steps", "threadId"), ("threads", "id")):
        rows = await db.fetch(f'SELECT COUNT(*) FROM "{table}" WHERE "{col}" = ?', (thread_id,))
        n += rows[0][0]
    return n


class ChainlitSQLAlchemy(LayerTarget):
    kind = "chainlit"
    # 70-340 calls/s under W5: its full iteration count would add a minute to the quick run;
    # its rate is measured over a window of seconds even so
    # (W1: a shorter long window, for the same reason; it loses the steps anyway)
    scale_overrides = {"w5_iters": 2, "w1_threads_c1": 64, "w1_waves": 3, "w1_bursts": 2}
    search_scope = frozenset({"text"})  # it searches every step's output, not the name
    max_w2_n = 10_000  # it reads every thread of the user for each page: seconds a call beyond

    def __init__(self, workdir: str, backend: str) -> None:
        super().__init__(workdir)
        self.backend = backend
        self.name = f"chainlit-sqlalchemy/{backend}"
        self.db: Any = None

    async def setup(self, ds: Dataset) -> None:
        from chainlit.data.sql_alchemy import SQLAlchemyDataLayer

        ddl, src = docs_ddl(self.backend)
        self.description = f"SQLAlchemyDataLayer on the documented DDL ({src})"
        if self.backend == "postgresql":
            await rawdb.pg_recreate("bench_cl_sqlalchemy")
            self.db = await rawdb.PgDB.open("bench_cl_sqlalchemy", size=4)
            url = "postgresql+asyncpg://postgres@127.0.0.1:5432/bench_cl_sqlalchemy"
        else:
            path = os.path.join(self.workdir, "cl_sqlalchemy.sqlite")
            for ext in ("", "-wal", "-shm", "-journal"):
                if os.path.exists(path + ext):
                    os.remove(path + ext)
            self.db = await rawdb.SqliteDB.open(path, readers=1)
            url = f"sqlite+aiosqlite:///{path}"
        await self.db.script(ddl)
        await load_docs_schema(self.db, ds, self.backend)
        await self.db.script("VACUUM ANALYZE" if self.backend == "postgresql" else "ANALYZE")
        if self.backend == "sqlite":
            self.settings.update(await self.db.pragmas())
        else:
            self.settings["synchronous_commit"] = await rawdb.pg_show("bench_cl_sqlalchemy",
                                                                      "synchronous_commit")
        self.layer = SQLAlchemyDataLayer(url)
        counting.instrument_engine(self.layer.engine)

    async def leftover_rows(self, thread: ThreadRec) -> int | None:
        return await leftover_docs(self.db, thread.id)

    async def close(self) -> None:
        await super().close()
        await self.layer.engine.dispose()
        await self.db.close()


def _dt(s: str | None) -> datetime | None:
    return None if s is None else datetime.strptime(s, "%Y-%m-%dT%H:%M:%S.%fZ")


class ChainlitOfficial(LayerTarget):
    kind = "chainlit"
    backend = "postgresql"
    name = "chainlit-official/postgresql"
    description = "ChainlitDataLayer (asyncpg) on the chainlit-datalayer Prisma migrations"
    DB = "bench_cl_official"
    max_w2_n = 10_000  # a reference only: its page is 100x the floor's at every N already

    async def setup(self, ds: Dataset) -> None:
        from chainlit.data.chainlit_data_layer import ChainlitDataLayer

        await rawdb.pg_recreate(self.DB)
        self.db = await rawdb.PgDB.open(self.DB, size=4)
        await self.db.script((HERE / "fixtures" / "chainlit_official_prisma.sql").read_text())
        j = json.dumps
        await bulk(self.db, "User", ("id", "createdAt", "updatedAt", "metadata", "identifier"),
                   [(u.id, _dt(u.created_at), _dt(u.created_at), j(u.metadata), u.identifier)
                    for u in ds.users])
        threads, steps, elems, fbs = [], [], [], []
        for t in ds.threads:
            threads.append((t.id, _dt(t.created_at), _dt(t.activity), t.name, j(t.metadata),
                            t.user.id, []))
            for s in t.steps:
                at = _dt(s["createdAt"])
                steps.append((s["id"], at, at, s.get("parentId"), t.id, s.get("input"),
                              j(s.get("metadata") or {}), s.get("name"), s.get("output"),
                              s["type"], str(s.get("showInput", "json")), bool(s.get("isError")),
                              at, at))
            for e in t.elements:
                elems.append((e["id"], t.id, e["forId"], j({}), e.get("mime"), e["name"],
                              e.get("objectKey"), e.get("url"), e.get("chainlitKey"),
                              e.get("display"), e.get("size"), e.get("language"), e.get("page"),
                              j(e.get("props") or {})))
            fbs.extend((f["id"], f["forId"], "user_feedback", float(f["value"]), f["comment"])
                       for f in t.feedbacks)
        await bulk(self.db, "Thread", ("id", "createdAt", "updatedAt", "name", "metadata",
                                       "userId", "tags"), threads)
        await bulk(self.db, "Step", ("id", "createdAt", "updatedAt", "parentId", "threadId",
                                     "input", "metadata", "name", "output", "type", "showInput",
                                     "isError", "startTime", "endTime"), steps)
        await bulk(self.db, "Element", ("id", "threadId", "stepId", "metadata", "mime", "name",
                                        "objectKey", "url", "chainlitKey", "display", "size",
                                        "language", "page", "props"), elems)
        await bulk(self.db, "Feedback", ("id", "stepId", "name", "value", "comment"), fbs)
        await self.db.script("VACUUM ANALYZE")
        self.settings["synchronous_commit"] = await rawdb.pg_show(self.DB, "synchronous_commit")
        self.layer = ChainlitDataLayer(f"postgresql://postgres@127.0.0.1:5432/{self.DB}")
        # its pool is created by the first query, and concurrent first queries each create one
        # (32 pools of 10 under W5 when W5 runs first): open it here, as a running app has
        await self.layer.connect()
        inner = self.layer.execute_query

        async def execute_query(query: str, params: Any = None) -> Any:
            counting.statement("asyncpg")
            return await inner(query, params)

        self.layer.execute_query = execute_query

    async def leftover_rows(self, thread: ThreadRec) -> int | None:
        n = 0
        for sql in ('SELECT COUNT(*) FROM "Thread" WHERE "id" = ?',
                    'SELECT COUNT(*) FROM "Step" WHERE "threadId" = ?',
                    'SELECT COUNT(*) FROM "Element" WHERE "threadId" = ?'):
            n += (await self.db.fetch(sql, (thread.id,)))[0][0]
        ids = [f["id"] for f in thread.feedbacks]
        n += (await self.db.fetch('SELECT COUNT(*) FROM "Feedback" WHERE "id" = ANY(?::text[])',
                                  (ids,)))[0][0]
        return n

    async def close(self) -> None:
        await super().close()
        await self.db.close()
