"""DynamoDB targets on moto's server: Chainlit's ``DynamoDBDataLayer`` on its documented table, and
the boto3 floor (calls run in a 32-thread pool)."""

from __future__ import annotations

import asyncio
import base64
import json
import os
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from boto3.dynamodb.types import TypeDeserializer, TypeSerializer
from chainlit.types import PageInfo, PaginatedResponse, Pagination, ThreadFilter
from chainlit.user import PersistedUser

from ..dataset import Dataset, ThreadRec
from .base import LayerTarget, Target

ENDPOINT = os.environ.get("BENCH_DYNAMODB_URL", "http://127.0.0.1:5055")
REGION = "us-east-1"
_ser = TypeSerializer()
_de = TypeDeserializer()


# moto answers a GSI Query by scanning and sorting the whole table in Python, so list_threads
# timings on moto grow with the table, whatever the layer does: W2 on DynamoDB stops at this N.
MAX_W2_N = 1000
# moto serves ~50 writes/s and answers a GSI Query by a scan: the DynamoDB targets run lighter
# (see Target.scale_overrides and bench/README.md).
# W1 bursts: none (with one wave, W1 c=32 on moto is itself one burst of 32 threads)
MOTO_SCALE = {"w1_threads_c1": 8, "w1_waves": 1, "w1_bursts": 0, "w2_reps": 3, "w3_reps": 3,
              "w5_iters": 1}


def set_endpoint(url: str) -> None:
    global ENDPOINT
    ENDPOINT = url


def client() -> Any:
    import boto3
    from botocore.config import Config

    return boto3.client("dynamodb", endpoint_url=ENDPOINT, region_name=REGION,
                        aws_access_key_id="bench", aws_secret_access_key="bench",
                        config=Config(max_pool_connections=64, retries={"max_attempts": 2},
                                      read_timeout=300))


def ser(item: dict[str, Any]) -> dict[str, Any]:
    return {k: _ser.serialize(v) for k, v in item.items() if v is not None}


def de(item: dict[str, Any]) -> dict[str, Any]:
    return {k: _de.deserialize(v) for k, v in item.items()}


def create_table(c: Any, name: str, gsi_attrs: list[str]) -> None:
    try:
        c.delete_table(TableName=name)
        c.get_waiter("table_not_exists").wait(TableName=name)
    except c.exceptions.ResourceNotFoundException:
        pass
    c.create_table(
        TableName=name, BillingMode="PAY_PER_REQUEST",
        AttributeDefinitions=[{"AttributeName": a, "AttributeType": "S"}
                              for a in ("PK", "SK", "UserThreadPK", "UserThreadSK")],
        KeySchema=[{"AttributeName": "PK", "KeyType": "HASH"},
                   {"AttributeName": "SK", "KeyType": "RANGE"}],
        GlobalSecondaryIndexes=[{
            "IndexName": "UserThread",
            "KeySchema": [{"AttributeName": "UserThreadPK", "KeyType": "HASH"},
                          {"AttributeName": "UserThreadSK", "KeyType": "RANGE"}],
            "Projection": {"ProjectionType": "INCLUDE", "NonKeyAttributes": gsi_attrs}}])


def batch_put(c: Any, table: str, items: list[dict[str, Any]], threads: int = 8) -> None:
    batch_put_raw(c, table, [ser(it) for it in items], threads)


def batch_put_raw(c: Any, table: str, items: list[dict[str, Any]], threads: int = 8) -> None:
    """``batch_put`` of items already in DynamoDB's attribute-value form."""
    chunks = [items[i:i + 25] for i in range(0, len(items), 25)]

    def put(chunk: list[dict[str, Any]]) -> None:
        req = {table: [{"PutRequest": {"Item": it}} for it in chunk]}
        while req:
            req = c.batch_write_item(RequestItems=req).get("UnprocessedItems") or None

    with ThreadPoolExecutor(threads) as ex:
        list(ex.map(put, chunks))


def loaded_threads(ds: Dataset) -> Iterator[tuple[ThreadRec, bool]]:
    """The threads every DynamoDB target loads, each with whether its children are loaded too.

    W2's threads are only listed (GSI) and searched by name: their step items are never read on
    DynamoDB, and moto loads ~3x faster without them. Users above ``MAX_W2_N`` threads are left
    out."""
    listed_only = {id(t) for t in ds.threads if t.user in ds.w2_users.values()}
    too_big = {u.id for n, u in ds.w2_users.items() if n > MAX_W2_N}
    for t in ds.threads:
        if t.user.id not in too_big:
            yield t, id(t) not in listed_only


