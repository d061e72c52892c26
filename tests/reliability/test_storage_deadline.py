"""Issue 14 follow-up F1/F4: the layer's ``timeout`` bounds every storage call it makes.

A Chainlit ``BaseStorageClient`` has no deadline of its own (Chainlit's ``S3StorageClient`` on a
black-holed endpoint runs for minutes, in a worker thread that cancellation cannot stop). Here a
client whose ``upload_file`` / ``delete_file`` do not return until the test lets them: every
layer call still ends in ``StorageTimeoutError`` within twice the configured timeout (the one
timed assertion allowed), and an upload that lands after its call gave up is removed then.
"""

from __future__ import annotations

import asyncio
from typing import Any

from chainlit.data.storage_clients.base import BaseStorageClient

from chainlit_orm.errors import StorageTimeoutError
from tests.reliability.storage_env import Db, chainlit_ctx, db, file_element, new_thread, object_key

__all__ = ["chainlit_ctx", "db"]  # fixtures

TIMEOUT = 3.0  # long enough for a loaded machine


class HeldStorage(BaseStorageClient):
    """A dict of objects; while ``hold`` is set, uploads and deletes wait for ``release``."""

    def __init__(self) -> None:
        self.objects: dict[str, bytes] = {}
        self.hold = False
        self.release = asyncio.Event()

    async def _wait(self) -> None:
        if self.hold:
            await self.release.wait()

    async def _upload(self, object_key: str, data: bytes) -> dict[str, Any]:
        await self._wait()
        self.objects[object_key] = data
        return {"object_key": object_key, "url": f"memory://{object_key}"}

    async def _delete(self, object_key: str) -> bool:
        await self._wait()
        self.objects.pop(object_key, None)
        return True

    # shielded, like a call run in a worker thread: cancelling the caller does not stop it
    async def upload_file(self, object_key: str, data: bytes | str, mime: str = "",
                          overwrite: bool = True, content_disposition: str | None = None
                          ) -> dict[str, Any]:
        content = data if isinstance(data, bytes) else data.encode()
        return await asyncio.shield(self._upload(object_key, content))

    async def delete_file(self, object_key: str) -> bool:
        return await asyncio.shield(self._delete(object_key))

    async def get_read_url(self, object_key: str) -> str:
        return f"memory://{object_key}"

    async def close(self) -> None:
        self.release.set()


async def _element_ids(layer: Any, thread_id: str) -> list[str]:
    thread = await layer.get_thread(thread_id)
    assert thread is not None
    return sorted(e["id"] for e in thread["elements"] or [])


async def _timed_out(call: Any) -> StorageTimeoutError:
    loop = asyncio.get_running_loop()
    started = loop.time()
    try:
        await call
    except StorageTimeoutError as exc:
        assert loop.time() - started < 2 * TIMEOUT  # the one timed assertion allowed
        return exc
    raise AssertionError("no StorageTimeoutError")


async def test_a_storage_client_that_never_answers_cannot_outlast_the_timeout(
    db: Db, chainlit_ctx: Any
) -> None:
    storage = HeldStorage()
    # the set-up and the checks through a layer with the default timeout; the calls under
    # test through one with a short timeout
    relaxed = await db.layer(storage)
    layer = await db.layer(storage, timeout=TIMEOUT)
    try:
        thread_id = await new_thread(relaxed)
        kept = file_element(thread_id, "kept.txt", b"kept")
        await relaxed.create_element(kept)
        storage.hold = True

        late = file_element(thread_id, "late.txt", b"late")
        error = await _timed_out(layer.create_element(late))
        assert error.detail == object_key(late)
        assert error.abandoned is True
        assert str(error) == (
            f"HeldStorage.upload_file of {object_key(late)!r} did not finish within the "
            f"data-layer call timeout of {TIMEOUT:g} s (the client may still write the object: "
            "it is removed once the upload ends, unless a row of this element refers to it)")
        assert await relaxed.get_element(thread_id, late.id) is None

        error = await _timed_out(layer.delete_thread(thread_id))
        assert error.detail == [object_key(kept)]
        assert str(error).startswith(
            "nothing deleted: 1 stored file(s) could not be deleted (the rows are kept; call "
            f"again once the storage answers) (first: {object_key(kept)}: HeldStorage.")
        assert await _element_ids(relaxed, thread_id) == [kept.id]  # a retry can clean up

        # the held calls land now; the late upload is removed once it has
        storage.hold = False
        storage.release.set()
        assert await layer.settle(10 * TIMEOUT)
        assert list(storage.objects) == []  # the held delete of kept.txt landed too
        await relaxed.delete_thread(thread_id)
        assert storage.objects == {}
        assert await relaxed.get_thread(thread_id) is None
    finally:
        await layer.close()
        await relaxed.close()


async def test_a_resent_element_whose_upload_lands_late_keeps_its_object(
    db: Db, chainlit_ctx: Any
) -> None:
    """Chainlit re-sends updatable elements under the same key: the late clean-up finds the
    earlier row that refers to the object and leaves it."""
    storage = HeldStorage()
    # the set-up and the checks through a layer with the default timeout; the calls under
    # test through one with a short timeout
    relaxed = await db.layer(storage)
    layer = await db.layer(storage, timeout=TIMEOUT)
    try:
        thread_id = await new_thread(relaxed)
        first = file_element(thread_id, "first.txt", b"first")
        await relaxed.create_element(first)
        storage.hold = True
        again = file_element(thread_id, "again.txt", b"again")
        again.id = first.id
        await _timed_out(layer.create_element(again))
        storage.hold = False
        storage.release.set()
        assert await layer.settle(10 * TIMEOUT)
        assert storage.objects == {object_key(first): b"again"}
        row = await relaxed.get_element(thread_id, first.id)
        assert row is not None and row["name"] == "first.txt"
    finally:
        await layer.close()
        await relaxed.close()
