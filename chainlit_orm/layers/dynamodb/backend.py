"""``DynamoBackend``: the :class:`~chainlit_orm.layers.base.Backend` on one DynamoDB table.

It builds items with :mod:`.items`, sends them through :class:`.table.TableClient`, and reads
legacy items with :mod:`.legacy`; see the package docstring for the design.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import uuid
import weakref
from collections import OrderedDict
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from typing import Any

from chainlit.data.storage_clients.base import BaseStorageClient

from chainlit_orm.errors import (
    BackendUnavailableError,
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
)
from chainlit_orm.layers.base import ThreadOrder
from chainlit_orm.layers.dynamodb.config import DynamoConfig
from chainlit_orm.layers.dynamodb.items import (
    FEEDBACK_COUNTERS,
    ITEM_LIMIT,
    TEXT_REFS,
    UNREADABLE_KEY,
    UNREADABLE_TEXT,
    ItemLayout,
    UpdateExpression,
    item_size,
    stored_object_keys,
    string_value,
    table_key,
    value_size,
)
from chainlit_orm.layers.dynamodb.legacy import LEGACY_FEEDBACK
from chainlit_orm.layers.dynamodb.lifecycle import (
    CLAIM_ATTRIBUTE,
    DynamoLifecycle,
)
from chainlit_orm.layers.dynamodb.table import (
    CONFLICT_RETRY,
    ConditionFailed,
    TableClient,
)
from chainlit_orm.models.entities import FEEDBACK_ROLES, LOOKUP_ROLE
from chainlit_orm.models.rules import (
    element_order,
    feedback_dict,
    step_order,
    step_text_object_key,
)
from chainlit_orm.models.search import matches
from chainlit_orm.models.types import normalize_id
from chainlit_orm.schema_gen.dynamo import (
    OVERFLOW_COLUMN,
    PARTITION_KEY,
    SORT_KEY,
    TTL_ATTRIBUTE,
    GsiSpec,
    dynamo_indexes,
    parse_key,
    placeholders,
    render_key,
)
from chainlit_orm.storage.protocols import ReadableStorage

try:

    from chainlit_orm.schema_gen.pynamo import (
        from_attribute_value,
        pynamodb_models,
        to_attribute_value,
    )
except ImportError as exc:  # pragma: no cover - exercised only without the extra
    raise MissingDependencyError("pynamodb", "dynamodb") from exc

logger = logging.getLogger(__name__)

_UUID = re.compile(
    r"^[0-9a-fA-F]{8}-?[0-9a-fA-F]{4}-?[0-9a-fA-F]{4}-?[0-9a-fA-F]{4}-?[0-9a-fA-F]{12}$"
)
_MAX_USER_ID = 512

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
    :class:`~chainlit_orm.layers.dynamodb.lifecycle.DynamoLifecycle`; a trashed thread
    (``deletedAt``) reads as absent here."""

    def __init__(
        self,
        config: DynamoConfig,
        *,
        storage: Callable[[], BaseStorageClient | None] = lambda: None,
        check_schema: bool = True,
    ) -> None:
        models, table_name = config.models, config.table_name
        self.config = config
        self.models = models
        #: what a tracing span says of this backend (:mod:`chainlit_orm.tracing`)
        self.tracing_system, self.tracing_backend = "aws.dynamodb", "dynamodb"
        self.table = table_name
        self.retention = config.retention  # the TTL (None: nothing expires)
        self.offload_bytes = config.offload_bytes
        self.storage = storage
        self.check_schema = check_schema
        self.table_client = TableClient(config)
        self.items = pynamodb_models(
            models, table_name, region=self.table_client.region, host=config.endpoint_url,
            max_pool_connections=config.max_pool_connections,
            connect_timeout_seconds=config.connect_timeout,
            read_timeout_seconds=config.read_timeout,
        )
        for item_class in self.items.values():
            # every item class sends through the table client's one connection and pool
            item_class._get_connection().connection = self.table_client.connection
        self.indexes: dict[str, GsiSpec] = {spec.name: spec for spec in dynamo_indexes(models)}
        self.layout = ItemLayout(models, self.items, self.indexes,
                                 reserved=(LEGACY_FEEDBACK, CLAIM_ATTRIBUTE, TTL_ATTRIBUTE))
        self.codecs = self.layout.codecs
        self.keys = self.layout.keys
        self._ready: asyncio.Future[None] | None = None
        self._identifiers: OrderedDict[str, str] = OrderedDict()
        self._activity: OrderedDict[str, str] = OrderedDict()
        self._locks: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, list[asyncio.Lock]] = (
            weakref.WeakKeyDictionary())
        self._gates: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, dict[str, _Gate]] = (
            weakref.WeakKeyDictionary())
        #: threads this process deleted and nothing has written since (bounded, oldest dropped)
        self._deleted: OrderedDict[str, None] = OrderedDict()
        #: threads ``erase_user`` removed in this process (bounded, oldest dropped): a late
        #: step or element of one is refused (NotFoundError), not given a stub thread, since
        #: its content is the erased user's (its file is then removed by the orphan rule)
        self._erased: OrderedDict[str, None] = OrderedDict()

    # ---------------------------------------------------------------- plumbing

    @property
    def client(self) -> Any:
        """The botocore client every request goes through (PynamoDB's connection's)."""
        return self.table_client.connection.client

    @property
    def connection(self) -> Any:
        """The PynamoDB connection shared by every item class."""
        return self.table_client.connection

    @property
    def url(self) -> str:
        """The ``dynamodb://`` URL of this table, as ``chainlit-orm migrate`` takes it."""
        return self.table_client.url

    @property
    def region(self) -> str:
        return self.table_client.region

    @property
    def endpoint_url(self) -> str | None:
        return self.table_client.endpoint_url

    @property
    def profile(self) -> str | None:
        return self.table_client.profile

    @property
    def max_pool_connections(self) -> int:
        return self.table_client.max_pool_connections

    def migrate_command(self) -> str:
        """The exact ``chainlit-orm migrate`` command for this table and model set."""
        return self.table_client.command()

    async def check(self) -> list[str]:
        """The table part of :meth:`ChainlitLayer.check`: the first-use check, run now (even
        when this backend skips it, ``check_schema=False``): the table reachable, keyed PK/SK,
        every index the models need present, ACTIVE and projecting what the layer reads, no
        unfinished backfill.

        Raises:
            SchemaError: the table or an index is missing or unusable (the message names the
                command that fixes it).
            BackendUnavailableError: DynamoDB cannot be reached or refuses the credentials.
            ConfigurationError: no region or credentials.
        """
        await self.table_client.check(self.indexes)
        return []

    # The table operations below are public: the transfer (chainlit_orm.transfer._layer) reads
    # and writes whole items through them, so its requests get the layer's first-use check,
    # retries and typed errors. Each checks the table once (ensure_ready), then sends through
    # the table client.

    async def call(self, operation: str, **kwargs: Any) -> dict[str, Any]:
        """One API call on the table (``"query"``, ``"scan"``, ``"get_item"``...), with the
        table's name added, in the worker pool; typed errors; failed conditions:
        :class:`~chainlit_orm.layers.dynamodb.table.ConditionFailed`.

        A plain write refused because its item is part of an ongoing transaction
        (``TransactionConflictException``, which botocore does not retry) and an answer cut
        short (:func:`answer_complete`) are sent again under :data:`CONFLICT_RETRY`: every
        request the layer sends is a read, an idempotent write or a conditioned one, so sending
        it again is safe, and giving up would lose it (Chainlit logs and drops a failed
        ``update_thread``: the thread would stay without its owner). Transactions are retried
        by :meth:`transact`.
        """
        if self._ready is None or not self._ready.done():
            await self.ensure_ready()
        return await self.table_client.call(operation, **kwargs)

    async def ensure_ready(self) -> None:
        """Check the table once, on first use: indexes present and ACTIVE, no pending backfill."""
        if self._ready is None:
            self._ready = asyncio.get_running_loop().create_future()
            try:
                if self.check_schema:
                    await self.table_client.check(self.indexes)
            except BaseException as exc:
                self._ready.set_exception(exc)
                self._ready.exception()
                self._ready = None
                raise
            self._ready.set_result(None)
        elif not self._ready.done():
            await asyncio.shield(self._ready)

    async def lookup(self, entity: str, item_id: str) -> tuple[str, str] | None:
        """The table key of the item of ``entity`` with this id, through the lookup index (the
        model set's index of role ``lookup``, ``ById`` by default)."""
        spec = self.layout.lookup_index
        value = render_key(self.layout.templates(LOOKUP_ROLE, entity).pk, {"id": item_id})
        result = await self.call(
            "query", IndexName=spec.name,
            KeyConditionExpression="#p = :p",
            ExpressionAttributeNames={"#p": spec.pk_attribute},
            ExpressionAttributeValues={":p": string_value(value or "")},
        )
        for item in result.get("Items", []):
            return item[PARTITION_KEY]["S"], item[SORT_KEY]["S"]
        return None

    async def transact(self, actions: list[dict[str, Any]]) -> None:
        """One TransactWriteItems of ``actions``, retried on a transaction conflict
        (:meth:`TableClient.transact`)."""
        if self._ready is None or not self._ready.done():
            await self.ensure_ready()
        await self.table_client.transact(actions)

    async def batch_write(self, requests: list[dict[str, Any]], *,
                          last_after_rest: bool = False) -> None:
        """Every request written, 25 per BatchWriteItem, unprocessed ones sent again;
        ``last_after_rest``: the last chunk only once the others are written (``delete_thread``
        puts its thread item there, so an interrupted delete leaves it to be found again)."""
        if self._ready is None or not self._ready.done():
            await self.ensure_ready()
        await self.table_client.batch_write(requests, last_after_rest=last_after_rest)

    async def batch_get(self, keys: list[dict[str, Any]], **options: Any
                        ) -> list[dict[str, Any]]:
        """The items of these keys that exist, in no particular order (BatchGetItem, read
        consistently, unprocessed keys asked again); ``options`` go to every request
        (``ProjectionExpression``...)."""
        if self._ready is None or not self._ready.done():
            await self.ensure_ready()
        return await self.table_client.batch_get(keys, **options)

    async def query_all(self, **kwargs: Any) -> list[dict[str, Any]]:
        """Every item a Query returns, all its pages read."""
        if self._ready is None or not self._ready.done():
            await self.ensure_ready()
        return await self.table_client.query_all(**kwargs)

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
        """The user item as a row (:meth:`ItemLayout.user_row`), its id and identifier
        remembered for ``update_thread``'s owner writes."""
        row = self.layout.user_row(item)
        self._remember(row)
        return row

    async def get_user(self, identifier: str) -> dict[str, Any] | None:
        item = (await self.call("get_item", Key=self.layout.key_of("user", identifier=identifier),
                                ConsistentRead=True)).get("Item")
        return None if item is None else self._user_row(item)

    async def upsert_user(self, row: dict[str, Any]) -> dict[str, Any]:
        codec = self.codecs["user"]
        u = UpdateExpression()
        u.set("id", codec.encode("id", row["id"]), if_absent=True)
        u.set("createdAt", codec.encode("createdAt", row["createdAt"]), if_absent=True)
        u.set("identifier", codec.encode("identifier", row["identifier"]))
        u.set("metadata", codec.encode("metadata", row["metadata"]))
        if row.get("display_name") is not None:
            u.set("display_name", codec.encode("display_name", row["display_name"]))
        index = self.layout.index_attributes("user", row)
        for attribute, value in index.items():
            u.set(attribute, string_value(value),
                  if_absent="{id}" in self.layout.index_templates("user")[attribute])
        key = self.layout.key_of("user", identifier=row["identifier"])
        result = await self.call("update_item", Key=key, ReturnValues="ALL_NEW", **u.params())
        stored = self._user_row(result["Attributes"])
        fixed = self.layout.index_attributes("user", stored)
        stale = {a: v for a, v in fixed.items() if result["Attributes"].get(a) != string_value(v)}
        if stale:  # an id written before the index attributes existed: point them at it
            fix = UpdateExpression()
            for attribute, value in stale.items():
                fix.set(attribute, string_value(value))
            await self.call("update_item", Key=key, **fix.params())
        return stored

    async def user_exists(self, user_id: str) -> bool:
        return await self._identifier_of(user_id) is not None

    async def _identifier_of(self, user_id: str) -> str | None:
        if user_id in self._identifiers:
            return self._identifiers[user_id]
        found = await self.lookup("user", user_id)
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
            if identifier is None:
                raise NotFoundError(f"user_id {fields['userId']!r}: no such user",
                                    detail="user_id")
        key = self.layout.key_of("thread", id=thread_id)
        templates = self.layout.index_templates("thread")
        merge = bool(meta_set or meta_delete)

        def build(mode: str, creating: bool) -> UpdateExpression:
            u = UpdateExpression()
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
                            u.set(attribute, string_value(rendered), if_absent=True)
                    continue
                rendered = render_key(template, known)
                if rendered is None or not all(n in known for n in names):
                    continue
                u.set(attribute, string_value(rendered), if_absent="userId" in names)
            if not create or not creating:
                u.condition(f"attribute_exists({u.n(PARTITION_KEY)})")
            if mode == "paths":
                for k, value in (meta_set or {}).items():
                    u.set_path("metadata", k, to_attribute_value(value))
                for k in meta_delete or []:
                    u.remove_path("metadata", k)
                u.condition(f"attribute_type({u.n('metadata')}, {u.v(string_value('M'))})")
            elif mode == "whole":
                u.set("metadata", to_attribute_value(meta_set or {}))
                m = u.n("metadata")
                u.condition(f"attribute_not_exists({m}) OR NOT attribute_type({m}, "
                            f"{u.v(string_value('M'))})")
            elif meta_set is not None:  # metadata={}: nothing to merge, but a map exists
                u.set("metadata", {"M": {}}, if_absent=True)
            return u

        returns = "ALL_NEW" if "userId" in fields else "NONE"
        # The writes of this process to one thread item run one at a time (see _thread_lock):
        # Chainlit's first message sends this update, the message's transaction (which makes a
        # stub thread) and the session's metadata at once, and on DynamoDB a write that meets
        # an item in a transaction is refused (TransactionConflictException).
        try:
            await self._update_thread_item(thread_id, key, build, create, merge, identifier,
                                           fields, returns)
        except NotFoundError as exc:
            if exc.detail == thread_id:  # erased: swept out of the thread's lock
                await self._sweep_erased(thread_id, exc)
            raise

    async def _update_thread_item(
        self, thread_id: str, key: dict[str, Any],
        build: Callable[[str, bool], UpdateExpression],
        create: bool, merge: bool, identifier: str | None, fields: dict[str, Any], returns: str,
    ) -> None:
        """:meth:`update_thread`'s write, under the thread's lock (see :meth:`_thread_lock`).

        A write that may create the thread item first updates it only if it exists (the one
        call an existing thread costs); when there is none, the item is created in a
        transaction with the check that no tombstone names the thread (``_not_erased``), so a
        thread ``erase_user`` removed is never made again, by any process. (A metadata-only
        write made two calls there before too: the merge's condition needs the map.) An
        owner's write is a transaction with its user's check already: the erased user is
        gone, and nothing can name them again."""
        mode = "paths" if merge else "none"
        creating = identifier is not None
        async with self._thread_lock(thread_id):
            async for _ in CONFLICT_RETRY.tries():
                try:
                    if identifier is not None:
                        result = await self._owner_write(key, build(mode, True),
                                                         fields["userId"], identifier)
                    elif creating:
                        await self._create_thread_item(thread_id, key, build(mode, True))
                        result = {}
                    else:
                        result = await self.call(
                            "update_item", Key=key, ReturnValues=returns,
                            ReturnValuesOnConditionCheckFailure="ALL_OLD",
                            **build(mode, False).params())
                except ConditionFailed as failed:
                    if failed.item is None and not create:
                        return  # the layer asked not to create (a thread it deleted, #1684)
                    if failed.item is None and not creating:
                        creating = True  # no thread item: create it, checked (see above)
                        mode = "whole" if merge else "none"
                        continue
                    creating = identifier is not None  # it exists (now): update it
                    stored = (failed.item or {}).get("metadata")
                    mode = "paths" if stored is not None and "M" in stored else "whole"
                    continue
                if create:
                    self._deleted.pop(thread_id, None)  # the thread exists (again)
                if returns == "ALL_NEW":
                    await self._sync_feedback_markers(key, result.get("Attributes", {}))
                return
        raise ConflictError(f"thread {thread_id}: metadata merge kept conflicting")

    async def _create_thread_item(self, thread_id: str, key: dict[str, Any],
                                  update: UpdateExpression) -> None:
        """``update`` (which creates the thread item) in one transaction with the check that
        no tombstone names the thread.

        Raises:
            NotFoundError: ``erase_user`` removed the thread (the caller then sweeps what
                steps wrote there since, out of the thread's lock: :meth:`_sweep_erased`).
            ConditionFailed: ``update``'s own condition failed (``item`` None: not read).
        """
        try:
            await self.transact([{"Update": {"TableName": self.table, "Key": key,
                                             **update.params()}},
                                 self._not_erased(thread_id)])
        except ConditionFailed as failed:
            if failed.reasons[1:2] != ["ConditionalCheckFailed"]:
                item = (await self.call("get_item", Key=key, ConsistentRead=True)).get("Item")
                raise ConditionFailed(item) from failed
            raise self._erased_error(thread_id) from failed

    async def _sweep_erased(self, thread_id: str, error: NotFoundError) -> None:
        """Once this process meets an erased thread's tombstone: remove what writes landed in
        its partition since the erasure, with their files (``error`` gets a note for a file
        that cannot be deleted). Such writes are steps and elements of another process that
        did not know yet: a child's write does not read its thread item (that would make every
        step a transaction), so it is not refused until its process meets the tombstone, by a
        write of the thread item (a user message, ``update_thread``) or a late stub; from then
        on this process refuses them itself (``_erased``)."""
        removed = await self._remove_partition(thread_id)
        storage = self.storage()
        if removed.object_keys and storage is not None:
            await _remove_objects(storage, removed.object_keys, error)

    async def _owner_write(self, key: dict[str, Any], update: UpdateExpression, user_id: str,
                           identifier: str) -> dict[str, Any]:
        """A thread write that names an owner, in one transaction with a check that the owner's
        user item still exists with that id: once ``erase_user`` has deleted the user item no
        write can make a thread name the user again (a check earlier, outside the transaction,
        would leave a window in which the erasure's sweep has already passed). Returns, as
        ``update_item`` with ``ReturnValues=ALL_NEW`` would, ``{"Attributes": item}``.

        Raises:
            NotFoundError: the user no longer exists.
            ConditionFailed: the update's own condition failed (``item``: the thread item).
        """
        user_key = self.layout.key_of("user", identifier=identifier)
        try:
            await self.transact([
                {"ConditionCheck": {"TableName": self.table, "Key": user_key,
                                    # Chainlit's own layer wrote users without an id attribute:
                                    # there the id is the identifier
                                    "ConditionExpression": "#i = :i" if user_id != identifier
                                    else "attribute_exists(#p) AND (attribute_not_exists(#i) "
                                         "OR #i = :i)",
                                    "ExpressionAttributeNames": {"#i": "id"} | (
                                        {} if user_id != identifier else {"#p": PARTITION_KEY}),
                                    "ExpressionAttributeValues": {
                                        ":i": self.codecs["user"].encode("id", user_id)}}},
                {"Update": {"TableName": self.table, "Key": key, **update.params()}},
            ])
        except ConditionFailed as failed:
            if failed.reasons[:1] == ["ConditionalCheckFailed"]:
                self._identifiers.pop(user_id, None)
                raise NotFoundError(f"user_id {user_id!r}: no such user",
                                    detail="user_id") from failed
            item = (await self.call("get_item", Key=key, ConsistentRead=True)).get("Item")
            raise ConditionFailed(item) from failed
        item = (await self.call("get_item", Key=key, ConsistentRead=True)).get("Item")
        return {"Attributes": item or {}}

    async def _sync_feedback_markers(self, key: dict[str, Any], item: Mapping[str, Any]) -> None:
        """After an owner is set: mark the thread in the feedback indexes its counters call for."""
        user_id = self.codecs["thread"].row(item).get("userId")
        if not user_id:
            return
        u = UpdateExpression()
        for value, counter in FEEDBACK_COUNTERS.items():
            marker = self.layout.feedback_marker(value, user_id)
            count = from_attribute_value(item[counter]) if counter in item else 0
            if marker is None or not count or marker[0] in item:
                continue
            u.set(marker[0], string_value(marker[1] or ""))
        if u.sets:
            await self.call("update_item", Key=key, **u.params())

    async def get_thread_author(self, thread_id: str) -> str | None:
        item = (await self.call(
            "get_item", Key=self.layout.key_of("thread", id=thread_id), ConsistentRead=True,
            ProjectionExpression="#u, #d, #a",
            ExpressionAttributeNames={"#u": "userIdentifier", "#d": "deletedAt",
                                      "#a": "activityAt"},
        )).get("Item")
        if not item or "userIdentifier" not in item or "deletedAt" in item or self._expired(
                item):  # trashed, or past its TTL: gone
            return None
        value = from_attribute_value(item["userIdentifier"])
        return str(value) if value else None

    async def get_thread(
        self, thread_id: str
    ) -> tuple[dict[str, Any], list[dict[str, Any]], list[dict[str, Any]]] | None:
        items = await self.query_all(
            KeyConditionExpression="#p = :p", ExpressionAttributeNames={"#p": PARTITION_KEY},
            ExpressionAttributeValues={
                ":p": self.layout.key_of("thread", id=thread_id)[PARTITION_KEY]},
            ConsistentRead=True,
        )
        thread: dict[str, Any] | None = None
        steps: dict[str, dict[str, Any]] = {}
        step_items: dict[str, Mapping[str, Any]] = {}
        elements: list[dict[str, Any]] = []
        feedback: dict[str, dict[str, Any]] = {}
        for item in items:
            kind = self.layout.kind(item[SORT_KEY]["S"])
            if kind == "thread":
                if self._expired(item):  # past the retention: gone, as in the lists
                    return None
                thread = self.codecs["thread"].row(item)
            elif kind == "step":
                if self.layout.is_phantom(item):
                    legacy = self.layout.legacy_feedback(item)
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
                feedback[str(row.get("forId"))] = _feedback_of(row)
        if thread is None or thread.get("deletedAt"):  # trashed: gone for every read
            return None
        await self.load_texts(list(step_items.values()), list(steps.values()))
        for step_id, row in steps.items():
            found = feedback.get(step_id) or self.layout.legacy_feedback(step_items[step_id])
            if found:
                row["feedback"] = found
        ordered = sorted(steps.values(), key=step_order)
        elements.sort(key=element_order)
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
        if feedback is None:
            spec = self.layout.list_index
        else:
            found = self.layout.feedback_index(feedback)
            if found is None:
                raise SchemaError(
                    f"the model set declares no DynamoDB index for feedback {feedback} "
                    f"(role {FEEDBACK_ROLES[feedback]!r})", detail=str(feedback))
            spec = found
        declared = spec.entities["thread"]
        pk_value = render_key(declared.pk, {"userId": user_id}) or ""
        kwargs: dict[str, Any] = {
            "IndexName": spec.name,
            "KeyConditionExpression": "#p = :p",
            "ExpressionAttributeNames": {"#p": spec.pk_attribute},
            "ExpressionAttributeValues": {":p": string_value(pk_value)},
            "ScanIndexForward": False,
        }
        if needle is None and limit <= 1000:
            kwargs["Limit"] = limit
        if after is not None:
            moment, tid = after
            sk = render_key(declared.sk, {"activityAt": moment, "id": tid, "userId": user_id})
            kwargs["ExclusiveStartKey"] = {
                spec.pk_attribute: string_value(pk_value),
                spec.sk_attribute: string_value(sk or ""),
                **self.layout.key_of("thread", id=tid),
            }
        rows: list[dict[str, Any]] = []
        codec = self.codecs["thread"]
        while len(rows) < limit:
            try:
                result = await self.call("query", **kwargs)
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
            "ExpressionAttributeValues": {":s": string_value(thread_sk)},
        }
        rows: list[dict[str, Any]] = []
        codec = self.codecs["thread"]
        while True:
            result = await self.call("scan", **kwargs)
            for item in result.get("Items", []):
                if feedback is not None:
                    counter = item.get(FEEDBACK_COUNTERS[feedback])
                    if not counter or not from_attribute_value(counter):
                        continue
                row = codec.row(item)
                if needle is not None and not matches(needle, row.get("name")):
                    continue
                if row.get("deletedAt") or self._stale(row):  # trash, past retention
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

    async def thread_object_keys(self, thread_id: str) -> list[str]:
        items = await self.query_all(
            KeyConditionExpression="#p = :p",
            ExpressionAttributeNames={"#p": PARTITION_KEY, "#o": "objectKey",
                                      "#i": TEXT_REFS["input"], "#t": TEXT_REFS["output"]},
            ExpressionAttributeValues={
                ":p": self.layout.key_of("thread", id=thread_id)[PARTITION_KEY]},
            ProjectionExpression="#o, #i, #t",
            ConsistentRead=True,
        )
        return stored_object_keys(items)

    async def _delete_partition(self, thread_id: str) -> list[str]:
        items = await self.query_all(
            KeyConditionExpression="#p = :p",
            ExpressionAttributeNames={"#p": PARTITION_KEY, "#s": SORT_KEY, "#o": "objectKey",
                                      "#i": TEXT_REFS["input"], "#t": TEXT_REFS["output"]},
            ExpressionAttributeValues={
                ":p": self.layout.key_of("thread", id=thread_id)[PARTITION_KEY]},
            ProjectionExpression="#p, #s, #o, #i, #t",
            ConsistentRead=True,
        )
        thread_sk = self.models.dynamo["thread"].sk
        # children first, the thread item last: an interrupted delete leaves a thread to retry
        items.sort(key=lambda item: item[SORT_KEY]["S"] == thread_sk)
        keys = stored_object_keys(items)
        await self.batch_write([
            {"DeleteRequest": {"Key": {PARTITION_KEY: i[PARTITION_KEY], SORT_KEY: i[SORT_KEY]}}}
            for i in items
        ], last_after_rest=True)
        return keys

    # ------------------------------------------------------------------- steps

    async def upsert_step(
        self, row: dict[str, Any], *, create: bool, activity: str | None, now: str
    ) -> None:
        codec = self.codecs["step"]
        thread_id, step_id = str(row["threadId"]), str(row["id"])
        key = self.layout.key_of("step", threadId=thread_id, id=step_id)
        encoded = {name: codec.encode(name, value) for name, value in row.items()
                   if value is not None}
        index = self.layout.index_attributes("step", row)
        storage = self.storage()
        # texts go only to a storage that can give them back: a step whose text cannot be
        # read again would make its thread unreadable
        readable = storage is not None and can_read_back(storage)
        offload = [f for f in TEXT_REFS if f in encoded and readable
                   and len(row[f].encode()) > self.offload_bytes]
        size = item_size({**key, **encoded, **{a: string_value(v) for a, v in index.items()}})
        size -= sum(value_size(encoded[f]) for f in offload)
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
                object_key = step_text_object_key(thread_id, step_id, field, create)
                refs[field] = object_key
                await storage.upload_file(object_key, row[field].encode(),
                                          mime="text/plain; charset=utf-8", overwrite=True)

            def build(with_refs: bool) -> UpdateExpression:
                u = UpdateExpression()
                for name, encoded_value in encoded.items():
                    if name in offload:
                        continue
                    u.set(name, encoded_value,
                          if_absent=create and name not in ("id", "threadId"))
                    if name in TEXT_REFS and not create:
                        u.remove(TEXT_REFS[name])  # an inline update replaces an offloaded text
                for attribute, value in index.items():
                    u.set(attribute, string_value(value))
                if with_refs:
                    for field, ref_key in refs.items():
                        u.set(TEXT_REFS[field], string_value(ref_key))
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
                    put = {**key, **encoded, **{a: string_value(v) for a, v in index.items()}}
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
        build: Callable[[bool], UpdateExpression], refs: dict[str, str], activity: str | None,
        now: str,
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
        thread_key = self.layout.key_of("thread", id=thread_id)
        absent = {"ConditionExpression": "attribute_not_exists(#p)",
                  "ExpressionAttributeNames": {"#p": PARTITION_KEY}}
        async for _ in CONFLICT_RETRY.tries():
            # the step's write: the whole new item, or the update (same parameters for
            # PutItem/UpdateItem and for the transaction's Put/Update action)
            kind, write = (("Put", {"Item": put, **absent}) if put is not None
                           else ("Update", {"Key": key, **build(with_refs).params()}))
            try:
                if bump or stub:
                    thread = self._bump(thread_id, str(activity), now) if bump \
                        else self._stub(thread_id, now)
                    # the thread item may be created here: not for an erased thread
                    await self.transact([
                        {"Update": {"TableName": self.table, "Key": thread_key,
                                    **thread.params()}},
                        {kind: {"TableName": self.table, **write}},
                        self._not_erased(thread_id),
                    ])
                    self._deleted.pop(thread_id, None)  # the thread exists again
                else:
                    await self.call("put_item" if put is not None else "update_item", **write)
                break
            except ConditionFailed as failed:
                reasons = failed.reasons if bump or stub else ["None", "ConditionalCheckFailed"]
                if reasons[2:3] == ["ConditionalCheckFailed"]:
                    raise self._erased_error(thread_id) from failed
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
            if thread_id in self._erased and thread_id in self._deleted:
                raise NotFoundError(f"thread {thread_id} was erased with its user",
                                    detail=thread_id)
            gate.writers += 1  # no await since the check: the delete cannot have started
            met: NotFoundError | None = None
            try:
                yield thread_id in self._deleted
            except NotFoundError as exc:
                if exc.detail == thread_id and thread_id in self._erased:
                    met = exc  # the write met the tombstone (see _not_erased)
                raise
            finally:
                gate.writers -= 1
                if not gate.writers and gate.idle is not None:
                    gate.idle.set()
                if met is not None:  # no longer one of the writers the sweep waits for
                    await self._sweep_erased(thread_id, met)
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

    def _stub(self, thread_id: str, now: str) -> UpdateExpression:
        """The thread item a late write recreates (as the SQL backends' stub thread): id, and
        creation and activity times if absent. No owner, so it is listed for nobody."""
        codec = self.codecs["thread"]
        u = UpdateExpression()
        u.set("id", codec.encode("id", thread_id))
        u.set("createdAt", codec.encode("createdAt", now), if_absent=True)
        u.set("activityAt", codec.encode("activityAt", now), if_absent=True)
        self._set_expiry(u, now, if_absent=True)
        for attribute, template in self.layout.index_templates("thread").items():
            if "activityAt" in placeholders(template):
                rendered = render_key(template, {"id": thread_id, "activityAt": now})
                if rendered is not None:
                    u.set(attribute, string_value(rendered), if_absent=True)
        return u

    def _bump(self, thread_id: str, activity: str, now: str) -> UpdateExpression:
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
        u = UpdateExpression()
        u.set("id", codec.encode("id", thread_id))
        u.set("createdAt", codec.encode("createdAt", now), if_absent=True)
        u.set("activityAt", codec.encode("activityAt", activity))
        self._set_expiry(u, activity)  # the TTL moves with the activity, in this same write
        for attribute, template in self.layout.index_templates("thread").items():
            if "activityAt" not in placeholders(template):
                continue
            rendered = render_key(template, {"id": thread_id, "activityAt": activity})
            if rendered is not None:
                u.set(attribute, string_value(rendered))
        a = u.n("activityAt")
        u.condition(f"attribute_not_exists({a}) OR {a} <= {u.v(string_value(activity))} OR "
                    f"{a} = {u.n('createdAt')}")
        return u

    async def load_texts(self, items: Sequence[Mapping[str, Any]],
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
        found = await self.lookup("step", step_id)
        if found is None:
            return []
        pk, sk = found
        thread_id = self.layout.thread_of_key(pk)
        if thread_id is None:
            return []
        element_prefix = self.models.dynamo["element"].sk.split("{", 1)[0]
        elements = await self.query_all(
            KeyConditionExpression="#p = :p AND begins_with(#s, :e)",
            FilterExpression="#f = :sid",
            ProjectionExpression="#p, #s, #o",
            ExpressionAttributeNames={"#p": PARTITION_KEY, "#s": SORT_KEY, "#f": "forId",
                                      "#o": "objectKey"},
            ExpressionAttributeValues={":p": string_value(pk), ":e": string_value(element_prefix),
                                       ":sid": string_value(step_id)},
            ConsistentRead=True,
        )
        step = (await self.call("get_item", Key=table_key(pk, sk),
                                ConsistentRead=True)).get("Item")
        await self._delete_feedback_of(thread_id, step_id)
        targets = [*elements, *([step] if step else [])]
        keys = stored_object_keys(targets)
        await self.batch_write([
            {"DeleteRequest": {"Key": {PARTITION_KEY: i[PARTITION_KEY], SORT_KEY: i[SORT_KEY]}}}
            for i in targets
        ])
        return keys

    async def get_step(self, step_id: str) -> dict[str, Any] | None:
        found = await self.lookup("step", step_id)
        if found is None:
            return None
        pk, sk = found
        thread_id = self.layout.thread_of_key(pk) or ""
        feedback_key = self.layout.key_of("feedback", threadId=thread_id, forId=step_id)
        thread_key = self.layout.key_of("thread", id=thread_id)
        tombstone = self._tombstone(thread_id)
        # the thread item and its tombstone in the same BatchGetItem: still one call
        items = await self.batch_get([table_key(pk, sk), feedback_key, thread_key, tombstone])
        if any(i[PARTITION_KEY] == tombstone[PARTITION_KEY] for i in items):
            return None  # a late step of an erased thread: as gone as the thread (erase_user
            # run again removes it)
        step_item = next((i for i in items if i[SORT_KEY]["S"] == sk), None)
        if step_item is None or self.layout.is_phantom(step_item):
            return None
        thread_item = next((i for i in items if i[SORT_KEY] == thread_key[SORT_KEY]), None)
        if thread_item is not None and not self._readable(thread_item):
            return None  # trashed or past its retention: its steps are as gone as it is
        items = [i for i in items if i is not thread_item]
        row = self.codecs["step"].row(step_item)
        await self.load_texts([step_item], [row])
        feedback_item = next((i for i in items if i[SORT_KEY]["S"] != sk), None)
        if feedback_item is not None:
            row["feedback"] = _feedback_of(self.codecs["feedback"].row(feedback_item))
        elif self.layout.legacy_feedback(step_item):
            row["feedback"] = self.layout.legacy_feedback(step_item)
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
            items = await self.query_all(
                KeyConditionExpression="#p = :p",
                FilterExpression="(begins_with(#s, :st) AND (#f = :t OR #m.#f = :t)) OR "
                                 "begins_with(#s, :fb)",
                ExpressionAttributeNames={"#p": PARTITION_KEY, "#s": SORT_KEY, "#f": "favorite",
                                          "#m": "metadata"},
                ExpressionAttributeValues={
                    ":p": self.layout.key_of("thread", id=thread_id)[PARTITION_KEY],
                    ":st": string_value(step_prefix), ":fb": string_value(feedback_prefix),
                    ":t": {"BOOL": True}},
                ConsistentRead=True,
            )
            feedback = {}
            step_items = []
            for item in items:
                if self.layout.kind(item[SORT_KEY]["S"]) == "feedback":
                    row = self.codecs["feedback"].row(item)
                    feedback[str(row.get("forId"))] = _feedback_of(row)
                elif not self.layout.is_phantom(item):
                    step_items.append(item)
            rows = [self.codecs["step"].row(item) for item in step_items]
            await self.load_texts(step_items, rows)
            for item, row in zip(step_items, rows, strict=True):
                found = feedback.get(str(row.get("id"))) or self.layout.legacy_feedback(item)
                if found:
                    row["feedback"] = found
            return rows

        nested = await asyncio.gather(*(favorites(str(t["id"])) for t in threads))
        steps = [s for group in nested for s in group]
        steps.sort(key=step_order, reverse=True)
        return steps

    # ---------------------------------------------------------------- elements

    async def upsert_element(self, row: dict[str, Any], now: str) -> None:
        codec = self.codecs["element"]
        key = self.layout.key_of("element", threadId=row["threadId"], id=row["id"])
        u = UpdateExpression()
        for name, value in row.items():
            if value is not None:
                u.set(name, codec.encode(name, value))
        for attribute, value in self.layout.index_attributes("element", row).items():
            u.set(attribute, string_value(value))
        thread_id = str(row["threadId"])
        async with self._child_write(thread_id) as late:
            if not late:
                await self.call("update_item", Key=key, **u.params())
                return
            try:
                await self.transact([  # see _child_write: recreate the thread with the element
                    {"Update": {"TableName": self.table,
                                "Key": self.layout.key_of("thread", id=thread_id),
                                **self._stub(thread_id, now).params()}},
                    {"Update": {"TableName": self.table, "Key": key, **u.params()}},
                    self._not_erased(thread_id),
                ])
            except ConditionFailed as failed:
                raise self._erased_error(thread_id) from failed
            self._deleted.pop(thread_id, None)

    async def get_element(self, thread_id: str, element_id: str) -> dict[str, Any] | None:
        key = self.layout.key_of("element", threadId=thread_id, id=element_id)
        thread_key = self.layout.key_of("thread", id=thread_id)
        tombstone = self._tombstone(thread_id)
        items = await self.batch_get([key, thread_key, tombstone])  # one call
        if any(i[PARTITION_KEY] == tombstone[PARTITION_KEY] for i in items):
            return None  # a late element of an erased thread: as gone as the thread
        item = next((i for i in items if i[SORT_KEY] == key[SORT_KEY]), None)
        thread_item = next((i for i in items if i[SORT_KEY] == thread_key[SORT_KEY]), None)
        if item is None or (thread_item is not None and not self._readable(thread_item)):
            return None  # a trashed (or expired) thread's elements are as gone as it is
        return self.codecs["element"].row(item)

    async def delete_element(self, element_id: str, thread_id: str | None) -> str | None:
        if thread_id is None:
            found = await self.lookup("element", element_id)
            if found is None:
                return None
            key = table_key(*found)
        else:
            key = self.layout.key_of("element", threadId=thread_id, id=element_id)
        old = (await self.call("delete_item", Key=key, ReturnValues="ALL_OLD")).get("Attributes")
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
            found = await self.lookup("step", step_id)
            thread_id = self.layout.thread_of_key(found[0]) if found else None
            if thread_id is None:
                raise InvalidInputError(
                    f"feedback for step {step_id} has no threadId and the step is unknown")
        async with self._child_write(thread_id), self._thread_lock(thread_id):
            return await self._upsert_feedback(row, step_id, thread_id)

    async def _upsert_feedback(self, row: dict[str, Any], step_id: str, thread_id: str) -> str:
        thread_key = self.layout.key_of("thread", id=thread_id)
        step_key = self.layout.key_of("step", threadId=thread_id, id=step_id)
        feedback_key = self.layout.key_of("feedback", threadId=thread_id, forId=step_id)
        checked_step = row.get("threadId") is None
        async for _ in CONFLICT_RETRY.tries():
            items = await self.batch_get([thread_key, step_key, feedback_key])
            by_sk = {i[SORT_KEY]["S"]: i for i in items}
            thread = by_sk.get(thread_key[SORT_KEY]["S"])
            if thread is None:
                raise NotFoundError(f"thread {thread_id} does not exist", detail=thread_id)
            if step_key[SORT_KEY]["S"] not in by_sk and not checked_step:
                elsewhere = await self.lookup("step", step_id)
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
            for attribute, value in self.layout.index_attributes("feedback", new).items():
                item[attribute] = string_value(value)
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
                    await self.call("put_item", **{k: v for k, v in put.items()
                                                    if k != "TableName"})
                else:
                    await self.transact([
                        {"Put": put},
                        {"Update": {"TableName": self.table, "Key": thread_key,
                                    **counters.params()}},
                    ])
            except ConditionFailed:
                continue  # another writer changed the feedback or the counters: read again
            return feedback_id
        raise ConflictError(f"feedback for step {step_id} kept conflicting", detail=step_id)

    def _counter_update(self, thread: Mapping[str, Any], *, add: int | None,
                        remove: int | None) -> UpdateExpression | None:
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
        u = UpdateExpression()
        u.condition(f"attribute_exists({u.n(PARTITION_KEY)})")
        if not user_id:
            u.condition(f"attribute_not_exists({u.n('userId')})")
        for value, change in ((add, 1), (remove, -1)):
            if value is None:
                continue
            counter = FEEDBACK_COUNTERS[value]
            name = u.n(counter)
            marker = self.layout.feedback_marker(value, user_id)
            if change > 0:
                u.add(counter, {"N": "1"})
                if marker is not None and marker[1]:
                    u.set(marker[0], string_value(marker[1]))
                continue
            current = int(from_attribute_value(thread[counter])) if counter in thread else 0
            one = u.v({"N": "1"})
            if current > 1:
                u.add(counter, {"N": "-1"})
                u.condition(f"{name} > {one}")
            else:  # the last one of this value: the counter goes to 0 and the marker with it
                u.set(counter, {"N": "0"})
                u.condition(f"attribute_not_exists({name}) OR {name} <= {one}")
                if marker is not None:
                    u.remove(marker[0])
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
        thread_key = self.layout.key_of("thread", id=thread_id)
        feedback_key = self.layout.key_of("feedback", threadId=thread_id, forId=step_id)
        async for _ in CONFLICT_RETRY.tries():
            items = await self.batch_get([thread_key, feedback_key])
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
                    await self.call("delete_item", **{k: v for k, v in delete.items()
                                                       if k != "TableName"})
                else:
                    await self.transact([
                        {"Delete": delete},
                        {"Update": {"TableName": self.table, "Key": thread_key,
                                    **counters.params()}},
                    ])
            except ConditionFailed:
                continue
            return True
        raise ConflictError(f"feedback of step {step_id} kept conflicting", detail=step_id)

    async def delete_feedback(self, feedback_id: str) -> bool:
        found = await self.lookup("feedback", feedback_id)
        if found is None:
            return False
        thread_id = self.layout.thread_of_key(found[0])
        parsed = parse_key(self.models.dynamo["feedback"].sk, found[1])
        if thread_id is None or parsed is None:
            return False
        return await self._delete_feedback_of(thread_id, parsed["forId"], feedback_id)

    async def close(self) -> None:
        await self.table_client.close()


def _feedback_of(row: Mapping[str, Any]) -> dict[str, Any]:
    return feedback_dict(row.get("id"), row.get("forId"), row.get("value"), row.get("comment"))


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


