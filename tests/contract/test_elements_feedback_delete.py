"""Elements, feedback and deletion (contract §1.2)."""

from __future__ import annotations

import json
import logging
from typing import Any

import chainlit as cl
import httpx
import pytest
from chainlit.types import Feedback
from chainlit.user import PersistedUser

from chainlit_orm import FsspecStorage
from chainlit_orm.errors import ConflictError, InvalidInputError, StorageError
from chainlit_orm.layers.base import ChainlitLayer
from tests.contract.conftest import message, new_id

PNG = (b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR\x00\x00\x00\x01\x00\x00\x00\x01\x08\x06\x00\x00\x00"
       b"\x1f\x15\xc4\x89\x00\x00\x00\rIDATx\x9cc\xf8\x0f\x00\x00\x01\x01\x00\x05\x18\xd8N\x00"
       b"\x00\x00\x00IEND\xaeB`\x82")


async def _thread_with_step(layer: ChainlitLayer, user: PersistedUser) -> tuple[str, str]:
    tid = new_id()
    await layer.update_thread(tid, name="elements", user_id=user.id)
    step = message(tid, "with files", type_="assistant_message")
    await layer.create_step(step)
    return tid, step["id"]


async def test_elements_are_stored_and_read_with_fresh_urls(
    layer: ChainlitLayer, user: PersistedUser, chainlit_ctx: Any, storage: FsspecStorage
) -> None:
    tid, sid = await _thread_with_step(layer, user)
    image = cl.Image(name="pixel ü.png", content=PNG, display="inline", size="small", for_id=sid)
    audio = cl.Audio(name="a.mp3", content=b"ID3audio", auto_play=True, for_id=sid)
    linked = cl.File(name="remote.pdf", url="https://example.com/remote.pdf", for_id=sid)
    custom = cl.CustomElement(name="Widget", props={"count": 3, "ok": True}, for_id=sid)
    for element in (image, audio, linked, custom):
        element.thread_id = tid
        await layer.create_element(element)
    thread = await layer.get_thread(tid)
    assert thread is not None
    by_id = {e["id"]: e for e in thread["elements"] or []}
    assert set(by_id) == {image.id, audio.id, linked.id, custom.id}
    assert by_id[image.id]["objectKey"] == f"threads/{tid}/files/{image.id}"
    assert by_id[image.id]["mime"] == "image/png"
    assert by_id[image.id]["name"] == "pixel ü.png"
    assert by_id[image.id]["size"] == "small" and by_id[image.id]["forId"] == sid
    assert by_id[audio.id]["autoPlay"] is True
    assert by_id[linked.id]["url"] == "https://example.com/remote.pdf"  # linked, never copied
    assert by_id[linked.id]["objectKey"] is None
    assert by_id[custom.id]["props"] == {"count": 3, "ok": True}
    url = by_id[image.id]["url"]
    assert url is not None and url.startswith("/chainlit-orm/files/")
    again = await layer.get_element(tid, image.id)
    assert again is not None and again["url"] is not None
    assert await storage.delete_file(f"threads/{tid}/files/{image.id}") is True  # bytes were there
    json.dumps(thread)


async def test_get_element_is_scoped_to_its_thread(
    layer: ChainlitLayer, user: PersistedUser, chainlit_ctx: Any
) -> None:
    tid, sid = await _thread_with_step(layer, user)
    other_tid, _ = await _thread_with_step(layer, user)
    element = cl.Text(name="secret.txt", content="secret", for_id=sid)
    element.thread_id = tid
    await layer.create_element(element)
    assert (await layer.get_element(tid, element.id)) is not None
    assert await layer.get_element(other_tid, element.id) is None


async def test_element_before_its_step_and_thread(
    layer: ChainlitLayer, user: PersistedUser, chainlit_ctx: Any
) -> None:
    tid, sid = new_id(), new_id()
    element = cl.Text(name="early.txt", content="early", for_id=sid)
    element.thread_id = tid
    await layer.create_element(element)
    await layer.create_step({**message(tid, "late step", type_="assistant_message"), "id": sid})
    await layer.update_thread(tid, name="late", user_id=user.id)
    thread = await layer.get_thread(tid)
    assert thread is not None
    assert [e["id"] for e in thread["elements"] or []] == [element.id]


