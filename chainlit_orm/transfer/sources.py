"""Bulk reads: every user and every thread (with all its rows) of a store, in a stable order.

Every source hands out records (:mod:`chainlit_orm.transfer.records`) in ascending id order,
users first, then threads a batch at a time; a thread is always whole (its steps, elements and
feedback come with it). The order is what makes a copy resumable (the checkpoint is the last
thread id written) and an export canonical.

* :class:`SQLSource`: a chainlit-orm database, read with keyset pagination (``id > :after
  ORDER BY id LIMIT :n``) and one ``IN`` query per entity per batch.
* :class:`DynamoSource`: a chainlit-orm DynamoDB table. A Scan has no order, so the whole table
  is read by one consistent Scan into a temporary SQLite file (a snapshot), which then serves
  users and partitions in id order whatever the table's size, in flat memory. (Reading each
  partition with its own Query would cost the same on DynamoDB plus a request per thread, and
  on moto, whose Query looks at every item of the table, grow with the square of the size.)
  One user's data are read through the layer's list index and a Query per thread.

:mod:`chainlit_orm.transfer.official` (Chainlit's ``ChainlitDataLayer`` schema) and
:mod:`chainlit_orm.transfer.bundle` (a bundle directory) are sources too.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import os
import sqlite3
import tempfile
from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import sqlalchemy as sa
from chainlit.data.storage_clients.base import BaseStorageClient

from chainlit_orm.errors import NotFoundError, StorageError
from chainlit_orm.models.modelset import ModelSet
from chainlit_orm.models.types import canonical_timestamp
from chainlit_orm.transfer import _layer
from chainlit_orm.transfer._tasks import gather_bounded
from chainlit_orm.transfer.records import FILE_KEY, ThreadData, finish_thread, record

__all__ = ["DynamoSource", "SQLSource", "Scope", "Source"]

#: Partitions read at once from DynamoDB (the table client's pool has 16 connections).
DYNAMO_READS = 16


@dataclass
class Scope:
    """Which part of a store to move: one user's data (``user``: an identifier) and/or the
    threads active since ``since`` (compared with thread activity). ``user_id`` is filled in by
    the source that finds the user."""

    user: str | None = None
    since: str | None = None
    user_id: str | None = field(default=None, compare=False)

    def __post_init__(self) -> None:
        if self.since is not None:
            self.since = canonical_timestamp(self.since)


class Source(Protocol):
    """What every store read by a transfer offers (see the module docstring)."""

    models: ModelSet
    #: the store as it may be shown (passwords masked)
    shown: str
    #: ``sqlite``, ``postgresql``, ``mysql``, ``mariadb``, ``dynamodb``, ``official``, ``bundle``
    kind: str
    @property
    def skipped(self) -> dict[str, int]:
        """Rows the source holds that chainlit-orm cannot, by reason (left out of the copy)."""

    async def open(self, scope: Scope) -> None:
        """Check the store and resolve ``scope.user`` (NotFoundError when it is not there)."""

    def iter_users(self, scope: Scope, batch: int) -> AsyncIterator[list[dict[str, Any]]]: ...

    def iter_threads(self, scope: Scope, after: str | None, batch: int
                     ) -> AsyncIterator[list[ThreadData]]: ...

    async def totals(self, scope: Scope) -> dict[str, int | None]:
        """Rows in scope per entity name, where known cheaply (for progress bars)."""

    async def read_file(self, element: Mapping[str, Any]) -> bytes | None:
        """The bytes of an element's stored file; None when its object is absent."""

    async def close(self) -> None: ...


class Store(Source, Protocol):
    """A source that can also be read by id: what a verification reads the destination with."""

    async def fetch_threads(self, ids: Sequence[str]) -> list[ThreadData]: ...

    async def fetch_users(self, users: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]: ...


async def read_stored_file(storage: BaseStorageClient | None, element: Mapping[str, Any],
                           where: str) -> bytes | None:
    """An element's object from ``storage``; None when absent. No storage configured while an
    element has an object is an error: silently copying rows without their files loses data."""
    key = element.get("objectKey")
    if not key:
        return None
    if storage is None:
        raise StorageError(
            f"element {element['id']} has a stored file ({key}) but no storage is configured "
            f"for {where}: pass its storage URL (or --no-files to copy rows only)",
            detail=element["id"])
    try:
        return await _layer.read_object(storage, str(key))
    except StorageError as exc:
        raise StorageError(f"cannot read the file of element {element['id']} ({key}) from "
                           f"{where}: {exc}", detail=element["id"]) from exc


# --------------------------------------------------------------------------- SQL


