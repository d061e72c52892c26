"""Files before rows, and deadlines, in ``erase_user`` and ``purge`` (issue 14 F3a and item 2,
issue 17's "storage failures during erase or purge"), on every backend.

* A storage outage (FsspecStorage on moto's S3 behind the fault proxy, refusing connections)
  during an erasure or a purge raises ``StorageError`` and leaves the rows, and so the keys, in
  place; the same call once the storage is back completes, and the erase scan then finds nothing.
* A storage that never answers (a Chainlit-style client, shielded like a call in a worker
  thread) ends a purge in ``StorageTimeoutError`` within twice the timeout: the layer's per-call
  ``timeout`` bounds each file delete, a purge's ``timeout=`` its whole batch.
* A hook that hangs counts as failed (``TimeoutExceededError`` in the ``OnDeleteError``) and the
  purge goes on with the other threads.
"""

from __future__ import annotations

import asyncio
import uuid
from datetime import timedelta
from pathlib import Path
from typing import Any

import boto3
import chainlit as cl
import pytest
from chainlit.data.storage_clients.base import BaseStorageClient
from chainlit.types import Feedback

from chainlit_orm.errors import (
    OnDeleteError,
    StorageError,
    StorageTimeoutError,
    TimeoutExceededError,
)
from chainlit_orm.layers.base import ChainlitLayer
from chainlit_orm.models.types import format_timestamp, parse_timestamp, utc_now
from tests.contract.conftest import ContractBackend, message, new_id
from tests.lifecycle.conftest import MOTO, new_user, open_layer
from tests.lifecycle.scan import scan_dynamodb, scan_sql
from tests.reliability.faultproxy import fault_proxy
from tests.reliability.storage_env import MOTO_PORT, REGION, site

#: A short limit, so a black-holed call is over quickly (and long enough for a loaded machine).
TIMEOUT = 3.0


def _later(days: int) -> str:
    return format_timestamp(parse_timestamp(utc_now()) + timedelta(days=days))


async def _conversation(layer: ChainlitLayer, user_id: str, identifier: str) -> str:
    """A thread naming the user everywhere, with 2 steps, a file and feedback."""
    tid = new_id()
    await layer.update_thread(tid, name=f"chat of {identifier}", user_id=user_id,
                              metadata={"owner": identifier})
    question = message(tid, f"hello, I am {identifier} ({user_id})", author=identifier)
    await layer.create_step(question)
    answer = message(tid, f"hi {identifier}", type_="assistant_message")
    await layer.create_step(answer)
    file = cl.File(name=f"{identifier}.txt", content=f"{identifier} {user_id}".encode(),
                   for_id=question["id"])
    file.thread_id = tid
    await layer.create_element(file)
    await layer.upsert_feedback(Feedback(forId=answer["id"], threadId=tid, value=1,
                                         comment=f"from {identifier}"))
    return tid


def _objects(bucket_list: list[str], thread_ids: list[str]) -> list[str]:
    return sorted(k for k in bucket_list if any(f"/threads/{t}/" in k for t in thread_ids))


async def _scan_rows(store: tuple[ContractBackend, Any], needles: list[str]) -> dict[str, int]:
    entry, handle = store
    found = await scan_sql(handle, needles) if entry.sql else scan_dynamodb(handle, MOTO, needles)
    return {k: v for k, v in found.items() if not k.startswith("<")}


def _scan_objects(bucket_keys: list[str], read: Any, needles: list[str]) -> dict[str, int]:
    """Stored objects (read from the bucket directly, not through the proxy) holding a needle."""
    hits = sum(1 for key in bucket_keys if any(n.encode() in read(key) for n in needles))
    return {"<objects>": hits} if hits else {}


def _bucket_reader(storage: Any) -> Any:
    client = boto3.client("s3", endpoint_url=f"http://127.0.0.1:{MOTO_PORT}", region_name=REGION,
                          aws_access_key_id="testing", aws_secret_access_key="testing")
    bucket = storage.url.split("/")[2]  # s3://BUCKET/root

    def read(key: str) -> bytes:
        body: bytes = client.get_object(Bucket=bucket, Key=key)["Body"].read()
        return body

    return read


