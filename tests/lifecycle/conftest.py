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
from tests.lifecycle.scan import scan_dynamodb, scan_files, scan_sql

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
        layer = open_layer(entry, handle, storage, **options)
        made.append(layer)
        return layer

    yield make
    for layer in made:
        await layer.close()


@pytest.fixture(params=LIFECYCLE_BACKENDS)
async def fresh_store(request: pytest.FixtureRequest, tmp_path: Path
                      ) -> AsyncIterator[tuple[ContractBackend, Any]]:
    """An empty database (or table) for one test: a purge spans the whole store, so its exact
    counts need a store of its own."""
    entry = CONTRACT_BACKENDS[request.param]
    (tmp_path / "db").mkdir()
    async with entry.open(tmp_path / "db") as handle:
        yield entry, handle


@pytest.fixture
async def make_fresh_layer(fresh_store: tuple[ContractBackend, Any], storage: FsspecStorage
                           ) -> AsyncIterator[LayerFactory]:
    """As ``make_layer``, on :func:`fresh_store`."""
    entry, handle = fresh_store
    made: list[ChainlitLayer] = []

    async def make(**options: Any) -> ChainlitLayer:
        layer = open_layer(entry, handle, storage, **options)
        made.append(layer)
        return layer

    yield make
    for layer in made:
        await layer.close()


def open_layer(entry: ContractBackend, handle: Any, storage: Any, **options: Any
               ) -> ChainlitLayer:
    if entry.sql:
        return SQLDataLayer(handle, storage=storage, models=entry.models, create_schema=True,
                            **options)
    from chainlit_orm import DynamoDataLayer

    return DynamoDataLayer(handle, storage=storage, region="us-east-1", endpoint_url=MOTO,
                           **options)


def store_url(entry: ContractBackend, handle: Any) -> str:
    """The URL the CLI is given for this store."""
    if entry.sql:
        return str(handle)
    return f"dynamodb://{handle}?region=us-east-1&endpoint_url={MOTO}"


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


async def scan_store(lstore: tuple[ContractBackend, Any], files_root: Path, needles: list[str]
                     ) -> dict[str, int]:
    """Where any of ``needles`` still occurs in this test's store (every table, or every
    DynamoDB item) and under ``files_root``: ``{place: count}``, the scan's own summary
    entries (``<...>``) left out. Empty means the store holds none of them."""
    entry, handle = lstore
    found = await scan_sql(handle, needles) if entry.sql else scan_dynamodb(handle, MOTO,
                                                                            needles)
    found.update(scan_files(files_root, needles))
    return {k: v for k, v in found.items() if not k.startswith("<")}
