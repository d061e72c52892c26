"""The transfer's one door into the layers' internals.

Bulk reads and writes cannot go through the layers' per-call methods (a million ``create_step``
calls), but every value a layer *derives* when it writes must be derived the same way here, so a
copied store answers ``list_threads``, search and the feedback filters exactly as one written
through the layer. Everything the transfer takes from the layers, the migrator and their private
helpers is imported in this module and nowhere else in :mod:`chainlit_orm.transfer`, so moving
those internals (issue 15: the DynamoDB package, ``migrations/``, one URL parser) changes this
file only.

Names used, by origin:

* ``models.convert.to_row``: the columns derived from ``metadata`` (``steps.favorite``, custom
  ``metadata_column`` fields), as the layer computes them on every write;
* ``models.modelset.FROM_METADATA``: which columns those are;
* ``models.search.folded_values`` and ``FOLDED_FROM``: the case-folded copies the SQL search
  compares with (``threads."nameFolded"``, ``steps."outputFolded"``), as every SQL write stores
  them (DynamoDB has none: its search folds the projected name when it reads);
* ``models.limits.check_row``, ``layers.base.check_identifier``:
  the checks every layer write passes, applied to records that come from outside (a bundle,
  Chainlit's official schema) by :func:`check_record`;
* ``models.rules.USER_MESSAGE``: the step type whose creation is a thread's activity;
  ``layers.base.element_content_disposition``: the header an element file is stored with;
* ``layers.sql.SQLBackend`` (its transactional ``engine``, ``dialect``, ``url_text``,
  ``check_schema``, ``ensure_ready``, ``run``, ``close``): engines configured as the layer's
  (SQLite pragmas, ``BEGIN IMMEDIATE``, a model set's schema translation), the layer's schema
  check, and its bounded retries of transient failures with typed errors;
* ``migrations.migrate``: the destination's schema before anything is written;
* ``urls.parse_dynamodb_url``: ``dynamodb://`` URLs;
* ``layers.dynamodb``: ``DynamoBackend`` (built on a ``DynamoConfig``) with its ``layout``
  (:class:`~chainlit_orm.layers.dynamodb.items.ItemLayout`: ``codecs``, ``key_of``,
  ``index_attributes``, ``kind``, ``thread_of_key``, ``user_row``), ``indexes``,
  ``offload_bytes``, ``list_threads``, ``get_user``, ``ensure_ready``, ``close`` and its
  public table operations ``call``, ``query_all``, ``batch_get``, ``batch_write``, ``lookup``,
  ``load_texts`` (no private name of a layer is used: ``tests/test_architecture.py``);
* ``models.rules.step_text_object_key``: where an offloaded step text is stored;
  ``layers.dynamodb.items`` (``string_value``, ``item_size``, ``ITEM_LIMIT``, ``TEXT_REFS``,
  ``FEEDBACK_COUNTERS``), and the layout's index roles (``feedback_marker``, ``list_index``)
  and legacy-item reading (``is_phantom``, ``legacy_feedback``);
* ``storage.protocols.ReadableStorage``: reading an object back (``NotFoundError`` when absent);
  ``storage._keys.validate_key``: the object-key rules every storage write applies (a bundle's
  element keys are checked by them before anything is written);
* ``schema_gen.dynamo``: ``PARTITION_KEY``, ``SORT_KEY``, ``render_key``, ``parse_key``.

:func:`thread_activity` applies :func:`chainlit_orm.models.rules.latest_activity` (the rule the
migrators backfill with); :func:`DynamoTable.feedback_markers` writes the markers
``ItemLayout.feedback_marker`` gives, as ``DynamoBackend._counter_update`` and the backfill do.
"""

from __future__ import annotations

import contextlib
import functools
import sys
from collections.abc import (
    AsyncIterator,
    Awaitable,
    Callable,
    Iterable,
    Iterator,
    Mapping,
    Sequence,
)
from contextvars import ContextVar
from datetime import timedelta
from typing import TYPE_CHECKING, Any, TypeVar, cast

import sqlalchemy as sa
from chainlit.data.storage_clients.base import BaseStorageClient
from sqlalchemy.ext.asyncio import AsyncEngine

