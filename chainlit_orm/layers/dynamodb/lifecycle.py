"""The DynamoDB backend's data-lifecycle primitives: erase, purge, trash, TTL.

The rules are in :mod:`chainlit_orm.lifecycle`.

A mixin of :class:`~chainlit_orm.layers.dynamodb.DynamoBackend`, in its own module so the rules
stay in :mod:`chainlit_orm.lifecycle` and each method here is one small primitive.

Invariants:

* **A thread is removed by whoever claims it.** A purge first *claims* an expired thread with a
  conditional update of its thread item (``purgeClaim``, set only when absent or stale, and only
  while the thread is still expired, so activity since the scan wins), and only the claimant
  deletes the partition and reports the thread (so two purges, in two processes, delete and
  hook each thread exactly once). A claim older than :data:`CLAIM_STALE` is taken over: a purge
  that died mid-way does not pin a thread forever.
* **Children first, the thread item last** (as ``delete_thread``): an interrupted removal leaves
  a thread item, which the next purge or erasure finds again.
* **The trash leaves the list index.** A trashed thread's ``UserActivityPK`` is replaced by a
  value no user has and its feedback markers are removed, so no list or search query returns it;
  ``update_thread`` writes those keys only when absent, so a late write (Chainlit's disconnect
  metadata) does not bring it back. ``UserThread`` (Chainlit's index) keeps it, which is how an
  erasure still finds it. ``get_thread``/``get_thread_author`` read ``deletedAt``.
"""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import Sequence
from datetime import timedelta
from typing import TYPE_CHECKING, Any

from chainlit_orm.errors import NotFoundError
from chainlit_orm.layers.deadline import DEFAULT_TIMEOUT
from chainlit_orm.layers.dynamodb.items import (
    FEEDBACK_COUNTERS,
    TEXT_REFS,
    stored_object_keys,
    string_value,
    table_key,
)
from chainlit_orm.layers.dynamodb.table import ConditionFailed
from chainlit_orm.lifecycle.records import ExpiryRule, Removed
from chainlit_orm.models.types import format_timestamp, parse_timestamp, utc_now
from chainlit_orm.schema_gen.dynamo import (
    PARTITION_KEY,
    SORT_KEY,
    TOMBSTONE_PREFIX,
    TOMBSTONE_SORT_KEY,
    TTL_ATTRIBUTE,
    render_key,
    tombstone_key,
)

if TYPE_CHECKING:
    from chainlit.data.storage_clients.base import BaseStorageClient


#: What ``self`` is in these methods: the DynamoBackend this class is mixed into. ``Any``,
#: because a mixin's ``self`` cannot be annotated with its subclass (mypy), nor can the
#: subclass be its base (a cycle); ``tests/lifecycle`` runs every primitive on every backend.
_DynamoSelf = Any

__all__ = ["CLAIM_ATTRIBUTE", "TRASHED", "DynamoLifecycle"]

#: The thread-item attribute a purge claims a thread with: "<claimed at, epoch s>#<token>".
CLAIM_ATTRIBUTE = "purgeClaim"
#: Seconds after which another purge may take over a claim (its purge died).
CLAIM_STALE = 900
#: The ``UserActivityPK`` of a trashed thread: a partition of the list index no user reads.
TRASHED = "TRASHED"
#: Partitions removed at once.
PARALLEL = 8
#: Where the files of threads are stored: what the orphan sweep lists.
ORPHAN_PREFIX = "threads"


