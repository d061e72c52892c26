"""``DynamoDataLayer``: the Chainlit layer on one DynamoDB table (PynamoDB's connection, botocore).

Layout: Chainlit's own single table (contract §3.3) plus the GSIs ``chainlit-orm migrate`` adds,
all derived from the models' ``__dynamo__`` declarations (:mod:`chainlit_orm.schema_gen.dynamo`).
A thread and everything in it (steps, elements, feedback) share the partition ``THREAD#{id}``, so
``get_thread`` is one Query page and ``delete_thread`` one Query plus batched deletes.

How it works, and why:

* **Never on the event loop.** PynamoDB and botocore are synchronous. Every request runs in a
  dedicated thread pool whose size is the connection-pool size (``max_pool_connections``, default
  10), so at most that many requests are in flight and none waits for a pooled connection while
  holding a thread. One botocore client (the one of a PynamoDB ``Connection``, shared by the
  generated item classes) serves every call.
* **Retries are botocore's, and bounded.** ``retry_mode`` and ``max_attempts`` (attempts in
  all) configure botocore's retries of throttling, transient errors and timeouts;
  ``connect_timeout``/``read_timeout`` bound each attempt. What still fails becomes a typed error
  raised ``from`` the botocore error: :class:`~chainlit_orm.errors.TimeoutExceededError` for an
  endpoint that never answered, :class:`~chainlit_orm.errors.BackendUnavailableError` for a
  refused or dropped connection. Contention the layer resolves itself (a condition another writer
  invalidated, a transaction conflict, unprocessed batch items) is retried under
  :class:`RetryPolicy`: a bounded number of tries with jittered exponential backoff.
* **Concurrent writes all land.** The writes of one process to a thread item (``update_thread``,
  a user message's activity bump, feedback counters) take turns under a per-thread lock; across
  processes they commute (metadata paths, ``if_not_exists``, ``ADD`` counters) or are
  conditioned and retried. No transaction is sent that Chainlit's own write order would cancel:
  moto answers a cancelled transaction by restoring a copy of the whole table taken when it began,
  undoing what other clients wrote meanwhile (DynamoDB itself does not).
* **Items are what schema_gen declares.** The attribute types come from the generated PynamoDB
  item classes (:func:`~chainlit_orm.schema_gen.pynamo.pynamodb_models`): numbers keep their type
  (an int stays an int), ``showInput`` is a BOOL or a string, JSON documents are native maps.
  Keys are rendered and parsed from the declared templates (``render_key``/``parse_key``), never
  with ``str.strip``.
* **Hot paths are one call.** ``get_user``, ``get_thread_author``, ``update_step`` and
  ``create_step`` (a user message bumps its thread's activity in the same TransactWriteItems) are
  one request; ``get_thread`` one Query page; a ``list_threads`` page one Query on ``UserActivity``
  (or a feedback index) that returns exactly ``first`` threads, because the cursor *is* the
  index's ``ExclusiveStartKey``.
* **Metadata is merged in place**: ``SET metadata.#k = :v`` / ``REMOVE metadata.#k`` on the map, so
  concurrent merges of different keys all survive; ``createdAt`` and the owner are written with
  ``if_not_exists`` (set once).
* **Feedback** is its own item (``FEEDBACK#{stepId}``), one per step, written in one transaction
  with the per-value counters on the thread item that keep the sparse ``UserFeedback0/1`` indexes
  exact. Feedback Chainlit's layer embedded in step items is read too (and converted by migrate).
* **Item size.** A step text (``input``/``output``) above ``offload_bytes`` (default 100 KB) is
  stored with the storage client under ``threads/{threadId}/steps/{stepId}/{field}`` and read back
  transparently, if that client can read it back (:func:`can_read_back`: an ``async
  read_file(object_key) -> bytes`` method, or chainlit-orm's ``FsspecStorage``; Chainlit's own
  clients cannot). Otherwise the text stays in the item, and a step whose item would exceed
  DynamoDB's 400 KB is refused with :class:`~chainlit_orm.errors.PayloadTooLargeError` before
  anything is written. Texts uploaded for a write DynamoDB then refuses are deleted again. A
  stored text that cannot be read back (its object is gone) reads as :data:`UNREADABLE_TEXT`,
  flagged in the step's metadata under :data:`UNREADABLE_KEY`, and the rest of the thread reads
  as stored: one item never makes a thread unreadable.
* **Deletes and writes.** A delete of a thread waits for this process's writes of it that are
  running, and the writes that arrive meanwhile wait for it; a write that comes after this
  process deleted the thread recreates it as an ownerless stub (as the SQL foreign key does),
  so a thread is either entirely gone or holds what was written (see ``_child_write`` for the
  limit across processes).
* **Search** matches the thread name only, case-insensitively (the one documented deviation from
  the SQL layers, which also search message text), with the package's one folding
  (:mod:`chainlit_orm.models.search`: full Unicode case folding, nothing else): the folded term is
  looked for in the folded name of the summary rows the list index returns, so the answers are
  the SQL layers' on names. The folded copy is computed on read, not stored: a
  ``FilterExpression`` would not read fewer capacity units (filters apply after the read), and a
  stored copy would have to be projected into the list indexes, whose projection cannot change in
  place (every existing table would have to rebuild three GSIs).
* **Checked once.** On first use the layer reads ``DescribeTable`` (and the schema-version item)
  and refuses, naming ``chainlit-orm migrate``, a table without the indexes it needs or with an
  unfinished backfill.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import logging
import random
import re
import uuid
import weakref
from collections import OrderedDict
from collections.abc import AsyncIterator, Callable, Iterable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import timedelta
from typing import TYPE_CHECKING, Any

from chainlit.data.storage_clients.base import BaseStorageClient

from chainlit_orm.errors import (
    BackendUnavailableError,
    ChainlitORMError,
    ConfigurationError,
    ConflictError,
    InvalidCursorError,
    InvalidIdentifierError,
    InvalidInputError,
    MissingDependencyError,
    NotFoundError,
    PayloadTooLargeError,
    SchemaError,
    StorageError,
    TimeoutExceededError,
)
from chainlit_orm.layers.base import USER_MESSAGE, ChainlitLayer, ThreadOrder
from chainlit_orm.layers.deadline import DEFAULT_TIMEOUT
from chainlit_orm.layers.dynamodb_lifecycle import (
    CLAIM_ATTRIBUTE,
    DynamoLifecycle,
    check_retention,
)
from chainlit_orm.lifecycle.hooks import OnDelete
from chainlit_orm.models.modelset import DEFAULT_MODELS, ModelSet
from chainlit_orm.models.search import matches
from chainlit_orm.models.types import Timestamp, format_timestamp, normalize_id, parse_timestamp
from chainlit_orm.schema_gen.dynamo import (
    OVERFLOW_COLUMN,
    PARTITION_KEY,
    SCHEMA_VERSION_KEY,
    SORT_KEY,
    TTL_ATTRIBUTE,
    GsiSpec,
    dynamo_indexes,
    dynamo_table_spec,
    parse_key,
    placeholders,
    render_key,
)
from chainlit_orm.storage.protocols import ReadableStorage

try:
    import botocore.exceptions
    from pynamodb.connection import Connection

    from chainlit_orm.schema_gen.pynamo import (
        BoolOrStringAttribute,
        ChainlitItem,
        JsonAttribute,
        from_attribute_value,
        pynamodb_models,
        to_attribute_value,
    )
except ImportError as exc:  # pragma: no cover - exercised only without the extra
    raise MissingDependencyError("pynamodb", "dynamodb") from exc

if TYPE_CHECKING:
    from chainlit_orm.schema_gen.dynamo_migrate import BackfillRequest

__all__ = [
    "CONFLICT_RETRY", "UNREADABLE_KEY", "UNREADABLE_TEXT", "DynamoBackend", "DynamoDataLayer",
    "RetryPolicy", "backfill", "can_read_back",
]

logger = logging.getLogger("chainlit_orm")

#: DynamoDB's item size limit (attribute names and values, UTF-8).
ITEM_LIMIT = 400 * 1024
#: Step texts above this many UTF-8 bytes go to the storage client when one is configured.
DEFAULT_OFFLOAD_BYTES = 100 * 1024
#: BatchWriteItem takes at most 25 requests; BatchGetItem 100 keys.
BATCH_WRITE = 25
#: Step texts that may be offloaded, and the attribute naming the object that holds each.
TEXT_REFS = {"input": "inputRef", "output": "outputRef"}
#: What an offloaded step text that cannot be read back reads as (see ``_load_texts``).
UNREADABLE_TEXT = "[chainlit-orm: this text is stored outside DynamoDB and could not be read back]"
#: The step ``metadata`` key that lists, per field, the object key of each unreadable text.
UNREADABLE_KEY = "chainlit_orm_unreadable"
#: Per-value feedback counters on the thread item, and the sparse index each one drives.
FEEDBACK_COUNTERS = {0: "fbCount0", 1: "fbCount1"}
FEEDBACK_INDEXES = {0: "UserFeedback0", 1: "UserFeedback1"}
LIST_INDEX = "UserActivity"
LOOKUP_INDEX = "ById"
#: Chainlit's layer embeds feedback in the step item under this attribute.
LEGACY_FEEDBACK = "feedback"
#: Namespace of the ids given to feedback Chainlit's layer wrote (its ids are not UUIDs).
LEGACY_FEEDBACK_NAMESPACE = uuid.UUID("5b0c1c52-7d0f-4c77-9b83-6f7c2a1d9e10")

_RETRYABLE_TX = {"TransactionConflict", "ThrottlingError", "ProvisionedThroughputExceeded"}
_THROTTLED = {
    "ProvisionedThroughputExceededException", "ThrottlingException", "RequestLimitExceeded",
    "InternalServerError", "ServiceUnavailable", "LimitExceededException",
}
_AUTH = {
    "UnrecognizedClientException", "InvalidSignatureException", "AccessDeniedException",
    "ExpiredTokenException", "MissingAuthenticationTokenException",
}
_UUID = re.compile(
    r"^[0-9a-fA-F]{8}-?[0-9a-fA-F]{4}-?[0-9a-fA-F]{4}-?[0-9a-fA-F]{4}-?[0-9a-fA-F]{12}$"
)
_MAX_USER_ID = 512
#: botocore's exceptions for a request that got no answer in time (connect or read timeout).
_TIMEOUTS = ("ConnectTimeoutError", "ReadTimeoutError")


@dataclass(frozen=True)
class RetryPolicy:
    """Bounded retries with "full jitter" exponential backoff, for the contention the layer
    resolves itself (botocore retries throttling and transient network errors on its own).

    Used for: optimistic writes whose condition another writer invalidated (feedback, metadata
    merges, step writes), transactions cancelled by a conflicting transaction, plain writes
    refused with ``TransactionConflictException`` (an item in an ongoing transaction), and
    unprocessed batch items. The first retry is immediate (most conditions fail once, for a
    known reason, e.g. the first metadata merge finds no map yet); retry ``k >= 2`` first sleeps
    a uniformly random ``0 .. min(cap, base * 2**(k-1))`` seconds, so writers that collided
    spread out instead of colliding again in lock step. After ``attempts`` tries the caller
    raises a typed error; nothing is retried for ever.
    """

    attempts: int = 10
    base: float = 0.01
    cap: float = 1.0

    async def pause(self, attempt: int) -> None:
        """Wait before try number ``attempt`` (0 is the first try, 1 the first retry)."""
        if attempt >= 2:
            await asyncio.sleep(random.uniform(0, min(self.cap, self.base * 2 ** (attempt - 1))))


#: Conflicts between writers: at most 10 tries, at most about 3.3 s of sleeping in all.
CONFLICT_RETRY = RetryPolicy()
#: Unprocessed batch items (the table is over its capacity): at most 10 tries, about 10 s.
BATCH_RETRY = RetryPolicy(attempts=10, base=0.05, cap=2.0)


class _ConditionFailed(Exception):
    """A condition of a write failed (internal; callers decide what it means).

    Attributes:
        item: the item as it was (``ReturnValuesOnConditionCheckFailure=ALL_OLD``), or None.
        reasons: for a cancelled transaction, the code of each action ("None" when it passed).
    """

    def __init__(self, item: dict[str, Any] | None, reasons: list[str] | None = None) -> None:
        super().__init__("condition failed")
        self.item = item
        self.reasons = reasons or []


def _s(value: str) -> dict[str, str]:
    return {"S": value}


def _key(pk: str, sk: str) -> dict[str, Any]:
    return {PARTITION_KEY: _s(pk), SORT_KEY: _s(sk)}


def _item_size(item: Mapping[str, Any]) -> int:
    """DynamoDB's size of an item in wire form: names plus values (an upper-bound estimate)."""
    return sum(len(name.encode()) + _value_size(value) for name, value in item.items())


