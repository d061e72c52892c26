"""``chainlit-orm migrate dynamodb://TABLE``: create the single table or add its missing GSIs.

It applies what :mod:`chainlit_orm.schema_gen.dynamo` derives (that package does no I/O);
:func:`chainlit_orm.migrations.migrate` dispatches ``dynamodb://`` URLs here.

What it does, additively and idempotently:

* no table: ``CreateTable`` from :func:`~chainlit_orm.schema_gen.dynamo.dynamo_table_spec`, then
  wait until it is ``ACTIVE``;
* a table (for example one made from Chainlit's docs CloudFormation: ``PK``/``SK`` and GSI
  ``UserThread`` with ``INCLUDE [id, name]``): check its primary key and existing GSIs, then add
  each missing GSI with its own ``UpdateTable`` (DynamoDB accepts one GSI creation per call) and
  wait until it is ``ACTIVE`` before the next;
* record :data:`~chainlit_orm.schema_gen.sql.SCHEMA_VERSION` in the item
  :data:`~chainlit_orm.schema_gen.dynamo.SCHEMA_VERSION_KEY`.

It never deletes or changes an index: an index with other keys, or a projection lacking
attributes the layer reads, is a :class:`~chainlit_orm.errors.SchemaError` naming the fix.

Items written before a GSI existed lack its key attributes and so are not in it. Filling them in
is a *backfill*, done by the DynamoDB layer (it knows how to derive the attributes:
:func:`chainlit_orm.layers.dynamodb.backfill`, the default ``backfill=``). It is called with the
new index names after they are ACTIVE. The pending backfill is recorded in the schema-version item
(``backfillPending``) before it starts and removed when it ends, and the hook records its scan
position there (``backfillCursor``): an interrupted migrate resumes it when run again, and the
layer refuses to start while it is pending. ``backfill=None`` skips it (a line says so).

boto3 is synchronous, so every call runs in a worker thread (``asyncio.to_thread``).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
import uuid
from collections.abc import AsyncIterator, Mapping, Sequence
from contextlib import asynccontextmanager
from datetime import datetime
from typing import Any

from chainlit_orm.errors import (
    BackendUnavailableError,
    ConfigurationError,
    MissingDependencyError,
    SchemaError,
    mask_url,
)
from chainlit_orm.migrations.lock import LOCK_POLL, LockState
from chainlit_orm.migrations.report import (
    BackfillHook,
    BackfillRequest,
    HistoryEntry,
    MigrationReport,
    fingerprint,
)
from chainlit_orm.models.modelset import DEFAULT_MODELS, ModelSet
from chainlit_orm.models.types import utc_now
from chainlit_orm.schema_gen.dynamo import (
    MIGRATION_LOCK_KEY,
    PARTITION_KEY,
    SCHEMA_VERSION_KEY,
    TTL_ATTRIBUTE,
    GsiSpec,
    dynamo_indexes,
    dynamo_table_spec,
)
from chainlit_orm.schema_gen.sql import SCHEMA_VERSION
from chainlit_orm.urls import DynamoURL, parse_dynamodb_url

__all__ = ["CREATOR_GRACE", "LOCK_KEY", "LOCK_LEASE", "layer_backfill", "migrate_dynamodb",
           "schema_history_dynamodb"]

#: The lock item: next to the schema-version item, in the same partition that the layer's reads
#: never list (a thread's or user's key never starts with ``CHAINLIT_ORM#``).
LOCK_KEY: Mapping[str, str] = MIGRATION_LOCK_KEY

#: Seconds a lock item is valid without renewal: the holder renews it every third of that, so a
#: migration that died blocks the next one for at most this long.
LOCK_LEASE = 60.0

#: Seconds a process that lost the race to create the table waits for the creator to take the
#: lock before trying to take it itself.
CREATOR_GRACE = 10.0


async def layer_backfill(request: BackfillRequest) -> list[str]:
    """The default hook: the DynamoDB layer's backfill (imported here, it needs the extra)."""
    from chainlit_orm.layers.dynamodb import backfill

    return await backfill(request)


