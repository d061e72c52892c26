"""Threads: update_thread upsert rules, get_thread shape, authorship (contract §1.2, §1.4)."""

from __future__ import annotations

import asyncio
import json
import os
import time
from datetime import UTC, datetime

import pytest
from chainlit.user import PersistedUser

from chainlit_orm.errors import InvalidIdentifierError, InvalidInputError
from chainlit_orm.layers.base import ChainlitLayer
from chainlit_orm.models.types import parse_timestamp
from tests.contract.conftest import message, new_id


async def test_update_thread_creates_then_none_leaves_fields_unchanged(
    layer: ChainlitLayer, user: PersistedUser
) -> None:
    tid = new_id()
    await layer.update_thread(tid, name="Première", user_id=user.id, metadata={"a": 1},
                              tags=["x", "ÿ"])
    before = await layer.get_thread(tid)
    assert before is not None
    await layer.update_thread(tid)  # every argument None: nothing changes
    await layer.update_thread(tid, name="Renamed")
    after = await layer.get_thread(tid)
    assert after is not None
    assert after["name"] == "Renamed"
    assert after["userId"] == user.id
    assert after["userIdentifier"] == user.identifier
    assert after["tags"] == ["x", "ÿ"]
    assert after["metadata"] == {"a": 1}
    assert after["createdAt"] == before["createdAt"]
    assert after["steps"] == [] and after["elements"] == []


async def test_metadata_is_merged_and_none_deletes_a_key(
    layer: ChainlitLayer, user: PersistedUser
) -> None:
    tid = new_id()
    await layer.update_thread(tid, name="m", user_id=user.id,
                              metadata={"keep": 1, "drop": "x", "nested": {"a": None, "b": [1, 2]}})
    await layer.update_thread(tid, metadata={"drop": None, "new": True, "keep": 2})
    thread = await layer.get_thread(tid)
    assert thread is not None
    assert thread["metadata"] == {"keep": 2, "nested": {"a": None, "b": [1, 2]}, "new": True}
    assert type(thread["metadata"]["keep"]) is int


async def test_25_concurrent_metadata_merges_all_survive(
    layer: ChainlitLayer, user: PersistedUser
) -> None:
    tid = new_id()
    await layer.update_thread(tid, name="concurrent", user_id=user.id, metadata={"base": 0})
    await asyncio.gather(*(layer.update_thread(tid, metadata={f"k{i}": i}) for i in range(25)))
    thread = await layer.get_thread(tid)
    assert thread is not None
    assert thread["metadata"] == {"base": 0, **{f"k{i}": i for i in range(25)}}


async def test_owner_is_set_once_and_never_changed(
    layer: ChainlitLayer, user: PersistedUser, chainlit_ctx: object
) -> None:
    from chainlit.user import User

    other = await layer.create_user(User(identifier=f"other-{new_id()}", metadata={}))
    assert other is not None
    tid = new_id()
    # a thread first created by an early step has no owner ...
    await layer.create_step(message(tid, "early"))
    assert await layer.get_thread_author(tid) == ""
    # ... until update_thread gives it one
    await layer.update_thread(tid, name="early", user_id=user.id)
    assert await layer.get_thread_author(tid) == user.identifier
    await layer.update_thread(tid, user_id=other.id)
    thread = await layer.get_thread(tid)
    assert thread is not None
    assert (thread["userId"], thread["userIdentifier"]) == (user.id, user.identifier)


async def test_metadata_only_update_creates_an_ownerless_stub(layer: ChainlitLayer) -> None:
    """Chainlit's session metadata may arrive before the thread's first write (issue 14, F2):
    it is kept in a stub that nobody can read until the owner's update arrives. (A thread this
    layer deleted is not brought back: test_elements_feedback_delete.)"""
    tid = new_id()
    await layer.update_thread(tid, metadata={"is_shared": True})
    assert await layer.get_thread_author(tid) == ""
    thread = await layer.get_thread(tid)
    assert thread is not None
    assert (thread["name"], thread["userId"], thread["metadata"]) == (
        None, None, {"is_shared": True})


async def test_get_thread_author_of_missing_or_malformed_thread_is_empty(
    layer: ChainlitLayer,
) -> None:
    assert await layer.get_thread_author(new_id()) == ""
    assert await layer.get_thread_author("not-a-uuid") == ""
    assert await layer.get_thread("not-a-uuid") is None


async def test_created_at_is_utc_z_whatever_the_process_time_zone(
    layer: ChainlitLayer, user: PersistedUser
) -> None:
    saved = os.environ.get("TZ")
    os.environ["TZ"] = "Pacific/Kiritimati"  # UTC+14: a local-time bug cannot hide
    time.tzset()
    try:
        tid = new_id()
        before = datetime.now(UTC)
        await layer.update_thread(tid, name="tz", user_id=user.id)
        after = datetime.now(UTC)
        thread = await layer.get_thread(tid)
    finally:
        if saved is None:
            os.environ.pop("TZ", None)
        else:
            os.environ["TZ"] = saved
        time.tzset()
    assert thread is not None
    created = thread["createdAt"]
    assert created.endswith("Z") and len(created) == 27
    assert before.replace(microsecond=0) <= parse_timestamp(created) <= after


async def test_get_thread_result_is_json_serializable(
    layer: ChainlitLayer, user: PersistedUser, chainlit_ctx: object
) -> None:
    tid = new_id()
    await layer.update_thread(tid, name="json", user_id=user.id, metadata={"f": 1.5})
    await layer.create_step(message(tid, "hello"))
    thread = await layer.get_thread(tid)
    assert thread is not None
    decoded = json.loads(json.dumps(thread))
    assert decoded["metadata"] == {"f": 1.5}
    assert [s["output"] for s in decoded["steps"]] == ["hello"]


async def test_bad_thread_input_is_refused_with_typed_errors(
    layer: ChainlitLayer, user: PersistedUser
) -> None:
    tid = new_id()
    with pytest.raises(InvalidIdentifierError):
        await layer.update_thread("", name="x")
    with pytest.raises(InvalidInputError):
        await layer.update_thread(tid, name="x", metadata="not a dict")  # type: ignore[arg-type]
    with pytest.raises(InvalidInputError):
        await layer.update_thread(tid, name="x", tags="notalist")  # type: ignore[arg-type]
    with pytest.raises(InvalidInputError):
        await layer.update_thread(tid, name="nul \x00 inside", user_id=user.id)
    assert await layer.get_thread(tid) is None  # nothing was written