def _value_size(value: Mapping[str, Any]) -> int:
    ((kind, payload),) = value.items()
    if kind == "S":
        return len(payload.encode())
    if kind == "N":
        return len(payload) // 2 + 2
    if kind in ("BOOL", "NULL"):
        return 1
    if kind == "M":
        return 3 + sum(len(k.encode()) + 1 + _value_size(v) for k, v in payload.items())
    if kind == "L":
        return 3 + sum(1 + _value_size(v) for v in payload)
    return len(json.dumps(payload, default=str))


class _Update:
    """An UpdateItem expression under construction: placeholders for every name and value."""

    def __init__(self) -> None:
        self.sets: list[str] = []
        self.removes: list[str] = []
        self.adds: list[str] = []
        self.conditions: list[str] = []
        self.names: dict[str, str] = {}
        self.values: dict[str, Any] = {}

    def n(self, attribute: str) -> str:
        for placeholder, name in self.names.items():
            if name == attribute:
                return placeholder
        placeholder = f"#n{len(self.names)}"
        self.names[placeholder] = attribute
        return placeholder

    def v(self, value: Mapping[str, Any]) -> str:
        placeholder = f":v{len(self.values)}"
        self.values[placeholder] = dict(value)
        return placeholder

    def set(self, attribute: str, value: Mapping[str, Any], *, if_absent: bool = False) -> None:
        name = self.n(attribute)
        if if_absent:
            self.sets.append(f"{name} = if_not_exists({name}, {self.v(value)})")
        else:
            self.sets.append(f"{name} = {self.v(value)}")

    def set_path(self, attribute: str, key: str, value: Mapping[str, Any]) -> None:
        self.sets.append(f"{self.n(attribute)}.{self.n(key)} = {self.v(value)}")

    def remove(self, attribute: str) -> None:
        self.removes.append(self.n(attribute))

    def add(self, attribute: str, value: Mapping[str, Any]) -> None:
        """``ADD`` a number: applied to the value the item has when the write lands, so
        concurrent additions commute (no read-modify-write)."""
        self.adds.append(f"{self.n(attribute)} {self.v(value)}")

    def remove_path(self, attribute: str, key: str) -> None:
        self.removes.append(f"{self.n(attribute)}.{self.n(key)}")

    def condition(self, expression: str) -> None:
        self.conditions.append(f"({expression})")

    def params(self) -> dict[str, Any]:
        parts = []
        if self.sets:
            parts.append("SET " + ", ".join(self.sets))
        if self.removes:
            parts.append("REMOVE " + ", ".join(self.removes))
        if self.adds:
            parts.append("ADD " + ", ".join(self.adds))
        params: dict[str, Any] = {"UpdateExpression": " ".join(parts)}
        if self.conditions:
            params["ConditionExpression"] = " AND ".join(self.conditions)
        if self.names:
            params["ExpressionAttributeNames"] = dict(self.names)
        if self.values:
            params["ExpressionAttributeValues"] = dict(self.values)
        return params


class _Codec:
    """One entity's attribute types, taken from its generated PynamoDB item class."""

    def __init__(self, models: ModelSet, entity: str, item_class: type[ChainlitItem],
                 reserved: set[str]) -> None:
        table = models.table(entity)
        self.entity = entity
        self.attributes = dict(item_class.get_attributes())
        self.columns = tuple(table.columns.keys())
        self.timestamps = {c.name for c in table.columns if isinstance(c.type, Timestamp)}
        self.has_overflow = OVERFLOW_COLUMN in table.columns
        self.reserved = reserved

    def encode(self, name: str, value: Any) -> dict[str, Any]:
        attribute = self.attributes.get(name)
        try:
            if attribute is None or isinstance(attribute, JsonAttribute | BoolOrStringAttribute):
                return to_attribute_value(value) if attribute is None else dict(
                    attribute.serialize(value))
            return {attribute.attr_type: attribute.serialize(value)}
        except (TypeError, ValueError) as exc:
            raise InvalidInputError(f"{self.entity}.{name}: cannot store {value!r}") from exc

    def decode(self, name: str, value: Mapping[str, Any]) -> Any:
        attribute = self.attributes.get(name)
        kind = next(iter(value))
        if kind == "NULL":
            return None
        if isinstance(attribute, JsonAttribute | BoolOrStringAttribute):
            decoded = attribute.deserialize(dict(value))
        elif attribute is not None and kind == attribute.attr_type:
            decoded = attribute.deserialize(value[kind])
        else:
            decoded = from_attribute_value(value)
        if name in self.timestamps and isinstance(decoded, str):
            # a legacy value we cannot read is returned as stored, not lost
            with contextlib.suppress(InvalidInputError):
                decoded = format_timestamp(parse_timestamp(decoded))
        return decoded

    def row(self, item: Mapping[str, Any]) -> dict[str, Any]:
        """An item as a row keyed by column name (every column, None when absent, as a SQL row);
        unknown attributes go to the overflow."""
        row: dict[str, Any] = dict.fromkeys(self.columns)
        overflow: dict[str, Any] = {}
        for name, value in item.items():
            if name in self.columns:
                row[name] = self.decode(name, value)
            elif name not in self.reserved:
                overflow[name] = from_attribute_value(value)
        if self.has_overflow and overflow:
            merged = dict(row.get(OVERFLOW_COLUMN) or {})
            for key, value in overflow.items():
                merged.setdefault(key, value)
            row[OVERFLOW_COLUMN] = merged
        return row


@dataclass(frozen=True)
class _Keys:
    """Rendering and parsing of one entity's table keys."""

    pk: str
    sk: str

    def render(self, **values: Any) -> tuple[str, str]:
        pk, sk = render_key(self.pk, values), render_key(self.sk, values)
        if pk is None or sk is None:
            raise InvalidInputError(f"cannot build a key from {values!r}")
        return pk, sk


class _Gate:
    """How one thread's child writes and its deletes take turns in this process (internal).

    Child writes (steps, elements, feedback) share the gate; a delete excludes them: it waits for
    the writes already running, and writes that arrive meanwhile wait until it is done. See
    :meth:`DynamoBackend._child_write`. Events are made only while a delete runs, so a write on
    the usual path costs two counter updates.
    """

    __slots__ = ("idle", "lock", "reopened", "users", "writers")

    def __init__(self) -> None:
        self.users = 0  # tasks inside or waiting: the gate is dropped when none is left
        self.writers = 0  # child writes running
        self.reopened: asyncio.Event | None = None  # set (and dropped) when a delete ends
        self.idle: asyncio.Event | None = None  # set when the last running write ends
        self.lock: asyncio.Lock | None = None  # one delete of the thread at a time


