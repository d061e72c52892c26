"""Bulk writes: users and whole threads into a chainlit-orm database or DynamoDB table.

Every write is an idempotent upsert keyed by the rows' ids (so a copy run again after an
interruption leaves exactly one copy of every row), and every derived value is computed by the
layer's own code (:mod:`chainlit_orm.transfer._layer`). Before a batch is written it is checked
against what the destination already holds; a conflict stops the transfer with the first
conflicting row named and nothing of the batch written:

* a user whose identifier the destination has under another id, or whose id it has under another
  identifier;
* a thread the destination holds for another user (a thread it holds without an owner, a stub a
  step write left, is completed);
* on SQL, a step, element or feedback id the destination has in another thread, or a feedback
  for the same step under another id (an upsert by id would move another thread's row). On
  DynamoDB a row's key includes its thread, so a write can never replace another thread's row.

:class:`SQLSink` writes one transaction per batch of threads: ``INSERT ... ON CONFLICT DO UPDATE``
(``ON DUPLICATE KEY UPDATE`` on MySQL/MariaDB) run as an executemany per entity, parents first.
:class:`DynamoSink` writes whole items with BatchWriteItem; a thread item carries its feedback
counters, counted over the copied feedback and any the destination already had for the thread.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import timedelta
from typing import Any, Protocol

import sqlalchemy as sa
from chainlit.data.storage_clients.base import BaseStorageClient
from sqlalchemy.dialects import mysql, postgresql, sqlite

from chainlit_orm.errors import ConflictError
from chainlit_orm.models.modelset import ModelSet
from chainlit_orm.transfer import _layer
from chainlit_orm.transfer._tasks import gather_bounded
from chainlit_orm.transfer.records import CHILD_ENTITIES, ThreadData

__all__ = ["DynamoSink", "SQLSink", "Sink"]

#: Object uploads (element files, offloaded texts) in flight at once.
UPLOADS = 8


class Sink(Protocol):
    """What every destination of a transfer offers (see the module docstring)."""

    models: ModelSet
    shown: str
    kind: str

    async def prepare(self) -> list[str]:
        """Bring the destination to the current schema (``migrate``); lines to show."""

    async def check_users(self, users: Sequence[Mapping[str, Any]]) -> None: ...

    async def write_users(self, users: Sequence[Mapping[str, Any]]) -> None: ...

    async def check_threads(self, batch: Sequence[ThreadData]) -> None: ...

    async def write_threads(self, batch: Sequence[ThreadData]) -> None: ...

    async def write_file(self, element: Mapping[str, Any], data: bytes) -> None:
        """Store an element's file where the destination keeps it."""

    async def close(self) -> None: ...


def _user_conflicts(users: Sequence[Mapping[str, Any]],
                    existing: Sequence[Mapping[str, Any]], shown: str) -> None:
    by_identifier = {str(u["identifier"]): str(u["id"]) for u in existing}
    by_id = {str(u["id"]): str(u["identifier"]) for u in existing}
    for user in users:
        user_id, identifier = str(user["id"]), str(user["identifier"])
        held = by_identifier.get(identifier)
        if held is not None and held != user_id:
            raise ConflictError(
                f"user {identifier!r} exists in {shown} with another id ({held}, not {user_id}); "
                "nothing of it was overwritten", detail=identifier)
        named = by_id.get(user_id)
        if named is not None and named != identifier:
            raise ConflictError(
                f"user id {user_id} ({identifier!r}) exists in {shown} for another identifier "
                f"({named!r}); nothing of it was overwritten", detail=user_id)


def _thread_conflicts(batch: Sequence[ThreadData], owners: Mapping[str, str | None],
                      shown: str) -> None:
    for data in batch:
        if data.id not in owners:
            continue
        held, wanted = owners[data.id], data.thread.get("userId")
        if held is not None and str(held) != str(wanted):
            raise ConflictError(
                f"thread {data.id} exists in {shown} and belongs to another user ({held}, not "
                f"{wanted}); nothing of it was overwritten", detail=data.id)


async def upload(storage: BaseStorageClient, key: str, data: bytes, mime: str,
                 name: str | None) -> None:
    """Store an object as the layer does (overwrite: a rerun writes the same bytes again)."""
    kwargs: dict[str, Any] = {}
    if name is not None:
        kwargs["content_disposition"] = _layer.content_disposition(name)
    await storage.upload_file(key, data, mime=mime, overwrite=True, **kwargs)


# --------------------------------------------------------------------------- SQL


