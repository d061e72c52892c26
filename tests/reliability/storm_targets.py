"""The backends the concurrency storms run on, and what a storm needs from each.

A :class:`Target` is picklable (a database URL or a DynamoDB table name), so the storms that run
across processes hand it to spawned workers, and each worker builds its own layer on it
(:func:`open_layer`), as separate app processes do. Every target is a real service on 127.0.0.1:
SQLite files, PostgreSQL, MariaDB and moto's DynamoDB server; each storm gets a fresh database or
table, removed afterwards. A service that is down fails the test.

:func:`stored_children` reads what is stored for one thread *below* the layer (SQL rows, or the
items of the DynamoDB partition), so a storm can prove there is no orphan the layer would hide.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import create_async_engine

from chainlit_orm import DynamoDataLayer, SQLDataLayer
from chainlit_orm.layers.base import ChainlitLayer
from chainlit_orm.models import DEFAULT_MODELS
from tests.backends import SQL_BACKENDS

MOTO_ENDPOINT = os.environ.get("CHAINLIT_ORM_TEST_MOTO", "http://127.0.0.1:5055")
REGION = "us-east-1"

#: The storm backends, in the order the suites run them.
STORM_BACKENDS = ("sqlite", "postgres", "mariadb", "dynamodb")


@dataclass(frozen=True)
class Target:
    """Where a storm runs: ``kind`` is ``"sql"`` (``where`` is a URL) or ``"dynamodb"``
    (``where`` is a table on moto)."""

    name: str
    kind: str
    where: str
    #: the DynamoDB endpoint (the shared moto server unless a test runs its own)
    endpoint: str = MOTO_ENDPOINT


def aws_test_env() -> None:
    """Dummy credentials for moto (this process and the workers it spawns); never real ones."""
    os.environ["AWS_ACCESS_KEY_ID"] = "testing"
    os.environ["AWS_SECRET_ACCESS_KEY"] = "testing"
    os.environ["AWS_DEFAULT_REGION"] = REGION
    os.environ.pop("AWS_SESSION_TOKEN", None)
    os.environ.pop("AWS_PROFILE", None)


@asynccontextmanager
async def open_target(name: str, tmp: Path, endpoint: str = MOTO_ENDPOINT
                      ) -> AsyncIterator[Target]:
    """A fresh, empty database (schema created) or migrated table for backend ``name``
    (DynamoDB: on the moto server at ``endpoint``)."""
    if name == "dynamodb":
        import boto3

        from chainlit_orm import migrate

        aws_test_env()
        table = f"clorm_storm_{uuid.uuid4().hex[:12]}"
        await migrate(f"dynamodb://{table}?region={REGION}&endpoint_url={endpoint}")
        try:
            yield Target(name, "dynamodb", table, endpoint)
        finally:
            boto3.client("dynamodb", region_name=REGION,
                         endpoint_url=endpoint).delete_table(TableName=table)
        return
    async with SQL_BACKENDS[name].database(tmp) as url:
        layer = SQLDataLayer(url, create_schema=True)
        try:
            await layer.get_user("nobody")  # creates the schema once, before any worker
        finally:
            await layer.close()
        yield Target(name, "sql", str(url))


def open_layer(target: Target, **options: object) -> ChainlitLayer:
    """A new layer on the target (without storage unless ``storage=`` is given)."""
    if target.kind == "dynamodb":
        return DynamoDataLayer(target.where, region=REGION, endpoint_url=target.endpoint,
                               **options)  # type: ignore[arg-type]
    return SQLDataLayer(target.where, **options)  # type: ignore[arg-type]


async def stored_children(layer: ChainlitLayer, target: Target, thread_id: str
                          ) -> dict[str, int]:
    """How many thread/step/element/feedback records are stored for ``thread_id``, read below
    the layer (an item or row the layer would not show still counts)."""
    counts = dict.fromkeys(("thread", "step", "element", "feedback"), 0)
    if target.kind == "dynamodb":
        backend = layer.dynamo  # type: ignore[attr-defined]
        items = await backend.query_all(
            KeyConditionExpression="#p = :p", ExpressionAttributeNames={"#p": "PK"},
            ExpressionAttributeValues={":p": {"S": f"THREAD#{thread_id}"}}, ConsistentRead=True)
        steps, rated = set(), set()
        for item in items:
            kind = backend.layout.kind(item["SK"]["S"])
            assert kind is not None, item["SK"]
            counts[kind] += 1
            if kind == "step":
                steps.add(item["SK"]["S"].removeprefix("STEP#"))
            elif kind == "feedback":
                rated.add(item["SK"]["S"].removeprefix("FEEDBACK#"))
        counts["feedback_without_step"] = len(rated - steps)
        return counts
    engine = create_async_engine(target.where)
    try:
        async with engine.connect() as conn:
            for entity in counts:
                table = DEFAULT_MODELS.table(entity)
                column = table.c.id if entity == "thread" else table.c.threadId
                counts[entity] = (await conn.execute(
                    sa.select(sa.func.count()).select_from(table).where(column == thread_id)
                )).scalar_one()
            # feedback whose step is gone would also be an orphan
            steps, feedbacks = DEFAULT_MODELS.table("step"), DEFAULT_MODELS.table("feedback")
            counts["feedback_without_step"] = (await conn.execute(
                sa.select(sa.func.count()).select_from(feedbacks)
                .where(feedbacks.c.threadId == thread_id)
                .where(~sa.exists().where(steps.c.id == feedbacks.c.forId))
            )).scalar_one()
    finally:
        await engine.dispose()
    return counts


__all__ = ["MOTO_ENDPOINT", "REGION", "STORM_BACKENDS", "Target", "aws_test_env", "open_layer",
           "open_target", "stored_children"]