class _MigrationTable:
    """Thin synchronous wrapper over one boto3 client and table; every method runs in a thread."""

    def __init__(self, url: DynamoURL, shown: str) -> None:
        try:
            import boto3
            from botocore.config import Config
        except ImportError as exc:  # pragma: no cover - exercised only without the extra
            raise MissingDependencyError("boto3", "dynamodb") from exc
        self.url = url
        self.shown = shown
        try:
            session = boto3.session.Session(profile_name=url.profile, region_name=url.region)
            self.client = session.client(
                "dynamodb",
                endpoint_url=url.endpoint_url,
                config=Config(connect_timeout=5, read_timeout=30,
                              retries={"max_attempts": 3, "mode": "standard"}),
            )
        except Exception as exc:  # botocore raises many unrelated types for a bad setup
            raise ConfigurationError(f"cannot configure DynamoDB for {shown}: {exc}") from exc

    def call(self, operation: str, **kwargs: Any) -> dict[str, Any]:
        from botocore.exceptions import BotoCoreError, ClientError

        # the layer's table of AWS error codes (imported here: it needs the dynamodb extra)
        from chainlit_orm.layers.dynamodb.table import AUTH_ERRORS, SETUP_ERRORS

        try:
            result: dict[str, Any] = getattr(self.client, operation)(**kwargs)
        except ClientError as exc:
            code = exc.response.get("Error", {}).get("Code", "")
            if code == "ResourceNotFoundException":
                raise
            if code in AUTH_ERRORS:
                raise BackendUnavailableError(
                    f"DynamoDB refused the credentials for {self.shown} ({code})", detail=code
                ) from exc
            raise SchemaError(
                f"DynamoDB {operation} failed for {self.shown}: {code}: "
                f"{exc.response.get('Error', {}).get('Message', '')}",
                detail=code,
            ) from exc
        except BotoCoreError as exc:
            if type(exc).__name__ in SETUP_ERRORS:
                raise ConfigurationError(
                    f"{exc} for {self.shown} (add ?region=REGION, or configure AWS credentials)"
                ) from exc
            raise BackendUnavailableError(
                f"cannot reach DynamoDB for {self.shown}: {exc}"
            ) from exc
        return result

    def describe(self) -> dict[str, Any] | None:
        from botocore.exceptions import ClientError

        try:
            table: dict[str, Any] = self.call("describe_table", TableName=self.url.table)["Table"]
        except ClientError:  # only ResourceNotFoundException gets through call()
            return None
        return table

    def wait_active(self, index: str | None, timeout: float, poll: float) -> None:
        """Block until the table (and ``index``, if given) is ACTIVE."""
        deadline = time.monotonic() + timeout
        while True:
            table = self.describe()
            if table is not None and table.get("TableStatus") == "ACTIVE":
                statuses = {gsi["IndexName"]: gsi.get("IndexStatus")
                            for gsi in table.get("GlobalSecondaryIndexes", [])}
                if index is None or statuses.get(index) == "ACTIVE":
                    return
            if time.monotonic() >= deadline:
                what = f"index {index} of " if index else ""
                raise BackendUnavailableError(
                    f"{what}{self.shown} is not ACTIVE after {timeout:.0f} s; DynamoDB keeps "
                    "building it: run migrate again later"
                )
            time.sleep(poll)


def _projection_covers(existing: dict[str, Any], spec: GsiSpec) -> bool:
    kind = existing.get("ProjectionType")
    if kind == "ALL" or spec.projection == "KEYS_ONLY":
        return True
    if kind == "INCLUDE" and spec.projection == "INCLUDE":
        return set(spec.attributes) <= set(existing.get("NonKeyAttributes", []))
    return False


def _key_names(key_schema: Sequence[dict[str, Any]]) -> tuple[str | None, str | None]:
    hash_ = next((k["AttributeName"] for k in key_schema if k["KeyType"] == "HASH"), None)
    range_ = next((k["AttributeName"] for k in key_schema if k["KeyType"] == "RANGE"), None)
    return hash_, range_


def _missing_indexes(table: dict[str, Any], models: ModelSet, shown: str) -> list[GsiSpec]:
    """The GSIs to add to an existing table, after checking what it already has."""
    spec = dynamo_table_spec(models, table["TableName"])
    wanted_keys = _key_names(spec["KeySchema"])
    if _key_names(table["KeySchema"]) != wanted_keys:
        raise SchemaError(
            f"{shown} has primary key {'/'.join(map(str, _key_names(table['KeySchema'])))}, "
            f"chainlit-orm needs {'/'.join(map(str, wanted_keys))}; a primary key cannot change "
            "in place: use another table"
        )
    existing = {gsi["IndexName"]: gsi for gsi in table.get("GlobalSecondaryIndexes", [])}
    missing: list[GsiSpec] = []
    for index in dynamo_indexes(models):
        found = existing.get(index.name)
        if found is None:
            missing.append(index)
            continue
        if _key_names(found["KeySchema"]) != (index.pk_attribute, index.sk_attribute):
            raise SchemaError(
                f"index {index.name} of {shown} has keys "
                f"{'/'.join(map(str, _key_names(found['KeySchema'])))}, the models declare "
                f"{index.pk_attribute}/{index.sk_attribute}; delete the index and run migrate "
                "again"
            )
        if not _projection_covers(found.get("Projection", {}), index):
            raise SchemaError(
                f"index {index.name} of {shown} does not project "
                f"{', '.join(index.attributes) or 'what the models need'}; delete the index and "
                "run migrate again (a projection cannot change in place)"
            )
    return missing


