"""The Chainlit contract suite's fixtures: every test in ``tests/contract`` runs on every backend.

To add a backend, add a :class:`ContractBackend` to :data:`CONTRACT_BACKENDS`. Deviations a backend
is allowed are declared here, in one place, as attributes of its entry (see ``search_in_messages``).
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import chainlit as cl
import pytest
from chainlit.context import init_http_context
from chainlit.user import PersistedUser, User

from chainlit_orm import FsspecStorage, SQLDataLayer
from chainlit_orm.layers.base import ChainlitLayer
from chainlit_orm.models import ModelSet
from tests.backends import SQL_BACKENDS, Backend


@dataclass
class ContractBackend:
    """How the suite makes layers on one backend, and what the backend may do differently."""

    name: str
    open: Callable[[Path], Any]  # async context manager yielding a "store" handle
    new_layer: Callable[..., Awaitable[ChainlitLayer]]  # (handle, storage, **layer options)
    #: search also matches the text of user/assistant messages, not only the thread name.
    #: The one allowed deviation (DynamoDB matches names only).
    search_in_messages: bool = True
    sql: bool = True
    models: ModelSet | None = None
    extra: dict[str, Any] = field(default_factory=dict)


def _sql_entry(backend: Backend) -> ContractBackend:
    async def new_layer(url: Any, storage: Any, **options: Any) -> ChainlitLayer:
        return SQLDataLayer(url, storage=storage, models=backend.models, create_schema=True,
                            **options)

    return ContractBackend(
        name=backend.name, open=backend.database, new_layer=new_layer, models=backend.models
    )


CONTRACT_BACKENDS: dict[str, ContractBackend] = {
    name: _sql_entry(b) for name, b in SQL_BACKENDS.items()
}


def _dynamodb_entry() -> ContractBackend:
    """moto's DynamoDB server: one table per session made by ``chainlit-orm migrate``, deleted
    afterwards. Search matches thread names only (the one allowed deviation)."""
    import os
    from contextlib import asynccontextmanager

    endpoint = os.environ.get("CHAINLIT_ORM_TEST_MOTO", "http://127.0.0.1:5055")

    @asynccontextmanager
    async def open_table(_tmp: Path) -> AsyncIterator[str]:
        import boto3

        from chainlit_orm import migrate

        for name, value in (("AWS_ACCESS_KEY_ID", "testing"), ("AWS_SECRET_ACCESS_KEY", "testing"),
                            ("AWS_DEFAULT_REGION", "us-east-1")):
            os.environ.setdefault(name, value)
        table = f"clorm_contract_{uuid.uuid4().hex[:12]}"
        await migrate(f"dynamodb://{table}?region=us-east-1&endpoint_url={endpoint}")
        try:
            yield table
        finally:
            boto3.client("dynamodb", region_name="us-east-1",
                         endpoint_url=endpoint).delete_table(TableName=table)

    async def new_layer(table: Any, storage: Any, **options: Any) -> ChainlitLayer:
        from chainlit_orm import DynamoDataLayer

        return DynamoDataLayer(table, storage=storage, region="us-east-1", endpoint_url=endpoint,
                               **options)

    return ContractBackend(name="dynamodb", open=open_table, new_layer=new_layer,
                           search_in_messages=False, sql=False)


CONTRACT_BACKENDS["dynamodb"] = _dynamodb_entry()


@pytest.fixture(scope="session", params=list(CONTRACT_BACKENDS))
async def store(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
                ) -> AsyncIterator[tuple[ContractBackend, Any]]:
    """One database per backend for the whole session; tests isolate by unique ids."""
    entry = CONTRACT_BACKENDS[request.param]
    async with entry.open(tmp_path_factory.mktemp(entry.name)) as handle:
        yield entry, handle


@pytest.fixture
def backend(store: tuple[ContractBackend, Any]) -> ContractBackend:
    return store[0]


@pytest.fixture
async def storage() -> AsyncIterator[FsspecStorage]:
    client = FsspecStorage(f"memory://clorm-{uuid.uuid4().hex}", mount=False)
    yield client
    await client.close()


@pytest.fixture
async def layer(store: tuple[ContractBackend, Any], storage: FsspecStorage
                ) -> AsyncIterator[ChainlitLayer]:
    entry, handle = store
    instance = await entry.new_layer(handle, storage)
    yield instance
    await instance.close()


@pytest.fixture
async def chainlit_ctx() -> Any:
    """A Chainlit HTTP context, so real ``cl.Message``/``cl.Step``/``cl.Element`` can be built.
    HTTP contexts do not queue writes: calls run at once, as in Chainlit's REST handlers."""
    return init_http_context(thread_id=str(uuid.uuid4()))


@pytest.fixture
async def user(layer: ChainlitLayer) -> PersistedUser:
    created = await layer.create_user(User(identifier=f"user-{uuid.uuid4().hex[:8]}@example.com",
                                           metadata={"role": "tester"}))
    assert created is not None
    return created


def new_id() -> str:
    return str(uuid.uuid4())


def message(thread_id: str, content: str, *, author: str = "alice",
            type_: str = "user_message", parent_id: str | None = None) -> dict[str, Any]:
    """A real ``cl.Message(...).to_dict()`` for ``thread_id`` (needs a Chainlit context)."""
    msg = cl.Message(content=content, author=author, type=type_, parent_id=parent_id)  # type: ignore[arg-type]
    data = dict(msg.to_dict())
    data["threadId"] = thread_id
    if not data.get("createdAt"):  # Chainlit stamps it when the message is sent
        from chainlit.utils import utc_now

        data["createdAt"] = data["start"] = data["end"] = utc_now()
    return data


__all__ = ["CONTRACT_BACKENDS", "ContractBackend", "message", "new_id"]