from chainlit_orm.defaults import DEFAULT_TRANSFER_TIMEOUT
from chainlit_orm.errors import (
    ConfigurationError,
    InvalidInputError,
    NotFoundError,
    PayloadTooLargeError,
    StorageError,
)
from chainlit_orm.layers.deadline import BoundedBackend, CallDeadline, check_timeout
from chainlit_orm.models.convert import to_row
from chainlit_orm.models.limits import check_row
from chainlit_orm.models.modelset import FROM_METADATA, ModelSet
from chainlit_orm.models.rules import USER_MESSAGE, latest_activity, step_text_object_key
from chainlit_orm.models.search import FOLDED_FROM, folded_values
from chainlit_orm.models.types import utc_now
from chainlit_orm.storage._keys import validate_key

if TYPE_CHECKING:
    from chainlit_orm.layers.dynamodb.backend import DynamoBackend

__all__ = [
    "DEFAULT_TRANSFER_TIMEOUT",
    "USER_MESSAGE",
    "DynamoTable",
    "SQLHandle",
    "check_record",
    "content_disposition",
    "migrate",
    "portable_columns",
    "read_object",
    "stored_row",
    "thread_activity",
    "transfer_timeout",
    "validate_key",
]

T = TypeVar("T")


#: The limit the handles opened by the running ``copy``/``export``/``import`` take (a context
#: variable, so the transfer's many sources and sinks need no parameter each).
_TIMEOUT: ContextVar[float] = ContextVar("chainlit_orm_transfer_timeout",
                                         default=DEFAULT_TRANSFER_TIMEOUT)


@contextlib.contextmanager
def transfer_timeout(seconds: float) -> Iterator[None]:
    """Run the body with ``seconds`` as the limit of every statement of the handles it opens.

    Why client-side (:mod:`chainlit_orm.layers.deadline`): the statements go through the
    layers' engines and clients, and a network that swallows packets, or a server that hangs,
    would otherwise hold a copy for ever (only connecting had a limit).

    Raises:
        ConfigurationError: ``seconds`` is not a positive, finite number.
    """
    token = _TIMEOUT.set(check_timeout(seconds, "timeout"))
    try:
        yield
    finally:
        _TIMEOUT.reset(token)


def _deadline() -> CallDeadline:
    return CallDeadline(_TIMEOUT.get(), what="transfer statement")


#: Internal columns that are facts of a row (copied as they are), not derived on write:
#: ``deletedAt`` is the trash state (chainlit_orm.lifecycle), which a copy keeps.
_FACT_COLUMNS = frozenset({"activityAt", "extra", "deletedAt"})


def _from_metadata(column: sa.Column[Any]) -> bool:
    """A column every write recomputes from the row's ``metadata`` (see ``to_row``)."""
    return column.name == "favorite" or FROM_METADATA in column.info


def _derived(column: sa.Column[Any]) -> bool:
    """A column a write derives: from ``metadata``, or a case-folded search copy of another
    column (``models.search.folded_values``)."""
    return _from_metadata(column) or FOLDED_FROM in column.info


def portable_columns(models: ModelSet, entity: str) -> tuple[str, ...]:
    """The columns a transferred record carries: every column but the derived ones.

    Raises:
        ConfigurationError: the table has an internal column whose value the transfer cannot
            derive the way the layer does; copying it would leave it empty, so nothing is copied.
    """
    return _portable(models.table(entity))


@functools.cache
def _portable(table: sa.Table) -> tuple[str, ...]:
    # cached per table (a model set's tables never change): this runs for every row moved
    for column in table.columns:
        if column.info.get("internal") and column.name not in _FACT_COLUMNS and not _derived(
                column):
            raise ConfigurationError(
                f"{table.name}.{column.name} is derived by a rule the transfer does not know; "
                "chainlit_orm.transfer._layer must derive it as the layer does", detail=column.name)
    return tuple(c.name for c in table.columns if not _derived(c))


@functools.cache
def _metadata_names(table: sa.Table) -> tuple[str, ...]:
    return tuple(c.name for c in table.columns if _from_metadata(c))


@functools.cache
def _has_folded(table: sa.Table) -> bool:
    return any(FOLDED_FROM in c.info for c in table.columns)