def _create_index_update(
    table: dict[str, Any], index: GsiSpec, spec: dict[str, Any]
) -> dict[str, Any]:
    create: dict[str, Any] = index.boto3()
    billing = table.get("BillingModeSummary", {}).get("BillingMode", "PROVISIONED")
    throughput = table.get("ProvisionedThroughput", {})
    if billing == "PROVISIONED" and throughput.get("ReadCapacityUnits"):
        # A provisioned table's GSIs need capacity; give each the table's own.
        create["ProvisionedThroughput"] = {
            "ReadCapacityUnits": throughput["ReadCapacityUnits"],
            "WriteCapacityUnits": throughput["WriteCapacityUnits"],
        }
    needed = {index.pk_attribute, index.sk_attribute}
    return {
        "TableName": table["TableName"],
        "AttributeDefinitions": [
            d for d in spec["AttributeDefinitions"] if d["AttributeName"] in needed
        ],
        "GlobalSecondaryIndexUpdates": [{"Create": create}],
    }


async def _enable_ttl(client: _MigrationTable, shown: str, dry_run: bool) -> list[str]:
    """Enable DynamoDB TTL on :data:`TTL_ATTRIBUTE` unless it is (being) enabled. A table whose
    TTL is on another attribute is left alone, with a note: a table has one TTL attribute, and
    it may be the operator's own."""
    described = (await asyncio.to_thread(client.call, "describe_time_to_live",
                                         TableName=client.url.table)).get(
        "TimeToLiveDescription", {})
    status, attribute = described.get("TimeToLiveStatus"), described.get("AttributeName")
    if status in ("ENABLED", "ENABLING"):
        if attribute == TTL_ATTRIBUTE:
            return []
        return [f"note: TTL of {shown} is on attribute {attribute}, not {TTL_ATTRIBUTE}: a "
                "layer's retention= will not expire items there (chainlit-orm purge still does)"]
    if not dry_run:
        await asyncio.to_thread(
            client.call, "update_time_to_live", TableName=client.url.table,
            TimeToLiveSpecification={"AttributeName": TTL_ATTRIBUTE, "Enabled": True})
    return [f"{'would ' if dry_run else ''}enable TTL on attribute {TTL_ATTRIBUTE}"]