class SQLSource:
    """A chainlit-orm SQL database (SQLite, PostgreSQL, MySQL/MariaDB). Every read runs through
    the layer's retries of transient failures and its typed errors."""

    def __init__(self, url: str, models: ModelSet, storage: BaseStorageClient | None) -> None:
        self.db = _layer.SQLHandle(url, models)
        self.models = models
        self.storage = storage
        self.shown = self.db.shown
        self.kind = self.db.dialect
        self.skipped: dict[str, int] = {}
        t = models.table
        self.users, self.threads = t("user"), t("thread")
        self.tables = {"step": t("step"), "element": t("element"), "feedback": t("feedback")}

    def _select(self, entity: str) -> Any:
        """SELECT of an entity's portable columns: not the derived ones (a search copy of
        every message text would double the bytes read), which the destination recomputes."""
        table = self.models.table(entity)
        return sa.select(*(table.c[n] for n in _layer.portable_columns(self.models, entity)))

    async def _rows(self, stmt: Any) -> list[dict[str, Any]]:
        async def read() -> list[dict[str, Any]]:
            async with self.db.engine.connect() as conn:
                return [dict(r._mapping) for r in await conn.execute(stmt)]

        return await self.db.run(read)

    async def open(self, scope: Scope) -> None:
        await self.db.ensure_ready()
        if scope.user is not None:
            found = await self._rows(sa.select(self.users.c.id).where(
                self.users.c.identifier == scope.user))
            if not found:
                raise NotFoundError(f"no user {scope.user!r} in {self.shown}", detail=scope.user)
            scope.user_id = str(found[0]["id"])

    def _thread_filter(self, scope: Scope) -> list[Any]:
        t = self.threads
        where: list[Any] = []
        if scope.user_id is not None:
            where.append(t.c.userId == scope.user_id)
        if scope.since is not None:
            where.append(t.c.activityAt >= scope.since)
        return where

    async def iter_users(self, scope: Scope, batch: int) -> AsyncIterator[list[dict[str, Any]]]:
        u = self.users
        after: str | None = None
        while True:
            stmt = self._select("user").order_by(u.c.id).limit(batch)
            if scope.user is not None:
                stmt = stmt.where(u.c.identifier == scope.user)
            if after is not None:
                stmt = stmt.where(u.c.id > after)
            rows = await self._rows(stmt)
            if not rows:
                return
            yield [record(self.models, "user", r) for r in rows]
            after = str(rows[-1]["id"])

    async def iter_threads(self, scope: Scope, after: str | None, batch: int
                           ) -> AsyncIterator[list[ThreadData]]:
        t = self.threads
        while True:
            stmt = sa.select(t.c.id).where(*self._thread_filter(scope)).order_by(t.c.id).limit(
                batch)
            if after is not None:
                stmt = stmt.where(t.c.id > after)
            ids = [str(r["id"]) for r in await self._rows(stmt)]
            if not ids:
                return
            yield await self.fetch_threads(ids)
            after = ids[-1]

    async def fetch_threads(self, ids: Sequence[str]) -> list[ThreadData]:
        """The threads with these ids that exist, whole, in id order."""
        t = self.threads

        async def read() -> list[ThreadData]:
            found: dict[str, ThreadData] = {}
            async with self.db.engine.connect() as conn:
                for row in await conn.execute(
                        self._select("thread").where(t.c.id.in_(list(ids)))):
                    data = dict(row._mapping)
                    found[str(data["id"])] = ThreadData(record(self.models, "thread", data))
                for entity, table in self.tables.items():
                    if not found:
                        break
                    stmt = self._select(entity).where(table.c.threadId.in_(list(found)))
                    for row in await conn.execute(stmt):
                        data = dict(row._mapping)
                        owner = found.get(str(data["threadId"]))
                        if owner is not None:
                            owner.children(entity).append(record(self.models, entity, data))
            return [finish_thread(self.models, found[i]) for i in sorted(found)]

        return await self.db.run(read)

    async def fetch_users(self, users: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
        u = self.users
        ids = [str(x["id"]) for x in users]
        rows = await self._rows(self._select("user").where(u.c.id.in_(ids)))
        return [record(self.models, "user", r) for r in rows]

    async def totals(self, scope: Scope) -> dict[str, int | None]:
        t = self.threads
        where = self._thread_filter(scope)
        statements: dict[str, Any] = {}
        users = sa.select(sa.func.count()).select_from(self.users)
        if scope.user is not None:
            users = users.where(self.users.c.identifier == scope.user)
        statements["users"] = users
        statements["threads"] = sa.select(sa.func.count()).select_from(t).where(*where)
        for entity, table in self.tables.items():
            stmt = sa.select(sa.func.count()).select_from(table)
            if where:
                stmt = stmt.where(table.c.threadId.in_(sa.select(t.c.id).where(*where)))
            statements[f"{entity}s"] = stmt

        async def read() -> dict[str, int | None]:
            async with self.db.engine.connect() as conn:
                return {name: int((await conn.execute(stmt)).scalar_one())
                        for name, stmt in statements.items()}

        return await self.db.run(read)

    async def read_file(self, element: Mapping[str, Any]) -> bytes | None:
        return await read_stored_file(self.storage, element, self.shown)

    async def close(self) -> None:
        await self.db.close()


# ---------------------------------------------------------------------- DynamoDB


class _Spool:
    """A snapshot of a DynamoDB table in a temporary SQLite file (not in memory): its users, its
    thread items (id, owner, activity) and every item of every thread partition, in wire form,
    so partitions are handed out in id order whatever the table's size.

    sqlite3 is synchronous: every call runs in a worker thread, one at a time."""

    def __init__(self) -> None:
        handle, self.path = tempfile.mkstemp(prefix="chainlit-orm-snapshot-", suffix=".sqlite")
        os.close(handle)
        self.conn = sqlite3.connect(self.path, check_same_thread=False)
        self.conn.executescript(
            "PRAGMA journal_mode=OFF; PRAGMA synchronous=OFF;"
            "CREATE TABLE users (id TEXT PRIMARY KEY, identifier TEXT, item TEXT);"
            "CREATE TABLE threads (id TEXT PRIMARY KEY, user_id TEXT, activity TEXT);"
            "CREATE TABLE items (thread_id TEXT, sk TEXT, item TEXT, PRIMARY KEY (thread_id, sk));")
        self.lock = asyncio.Lock()

    async def run(self, sql: str, params: Sequence[Any] = (), *, many: bool = False
                  ) -> list[tuple[Any, ...]]:
        def work() -> list[tuple[Any, ...]]:
            if many:
                self.conn.executemany(sql, params)
                self.conn.commit()
                return []
            return self.conn.execute(sql, params).fetchall()

        async with self.lock:
            return await asyncio.to_thread(work)

    async def close(self) -> None:
        async with self.lock:
            await asyncio.to_thread(self.conn.close)
        with contextlib.suppress(FileNotFoundError):
            os.remove(self.path)


def _dumps(item: Mapping[str, Any]) -> str:
    """An item in wire form as JSON (binary values, which DynamoDB allows, as base64)."""
    return json.dumps(item, default=lambda b: {"$bytes": base64.b64encode(b).decode()})


def _loads(text: str) -> dict[str, Any]:
    def revive(obj: dict[str, Any]) -> Any:
        return base64.b64decode(obj["$bytes"]) if set(obj) == {"$bytes"} else obj

    return dict(json.loads(text, object_hook=revive))


class DynamoSource:
    """A chainlit-orm DynamoDB table (see the module docstring).

    Reading the whole table (no ``user`` in scope) is one consistent Scan spooled to a temporary
    SQLite file: the cheapest way DynamoDB reads everything, and each partition is then read
    from the spool. One user's data are read with the layer's list index and one Query per
    thread. ``snapshot=False`` makes :meth:`fetch_threads` query each thread even so (a
    verification of one user's copy into a large table).
    """

    kind = "dynamodb"

    def __init__(self, url: str, models: ModelSet, storage: BaseStorageClient | None, *,
                 snapshot: bool = True) -> None:
        self.table = _layer.DynamoTable(url, models, storage)
        self.models = models
        self.storage = storage
        self.shown = self.table.shown
        self.skipped: dict[str, int] = {}
        self.snapshot = snapshot
        self._spool: _Spool | None = None

    async def open(self, scope: Scope) -> None:
        await self.table.ensure_ready()
        if scope.user is not None:
            found = await self.table.get_user(scope.user)
            if found is None:
                raise NotFoundError(f"no user {scope.user!r} in {self.shown}", detail=scope.user)
            scope.user_id = str(found["id"])

    async def _spooled(self) -> _Spool:
        """The table's snapshot, taken by one Scan on first use."""
        if self._spool is None:
            spool = _Spool()
            try:
                async for page in self.table.scan_items():
                    users, threads, items = [], [], []
                    for item in page:
                        kind, thread_id = self.table.classify(item)
                        if kind == "user":
                            row = self.table.user_row(item)
                            users.append((str(row["id"]), str(row["identifier"]), _dumps(item)))
                        elif thread_id is not None:
                            items.append((thread_id, item["SK"]["S"], _dumps(item)))
                            if kind == "thread":
                                head = self.table.thread_head(item)
                                threads.append((thread_id, head.get("userId"),
                                                head.get("activityAt")))
                    await spool.run("INSERT OR REPLACE INTO users VALUES (?, ?, ?)", users,
                                    many=True)
                    await spool.run("INSERT OR REPLACE INTO threads VALUES (?, ?, ?)", threads,
                                    many=True)
                    await spool.run("INSERT OR REPLACE INTO items VALUES (?, ?, ?)", items,
                                    many=True)
            except BaseException:
                await spool.close()
                raise
            self._spool = spool
        return self._spool

    async def iter_users(self, scope: Scope, batch: int) -> AsyncIterator[list[dict[str, Any]]]:
        if scope.user is not None:
            found = await self.table.get_user(scope.user)
            if found is not None:
                yield [record(self.models, "user", found)]
            return
        spool = await self._spooled()
        after = ""
        while True:
            page = await spool.run("SELECT id, item FROM users WHERE id > ? ORDER BY id LIMIT ?",
                                   (after, batch))
            if not page:
                return
            yield [record(self.models, "user", self.table.user_row(_loads(item)))
                   for _, item in page]
            after = page[-1][0]

    async def _thread_ids(self, scope: Scope, after: str | None, batch: int
                          ) -> AsyncIterator[list[str]]:
        if scope.user_id is not None:  # one user's threads: the list index, not a Scan
            pairs = sorted(p for p in await self.table.user_thread_ids(scope.user_id)
                           if (after is None or p[0] > after)
                           and (scope.since is None or (p[1] or "") >= scope.since))
            for start in range(0, len(pairs), batch):
                yield [p[0] for p in pairs[start:start + batch]]
            return
        spool = await self._spooled()
        cursor = after or ""
        while True:
            sql = "SELECT id FROM threads WHERE id > ?"
            params: list[Any] = [cursor]
            if scope.since is not None:
                sql += " AND activity >= ?"
                params.append(scope.since)
            page = await spool.run(sql + " ORDER BY id LIMIT ?", (*params, batch))
            if not page:
                return
            yield [row[0] for row in page]
            cursor = page[-1][0]

    async def iter_threads(self, scope: Scope, after: str | None, batch: int
                           ) -> AsyncIterator[list[ThreadData]]:
        snapshot = scope.user_id is None
        async for ids in self._thread_ids(scope, after, batch):
            found = await self._read(ids, snapshot=snapshot)
            if found:
                yield found

    async def fetch_threads(self, ids: Sequence[str]) -> list[ThreadData]:
        return await self._read(ids, snapshot=self.snapshot)

    async def _read(self, ids: Sequence[str], *, snapshot: bool) -> list[ThreadData]:
        if snapshot:
            spool = await self._spooled()
            marks = ",".join("?" * len(ids))
            rows = await spool.run(f"SELECT thread_id, item FROM items WHERE thread_id IN "
                                   f"({marks}) ORDER BY thread_id, sk", list(ids))
            grouped: dict[str, list[dict[str, Any]]] = {}
            for thread_id, item in rows:
                grouped.setdefault(thread_id, []).append(_loads(item))
            read = await gather_bounded(DYNAMO_READS, (
                self.table.decode_partition(i, items) for i, items in grouped.items()))
        else:
            read = await gather_bounded(DYNAMO_READS, (self.table.read_partition(i)
                                                       for i in ids))
        out = []
        for found in read:
            if found is None:
                continue
            thread, steps, elements, feedbacks = found
            data = ThreadData(
                record(self.models, "thread", thread),
                [record(self.models, "step", r) for r in steps],
                [record(self.models, "element", r) for r in elements],
                [record(self.models, "feedback", r) for r in feedbacks])
            out.append(finish_thread(self.models, data))
        out.sort(key=lambda d: d.id)
        return out

    async def fetch_users(self, users: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
        rows = await self.table.get_users([str(u["identifier"]) for u in users])
        return [record(self.models, "user", r) for r in rows]

    async def totals(self, scope: Scope) -> dict[str, int | None]:
        if scope.user_id is not None:
            threads = len([p for p in await self.table.user_thread_ids(scope.user_id)
                           if scope.since is None or (p[1] or "") >= scope.since])
            return {"users": 1, "threads": threads}
        spool = await self._spooled()
        users = (await spool.run("SELECT COUNT(*) FROM users"))[0][0]
        sql, params = "SELECT COUNT(*) FROM threads", tuple[str, ...]()
        if scope.since is not None:
            sql, params = sql + " WHERE activity >= ?", (scope.since,)
        threads = (await spool.run(sql, params))[0][0]
        return {"users": int(users), "threads": int(threads)}

    async def read_file(self, element: Mapping[str, Any]) -> bytes | None:
        return await read_stored_file(self.storage, element, self.shown)

    async def close(self) -> None:
        try:
            if self._spool is not None:
                await self._spool.close()
        finally:
            await self.table.close()


def file_info(data: bytes | None) -> dict[str, Any]:
    """The ``$file`` value of an element whose object read as ``data`` (None: missing)."""
    import hashlib

    if data is None:
        return {"missing": True}
    return {"sha256": hashlib.sha256(data).hexdigest(), "size": len(data)}


__all__ += ["FILE_KEY", "Store", "file_info", "read_stored_file"]