def stored_row(models: ModelSet, entity: str, record: Mapping[str, Any], *,
               search_copies: bool) -> dict[str, Any]:
    """The full row a layer would store for ``record``: its columns plus the derived ones.

    ``search_copies``: include the case-folded copies the SQL search reads, computed by
    ``folded_values`` as every SQL write computes them (True for a SQL destination). A DynamoDB
    item has no such attribute (False): its search folds the projected name when it reads.
    """
    table = models.table(entity)
    row = {name: record.get(name) for name in _portable(table)}
    derived = _metadata_names(table)
    if derived:
        computed = to_row(models, entity, {"metadata": record.get("metadata")})
        for name in derived:
            row[name] = computed.get(name)
    if search_copies and _has_folded(table):
        # the row holds every source column (and a step's type), so every copy is computed
        row.update(folded_values(table, row))
    return row


#: A step's ``input``/``output`` are bounded by each layer's configurable ``max_text_bytes``,
#: not by a storable-value limit: the store a record comes from may have allowed more, and
#: every destination holds it (DynamoDB offloads large texts to its storage). So the transfer
#: checks that they are storable text, and counts them outside the record's size, as the layer
#: does, without a bound of its own.
_TEXT_LIMITS = {"input": sys.maxsize, "output": sys.maxsize}


def check_record(models: ModelSet, entity: str, record: dict[str, Any]) -> None:
    """The checks a layer write of ``record`` passes (``models.limits.check_row`` with the
    layer's per-entity rules), for records that come from outside chainlit-orm's layers: a
    bundle, Chainlit's official schema. A record that passes is stored, and read back exactly,
    by every backend; timestamps and tag tuples are normalised in place, as ``check_row`` does.

    The record is checked whole, as one write (the layer checks a thread's name, tags and
    metadata in the ``update_thread`` call that sends them).

    Raises:
        InvalidInputError: a value no backend can hold, with the refused column as its
            ``detail`` (its subclass ``PayloadTooLargeError``, detail the entity, when the
            record is above the record limit).
    """
    from chainlit_orm.layers.base import check_identifier

    table = models.table(entity)
    if entity == "user":
        if not isinstance(record.get("identifier"), str):
            raise InvalidInputError("user identifier must be a string", detail="identifier")
        check_identifier(record["identifier"])
    elif entity == "step":
        # NOT NULL in Chainlit's documented schema; the layer's _step_row refuses them too
        for key in ("name", "type"):
            if not isinstance(record.get(key), str):
                raise InvalidInputError(f"step {key} must be a string, got "
                                        f"{type(record.get(key)).__name__}", detail=key)
        if type(record.get("streaming")) is not bool:
            raise InvalidInputError(
                f"step streaming must be a bool, got {record.get('streaming')!r}"[:200],
                detail="streaming")
    elif entity == "element":
        if not isinstance(record.get("name"), str):
            raise InvalidInputError(f"element name must be a string, got "
                                    f"{type(record.get('name')).__name__}", detail="name")
    elif entity == "feedback":
        value = record.get("value")
        if type(value) is not int or value not in (0, 1):
            raise InvalidInputError(f"feedback value must be 0 or 1, got {value!r}"[:200],
                                    detail="value")
    own_limits = _TEXT_LIMITS if entity == "step" else None
    try:
        check_row(table, record, entity, own_limits=own_limits)
    except PayloadTooLargeError:
        raise  # the whole record (detail: the entity): own_limits bound no column here
    except InvalidInputError as exc:
        if exc.detail is not None:
            raise
        # name the column (check_row's messages do, but not as a detail): a caller that counts
        # refusals groups them by column, not by the value each message quotes
        raise type(exc)(str(exc), detail=_refused_column(table, record, entity, own_limits)
                        ) from exc


def _refused_column(table: sa.Table, record: Mapping[str, Any], entity: str,
                    own_limits: Mapping[str, int] | None) -> str | None:
    """The first column of ``record`` whose value alone ``check_row`` refuses."""
    for name, value in record.items():
        if value is None:
            continue
        try:
            check_row(table, {name: value}, entity, own_limits=own_limits,
                      record_limit=sys.maxsize)
        except InvalidInputError:
            return name
    return None