async def migrate_dynamodb(
    url: str,
    models: ModelSet = DEFAULT_MODELS,
    dry_run: bool = False,
    *,
    backfill: BackfillHook | None = layer_backfill,
    wait_seconds: float = 3600.0,
    poll_interval: float = 5.0,
    lock: LockState | None = None,
) -> MigrationReport:
    """Create the single table, or add the GSIs it lacks, and record the schema version.

    Concurrent migrations take turns: the race to create the table is decided by DynamoDB
    itself (one ``CreateTable`` succeeds, the others get ``ResourceInUseException`` and wait for
    the table to be ACTIVE), then everything else happens under the lock item
    (:data:`LOCK_KEY`), and the creator takes it first.

    Args:
        url: ``dynamodb://TABLE?region=...&endpoint_url=...&profile=...``.
        models: the model set whose declarations give keys and indexes.
        dry_run: report what would be done, change nothing (and take no lock).
        backfill: called with the GSIs added to an existing table, to fill their key attributes
            on items written before (default: the DynamoDB layer's); also called again, with
            the indexes recorded as pending, when an earlier run was interrupted. None skips it.
        wait_seconds: seconds to wait for the table or one index to become ACTIVE (a GSI on a big
            table can take hours on AWS).
        poll_interval: seconds between two ``DescribeTable`` calls while waiting.
        lock: where to record that this migration waited for another one (``migrate`` passes
            it, to word its timeout).

    Returns:
        The report: one line per action (or one saying the table is up to date); ``changed``
        says whether anything was written to DynamoDB; ``waited`` whether another migration
        held the table or the lock first.

    Raises:
        ConfigurationError: a bad URL, no region, no credentials.
        BackendUnavailableError: DynamoDB cannot be reached or refuses the credentials.
        SchemaError: the table cannot be made to fit the models without deleting something.
    """
    state = lock if lock is not None else LockState()
    parsed = parse_dynamodb_url(url)
    shown = f"table {parsed.table} ({mask_url(url)})"
    spec = dynamo_table_spec(models, parsed.table)
    client = await asyncio.to_thread(_MigrationTable, parsed, shown)
    lines: list[str] = []
    table = await asyncio.to_thread(client.describe)
    created = False
    names = [gsi["IndexName"] for gsi in spec.get("GlobalSecondaryIndexes", [])]
    if table is None:
        if dry_run:
            return MigrationReport([
                f"would create {shown} with PK/SK and GSIs {', '.join(names)}",
                f"would enable TTL on attribute {TTL_ATTRIBUTE}",
                f"would record schema version {SCHEMA_VERSION}"], changed=False)
        created = await asyncio.to_thread(_create_table, client, spec)
        if created:
            lines.append(f"create {shown} with PK/SK and GSIs {', '.join(names)}")
        else:
            state.waiting(shown)
        await asyncio.to_thread(client.wait_active, None, wait_seconds, poll_interval)
        if not created:
            await asyncio.to_thread(_let_creator_lock, client)
    elif not dry_run and _just_created(table) and not _missing_indexes(table, models, shown):
        # created a moment ago with every index, as a concurrent migrate creates it: that
        # process is about to take the lock, let it
        await asyncio.to_thread(_let_creator_lock, client)
    if dry_run:
        assert table is not None
        return await _migrate_table(client, models, table, spec, shown, lines, dry_run=True,
                                    created=False, backfill=backfill, wait_seconds=wait_seconds,
                                    poll_interval=poll_interval, waited=False)
    async with _dynamo_lock(client, state, shown):
        table = await asyncio.to_thread(client.describe)
        assert table is not None
        return await _migrate_table(client, models, table, spec, shown, lines, dry_run=False,
                                    created=created, backfill=backfill,
                                    wait_seconds=wait_seconds, poll_interval=poll_interval,
                                    waited=state.waited)


async def _migrate_table(client: _MigrationTable, models: ModelSet, table: dict[str, Any],
                         spec: dict[str, Any], shown: str, lines: list[str], *, dry_run: bool,
                         created: bool, backfill: BackfillHook | None, wait_seconds: float,
                         poll_interval: float, waited: bool) -> MigrationReport:
    """Everything after the table exists: GSIs, TTL, the version item and its history, the
    backfill (under the lock unless it is a dry run)."""
    prefix = "would " if dry_run else ""
    added: list[str] = []
    for index in ([] if created else _missing_indexes(table, models, shown)):
        lines.append(f"{prefix}add GSI {index.name} ({index.pk_attribute}/"
                     f"{index.sk_attribute}, {index.projection}) to {shown}")
        if dry_run:
            continue
        await asyncio.to_thread(client.wait_active, None, wait_seconds, poll_interval)
        current = await asyncio.to_thread(client.describe) or table
        await asyncio.to_thread(
            client.call, "update_table", **_create_index_update(current, index, spec)
        )
        await asyncio.to_thread(client.wait_active, index.name, wait_seconds, poll_interval)
        added.append(index.name)
    ttl = await _enable_ttl(client, shown, dry_run)
    lines += ttl
    stored = await asyncio.to_thread(_read_version_item, client)
    version = int(stored["version"]["N"]) if "version" in stored else None
    pending = [p["S"] for p in stored.get("backfillPending", {}).get("L", [])]
    history = _stored_history(stored)
    entry: HistoryEntry | None = None
    enabled = tuple(f"enabled TTL on {TTL_ATTRIBUTE}" for line in ttl
                    if line.startswith("enable TTL"))
    if version != SCHEMA_VERSION or added or created or enabled:
        indexes = [gsi["IndexName"] for gsi in spec.get("GlobalSecondaryIndexes", [])] \
            if created else added
        entry = HistoryEntry(len(history) + 1, SCHEMA_VERSION, utc_now(), fingerprint(models),
                             (client.url.table,) if created else (), (), tuple(indexes),
                             enabled)
        if version != SCHEMA_VERSION:
            lines.append(f"{prefix}record schema version {SCHEMA_VERSION}")
        if not dry_run:
            await asyncio.to_thread(_write_version, client, pending, [*history, entry])
    if pending and dry_run:
        lines.append(f"would resume the backfill of {', '.join(pending)}")
    todo = pending + [name for name in added if name not in pending]
    if todo and not dry_run:
        if backfill is not None:
            await asyncio.to_thread(_mark_pending, client, todo)
            lines += await backfill(BackfillRequest(client.url, models, tuple(todo)))
            await asyncio.to_thread(_clear_pending, client)
        else:
            lines.append(
                f"note: items written before this migration are not in {', '.join(added)} "
                "until rewritten; the DynamoDB layer's backfill fills them in"
            )
    # every line so far names an action: done, unless this is a dry run
    changed = bool(lines) and not dry_run
    if not lines:
        if waited:
            lines.append(f"waited for the migration lock held by another process; schema "
                         f"already at version {SCHEMA_VERSION}: nothing to do")
        else:
            lines.append(f"{shown} is up to date (schema version {SCHEMA_VERSION})")
    elif waited and not dry_run:
        lines.insert(0, "waited for the migration lock held by another process")
    return MigrationReport(lines, changed=changed, waited=waited, entry=entry)


