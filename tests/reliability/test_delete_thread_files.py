"""Issue 14 follow-up F3: no element file outlives its thread's rows around ``delete_thread``.

(a) The storage is down while a thread is deleted: the call raises a typed ``StorageError`` and
deletes nothing (files first, rows after), so it can simply be called again once the storage is
back, and then removes everything. Storage: FsspecStorage on S3 (moto) behind the fault proxy,
refusing connections; every database backend.

(b) Concurrent ``create_element`` calls racing one ``delete_thread``: afterwards every stored
object has its row, or was removed (PostgreSQL's one-statement delete used to miss element rows
committed while it waited for the thread row, and the cascade removed them without their keys).
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

from chainlit_orm.errors import StorageError
from tests.reliability.faultproxy import fault_proxy
from tests.reliability.storage_env import (
    MOTO_PORT,
    Db,
    chainlit_ctx,
    db,
    file_element,
    new_thread,
    object_key,
    site,
)

__all__ = ["chainlit_ctx", "db"]  # fixtures


async def _element_ids(layer: Any, thread_id: str) -> list[str]:
    thread = await layer.get_thread(thread_id)
    assert thread is not None
    return sorted(e["id"] for e in thread["elements"] or [])


async def test_storage_down_during_delete_thread_deletes_nothing_and_a_retry_cleans_up(
    db: Db, tmp_path: Path, chainlit_ctx: Any
) -> None:
    with fault_proxy("127.0.0.1", MOTO_PORT) as proxy:
        async with site("s3", tmp_path, endpoint=f"http://{proxy.address}") as where:
            layer = await db.layer(where.client(timeout=5, connect_timeout=1, read_timeout=1))
            try:
                thread_id = await new_thread(layer)
                elements = [file_element(thread_id, f"f{i}.txt", f"bytes {i}".encode())
                            for i in range(3)]
                for element in elements:
                    await layer.create_element(element)
                keys = sorted(f"root/{object_key(e)}" for e in elements)
                assert where.list() == keys

                proxy.set_mode("refuse")
                proxy.cut_all()
                try:
                    await layer.delete_thread(thread_id)
                except StorageError as exc:
                    error = exc
                else:
                    raise AssertionError("delete_thread did not raise")
                assert str(error).startswith(
                    "nothing deleted: 3 stored file(s) could not be deleted (the rows are kept; "
                    "call again once the storage answers)")
                assert sorted(error.detail) == sorted(object_key(e) for e in elements)
                proxy.set_mode("pass")
                assert await _element_ids(layer, thread_id) == sorted(e.id for e in elements)
                assert where.list() == keys

                await layer.delete_thread(thread_id)
                assert await layer.get_thread(thread_id) is None
                assert where.list() == []
            finally:
                proxy.set_mode("pass")
                await layer.close()


async def test_elements_racing_delete_thread_leave_no_object_without_its_row(
    db: Db, tmp_path: Path, chainlit_ctx: Any
) -> None:
    async with site("memory", tmp_path) as where:
        layer = await db.layer(where.client())
        try:
            for _ in range(3):
                thread_id = await new_thread(layer)
                elements = [file_element(thread_id, f"r{i}.txt", f"race {i}".encode())
                            for i in range(30)]
                results = await asyncio.gather(
                    *(layer.create_element(e) for e in elements[:15]),
                    layer.delete_thread(thread_id),
                    *(layer.create_element(e) for e in elements[15:]),
                    return_exceptions=True)
                assert [r for r in results if r is not None] == []
                thread = await layer.get_thread(thread_id)
                rows = sorted(e["objectKey"] for e in (thread or {}).get("elements") or [])
                stored = sorted(k for k in where.list() if not k.startswith(".chainlit-orm-meta/"))
                assert stored == rows  # every object has its row; every row its object
                await layer.delete_thread(thread_id)
                assert where.list() == []
        finally:
            await layer.close()