async def test_one_failing_signature_does_not_fail_the_thread(
    layer: ChainlitLayer, user: PersistedUser, chainlit_ctx: Any, storage: FsspecStorage,
    caplog: pytest.LogCaptureFixture,
) -> None:
    tid, sid = await _thread_with_step(layer, user)
    good = cl.Text(name="good.txt", content="good", for_id=sid)
    bad = cl.Text(name="bad.txt", content="bad", for_id=sid)
    for element in (good, bad):
        element.thread_id = tid
        await layer.create_element(element)
    original = storage.get_read_url

    async def flaky(key: str) -> str:
        if bad.id in key:
            raise StorageError("signing service down")
        return await original(key)

    storage.get_read_url = flaky  # type: ignore[method-assign]
    with caplog.at_level(logging.WARNING, logger="chainlit_orm"):
        thread = await layer.get_thread(tid)
    assert thread is not None
    urls = {e["id"]: e["url"] for e in thread["elements"] or []}
    assert urls[bad.id] is None and urls[good.id] is not None
    assert bad.id in caplog.text


async def test_without_storage_the_record_is_kept_and_a_warning_names_the_setting(
    layer: ChainlitLayer, user: PersistedUser, chainlit_ctx: Any, caplog: pytest.LogCaptureFixture
) -> None:
    layer.storage = None
    layer._warned_no_storage = False
    tid, sid = await _thread_with_step(layer, user)
    element = cl.File(name="lost.bin", content=b"\x00\x01", for_id=sid)
    element.thread_id = tid
    with caplog.at_level(logging.WARNING, logger="chainlit_orm"):
        await layer.create_element(element)
    assert "CHAINLIT_ORM_STORAGE_URL" in caplog.text
    stored = await layer.get_element(tid, element.id)
    assert stored is not None and stored["name"] == "lost.bin" and stored["objectKey"] is None


async def test_feedback_is_one_per_step_upserted_by_id_or_step(
    layer: ChainlitLayer, user: PersistedUser, chainlit_ctx: Any
) -> None:
    tid, sid = await _thread_with_step(layer, user)
    fid = await layer.upsert_feedback(Feedback(forId=sid, value=1, threadId=tid))
    same = await layer.upsert_feedback(Feedback(forId=sid, value=0, threadId=tid, id=fid,
                                                comment="changed my mind"))
    by_step = await layer.upsert_feedback(Feedback(forId=sid, value=0, threadId=tid,
                                                   comment="by step"))
    assert fid == same == by_step
    step = await layer.get_step(sid)
    assert step is not None
    assert step["feedback"] == {"id": fid, "forId": sid, "value": 0, "comment": "by step"}
    assert await layer.delete_feedback(fid) is True
    assert await layer.delete_feedback(fid) is False
    step = await layer.get_step(sid)
    assert step is not None and "feedback" not in step


async def test_feedback_without_thread_id_uses_the_steps_thread(
    layer: ChainlitLayer, user: PersistedUser, chainlit_ctx: Any
) -> None:
    tid, sid = await _thread_with_step(layer, user)
    fid = await layer.upsert_feedback(Feedback(forId=sid, value=1))
    thread = await layer.get_thread(tid)
    assert thread is not None and thread["steps"][0]["feedback"]["id"] == fid


async def test_feedback_for_a_step_of_another_thread_is_refused(
    layer: ChainlitLayer, user: PersistedUser, chainlit_ctx: Any
) -> None:
    _tid, sid = await _thread_with_step(layer, user)
    other_tid, _ = await _thread_with_step(layer, user)
    with pytest.raises(ConflictError):
        await layer.upsert_feedback(Feedback(forId=sid, value=1, threadId=other_tid))
    step = await layer.get_step(sid)
    assert step is not None and "feedback" not in step