async def test_erase_user_with_the_storage_down_keeps_everything_and_a_rerun_completes(
        lstore: tuple[ContractBackend, Any], tmp_path: Path, chainlit_ctx: Any) -> None:
    entry, handle = lstore
    with fault_proxy("127.0.0.1", MOTO_PORT) as proxy:
        async with site("s3", tmp_path, endpoint=f"http://{proxy.address}") as where:
            storage = where.client(timeout=5, connect_timeout=1, read_timeout=1)
            layer = open_layer(entry, handle, storage)
            try:
                identifier = f"down-{uuid.uuid4().hex}@example.com"
                user = await new_user(layer, identifier)
                other = await new_user(layer)
                threads = [await _conversation(layer, user.id, identifier) for _ in range(3)]
                kept = await _conversation(layer, other.id, other.identifier)
                needles = [identifier, user.id]
                read = _bucket_reader(storage)
                keys = _objects(where.list(), threads)
                assert len(keys) == 3
                assert _scan_objects(where.list(), read, needles) == {"<objects>": 3}

                proxy.set_mode("refuse")
                proxy.cut_all()
                with pytest.raises(StorageError) as caught:
                    await layer.erase_user(identifier)
                assert str(caught.value).startswith(
                    "nothing deleted: 3 stored file(s) could not be deleted (the rows are kept; "
                    "call again once the storage answers)")
                assert sorted(caught.value.detail) == sorted(  # type: ignore[arg-type]
                    k.removeprefix("root/") for k in keys)
                proxy.set_mode("pass")
                # nothing was removed: the user, the threads with their rows, the files
                assert await layer.get_user(identifier) is not None
                for tid in threads:
                    thread = await layer.get_thread(tid)
                    assert thread is not None and len(thread["elements"] or []) == 1
                assert _objects(where.list(), threads) == keys

                report = await layer.erase_user(identifier)
                assert report.counts == {"user": 1, "thread": 3, "step": 6, "element": 3,
                                         "feedback": 3, "file": 3}
                assert await _scan_rows(lstore, needles) == {}
                assert _objects(where.list(), threads) == []
                assert _scan_objects(where.list(), read, needles) == {}
                # the other user's thread and file are untouched
                assert len(_objects(where.list(), [kept])) == 1
                assert await layer.get_thread(kept) is not None
            finally:
                proxy.set_mode("pass")
                await layer.close()


async def test_purge_with_the_storage_down_keeps_the_rows_and_a_rerun_completes(
        fresh_store: tuple[ContractBackend, Any], tmp_path: Path, chainlit_ctx: Any) -> None:
    entry, handle = fresh_store
    seen: list[str] = []

    async def hook(thread_id: str, user_id: str | None) -> None:
        seen.append(thread_id)

    with fault_proxy("127.0.0.1", MOTO_PORT) as proxy:
        async with site("s3", tmp_path, endpoint=f"http://{proxy.address}") as where:
            storage = where.client(timeout=5, connect_timeout=1, read_timeout=1)
            layer = open_layer(entry, handle, storage, on_delete=hook)
            try:
                user = await new_user(layer)
                # 3 files: with 4 or more deletes in flight during the outage, s3fs on moto
                # stays unanswering for several seconds after it (the client's own backoff)
                threads = [await _conversation(layer, user.id, "p") for _ in range(3)]
                keys = _objects(where.list(), threads)
                assert len(keys) == 3
                now = _later(91)  # every thread is past 90 days of inactivity then

                proxy.set_mode("refuse")
                proxy.cut_all()
                with pytest.raises(StorageError) as caught:
                    await layer.purge(older_than=timedelta(days=90), now=now)
                assert str(caught.value).startswith("nothing deleted: 3 stored file(s)")
                assert sorted(caught.value.detail) == sorted(  # type: ignore[arg-type]
                    k.removeprefix("root/") for k in keys)
                proxy.set_mode("pass")
                assert seen == []
                for tid in threads:
                    thread = await layer.get_thread(tid)
                    assert thread is not None and len(thread["steps"]) == 2
                assert _objects(where.list(), threads) == keys

                report = await layer.purge(older_than=timedelta(days=90), now=now)
                assert sorted(report.thread_ids) == sorted(threads)
                assert report.counts == {"user": 0, "thread": 3, "step": 6, "element": 3,
                                         "feedback": 3, "file": 3}
                assert sorted(seen) == sorted(threads)
                for tid in threads:
                    assert await layer.get_thread(tid) is None
                assert _objects(where.list(), threads) == []
            finally:
                proxy.set_mode("pass")
                await layer.close()


class SilentStorage(BaseStorageClient):
    """Objects in a dict; once ``silent`` is set, ``delete_file`` never answers. Shielded, like
    Chainlit's clients' calls in a worker thread: cancelling the caller does not stop it."""

    def __init__(self) -> None:
        self.objects: dict[str, bytes] = {}
        self.silent = False
        self.never = asyncio.Event()

    async def upload_file(self, object_key: str, data: bytes | str, mime: str = "",
                          overwrite: bool = True, content_disposition: str | None = None
                          ) -> dict[str, Any]:
        self.objects[object_key] = data if isinstance(data, bytes) else data.encode()
        return {"object_key": object_key, "url": f"memory://{object_key}"}

    async def _delete(self, object_key: str) -> bool:
        if self.silent:
            await self.never.wait()
        self.objects.pop(object_key, None)
        return True

    async def delete_file(self, object_key: str) -> bool:
        return await asyncio.shield(self._delete(object_key))

    async def get_read_url(self, object_key: str) -> str:
        return f"memory://{object_key}"

    async def close(self) -> None:
        self.never.set()


