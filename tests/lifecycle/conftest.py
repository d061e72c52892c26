"""Fixtures of the data-lifecycle suite: every test runs on SQLite, PostgreSQL, MariaDB and
DynamoDB (moto), each a real service, with layers made here so each test picks its own
``on_delete`` and ``soft_delete``, and storage on a local directory the erase scan can walk."""

from __future__ import annotations

import os
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
from chainlit.context import init_http_context
from chainlit.user import PersistedUser, User

from chainlit_orm import FsspecStorage, SQLDataLayer
from chainlit_orm.layers.base import ChainlitLayer
from tests.contract.conftest import CONTRACT_BACKENDS, ContractBackend

LIFECYCLE_BACKENDS = ("sqlite", "postgres", "mariadb", "dynamodb")
MOTO = os.environ.get("CHAINLIT_ORM_TEST_MOTO", "http://127.0.0.1:5055")

LayerFactory = Callable[..., Awaitable[ChainlitLayer]]


@pytest.fixture(scope="session", params=LIFECYCLE_BACKENDS)
async def lstore(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
                 ) -> AsyncIterator[tuple[ContractBackend, Any]]:
    """One database (or table) per backend for the session; tests isolate by unique ids."""
    entry = CONTRACT_BACKENDS[request.param]
    async with entry.open(tmp_path_factory.mktemp(f"life-{entry.name}")) as handle:
        yield entry, handle


@pytest.fixture
def files_root(tmp_path: Path) -> Path:
    root = tmp_path / "files"
    root.mkdir()
    return root


@pytest.fixture
async def storage(files_root: Path) -> AsyncIterator[FsspecStorage]:
    client = FsspecStorage(f"file://{files_root}", mount=False)
    yield client
    await client.close()


@pytest.fixture
async def make_layer(lstore: tuple[ContractBackend, Any], storage: FsspecStorage
                     ) -> AsyncIterator[LayerFactory]:
    """``await make_layer(on_delete=..., soft_delete=...)``: a layer on this test's backend;
    closed at the end of the test."""
    entry, handle = lstore
    made: list[ChainlitLayer] = []

    async def make(**options: Any) -> ChainlitLayer:
        layer: ChainlitLayer
        if entry.sql:
            layer = SQLDataLayer(handle, storage=storage, models=entry.models,
                                 create_schema=True, **options)
        else:
            from chainlit_orm import DynamoDataLayer

            layer = DynamoDataLayer(handle, storage=storage, region="us-east-1",
                                    endpoint_url=MOTO, **options)
        made.append(layer)
        return layer

    yield make
    for layer in made:
        await layer.close()


@pytest.fixture
def backend_name(lstore: tuple[ContractBackend, Any]) -> str:
    return lstore[0].name


@pytest.fixture
async def chainlit_ctx() -> Any:
    return init_http_context(thread_id=str(uuid.uuid4()))


async def new_user(layer: ChainlitLayer, identifier: str | None = None) -> PersistedUser:
    created = await layer.create_user(User(
        identifier=identifier or f"u-{uuid.uuid4().hex}@example.com", metadata={"k": "v"}))
    assert created is not None
    return created