async def test_feedback_for_an_unknown_step_never_creates_a_phantom_step(
    layer: ChainlitLayer, user: PersistedUser, chainlit_ctx: Any
) -> None:
    tid, _ = await _thread_with_step(layer, user)
    ghost = new_id()
    await layer.upsert_feedback(Feedback(forId=ghost, value=1, threadId=tid))
    thread = await layer.get_thread(tid)
    assert thread is not None
    assert [s["output"] for s in thread["steps"]] == ["with files"]
    assert await layer.get_step(ghost) is None


async def test_feedback_value_must_be_zero_or_one(
    layer: ChainlitLayer, user: PersistedUser, chainlit_ctx: Any
) -> None:
    tid, sid = await _thread_with_step(layer, user)
    for value in (2, -1, True):
        feedback = Feedback(forId=sid, value=1, threadId=tid)
        object.__setattr__(feedback, "value", value)  # what a client bypassing pydantic sends
        with pytest.raises(InvalidInputError):
            await layer.upsert_feedback(feedback)
    step = await layer.get_step(sid)
    assert step is not None and "feedback" not in step


async def test_delete_thread_removes_everything_and_its_files(
    layer: ChainlitLayer, user: PersistedUser, chainlit_ctx: Any, storage: FsspecStorage
) -> None:
    tid, sid = await _thread_with_step(layer, user)
    fid = await layer.upsert_feedback(Feedback(forId=sid, value=1, threadId=tid))
    element = cl.File(name="doc.txt", content=b"document", for_id=sid)
    element.thread_id = tid
    await layer.create_element(element)
    key = f"threads/{tid}/files/{element.id}"
    await layer.delete_thread(tid)
    assert await layer.get_thread(tid) is None
    assert await layer.get_thread_author(tid) == ""
    assert await layer.get_step(sid) is None
    assert await layer.get_element(tid, element.id) is None
    assert await layer.delete_feedback(fid) is False
    assert await storage.delete_file(key) is False  # the file is gone too
    # Chainlit's disconnect handler then persists the session's metadata: no resurrection
    await layer.update_thread(tid, metadata={"chat_settings": {}, "is_shared": True})
    assert await layer.get_thread(tid) is None


async def test_failing_file_delete_raises_and_keeps_the_thread_for_a_retry(
    layer: ChainlitLayer, user: PersistedUser, chainlit_ctx: Any, storage: FsspecStorage
) -> None:
    """Files are deleted before rows: a storage failure deletes nothing, so the same call
    succeeds once the storage works (issue 14, F3)."""
    tid, sid = await _thread_with_step(layer, user)
    element = cl.File(name="doc.txt", content=b"document", for_id=sid)
    element.thread_id = tid
    await layer.create_element(element)

    async def broken(key: str) -> bool:
        raise StorageError("permission denied")

    working = storage.delete_file
    storage.delete_file = broken  # type: ignore[method-assign]
    with pytest.raises(StorageError, match=r"^nothing deleted: 1 stored file"):
        await layer.delete_thread(tid)
    thread = await layer.get_thread(tid)
    assert thread is not None and [e["id"] for e in thread["elements"]] == [element.id]
    storage.delete_file = working  # type: ignore[method-assign]
    await layer.delete_thread(tid)
    assert await layer.get_thread(tid) is None
    assert await storage.delete_file(f"threads/{tid}/files/{element.id}") is False


async def test_storage_url_opens_in_a_browser_like_client(
    layer: ChainlitLayer, user: PersistedUser, chainlit_ctx: Any, storage: FsspecStorage
) -> None:
    """The signed URL of the element is served by the storage route with the exact bytes."""
    from fastapi import FastAPI

    from chainlit_orm.storage import mount_storage_route

    tid, sid = await _thread_with_step(layer, user)
    image = cl.Image(name="p.png", content=PNG, for_id=sid)
    image.thread_id = tid
    await layer.create_element(image)
    app = FastAPI()
    mount_storage_route(app)
    element = await layer.get_element(tid, image.id)
    assert element is not None and element["url"]
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
        response = await client.get(element["url"])
    assert response.status_code == 200
    assert response.content == PNG
    assert response.headers["content-type"] == "image/png"