class DynamoBackend(DynamoLifecycle):
    """Stores the rows of a :class:`ModelSet` in one DynamoDB table. See the module docstring.

    The erase, purge and trash primitives are in
    :class:`~chainlit_orm.layers.dynamodb_lifecycle.DynamoLifecycle`; a trashed thread
    (``deletedAt``) reads as absent here."""

    def __init__(
        self,
        table_name: str,
        *,
        models: ModelSet = DEFAULT_MODELS,
        region: str | None = None,
        endpoint_url: str | None = None,
        max_pool_connections: int = 10,
        retry_mode: str = "standard",
        max_attempts: int = 8,
        connect_timeout: float = 5.0,
        read_timeout: float = 30.0,
        offload_bytes: int = DEFAULT_OFFLOAD_BYTES,
        storage: Callable[[], BaseStorageClient | None] = lambda: None,
        check_schema: bool = True,
        retention: timedelta | None = None,
    ) -> None:
        try:
            dynamo_table_spec(models, table_name)
        except SchemaError as exc:
            raise ConfigurationError(str(exc), detail=table_name) from exc
        if retry_mode not in ("standard", "adaptive"):
            raise ConfigurationError(f"retry_mode must be 'standard' or 'adaptive': {retry_mode!r}")
        if max_pool_connections < 1 or max_attempts < 1:
            raise ConfigurationError("max_pool_connections and max_attempts must be positive")
        for name, seconds in (("connect_timeout", connect_timeout),
                              ("read_timeout", read_timeout)):
            if isinstance(seconds, bool) or not isinstance(seconds, int | float) or not (
                    0 < seconds < float("inf")):
                raise ConfigurationError(f"{name} must be a positive number of seconds, got "
                                         f"{seconds!r}", detail=name)
        if region is None:
            import botocore.session

            region = botocore.session.get_session().get_config_variable("region")
            if not region:
                raise ConfigurationError(
                    "no AWS region: pass region=, set AWS_REGION/AWS_DEFAULT_REGION, or use a "
                    "profile with a region"
                )
        self.models = models
        self.table = table_name
        self.retention = check_retention(retention)
        self.region = region
        self.endpoint_url = endpoint_url
        self.offload_bytes = offload_bytes
        self.storage = storage
        self.connect_timeout = connect_timeout
        self.read_timeout = read_timeout
        self.max_attempts = max_attempts
        self.check_schema = check_schema
        self.max_pool_connections = max_pool_connections
        self.items = pynamodb_models(
            models, table_name, region=region, host=endpoint_url,
            max_pool_connections=max_pool_connections,
            connect_timeout_seconds=connect_timeout, read_timeout_seconds=read_timeout,
        )
        # One PynamoDB connection (one botocore client, one pool) for every item class, with
        # botocore's own retry configuration instead of PynamoDB's legacy loop. botocore reads
        # its "max_attempts" as retries after the first attempt; "total_max_attempts" is what
        # this layer's max_attempts means: attempts in all.
        self.connection = Connection(
            region=region, host=endpoint_url, max_pool_connections=max_pool_connections,
            connect_timeout_seconds=connect_timeout, read_timeout_seconds=read_timeout,
            retry_configuration={"mode": retry_mode, "total_max_attempts": max_attempts},
        )
        for item_class in self.items.values():
            item_class._get_connection().connection = self.connection
        self._executor = ThreadPoolExecutor(
            max_workers=max_pool_connections, thread_name_prefix="chainlit-orm-dynamodb"
        )
        self.indexes: dict[str, GsiSpec] = {spec.name: spec for spec in dynamo_indexes(models)}
        reserved = {PARTITION_KEY, SORT_KEY, LEGACY_FEEDBACK, *TEXT_REFS.values(),
                    *FEEDBACK_COUNTERS.values(), CLAIM_ATTRIBUTE, TTL_ATTRIBUTE}
        for spec in self.indexes.values():
            reserved |= {spec.pk_attribute, spec.sk_attribute}
        self.codecs = {entity: _Codec(models, entity, cls, reserved)
                       for entity, cls in self.items.items()}
        self.keys = {entity: _Keys(keys.pk, keys.sk) for entity, keys in models.dynamo.items()}
        self._ready: asyncio.Future[None] | None = None
        self._identifiers: OrderedDict[str, str] = OrderedDict()
        self._activity: OrderedDict[str, str] = OrderedDict()
        self._locks: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, list[asyncio.Lock]] = (
            weakref.WeakKeyDictionary())
        self._gates: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, dict[str, _Gate]] = (
            weakref.WeakKeyDictionary())
        #: threads this process deleted and nothing has written since (bounded, oldest dropped)
        self._deleted: OrderedDict[str, None] = OrderedDict()

    # ---------------------------------------------------------------- plumbing

    @property
    def client(self) -> Any:
        """The botocore client every request goes through (PynamoDB's connection's)."""
        return self.connection.client

    @property
    def url(self) -> str:
        query = f"region={self.region}"
        if self.endpoint_url:
            query += f"&endpoint_url={self.endpoint_url}"
        return f"dynamodb://{self.table}?{query}"

    def _command(self) -> str:
        return f"chainlit-orm migrate '{self.url}'"

    async def _call(self, operation: str, **kwargs: Any) -> dict[str, Any]:
        """One API call in the worker pool; typed errors; failed conditions: _ConditionFailed.

        A plain write refused because its item is part of an ongoing transaction
        (``TransactionConflictException``, which botocore does not retry) and an answer cut
        short (:func:`_complete`) are sent again under :data:`CONFLICT_RETRY`: every request the
        layer sends is a read, an idempotent write or a conditioned one, so sending it again is
        safe, and giving up would lose it (Chainlit logs and drops a failed ``update_thread``:
        the thread would stay without its owner). Transactions are retried by :meth:`_transact`.
        """
        if self._ready is None or not self._ready.done():
            await self.ensure_ready()
        return await self._send(operation, **kwargs)

    async def _send(self, operation: str, **kwargs: Any) -> dict[str, Any]:
        """:meth:`_call` without the table check (which uses it)."""
        if operation == "transact_write_items":
            return await self._raw(operation, **kwargs)
        for attempt in range(CONFLICT_RETRY.attempts):
            await CONFLICT_RETRY.pause(attempt)
            try:
                return await self._raw(operation, **kwargs)
            except _TransactionRetry as exc:
                last = exc
        raise BackendUnavailableError(
            f"DynamoDB {operation} on table {self.table} failed {CONFLICT_RETRY.attempts} times "
            f"({', '.join(last.reasons)}): the item stayed in other transactions, or the answers "
            "were cut short", detail=last.reasons,
        ) from last

    async def _raw(self, operation: str, **kwargs: Any) -> dict[str, Any]:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(
            self._executor, functools.partial(self._call_sync, operation, kwargs)
        )

    def _call_sync(self, operation: str, kwargs: dict[str, Any]) -> dict[str, Any]:
        client = self.connection.client
        try:
            result: dict[str, Any] = getattr(client, operation)(TableName=self.table, **kwargs) \
                if operation not in ("transact_write_items", "batch_write_item",
                                     "batch_get_item") else getattr(client, operation)(**kwargs)
        except botocore.exceptions.ClientError as exc:
            if not _complete(exc.response):
                raise _TransactionRetry([CUT_SHORT]) from exc
            raise self._map_client_error(operation, exc) from exc
        except botocore.exceptions.BotoCoreError as exc:
            name = type(exc).__name__
            if name in ("NoRegionError", "NoCredentialsError", "PartialCredentialsError",
                        "ProfileNotFound"):
                raise ConfigurationError(f"{exc} (DynamoDB table {self.table})") from exc
            if name in _TIMEOUTS:
                raise TimeoutExceededError(
                    f"DynamoDB {operation} on table {self.table} got no answer within the "
                    f"configured timeouts (connect {self.connect_timeout:g} s, read "
                    f"{self.read_timeout:g} s, {self.max_attempts} attempts)", detail=name,
                ) from exc
            raise BackendUnavailableError(
                f"cannot reach DynamoDB for table {self.table}: {exc}"
            ) from exc
        if not _complete(result):
            raise _TransactionRetry([CUT_SHORT])
        return result

    def _map_client_error(self, operation: str,
                          exc: botocore.exceptions.ClientError) -> Exception:
        error = exc.response.get("Error", {})
        code, message = error.get("Code", ""), error.get("Message", "")
        if code == "ConditionalCheckFailedException":
            item = exc.response.get("Item")
            return _ConditionFailed(dict(item) if item else None)
        if code == "TransactionConflictException":  # the item is in an ongoing transaction
            return _TransactionRetry([code])
        if code == "TransactionCanceledException":
            reasons = [r.get("Code", "None") for r in exc.response.get("CancellationReasons", [])]
            if any(r in _RETRYABLE_TX for r in reasons) or not reasons:
                return _TransactionRetry(reasons)
            if any(r == "ValidationError" for r in reasons):
                return InvalidInputError(f"DynamoDB {operation} refused: {message}")
            return _ConditionFailed(None, reasons)
        if code == "ResourceNotFoundException":
            return SchemaError(
                f"DynamoDB table {self.table} (or an index) does not exist; run: {self._command()}",
                detail=code,
            )
        if code == "ValidationException":
            if "size" in message.lower() and ("exceed" in message.lower()
                                              or "maximum" in message.lower()):
                return PayloadTooLargeError(f"DynamoDB refused the item: {message}", detail=code)
            return InvalidInputError(f"DynamoDB {operation} refused the request: {message}",
                                     detail=code)
        if code in _THROTTLED:
            return BackendUnavailableError(
                f"DynamoDB {operation} still throttled or failing after the configured retries "
                f"({code})", detail=code)
        if code in _AUTH:
            return BackendUnavailableError(
                f"DynamoDB refused the credentials for table {self.table} ({code})", detail=code)
        return ChainlitORMError(f"DynamoDB {operation} failed: {code}: {message}", detail=code)

    async def ensure_ready(self) -> None:
        """Check the table once, on first use: indexes present and ACTIVE, no pending backfill."""
        if self._ready is None:
            self._ready = asyncio.get_running_loop().create_future()
            try:
                if self.check_schema:
                    await self._check_table()
            except BaseException as exc:
                self._ready.set_exception(exc)
                self._ready.exception()
                self._ready = None
                raise
            self._ready.set_result(None)
        elif not self._ready.done():
            await asyncio.shield(self._ready)

    async def _check_table(self) -> None:
        try:
            described = (await self._send("describe_table"))["Table"]
        except SchemaError as exc:
            raise SchemaError(
                f"DynamoDB table {self.table} does not exist; create it with: {self._command()}"
            ) from exc
        keys = {k["KeyType"]: k["AttributeName"] for k in described["KeySchema"]}
        if keys != {"HASH": PARTITION_KEY, "RANGE": SORT_KEY}:
            raise SchemaError(f"DynamoDB table {self.table} is not keyed PK/SK: {keys}")
        existing = {g["IndexName"]: g for g in described.get("GlobalSecondaryIndexes", [])}
        problems = []
        for name, spec in self.indexes.items():
            found = existing.get(name)
            if found is None:
                problems.append(f"index {name} is missing")
                continue
            found_keys = {k["KeyType"]: k["AttributeName"] for k in found["KeySchema"]}
            if found_keys != {"HASH": spec.pk_attribute, "RANGE": spec.sk_attribute}:
                problems.append(f"index {name} has keys {found_keys}")
            projection = found.get("Projection", {})
            if spec.projection == "INCLUDE" and projection.get("ProjectionType") != "ALL" and (
                    set(spec.attributes) - set(projection.get("NonKeyAttributes", []))):
                problems.append(f"index {name} does not project {', '.join(spec.attributes)}")
            if found.get("IndexStatus", "ACTIVE") != "ACTIVE":
                problems.append(f"index {name} is {found.get('IndexStatus')}, not ACTIVE yet")
        if problems:
            raise SchemaError(
                f"DynamoDB table {self.table} cannot be used by chainlit-orm: "
                f"{'; '.join(problems)}. Run: {self._command()}",
                detail=problems,
            )
        version = (await self._send(
            "get_item", Key={k: _s(v) for k, v in SCHEMA_VERSION_KEY.items()}, ConsistentRead=True,
        )).get("Item") or {}
        if "backfillPending" in version:
            raise SchemaError(
                f"DynamoDB table {self.table} has an unfinished backfill; run: {self._command()}"
            )

    async def _transact(self, actions: list[dict[str, Any]]) -> None:
        """TransactWriteItems, retrying conflicts with other transactions (:data:`CONFLICT_RETRY`).

        botocore gives each call one ``ClientRequestToken``, kept across its own retries, so a
        transaction whose answer was lost is not applied twice by DynamoDB. (moto ignores the
        token; every transaction the layer sends also carries a condition that fails once it
        has been applied, and the caller then reads the item again.)
        """
        for attempt in range(CONFLICT_RETRY.attempts):
            await CONFLICT_RETRY.pause(attempt)
            try:
                await self._call("transact_write_items", TransactItems=actions)
                return
            except _TransactionRetry as exc:
                last = exc
        raise BackendUnavailableError(
            f"DynamoDB transaction kept conflicting ({', '.join(last.reasons)})",
            detail="TransactionConflict") from last

    async def _batch_write(self, requests: list[dict[str, Any]], *,
                           last_after_rest: bool = False) -> None:
        """BatchWriteItem in chunks of 25, retrying unprocessed items with backoff.

        ``last_after_rest``: every chunk but the last is sent at once, and the last only once
        they all succeeded (``delete_thread`` puts its thread item there): two round trips of
        latency instead of one per chunk, with the same number of calls.
        """
        chunks = [requests[i:i + BATCH_WRITE] for i in range(0, len(requests), BATCH_WRITE)]
        if last_after_rest and len(chunks) > 2:
            outcomes = await asyncio.gather(
                *(self._batch_write(chunk) for chunk in chunks[:-1]), return_exceptions=True)
            for outcome in outcomes:  # all settled; the first failure is raised, none dropped
                if isinstance(outcome, BaseException):
                    raise outcome
            await self._batch_write(chunks[-1])
            return
        for pending in chunks:
            for attempt in range(BATCH_RETRY.attempts):
                await BATCH_RETRY.pause(attempt + 1)  # unprocessed items: always back off
                result = await self._call("batch_write_item",
                                          RequestItems={self.table: pending})
                pending = result.get("UnprocessedItems", {}).get(self.table, [])
                if not pending:
                    break
            else:
                raise BackendUnavailableError(
                    f"DynamoDB left {len(pending)} writes unprocessed after retries")

    async def _batch_get(self, keys: list[dict[str, Any]], **options: Any
                         ) -> list[dict[str, Any]]:
        """BatchGetItem (consistent), retrying unprocessed keys; items in no particular order."""
        found: list[dict[str, Any]] = []
        pending: dict[str, Any] = {"Keys": keys, "ConsistentRead": True, **options}
        for attempt in range(BATCH_RETRY.attempts):
            await BATCH_RETRY.pause(attempt + 1)  # unprocessed keys: always back off
            result = await self._call("batch_get_item", RequestItems={self.table: pending})
            found += result.get("Responses", {}).get(self.table, [])
            unprocessed = result.get("UnprocessedKeys", {}).get(self.table)
            if not unprocessed:
                return found
            pending = unprocessed
        raise BackendUnavailableError("DynamoDB left keys unprocessed after retries")

    async def _query_all(self, **kwargs: Any) -> list[dict[str, Any]]:
        items: list[dict[str, Any]] = []
        while True:
            result = await self._call("query", **kwargs)
            items += result.get("Items", [])
            last = result.get("LastEvaluatedKey")
            if not last:
                return items
            kwargs["ExclusiveStartKey"] = last

    def _key_of(self, entity: str, **values: Any) -> dict[str, Any]:
        return _key(*self.keys[entity].render(**values))

    def _index_attributes(self, entity: str, values: Mapping[str, Any]) -> dict[str, str]:
        """The GSI key attributes an item of ``entity`` with ``values`` carries (sparse indexes
        driven by feedback counters excluded)."""
        result: dict[str, str] = {}
        for declared in self.models.dynamo[entity].indexes:
            if declared.index in FEEDBACK_INDEXES.values():
                continue
            for attribute, template in ((declared.pk_attribute, declared.pk),
                                        (declared.sk_attribute, declared.sk)):
                rendered = render_key(template, values)
                if rendered is not None:
                    result[attribute] = rendered
        return result

    def _index_templates(self, entity: str) -> dict[str, str]:
        result: dict[str, str] = {}
        for declared in self.models.dynamo[entity].indexes:
            if declared.index in FEEDBACK_INDEXES.values():
                continue
            result[declared.pk_attribute] = declared.pk
            result[declared.sk_attribute] = declared.sk
        return result

    async def _lookup(self, entity: str, item_id: str) -> tuple[str, str] | None:
        """The table key of the item of ``entity`` with this id, through the ById index."""
        declared = next(d for d in self.models.dynamo[entity].indexes if d.index == LOOKUP_INDEX)
        spec = self.indexes[LOOKUP_INDEX]
        value = render_key(declared.pk, {"id": item_id})
        result = await self._call(
            "query", IndexName=LOOKUP_INDEX,
            KeyConditionExpression="#p = :p",
            ExpressionAttributeNames={"#p": spec.pk_attribute},
            ExpressionAttributeValues={":p": _s(value or "")},
        )
        for item in result.get("Items", []):
            return item[PARTITION_KEY]["S"], item[SORT_KEY]["S"]
        return None

    def _thread_of_key(self, pk: str) -> str | None:
        parsed = parse_key(self.models.dynamo["thread"].pk, pk)
        return parsed["id"] if parsed else None

    def _kind(self, sk: str) -> str | None:
        """Which entity an item of a thread partition is, from its sort key prefix."""
        for entity in ("thread", "step", "element", "feedback"):
            template = self.models.dynamo[entity].sk
            if (placeholders(template) and parse_key(template, sk) is not None) or sk == template:
                return entity
        return None

    # ------------------------------------------------------------------- users

    def normalize_user_id(self, value: object, what: str) -> str:
        """User ids are UUIDs, except in tables Chainlit's layer wrote: there the id is the
        identifier (contract §4.3, 11), so any non-empty string without NUL is accepted."""
        if isinstance(value, uuid.UUID) or (isinstance(value, str) and _UUID.match(value)):
            return normalize_id(value, what=what)
        if isinstance(value, str) and value and len(value) <= _MAX_USER_ID and "\x00" not in value:
            return value
        shown = value if isinstance(value, str) and len(value) <= 80 else type(value).__name__
        raise InvalidIdentifierError(f"{what} is not a valid user id: {shown!r}", detail=what)

    def _remember(self, row: Mapping[str, Any]) -> None:
        if row.get("id") and row.get("identifier"):
            self._identifiers[str(row["id"])] = str(row["identifier"])
            self._identifiers.move_to_end(str(row["id"]))
            while len(self._identifiers) > 10_000:
                self._identifiers.popitem(last=False)

    def _user_row(self, item: Mapping[str, Any]) -> dict[str, Any]:
        row = self.codecs["user"].row(item)
        if not row.get("identifier"):
            parsed = parse_key(self.models.dynamo["user"].pk, item[PARTITION_KEY]["S"])
            row["identifier"] = parsed["identifier"] if parsed else None
        if not row.get("id"):
            row["id"] = row["identifier"]  # Chainlit's layer: the id is the identifier
        self._remember(row)
        return row

    async def get_user(self, identifier: str) -> dict[str, Any] | None:
        item = (await self._call("get_item", Key=self._key_of("user", identifier=identifier),
                                 ConsistentRead=True)).get("Item")
        return None if item is None else self._user_row(item)

    async def upsert_user(self, row: dict[str, Any]) -> dict[str, Any]:
        codec = self.codecs["user"]
        u = _Update()
        u.set("id", codec.encode("id", row["id"]), if_absent=True)
        u.set("createdAt", codec.encode("createdAt", row["createdAt"]), if_absent=True)
        u.set("identifier", codec.encode("identifier", row["identifier"]))
        u.set("metadata", codec.encode("metadata", row["metadata"]))
        if row.get("display_name") is not None:
            u.set("display_name", codec.encode("display_name", row["display_name"]))
        index = self._index_attributes("user", row)
        for attribute, value in index.items():
            u.set(attribute, _s(value), if_absent="{id}" in self._index_templates("user")[
                attribute])
        key = self._key_of("user", identifier=row["identifier"])
        result = await self._call("update_item", Key=key, ReturnValues="ALL_NEW", **u.params())
        stored = self._user_row(result["Attributes"])
        fixed = self._index_attributes("user", stored)
        stale = {a: v for a, v in fixed.items() if result["Attributes"].get(a) != _s(v)}
        if stale:  # an id written before the index attributes existed: point them at it
            fix = _Update()
            for attribute, value in stale.items():
                fix.set(attribute, _s(value))
            await self._call("update_item", Key=key, **fix.params())
        return stored

    async def user_exists(self, user_id: str) -> bool:
        return await self._identifier_of(user_id) is not None

    async def _identifier_of(self, user_id: str) -> str | None:
        if user_id in self._identifiers:
            return self._identifiers[user_id]
        found = await self._lookup("user", user_id)
        if found is None:
            return None
        parsed = parse_key(self.models.dynamo["user"].pk, found[0])
        if parsed is None:
            return None
        self._remember({"id": user_id, "identifier": parsed["identifier"]})
        return parsed["identifier"]

    # ----------------------------------------------------------------- threads

    async def update_thread(
        self,
        thread_id: str,
        fields: dict[str, Any],
        meta_set: dict[str, Any] | None,
        meta_delete: list[str] | None,
        create: bool,
        now: str,
    ) -> None:
        codec = self.codecs["thread"]
        identifier = None
        if fields.get("userId"):
            identifier = await self._identifier_of(fields["userId"])
        key = self._key_of("thread", id=thread_id)
        templates = self._index_templates("thread")
        merge = bool(meta_set or meta_delete)

        def build(mode: str) -> _Update:
            u = _Update()
            u.set("id", codec.encode("id", thread_id))
            known: dict[str, Any] = {"id": thread_id}
            for name, value in fields.items():
                if name == "userId":
                    u.set("userId", codec.encode("userId", value), if_absent=True)
                    if identifier is not None:
                        u.set("userIdentifier", codec.encode("userIdentifier", identifier),
                              if_absent=True)
                elif value is None:
                    u.remove(name)
                else:
                    u.set(name, codec.encode(name, value))
                known[name] = value
            if create:
                u.set("createdAt", codec.encode("createdAt", now), if_absent=True)
                u.set("activityAt", codec.encode("activityAt", now), if_absent=True)
                self._set_expiry(u, now, if_absent=True)
            for attribute, template in templates.items():
                names = placeholders(template)
                if "activityAt" in names:
                    if create:
                        rendered = render_key(template, {**known, "activityAt": now})
                        if rendered is not None:
                            u.set(attribute, _s(rendered), if_absent=True)
                    continue
                rendered = render_key(template, known)
                if rendered is None or not all(n in known for n in names):
                    continue
                u.set(attribute, _s(rendered), if_absent="userId" in names)
            if not create:
                u.condition(f"attribute_exists({u.n(PARTITION_KEY)})")
            if mode == "paths":
                for k, value in (meta_set or {}).items():
                    u.set_path("metadata", k, to_attribute_value(value))
                for k in meta_delete or []:
                    u.remove_path("metadata", k)
                u.condition(f"attribute_type({u.n('metadata')}, {u.v(_s('M'))})")
            elif mode == "whole":
                u.set("metadata", to_attribute_value(meta_set or {}))
                m = u.n("metadata")
                u.condition(f"attribute_not_exists({m}) OR NOT attribute_type({m}, "
                            f"{u.v(_s('M'))})")
            elif meta_set is not None:  # metadata={}: nothing to merge, but a map exists
                u.set("metadata", {"M": {}}, if_absent=True)
            return u

        mode = "paths" if merge else "none"
        returns = "ALL_NEW" if "userId" in fields else "NONE"
        # The writes of this process to one thread item run one at a time (see _thread_lock):
        # Chainlit's first message sends this update, the message's transaction (which makes a
        # stub thread) and the session's metadata at once, and on DynamoDB a write that meets
        # an item in a transaction is refused (TransactionConflictException).
        async with self._thread_lock(thread_id):
            for attempt in range(CONFLICT_RETRY.attempts):
                await CONFLICT_RETRY.pause(attempt)
                try:
                    result = await self._call(
                        "update_item", Key=key, ReturnValues=returns,
                        ReturnValuesOnConditionCheckFailure="ALL_OLD", **build(mode).params())
                except _ConditionFailed as failed:
                    if failed.item is None and not create:
                        return  # a metadata-only update never creates a thread (#1684)
                    stored = (failed.item or {}).get("metadata")
                    mode = "paths" if stored is not None and "M" in stored else "whole"
                    continue
                if create:
                    self._deleted.pop(thread_id, None)  # the thread exists (again)
                if returns == "ALL_NEW":
                    await self._sync_feedback_markers(key, result.get("Attributes", {}))
                return
        raise ConflictError(f"thread {thread_id}: metadata merge kept conflicting")

    async def _sync_feedback_markers(self, key: dict[str, Any], item: Mapping[str, Any]) -> None:
        """After an owner is set: mark the thread in the feedback indexes its counters call for."""
        user_id = self.codecs["thread"].row(item).get("userId")
        if not user_id:
            return
        u = _Update()
        for value, counter in FEEDBACK_COUNTERS.items():
            spec = self.indexes.get(FEEDBACK_INDEXES[value])
            count = from_attribute_value(item[counter]) if counter in item else 0
            if spec is None or not count or spec.pk_attribute in item:
                continue
            declared = next(d for d in self.models.dynamo["thread"].indexes
                            if d.index == spec.name)
            u.set(spec.pk_attribute, _s(render_key(declared.pk, {"userId": user_id}) or ""))
        if u.sets:
            await self._call("update_item", Key=key, **u.params())

    async def get_thread_author(self, thread_id: str) -> str | None:
        item = (await self._call(
            "get_item", Key=self._key_of("thread", id=thread_id), ConsistentRead=True,
            ProjectionExpression="#u, #d, #e",
            ExpressionAttributeNames={"#u": "userIdentifier", "#d": "deletedAt",
                                      "#e": TTL_ATTRIBUTE},
        )).get("Item")
        if not item or "userIdentifier" not in item or "deletedAt" in item or self._expired(
                item):  # trashed, or past its TTL: gone
            return None
        value = from_attribute_value(item["userIdentifier"])
        return str(value) if value else None

    async def get_thread(
        self, thread_id: str
    ) -> tuple[dict[str, Any], list[dict[str, Any]], list[dict[str, Any]]] | None:
        items = await self._query_all(
            KeyConditionExpression="#p = :p", ExpressionAttributeNames={"#p": PARTITION_KEY},
            ExpressionAttributeValues={":p": self._key_of("thread", id=thread_id)[PARTITION_KEY]},
            ConsistentRead=True,
        )
        thread: dict[str, Any] | None = None
        steps: dict[str, dict[str, Any]] = {}
        step_items: dict[str, Mapping[str, Any]] = {}
        elements: list[dict[str, Any]] = []
        feedback: dict[str, dict[str, Any]] = {}
        for item in items:
            kind = self._kind(item[SORT_KEY]["S"])
            if kind == "thread":
                if self._expired(item):  # past its TTL: gone, whenever DynamoDB removes it
                    return None
                thread = self.codecs["thread"].row(item)
            elif kind == "step":
                if _is_phantom(item):
                    legacy = _legacy_feedback(item)
                    if legacy:
                        feedback.setdefault(legacy["forId"], legacy)
                    continue
                row = self.codecs["step"].row(item)
                steps[str(row.get("id"))] = row
                step_items[str(row.get("id"))] = item
            elif kind == "element":
                elements.append(self.codecs["element"].row(item))
            elif kind == "feedback":
                row = self.codecs["feedback"].row(item)
                feedback[str(row.get("forId"))] = _feedback_dict(row)
        if thread is None or thread.get("deletedAt"):  # trashed: gone for every read
            return None
        await self._load_texts(list(step_items.values()), list(steps.values()))
        for step_id, row in steps.items():
            found = feedback.get(step_id) or _legacy_feedback(step_items[step_id])
            if found:
                row["feedback"] = found
        ordered = sorted(steps.values(), key=lambda r: (r.get("createdAt") or "", str(r["id"])))
        elements.sort(key=lambda r: str(r.get("id")))
        return thread, ordered, elements

    async def list_threads(
        self,
        *,
        user_id: str | None,
        limit: int,
        after: tuple[str, str] | None,
        search: str | None,
        feedback: int | None,
        order: ThreadOrder,
    ) -> list[dict[str, Any]]:
        if order != "activity":
            raise ConfigurationError("the DynamoDB layer lists threads by activity only")
        needle = search or None  # case-folded by the layer (chainlit_orm.models.search)
        if user_id is None:
            return await self._list_by_scan(limit, after, needle, feedback)
        index_name = LIST_INDEX if feedback is None else FEEDBACK_INDEXES[feedback]
        spec = self.indexes[index_name]
        declared = next(d for d in self.models.dynamo["thread"].indexes if d.index == index_name)
        pk_value = render_key(declared.pk, {"userId": user_id}) or ""
        kwargs: dict[str, Any] = {
            "IndexName": index_name,
            "KeyConditionExpression": "#p = :p",
            "ExpressionAttributeNames": {"#p": spec.pk_attribute},
            "ExpressionAttributeValues": {":p": _s(pk_value)},
            "ScanIndexForward": False,
        }
        if needle is None and limit <= 1000:
            kwargs["Limit"] = limit
        if after is not None:
            moment, tid = after
            sk = render_key(declared.sk, {"activityAt": moment, "id": tid, "userId": user_id})
            kwargs["ExclusiveStartKey"] = {
                spec.pk_attribute: _s(pk_value), spec.sk_attribute: _s(sk or ""),
                **self._key_of("thread", id=tid),
            }
        rows: list[dict[str, Any]] = []
        codec = self.codecs["thread"]
        while len(rows) < limit:
            try:
                result = await self._call("query", **kwargs)
            except InvalidInputError as exc:
                if after is not None and not isinstance(exc, PayloadTooLargeError):
                    raise InvalidCursorError("the pagination cursor does not fit this query") \
                        from exc
                raise
            for item in result.get("Items", []):
                row = codec.row(item)
                if needle is not None and not matches(needle, row.get("name")):
                    continue
                if self._stale(row):  # past the retention: gone (the index has no TTL)
                    continue
                rows.append(row)
                if len(rows) == limit:
                    break
            last = result.get("LastEvaluatedKey")
            if not last:
                break
            kwargs["ExclusiveStartKey"] = last
        return rows

    async def _list_by_scan(self, limit: int, after: tuple[str, str] | None,
                            needle: str | None, feedback: int | None) -> list[dict[str, Any]]:
        """Every user's threads (Chainlit never asks for this; admin tools do): a Scan."""
        thread_sk = self.models.dynamo["thread"].sk
        kwargs: dict[str, Any] = {
            "FilterExpression": "#s = :s",
            "ExpressionAttributeNames": {"#s": SORT_KEY},
            "ExpressionAttributeValues": {":s": _s(thread_sk)},
        }
        rows: list[dict[str, Any]] = []
        codec = self.codecs["thread"]
        while True:
            result = await self._call("scan", **kwargs)
            for item in result.get("Items", []):
                if feedback is not None:
                    counter = item.get(FEEDBACK_COUNTERS[feedback])
                    if not counter or not from_attribute_value(counter):
                        continue
                row = codec.row(item)
                if needle is not None and not matches(needle, row.get("name")):
                    continue
                if row.get("deletedAt"):  # the trash is never listed
                    continue
                row.pop(OVERFLOW_COLUMN, None)
                rows.append(row)
            last = result.get("LastEvaluatedKey")
            if not last:
                break
            kwargs["ExclusiveStartKey"] = last
        rows.sort(key=lambda r: (r.get("activityAt") or "", str(r.get("id"))), reverse=True)
        if after is not None:
            rows = [r for r in rows if (r.get("activityAt") or "", str(r.get("id"))) < after]
        return rows[:limit]

    async def delete_thread(self, thread_id: str) -> list[str]:
        async with self._deleting(thread_id):
            keys = await self._delete_partition(thread_id)
            self._activity.pop(thread_id, None)  # a recreated thread starts its activity anew
            self._deleted[thread_id] = None
            self._deleted.move_to_end(thread_id)
            while len(self._deleted) > 10_000:
                self._deleted.popitem(last=False)
            return keys

    async def _delete_partition(self, thread_id: str) -> list[str]:
        items = await self._query_all(
            KeyConditionExpression="#p = :p",
            ExpressionAttributeNames={"#p": PARTITION_KEY, "#s": SORT_KEY, "#o": "objectKey",
                                      "#i": TEXT_REFS["input"], "#t": TEXT_REFS["output"]},
            ExpressionAttributeValues={":p": self._key_of("thread", id=thread_id)[PARTITION_KEY]},
            ProjectionExpression="#p, #s, #o, #i, #t",
            ConsistentRead=True,
        )
        thread_sk = self.models.dynamo["thread"].sk
        # children first, the thread item last: an interrupted delete leaves a thread to retry
        items.sort(key=lambda item: item[SORT_KEY]["S"] == thread_sk)
        keys = _object_keys(items)
        await self._batch_write([
            {"DeleteRequest": {"Key": {PARTITION_KEY: i[PARTITION_KEY], SORT_KEY: i[SORT_KEY]}}}
            for i in items
        ], last_after_rest=True)
        return keys

    # ------------------------------------------------------------------- steps

    def _text_key(self, thread_id: str, step_id: str, field: str, create: bool) -> str:
        return f"threads/{thread_id}/steps/{step_id}/{field}{'.initial' if create else ''}"

    async def upsert_step(
        self, row: dict[str, Any], *, create: bool, activity: str | None, now: str
    ) -> None:
        codec = self.codecs["step"]
        thread_id, step_id = str(row["threadId"]), str(row["id"])
        key = self._key_of("step", threadId=thread_id, id=step_id)
        encoded = {name: codec.encode(name, value) for name, value in row.items()
                   if value is not None}
        index = self._index_attributes("step", row)
        storage = self.storage()
        # texts go only to a storage that can give them back: a step whose text cannot be
        # read again would make its thread unreadable
        readable = storage is not None and can_read_back(storage)
        offload = [f for f in TEXT_REFS if f in encoded and readable
                   and len(row[f].encode()) > self.offload_bytes]
        size = _item_size({**key, **encoded, **{a: _s(v) for a, v in index.items()}})
        size -= sum(_value_size(encoded[f]) for f in offload)
        if size > ITEM_LIMIT - 1024:
            if storage is None:
                hint = " (configure a storage client to offload texts)"
            elif not readable:
                hint = (f" and {type(storage).__name__} cannot read a text back, so it is not "
                        "offloaded there (a storage needs an async read_file(object_key) "
                        "method, as chainlit_orm.storage.FsspecStorage has)")
            else:
                hint = ""
            raise PayloadTooLargeError(
                f"step {step_id} would be a {size} byte DynamoDB item, above the 400 KB limit"
                f"{hint}", detail="step")
        refs: dict[str, str] = {}
        try:
            for field in offload:
                assert storage is not None
                object_key = self._text_key(thread_id, step_id, field, create)
                refs[field] = object_key
                await storage.upload_file(object_key, row[field].encode(),
                                          mime="text/plain; charset=utf-8", overwrite=True)

            def build(with_refs: bool) -> _Update:
                u = _Update()
                for name, encoded_value in encoded.items():
                    if name in offload:
                        continue
                    u.set(name, encoded_value,
                          if_absent=create and name not in ("id", "threadId"))
                    if name in TEXT_REFS and not create:
                        u.remove(TEXT_REFS[name])  # an inline update replaces an offloaded text
                for attribute, value in index.items():
                    u.set(attribute, _s(value))
                if with_refs:
                    for field, ref_key in refs.items():
                        u.set(TEXT_REFS[field], _s(ref_key))
                        if create:
                            u.condition(f"attribute_not_exists({u.n(field)}) AND "
                                        f"attribute_not_exists({u.n(TEXT_REFS[field])})")
                        else:
                            u.remove(field)
                return u

            # A new step is one PutItem, conditioned on the item not existing; moto and DynamoDB
            # evaluate it without parsing ~20 if_not_exists() clauses. Only when an update
            # already wrote the step (Chainlit may send update_step first) does the create fall
            # back to the update that keeps what is there: a second call, in the rare order
            # only. In a transaction (a user message) the step is always that update, which
            # cannot fail: a cancelled transaction costs a second call, and moto answers one by
            # restoring a copy of the whole table taken when it began, undoing the writes other
            # clients made meanwhile (an owner set by update_thread, say).
            async with self._child_write(thread_id) as late:
                put = None
                if create and not refs and activity is None and not late:
                    put = {**key, **encoded, **{a: _s(v) for a, v in index.items()}}
                if activity is None:
                    await self._write_step(key, thread_id, step_id, build, refs, None, now, put,
                                           stub=late)
                    return
                # User messages of one thread are written one at a time by this process, and a
                # bump already overtaken by a later activity is skipped (its condition would
                # fail).
                async with self._thread_lock(thread_id):
                    known = self._activity.get(thread_id)
                    bump = None if known is not None and activity < known else activity
                    bumped = await self._write_step(key, thread_id, step_id, build, refs, bump,
                                                    now, put, stub=late)
                    if bumped:
                        self._activity[thread_id] = activity
                        self._activity.move_to_end(thread_id)
                        while len(self._activity) > 10_000:
                            self._activity.popitem(last=False)
        except BaseException as exc:
            # Texts uploaded for a write that was refused are removed, so no object is left
            # behind. After a timeout or an outage the write may have been applied, and the
            # step would then point at a deleted object: those keep their texts.
            if refs and storage is not None and not isinstance(
                    exc, BackendUnavailableError | asyncio.CancelledError):
                await _remove_objects(storage, list(refs.values()), exc)
            raise

    async def _write_step(
        self, key: dict[str, Any], thread_id: str, step_id: str,
        build: Callable[[bool], _Update], refs: dict[str, str], activity: str | None, now: str,
        put: dict[str, Any] | None = None, *, stub: bool = False,
    ) -> bool:
        """One step write (with the thread's activity bump in the same transaction when
        ``activity`` is given); returns whether the bump was applied. ``put``: the whole new
        item, written only if no item has the key (else the update from ``build`` runs).
        ``stub``: a late write (see :meth:`_child_write`), which recreates the thread item in
        the same transaction unless the bump does."""
        storage = self.storage()
        with_refs = bool(refs)
        bump = activity is not None
        thread_key = self._key_of("thread", id=thread_id)
        absent = {"ConditionExpression": "attribute_not_exists(#p)",
                  "ExpressionAttributeNames": {"#p": PARTITION_KEY}}
        for attempt in range(CONFLICT_RETRY.attempts):
            await CONFLICT_RETRY.pause(attempt)
            # the step's write: the whole new item, or the update (same parameters for
            # PutItem/UpdateItem and for the transaction's Put/Update action)
            kind, write = (("Put", {"Item": put, **absent}) if put is not None
                           else ("Update", {"Key": key, **build(with_refs).params()}))
            try:
                if bump or stub:
                    thread = self._bump(thread_id, str(activity), now) if bump \
                        else self._stub(thread_id, now)
                    await self._transact([
                        {"Update": {"TableName": self.table, "Key": thread_key,
                                    **thread.params()}},
                        {kind: {"TableName": self.table, **write}},
                    ])
                    self._deleted.pop(thread_id, None)  # the thread exists again
                else:
                    await self._call("put_item" if put is not None else "update_item", **write)
                break
            except _ConditionFailed as failed:
                reasons = failed.reasons if bump or stub else ["None", "ConditionalCheckFailed"]
                if reasons[0] == "ConditionalCheckFailed":
                    bump = False  # the thread already has a later activity
                if len(reasons) > 1 and reasons[1] == "ConditionalCheckFailed":
                    if put is not None:
                        put = None  # the step exists: keep what an earlier update wrote
                    else:
                        with_refs = False  # an update already wrote these texts: keep them
        else:
            raise ConflictError(f"step {step_id} kept conflicting", detail=step_id)
        if refs and not with_refs and storage is not None:
            for object_key in refs.values():
                await storage.delete_file(object_key)
        return bump

    def _thread_lock(self, thread_id: str) -> asyncio.Lock:
        """The lock (one of 64 stripes per event loop) under which this process writes a thread
        item: ``update_thread``, a user message's activity bump, feedback and its counters.

        Invariant: every write of the thread item itself runs under it, so within one process
        those writes never race each other (no transaction conflict, no optimistic condition
        invalidated by a sibling task, no lost first write). Writes of step and element items
        do not take it. Never held across another acquisition (the lock is not re-entrant).
        Across processes the writes commute or are conditioned, and conflicts are retried
        (:data:`CONFLICT_RETRY`).
        """
        loop = asyncio.get_running_loop()
        stripes = self._locks.get(loop)
        if stripes is None:
            stripes = self._locks[loop] = [asyncio.Lock() for _ in range(64)]
        return stripes[hash(thread_id) % 64]

    def _gate(self, thread_id: str) -> _Gate:
        gates = self._gates.get(asyncio.get_running_loop())
        if gates is None:
            gates = self._gates[asyncio.get_running_loop()] = {}
        gate = gates.get(thread_id)
        if gate is None:
            gate = gates[thread_id] = _Gate()
        gate.users += 1
        return gate

    def _leave(self, thread_id: str, gate: _Gate) -> None:
        gate.users -= 1
        if not gate.users:
            gates = self._gates.get(asyncio.get_running_loop())
            if gates is not None and gates.get(thread_id) is gate:
                del gates[thread_id]

    @contextlib.asynccontextmanager
    async def _child_write(self, thread_id: str) -> AsyncIterator[bool]:
        """Run a write of a step, element or feedback of ``thread_id``; yields whether it is
        *late*: this process deleted the thread and nothing has recreated it since.

        Deletes racing writes leave a thread that is either entirely gone or that exists with
        everything written to it, never items without their thread. On the SQL backends the
        foreign key gives that (a late step recreates a stub thread); here the writes of one
        process take turns with its deletes of the same thread (a delete waits for the writes
        already running, the others wait for it), and a late write recreates the stub thread in
        the same transaction as its item (a late feedback finds no thread: NotFoundError). A
        write from another process that lands after a delete's read of the partition is not
        seen by it: guaranteeing that would take a transaction on the thread item with every
        step write (twice the write cost, and conflicts with every other write of the thread);
        such an item is invisible (``get_thread``/``list_threads`` need the thread item) and
        the next ``delete_thread`` of the id removes it.
        """
        gate = self._gate(thread_id)
        try:
            while gate.reopened is not None:  # a delete of this thread is running
                await gate.reopened.wait()
            gate.writers += 1  # no await since the check: the delete cannot have started
            try:
                yield thread_id in self._deleted
            finally:
                gate.writers -= 1
                if not gate.writers and gate.idle is not None:
                    gate.idle.set()
        finally:
            self._leave(thread_id, gate)

    @contextlib.asynccontextmanager
    async def _deleting(self, thread_id: str) -> AsyncIterator[None]:
        """Run a delete of ``thread_id`` alone among this process's writes of it."""
        gate = self._gate(thread_id)
        try:
            if gate.lock is None:
                gate.lock = asyncio.Lock()
            async with gate.lock:
                reopened = gate.reopened = asyncio.Event()
                try:
                    if gate.writers:
                        gate.idle = asyncio.Event()
                        await gate.idle.wait()
                    yield
                finally:
                    gate.idle = gate.reopened = None
                    reopened.set()
        finally:
            self._leave(thread_id, gate)

    def _stub(self, thread_id: str, now: str) -> _Update:
        """The thread item a late write recreates (as the SQL backends' stub thread): id, and
        creation and activity times if absent. No owner, so it is listed for nobody."""
        codec = self.codecs["thread"]
        u = _Update()
        u.set("id", codec.encode("id", thread_id))
        u.set("createdAt", codec.encode("createdAt", now), if_absent=True)
        u.set("activityAt", codec.encode("activityAt", now), if_absent=True)
        self._set_expiry(u, now, if_absent=True)
        for attribute, template in self._index_templates("thread").items():
            if "activityAt" in placeholders(template):
                rendered = render_key(template, {"id": thread_id, "activityAt": now})
                if rendered is not None:
                    u.set(attribute, _s(rendered), if_absent=True)
        return u

    def _bump(self, thread_id: str, activity: str, now: str) -> _Update:
        """Raise the thread's activity to ``activity``; a stub thread if none.

        The activity never goes down, with one exception: a thread whose activity is still its
        creation time (``update_thread`` made it, no user message has moved it) takes the time
        of its first user message even when that is earlier. Chainlit writes the first message
        and the thread (``init_thread``: name and owner) as two concurrent tasks, and the
        message was stamped a few milliseconds before ``update_thread`` stamps the thread, so
        the activity becomes the message's time in either order, and this transaction's
        condition holds in the common race instead of cancelling it.
        """
        codec = self.codecs["thread"]
        u = _Update()
        u.set("id", codec.encode("id", thread_id))
        u.set("createdAt", codec.encode("createdAt", now), if_absent=True)
        u.set("activityAt", codec.encode("activityAt", activity))
        self._set_expiry(u, activity)  # the TTL moves with the activity, in this same write
        for attribute, template in self._index_templates("thread").items():
            if "activityAt" not in placeholders(template):
                continue
            rendered = render_key(template, {"id": thread_id, "activityAt": activity})
            if rendered is not None:
                u.set(attribute, _s(rendered))
        a = u.n("activityAt")
        u.condition(f"attribute_not_exists({a}) OR {a} <= {u.v(_s(activity))} OR "
                    f"{a} = {u.n('createdAt')}")
        return u

    async def _load_texts(self, items: Sequence[Mapping[str, Any]],
                          rows: Sequence[dict[str, Any]]) -> None:
        """Read offloaded step texts back into their rows, concurrently.

        A text that cannot be read (its object is gone, the storage cannot read, the bytes are
        not UTF-8) does not fail the whole read: one step must never make its thread unreadable.
        That field reads :data:`UNREADABLE_TEXT` instead, the step's ``metadata`` gains
        ``{UNREADABLE_KEY: {field: object_key}}`` (so an app can tell, and the text is not
        silently shown as empty), and a warning names the step, the object and the error. This
        is, with URL signing, the one place a storage error is caught and not raised: the rest
        of the thread is still the user's to read.
        """
        jobs = []
        for item, row in zip(items, rows, strict=True):
            for field, ref in TEXT_REFS.items():
                if ref in item:
                    jobs.append((row, field, item[ref]["S"]))
        if not jobs:
            return
        texts = await asyncio.gather(*(self._read_text(key) for _, _, key in jobs),
                                     return_exceptions=True)
        for (row, field, object_key), text in zip(jobs, texts, strict=True):
            if isinstance(text, str):
                row[field] = text
                continue
            if not isinstance(text, Exception):
                raise text
            logger.warning("step %s: its %s is stored at %r and could not be read back (%s: %s); "
                           "returned with a marker", row.get("id"), field, object_key,
                           type(text).__name__, text)
            row[field] = UNREADABLE_TEXT
            metadata = row.get("metadata")
            metadata = dict(metadata) if isinstance(metadata, dict) else {}
            metadata[UNREADABLE_KEY] = {**metadata.get(UNREADABLE_KEY, {}), field: object_key}
            row["metadata"] = metadata

    async def _read_text(self, object_key: str) -> str:
        storage = self.storage()
        if storage is None:
            raise StorageError(
                f"a step text is stored at {object_key!r} but no storage client is configured")
        if not isinstance(storage, ReadableStorage):
            raise StorageError(f"a step text is stored at {object_key!r} but "
                               f"{type(storage).__name__} cannot read it back (no read_file)",
                               detail=object_key)
        data = await storage.read_file(object_key)
        try:
            return data.decode()
        except UnicodeDecodeError as exc:
            raise StorageError(f"stored step text {object_key!r} is not UTF-8",
                               detail=object_key) from exc

    async def delete_step(self, step_id: str) -> list[str]:
        found = await self._lookup("step", step_id)
        if found is None:
            return []
        pk, sk = found
        thread_id = self._thread_of_key(pk)
        if thread_id is None:
            return []
        element_prefix = self.models.dynamo["element"].sk.split("{", 1)[0]
        elements = await self._query_all(
            KeyConditionExpression="#p = :p AND begins_with(#s, :e)",
            FilterExpression="#f = :sid",
            ProjectionExpression="#p, #s, #o",
            ExpressionAttributeNames={"#p": PARTITION_KEY, "#s": SORT_KEY, "#f": "forId",
                                      "#o": "objectKey"},
            ExpressionAttributeValues={":p": _s(pk), ":e": _s(element_prefix),
                                       ":sid": _s(step_id)},
            ConsistentRead=True,
        )
        step = (await self._call("get_item", Key=_key(pk, sk), ConsistentRead=True)).get("Item")
        await self._delete_feedback_of(thread_id, step_id)
        targets = [*elements, *([step] if step else [])]
        keys = _object_keys(targets)
        await self._batch_write([
            {"DeleteRequest": {"Key": {PARTITION_KEY: i[PARTITION_KEY], SORT_KEY: i[SORT_KEY]}}}
            for i in targets
        ])
        return keys

    async def get_step(self, step_id: str) -> dict[str, Any] | None:
        found = await self._lookup("step", step_id)
        if found is None:
            return None
        pk, sk = found
        thread_id = self._thread_of_key(pk) or ""
        feedback_key = self._key_of("feedback", threadId=thread_id, forId=step_id)
        items = await self._batch_get([_key(pk, sk), feedback_key])
        step_item = next((i for i in items if i[SORT_KEY]["S"] == sk), None)
        if step_item is None or _is_phantom(step_item):
            return None
        row = self.codecs["step"].row(step_item)
        await self._load_texts([step_item], [row])
        feedback_item = next((i for i in items if i[SORT_KEY]["S"] != sk), None)
        if feedback_item is not None:
            row["feedback"] = _feedback_dict(self.codecs["feedback"].row(feedback_item))
        elif _legacy_feedback(step_item):
            row["feedback"] = _legacy_feedback(step_item)
        return row

    async def get_favorite_steps(self, user_id: str) -> list[dict[str, Any]]:
        """The user's favorite steps, newest first: one query of the user's threads on the list
        index, then one filtered query per thread (run concurrently) returning its favorite steps
        and its feedback. Chainlit only calls this with ``features.favorites`` on."""
        threads = await self.list_threads(user_id=user_id, limit=10**9, after=None, search=None,
                                          feedback=None, order="activity")
        step_prefix = self.models.dynamo["step"].sk.split("{", 1)[0]
        feedback_prefix = self.models.dynamo["feedback"].sk.split("{", 1)[0]

        async def favorites(thread_id: str) -> list[dict[str, Any]]:
            items = await self._query_all(
                KeyConditionExpression="#p = :p",
                FilterExpression="(begins_with(#s, :st) AND (#f = :t OR #m.#f = :t)) OR "
                                 "begins_with(#s, :fb)",
                ExpressionAttributeNames={"#p": PARTITION_KEY, "#s": SORT_KEY, "#f": "favorite",
                                          "#m": "metadata"},
                ExpressionAttributeValues={
                    ":p": self._key_of("thread", id=thread_id)[PARTITION_KEY],
                    ":st": _s(step_prefix), ":fb": _s(feedback_prefix), ":t": {"BOOL": True}},
                ConsistentRead=True,
            )
            feedback = {}
            step_items = []
            for item in items:
                if self._kind(item[SORT_KEY]["S"]) == "feedback":
                    row = self.codecs["feedback"].row(item)
                    feedback[str(row.get("forId"))] = _feedback_dict(row)
                elif not _is_phantom(item):
                    step_items.append(item)
            rows = [self.codecs["step"].row(item) for item in step_items]
            await self._load_texts(step_items, rows)
            for item, row in zip(step_items, rows, strict=True):
                found = feedback.get(str(row.get("id"))) or _legacy_feedback(item)
                if found:
                    row["feedback"] = found
            return rows

        nested = await asyncio.gather(*(favorites(str(t["id"])) for t in threads))
        steps = [s for group in nested for s in group]
        steps.sort(key=lambda r: (r.get("createdAt") or "", str(r["id"])), reverse=True)
        return steps

    # ---------------------------------------------------------------- elements

    async def upsert_element(self, row: dict[str, Any], now: str) -> None:
        codec = self.codecs["element"]
        key = self._key_of("element", threadId=row["threadId"], id=row["id"])
        u = _Update()
        for name, value in row.items():
            if value is not None:
                u.set(name, codec.encode(name, value))
        for attribute, value in self._index_attributes("element", row).items():
            u.set(attribute, _s(value))
        thread_id = str(row["threadId"])
        async with self._child_write(thread_id) as late:
            if not late:
                await self._call("update_item", Key=key, **u.params())
                return
            await self._transact([  # see _child_write: recreate the thread with the element
                {"Update": {"TableName": self.table, "Key": self._key_of("thread", id=thread_id),
                            **self._stub(thread_id, now).params()}},
                {"Update": {"TableName": self.table, "Key": key, **u.params()}},
            ])
            self._deleted.pop(thread_id, None)

    async def get_element(self, thread_id: str, element_id: str) -> dict[str, Any] | None:
        item = (await self._call(
            "get_item", Key=self._key_of("element", threadId=thread_id, id=element_id),
            ConsistentRead=True)).get("Item")
        return None if item is None else self.codecs["element"].row(item)

    async def delete_element(self, element_id: str, thread_id: str | None) -> str | None:
        if thread_id is None:
            found = await self._lookup("element", element_id)
            if found is None:
                return None
            key = _key(*found)
        else:
            key = self._key_of("element", threadId=thread_id, id=element_id)
        old = (await self._call("delete_item", Key=key, ReturnValues="ALL_OLD")).get("Attributes")
        if not old or "objectKey" not in old:
            return None
        value = from_attribute_value(old["objectKey"])
        return str(value) if value else None

    # ---------------------------------------------------------------- feedback

    async def upsert_feedback(self, row: dict[str, Any]) -> str:
        """One feedback item per step, and the thread's per-value counters in the same
        transaction (they keep the sparse ``UserFeedback0/1`` indexes exact).

        Concurrency, and why it cannot fail under load:

        * In this process, the feedback writes of one thread run one at a time (the thread's
          lock stripe), so they never invalidate each other's reads.
        * Across processes, the counters change by ``ADD`` (increments and decrements commute),
          not by writing a value read earlier; the only conditions are on the feedback item
          itself (the state it was read in: a concurrent writer of the same step makes us read
          again) and, where a marker must go or stay, on the counter crossing 1. Writers of
          different steps of one thread therefore do not conflict at all.
        * A conflict left is retried under :data:`CONFLICT_RETRY` (jittered backoff).
        * A transaction retried after its answer was lost finds its own write (the feedback
          item's condition fails), reads again and writes no second increment.

        Read: one BatchGetItem (thread, step, feedback). Write: one TransactWriteItems, or one
        PutItem when the value does not change (a comment edit).
        """
        step_id = str(row["forId"])
        thread_id = row.get("threadId")
        if thread_id is None:
            found = await self._lookup("step", step_id)
            thread_id = self._thread_of_key(found[0]) if found else None
            if thread_id is None:
                raise InvalidInputError(
                    f"feedback for step {step_id} has no threadId and the step is unknown")
        async with self._child_write(thread_id), self._thread_lock(thread_id):
            return await self._upsert_feedback(row, step_id, thread_id)

    async def _upsert_feedback(self, row: dict[str, Any], step_id: str, thread_id: str) -> str:
        thread_key = self._key_of("thread", id=thread_id)
        step_key = self._key_of("step", threadId=thread_id, id=step_id)
        feedback_key = self._key_of("feedback", threadId=thread_id, forId=step_id)
        checked_step = row.get("threadId") is None
        for attempt in range(CONFLICT_RETRY.attempts):
            await CONFLICT_RETRY.pause(attempt)
            items = await self._batch_get([thread_key, step_key, feedback_key])
            by_sk = {i[SORT_KEY]["S"]: i for i in items}
            thread = by_sk.get(thread_key[SORT_KEY]["S"])
            if thread is None:
                raise NotFoundError(f"thread {thread_id} does not exist", detail=thread_id)
            if step_key[SORT_KEY]["S"] not in by_sk and not checked_step:
                elsewhere = await self._lookup("step", step_id)
                if elsewhere is not None and elsewhere[0] != thread_key[PARTITION_KEY]["S"]:
                    raise ConflictError(
                        f"step {step_id} does not belong to thread {thread_id}", detail=step_id)
                checked_step = True
            old = by_sk.get(feedback_key[SORT_KEY]["S"])
            old_row = self.codecs["feedback"].row(old) if old else None
            feedback_id = str(old_row["id"]) if old_row and old_row.get("id") else str(row["id"])
            new = {**row, "id": feedback_id, "threadId": thread_id}
            item = {**feedback_key}
            codec = self.codecs["feedback"]
            for name, value in new.items():
                if value is not None:
                    item[name] = codec.encode(name, value)
            for attribute, value in self._index_attributes("feedback", new).items():
                item[attribute] = _s(value)
            put: dict[str, Any] = {"TableName": self.table, "Item": item}
            if old_row is None:
                put["ConditionExpression"] = "attribute_not_exists(#p)"
                put["ExpressionAttributeNames"] = {"#p": PARTITION_KEY}
            else:
                assert old is not None
                put["ConditionExpression"] = "#v = :v AND #i = :i"
                put["ExpressionAttributeNames"] = {"#v": "value", "#i": "id"}
                put["ExpressionAttributeValues"] = {":v": old["value"], ":i": old["id"]}
            old_value = int(old_row["value"]) if old_row is not None else None
            counters = self._counter_update(
                thread, add=int(new["value"]) if old_value != int(new["value"]) else None,
                remove=old_value if old_value != int(new["value"]) else None)
            try:
                if counters is None:
                    await self._call("put_item", **{k: v for k, v in put.items()
                                                    if k != "TableName"})
                else:
                    await self._transact([
                        {"Put": put},
                        {"Update": {"TableName": self.table, "Key": thread_key,
                                    **counters.params()}},
                    ])
            except _ConditionFailed:
                continue  # another writer changed the feedback or the counters: read again
            return feedback_id
        raise ConflictError(f"feedback for step {step_id} kept conflicting", detail=step_id)

    def _counter_update(self, thread: Mapping[str, Any], *, add: int | None,
                        remove: int | None) -> _Update | None:
        """The thread update counting one more feedback of value ``add`` and one fewer of value
        ``remove`` (None: no change), or None when nothing changes.

        Counters change by ``ADD`` so concurrent writers commute. A marker (the sparse index
        key ``UserFeedback{v}PK``) is set with every increment when the owner is known; it goes
        when a counter drops to 0, conditioned on the counter being 1 (or absent, for tables
        whose counts predate it), and a decrement that keeps it is conditioned on the counter
        staying above 1, so the marker is exact at every commit. While the thread has no owner
        there is no marker to write: the condition that it still has none sends us back to read
        when ``update_thread`` sets one meanwhile (it marks the thread from the counters it
        reads). Every update is also conditioned on the thread existing.
        """
        if add is None and remove is None:
            return None
        user_id = self.codecs["thread"].row(thread).get("userId")
        u = _Update()
        u.condition(f"attribute_exists({u.n(PARTITION_KEY)})")
        if not user_id:
            u.condition(f"attribute_not_exists({u.n('userId')})")
        for value, change in ((add, 1), (remove, -1)):
            if value is None:
                continue
            counter = FEEDBACK_COUNTERS[value]
            name = u.n(counter)
            spec = self.indexes.get(FEEDBACK_INDEXES[value])
            declared = None if spec is None else next(
                d for d in self.models.dynamo["thread"].indexes if d.index == spec.name)
            marker = render_key(declared.pk, {"userId": user_id}) if declared and user_id \
                else None
            if change > 0:
                u.add(counter, {"N": "1"})
                if spec is not None and marker:
                    u.set(spec.pk_attribute, _s(marker))
                continue
            current = int(from_attribute_value(thread[counter])) if counter in thread else 0
            one = u.v({"N": "1"})
            if current > 1:
                u.add(counter, {"N": "-1"})
                u.condition(f"{name} > {one}")
            else:  # the last one of this value: the counter goes to 0 and the marker with it
                u.set(counter, {"N": "0"})
                u.condition(f"attribute_not_exists({name}) OR {name} <= {one}")
                if spec is not None:
                    u.remove(spec.pk_attribute)
        return u

    async def _delete_feedback_of(self, thread_id: str, step_id: str,
                                  feedback_id: str | None = None) -> bool:
        """Delete the feedback of a step (and its count on the thread); False if there is none
        (or, with ``feedback_id``, if it has another id). Serialized and retried like
        :meth:`upsert_feedback`."""
        async with self._thread_lock(thread_id):
            return await self._delete_feedback_locked(thread_id, step_id, feedback_id)

    async def _delete_feedback_locked(self, thread_id: str, step_id: str,
                                      feedback_id: str | None) -> bool:
        thread_key = self._key_of("thread", id=thread_id)
        feedback_key = self._key_of("feedback", threadId=thread_id, forId=step_id)
        for attempt in range(CONFLICT_RETRY.attempts):
            await CONFLICT_RETRY.pause(attempt)
            items = await self._batch_get([thread_key, feedback_key])
            by_sk = {i[SORT_KEY]["S"]: i for i in items}
            old = by_sk.get(feedback_key[SORT_KEY]["S"])
            if old is None:
                return False
            old_row = self.codecs["feedback"].row(old)
            if feedback_id is not None and str(old_row.get("id")) != feedback_id:
                return False
            delete: dict[str, Any] = {
                "TableName": self.table, "Key": feedback_key,
                "ConditionExpression": "#v = :v",
                "ExpressionAttributeNames": {"#v": "value"},
                "ExpressionAttributeValues": {":v": old["value"]},
            }
            if "id" in old:  # the one we read, not one written since
                delete["ConditionExpression"] += " AND #i = :i"
                delete["ExpressionAttributeNames"]["#i"] = "id"
                delete["ExpressionAttributeValues"][":i"] = old["id"]
            thread = by_sk.get(thread_key[SORT_KEY]["S"])
            counters = None if thread is None else self._counter_update(
                thread, add=None, remove=int(old_row["value"]))
            try:
                if counters is None:
                    await self._call("delete_item", **{k: v for k, v in delete.items()
                                                       if k != "TableName"})
                else:
                    await self._transact([
                        {"Delete": delete},
                        {"Update": {"TableName": self.table, "Key": thread_key,
                                    **counters.params()}},
                    ])
            except _ConditionFailed:
                continue
            return True
        raise ConflictError(f"feedback of step {step_id} kept conflicting", detail=step_id)

    async def delete_feedback(self, feedback_id: str) -> bool:
        found = await self._lookup("feedback", feedback_id)
        if found is None:
            return False
        thread_id = self._thread_of_key(found[0])
        parsed = parse_key(self.models.dynamo["feedback"].sk, found[1])
        if thread_id is None or parsed is None:
            return False
        return await self._delete_feedback_of(thread_id, parsed["forId"], feedback_id)

    async def close(self) -> None:
        client = getattr(self.connection, "_client", None)
        if client is not None:
            await asyncio.get_running_loop().run_in_executor(self._executor, client.close)
        self._executor.shutdown(wait=False)