def _create_table(client: _MigrationTable, spec: dict[str, Any]) -> bool:
    """CreateTable; False when another process created it first (``ResourceInUseException``:
    DynamoDB lets exactly one of several concurrent creations succeed)."""
    try:
        client.call("create_table", **spec)
    except SchemaError as exc:
        if exc.detail == "ResourceInUseException":
            return False
        raise
    return True


def _just_created(table: dict[str, Any]) -> bool:
    """Whether the table was created less than :data:`CREATOR_GRACE` seconds ago."""
    created = table.get("CreationDateTime")
    if not isinstance(created, datetime):
        return False
    return time.time() - created.timestamp() < CREATOR_GRACE


def _let_creator_lock(client: _MigrationTable) -> None:
    """After losing the race to create the table: let its creator take the lock first (it does
    so the moment the table is ACTIVE), so that one process creates and records, and the others
    wait for it. Waits until the lock item or the version item exists, at most
    :data:`CREATOR_GRACE` seconds (a creator that died meanwhile is then taken over)."""
    deadline = time.monotonic() + CREATOR_GRACE
    keys = [_item_key(LOCK_KEY), _item_key(SCHEMA_VERSION_KEY)]
    while time.monotonic() < deadline:
        for key in keys:
            if client.call("get_item", TableName=client.url.table, Key=key,
                           ConsistentRead=True).get("Item"):
                return
        time.sleep(LOCK_POLL)


def _item_key(key: Mapping[str, str]) -> dict[str, Any]:
    return {name: {"S": value} for name, value in key.items()}


@asynccontextmanager
async def _dynamo_lock(client: _MigrationTable, state: LockState,
                       shown: str) -> AsyncIterator[None]:
    """Hold the table's lock item for the block: written only if absent or expired, its expiry
    renewed every third of :data:`LOCK_LEASE` while held, deleted (if still ours) at the end. A
    migration that died leaves the item behind; the next one takes it over once it expired."""
    owner = uuid.uuid4().hex
    while not await asyncio.to_thread(_try_lock, client, owner):
        state.waiting(shown)
        await asyncio.sleep(LOCK_POLL)
    state.held = True
    lost: list[BaseException] = []
    renewal = asyncio.create_task(_renew(client, owner, lost))
    try:
        yield
    finally:
        renewal.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await renewal
        state.held = False
        released = await asyncio.to_thread(_unlock, client, owner)
    if lost or not released:
        raise SchemaError(
            f"the migration lock of {shown} expired while this migration ran (it was not renewed "
            f"within {LOCK_LEASE:g} s); another migration may have run meanwhile: run migrate "
            "again to check the table", detail="lock lost")


def _try_lock(client: _MigrationTable, owner: str) -> bool:
    now = time.time()
    item = {**_item_key(LOCK_KEY), "owner": {"S": owner},
            "lockExpiresAt": {"N": f"{now + LOCK_LEASE:.3f}"}}
    try:
        client.call("put_item", TableName=client.url.table, Item=item,
                    ConditionExpression="attribute_not_exists(#p) OR #e < :now",
                    ExpressionAttributeNames={"#p": PARTITION_KEY, "#e": "lockExpiresAt"},
                    ExpressionAttributeValues={":now": {"N": f"{now:.3f}"}})
    except SchemaError as exc:
        if exc.detail == "ConditionalCheckFailedException":
            return False
        raise
    return True