class SQLSink:
    """A chainlit-orm SQL database (see the module docstring)."""

    def __init__(self, url: str, models: ModelSet, storage: BaseStorageClient | None) -> None:
        self.url = url
        self.models = models
        self.storage = storage
        self.db = _layer.SQLHandle(url, models)
        self.shown = self.db.shown
        self.kind = self.db.dialect
        self._statements: dict[str, Any] = {}

    async def prepare(self) -> list[str]:
        lines = await _layer.migrate(self.url, self.models)
        await self.db.ensure_ready()
        return lines

    def _upsert(self, entity: str) -> Any:
        """``INSERT ... ON CONFLICT (id) DO UPDATE`` every column, compiled by SQLAlchemy."""
        if entity not in self._statements:
            table = self.models.table(entity)
            names = [c.name for c in table.columns if c.name != "id"]
            if self.db.dialect == "postgresql" or self.db.dialect == "sqlite":
                module: Any = postgresql if self.db.dialect == "postgresql" else sqlite
                insert = module.insert(table)
                stmt = insert.on_conflict_do_update(
                    index_elements=[table.c.id], set_={n: insert.excluded[n] for n in names})
            else:
                insert = mysql.insert(table)
                stmt = insert.on_duplicate_key_update({n: insert.inserted[n] for n in names})
            self._statements[entity] = stmt
        return self._statements[entity]

    def _rows(self, entity: str, records: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
        return [_layer.stored_row(self.models, entity, r, search_copies=True) for r in records]

    async def check_users(self, users: Sequence[Mapping[str, Any]]) -> None:
        u = self.models.table("user")
        ids = [str(x["id"]) for x in users]
        identifiers = [str(x["identifier"]) for x in users]
        stmt = sa.select(u.c.id, u.c.identifier).where(
            sa.or_(u.c.id.in_(ids), u.c.identifier.in_(identifiers)))

        async def read() -> list[dict[str, Any]]:
            async with self.db.engine.connect() as conn:
                return [dict(r._mapping) for r in await conn.execute(stmt)]

        _user_conflicts(users, await self.db.run(read), self.shown)

    async def write_users(self, users: Sequence[Mapping[str, Any]]) -> None:
        if not users:
            return
        rows = self._rows("user", users)

        async def write() -> None:
            async with self.db.engine.begin() as conn:
                await conn.execute(self._upsert("user"), rows)

        await self.db.run(write)

    async def check_threads(self, batch: Sequence[ThreadData]) -> None:
        t = self.models.table("thread")
        ids = [d.id for d in batch]

        async def check() -> None:
            async with self.db.engine.connect() as conn:
                owners = {str(r[0]): (None if r[1] is None else str(r[1])) for r in
                          await conn.execute(sa.select(t.c.id, t.c.userId).where(
                              t.c.id.in_(ids)))}
                _thread_conflicts(batch, owners, self.shown)
                for entity in CHILD_ENTITIES:
                    await self._check_children(conn, entity, batch)

        await self.db.run(check)

    async def _check_children(self, conn: Any, entity: str, batch: Sequence[ThreadData]) -> None:
        table = self.models.table(entity)
        wanted = {str(r["id"]): r for d in batch for r in d.children(entity)}
        if not wanted:
            return
        columns = [table.c.id, table.c.threadId]
        where: sa.ColumnElement[bool] = table.c.id.in_(list(wanted))
        if entity == "feedback":
            columns.append(table.c.forId)
            by_step = {str(r["forId"]): r for r in wanted.values()}
            where = sa.or_(where, table.c.forId.in_(list(by_step)))
        for found in await conn.execute(sa.select(*columns).where(where)):
            row = dict(found._mapping)
            ours = wanted.get(str(row["id"]))
            if ours is not None and str(ours["threadId"]) != str(row["threadId"]):
                raise ConflictError(
                    f"{entity} {row['id']} exists in {self.shown} in another thread "
                    f"({row['threadId']}, not {ours['threadId']}); nothing of it was overwritten",
                    detail=str(row["id"]))
            if entity == "feedback" and ours is None:
                other = by_step[str(row["forId"])]
                raise ConflictError(
                    f"step {row['forId']} already has feedback {row['id']} in {self.shown} "
                    f"(copying feedback {other['id']}); nothing of it was overwritten",
                    detail=str(row["id"]))

    async def write_threads(self, batch: Sequence[ThreadData]) -> None:
        if not batch:
            return
        threads = self._rows("thread", [d.thread for d in batch])
        children = {e: self._rows(e, [r for d in batch for r in d.children(e)])
                    for e in CHILD_ENTITIES}

        async def write() -> None:  # one transaction: run again whole after a transient failure
            async with self.db.engine.begin() as conn:
                await conn.execute(self._upsert("thread"), threads)
                for entity, rows in children.items():
                    if rows:
                        await conn.execute(self._upsert(entity), rows)

        await self.db.run(write)

    async def erased(self, thread_ids: Sequence[str]) -> set[str]:
        """Which of these threads the destination has a tombstone for (``erase_user`` removed
        them there): a transfer leaves them out, or a backup restored after an erasure would
        bring the erased person's threads back."""
        from chainlit_orm.schema_gen.sql import tombstone_table

        x = tombstone_table(self.models)
        ids = list(dict.fromkeys(thread_ids))

        async def read() -> set[str]:
            async with self.db.engine.connect() as conn:
                return {str(r[0]) for r in await conn.execute(
                    sa.select(x.c.id).where(x.c.id.in_(ids)))}

        return await self.db.run(read) if ids else set()

    async def write_file(self, element: Mapping[str, Any], data: bytes) -> None:
        assert self.storage is not None  # the copy checks a destination storage exists first
        await upload(self.storage, str(element["objectKey"]), data,
                     str(element.get("mime") or "application/octet-stream"),
                     element.get("name"))

    async def close(self) -> None:
        await self.db.close()


# ---------------------------------------------------------------------- DynamoDB


class DynamoSink:
    """A chainlit-orm DynamoDB table (see the module docstring)."""

    kind = "dynamodb"

    def __init__(self, url: str, models: ModelSet, storage: BaseStorageClient | None, *,
                 retention: timedelta | None = None) -> None:
        self.url = url
        self.models = models
        self.storage = storage
        # retention: thread items carry the TTL a layer with retention= writes (expiresAt)
        self.table = _layer.DynamoTable(url, models, storage, retention=retention)
        self.shown = self.table.shown
        #: owners of the batch's threads, read by check_threads for write_threads
        self._owners: dict[str, str | None] | None = None

    async def prepare(self) -> list[str]:
        lines = await _layer.migrate(self.url, self.models)
        await self.table.ensure_ready()
        return lines

    async def check_users(self, users: Sequence[Mapping[str, Any]]) -> None:
        existing = await self.table.get_users([str(u["identifier"]) for u in users])
        _user_conflicts(users, existing, self.shown)
        known = {str(u["id"]) for u in existing}
        others = [u for u in users if str(u["id"]) not in known]
        identifiers = await gather_bounded(
            16, (self.table.user_identifier(str(u["id"])) for u in others))
        _user_conflicts(others, [{"id": u["id"], "identifier": i}
                                 for u, i in zip(others, identifiers, strict=True)
                                 if i is not None], self.shown)

    async def write_users(self, users: Sequence[Mapping[str, Any]]) -> None:
        await self.table.put([self.table.user_item(
            _layer.stored_row(self.models, "user", u, search_copies=False)) for u in users])

    async def check_threads(self, batch: Sequence[ThreadData]) -> None:
        self._owners = await self.table.thread_owners([d.id for d in batch])
        _thread_conflicts(batch, self._owners, self.shown)

    async def write_threads(self, batch: Sequence[ThreadData]) -> None:
        """Children first, thread items last: a thread item appears in the list indexes only
        once everything in it is written."""
        owners = self._owners
        if owners is None:
            owners = await self.table.thread_owners([d.id for d in batch])
        already = await gather_bounded(16, (self.table.thread_feedback(d.id) for d in batch
                                            if d.id in owners))
        earlier = {str(rows[0]["threadId"]): rows for rows in already if rows}
        children: list[dict[str, Any]] = []
        threads: list[dict[str, Any]] = []
        uploads: list[tuple[str, bytes]] = []
        def stored(models: ModelSet, entity: str, row: Mapping[str, Any]) -> dict[str, Any]:
            # no search copies: a DynamoDB item has no folded attribute (its search folds the
            # projected name when it reads)
            return _layer.stored_row(models, entity, row, search_copies=False)

        for data in batch:
            for step in data.steps:
                item, texts = self.table.step_item(stored(self.models, "step", step))
                children.append(item)
                uploads += texts
            children += [self.table.element_item(stored(self.models, "element", e))
                         for e in data.elements]
            children += [self.table.feedback_item(stored(self.models, "feedback", f))
                         for f in data.feedbacks]
            feedback = {str(f["forId"]): f for f in earlier.get(data.id, [])}
            feedback.update({str(f["forId"]): f for f in data.feedbacks})
            counts = {0: 0, 1: 0}
            for row in feedback.values():
                if row.get("value") in counts:
                    counts[int(row["value"])] += 1
            threads.append(self.table.thread_item(stored(self.models, "thread", data.thread),
                                                  counts))
        if uploads:
            assert self.storage is not None
            storage = self.storage
            await gather_bounded(UPLOADS, (upload(storage, key, text,
                                                  "text/plain; charset=utf-8", None)
                                           for key, text in uploads))
        await self.table.put(children)
        await self.table.put(threads)
        self._owners = None

    async def erased(self, thread_ids: Sequence[str]) -> set[str]:
        """Which of these threads the destination has a tombstone item for (see
        :meth:`SQLSink.erased`)."""
        return await self.table.erased(thread_ids)

    async def write_file(self, element: Mapping[str, Any], data: bytes) -> None:
        assert self.storage is not None
        await upload(self.storage, str(element["objectKey"]), data,
                     str(element.get("mime") or "application/octet-stream"),
                     element.get("name"))

    async def close(self) -> None:
        await self.table.close()