class _TransactionRetry(Exception):
    """Send the request again (internal): a transaction cancelled by a conflict or throttling, a
    write refused because its item is in a transaction, or an answer cut short."""

    def __init__(self, reasons: list[str]) -> None:
        super().__init__(", ".join(reasons))
        self.reasons = reasons


# -------------------------------------------------------------------- helpers

#: The reason given when an answer was cut short (see :func:`_complete`).
CUT_SHORT = "AnswerCutShort"


def _complete(response: Mapping[str, Any]) -> bool:
    """Whether an answer is known to be whole.

    An answer whose connection closed in the middle of its headers, before ``Content-Length``,
    is taken by urllib3 as a complete answer with an empty body (the body of an HTTP/1.1 answer
    without a length ends when the connection does), and botocore then reads ``{}``: a Query
    "without items", a write "acknowledged", an error without its code. DynamoDB (and moto) send
    ``Content-Length`` and ``x-amz-crc32`` with every answer, so one that has neither, and is not
    chunked, was cut short. Every request the layer sends may be sent again (the writes are
    idempotent or conditioned), so it is, under :data:`CONFLICT_RETRY`.
    """
    headers = response.get("ResponseMetadata", {}).get("HTTPHeaders") or {}
    return ("content-length" in headers or "x-amz-crc32" in headers
            or "chunked" in str(headers.get("transfer-encoding", "")).lower())