def thread_activity(created_at: str | None, user_message_times: Iterable[str | None]) -> str:
    """A thread's activity when its store does not record one: its latest user message, else its
    creation, else now. Mirrors ``migrations.sql._activity_values`` (the rule ``migrate``
    backfills an adopted Chainlit database with) and the DynamoDB backfill; all values are canonical
    timestamps, so text order is time order."""
    return latest_activity(created_at, user_message_times) or utc_now()


def content_disposition(name: str) -> str:
    """The ``Content-Disposition`` the layer stores an element's file with."""
    from chainlit_orm.layers.base import element_content_disposition

    return element_content_disposition(name)


async def read_object(storage: BaseStorageClient, object_key: str) -> bytes | None:
    """The bytes of a stored object, or None when it is absent.

    Read through :class:`~chainlit_orm.storage.protocols.ReadableStorage` (``read_file``; a
    missing object is :class:`~chainlit_orm.errors.NotFoundError`), as the DynamoDB layer reads
    an offloaded text back. Chainlit's own clients (``BaseStorageClient``) cannot read an object
    back; a transfer from one raises :class:`~chainlit_orm.errors.StorageError` asking for the
    storage's URL (:class:`~chainlit_orm.storage.FsspecStorage` reads S3, Azure, GCS and disk).

    Raises:
        StorageError: the client cannot read, or the storage failed.
    """
    from chainlit_orm.storage.protocols import ReadableStorage

    if not isinstance(storage, ReadableStorage):
        raise StorageError(
            f"{type(storage).__name__} cannot read a stored object back (it has no read_file); "
            "give the storage as a URL instead", detail=object_key)
    try:
        return bytes(await storage.read_file(object_key))
    except NotFoundError:
        return None


async def migrate(url: str, models: ModelSet) -> list[str]:
    """``chainlit-orm migrate`` on a destination: create or upgrade its schema, additively."""
    from chainlit_orm.migrations import migrate as run

    return list((await run(url, models=models)).lines)


class SQLHandle:
    """A SQL database as the layer opens it: its transactional engine (SQLite pragmas and
    ``BEGIN IMMEDIATE``, a model set's schema translation), its schema check, and its way of
    running work: :meth:`run` retries transient failures (a dropped connection, a deadlock) a
    bounded number of times and turns driver errors into typed ones, as every layer call does.

    ``check_schema=False`` is for a database that is not chainlit-orm's (Chainlit's official
    schema, or one being inspected): nothing checks or creates a schema there.
    """

    def __init__(self, url: str, models: ModelSet, *, check_schema: bool = True) -> None:
        from chainlit_orm.layers.sql import SQLBackend

        self._backend = SQLBackend(url, models=models, create_schema=False,
                                   check_schema=check_schema)
        self._bounded = _deadline().wrap(self._run, "transfer statement")
        self.engine: AsyncEngine = self._backend.engine
        self.dialect: str = self._backend.dialect
        self.models = models
        self.shown: str = self._backend.url_text

    async def ensure_ready(self) -> None:
        """The layer's first-use check: the schema is recorded at the current version (nothing,
        with ``check_schema=False``)."""
        await self._backend.ensure_ready()

    async def run(self, work: Callable[[], Awaitable[T]]) -> T:
        """``work()`` (idempotent: it may run again after a transient failure) with the layer's
        retries and typed errors, within the transfer's statement limit
        (:func:`transfer_timeout`; past it a ``TimeoutExceededError``)."""
        result: T = await self._bounded(work)
        return result

    async def _run(self, work: Callable[[], Awaitable[T]]) -> T:
        await self.ensure_ready()
        return await self._backend.run(work)

    async def close(self) -> None:
        await self._backend.close()


