"""Reading a database of Chainlit's official data layer (``ChainlitDataLayer``), never writing it.

``chainlit.data.chainlit_data_layer.ChainlitDataLayer`` (asyncpg) keeps its data in the Prisma
schema of the Chainlit/chainlit-datalayer repository: tables ``"User"``, ``"Thread"``, ``"Step"``,
``"Element"``, ``"Feedback"`` with ``TEXT`` ids and ``TIMESTAMP(3)`` times. This module maps its
rows onto chainlit-orm's records the way that layer itself reads them back, so a thread shows the
same after the copy:

* **User**: ``id``, ``identifier``, ``metadata``, ``createdAt`` (no display name column).
* **Thread**: ``createdAt``, ``name``, ``metadata``, ``tags``, ``userId``, and ``userIdentifier``
  from the owner's row. Its *activity* (the thread-list order) is not stored there; it is derived
  by the rule ``migrate`` applies to an adopted Chainlit database: the latest user message, else
  the thread's creation.
* **Step**: ``ChainlitDataLayer.create_step`` stores the step's Chainlit ``createdAt`` in
  ``"startTime"`` (its ``"createdAt"`` column is the database's insert time) and orders a
  thread's steps by it, so ``"startTime"`` becomes ``createdAt`` (and ``start``), ``"endTime"``
  becomes ``end``. ``showInput`` was stored as ``str(value)``: ``"True"``/``"False"`` read back
  as booleans, as chainlit-orm's ``BoolOrText`` column reads them. Columns the schema lacks are
  empty; ``streaming`` is false.
* **Element**: ``"stepId"`` is ``forId``; ``type`` comes from its ``metadata`` (default
  ``"file"``, as that layer reads it); its file is the object ``objectKey`` in the storage the
  official layer was configured with (``--src-storage``).
* **Feedback**: ``"stepId"`` is ``forId`` and the thread is the step's; ``value`` is a float
  there, an integer 0 or 1 here.

Rows chainlit-orm cannot hold are left out and counted by reason (the summary and a bundle's
manifest list them; ``--verify`` compares what was copied): a soft-deleted thread (``"deletedAt"``
set: that layer no longer shows it) and the rows in it; a step or element without a thread; a
feedback without a step (``ON DELETE SET NULL`` leaves them) or whose step has no thread; a
feedback value other than 0 or 1; an id that is not a lower-case UUID (every id Chainlit makes
is one; chainlit-orm's PostgreSQL columns are ``UUID``); where that layer kept several
feedback rows for one step, all but the most recently updated (chainlit-orm keeps one per step);
and a row that chainlit-orm's input limits refuse (:mod:`chainlit_orm.models.limits`: the checks
every layer write passes, e.g. an identifier ending in a space, metadata nested deeper than
MariaDB and DynamoDB allow, a record above DynamoDB's item size): such a user with its threads
and their rows, such a thread with its rows, such a step with its feedback, such an element or
feedback alone. Each of those is also logged as a warning naming the row and the limit; the
summary counts them by entity and column.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import AsyncIterator, Mapping, Sequence
from typing import Any

import sqlalchemy as sa
from chainlit.data.storage_clients.base import BaseStorageClient

from chainlit_orm.errors import ConfigurationError, InvalidInputError, NotFoundError
from chainlit_orm.models.limits import MAX_RECORD_BYTES
from chainlit_orm.models.modelset import ModelSet
from chainlit_orm.models.types import BoolOrText, canonical_timestamp
from chainlit_orm.transfer import _layer
from chainlit_orm.transfer.records import ThreadData, finish_thread, record
from chainlit_orm.transfer.sources import Scope, read_stored_file

__all__ = ["OFFICIAL_TABLES", "OfficialSource"]

logger = logging.getLogger(__name__)

#: The tables that make a database Chainlit's official data layer's.
OFFICIAL_TABLES: tuple[str, ...] = ("User", "Thread", "Step", "Element", "Feedback")

_OFFICIAL_UUID = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$")
_SHOW_INPUT = BoolOrText()

#: Skip reasons, as the summary shows them.
DELETED = "thread soft-deleted in the official schema (deletedAt set), with its rows"
STEP_NO_THREAD = "step without a thread"
ELEMENT_NO_THREAD = "element without a thread"
FEEDBACK_NO_STEP = "feedback without a step"
FEEDBACK_NO_THREAD = "feedback on a step without a thread"
FEEDBACK_VALUE = "feedback value other than 0 or 1"
FEEDBACK_SUPERSEDED = "feedback superseded by a newer one on the same step"
NOT_UUID = "id that is not a lower-case UUID"
OWNER_SKIPPED = "thread whose owner's id is not a lower-case UUID, with its rows"
FEEDBACK_STEP_REFUSED = "feedback on a step that chainlit-orm's limits refuse"
OWNER_REFUSED = "thread whose owner chainlit-orm's limits refuse, with its rows"


def refusal_reason(entity: str, exc: InvalidInputError) -> str:
    """The summary's reason for a row the limits refuse: by entity and column (the message
    itself, which may quote the value, goes to the log)."""
    if exc.detail == entity:
        return f"{entity} larger than chainlit-orm's record limit ({MAX_RECORD_BYTES} bytes)"
    if exc.detail is None:
        return f"{entity} that chainlit-orm's limits refuse"
    return f"{entity} whose {exc.detail} chainlit-orm's limits refuse"


def _show_input(value: Any) -> bool | str | None:
    """``showInput`` as chainlit-orm's ``BoolOrText`` column reads it back (the dialect does not
    matter to that conversion)."""
    from sqlalchemy.dialects import postgresql

    return _SHOW_INPUT.process_result_value(value, postgresql.dialect())  # type: ignore[no-untyped-call]


def _uuid(value: Any) -> str | None:
    text = None if value is None else str(value)
    return text if text is not None and _OFFICIAL_UUID.match(text) else None


def _ts(value: Any) -> str | None:
    """A ``TIMESTAMP(3)`` as a canonical timestamp; that layer wrote naive times, read as UTC
    (``chainlit_orm.models.types.parse_timestamp``)."""
    return None if value is None else canonical_timestamp(value)


def _official_json(value: Any) -> Any:
    """asyncpg returns ``jsonb`` as text (no codec is set on this engine's connections)."""
    return json.loads(value) if isinstance(value, str) else value


#: Live threads with their owner's row (whose refusal leaves the thread out too).
_THREADS = ('SELECT t.id, t."createdAt", t.name, t.metadata, t."userId", t.tags, '
            'u.identifier, u.metadata AS "ownerMetadata", u."createdAt" AS "ownerCreatedAt" '
            'FROM "Thread" t LEFT JOIN "User" u ON u.id = t."userId" '
            'WHERE t."deletedAt" IS NULL')


class OfficialSource:
    """A ``ChainlitDataLayer`` PostgreSQL database, read with its own schema (module docstring)."""

    kind = "official"

    def __init__(self, url: str, models: ModelSet, storage: BaseStorageClient | None) -> None:
        self.db = _layer.SQLHandle(url, models, check_schema=False)
        self.engine, self.shown = self.db.engine, self.db.shown
        if self.db.dialect != "postgresql":
            raise ConfigurationError(
                f"Chainlit's official data layer runs on PostgreSQL only, not {self.shown}")
        self.models = models
        self.storage = storage
        self._unreachable: dict[str, int] = {}
        self._left_out: dict[str, set[str]] = {}

    @property
    def skipped(self) -> dict[str, int]:
        """Rows left out, by reason. Rows met while reading are counted by id, so reading
        a thread twice (the copy, then the verification) counts its rows once."""
        out = dict(self._unreachable)
        for reason, ids in self._left_out.items():
            out[reason] = out.get(reason, 0) + len(ids)
        return {reason: count for reason, count in out.items() if count}

    def _count(self, reason: str, count: int) -> None:
        self._unreachable[reason] = self._unreachable.get(reason, 0) + count

    def _skip(self, reason: str, row_id: object) -> None:
        self._left_out.setdefault(reason, set()).add(str(row_id))

    async def _query(self, stmt: Any, params: Mapping[str, Any] | None = None
                     ) -> list[dict[str, Any]]:
        """Rows of one statement, with the layer's retries of transient failures and typed
        errors (a read: running it again is harmless)."""
        async def read() -> list[dict[str, Any]]:
            async with self.engine.connect() as conn:
                return [dict(r._mapping) for r in await conn.execute(stmt, dict(params or {}))]

        return await self.db.run(read)

    async def _scalar(self, sql: str, **params: Any) -> int:
        rows = await self._query(sa.text(sql), params)
        return int(next(iter(rows[0].values())))

    async def open(self, scope: Scope) -> None:
        if scope.user is not None:
            rows = await self._query(sa.text('SELECT id FROM "User" WHERE identifier = :i'),
                                     {"i": scope.user})
            found = rows[0]["id"] if rows else None
            if found is None:
                raise NotFoundError(f"no user {scope.user!r} in {self.shown}", detail=scope.user)
            if _uuid(found) is None:
                raise NotFoundError(
                    f"user {scope.user!r} has the id {found!r}, which chainlit-orm cannot hold "
                    "(not a lower-case UUID)", detail=scope.user)
            user = await self._query(sa.text(
                'SELECT id, identifier, metadata, "createdAt" FROM "User" WHERE id = :u'),
                {"u": found})
            try:
                self._user_record(user[0])
            except InvalidInputError as exc:
                raise InvalidInputError(f"user {scope.user!r} cannot be copied: {exc}",
                                        detail=scope.user) from exc
            scope.user_id = str(found)
        await self._count_unreachable(scope)

    async def _count_unreachable(self, scope: Scope) -> None:
        """Rows no thread of the copy reaches, counted once up front."""
        owner = ' AND t."userId" = :uid' if scope.user_id else ""
        params = {"uid": scope.user_id} if scope.user_id else {}
        deleted = f'FROM "Thread" t WHERE t."deletedAt" IS NOT NULL{owner}'
        self._count(DELETED, await self._scalar(f"SELECT COUNT(*) {deleted}", **params)
                   + await self._scalar(f'SELECT COUNT(*) FROM "Step" WHERE "threadId" IN '
                                        f"(SELECT t.id {deleted})", **params)
                   + await self._scalar(f'SELECT COUNT(*) FROM "Element" WHERE "threadId" IN '
                                        f"(SELECT t.id {deleted})", **params)
                   + await self._scalar(
                       'SELECT COUNT(*) FROM "Feedback" f JOIN "Step" s ON s.id = f."stepId" '
                       f'WHERE s."threadId" IN (SELECT t.id {deleted})', **params))
        if scope.user_id is None:  # rows of no thread belong to no user
            self._count(STEP_NO_THREAD, await self._scalar(
                'SELECT COUNT(*) FROM "Step" WHERE "threadId" IS NULL'))
            self._count(ELEMENT_NO_THREAD, await self._scalar(
                'SELECT COUNT(*) FROM "Element" WHERE "threadId" IS NULL'))
            self._count(FEEDBACK_NO_STEP, await self._scalar(
                'SELECT COUNT(*) FROM "Feedback" WHERE "stepId" IS NULL'))
            self._count(FEEDBACK_NO_THREAD, await self._scalar(
                'SELECT COUNT(*) FROM "Feedback" f JOIN "Step" s ON s.id = f."stepId" '
                'WHERE s."threadId" IS NULL'))

    async def iter_users(self, scope: Scope, batch: int) -> AsyncIterator[list[dict[str, Any]]]:
        after = ""
        while True:
            sql = ('SELECT id, identifier, metadata, "createdAt" FROM "User" '
                   'WHERE id COLLATE "C" > :after')
            params: dict[str, Any] = {"after": after, "n": batch}
            if scope.user is not None:
                sql += " AND identifier = :i"
                params["i"] = scope.user
            rows = await self._query(sa.text(sql + ' ORDER BY id COLLATE "C" LIMIT :n'), params)
            if not rows:
                return
            out = []
            for row in rows:
                if _uuid(row["id"]) is None:
                    self._skip(NOT_UUID, f"user {row['id']}")
                    continue
                try:
                    out.append(self._user_record(row))
                except InvalidInputError as exc:
                    self._refuse("user", row["id"], exc)
            if out:
                yield out
            after = str(rows[-1]["id"])

    def _user_record(self, row: Mapping[str, Any]) -> dict[str, Any]:
        """A ``"User"`` row as a record, checked against the limits.

        Raises:
            InvalidInputError: chainlit-orm cannot hold this user.
        """
        return record(self.models, "user", {
            "id": row["id"], "identifier": row["identifier"], "display_name": None,
            "metadata": _official_json(row["metadata"]), "createdAt": _ts(row["createdAt"])},
            validate=True)

    def _refuse(self, entity: str, row_id: object, exc: InvalidInputError,
                reason: str | None = None) -> str:
        """Leave out a row the limits refuse: counted by reason, logged with its id."""
        reason = reason or refusal_reason(entity, exc)
        key = f"{entity} {row_id}"
        if key not in self._left_out.get(reason, ()):  # a verification reads it again
            logger.warning("left out %s %s: %s", entity, row_id, exc)
        self._skip(reason, key)
        return reason

    async def _thread_rows(self, scope: Scope, after: str, batch: int) -> list[dict[str, Any]]:
        sql = (_THREADS + ' AND t.id COLLATE "C" > :after')
        params: dict[str, Any] = {"after": after, "n": batch}
        if scope.user_id is not None:
            sql += ' AND t."userId" = :uid'
            params["uid"] = scope.user_id
        return await self._query(sa.text(sql + ' ORDER BY t.id COLLATE "C" LIMIT :n'), params)

    async def iter_threads(self, scope: Scope, after: str | None, batch: int
                           ) -> AsyncIterator[list[ThreadData]]:
        cursor = after or ""
        while True:
            rows = await self._thread_rows(scope, cursor, batch)
            if not rows:
                return
            cursor = str(rows[-1]["id"])
            found = await self._threads(rows)
            if scope.since is not None:
                found = [d for d in found if str(d.thread["activityAt"]) >= scope.since]
            if found:
                yield found

    async def fetch_threads(self, ids: Sequence[str]) -> list[ThreadData]:
        sql = _THREADS + " AND t.id IN :ids"
        rows = await self._query(sa.text(sql).bindparams(sa.bindparam("ids", expanding=True)),
                                 {"ids": list(ids)})
        return await self._threads(rows)

    async def _threads(self, rows: list[dict[str, Any]]) -> list[ThreadData]:
        """Threads and their rows mapped onto records; what cannot be held is counted."""
        found: dict[str, ThreadData] = {}
        #: thread id -> the reason its rows are left out with (the thread was)
        dropped: dict[str, str] = {}
        owners: dict[str, InvalidInputError | None] = {}  # owner id -> why it is refused
        for row in rows:
            thread_id = str(row["id"])
            if _uuid(row["id"]) is None:
                self._skip(NOT_UUID, f"thread {row['id']}")
                continue
            owner = row["userId"]
            if owner is not None and _uuid(owner) is None:
                self._skip(OWNER_SKIPPED, f"thread {thread_id}")
                dropped[thread_id] = OWNER_SKIPPED
                continue
            if owner is not None and row["identifier"] is not None:
                if owner not in owners:
                    try:
                        self._user_record({"id": owner, "identifier": row["identifier"],
                                           "metadata": row["ownerMetadata"],
                                           "createdAt": row["ownerCreatedAt"]})
                        owners[owner] = None
                    except InvalidInputError as exc:
                        owners[owner] = exc
                refused = owners[owner]
                if refused is not None:
                    dropped[thread_id] = self._refuse("thread", thread_id, refused,
                                                      OWNER_REFUSED)
                    continue
            try:
                found[thread_id] = ThreadData(record(self.models, "thread", {
                    "id": row["id"], "createdAt": _ts(row["createdAt"]), "activityAt": None,
                    "name": row["name"], "userId": owner, "userIdentifier": row["identifier"],
                    "tags": None if row["tags"] is None else list(row["tags"]),
                    "metadata": _official_json(row["metadata"]), "extra": None}, validate=True))
            except InvalidInputError as exc:
                reason = refusal_reason("thread", exc) + ", with its rows"
                dropped[thread_id] = self._refuse("thread", thread_id, exc, reason)
        if not found and not dropped:
            return []
        ids = [*found, *dropped]
        expanding: sa.BindParameter[Any] = sa.bindparam("ids", expanding=True)
        refused_steps: set[str] = set()
        for step in await self._query(sa.text(
                'SELECT id, "threadId", "parentId", input, output, metadata, name, type, '
                '"startTime", "endTime", "showInput", "isError" FROM "Step" '
                'WHERE "threadId" IN :ids').bindparams(expanding), {"ids": ids}):
            self._step(found, dropped, refused_steps, step)
        for element in await self._query(sa.text(
                'SELECT id, "threadId", "stepId", metadata, mime, name, "objectKey", url, '
                '"chainlitKey", display, size, language, page, props FROM "Element" '
                'WHERE "threadId" IN :ids').bindparams(expanding), {"ids": ids}):
            self._element(found, dropped, element)
        self._feedback(found, dropped, refused_steps, await self._query(sa.text(
            'SELECT f.id, f."stepId", f.value, f.comment, f."updatedAt", f."createdAt", '
            's."threadId" FROM "Feedback" f JOIN "Step" s ON s.id = f."stepId" '
            'WHERE s."threadId" IN :ids').bindparams(expanding), {"ids": ids}))
        return [finish_thread(self.models, found[i]) for i in sorted(found)]

    def _step(self, found: dict[str, ThreadData], dropped: Mapping[str, str],
              refused: set[str], row: Mapping[str, Any]) -> None:
        thread_id = str(row["threadId"])
        if thread_id in dropped:
            self._skip(dropped[thread_id], f"step {row['id']}")
            return
        if _uuid(row["id"]) is None:
            self._skip(NOT_UUID, f"step {row['id']}")
            return
        start = _ts(row["startTime"])
        show = row["showInput"]
        try:
            found[thread_id].steps.append(record(self.models, "step", {
                "id": row["id"], "threadId": row["threadId"],
                "parentId": _uuid(row["parentId"]),
                "name": row["name"] if row["name"] is not None else "",
                "type": str(row["type"]), "streaming": False, "isError": row["isError"],
                "metadata": _official_json(row["metadata"]), "input": row["input"],
                "output": row["output"], "createdAt": start, "start": start,
                "end": _ts(row["endTime"]),
                "showInput": None if show is None else _show_input(show),
            }, validate=True))
        except InvalidInputError as exc:
            self._refuse("step", row["id"], exc)
            refused.add(str(row["id"]))

    def _element(self, found: dict[str, ThreadData], dropped: Mapping[str, str],
                 row: Mapping[str, Any]) -> None:
        thread_id = str(row["threadId"])
        if thread_id in dropped:
            self._skip(dropped[thread_id], f"element {row['id']}")
            return
        if _uuid(row["id"]) is None or _uuid(row["stepId"]) is None:
            self._skip(NOT_UUID, f"element {row['id']}")
            return
        metadata = _official_json(row["metadata"]) or {}
        try:
            found[thread_id].elements.append(record(self.models, "element", {
                "id": row["id"], "threadId": row["threadId"], "forId": row["stepId"],
                "type": metadata.get("type") or "file", "url": row["url"],
                "chainlitKey": row["chainlitKey"], "name": row["name"],
                "display": row["display"], "objectKey": row["objectKey"], "size": row["size"],
                "page": row["page"], "language": row["language"], "mime": row["mime"],
                "props": _official_json(row["props"]),
            }, validate=True))
        except InvalidInputError as exc:
            self._refuse("element", row["id"], exc)

    def _feedback(self, found: dict[str, ThreadData], dropped: Mapping[str, str],
                  refused_steps: set[str], rows: list[dict[str, Any]]) -> None:
        newest: dict[str, dict[str, Any]] = {}
        for row in rows:
            if str(row["threadId"]) in dropped:
                self._skip(dropped[str(row["threadId"])], f"feedback {row['id']}")
                continue
            if _uuid(row["id"]) is None or _uuid(row["stepId"]) is None:
                self._skip(NOT_UUID, f"feedback {row['id']}")
                continue
            if str(row["stepId"]) in refused_steps:
                self._skip(FEEDBACK_STEP_REFUSED, f"feedback {row['id']}")
                continue
            if row["value"] not in (0, 1):
                self._skip(FEEDBACK_VALUE, row["id"])
                continue
            step = str(row["stepId"])
            kept = newest.get(step)
            key = (row["updatedAt"], row["createdAt"], str(row["id"]))
            if kept is None:
                newest[step] = row
            elif key > (kept["updatedAt"], kept["createdAt"], str(kept["id"])):
                newest[step] = row
                self._skip(FEEDBACK_SUPERSEDED, kept["id"])
            else:
                self._skip(FEEDBACK_SUPERSEDED, row["id"])
        for step, row in newest.items():
            try:
                found[str(row["threadId"])].feedbacks.append(record(self.models, "feedback", {
                    "id": row["id"], "forId": step, "threadId": row["threadId"],
                    "value": int(row["value"]), "comment": row["comment"]}, validate=True))
            except InvalidInputError as exc:
                self._refuse("feedback", row["id"], exc)

    async def fetch_users(self, users: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
        raise NotImplementedError  # pragma: no cover - a source only, never verified against

    async def totals(self, scope: Scope) -> dict[str, int | None]:
        owner = ' AND t."userId" = :uid' if scope.user_id else ""
        params = {"uid": scope.user_id} if scope.user_id else {}
        live = f'SELECT t.id FROM "Thread" t WHERE t."deletedAt" IS NULL{owner}'
        users = ('SELECT COUNT(*) FROM "User"' + (" WHERE identifier = :i" if scope.user else ""))
        return {
            "users": await self._scalar(users, **({"i": scope.user} if scope.user else {})),
            "threads": None if scope.since else await self._scalar(
                f"SELECT COUNT(*) FROM ({live}) AS x", **params),
            "steps": None if scope.since else await self._scalar(
                f'SELECT COUNT(*) FROM "Step" WHERE "threadId" IN ({live})', **params),
            "elements": None if scope.since else await self._scalar(
                f'SELECT COUNT(*) FROM "Element" WHERE "threadId" IN ({live})', **params),
            "feedbacks": None if scope.since else await self._scalar(  # one kept per step
                'SELECT COUNT(DISTINCT f."stepId") FROM "Feedback" f JOIN "Step" s '
                f'ON s.id = f."stepId" WHERE s."threadId" IN ({live})', **params),
        }

    async def read_file(self, element: Mapping[str, Any]) -> bytes | None:
        return await read_stored_file(self.storage, element, self.shown)

    async def close(self) -> None:
        await self.db.close()