_STEP_KEYS_ONLY = {PARTITION_KEY, SORT_KEY, LEGACY_FEEDBACK, "ByIdPK", "ByIdSK"}


def _is_phantom(item: Mapping[str, Any]) -> bool:
    """A step item with nothing but keys and feedback: what Chainlit's ``upsert_feedback`` leaves
    for a step that was never created. Not a step."""
    return set(item) <= _STEP_KEYS_ONLY


def _feedback_dict(row: Mapping[str, Any]) -> dict[str, Any]:
    return {"id": row.get("id"), "forId": row.get("forId"), "value": row.get("value"),
            "comment": row.get("comment")}


def _legacy_feedback(item: Mapping[str, Any]) -> dict[str, Any] | None:
    """Feedback Chainlit's layer embedded in a step item, with a UUID id derived from its own
    (``THREAD#{t}::STEP#{s}``, not a UUID, so Chainlit's UI could not send it back to us)."""
    raw = item.get(LEGACY_FEEDBACK)
    if not raw or "M" not in raw:
        return None
    data = from_attribute_value(raw)
    value = data.get("value")
    if value not in (0, 1):
        return None
    legacy_id = str(data.get("id") or "")
    try:
        feedback_id = normalize_id(legacy_id)
    except InvalidInputError:
        feedback_id = str(uuid.uuid5(LEGACY_FEEDBACK_NAMESPACE, legacy_id or str(item["SK"])))
    for_id = data.get("forId")
    if not for_id:
        parsed = parse_key("STEP#{id}", item[SORT_KEY]["S"])
        for_id = parsed["id"] if parsed else None
    return {"id": feedback_id, "forId": for_id, "value": int(value),
            "comment": data.get("comment")}


