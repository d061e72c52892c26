"""DynamoDB step texts kept in storage (issue 14, item 4): only where they can be read back, and
one unreadable text never hides its thread.

A step text above ``offload_bytes`` goes to the storage client only if that client can give it
back (``async read_file(object_key) -> bytes``, or chainlit-orm's ``FsspecStorage``). Chainlit's
own clients can only upload, delete and sign URLs: with one of them a step whose item would pass
DynamoDB's 400 KB is refused before anything is written, and a smaller one stays inline. A text
whose object is gone or unreadable reads as :data:`UNREADABLE_TEXT`, flagged in the step's
metadata, while the rest of the thread reads as stored.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from typing import Any

import pytest
from chainlit.context import init_http_context
from chainlit.types import Pagination, ThreadFilter
from chainlit.user import User

from chainlit_orm import FsspecStorage
from chainlit_orm.errors import PayloadTooLargeError, SchemaError
from chainlit_orm.layers.dynamodb import UNREADABLE_KEY, UNREADABLE_TEXT, DynamoDataLayer
from tests.contract.conftest import message, new_id
from tests.dynamodb.conftest import (  # fixtures: a migrated moto table, memory storage
    MOTO_ENDPOINT,
    REGION,
    aws_env,
    dynamodb,
    storage,
    table,
    table_name,
)
from tests.fixtures.legacy import InMemoryStorageClient

__all__ = ["aws_env", "dynamodb", "storage", "table", "table_name"]

BIG = ("Ünïcødé ✓ 漢字 " * 80_000)[: 1024 * 1024]  # 1 MB of text
MEDIUM = "m" * 150_000  # above the 100 KB offload threshold, below DynamoDB's 400 KB item


class ReadableClient(InMemoryStorageClient):
    """A Chainlit ``BaseStorageClient`` that also offers the read protocol."""

    def __init__(self) -> None:
        super().__init__()
        self.reads: list[str] = []

    async def read_file(self, object_key: str) -> bytes:
        self.reads.append(object_key)
        return self.objects[object_key]


def _layer(table: str, storage: Any) -> DynamoDataLayer:
    return DynamoDataLayer(table, storage=storage, region=REGION, endpoint_url=MOTO_ENDPOINT)


@pytest.fixture
async def write_only(table: str) -> AsyncIterator[tuple[DynamoDataLayer, InMemoryStorageClient]]:
    client = InMemoryStorageClient()  # what Chainlit's S3/Azure/GCS clients offer: no read
    layer = _layer(table, client)
    yield layer, client
    await layer.close()


def _raw_step(dynamodb: Any, table: str, tid: str, sid: str) -> dict[str, Any] | None:
    item: dict[str, Any] | None = dynamodb.get_item(
        TableName=table, Key={"PK": {"S": f"THREAD#{tid}"}, "SK": {"S": f"STEP#{sid}"}},
        ConsistentRead=True).get("Item")
    return item


async def test_a_write_only_storage_never_holds_step_texts(
    write_only: tuple[DynamoDataLayer, InMemoryStorageClient], dynamodb: Any, table: str
) -> None:
    layer, client = write_only
    init_http_context(thread_id=new_id())
    tid = new_id()
    huge = message(tid, BIG, type_="assistant_message")
    with pytest.raises(PayloadTooLargeError, match="cannot read a text back") as info:
        await layer.create_step(huge)
    assert "InMemoryStorageClient" in str(info.value)
    assert client.objects == {}  # nothing uploaded
    assert _raw_step(dynamodb, table, tid, huge["id"]) is None  # nothing written
    with pytest.raises(PayloadTooLargeError):
        await layer.update_step({**huge, "output": BIG})
    assert client.objects == {} and _raw_step(dynamodb, table, tid, huge["id"]) is None

    fits = message(tid, MEDIUM, type_="assistant_message")  # above the threshold, fits inline
    await layer.create_step(fits)
    raw = _raw_step(dynamodb, table, tid, fits["id"])
    assert raw is not None and raw["output"] == {"S": MEDIUM} and "outputRef" not in raw
    assert client.objects == {}
    assert (await layer.get_step(fits["id"]) or {})["output"] == MEDIUM


async def test_a_storage_with_read_file_holds_big_texts(
    table: str, dynamodb: Any
) -> None:
    client = ReadableClient()
    layer = _layer(table, client)
    try:
        init_http_context(thread_id=new_id())
        tid = new_id()
        await layer.update_thread(tid, name="big")
        sent = message(tid, BIG, type_="assistant_message")
        await layer.create_step(sent)
        key = f"threads/{tid}/steps/{sent['id']}/output.initial"
        assert client.objects == {key: BIG.encode()}
        raw = _raw_step(dynamodb, table, tid, sent["id"])
        assert raw is not None and raw["outputRef"] == {"S": key} and "output" not in raw
        thread = await layer.get_thread(tid)
        assert thread is not None and [s["output"] for s in thread["steps"]] == [BIG]
        assert client.reads == [key]
    finally:
        await layer.close()


async def test_an_item_that_would_not_fit_is_refused_before_any_upload(
    table: str, dynamodb: Any
) -> None:
    """Big texts go to storage, but the rest of the item (here ~450 KB of metadata) still has
    to fit: refused (by the shared limit set, before the backend sees it) before the texts are
    uploaded."""
    client = ReadableClient()
    layer = _layer(table, client)
    try:
        init_http_context(thread_id=new_id())
        tid = new_id()
        sent = {**message(tid, BIG, type_="assistant_message"), "metadata": {"x": "y" * 450_000}}
        with pytest.raises(PayloadTooLargeError, match="byte record limit"):
            await layer.create_step(sent)
        assert client.objects == {}
        assert _raw_step(dynamodb, table, tid, sent["id"]) is None
    finally:
        await layer.close()


async def test_texts_uploaded_for_a_refused_write_are_removed(
    table: str, dynamodb: Any
) -> None:
    """The texts are uploaded first; when DynamoDB then refuses the write (here: the table is
    gone), the objects are deleted again, so none is left without its step."""
    client = ReadableClient()
    layer = _layer(table, client)
    try:
        init_http_context(thread_id=new_id())
        await layer.dynamo.ensure_ready()
        dynamodb.delete_table(TableName=table)
        sent = message(new_id(), BIG, type_="assistant_message")
        with pytest.raises(SchemaError):
            await layer.create_step(sent)
        assert client.objects == {}
        assert client.deleted == [f"threads/{sent['threadId']}/steps/{sent['id']}/output.initial"]
    finally:
        await layer.close()


async def test_an_unreadable_text_does_not_hide_its_thread(
    table: str, dynamodb: Any, storage: FsspecStorage, caplog: pytest.LogCaptureFixture
) -> None:
    layer = _layer(table, storage)
    try:
        init_http_context(thread_id=new_id())
        user = await layer.create_user(User(identifier=f"reader-{new_id()}"))
        assert user is not None
        tid = new_id()
        await layer.update_thread(tid, name="partly lost", user_id=user.id)
        question = message(tid, "a question")
        lost = {**message(tid, BIG, type_="assistant_message"), "metadata": {"model": "m1"}}
        garbled = message(tid, BIG + "?", type_="assistant_message")
        kept = message(tid, BIG + "!", type_="assistant_message")
        for step in (question, lost, garbled, kept):
            await layer.create_step(step)
        lost_key = f"threads/{tid}/steps/{lost['id']}/output.initial"
        garbled_key = f"threads/{tid}/steps/{garbled['id']}/output.initial"
        assert await storage.delete_file(lost_key) is True  # the object disappears
        await storage.upload_file(garbled_key, b"\xff\xfe not utf-8", overwrite=True)

        with caplog.at_level(logging.WARNING, logger="chainlit_orm"):
            thread = await layer.get_thread(tid)
        assert thread is not None
        by_id = {s["id"]: s for s in thread["steps"]}
        assert [s["id"] for s in thread["steps"]] == [question["id"], lost["id"], garbled["id"],
                                                      kept["id"]]
        assert by_id[question["id"]]["output"] == "a question"
        assert by_id[kept["id"]]["output"] == BIG + "!"
        assert by_id[lost["id"]]["output"] == UNREADABLE_TEXT
        assert by_id[lost["id"]]["metadata"] == {"model": "m1", UNREADABLE_KEY: {"output": lost_key}}
        assert by_id[garbled["id"]]["output"] == UNREADABLE_TEXT
        assert by_id[garbled["id"]]["metadata"] == {UNREADABLE_KEY: {"output": garbled_key}}
        warned = [r.getMessage() for r in caplog.records if "could not be read back" in r.getMessage()]
        assert len(warned) == 2 and any(lost["id"] in m and lost_key in m for m in warned)

        step = await layer.get_step(lost["id"])
        assert step is not None and step["output"] == UNREADABLE_TEXT
        page = await layer.list_threads(Pagination(first=5), ThreadFilter(userId=user.id))
        assert [t["id"] for t in page.data] == [tid]
        # the stored item still names the object: nothing was rewritten by the read
        raw = _raw_step(dynamodb, table, tid, lost["id"])
        assert raw is not None and raw["outputRef"] == {"S": lost_key}
        assert raw["metadata"] == {"M": {"model": {"S": "m1"}}}
    finally:
        await layer.close()


async def test_texts_offloaded_by_an_earlier_version_to_a_write_only_storage(
    table: str, storage: FsspecStorage
) -> None:
    """Before the fix a 1 MB step could be offloaded to a client that cannot read it back, and
    its thread then failed to load for ever. Read through such a client now, the thread loads
    and only that text is marked."""
    writer = _layer(table, storage)
    reader = _layer(table, InMemoryStorageClient())
    try:
        init_http_context(thread_id=new_id())
        tid = new_id()
        await writer.update_thread(tid, name="old")
        big = message(tid, BIG, type_="assistant_message")
        small = message(tid, "small", type_="assistant_message")
        await writer.create_step(big)
        await writer.create_step(small)
        thread = await reader.get_thread(tid)
        assert thread is not None
        assert [s["output"] for s in thread["steps"]] == [UNREADABLE_TEXT, "small"]
        assert thread["steps"][0]["metadata"] == {
            UNREADABLE_KEY: {"output": f"threads/{tid}/steps/{big['id']}/output.initial"}}
    finally:
        await writer.close()
        await reader.close()
