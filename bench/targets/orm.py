"""chainlit-orm's own layers. Skipped with the import error as the reason until they exist.

Bulk loading does not go through the layer: the schema built by ``chainlit_orm.migrate()`` is
reflected and filled with SQLAlchemy Core ``executemany`` (column names are Chainlit's keys, per
DESIGN.md); for DynamoDB the items are written in Chainlit's single-table layout with batch writes.
"""

from __future__ import annotations

import asyncio
import os
from typing import Any

from .. import counting, rawdb
from ..dataset import Dataset, ThreadRec
from . import dynamo
from .base import LayerTarget, Unavailable

#: the SQL targets' database: ``bench_orm``, plus ``CHAINLIT_ORM_BENCH_DB_SUFFIX`` when several
#: benches share one server (each run drops and re-creates its database)
DB = "bench_orm" + os.environ.get("CHAINLIT_ORM_BENCH_DB_SUFFIX", "")
URLS = {
    "sqlite": "sqlite+aiosqlite:///{path}",
    "postgresql": f"postgresql+asyncpg://postgres@127.0.0.1:5432/{DB}",
    "mariadb": f"mysql+asyncmy://root@127.0.0.1:3306/{DB}?charset=utf8mb4",
}
#: ``chainlit-orm/postgresql-pgbouncer``: its own database, made and migrated on the server
#: directly, used by the layer through PgBouncer in transaction mode on :6432
#: (``scripts/services.sh``) with the URL flag that makes the layer pooler-safe.
PGBOUNCER = ("postgresql+asyncpg://postgres@127.0.0.1:6432/{database}"
             "?prepared_statement_cache_size=0")
ACTIVITY_COLS = ("activityAt", "activity", "updatedAt")


def shipped_defaults(cls: Any) -> str:
    """``name=default`` of every keyword parameter of ``cls`` with a default, as shipped."""
    import inspect

    out = []
    for name, p in inspect.signature(cls).parameters.items():
        if p.default is not inspect.Parameter.empty and name != "models":
            out.append(f"{name}={p.default!r}")
    return ", ".join(out)


def _import() -> Any:
    try:
        import chainlit_orm
    except Exception as e:
        raise Unavailable(f"chainlit_orm does not import: {e!r}") from e
    return chainlit_orm