def _object_keys(items: Iterable[Mapping[str, Any]]) -> list[str]:
    keys = []
    for item in items:
        for attribute in ("objectKey", *TEXT_REFS.values()):
            value = item.get(attribute)
            if value and "S" in value and value["S"]:
                keys.append(value["S"])
    return keys


def can_read_back(storage: BaseStorageClient) -> bool:
    """Whether step texts may be offloaded to ``storage``: it must be able to give them back.

    Chainlit's ``BaseStorageClient`` has no read method (its S3, Azure, GCS and local clients
    can only upload, delete and sign URLs), so a text offloaded there could never be read again.
    The protocol is :class:`~chainlit_orm.storage.ReadableStorage` (``async read_file(object_key)
    -> bytes``, found by name, no base class), which
    :class:`~chainlit_orm.storage.FsspecStorage` implements.
    """
    return isinstance(storage, ReadableStorage)


async def _remove_objects(storage: BaseStorageClient, object_keys: list[str],
                          cause: BaseException) -> None:
    """Delete objects uploaded for a write that then failed. ``cause`` is re-raised by the
    caller; a deletion that fails too is attached to it as a note, never hidden."""
    results = await asyncio.gather(*(storage.delete_file(k) for k in object_keys),
                                   return_exceptions=True)
    for object_key, result in zip(object_keys, results, strict=True):
        if isinstance(result, BaseException):
            cause.add_note(f"chainlit-orm: could not delete {object_key!r} after the failed "
                           f"write: {type(result).__name__}: {result}")