@pytest.mark.parametrize("bound", ["layer timeout", "purge timeout"])
async def test_a_storage_that_never_answers_ends_a_purge_in_a_typed_timeout(
        fresh_store: tuple[ContractBackend, Any], bound: str, chainlit_ctx: Any) -> None:
    entry, handle = fresh_store
    storage = SilentStorage()
    # either the layer's per-call timeout bounds each file delete, or the purge's per-batch one
    layer = open_layer(entry, handle, storage,
                       timeout=TIMEOUT if bound == "layer timeout" else 30.0)
    try:
        user = await new_user(layer)
        threads = [await _conversation(layer, user.id, "s") for _ in range(2)]
        assert len(storage.objects) == 2
        storage.silent = True
        loop = asyncio.get_running_loop()
        started = loop.time()
        with pytest.raises(StorageTimeoutError) as caught:
            await layer.purge(older_than=timedelta(days=90), now=_later(91),
                              timeout=TIMEOUT if bound == "purge timeout" else None)
        assert loop.time() - started < 2 * TIMEOUT  # the one timed assertion allowed
        assert str(caught.value).startswith("nothing deleted: 2 stored file(s) could not be "
                                            "deleted")
        assert sorted(caught.value.detail) == sorted(storage.objects)  # type: ignore[arg-type]
        storage.silent = False
        for tid in threads:  # the rows are kept for the next run
            assert await layer.get_thread(tid) is not None
        report = await layer.purge(older_than=timedelta(days=90), now=_later(91))
        assert (report.counts["thread"], report.counts["file"]) == (2, 2)
        assert storage.objects == {}
    finally:
        await layer.close()
        await storage.close()


async def test_a_hanging_hook_counts_as_failed_and_the_purge_goes_on(
        fresh_store: tuple[ContractBackend, Any], tmp_path: Path, chainlit_ctx: Any) -> None:
    entry, handle = fresh_store
    called: list[str] = []
    hang: set[str] = set()
    never = asyncio.Event()

    async def hook(thread_id: str, user_id: str | None) -> None:
        called.append(thread_id)
        if thread_id in hang:
            await asyncio.shield(never.wait())  # a hook that ignores cancellation, too

    from chainlit_orm import FsspecStorage

    storage = FsspecStorage(f"file://{tmp_path / 'files'}", mount=False)
    layer = open_layer(entry, handle, storage, on_delete=hook, on_delete_timeout=0.5)
    try:
        user = await new_user(layer)
        threads = [await _conversation(layer, user.id, "h") for _ in range(3)]
        hang.add(threads[1])
        loop = asyncio.get_running_loop()
        started = loop.time()
        with pytest.raises(OnDeleteError) as caught:
            await layer.purge(older_than=timedelta(days=90), now=_later(91), batch=2)
        assert loop.time() - started < 2 * TIMEOUT  # the one timed assertion allowed
        assert caught.value.detail == [threads[1]]
        failure = caught.value.failures[threads[1]]
        assert type(failure) is TimeoutExceededError
        assert str(failure) == (f"the on_delete hook for thread {threads[1]} did not finish "
                                "within 0.5 s (on_delete_timeout)")
        assert sorted(called) == sorted(threads)  # every thread's hook ran
        report = caught.value.report
        assert report is not None and report.counts["thread"] == 3  # type: ignore[attr-defined]
        for tid in threads:
            assert await layer.get_thread(tid) is None
    finally:
        never.set()
        await layer.close()
        await storage.close()


async def test_hanging_hooks_run_side_by_side_not_one_after_the_other(
        fresh_store: tuple[ContractBackend, Any], tmp_path: Path, chainlit_ctx: Any) -> None:
    """20 expired threads whose hooks all hang (the hook's service is down): one after the
    other they took 20 times on_delete_timeout (outside attack, finding F4); up to
    HOOK_CONCURRENCY at a time, two rounds. With a breaker that stays closed (above 20; the
    breaker itself is ``test_bounded_maintenance``'s), every hook is still called, every
    failure named."""
    entry, handle = fresh_store
    called: list[str] = []
    never = asyncio.Event()

    async def hook(thread_id: str, user_id: str | None) -> None:
        called.append(thread_id)
        await asyncio.shield(never.wait())

    from chainlit_orm import FsspecStorage

    storage = FsspecStorage(f"file://{tmp_path / 'files'}", mount=False)
    layer = open_layer(entry, handle, storage, on_delete=hook, on_delete_timeout=0.5,
                       on_delete_breaker=21)
    try:
        user = await new_user(layer)
        threads = [await _conversation(layer, user.id, "s") for _ in range(20)]
        loop = asyncio.get_running_loop()
        started = loop.time()
        with pytest.raises(OnDeleteError) as caught:
            await layer.purge(older_than=timedelta(days=90), now=_later(91), batch=20)
        # one after the other: 10 s; side by side (16 at a time): 2 rounds of 0.5 s
        assert loop.time() - started < 2 * TIMEOUT  # the one timed assertion allowed
        assert sorted(caught.value.detail) == sorted(threads)
        assert sorted(called) == sorted(threads)
        assert {type(f) for f in caught.value.failures.values()} == {TimeoutExceededError}
    finally:
        never.set()
        await layer.close()
        await storage.close()