def layout(ds: Dataset, user_key: Any) -> list[dict[str, Any]]:
    """Chainlit's single-table layout (contract section 3.3), feedback embedded in the step."""
    items: list[dict[str, Any]] = []
    for u in ds.users:
        items.append({"PK": f"USER#{u.identifier}", "SK": "USER", "id": user_key(u),
                      "identifier": u.identifier, "metadata": u.metadata,
                      "createdAt": u.created_at})
    for t, with_children in loaded_threads(ds):
        uk = user_key(t.user)
        items.append({"PK": f"THREAD#{t.id}", "SK": "THREAD", "UserThreadPK": f"USER#{uk}",
                      "UserThreadSK": f"TS#{t.activity}", "id": t.id, "createdAt": t.created_at,
                      "name": t.name, "userId": uk, "userIdentifier": t.user.identifier,
                      "metadata": t.metadata})
        if not with_children:
            continue
        fb = {f["forId"]: f for f in t.feedbacks}
        for s in t.steps:
            it = {"PK": f"THREAD#{t.id}", "SK": f"STEP#{s['id']}", **s}
            if s["id"] in fb:
                f = fb[s["id"]]
                it["feedback"] = {"id": f["id"], "forId": f["forId"], "threadId": t.id,
                                  "value": f["value"], "comment": f["comment"]}
            items.append(it)
        for e in t.elements:
            items.append({"PK": f"THREAD#{t.id}", "SK": f"ELEMENT#{e['id']}", **e})
    return items


def leftover(c: Any, table: str, thread_id: str) -> int:
    r = c.query(TableName=table, KeyConditionExpression="PK = :pk", Select="COUNT",
                ExpressionAttributeValues={":pk": {"S": f"THREAD#{thread_id}"}})
    return int(r["Count"])


class ChainlitDynamo(LayerTarget):
    kind = "chainlit"
    backend = "dynamodb"
    name = "chainlit-dynamodb/dynamodb"
    description = ("DynamoDBDataLayer (sync boto3) on the documented table, "
                   "GSI UserThread INCLUDE [id, name], user_thread_limit=35")
    TABLE = "bench_cl_dynamo"
    max_w2_n = MAX_W2_N
    scale_overrides = MOTO_SCALE

    def user_key(self, user: Any) -> str:
        return str(user.identifier)  # this layer's PersistedUser.id is the identifier

    async def setup(self, ds: Dataset) -> None:
        from chainlit.data.dynamodb import DynamoDBDataLayer

        self.c = client()
        create_table(self.c, self.TABLE, ["id", "name"])
        await asyncio.to_thread(batch_put, self.c, self.TABLE, layout(ds, self.user_key))
        # first=35 is what the sidebar asks for; the layer ignores it and uses this limit.
        self.layer = DynamoDBDataLayer(self.TABLE, client=client(), user_thread_limit=35)

    async def leftover_rows(self, thread: ThreadRec) -> int | None:
        return leftover(self.c, self.TABLE, thread.id)


def _cur_enc(key: dict[str, Any]) -> str:
    return base64.urlsafe_b64encode(json.dumps(key).encode()).decode()


def _cur_dec(s: str) -> dict[str, Any]:
    return json.loads(base64.urlsafe_b64decode(s.encode()))