class DynamoDataLayer(ChainlitLayer):
    """The Chainlit data layer on one DynamoDB table.

    Create or upgrade the table first with ``chainlit-orm migrate 'dynamodb://TABLE?region=...'``
    (it also adds the indexes this layer needs to a table made from Chainlit's docs CloudFormation
    and backfills them); the layer checks the table on first use and refuses, naming that command,
    a table that lacks them.

    Args:
        table_name: the table.
        storage: a Chainlit ``BaseStorageClient`` for element bytes and offloaded step texts.
        region: AWS region (default: the standard chain, ``AWS_REGION``/``AWS_DEFAULT_REGION`` or
            the profile's).
        endpoint_url: a DynamoDB-compatible endpoint (DynamoDB Local, moto, LocalStack).
        models: the model set (its ``__dynamo__`` declarations give keys and indexes).
        max_pool_connections: botocore connection-pool size, which is also the number of worker
            threads, so at most that many requests run at once.
        retry_mode, max_attempts: botocore's retries of throttling, transient errors and
            timeouts: ``"standard"`` (default) or ``"adaptive"`` (client-side rate limiting
            too), and the number of attempts in all (default 8, so 7 retries).
        connect_timeout, read_timeout: seconds botocore waits for a connection (default 5) and
            for each read of an answer (default 30). One API call that gets no answer (a
            black-holed endpoint) therefore ends, with
            :class:`~chainlit_orm.errors.TimeoutExceededError`, after at most ``max_attempts x
            (connect_timeout + read_timeout)`` plus botocore's backoff between attempts (random,
            at most 1, 2, 4, ... 20 s); ``timeout`` bounds the whole data-layer call. A refused
            or dropped connection is retried the same way and ends with
            :class:`~chainlit_orm.errors.BackendUnavailableError`.
        offload_bytes: step texts larger than this go to ``storage`` if it can read them back
            (an ``async read_file(object_key) -> bytes`` method, as
            :class:`~chainlit_orm.storage.FsspecStorage` has). Chainlit's own storage clients
            cannot, so with them texts stay in the item and a step whose item would exceed
            DynamoDB's 400 KB is refused (:class:`~chainlit_orm.errors.PayloadTooLargeError`).
        timeout: seconds each data-layer call may take, botocore's retries included (see
            :class:`~chainlit_orm.layers.base.ChainlitLayer`).
        on_delete, soft_delete: the on-delete hook and the opt-in trash; see
            :class:`~chainlit_orm.layers.base.ChainlitLayer`.
        retention: DynamoDB's native TTL: a thread item carries ``expiresAt`` (its activity
            plus ``retention``), moved by the write that moves its activity (no extra write);
            reads treat a thread past it as gone at once, DynamoDB removes the item within
            days, and ``chainlit-orm purge`` removes what it leaves (its other items, its
            files: TTL removes no file and calls no hook). None (default): nothing expires.

    Credentials come from the standard AWS chain (environment, shared profile, instance/task
    role). Threads are listed by activity only (``thread_order="created"`` is refused).
    """

    def __init__(
        self,
        table_name: str,
        storage: BaseStorageClient | None = None,
        *,
        region: str | None = None,
        endpoint_url: str | None = None,
        models: ModelSet = DEFAULT_MODELS,
        max_pool_connections: int = 10,
        retry_mode: str = "standard",
        max_attempts: int = 8,
        offload_bytes: int = DEFAULT_OFFLOAD_BYTES,
        connect_timeout: float = 5.0,
        read_timeout: float = 30.0,
        thread_order: ThreadOrder = "activity",
        max_text_bytes: int | None = None,
        timeout: float = DEFAULT_TIMEOUT,
        on_delete: OnDelete | None = None,
        soft_delete: timedelta | None = None,
        retention: timedelta | None = None,
    ) -> None:
        if thread_order != "activity":
            raise ConfigurationError(
                "DynamoDataLayer lists threads by activity (its UserActivity index); "
                f"thread_order={thread_order!r} is not supported")
        backend = DynamoBackend(
            table_name, models=models, region=region, endpoint_url=endpoint_url,
            max_pool_connections=max_pool_connections, retry_mode=retry_mode,
            max_attempts=max_attempts, connect_timeout=connect_timeout,
            read_timeout=read_timeout, offload_bytes=offload_bytes,
            storage=lambda: self.storage, retention=retention,
        )
        kwargs: dict[str, Any] = {}
        if max_text_bytes is not None:
            kwargs["max_text_bytes"] = max_text_bytes
        super().__init__(backend, storage=storage, thread_order=thread_order, timeout=timeout,
                         on_delete=on_delete, soft_delete=soft_delete, **kwargs)
        self.dynamo: DynamoBackend = backend