async def _renew(client: _MigrationTable, owner: str, lost: list[BaseException]) -> None:
    while True:
        await asyncio.sleep(LOCK_LEASE / 3)
        try:
            await asyncio.to_thread(
                client.call, "update_item", TableName=client.url.table, Key=_item_key(LOCK_KEY),
                UpdateExpression="SET #e = :e", ConditionExpression="#o = :o",
                ExpressionAttributeNames={"#e": "lockExpiresAt", "#o": "owner"},
                ExpressionAttributeValues={":e": {"N": f"{time.time() + LOCK_LEASE:.3f}"},
                                           ":o": {"S": owner}})
        except SchemaError as exc:  # the condition failed: taken over; report it at the end
            lost.append(exc)
            return


def _unlock(client: _MigrationTable, owner: str) -> bool:
    try:
        client.call("delete_item", TableName=client.url.table, Key=_item_key(LOCK_KEY),
                    ConditionExpression="#o = :o", ExpressionAttributeNames={"#o": "owner"},
                    ExpressionAttributeValues={":o": {"S": owner}})
    except SchemaError as exc:
        if exc.detail == "ConditionalCheckFailedException":
            return False
        raise
    return True


def _stored_history(stored: Mapping[str, Any]) -> list[HistoryEntry]:
    """The entries of a version item: its ``history`` list, or, for an item an older chainlit-orm
    wrote, one entry of unknown content from its version and time."""
    entries: list[HistoryEntry] = []
    for value in stored.get("history", {}).get("L", []):
        try:
            data = json.loads(value["S"])
        except (KeyError, ValueError):
            continue
        entries.append(HistoryEntry.from_json(
            int(data.get("number", len(entries) + 1)), str(data.get("appliedAt", "")),
            data.get("fingerprint"), int(data.get("version", 0)), data))
    if not entries and "version" in stored:
        entries.append(HistoryEntry(1, int(stored["version"]["N"]),
                                    stored.get("appliedAt", {}).get("S", ""), known=False))
    return entries


async def schema_history_dynamodb(url: str) -> list[HistoryEntry]:
    """The schema history recorded in a table's version item (empty: never migrated)."""
    parsed = parse_dynamodb_url(url)
    shown = f"table {parsed.table} ({mask_url(url)})"
    client = await asyncio.to_thread(_MigrationTable, parsed, shown)
    if await asyncio.to_thread(client.describe) is None:
        return []
    return _stored_history(await asyncio.to_thread(_read_version_item, client))


def _read_version_item(client: _MigrationTable) -> dict[str, Any]:
    item: dict[str, Any] = client.call("get_item", TableName=client.url.table,
                                       Key=_item_key(SCHEMA_VERSION_KEY),
                                       ConsistentRead=True).get("Item") or {}
    return item


def _write_version(client: _MigrationTable, pending: Sequence[str] = (),
                   history: Sequence[HistoryEntry] = ()) -> None:
    item: dict[str, Any] = _item_key(SCHEMA_VERSION_KEY)
    item["version"] = {"N": str(SCHEMA_VERSION)}
    item["appliedAt"] = {"S": utc_now()}
    if history:
        item["fingerprint"] = {"S": history[-1].fingerprint or ""}
        item["history"] = {"L": [{"S": json.dumps(
            {"number": e.number, "appliedAt": e.applied_at, "fingerprint": e.fingerprint,
             **e.to_json(), **({} if e.known else {"unknown": True})}, sort_keys=True)}
            for e in history]}
    if pending:
        item["backfillPending"] = {"L": [{"S": name} for name in pending]}
    client.call("put_item", TableName=client.url.table, Item=item)


def _mark_pending(client: _MigrationTable, indexes: Sequence[str]) -> None:
    key = _item_key(SCHEMA_VERSION_KEY)
    client.call("update_item", TableName=client.url.table, Key=key,
                UpdateExpression="SET backfillPending = :p",
                ExpressionAttributeValues={":p": {"L": [{"S": name} for name in indexes]}})


def _clear_pending(client: _MigrationTable) -> None:
    key = _item_key(SCHEMA_VERSION_KEY)
    client.call("update_item", TableName=client.url.table, Key=key,
                UpdateExpression="REMOVE backfillPending, backfillCursor")