class DynamoLifecycle:
    """Lifecycle primitives of :class:`~chainlit_orm.layers.dynamodb.DynamoBackend`."""

    # -------------------------------------------------------------------- TTL

    def _set_expiry(self: _DynamoSelf, update: Any, activity: str, *,
                    if_absent: bool = False) -> None:
        """With ``retention``: the thread item's TTL, ``activity`` plus the retention, in
        epoch seconds (rounded up, so an item never goes before its time)."""
        value = self.expiry_value(activity)
        if value is not None:
            update.set(TTL_ATTRIBUTE, value, if_absent=if_absent)

    def expiry_value(self: _DynamoSelf, activity: str) -> dict[str, str] | None:
        """The TTL attribute's value for a thread last active at ``activity``: the activity
        plus the retention, in epoch seconds (rounded up, so an item never goes before its
        time); None without ``retention``. Also what ``copy``/``import`` write on the thread
        items they put whole."""
        if self.retention is None:
            return None
        moment = parse_timestamp(activity) + self.retention
        epoch = int(moment.timestamp()) + (moment.microsecond > 0)
        return {"N": str(epoch)}

    def _expired(self: _DynamoSelf, item: Any) -> bool:
        """The thread item is past the retention: it reads as gone, whenever DynamoDB (TTL
        deletion runs in the background) or a purge removes it.

        One rule for every read: the thread's activity against the layer's *current*
        retention, never the stored ``expiresAt``. The list index does not project
        ``expiresAt`` (and a projection cannot change in place), so the lists can only apply
        this rule; were ``get_thread`` to read ``expiresAt``, a retention changed between
        deploys would list threads that then open as not found (or the reverse). With an
        unchanged retention the two agree (``expiresAt`` is activity plus retention); after a
        change, DynamoDB may still remove a thread at its old ``expiresAt`` (list, get and
        search then all stop seeing it together, since the GSI entries go with the item)."""
        activity = item.get("activityAt")
        if self.retention is None or not activity:
            return False
        value = self.codecs["thread"].decode("activityAt", activity)
        return bool(value) and str(value) < _cutoff(self.retention)

    def _readable(self: _DynamoSelf, item: Any) -> bool:
        """A thread item every read shows: neither trashed nor past the retention."""
        return "deletedAt" not in item and not self._expired(item)

    def _stale(self: _DynamoSelf, row: dict[str, Any]) -> bool:
        """A listed thread (the list index carries no TTL) is past the retention: its activity
        is older than ``retention``."""
        if self.retention is None or not row.get("activityAt"):
            return False
        return str(row["activityAt"]) < _cutoff(self.retention)

    # ---------------------------------------------------------------- orphans

    async def known_object_keys(self: _DynamoSelf, object_keys: Sequence[str]) -> None:
        """None: no lookup by object key here. :meth:`sweep_orphans` removes the files of
        threads that no longer exist, and an element's file is named after its thread, so the
        SQL sweep of unreferenced files has nothing to add."""
        return None

    async def sweep_orphans(self: _DynamoSelf, storage: BaseStorageClient | None, *,
                            dry_run: bool = False,
                            storage_timeout: float = DEFAULT_TIMEOUT) -> tuple[int, int]:
        """What DynamoDB's TTL leaves behind, removed: the other items of threads whose thread
        item is gone, and the stored objects (``threads/{id}/...``) of threads that no longer
        exist. Returns how many such threads had items and how many objects were removed (dry:
        would be). Objects need a storage client that can list
        (:class:`~chainlit_orm.storage.protocols.ListableStorage`); with another one (or none)
        only the items are swept. The listing and each delete are bounded by
        ``storage_timeout`` and by what is left of the caller's deadline
        (:func:`~chainlit_orm.lifecycle.hooks.storage_call`).

        Raises:
            StorageTimeoutError: the listing or a delete did not finish within its bound
                (nothing of the storage is deleted when it is the listing).
        """
        from chainlit_orm.lifecycle.hooks import finish_removal, storage_call
        from chainlit_orm.storage.protocols import ListableStorage

        partitions, live = await self._sweep_orphan_items(dry_run)
        if not isinstance(storage, ListableStorage):
            return partitions, 0
        listable = storage
        keys = await storage_call(storage, "list_keys", ORPHAN_PREFIX,
                                  lambda: listable.list_keys(ORPHAN_PREFIX), storage_timeout,
                                  early=True)
        by_thread: dict[str, list[str]] = {}
        for key in keys:
            parts = key.split("/")
            if len(parts) >= 3:
                by_thread.setdefault(parts[1], []).append(key)
        # threads the scan saw alive keep their files; the others are looked up again
        gone = await self._missing_threads(sorted(set(by_thread) - live))
        doomed = [key for thread_id in gone for key in by_thread[thread_id]]
        if not dry_run and doomed:
            outcome = await finish_removal(Removed(object_keys=doomed), storage, None,
                                           storage_timeout=storage_timeout)
            outcome.raise_storage()
        return partitions, len(doomed)

    async def _missing_threads(self: _DynamoSelf, thread_ids: list[str]) -> list[str]:
        """Which of these thread ids have no live thread item (absent, or past its TTL)."""
        present: set[str] = set()
        for start in range(0, len(thread_ids), 100):
            keys = [self.layout.key_of("thread", id=t) for t in thread_ids[start:start + 100]]
            for item in await self.batch_get(keys):
                if not self._expired(item):
                    thread_id = self.layout.thread_of_key(item[PARTITION_KEY]["S"])
                    if thread_id:
                        present.add(thread_id)
        return [t for t in thread_ids if t not in present]

    async def _sweep_orphan_items(self: _DynamoSelf, dry_run: bool) -> tuple[int, set[str]]:
        """Remove the items of thread partitions whose thread item is gone (or past its TTL).

        One consistent Scan of keys: a partition whose live thread item the scan saw is no
        orphan; only the others (in steady state none) are looked up again, since a thread
        created while the scan ran may have its thread item behind the scan's position.
        Returns the number of orphaned threads and the ids of the live threads seen."""
        kwargs: dict[str, Any] = {"ProjectionExpression": "#p, #s, #a",
                                  "ExpressionAttributeNames": {"#p": PARTITION_KEY,
                                                               "#s": SORT_KEY,
                                                               "#a": "activityAt"},
                                  "ConsistentRead": True}
        children: set[str] = set()
        live: set[str] = set()
        while True:
            page = await self.call("scan", **kwargs)
            for item in page.get("Items", []):
                thread_id = self.layout.thread_of_key(item[PARTITION_KEY]["S"])
                if not thread_id:
                    continue
                if self.layout.kind(item[SORT_KEY]["S"]) != "thread":
                    children.add(thread_id)
                elif not self._expired(item):
                    live.add(thread_id)
            if not page.get("LastEvaluatedKey"):
                break
            kwargs["ExclusiveStartKey"] = page["LastEvaluatedKey"]
        orphans = await self._missing_threads(sorted(children - live))
        if not dry_run:
            await self._each(orphans, False)
        return len(orphans), live

    # ---------------------------------------------------------------- helpers

    async def _partition(self: _DynamoSelf, thread_id: str) -> list[dict[str, Any]]:
        """Every item of the thread's partition: keys, object references, owner, favorite."""

        result: list[dict[str, Any]] = await self.query_all(
            KeyConditionExpression="#p = :p",
            ExpressionAttributeNames={"#p": PARTITION_KEY, "#s": SORT_KEY, "#o": "objectKey",
                                      "#i": TEXT_REFS["input"], "#t": TEXT_REFS["output"],
                                      "#u": "userId", "#f": "favorite", "#m": "metadata"},
            ExpressionAttributeValues={
                ":p": self.layout.key_of("thread", id=thread_id)[PARTITION_KEY]},
            ProjectionExpression="#p, #s, #o, #i, #t, #u, #f, #m.#f",
            ConsistentRead=True,
        )
        return result

    def _count(self: _DynamoSelf, thread_id: str, items: list[dict[str, Any]]) -> Removed:
        """What removing ``items`` (one partition) removes, per entity."""

        removed = Removed()
        owner = None
        for item in items:
            kind = self.layout.kind(item[SORT_KEY]["S"])
            if kind is not None:
                removed.counts[kind] += 1
            if kind == "thread" and "userId" in item:
                owner = self.codecs["thread"].decode("userId", item["userId"])
        if removed.counts["thread"]:
            removed.threads.append((thread_id, None if owner is None else str(owner)))
        removed.object_keys = stored_object_keys(items)
        return removed

    async def _remove_partition(self: _DynamoSelf, thread_id: str,
                                items: list[dict[str, Any]] | None = None) -> Removed:
        """Remove one thread's items, children first, among this process's writes of it alone
        (as ``delete_thread``); ``items``: the partition already read."""
        async with self._deleting(thread_id):
            if items is None:
                items = await self._partition(thread_id)
            removed = self._count(thread_id, items)
            thread_sk = self.models.dynamo["thread"].sk
            items.sort(key=lambda item: item[SORT_KEY]["S"] == thread_sk)
            await self.batch_write([
                {"DeleteRequest": {"Key": {PARTITION_KEY: i[PARTITION_KEY],
                                           SORT_KEY: i[SORT_KEY]}}} for i in items
            ], last_after_rest=True)
            self._activity.pop(thread_id, None)
            self._deleted[thread_id] = None
            result: Removed = removed
            return result

    async def _remove_claimed(self: _DynamoSelf, thread_id: str, items: list[dict[str, Any]],
                              rule: ExpiryRule, token: str) -> Removed | None:
        """A purge's removal of a thread it claimed: the thread item first, in one conditional
        delete that re-checks, atomically, that the claim is still this purge's and that the
        thread is still expired (a user message since the claim moved its activity); then the
        rest of the partition as read. None: the condition failed, nothing was removed. Costs
        one DeleteItem per thread more than a plain removal: the price of the re-check.

        The opposite of ``delete_thread``'s order (children first) on purpose: deleting the
        children first would lose a thread's history when the check on its item then fails.
        Should the purge stop between the two, the items left without a thread item are what
        ``sweep_orphans`` (run by every purge) removes."""
        names = {"#c": CLAIM_ATTRIBUTE}
        values: dict[str, Any] = {":token": {"S": token}}
        expired = self._expiry(rule, names, values)
        async with self._deleting(thread_id):
            try:
                await self.call(
                    "delete_item", Key=self.layout.key_of("thread", id=thread_id),
                    ConditionExpression=f"#c = :token AND {expired}",
                    ExpressionAttributeNames=names, ExpressionAttributeValues=values)
            except ConditionFailed:
                return None
            thread_sk = self.models.dynamo["thread"].sk
            removed: Removed = self._count(thread_id, items)
            # a step written between the read and the delete is left without a thread item:
            # the orphan sweep at the end of the purge removes it (and its files)
            rest = [i for i in items if i[SORT_KEY]["S"] != thread_sk]
            await self.batch_write([
                {"DeleteRequest": {"Key": {PARTITION_KEY: i[PARTITION_KEY],
                                           SORT_KEY: i[SORT_KEY]}}} for i in rest])
            self._activity.pop(thread_id, None)
            self._deleted[thread_id] = None
            return removed

    async def _each(self: _DynamoSelf, thread_ids: Sequence[str], dry_run: bool) -> Removed:
        gate = asyncio.Semaphore(PARALLEL)

        async def one(thread_id: str) -> Removed:
            async with gate:
                if dry_run:
                    counted: Removed = self._count(thread_id, await self._partition(thread_id))
                    return counted
                removed: Removed = await self._remove_partition(thread_id)
                return removed

        total = Removed()
        for removed in await asyncio.gather(*(one(t) for t in thread_ids)):
            total.add(removed)
        return total

    # ---------------------------------------------------------------- threads

    async def get_thread_owner(self: _DynamoSelf, thread_id: str) -> dict[str, Any] | None:
        item = (await self.call(
            "get_item", Key=self.layout.key_of("thread", id=thread_id), ConsistentRead=True,
            ProjectionExpression="#i, #u", ExpressionAttributeNames={"#i": "id", "#u": "userId"},
        )).get("Item")
        if item is None:
            return None
        row = self.codecs["thread"].row(item)
        return {"id": thread_id, "userId": row.get("userId")}

    async def remove_threads(self: _DynamoSelf, thread_ids: Sequence[str], *,
                             dry_run: bool = False, keys_only: bool = False) -> Removed:
        # keys_only (the object keys, to delete the files first): a partition read gives them
        # with the counts, at the same cost
        dry_run = dry_run or keys_only
        if not dry_run:
            self._mark_erased(thread_ids)
            await self._write_tombstones(thread_ids)
        result: Removed = await self._each(list(thread_ids), dry_run)
        return result

    # -------------------------------------------------------------- tombstones

    def _tombstone(self: _DynamoSelf, thread_id: str) -> dict[str, Any]:
        """The key of the thread's tombstone (``schema_gen.dynamo.tombstone_key``)."""
        key = tombstone_key(thread_id)
        return table_key(key[PARTITION_KEY], key[SORT_KEY])

    async def _write_tombstones(self: _DynamoSelf, thread_ids: Sequence[str]) -> None:
        """Before an erasure deletes these threads: their tombstones (id and time, nothing of
        the user), which a write of any process checks before it creates one of them again.

        Written first, so whatever order a writer of another process takes, it either meets
        the tombstone or wrote before it, and then the partition read that follows sees what
        it wrote (reads are strongly consistent)."""
        now = string_value(utc_now())
        await self.batch_write([{"PutRequest": {"Item": {**self._tombstone(t), "erasedAt": now}}}
                                for t in dict.fromkeys(thread_ids)])

    def _not_erased(self: _DynamoSelf, thread_id: str) -> dict[str, Any]:
        """A transaction's check that no tombstone names the thread: the action that makes a
        transaction creating the thread item fail for an erased thread (its cancellation
        reason is then ``ConditionalCheckFailed``)."""
        return {"ConditionCheck": {"TableName": self.table, "Key": self._tombstone(thread_id),
                                   "ConditionExpression": "attribute_not_exists(#p)",
                                   "ExpressionAttributeNames": {"#p": PARTITION_KEY}}}

    async def _is_erased(self: _DynamoSelf, thread_id: str) -> bool:
        found = await self.call("get_item", Key=self._tombstone(thread_id), ConsistentRead=True,
                                ProjectionExpression="#p",
                                ExpressionAttributeNames={"#p": PARTITION_KEY})
        return "Item" in found

    def _erased_error(self: _DynamoSelf, thread_id: str) -> NotFoundError:
        """The refusal of a write to an erased thread (the SQL backends raise the same), which
        this process then refuses without asking again."""
        self._mark_erased([thread_id])
        self._deleted[thread_id] = None
        return NotFoundError(f"thread {thread_id} was erased with its user", detail=thread_id)

    def _mark_erased(self: _DynamoSelf, thread_ids: Sequence[str]) -> None:
        """Remember threads an erasure removes (see ``_erased``), before they go."""
        for thread_id in thread_ids:
            self._erased[thread_id] = None
            self._erased.move_to_end(thread_id)
        while len(self._erased) > 10_000:
            self._erased.popitem(last=False)

    # ------------------------------------------------------------------ users

    async def _owned(self: _DynamoSelf, user_id: str) -> list[str]:
        """Ids of the threads whose owner is ``user_id``, through Chainlit's owner index (which
        keeps trashed threads)."""
        spec = self.layout.owner_index
        pk = render_key(spec.entities["thread"].pk, {"userId": user_id}) or ""
        items = await self.query_all(
            IndexName=spec.name, KeyConditionExpression="#p = :p",
            ExpressionAttributeNames={"#p": spec.pk_attribute, "#k": PARTITION_KEY},
            ExpressionAttributeValues={":p": {"S": pk}}, ProjectionExpression="#k")
        ids = {self.layout.thread_of_key(item[PARTITION_KEY]["S"]) for item in items}
        return sorted(i for i in ids if i)

    async def _named(self: _DynamoSelf, identifier: str
                     ) -> tuple[str | None, list[str], list[str]]:
        """With no user item left (an erasure interrupted after deleting it, or run again):
        the threads whose owner fields still name ``identifier``, by one Scan (an erasure is
        rare; without the user item there is no id to query the owner index with). Returns the
        owner id they carry (the first seen), their ids, and the ids of every tombstone the
        same Scan met (the rerun's sweep of late writes, see ``user_thread_ids``)."""
        kwargs: dict[str, Any] = {
            "FilterExpression": "(#s = :s AND (#ui = :ident OR #u = :ident)) OR "
                                "(#s = :erased AND begins_with(#p, :tomb))",
            "ExpressionAttributeNames": {"#s": SORT_KEY, "#ui": "userIdentifier",
                                         "#u": "userId", "#p": PARTITION_KEY},
            "ExpressionAttributeValues": {":s": {"S": self.models.dynamo["thread"].sk},
                                          ":ident": {"S": identifier},
                                          ":erased": {"S": TOMBSTONE_SORT_KEY},
                                          ":tomb": {"S": TOMBSTONE_PREFIX}},
            "ProjectionExpression": "#p, #u", "ConsistentRead": True}
        items: list[dict[str, Any]] = []
        while True:
            page = await self.call("scan", **kwargs)
            items.extend(page.get("Items", []))
            if not page.get("LastEvaluatedKey"):
                break
            kwargs["ExclusiveStartKey"] = page["LastEvaluatedKey"]
        erased = sorted(i[PARTITION_KEY]["S"][len(TOMBSTONE_PREFIX):] for i in items
                        if i[PARTITION_KEY]["S"].startswith(TOMBSTONE_PREFIX))
        items = [i for i in items if not i[PARTITION_KEY]["S"].startswith(TOMBSTONE_PREFIX)]
        user_id = next((self.codecs["thread"].decode("userId", i["userId"]) for i in items
                        if "userId" in i), None)
        ids = {self.layout.thread_of_key(item[PARTITION_KEY]["S"]) for item in items}
        return (None if user_id is None else str(user_id)), sorted(i for i in ids if i), erased

    async def _not_empty(self: _DynamoSelf, thread_ids: Sequence[str]) -> list[str]:
        """Which of these (erased) threads' partitions still hold an item: a Query of at most
        one key each, :data:`PARALLEL` at once."""
        gate = asyncio.Semaphore(PARALLEL)

        async def one(thread_id: str) -> bool:
            async with gate:
                page = await self.call(
                    "query", KeyConditionExpression="#p = :p", Limit=1,
                    ExpressionAttributeNames={"#p": PARTITION_KEY},
                    ExpressionAttributeValues={
                        ":p": self.layout.key_of("thread", id=thread_id)[PARTITION_KEY]},
                    ProjectionExpression="#p", ConsistentRead=True)
                return bool(page.get("Items"))

        found = await asyncio.gather(*(one(t) for t in thread_ids))
        return [t for t, full in zip(thread_ids, found, strict=True) if full]

    async def user_thread_ids(self: _DynamoSelf, identifier: str
                              ) -> tuple[str | None, list[str]]:
        """The user's threads. With no user item (an erasure run again, or interrupted), also
        every erased thread whose partition is not empty: a step or element another process
        wrote after the erasure lands without reading the thread (see ``_not_erased``), and
        nothing names the user any more to find it by; the Scan that looks for the owner
        fields meets the tombstones too, and a Query per tombstone finds the partitions that
        still hold something. The erasure then removes them with their files."""
        user = await self.get_user(identifier)
        if user is None:
            user_id, named, erased = await self._named(identifier)
            late = await self._not_empty([t for t in erased if t not in set(named)])
            if user_id is None:
                return None, sorted({*named, *late})
            return user_id, sorted({*named, *late, *await self._owned(user_id)})
        return str(user["id"]), await self._owned(str(user["id"]))

    async def remove_user(self: _DynamoSelf, identifier: str, *, dry_run: bool = False
                          ) -> Removed:
        """The user item (with its ``ById`` index entry) first, then every thread the owner
        index still lists for the user.

        In that order because a write that names an owner is one transaction with a check that
        the owner's user item exists (``_owner_write``): once the item is gone no thread can be
        given the user, so the sweep after it finds every thread that ever will name them (a
        session still writing gets NotFoundError). Should the erasure stop between the two, a
        re-run finds the threads by their owner fields (``user_thread_ids``)."""
        user = await self.get_user(identifier)
        removed = Removed()
        if dry_run:
            removed.counts["user"] = 0 if user is None else 1
            return removed
        user_id = None if user is None else str(user["id"])
        if user is not None:
            old = (await self.call("delete_item",
                                   Key=self.layout.key_of("user", identifier=identifier),
                                   ReturnValues="ALL_OLD")).get("Attributes")
            removed.counts["user"] += 1 if old else 0
        if user_id is None:
            user_id, _, _ = await self._named(identifier)
        if user_id is None:
            return removed
        self._identifiers.pop(user_id, None)
        # the owner index is eventually consistent: sweep until a pass finds nothing more (a
        # pass that removes no thread met only index entries of threads already gone)
        while owned := await self._owned(user_id):
            self._mark_erased(owned)
            await self._write_tombstones(owned)
            swept = await self._each(owned, False)
            removed.add(swept)
            if not swept.counts["thread"]:
                break
        return removed

    # ------------------------------------------------------------------ purge

    def _expiry(self: _DynamoSelf, rule: ExpiryRule, names: dict[str, str],
                values: dict[str, Any]) -> str:
        """The condition (for a Scan filter and for the claim) that a thread item is expired."""
        names["#at"] = "deletedAt" if rule.trashed_before else "activityAt"
        values[":cutoff"] = {"S": rule.trashed_before or rule.active_before}
        parts = ["#at < :cutoff"]
        if rule.active_before and rule.keep_keys:
            names["#m"] = "metadata"
            values[":true"] = {"BOOL": True}
            values[":bool"] = {"S": "BOOL"}
            # only JSON true keeps a thread (as on SQL); the type test comes first because an
            # equality alone also matches {"N": "1"} on moto, which compares decoded values
            for k, key in enumerate(rule.keep_keys):
                names[f"#k{k}"] = key
                parts.append(f"NOT (attribute_type(#m.#k{k}, :bool) AND #m.#k{k} = :true)")
        return " AND ".join(parts)

    async def purge_expired(self: _DynamoSelf, rule: ExpiryRule, *, batch: int, after: Any,
                            dry_run: bool = False, keys_only: bool = False
                            ) -> tuple[Removed, Any]:
        """One Scan page (``Limit=batch`` items read) of expired thread items; each claimed,
        checked for favorites, and removed. Returns the page's ``LastEvaluatedKey`` as the
        cursor (None: the scan is done). ``keys_only`` is a dry run (it reads the partitions,
        which give the object keys): a purge with a storage deletes those files first, then
        removes the threads with :meth:`remove_expired`."""
        dry_run = dry_run or keys_only
        names: dict[str, str] = {"#s": SORT_KEY, "#p": PARTITION_KEY}
        values: dict[str, Any] = {":thread": {"S": self.models.dynamo["thread"].sk}}
        expired = self._expiry(rule, names, values)
        kwargs: dict[str, Any] = {
            "FilterExpression": f"#s = :thread AND {expired}",
            "ExpressionAttributeNames": names, "ExpressionAttributeValues": values,
            "ProjectionExpression": "#p", "Limit": batch, "ConsistentRead": True,
        }
        if after is not None:
            kwargs["ExclusiveStartKey"] = after
        page = await self.call("scan", **kwargs)
        ids = [t for t in (self.layout.thread_of_key(i[PARTITION_KEY]["S"])
                           for i in page.get("Items", [])) if t]
        favorites = rule.keep_favorites and rule.active_before is not None
        gate = asyncio.Semaphore(PARALLEL)

        async def one(thread_id: str) -> Removed:
            async with gate:
                if dry_run:
                    items = await self._partition(thread_id)
                    return Removed() if favorites and _has_favorite(items) else self._count(
                        thread_id, items)
                purged: Removed = await self._purge_one(thread_id, rule)
                return purged

        removed = Removed()
        for one_removed in await asyncio.gather(*(one(t) for t in ids)):
            removed.add(one_removed)
        return removed, page.get("LastEvaluatedKey")

    async def _purge_one(self: _DynamoSelf, thread_id: str, rule: ExpiryRule) -> Removed:
        """Claim, check and remove one expired thread (nothing when another purge has it or it
        is no longer expired)."""
        favorites = rule.keep_favorites and rule.active_before is not None
        token = await self._claim(thread_id, rule)
        if token is None:
            return Removed()  # another purge has it, or it is no longer expired
        items = await self._partition(thread_id)
        if favorites and _has_favorite(items):
            await self._release(thread_id, token)
            return Removed()
        result: Removed | None = await self._remove_claimed(thread_id, items, rule, token)
        if result is None:  # activity since the claim: the thread stays, untouched
            await self._release(thread_id, token)
            return Removed()
        return result

    async def remove_expired(self: _DynamoSelf, rule: ExpiryRule, thread_ids: Sequence[str]
                             ) -> Removed:
        """Remove those of these threads (a ``keys_only`` page of :meth:`purge_expired`, whose
        files were deleted first) that ``rule`` still expires, each claimed as in a purge:
        exactly once across purges, and a thread a user message reached since keeps its
        history."""
        gate = asyncio.Semaphore(PARALLEL)

        async def one(thread_id: str) -> Removed:
            async with gate:
                purged: Removed = await self._purge_one(thread_id, rule)
                return purged

        removed = Removed()
        for one_removed in await asyncio.gather(*(one(t) for t in thread_ids)):
            removed.add(one_removed)
        return removed

    async def _claim(self: _DynamoSelf, thread_id: str, rule: ExpiryRule) -> str | None:
        """Claim the thread for this purge; None when another purge holds it or it is no
        longer expired (the condition is checked atomically with the claim)."""
        import time


        now = int(time.time())
        token = f"{now:012d}#{uuid.uuid4().hex}"  # time first: claims compare by age
        names = {"#c": CLAIM_ATTRIBUTE, "#p": PARTITION_KEY}
        values: dict[str, Any] = {":token": {"S": token},
                                  ":stale": {"S": f"{now - CLAIM_STALE:012d}#"}}
        expired = self._expiry(rule, names, values)
        try:
            await self.call(
                "update_item", Key=self.layout.key_of("thread", id=thread_id),
                UpdateExpression="SET #c = :token",
                ConditionExpression=(f"attribute_exists(#p) AND {expired} AND "
                                     "(attribute_not_exists(#c) OR #c < :stale)"),
                ExpressionAttributeNames=names, ExpressionAttributeValues=values)
        except ConditionFailed:
            return None
        return token

    async def _release(self: _DynamoSelf, thread_id: str, token: str) -> None:
        # a claim taken over as stale meanwhile is the other purge's to decide
        with contextlib.suppress(ConditionFailed):
            await self.call(
                "update_item", Key=self.layout.key_of("thread", id=thread_id),
                UpdateExpression="REMOVE #c", ConditionExpression="#c = :token",
                ExpressionAttributeNames={"#c": CLAIM_ATTRIBUTE},
                ExpressionAttributeValues={":token": {"S": token}})

    # ------------------------------------------------------------------ trash

    def _list_keys(self: _DynamoSelf) -> tuple[str, list[str]]:
        """The list index's owner attribute and the feedback markers' attributes."""

        markers = [marker[0] for value in FEEDBACK_COUNTERS
                   if (marker := self.layout.feedback_marker(value, None)) is not None]
        return self.layout.list_index.pk_attribute, markers

    def hide_trashed(self: _DynamoSelf, item: dict[str, Any]) -> None:
        """Give a whole thread item that carries ``deletedAt`` the list-index keys
        :meth:`trash_thread` leaves (owner partition :data:`TRASHED`, no feedback markers).
        For writers of whole items (``chainlit-orm copy``/``import``): ``deletedAt`` alone
        hides the thread from ``get_thread`` but not from the list and search queries."""
        owner, markers = self._list_keys()
        item[owner] = {"S": TRASHED}
        for marker in markers:
            item.pop(marker, None)

    async def trash_thread(self: _DynamoSelf, thread_id: str, at: str) -> bool:
        owner, markers = self._list_keys()
        names = {"#p": PARTITION_KEY, "#d": "deletedAt", "#o": owner}
        names |= {f"#m{k}": name for k, name in enumerate(markers)}
        removes = ", ".join(f"#m{k}" for k in range(len(markers)))
        async with self._thread_lock(thread_id):
            try:
                await self.call(
                    "update_item", Key=self.layout.key_of("thread", id=thread_id),
                    UpdateExpression="SET #d = :at, #o = :trashed"
                                     + (f" REMOVE {removes}" if removes else ""),
                    ConditionExpression="attribute_exists(#p) AND attribute_not_exists(#d)",
                    ExpressionAttributeNames=names,
                    ExpressionAttributeValues={":at": {"S": at}, ":trashed": {"S": TRASHED}})
            except ConditionFailed:
                return False
        return True

    async def restore_thread(self: _DynamoSelf, thread_id: str, since: str) -> bool:
        owner_attribute, _ = self._list_keys()
        key = self.layout.key_of("thread", id=thread_id)
        async with self._thread_lock(thread_id):
            item = (await self.call("get_item", Key=key, ConsistentRead=True)).get("Item")
            if item is None:
                return False
            user_id = self.codecs["thread"].row(item).get("userId")
            declared = self.layout.list_index.entities["thread"]
            owner = render_key(declared.pk, {"userId": user_id}) if user_id else None
            names = {"#d": "deletedAt", "#o": owner_attribute}
            values: dict[str, Any] = {":since": {"S": since}}
            if owner:
                update = "REMOVE #d SET #o = :owner"
                values[":owner"] = {"S": owner}
            else:
                update = "REMOVE #d, #o"
            try:
                result = await self.call(
                    "update_item", Key=key, UpdateExpression=update,
                    ConditionExpression="#d >= :since", ExpressionAttributeNames=names,
                    ExpressionAttributeValues=values, ReturnValues="ALL_NEW")
            except ConditionFailed:
                return False
        await self._sync_feedback_markers(key, result.get("Attributes", {}))
        return True


def _cutoff(retention: timedelta) -> str:
    from datetime import UTC, datetime

    return format_timestamp(datetime.now(UTC) - retention)


def _has_favorite(items: list[dict[str, Any]]) -> bool:
    """A step is favorited: our ``favorite`` attribute, or (items Chainlit's own layer wrote)
    ``metadata.favorite``, as ``get_favorite_steps`` reads it."""
    true = {"BOOL": True}
    return any(item.get("favorite") == true
               or item.get("metadata", {}).get("M", {}).get("favorite") == true for item in items)