class OrmSQL(LayerTarget):
    kind = "orm"
    search_scope = frozenset({"name", "text"})  # names and message text (DESIGN.md)

    def __init__(self, workdir: str, backend: str, tracing: bool = False,
                 via: str | None = None) -> None:
        super().__init__(workdir)
        self.backend = backend
        #: ``--tracing both``: a second target, the same layer with ``tracing=True``, in its own
        #: database, taking turns with the untraced one (bench/otel.py)
        self.tracing = tracing
        #: ``"pgbouncer"``: the layer goes through PgBouncer (see :data:`PGBOUNCER`)
        self.via = via
        suffix = ("_otel" if tracing else "") + ("_pgb" if via == "pgbouncer" else "")
        self.name = f"chainlit-orm{'+otel' if tracing else ''}/{backend}" + (
            f"-{via}" if via else "")
        self.description = "chainlit_orm.SQLDataLayer" + (
            " (tracing=True)" if tracing else "") + (
            " through PgBouncer 1.18 (pool_mode = transaction, default_pool_size = 10), "
            "?prepared_statement_cache_size=0" if via == "pgbouncer" else "")
        self.path = os.path.join(workdir, f"orm{suffix}.sqlite")
        self.database = f"{DB}{suffix}"
        #: where migrate and the bulk load run (never through a pooler), and the layer's URL
        self.direct_url = self.url = URLS[backend].format(path=self.path).replace(
            f"/{DB}", f"/{self.database}")
        if via == "pgbouncer":
            self.url = PGBOUNCER.format(database=self.database)

    def check(self) -> None:
        m = _import()
        for attr in ("SQLDataLayer", "migrate"):
            try:
                getattr(m, attr)
            except Exception as e:
                raise Unavailable(f"chainlit_orm.{attr}: {type(e).__name__}: {e}") from e

    async def setup(self, ds: Dataset) -> None:
        m = _import()
        if self.via == "pgbouncer" and not await rawdb.port_open(6432):
            raise Unavailable("no PgBouncer on 127.0.0.1:6432 (bash scripts/services.sh)")
        if self.backend == "postgresql":
            await rawdb.pg_recreate(self.database)
        elif self.backend == "mariadb":
            await rawdb.my_recreate(self.database)
        else:
            for ext in ("", "-wal", "-shm", "-journal"):
                if os.path.exists(self.path + ext):
                    os.remove(self.path + ext)
        res = m.migrate(self.direct_url)  # migrate holds a session lock: never via a pooler
        if asyncio.iscoroutine(res):
            await res
        # shipped defaults: no option passed (validation, timeouts, retries, reconnect handling
        # as an app gets them); the report lists those defaults
        if self.tracing:
            self.layer = m.SQLDataLayer(self.url, tracing=True)
            self.settings["options"] = "tracing=True (else shipped defaults)"
        else:
            self.layer = m.SQLDataLayer(self.url)
            self.settings["options"] = "none (shipped defaults: " + shipped_defaults(
                m.SQLDataLayer) + ")"
        sql = getattr(self.layer, "sql", None)
        engine = getattr(sql, "engine", None)
        if engine is None:
            raise Unavailable("SQLDataLayer exposes no .sql.engine to count statements on")
        await self._bulk_load(ds, sql)
        # what still goes through SQLAlchemy (the schema check) is seen by its events; the
        # layer's own statements run on the driver connection and are reported to on_statement
        counting.instrument_engine(engine)
        auto = getattr(sql, "auto", None)
        if auto is not None and auto.sync_engine.pool is not engine.sync_engine.pool:
            counting.instrument_engine(auto)
        listeners = getattr(sql, "on_statement", None)
        if listeners is not None:
            listeners.append(counting.layer_statement)
        if self.backend == "sqlite":
            from sqlalchemy import text

            async with engine.connect() as conn:
                for p in ("journal_mode", "synchronous"):
                    self.settings[p] = (await conn.execute(text(f"PRAGMA {p}"))).scalar()
        elif self.backend == "postgresql":
            from sqlalchemy import text

            async with engine.connect() as conn:
                self.settings["synchronous_commit"] = (
                    await conn.execute(text("SHOW synchronous_commit"))).scalar()

    async def _bulk_load(self, ds: Dataset, sql: Any) -> None:
        """Core executemany into the layer's own model tables (column name = Chainlit key)."""
        from sqlalchemy.ext.asyncio import create_async_engine

        eng = create_async_engine(self.direct_url)
        tables = {"users": sql.users, "threads": sql.threads, "steps": sql.steps,
                  "elements": sql.elements, "feedbacks": sql.feedbacks}

        def fit(table: str, rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
            names = set().union(*(r.keys() for r in rows)) if rows else set()
            cols = [c for c in tables[table].columns if c.name in names]
            return [{c.key: r.get(c.name) for c in cols} for r in rows]

        # the case-folded search copies the layer writes with each name and message, computed
        # by the layer's own function (copies: the dataset's dicts are shared with every target)
        from chainlit_orm.models.search import folded_values

        threads, steps, elems, fbs = [], [], [], []
        for t in ds.threads:
            row = {"id": t.id, "createdAt": t.created_at, "name": t.name, "userId": t.user.id,
                   "userIdentifier": t.user.identifier, "tags": None, "metadata": t.metadata}
            for c in ACTIVITY_COLS:
                row[c] = t.activity
            threads.append({**row, **folded_values(sql.threads, row)})
            steps.extend({**s, **folded_values(sql.steps, s)} for s in t.steps)
            elems.extend(t.elements)
            fbs.extend(t.feedbacks)
        users = [{"id": u.id, "identifier": u.identifier, "metadata": u.metadata,
                  "createdAt": u.created_at} for u in ds.users]
        async with eng.begin() as conn:
            for name, rows in (("users", users), ("threads", threads), ("steps", steps),
                               ("elements", elems), ("feedbacks", fbs)):
                rows = fit(name, rows)
                for i in range(0, len(rows), 5000):
                    await conn.execute(tables[name].insert(), rows[i:i + 5000])
        # planner statistics after the bulk load, as for every other SQL target; on PostgreSQL
        # VACUUM too, as autovacuum would soon do in a live store (it sets the visibility map and
        # merges a GIN index's pending list, which a lookup otherwise reads through)
        from sqlalchemy import text

        stmts = {"postgresql": ["VACUUM ANALYZE"], "sqlite": ["ANALYZE"],
                 "mariadb": [f"ANALYZE TABLE {t.name}" for t in tables.values()]}[self.backend]
        async with eng.connect() as conn:
            await conn.execution_options(isolation_level="AUTOCOMMIT")
            for st in stmts:
                r = await conn.execute(text(st))
                if r.returns_rows:
                    r.fetchall()
            await conn.commit()
        await eng.dispose()

    async def leftover_rows(self, thread: ThreadRec) -> int | None:
        return None


class OrmDynamo(LayerTarget):
    """``DynamoDataLayer`` on a table made by ``chainlit_orm.migrate``; bulk-loaded in the layer's
    own item layout (:func:`orm_items`), with batch writes as for the other DynamoDB targets."""

    kind = "orm"
    backend = "dynamodb"
    name = "chainlit-orm/dynamodb"
    description = "chainlit_orm.DynamoDataLayer (botocore in a 32-thread pool)"
    TABLE = "bench_orm"
    max_w2_n = dynamo.MAX_W2_N
    scale_overrides = dynamo.MOTO_SCALE

    def check(self) -> None:
        try:
            _import().DynamoDataLayer  # noqa: B018
        except Exception as e:
            raise Unavailable(f"chainlit_orm.DynamoDataLayer: {type(e).__name__}: {e}") from e

    async def setup(self, ds: Dataset) -> None:
        m = _import()
        self.c = dynamo.client()
        try:
            self.c.delete_table(TableName=self.TABLE)
            self.c.get_waiter("table_not_exists").wait(TableName=self.TABLE)
        except self.c.exceptions.ResourceNotFoundException:
            pass
        os.environ.setdefault("AWS_ACCESS_KEY_ID", "bench")
        os.environ.setdefault("AWS_SECRET_ACCESS_KEY", "bench")
        url = f"dynamodb://{self.TABLE}?region={dynamo.REGION}&endpoint_url={dynamo.ENDPOINT}"
        await m.migrate(url)
        # the floor's pool is 32 threads; the layer's pool (= its thread count) is the same
        self.layer = m.DynamoDataLayer(self.TABLE, region=dynamo.REGION,
                                       endpoint_url=dynamo.ENDPOINT, max_pool_connections=32)
        self.settings["options"] = ("max_pool_connections=32 (the floor's pool; shipped 10), "
                                    "else shipped defaults: " + shipped_defaults(m.DynamoDataLayer))
        items = orm_items(self.layer, ds)
        await asyncio.to_thread(dynamo.batch_put_raw, self.c, self.TABLE, items)

    async def leftover_rows(self, thread: ThreadRec) -> int | None:
        return dynamo.leftover(self.c, self.TABLE, thread.id)


def orm_items(layer: Any, ds: Dataset) -> list[dict[str, Any]]:
    """The dataset as ``DynamoDataLayer`` writes it: rows made by the layer's own conversion
    (``_step_row``, ``to_row``), encoded by its codecs, keyed and indexed by its key templates,
    feedback as ``FEEDBACK#`` items with the per-value counters and sparse-index markers on the
    thread item. The same subset as :func:`dynamo.layout` (:func:`dynamo.loaded_threads`)."""
    from chainlit_orm.layers import dynamodb as ddb
    from chainlit_orm.models.convert import to_row

    b = layer.dynamo
    models = b.models

    def item(entity: str, keys: dict[str, Any], row: dict[str, Any]) -> dict[str, Any]:
        codec = b.codecs[entity]
        it = dict(b.layout.key_of(entity, **keys))
        for name, value in row.items():
            if value is not None:
                it[name] = codec.encode(name, value)
        for attribute, value in b.layout.index_attributes(entity, row).items():
            it[attribute] = {"S": value}
        return it

    items: list[dict[str, Any]] = []
    for u in ds.users:
        items.append(item("user", {"identifier": u.identifier},
                          {"id": u.id, "identifier": u.identifier, "metadata": u.metadata,
                           "createdAt": u.created_at}))
    for t, with_children in dynamo.loaded_threads(ds):
        # activityAt is the layer's own column (not a Chainlit key): the row is built directly
        row = {"id": t.id, "createdAt": t.created_at, "activityAt": t.activity, "name": t.name,
               "userId": t.user.id, "userIdentifier": t.user.identifier,
               "metadata": t.metadata}
        thread_item = item("thread", {"id": t.id}, row)
        items.append(thread_item)
        if not with_children:
            continue
        for s in t.steps:
            srow, _ = layer._step_row(s, create=True)
            items.append(item("step", {"threadId": t.id, "id": srow["id"]}, srow))
        for e in t.elements:
            erow = to_row(models, "element", e)
            items.append(item("element", {"threadId": t.id, "id": erow["id"]}, erow))
        counts: dict[int, int] = {}
        for f in t.feedbacks:
            frow = {"id": f["id"], "forId": f["forId"], "threadId": t.id,
                    "value": int(f["value"]), "comment": f.get("comment")}
            items.append(item("feedback", {"threadId": t.id, "forId": f["forId"]}, frow))
            counts[frow["value"]] = counts.get(frow["value"], 0) + 1
        for value, n in counts.items():
            thread_item[ddb.FEEDBACK_COUNTERS[value]] = {"N": str(n)}
            marker = b.layout.feedback_marker(value, t.user.id)
            if marker is not None and marker[1]:
                thread_item[marker[0]] = {"S": marker[1]}
    return items