# ------------------------------------------------------------------- backfill


async def backfill(request: BackfillRequest) -> list[str]:
    """Bring items written before the indexes existed (e.g. by Chainlit's layer) to this layout.

    Called by ``chainlit-orm migrate`` after it adds GSIs. Scans the table in pages; for each user
    it sets the ``ById`` keys; for each thread partition it derives ``activityAt`` (the latest user
    message, else the thread's ``createdAt``), the list and lookup index keys, converts feedback
    embedded in step items into feedback items (deleting the feedback-only items Chainlit left for
    steps that were never created), and recounts feedback per value for the sparse indexes. Items
    are rewritten with BatchWriteItem, 25 at a time. Every rewrite is idempotent, and the scan
    position is saved in the schema-version item after each page, so an interrupted run resumes
    where it stopped. Run it while no app writes to the table (the layer refuses to start until
    it is done).
    """
    url = request.url
    backend = DynamoBackend(url.table, models=request.models, region=url.region,
                            endpoint_url=url.endpoint_url, check_schema=False)
    try:
        return await _Backfill(backend).run()
    finally:
        await backend.close()


class _Backfill:
    def __init__(self, backend: DynamoBackend) -> None:
        self.b = backend
        self.version_key = {k: _s(v) for k, v in SCHEMA_VERSION_KEY.items()}
        self.scanned = self.rewritten = self.deleted = self.threads = self.users = 0
        self.done: set[str] = set()

    async def run(self) -> list[str]:
        b = self.b
        version = (await b._call("get_item", Key=self.version_key, ConsistentRead=True)
                   ).get("Item") or {}
        kwargs: dict[str, Any] = {"ProjectionExpression": "#p, #s",
                                  "ExpressionAttributeNames": {"#p": PARTITION_KEY,
                                                               "#s": SORT_KEY}}
        resumed = "backfillCursor" in version
        if resumed:
            kwargs["ExclusiveStartKey"] = json.loads(version["backfillCursor"]["S"])
        while True:
            page = await b._call("scan", **kwargs)
            self.scanned += len(page.get("Items", []))
            for item in page.get("Items", []):
                pk, sk = item[PARTITION_KEY]["S"], item[SORT_KEY]["S"]
                if parse_key(b.models.dynamo["user"].pk, pk) and sk == b.models.dynamo["user"].sk:
                    await self.user(pk, sk)
                elif b._thread_of_key(pk) is not None and pk not in self.done:
                    self.done.add(pk)
                    await self.partition(pk)
            last = page.get("LastEvaluatedKey")
            if not last:
                break
            kwargs["ExclusiveStartKey"] = last
            await b._call("update_item", Key=self.version_key,
                          UpdateExpression="SET backfillCursor = :c",
                          ExpressionAttributeValues={":c": _s(json.dumps(last))})
            logger.info("backfill %s: %d items scanned, %d rewritten", b.table, self.scanned,
                        self.rewritten)
        return [
            f"backfill{' (resumed)' if resumed else ''}: scanned {self.scanned} items; "
            f"{self.users} users and {self.threads} threads brought to the current layout, "
            f"{self.rewritten} items rewritten, {self.deleted} feedback-only items converted"
        ]

    async def user(self, pk: str, sk: str) -> None:
        b = self.b
        item = (await b._call("get_item", Key=_key(pk, sk), ConsistentRead=True)).get("Item")
        if item is None:
            return
        row = b._user_row(item)
        wanted = b._index_attributes("user", row)
        missing = {a: v for a, v in wanted.items() if item.get(a) != _s(v)}
        if not missing and "id" in item:
            return
        u = _Update()
        u.set("id", b.codecs["user"].encode("id", row["id"]), if_absent=True)
        for attribute, value in missing.items():
            u.set(attribute, _s(value))
        await b._call("update_item", Key=_key(pk, sk), **u.params())
        self.users += 1
        self.rewritten += 1

    async def partition(self, pk: str) -> None:
        b = self.b
        items = await b._query_all(
            KeyConditionExpression="#p = :p", ExpressionAttributeNames={"#p": PARTITION_KEY},
            ExpressionAttributeValues={":p": _s(pk)}, ConsistentRead=True)
        thread_id = b._thread_of_key(pk) or ""
        puts: list[dict[str, Any]] = []
        deletes: list[dict[str, Any]] = []
        feedback_items: dict[str, dict[str, Any]] = {}
        thread_item: dict[str, Any] | None = None
        latest_user_message = ""
        for item in items:
            kind = b._kind(item[SORT_KEY]["S"])
            if kind == "feedback":
                row = b.codecs["feedback"].row(item)
                feedback_items[str(row.get("forId"))] = item
        for item in items:
            kind = b._kind(item[SORT_KEY]["S"])
            new = dict(item)
            if kind == "thread":
                thread_item = item
                continue
            if kind == "step":
                legacy = _legacy_feedback(item)
                if legacy and legacy["forId"] and str(legacy["forId"]) not in feedback_items:
                    fb_row = {**legacy, "threadId": thread_id}
                    fb_item = {**b._key_of("feedback", threadId=thread_id,
                                           forId=legacy["forId"])}
                    for name, value in fb_row.items():
                        if value is not None:
                            fb_item[name] = b.codecs["feedback"].encode(name, value)
                    for attribute, value in b._index_attributes("feedback", fb_row).items():
                        fb_item[attribute] = _s(value)
                    feedback_items[str(legacy["forId"])] = fb_item
                    puts.append(fb_item)
                new.pop(LEGACY_FEEDBACK, None)
                if _is_phantom(item):
                    deletes.append({PARTITION_KEY: item[PARTITION_KEY], SORT_KEY: item[SORT_KEY]})
                    self.deleted += 1
                    continue
                row = b.codecs["step"].row(item)
                if row.get("type") == USER_MESSAGE and row.get("createdAt"):
                    latest_user_message = max(latest_user_message, str(row["createdAt"]))
                metadata = row.get("metadata")
                if isinstance(metadata, dict) and metadata.get("favorite") is True:
                    new["favorite"] = {"BOOL": True}
                parsed = parse_key(b.models.dynamo["step"].sk, item[SORT_KEY]["S"]) or {}
                values = {**row, "id": row.get("id") or parsed.get("id")}
                for attribute, value in b._index_attributes("step", values).items():
                    new[attribute] = _s(value)
            elif kind == "element":
                row = b.codecs["element"].row(item)
                for attribute, value in b._index_attributes("element", row).items():
                    new[attribute] = _s(value)
            elif kind == "feedback":
                row = b.codecs["feedback"].row(item)
                for attribute, value in b._index_attributes("feedback", row).items():
                    new[attribute] = _s(value)
            if new != item:
                puts.append(new)
        if thread_item is not None:
            new = dict(thread_item)
            row = b.codecs["thread"].row(thread_item)
            activity = row.get("activityAt") or latest_user_message or row.get("createdAt")
            if activity:
                activity = format_timestamp(parse_timestamp(str(activity)))
                new["activityAt"] = _s(activity)
            new.setdefault("id", _s(thread_id))
            values = {**row, "id": thread_id, "activityAt": activity}
            for attribute, value in b._index_attributes("thread", values).items():
                if attribute not in thread_item or attribute.startswith(LIST_INDEX):
                    new[attribute] = _s(value)
            counts = {0: 0, 1: 0}
            for fb in feedback_items.values():
                fb_value = from_attribute_value(fb.get("value", {"NULL": True}))
                if fb_value in counts:
                    counts[fb_value] += 1
            for value, counter in FEEDBACK_COUNTERS.items():
                if counts[value] or counter in new:
                    new[counter] = {"N": str(counts[value])}
                spec = b.indexes.get(FEEDBACK_INDEXES[value])
                if spec is None:
                    continue
                declared = next(d for d in b.models.dynamo["thread"].indexes
                                if d.index == spec.name)
                marker = render_key(declared.pk, row) if counts[value] else None
                if marker:
                    new[spec.pk_attribute] = _s(marker)
                else:
                    new.pop(spec.pk_attribute, None)
            if new != thread_item:
                puts.append(new)
            self.threads += 1
        requests = [{"PutRequest": {"Item": p}} for p in puts]
        requests += [{"DeleteRequest": {"Key": d}} for d in deletes]
        await b._batch_write(requests)
        self.rewritten += len(puts)
