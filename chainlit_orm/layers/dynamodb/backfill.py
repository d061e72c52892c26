"""The DynamoDB backfill ``chainlit-orm migrate`` runs after adding GSIs: bring items written before
the indexes existed (e.g. by Chainlit's layer) to this layout, through the table client's public
calls and the item layout's derivations."""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, Protocol

from chainlit_orm.layers.dynamodb.config import DynamoConfig
from chainlit_orm.layers.dynamodb.items import (
    FEEDBACK_COUNTERS,
    FEEDBACK_INDEXES,
    LIST_INDEX,
    ItemLayout,
    UpdateExpression,
    string_value,
    table_key,
)
from chainlit_orm.layers.dynamodb.legacy import LEGACY_FEEDBACK, is_phantom, legacy_feedback
from chainlit_orm.layers.dynamodb.table import TableClient
from chainlit_orm.models.rules import USER_MESSAGE, is_favorite
from chainlit_orm.models.types import format_timestamp, parse_timestamp
from chainlit_orm.schema_gen.dynamo import (
    PARTITION_KEY,
    SCHEMA_VERSION_KEY,
    SORT_KEY,
    GsiSpec,
    dynamo_indexes,
    parse_key,
    render_key,
)
from chainlit_orm.schema_gen.pynamo import from_attribute_value, pynamodb_models

if TYPE_CHECKING:
    from chainlit_orm.models.modelset import ModelSet
    from chainlit_orm.urls import DynamoURL


class BackfillTarget(Protocol):
    """What :func:`backfill` reads of the migrator's
    :class:`~chainlit_orm.migrations.report.BackfillRequest`: written as a protocol so this layer
    does not import the migrator's package (which imports this module for its default hook)."""

    @property
    def url(self) -> DynamoURL: ...

    @property
    def models(self) -> ModelSet: ...

__all__ = ["BackfillTarget", "backfill"]

logger = logging.getLogger(__name__)



async def backfill(request: BackfillTarget) -> list[str]:
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
    models = request.models
    config = DynamoConfig(url.table, models=models, region=url.region,
                          endpoint_url=url.endpoint_url, profile=url.profile)
    client = TableClient(config)
    indexes = {spec.name: spec for spec in dynamo_indexes(models)}
    layout = ItemLayout(models, pynamodb_models(models, url.table), indexes,
                        reserved=(LEGACY_FEEDBACK,))
    try:
        return await _TableBackfill(client, layout, indexes).run()
    finally:
        await client.close()


