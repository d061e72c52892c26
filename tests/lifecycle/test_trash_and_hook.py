"""The on-delete hook from ``delete_thread`` (issue #17, item 4) and the opt-in trash (item 5),
on every backend."""

from __future__ import annotations

import uuid
from datetime import timedelta
from typing import Any

import pytest
from chainlit.types import Pagination, ThreadFilter

from chainlit_orm.errors import ConfigurationError, NotFoundError, OnDeleteError
from chainlit_orm.layers.base import ChainlitLayer
from chainlit_orm.models.types import format_timestamp, parse_timestamp, utc_now
from tests.contract.conftest import message, new_id
from tests.lifecycle.conftest import LayerFactory, new_user


async def _thread(layer: ChainlitLayer, user_id: str, name: str) -> str:
    tid = new_id()
    await layer.update_thread(tid, name=name, user_id=user_id)
    await layer.create_step(message(tid, f"about {name}"))
    return tid


async def _listed(layer: ChainlitLayer, user_id: str, search: str | None = None) -> list[str]:
    page = await layer.list_threads(Pagination(first=20),
                                    ThreadFilter(userId=user_id, search=search))
    return [t["id"] for t in page.data]


async def test_delete_thread_calls_the_hook_after_the_delete(
        make_layer: LayerFactory, chainlit_ctx: Any) -> None:
    calls: list[tuple[str, str | None, bool]] = []
    layer: ChainlitLayer

    async def hook(thread_id: str, user_id: str | None) -> None:
        calls.append((thread_id, user_id, await layer.get_thread(thread_id) is None))

    layer = await make_layer(on_delete=hook)
    user = await new_user(layer)
    tid = await _thread(layer, user.id, "doomed")
    await layer.delete_thread(tid)
    assert calls == [(tid, user.id, True)]  # called once, with the data already gone
    await layer.delete_thread(tid)  # nothing left to delete: no call
    assert len(calls) == 1


async def test_a_failing_hook_is_raised_and_the_delete_stays(
        make_layer: LayerFactory, chainlit_ctx: Any) -> None:
    async def hook(thread_id: str, user_id: str | None) -> None:
        raise RuntimeError("vector store down")

    layer = await make_layer(on_delete=hook)
    user = await new_user(layer)
    tid = await _thread(layer, user.id, "doomed")
    with pytest.raises(OnDeleteError) as caught:
        await layer.delete_thread(tid)
    assert caught.value.detail == [tid]
    assert isinstance(caught.value.__cause__, RuntimeError)
    assert await layer.get_thread(tid) is None


async def test_trash_hides_restores_and_survives_a_late_write(
        make_layer: LayerFactory, chainlit_ctx: Any) -> None:
    calls: list[str] = []

    async def hook(thread_id: str, user_id: str | None) -> None:
        calls.append(thread_id)

    layer = await make_layer(on_delete=hook, soft_delete=timedelta(days=30))
    user = await new_user(layer)
    word = f"w{uuid.uuid4().hex[:10]}"
    kept = await _thread(layer, user.id, f"kept {word}")
    trashed = await _thread(layer, user.id, f"trashed {word}")
    assert sorted(await _listed(layer, user.id)) == sorted([kept, trashed])

    await layer.delete_thread(trashed)
    assert calls == []  # trashing removes nothing: no hook
    assert await layer.get_thread(trashed) is None  # get and share link
    assert await layer.get_thread_author(trashed) == ""  # the ACL check finds no owner
    assert await _listed(layer, user.id) == [kept]
    assert await _listed(layer, user.id, search=word) == [kept]
    # Chainlit's disconnect handler writes the session's metadata to the thread it had open,
    # and a step may still arrive: neither brings it back
    await layer.update_thread(trashed, metadata={"chat_profile": "x"})
    await layer.update_thread(trashed, name="renamed late", user_id=user.id)
    await layer.create_step(message(trashed, "late message"))
    assert await layer.get_thread(trashed) is None
    assert await _listed(layer, user.id) == [kept]

    await layer.restore_thread(trashed)
    thread = await layer.get_thread(trashed)
    assert thread is not None and thread["name"] == "renamed late"
    assert [s["output"] for s in thread["steps"]] == [f"about trashed {word}", "late message"]
    assert thread["metadata"] == {"chat_profile": "x"}
    assert sorted(await _listed(layer, user.id)) == sorted([kept, trashed])
    assert await layer.get_thread_author(trashed) == user.identifier
    with pytest.raises(NotFoundError):
        await layer.restore_thread(trashed)  # not in the trash any more


async def test_purge_empties_the_trash_after_the_window(
        make_fresh_layer: LayerFactory, chainlit_ctx: Any) -> None:
    calls: list[tuple[str, str | None]] = []

    async def hook(thread_id: str, user_id: str | None) -> None:
        calls.append((thread_id, user_id))

    layer = await make_fresh_layer(on_delete=hook, soft_delete=timedelta(days=30))
    user = await new_user(layer)
    live = await _thread(layer, user.id, "live")
    trashed = await _thread(layer, user.id, "trashed")
    await layer.delete_thread(trashed)
    soon = format_timestamp(parse_timestamp(utc_now()) + timedelta(days=29))
    # within the window nothing goes (and no retention: older_than=None)
    report = await layer.purge(older_than=None, now=soon)
    assert report.counts["thread"] == 0 and calls == []
    later = format_timestamp(parse_timestamp(utc_now()) + timedelta(days=31))
    report = await layer.purge(older_than=None, now=later)
    assert report.thread_ids == [trashed]
    assert report.counts == {"user": 0, "thread": 1, "step": 1, "element": 0, "feedback": 0,
                             "file": 0}
    assert calls == [(trashed, user.id)]
    with pytest.raises(NotFoundError):
        await layer.restore_thread(trashed)
    assert await _listed(layer, user.id) == [live]


async def test_erase_user_removes_trashed_threads_too(
        make_layer: LayerFactory, chainlit_ctx: Any) -> None:
    layer = await make_layer(soft_delete=timedelta(days=30))
    user = await new_user(layer)
    tids = [await _thread(layer, user.id, "t") for _ in range(2)]
    await layer.delete_thread(tids[0])
    report = await layer.erase_user(user.identifier)
    assert report.counts == {"user": 1, "thread": 2, "step": 2, "element": 0, "feedback": 0,
                             "file": 0}


async def test_restore_needs_the_trash(make_layer: LayerFactory) -> None:
    layer = await make_layer()
    with pytest.raises(ConfigurationError):
        await layer.restore_thread(new_id())
