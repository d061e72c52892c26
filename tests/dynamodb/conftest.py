"""Fixtures for the DynamoDB layer tests: moto's DynamoDB server, unique tables, request recording.

Nothing is skipped: moto down fails the tests (``bash scripts/services.sh`` starts it). Every table
has a unique name and is deleted afterwards.
"""

from __future__ import annotations

import contextlib
import threading
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest

from chainlit_orm import FsspecStorage, migrate
from chainlit_orm.layers.dynamodb import DynamoDataLayer
from tests.aws import MOTO_ENDPOINT, REGION, aws_env, dynamodb

__all__ = ["MOTO_ENDPOINT", "REGION", "aws_env", "dynamodb"]


def table_url(name: str) -> str:
    return f"dynamodb://{name}?region={REGION}&endpoint_url={MOTO_ENDPOINT}"


@pytest.fixture
def table_name(dynamodb: Any) -> Iterator[str]:
    """A unique table name; the table is deleted afterwards if it was created."""
    name = f"clorm_dy_{uuid.uuid4().hex[:16]}"
    yield name
    with contextlib.suppress(dynamodb.exceptions.ResourceNotFoundException):
        dynamodb.delete_table(TableName=name)


@pytest.fixture
async def table(table_name: str) -> str:
    """A table made by ``chainlit-orm migrate``."""
    await migrate(table_url(table_name))
    return table_name


@pytest.fixture
async def storage() -> AsyncIterator[FsspecStorage]:
    client = FsspecStorage(f"memory://clorm-dy-{uuid.uuid4().hex}", mount=False)
    yield client
    await client.close()


@pytest.fixture
async def layer(table: str, storage: FsspecStorage) -> AsyncIterator[DynamoDataLayer]:
    instance = DynamoDataLayer(table, storage=storage, region=REGION, endpoint_url=MOTO_ENDPOINT)
    yield instance
    await instance.close()


@dataclass
class Recorder:
    """What the layer's botocore client does: every API call (``before-call``: one per call, the
    count the tests assert) and every HTTP attempt with its thread (``before-send``: retries
    included, for the event-loop proof)."""

    calls: list[str] = field(default_factory=list)
    sends: list[tuple[str, int]] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def on_call(self, model: Any, **_: Any) -> None:
        with self.lock:
            self.calls.append(model.name)

    def on_send(self, request: Any, **_: Any) -> None:
        target = request.headers.get("X-Amz-Target", b"")
        if isinstance(target, bytes):
            target = target.decode()
        with self.lock:
            self.sends.append((target.rpartition(".")[2], threading.get_ident()))

    def attach(self, client: Any) -> Recorder:
        client.meta.events.register("before-call.dynamodb", self.on_call)
        client.meta.events.register("before-send.dynamodb", self.on_send)
        return self

    @property
    def operations(self) -> list[str]:
        return list(self.calls)

    def clear(self) -> None:
        with self.lock:
            self.calls.clear()
            self.sends.clear()


@pytest.fixture
async def recorder(layer: DynamoDataLayer) -> Recorder:
    """Records the layer's requests on the client PynamoDB uses, after the once-per-layer table
    check has run."""
    await layer.dynamo.ensure_ready()
    return Recorder().attach(layer.dynamo.client)