class FloorDynamo(Target):
    """Fewest API calls: 1 GetItem, 1 UpdateItem, 1 Query per page, 1 Query per 1 MB partition
    page, Query(keys) + ceil(items/25) BatchWriteItem for a delete; boto3 in a 32-thread pool."""

    kind = "floor"
    backend = "dynamodb"
    name = "floor/dynamodb"
    description = ("boto3 in a 32-thread pool; GSI UserThread INCLUDE the list's summary "
                   "attributes")
    TABLE = "bench_floor"
    max_w2_n = MAX_W2_N
    scale_overrides = MOTO_SCALE
    LIST_ATTRS = ["id", "name", "createdAt", "userId", "userIdentifier", "tags", "metadata"]

    async def setup(self, ds: Dataset) -> None:
        self.c = client()
        self.pool = ThreadPoolExecutor(32, thread_name_prefix="floor-ddb")
        create_table(self.c, self.TABLE, self.LIST_ATTRS)
        await asyncio.to_thread(batch_put, self.c, self.TABLE, layout(ds, self.user_key))

    def user_key(self, user: Any) -> str:
        # as in Chainlit's layout, PersistedUser.id is the identifier, so update_thread(user_id)
        # can store userIdentifier without a lookup (one call)
        return str(user.identifier)

    async def close(self) -> None:
        self.pool.shutdown(wait=False)

    async def _call(self, fn: Any, **kw: Any) -> Any:
        import contextvars
        ctx = contextvars.copy_context()
        return await asyncio.get_running_loop().run_in_executor(self.pool, lambda: ctx.run(fn, **kw))

    async def get_user(self, identifier: str) -> Any:
        r = await self._call(self.c.get_item, TableName=self.TABLE,
                             Key={"PK": {"S": f"USER#{identifier}"}, "SK": {"S": "USER"}})
        if "Item" not in r:
            return None
        u = de(r["Item"])
        return PersistedUser(id=u["id"], identifier=u["identifier"], createdAt=u["createdAt"],
                             metadata=u.get("metadata") or {})

    async def update_thread(self, thread_id: str, name: str | None = None,
                            user_id: str | None = None, metadata: dict | None = None,
                            tags: list[str] | None = None) -> None:
        from chainlit.utils import utc_now

        now = utc_now()
        sets = ["createdAt = if_not_exists(createdAt, :now)", "id = :id",
                "UserThreadSK = if_not_exists(UserThreadSK, :ts)"]
        vals: dict[str, Any] = {":now": now, ":id": thread_id, ":ts": f"TS#{now}"}
        names: dict[str, str] = {}
        if name is not None:
            sets.append("#n = :name")
            names["#n"] = "name"
            vals[":name"] = name
        if user_id is not None:
            sets += ["userId = :uid", "userIdentifier = :uid",
                     "UserThreadPK = :upk"]
            vals[":uid"] = user_id
            vals[":upk"] = f"USER#{user_id}"
        if tags is not None:
            sets.append("tags = :tags")
            vals[":tags"] = tags
        for i, (k, v) in enumerate((metadata or {}).items()):
            # merge key by key: one call (metadata map is created with the thread by the loader)
            names[f"#m{i}"] = k
            vals[f":m{i}"] = v
            sets.append(f"metadata.#m{i} = :m{i}")
        kw: dict[str, Any] = {}
        if names:
            kw["ExpressionAttributeNames"] = names
        await self._call(self.c.update_item, TableName=self.TABLE,
                         Key={"PK": {"S": f"THREAD#{thread_id}"}, "SK": {"S": "THREAD"}},
                         UpdateExpression="SET " + ", ".join(sets),
                         ExpressionAttributeValues=ser(vals), **kw)

    async def create_step(self, step: dict[str, Any]) -> None:
        # upsert attribute by attribute: tolerates update-before-create, one call
        attrs = {k: v for k, v in step.items() if v is not None and k not in ("id",)}
        names = {f"#a{i}": k for i, k in enumerate(attrs)}
        vals = {f":a{i}": v for i, v in enumerate(attrs.values())}
        vals[":id"] = step["id"]
        upd = "SET id = :id, " + ", ".join(f"#a{i} = :a{i}" for i in range(len(attrs)))
        key = {"PK": {"S": f"THREAD#{step['threadId']}"}, "SK": {"S": f"STEP#{step['id']}"}}
        if step.get("type") == "user_message" and step.get("createdAt"):
            # The thread's activity moves with the user message. On AWS this is one
            # TransactWriteItems; moto deep-copies the whole table for every transaction (seconds
            # at this size), so the floor sends the two UpdateItems concurrently instead: 2 calls,
            # the latency of one. (See README: the DynamoDB floor counts 2 here.)
            await asyncio.gather(
                self._call(self.c.update_item, TableName=self.TABLE, Key=key,
                           UpdateExpression=upd, ExpressionAttributeNames=names,
                           ExpressionAttributeValues=ser(vals)),
                self._call(self.c.update_item, TableName=self.TABLE,
                           Key={"PK": {"S": f"THREAD#{step['threadId']}"}, "SK": {"S": "THREAD"}},
                           UpdateExpression="SET UserThreadSK = :ts",
                           ConditionExpression="attribute_not_exists(UserThreadSK) OR "
                                               "UserThreadSK < :ts",
                           ExpressionAttributeValues={":ts": {"S": f"TS#{step['createdAt']}"}}),
                return_exceptions=True)
        else:
            await self._call(self.c.update_item, TableName=self.TABLE, Key=key,
                             UpdateExpression=upd, ExpressionAttributeNames=names,
                             ExpressionAttributeValues=ser(vals))

    update_step = create_step

    async def list_threads(self, pagination: Pagination, filters: ThreadFilter) -> Any:
        kw: dict[str, Any] = {
            "TableName": self.TABLE, "IndexName": "UserThread", "ScanIndexForward": False,
            "KeyConditionExpression": "UserThreadPK = :pk",
            "ExpressionAttributeValues": {":pk": {"S": f"USER#{filters.userId}"}}}
        if pagination.cursor:
            kw["ExclusiveStartKey"] = _cur_dec(pagination.cursor)
        items: list[dict[str, Any]] = []
        last = None
        if filters.search:
            kw["FilterExpression"] = "contains(#n, :q)"
            kw["ExpressionAttributeNames"] = {"#n": "name"}
            kw["ExpressionAttributeValues"][":q"] = {"S": filters.search}
        else:
            # a filter applies after Limit, so a search sets none: each Query reads up to 1 MB
            # of the user's index and the fewest calls fill the page (the surplus is dropped)
            kw["Limit"] = pagination.first
        while True:  # keep reading until the page is full
            r = await self._call(self.c.query, **kw)
            items.extend(r["Items"])
            last = r.get("LastEvaluatedKey")
            if len(items) >= pagination.first or not last:
                break
            kw["ExclusiveStartKey"] = last
        data = []
        for it in items[:pagination.first]:
            d = de(it)
            data.append({"id": d["id"], "createdAt": d.get("createdAt"), "name": d.get("name"),
                         "userId": d.get("userId"), "userIdentifier": d.get("userIdentifier"),
                         "tags": d.get("tags"), "metadata": d.get("metadata") or {},
                         "steps": [], "elements": []})
        end = None
        more = bool(last) or len(items) > pagination.first
        if more:
            end = _cur_enc({k: v for k, v in items[pagination.first - 1].items()
                            if k in ("PK", "SK", "UserThreadPK", "UserThreadSK")}
                           if len(items) >= pagination.first else last)
        return PaginatedResponse(pageInfo=PageInfo(hasNextPage=more, startCursor=None,
                                                   endCursor=end), data=data)

    async def _partition(self, thread_id: str, keys_only: bool = False) -> list[dict[str, Any]]:
        kw: dict[str, Any] = {"TableName": self.TABLE, "KeyConditionExpression": "PK = :pk",
                                  "ExpressionAttributeValues": {":pk": {"S": f"THREAD#{thread_id}"}}}
        if keys_only:
            kw["ProjectionExpression"] = "PK, SK"
        out: list[dict[str, Any]] = []
        while True:
            r = await self._call(self.c.query, **kw)
            out.extend(r["Items"])
            if "LastEvaluatedKey" not in r:
                return out
            kw["ExclusiveStartKey"] = r["LastEvaluatedKey"]

    async def get_thread(self, thread_id: str) -> dict[str, Any] | None:
        items = await self._partition(thread_id)
        thread = None
        steps, elements = [], []
        for raw in items:
            it = de(raw)
            sk = it.pop("SK")
            it.pop("PK")
            if sk == "THREAD":
                it.pop("UserThreadPK", None)
                it.pop("UserThreadSK", None)
                thread = it
            elif sk.startswith("STEP#"):
                if "feedback" in it:
                    it["feedback"]["value"] = int(it["feedback"]["value"])
                steps.append(it)
            elif sk.startswith("ELEMENT#"):
                elements.append(it)
        if thread is None:
            return None
        steps.sort(key=lambda s: s.get("createdAt") or "")
        thread.setdefault("metadata", {})
        thread["steps"] = steps
        thread["elements"] = elements
        return thread

    async def delete_thread(self, thread_id: str) -> None:
        keys = await self._partition(thread_id, keys_only=True)
        chunks = [keys[i:i + 25] for i in range(0, len(keys), 25)]

        async def write(chunk: list[dict[str, Any]]) -> None:
            req: Any = {self.TABLE: [{"DeleteRequest": {"Key": k}} for k in chunk]}
            while req:
                r = await self._call(self.c.batch_write_item, RequestItems=req)
                req = r.get("UnprocessedItems") or None

        await asyncio.gather(*(write(ch) for ch in chunks))

    async def leftover_rows(self, thread: ThreadRec) -> int | None:
        return leftover(self.c, self.TABLE, thread.id)
