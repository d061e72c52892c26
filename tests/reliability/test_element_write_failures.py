"""Issue 14 follow-up F4/F5: the database fails after an element's file was uploaded.

F5: the connection is refused (the write certainly did not happen): the object and its sidecar
are removed, though the database cannot be asked whether a row refers to them. F4: the database
swallows every packet: ``create_element`` still ends within twice its timeout (the one timed
assertion allowed), its clean-up using what is left of the call's deadline; whether the write
landed is unknown, so the object stays and the error's message says so.

PostgreSQL through the fault proxy (its driver knows a cut connection is closed, so the retries
open new ones, which are refused); storage on local disk (FsspecStorage, sidecars included).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy.engine import make_url

from chainlit_orm import SQLDataLayer
from chainlit_orm.errors import BackendUnavailableError, TimeoutExceededError
from tests.backends import SQL_BACKENDS
from tests.reliability.faultproxy import FaultProxy, fault_proxy
from tests.reliability.storage_env import (
    Site,
    chainlit_ctx,
    file_element,
    new_thread,
    object_key,
    site,
)

__all__ = ["chainlit_ctx"]  # fixture

pytestmark = pytest.mark.postgres
TIMEOUT = 3.0  # long enough for a loaded machine


@asynccontextmanager
async def _proxied(tmp_path: Path) -> AsyncIterator[tuple[SQLDataLayer, FaultProxy, Site]]:
    async with SQL_BACKENDS["postgres"].database(tmp_path) as url, site("local", tmp_path) as where:
        with fault_proxy("127.0.0.1", 5432) as proxy:
            layer = SQLDataLayer(make_url(url).set(port=proxy.port), storage=where.client(),
                                 create_schema=True, timeout=TIMEOUT, connect_timeout=0.5)
            try:
                await layer.sql.ensure_ready()
                yield layer, proxy, where
            finally:
                proxy.set_mode("pass")
                await layer.close()


def _stored(where: Site, *elements: Any) -> list[str]:
    keys = [object_key(e) for e in elements]
    return sorted([*keys, *(f".chainlit-orm-meta/{k}.json" for k in keys)])


async def test_a_refused_database_after_the_upload_leaves_no_object(
    tmp_path: Path, chainlit_ctx: Any
) -> None:
    async with _proxied(tmp_path) as (layer, proxy, where):
        thread_id = await new_thread(layer)
        kept = file_element(thread_id, "kept.txt", b"kept")
        await layer.create_element(kept)
        proxy.set_mode("refuse")
        proxy.cut_all()
        refused = file_element(thread_id, "refused.txt", b"refused")
        with pytest.raises(BackendUnavailableError) as caught:
            await layer.create_element(refused)
        assert type(caught.value) is BackendUnavailableError
        assert caught.value.sent is False
        assert getattr(caught.value, "__notes__", []) == []  # removed, nothing to report
        assert where.list() == _stored(where, kept)
        proxy.set_mode("pass")
        assert await layer.get_element(thread_id, refused.id) is None
        # a re-send of an element this layer stored keeps the object its row serves
        proxy.set_mode("refuse")
        proxy.cut_all()
        again = file_element(thread_id, "again.txt", b"again")
        again.id = kept.id
        with pytest.raises(BackendUnavailableError) as caught:
            await layer.create_element(again)
        assert "may remain in storage: whether a row refers to it is unknown" in str(
            caught.value)
        proxy.set_mode("pass")
        assert where.list() == _stored(where, kept)
        row = await layer.get_element(thread_id, kept.id)
        assert row is not None and row["name"] == "kept.txt"


async def test_a_black_holed_database_after_the_upload_ends_within_twice_the_timeout(
    tmp_path: Path, chainlit_ctx: Any
) -> None:
    async with _proxied(tmp_path) as (layer, proxy, where):
        thread_id = await new_thread(layer)
        kept = file_element(thread_id, "kept.txt", b"kept")
        await layer.create_element(kept)
        proxy.set_mode("blackhole")
        swallowed = file_element(thread_id, "swallowed.txt", b"swallowed")
        loop = asyncio.get_running_loop()
        started = loop.time()
        with pytest.raises(TimeoutExceededError) as caught:
            await layer.create_element(swallowed)
        assert loop.time() - started < 2 * TIMEOUT  # the one timed assertion allowed
        assert str(caught.value).startswith(
            f"upsert_element did not finish within the data-layer call timeout of {TIMEOUT:g} s "
            f"(the uploaded object {object_key(swallowed)!r} may remain in storage: whether a row "
            "refers to it is unknown (")
        proxy.set_mode("pass")
        proxy.cut_all()
        assert where.list() == _stored(where, kept, swallowed)