class DynamoTable:
    """One chainlit-orm DynamoDB table: whole-partition reads and whole-item writes, with every
    key, index attribute, counter and offloaded text made by the layer's own code."""

    def __init__(self, url: str, models: ModelSet, storage: BaseStorageClient | None, *,
                 retention: timedelta | None = None) -> None:
        from chainlit_orm.layers.dynamodb import items as dy
        from chainlit_orm.layers.dynamodb.backend import DynamoBackend
        from chainlit_orm.layers.dynamodb.config import DynamoConfig
        from chainlit_orm.schema_gen import dynamo as spec
        from chainlit_orm.urls import parse_dynamodb_url

        parsed = parse_dynamodb_url(url)
        self._dy = dy
        self._spec = spec
        self.models = models
        self.storage = storage
        # every call of the backend within the transfer's statement limit (transfer_timeout)
        self.backend: DynamoBackend = cast("DynamoBackend", BoundedBackend(DynamoBackend(
            DynamoConfig(parsed.table, models=models, region=parsed.region,
                         endpoint_url=parsed.endpoint_url, profile=parsed.profile,
                         max_pool_connections=16, retention=retention),
            storage=lambda: storage), _deadline()))
        self.table = parsed.table
        self.shown = self.backend.url

    async def ensure_ready(self) -> None:
        await self.backend.ensure_ready()

    async def close(self) -> None:
        await self.backend.close()

    # ----------------------------------------------------------------- reading

    async def scan_items(self) -> AsyncIterator[list[dict[str, Any]]]:
        """Every item of the table, a Scan page (up to 1 MB) at a time, read consistently."""
        kwargs: dict[str, Any] = {"ConsistentRead": True}
        while True:
            page = await self.backend.call("scan", **kwargs)
            yield list(page.get("Items", []))
            last = page.get("LastEvaluatedKey")
            if not last:
                return
            kwargs["ExclusiveStartKey"] = last

    def classify(self, item: Mapping[str, Any]) -> tuple[str | None, str | None]:
        """(kind, thread id) of an item: ``user`` (no thread), or the entity of an item in a
        thread's partition and that thread's id; (None, None) for anything else (the
        schema-version item)."""
        spec, b = self._spec, self.backend
        pk, sk = item[spec.PARTITION_KEY]["S"], item[spec.SORT_KEY]["S"]
        if sk == self.models.dynamo["user"].sk and spec.parse_key(
                self.models.dynamo["user"].pk, pk) is not None:
            return "user", None
        thread_id = b.layout.thread_of_key(pk)
        if thread_id is None:
            return None, None
        return b.layout.kind(sk), thread_id

    def user_row(self, item: Mapping[str, Any]) -> dict[str, Any]:
        return self.backend.layout.user_row(item)

    def thread_head(self, item: Mapping[str, Any]) -> dict[str, Any]:
        """A thread item's row (what enumerating and filtering threads needs)."""
        return self.backend.codecs["thread"].row(item)

    async def get_user(self, identifier: str) -> dict[str, Any] | None:
        return await self.backend.get_user(identifier)

    async def get_users(self, identifiers: Sequence[str]) -> list[dict[str, Any]]:
        """The user rows of these identifiers that exist (BatchGetItem, 100 keys a call)."""
        b = self.backend
        keys = [b.layout.key_of("user", identifier=i) for i in identifiers]
        items: list[dict[str, Any]] = []
        for start in range(0, len(keys), 100):
            items += await b.batch_get(keys[start:start + 100])
        return [b.layout.user_row(item) for item in items]

    async def user_identifier(self, user_id: str) -> str | None:
        """The identifier of the user item with this id, through the layer's ``ById`` lookup."""
        found = await self.backend.lookup("user", user_id)
        if found is None:
            return None
        parsed = self._spec.parse_key(self.models.dynamo["user"].pk, found[0])
        return parsed["identifier"] if parsed else None

    async def user_thread_ids(self, user_id: str) -> list[tuple[str, str | None]]:
        """(id, activityAt) of a user's threads, from the layer's list index."""
        rows = await self.backend.list_threads(user_id=user_id, limit=10**12, after=None,
                                               search=None, feedback=None, order="activity")
        return [(str(r["id"]), r.get("activityAt")) for r in rows]

    async def read_partition(self, thread_id: str) -> tuple[
            dict[str, Any], list[dict[str, Any]], list[dict[str, Any]], list[dict[str, Any]]
    ] | None:
        """A thread with all its rows, or None: one Query of its partition, decoded by
        :meth:`decode_partition`."""
        spec, b = self._spec, self.backend
        items = await b.query_all(
            KeyConditionExpression="#p = :p", ExpressionAttributeNames={"#p": spec.PARTITION_KEY},
            ExpressionAttributeValues={
                ":p": b.layout.key_of("thread", id=thread_id)[spec.PARTITION_KEY]},
            ConsistentRead=True)
        return await self.decode_partition(thread_id, items)

    async def decode_partition(self, thread_id: str, items: Sequence[Mapping[str, Any]]
                               ) -> tuple[dict[str, Any], list[dict[str, Any]],
                                          list[dict[str, Any]], list[dict[str, Any]]] | None:
        """A thread partition's items as rows: ``get_thread``'s reading (the same item kinds,
        phantom steps, embedded legacy feedback and offloaded texts), except that feedback items
        whose step does not exist are kept, as the SQL backends keep such rows."""
        spec, b = self._spec, self.backend
        thread: dict[str, Any] | None = None
        steps: list[dict[str, Any]] = []
        step_items: list[Mapping[str, Any]] = []
        elements: list[dict[str, Any]] = []
        feedback: dict[str, dict[str, Any]] = {}
        legacy: dict[str, dict[str, Any]] = {}
        for item in items:
            kind = b.layout.kind(item[spec.SORT_KEY]["S"])
            if kind == "thread":
                thread = b.codecs["thread"].row(item)
            elif kind == "step":
                embedded = b.layout.legacy_feedback(item)
                if embedded and embedded.get("forId"):
                    legacy.setdefault(str(embedded["forId"]), embedded)
                if not b.layout.is_phantom(item):
                    steps.append(b.codecs["step"].row(item))
                    step_items.append(item)
            elif kind == "element":
                elements.append(b.codecs["element"].row(item))
            elif kind == "feedback":
                row = b.codecs["feedback"].row(item)
                feedback[str(row.get("forId"))] = row
        if thread is None:
            return None
        await b.load_texts(step_items, steps)
        for for_id, row in legacy.items():
            feedback.setdefault(for_id, {**row, "threadId": thread_id})
        return thread, steps, elements, list(feedback.values())

    # ----------------------------------------------------------------- writing

    def _item(self, entity: str, row: Mapping[str, Any], **key: Any) -> dict[str, Any]:
        """An item as the layer writes it: the table key, every non-null column encoded by the
        entity's codec, and the GSI key attributes (feedback-driven sparse indexes excluded)."""
        b = self.backend
        codec = b.codecs[entity]
        item = dict(b.layout.key_of(entity, **key))
        for name, value in row.items():
            if value is not None:
                item[name] = codec.encode(name, value)
        for attribute, value in b.layout.index_attributes(entity, row).items():
            item[attribute] = self._dy.string_value(value)
        return item

    def user_item(self, row: Mapping[str, Any]) -> dict[str, Any]:
        return self._item("user", row, identifier=row["identifier"])

    def element_item(self, row: Mapping[str, Any]) -> dict[str, Any]:
        return self._item("element", row, threadId=row["threadId"], id=row["id"])

    def feedback_item(self, row: Mapping[str, Any]) -> dict[str, Any]:
        return self._item("feedback", row, threadId=row["threadId"], forId=row["forId"])

    def thread_item(self, row: Mapping[str, Any], counts: Mapping[int, int]) -> dict[str, Any]:
        """The thread item with its index attributes, feedback counters and sparse markers (a
        trashed thread's: those a trashed thread has, so it is listed nowhere)."""
        item = self._item("thread", row, id=row["id"])
        item.update(self.feedback_markers(row.get("userId"), counts))
        activity = row.get("activityAt") or row.get("createdAt")
        expiry = self.backend.expiry_value(str(activity)) if activity else None
        if expiry is not None:  # the TTL a layer with this retention writes (its _set_expiry)
            item[self._spec.TTL_ATTRIBUTE] = expiry
        if row.get("deletedAt"):  # in the trash: out of the list index, as trash_thread leaves it
            self.backend.hide_trashed(item)
        return item

    def feedback_markers(self, user_id: str | None, counts: Mapping[int, int]
                         ) -> dict[str, Any]:
        """The per-value feedback counters of a thread item, and the key attributes that put
        it in the sparse feedback indexes while its count is positive
        (:meth:`ItemLayout.feedback_marker`, as ``DynamoBackend._counter_update`` and the
        backfill write them)."""
        dy, b = self._dy, self.backend
        out: dict[str, Any] = {}
        for value, counter in dy.FEEDBACK_COUNTERS.items():
            count = counts.get(value, 0)
            if not count:
                continue
            out[counter] = {"N": str(count)}
            marker = b.layout.feedback_marker(value, user_id)
            if marker is not None and marker[1]:
                out[marker[0]] = dy.string_value(marker[1])
        return out

    def step_item(self, row: Mapping[str, Any]) -> tuple[dict[str, Any], list[tuple[str, bytes]]]:
        """A step item, and the texts to store as objects first: ``upsert_step``'s rule (a text
        above ``offload_bytes`` goes to the storage client when there is one; an item above
        DynamoDB's limit without one is refused before anything is written)."""
        dy, b = self._dy, self.backend
        thread_id, step_id = str(row["threadId"]), str(row["id"])
        item = self._item("step", row, threadId=thread_id, id=step_id)
        uploads: list[tuple[str, bytes]] = []
        if self.storage is not None:
            for field, ref in dy.TEXT_REFS.items():
                text = row.get(field)
                if isinstance(text, str) and len(text.encode()) > b.offload_bytes:
                    key = step_text_object_key(thread_id, step_id, field, False)
                    uploads.append((key, text.encode()))
                    del item[field]
                    item[ref] = dy.string_value(key)
        size = dy.item_size(item)
        if size > dy.ITEM_LIMIT - 1024:
            hint = "" if self.storage is not None else (
                " (configure a destination storage to offload texts)")
            raise PayloadTooLargeError(
                f"step {step_id} would be a {size} byte DynamoDB item, above the 400 KB limit"
                f"{hint}", detail=step_id)
        return item, uploads

    async def put(self, items: Sequence[dict[str, Any]]) -> None:
        """Whole items, BatchWriteItem 25 at a time, unprocessed ones retried (the layer's)."""
        if items:
            await self.backend.batch_write([{"PutRequest": {"Item": i}} for i in items],
                                           last_after_rest=True)

    async def thread_owners(self, thread_ids: Sequence[str]) -> dict[str, str | None]:
        """userId of each of these threads that exists (BatchGetItem of the thread items)."""
        b = self.backend
        out: dict[str, str | None] = {}
        keys = [b.layout.key_of("thread", id=t) for t in thread_ids]
        for start in range(0, len(keys), 100):
            for item in await b.batch_get(keys[start:start + 100]):
                row = b.codecs["thread"].row(item)
                thread_id = b.layout.thread_of_key(item[self._spec.PARTITION_KEY]["S"])
                if thread_id is not None:
                    out[thread_id] = row.get("userId")
        return out

    async def erased(self, thread_ids: Sequence[str]) -> set[str]:
        """Which of these threads have a tombstone item (BatchGetItem, 100 keys a call)."""
        from chainlit_orm.layers.dynamodb.items import table_key

        spec, b = self._spec, self.backend
        keys = []
        for thread_id in dict.fromkeys(thread_ids):
            key = spec.tombstone_key(thread_id)
            keys.append(table_key(key[spec.PARTITION_KEY], key[spec.SORT_KEY]))
        out: set[str] = set()
        for start in range(0, len(keys), 100):
            for item in await b.batch_get(keys[start:start + 100]):
                out.add(item[spec.PARTITION_KEY]["S"][len(spec.TOMBSTONE_PREFIX):])
        return out

    async def thread_feedback(self, thread_id: str) -> list[dict[str, Any]]:
        """The feedback items a thread already has (to count them with the copied ones)."""
        spec, b = self._spec, self.backend
        prefix = self.models.dynamo["feedback"].sk.split("{", 1)[0]
        items = await b.query_all(
            KeyConditionExpression="#p = :p AND begins_with(#s, :f)",
            ExpressionAttributeNames={"#p": spec.PARTITION_KEY, "#s": spec.SORT_KEY},
            ExpressionAttributeValues={
                ":p": b.layout.key_of("thread", id=thread_id)[spec.PARTITION_KEY],
                ":f": {"S": prefix}},
            ConsistentRead=True)
        return [b.codecs["feedback"].row(item) for item in items]