class _TableBackfill:
    """One run of :func:`backfill`: a scan of the table, rewriting items in batches."""

    def __init__(self, client: TableClient, layout: ItemLayout,
                 indexes: Mapping[str, GsiSpec]) -> None:
        self.client = client
        self.layout = layout
        self.indexes = indexes
        self.version_key = {k: string_value(v) for k, v in SCHEMA_VERSION_KEY.items()}
        self.scanned = self.rewritten = self.deleted = self.threads = self.users = 0
        self.done: set[str] = set()

    async def run(self) -> list[str]:
        version = (await self.client.call("get_item", Key=self.version_key, ConsistentRead=True)
                   ).get("Item") or {}
        kwargs: dict[str, Any] = {"ProjectionExpression": "#p, #s",
                                  "ExpressionAttributeNames": {"#p": PARTITION_KEY,
                                                               "#s": SORT_KEY}}
        resumed = "backfillCursor" in version
        if resumed:
            kwargs["ExclusiveStartKey"] = json.loads(version["backfillCursor"]["S"])
        while True:
            page = await self.client.call("scan", **kwargs)
            self.scanned += len(page.get("Items", []))
            for item in page.get("Items", []):
                pk, sk = item[PARTITION_KEY]["S"], item[SORT_KEY]["S"]
                user_keys = self.layout.models.dynamo["user"]
                if parse_key(user_keys.pk, pk) and sk == user_keys.sk:
                    await self.user(pk, sk)
                elif self.layout.thread_of_key(pk) is not None and pk not in self.done:
                    self.done.add(pk)
                    await self.partition(pk)
            last = page.get("LastEvaluatedKey")
            if not last:
                break
            kwargs["ExclusiveStartKey"] = last
            await self.client.call("update_item", Key=self.version_key,
                          UpdateExpression="SET backfillCursor = :c",
                          ExpressionAttributeValues={":c": string_value(json.dumps(last))})
            logger.info("backfill %s: %d items scanned, %d rewritten", self.client.table,
                        self.scanned, self.rewritten)
        return [
            f"backfill{' (resumed)' if resumed else ''}: scanned {self.scanned} items; "
            f"{self.users} users and {self.threads} threads brought to the current layout, "
            f"{self.rewritten} items rewritten, {self.deleted} feedback-only items converted"
        ]

    async def user(self, pk: str, sk: str) -> None:
        item = (await self.client.call("get_item", Key=table_key(pk, sk),
                                       ConsistentRead=True)).get("Item")
        if item is None:
            return
        row = self.layout.user_row(item)
        wanted = self.layout.index_attributes("user", row)
        missing = {a: v for a, v in wanted.items() if item.get(a) != string_value(v)}
        if not missing and "id" in item:
            return
        u = UpdateExpression()
        u.set("id", self.layout.codecs["user"].encode("id", row["id"]), if_absent=True)
        for attribute, value in missing.items():
            u.set(attribute, string_value(value))
        await self.client.call("update_item", Key=table_key(pk, sk), **u.params())
        self.users += 1
        self.rewritten += 1

    async def partition(self, pk: str) -> None:
        items = await self.client.query_all(
            KeyConditionExpression="#p = :p", ExpressionAttributeNames={"#p": PARTITION_KEY},
            ExpressionAttributeValues={":p": string_value(pk)}, ConsistentRead=True)
        thread_id = self.layout.thread_of_key(pk) or ""
        puts: list[dict[str, Any]] = []
        deletes: list[dict[str, Any]] = []
        feedback_items: dict[str, dict[str, Any]] = {}
        thread_item: dict[str, Any] | None = None
        latest_user_message = ""
        for item in items:
            kind = self.layout.kind(item[SORT_KEY]["S"])
            if kind == "feedback":
                row = self.layout.codecs["feedback"].row(item)
                feedback_items[str(row.get("forId"))] = item
        for item in items:
            kind = self.layout.kind(item[SORT_KEY]["S"])
            new = dict(item)
            if kind == "thread":
                thread_item = item
                continue
            if kind == "step":
                legacy = legacy_feedback(item)
                if legacy and legacy["forId"] and str(legacy["forId"]) not in feedback_items:
                    fb_row = {**legacy, "threadId": thread_id}
                    fb_item = {**self.layout.key_of("feedback", threadId=thread_id,
                                           forId=legacy["forId"])}
                    for name, value in fb_row.items():
                        if value is not None:
                            fb_item[name] = self.layout.codecs["feedback"].encode(name, value)
                    derived = self.layout.index_attributes("feedback", fb_row)
                    for attribute, value in derived.items():
                        fb_item[attribute] = string_value(value)
                    feedback_items[str(legacy["forId"])] = fb_item
                    puts.append(fb_item)
                new.pop(LEGACY_FEEDBACK, None)
                if is_phantom(item):
                    deletes.append({PARTITION_KEY: item[PARTITION_KEY], SORT_KEY: item[SORT_KEY]})
                    self.deleted += 1
                    continue
                row = self.layout.codecs["step"].row(item)
                if row.get("type") == USER_MESSAGE and row.get("createdAt"):
                    latest_user_message = max(latest_user_message, str(row["createdAt"]))
                metadata = row.get("metadata")
                if is_favorite(metadata):
                    new["favorite"] = {"BOOL": True}
                parsed = parse_key(self.layout.models.dynamo["step"].sk, item[SORT_KEY]["S"]) or {}
                values = {**row, "id": row.get("id") or parsed.get("id")}
                for attribute, value in self.layout.index_attributes("step", values).items():
                    new[attribute] = string_value(value)
            elif kind == "element":
                row = self.layout.codecs["element"].row(item)
                for attribute, value in self.layout.index_attributes("element", row).items():
                    new[attribute] = string_value(value)
            elif kind == "feedback":
                row = self.layout.codecs["feedback"].row(item)
                for attribute, value in self.layout.index_attributes("feedback", row).items():
                    new[attribute] = string_value(value)
            if new != item:
                puts.append(new)
        if thread_item is not None:
            new = dict(thread_item)
            row = self.layout.codecs["thread"].row(thread_item)
            activity = row.get("activityAt") or latest_user_message or row.get("createdAt")
            if activity:
                activity = format_timestamp(parse_timestamp(str(activity)))
                new["activityAt"] = string_value(activity)
            new.setdefault("id", string_value(thread_id))
            values = {**row, "id": thread_id, "activityAt": activity}
            for attribute, value in self.layout.index_attributes("thread", values).items():
                if attribute not in thread_item or attribute.startswith(LIST_INDEX):
                    new[attribute] = string_value(value)
            counts = {0: 0, 1: 0}
            for fb in feedback_items.values():
                fb_value = from_attribute_value(fb.get("value", {"NULL": True}))
                if fb_value in counts:
                    counts[fb_value] += 1
            for value, counter in FEEDBACK_COUNTERS.items():
                if counts[value] or counter in new:
                    new[counter] = {"N": str(counts[value])}
                spec = self.indexes.get(FEEDBACK_INDEXES[value])
                if spec is None:
                    continue
                declared = next(d for d in self.layout.models.dynamo["thread"].indexes
                                if d.index == spec.name)
                marker = render_key(declared.pk, row) if counts[value] else None
                if marker:
                    new[spec.pk_attribute] = string_value(marker)
                else:
                    new.pop(spec.pk_attribute, None)
            if new != thread_item:
                puts.append(new)
            self.threads += 1
        requests = [{"PutRequest": {"Item": p}} for p in puts]
        requests += [{"DeleteRequest": {"Key": d}} for d in deletes]
        await self.client.batch_write(requests)
        self.rewritten += len(puts)

